"""Time each phase of a ``docwatch scan`` (a no-op rescan, typically) without a profiler.

Wraps the functions a scan spends its time in, runs the CLI with the given arguments, and
prints each phase's total seconds to stderr (cProfile inflates a rescan ~2×; this does not).

    .venv/bin/python bench/phases.py scan --data-root TREE --db DB --docs-root DOCS --json
"""

from __future__ import annotations

import functools
import inspect
import sys
import time

from bytecode import compile_docwatch  # noqa: E402

compile_docwatch()  # as installed: the imports below load bytecode, they do not compile
START = time.perf_counter()

import docwatch.ingest.batchplan as batchplan  # noqa: E402
import docwatch.ingest.indexer as indexer  # noqa: E402
import docwatch.ingest.ingestor as ingestor  # noqa: E402
import docwatch.ingest.listing as listing  # noqa: E402
import docwatch.ingest.scan as scan  # noqa: E402
import docwatch.ingest.writer as writer  # noqa: E402
import docwatch.store.docstore as docstore  # noqa: E402
from docwatch.cli import main  # noqa: E402

IMPORTED = time.perf_counter() - START
TOTALS: dict[str, float] = {}
PHASES = (
    (scan, "missing_document_tasks"),
    (listing, "unknown_names"),  # a folder's names, sorted, merged with its ledger rows
    (indexer.Indexer, "look_at_tables"),
    (indexer.Indexer, "ingest"),
    # inside ``ingest``, a batch's parts (nested: they add up to less than ``ingest``):
    # lstat and the ledger; the reads go to the I/O threads (a scan's next batch: during the
    # batch before it, so waiting for them is not timed here)
    (ingestor.Ingestor, "start_probe"),
    (batchplan.BatchPlanner, "plan"),
    (writer.Writer, "_stage_all"),  # the documents' files, on the I/O threads
    (docstore.Batch, "sync_staged"),  # syncfs
    (docstore.Batch, "publish"),  # renames into place, syncfs
    (writer.Writer, "_commit"),  # the rows
    (docstore.Batch, "cleanup"),
    (indexer.Indexer, "expire_pending"),
)


def timed(owner: object, name: str) -> None:
    """Add the time spent in ``owner.name`` to its total; a generator's, step by step."""
    fn = getattr(owner, name)

    def add(t0: float) -> None:
        TOTALS[name] = TOTALS.get(name, 0.0) + time.perf_counter() - t0

    def steps(gen):
        while True:
            t0 = time.perf_counter()
            try:
                item = next(gen)
            except StopIteration:
                add(t0)
                return
            add(t0)
            yield item

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        finally:
            add(t0)
        return steps(result) if inspect.isgenerator(result) else result

    setattr(owner, name, wrapper)


if __name__ == "__main__":
    for owner, name in PHASES:
        timed(owner, name)
    try:
        main(standalone_mode=False)
    finally:
        print(f"{'imports':<24} {IMPORTED:7.3f} s", file=sys.stderr)
        for name, seconds in TOTALS.items():
            print(f"{name:<24} {seconds:7.3f} s", file=sys.stderr)
        print(f"{'total':<24} {time.perf_counter() - START:7.3f} s", file=sys.stderr)

"""Time the durable steps of every batch a ``docwatch`` command writes, through the fault seam.

Runs the CLI in-process with a hook on ``docwatch.store.faults`` (the seam every durable step
passes) that stamps each point, and prints at exit, per step, how many batches passed it and
the median and total time since the step before:

    .venv/bin/python bench/steps.py watch --data-root D --config C     # stop with SIGTERM
    .venv/bin/python bench/steps.py scan --data-root D --json

``bench/live.py`` runs its daemons this way when ``BENCH_STEPS=1``: it shows what the
four ordered flushes of a batch (files, intents, renames, rows) cost on this disk.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import defaultdict

from bytecode import compile_docwatch

compile_docwatch()

from docwatch.cli import main  # noqa: E402
from docwatch.store import faults  # noqa: E402

#: Per-document points: a batch's interval is from the first of a run to the next step.
PER_DOCUMENT = ("renamed", "replaced")
GAPS: dict[str, list[float]] = defaultdict(list)
_last: list = [None, None]  # (point, monotonic) of the previous step


def stamp(point: str) -> None:
    now = time.monotonic()
    prev, at = _last
    if point in PER_DOCUMENT and prev == point:
        return  # the batch's run of renames counts once, from the step before it
    if prev is not None and prev != "cleaned":  # "cleaned" → "begun": the time between batches
        GAPS[f"{prev} -> {point}"].append(now - at)
    _last[:] = [point, now]


def report() -> None:
    print(f"{'step':<36} {'batches':>8} {'median ms':>10} {'total s':>8}", file=sys.stderr)
    for name, gaps in GAPS.items():
        med = statistics.median(gaps) * 1e3
        print(f"{name:<36} {len(gaps):>8} {med:>10.1f} {sum(gaps):>8.2f}", file=sys.stderr)


def stamp_batches() -> None:
    """A "begun" stamp as each batch starts (not a durable step: the seam has none there), so
    "begun -> staged" is the batch's probe, plan and staging."""
    from docwatch.ingest.indexer import Indexer

    ingest = Indexer.ingest

    def begun(self, *args, **kwargs):
        stamp("begun")
        return ingest(self, *args, **kwargs)

    Indexer.ingest = begun


if __name__ == "__main__":
    faults.set_hook(stamp)
    stamp_batches()
    try:
        main(standalone_mode=False)
    finally:
        report()

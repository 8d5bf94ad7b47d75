"""``docwatch scan``: one-shot catch-up over the legacy folders, in task-ordered batches.

``catch_up`` is also the daemon's start-up and reconcile pass.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

from docwatch.config import Config, require_data_root
from docwatch.core.layout import STAGES
from docwatch.ingest.indexer import Indexer
from docwatch.ingest.ingestor import BatchReport
from docwatch.ingest.listing import (
    count_entries,
    entry_names,
    listing,
    not_listed,
    task_batches,
)
from docwatch.ingest.sortedruns import sorted_names
from docwatch.ingest.sources import INDEXED, NEW, Candidate, Stat, probe
from docwatch.store.backend import open_index

log = logging.getLogger("docwatch.scan")
COUNT_KEYS = (
    "new",
    "indexed",
    "ignored",
    "deferred",
    "error",
    "docs_created",
    "docs_updated",
    "docs_superseded",
)


class RunFacts(Protocol):
    """What a scan or the daemon needs of the run records (``dagster/runrecords.py``)."""

    def refresh(self, indexer: Indexer) -> BatchReport: ...

    def close(self) -> None: ...


#: Opens the run records for an indexer (installing their enrich hook), or gives None.
RunFactsOpener = Callable[[Indexer], "RunFacts | None"]


@dataclass
class ScanResult:
    """Counts per stage, problems with their paths, and timing."""

    counts: dict[str, Counter] = field(default_factory=lambda: {s: Counter() for s in STAGES})
    problems: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False
    run_id: str | None = None

    def add(self, report: BatchReport) -> None:
        for (stage, key), n in report.counts.items():
            self.counts[stage][key] += n
        self.problems += report.problems

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
            "stages": {s: {k: self.counts[s][k] for k in COUNT_KEYS} for s in STAGES},
            "problems": [{"path": p, "reason": r} for p, r in self.problems],
        }


def list_candidates(cfg: Config, stages: Iterable[str]) -> list[Candidate]:
    """Every entry of the selected stages' folders, ordered so a task's files share a batch."""
    return list(listing(cfg.data_root, cfg.folders, stages))


def scan(
    cfg: Config,
    *,
    stages: Iterable[str] = STAGES,
    run_id: str,
    dry_run: bool = False,
    progress: Callable[[int], Callable[[int], None]] | None = None,
    run_facts: RunFactsOpener | None = None,
) -> ScanResult:
    """Index everything settled under the data root; safe to run any number of times.

    ``progress(total)`` is called once the folders are counted and returns ``update(n)``;
    ``run_facts`` opens the Dagster run records (the CLI passes it when configured).
    """
    started = time.monotonic()
    require_data_root(cfg)
    stages = [s for s in STAGES if s in set(stages)]
    result = ScanResult(dry_run=dry_run, run_id=run_id)
    update = None
    if progress is not None:
        update = progress(count_entries(cfg.data_root, cfg.folders, stages))
    if dry_run:
        _dry_run(cfg, stages, result, update)
    else:
        indexer = Indexer(cfg, run_id)
        try:
            indexer.recover()
            records = run_facts(indexer) if run_facts is not None else None
            try:
                with indexer.staging_helper():
                    catch_up(indexer, result.add, stages=stages, progress=update)
                if records is not None:  # documents indexed before this scan
                    result.add(records.refresh(indexer))
            finally:
                if records is not None:
                    records.close()
        finally:
            indexer.close()
    result.seconds = time.monotonic() - started
    return result


def _never(relpath: str, size: int, mtime_ns: int) -> bool:
    """The listing already skipped what the ledger knows: every candidate is read."""
    return False


def catch_up(
    indexer: Indexer,
    add: Callable[[BatchReport], None],
    *,
    stages: Iterable[str] = STAGES,
    progress: Callable[[int], None] | None = None,
    between: Callable[[], None] = lambda: None,
    stop: Callable[[], bool] = lambda: False,
    settle_future: bool = True,
    skip: Callable[[str], bool] | None = None,
) -> int:
    """What ``scan`` does (and ``watch`` at start-up and reconcile): rebuild missing document
    directories, list the folders against the ledger and ingest what is new in task-ordered
    batches, give files with a future mtime a second look once they had time to settle,
    expire old pending raws, and re-plan what waits, a chunk at a time.  ``between`` runs
    after every batch (the daemon feeds its watchdog there); ``stop`` ends the pass early.
    ``settle_future`` False leaves files with a future mtime deferred (in the report's
    ``retry``: the daemon watches them settle); ``skip(path)`` leaves a listed file to its
    close (the daemon saw it created).  Returns how many entries were listed.
    """
    repair = missing_document_tasks(indexer)
    if repair:
        log.warning(
            "%d document directories are missing; rebuilding them from the sources", len(repair)
        )
        indexer.queue_replan(repair)
    counts: Counter = Counter()
    cfg = indexer.cfg
    cands = listing(cfg.data_root, cfg.folders, stages, indexer.index.ledger_in_folder, counts)
    if skip is not None:
        cands = (c for c in cands if not skip(str(c.path)))
    future: list[Candidate] = []
    held: list[Candidate] = []
    listed_at = time.monotonic()
    done = 0
    ahead = ProbeAhead(indexer, task_batches(cands, cfg.batch_max_files))
    for batch, probed in ahead:
        if stop():
            return done
        report = indexer.ingest(batch, known=_never, probed=probed, then=ahead.start_next)
        future += report.future
        held += report.held
        add(report)
        between()
        done += len(batch)
        if progress:
            progress(len(batch))
    known = BatchReport(counts=counts)
    add(known)  # the files the ledger knew: counted "indexed", never opened
    if progress:
        progress(sum(counts.values()))
    if future and settle_future and not stop():
        add(settled_future(indexer, future, held, listed_at))
    indexer.expire_pending()
    add(indexer.ingest_queued(between))
    return done + sum(counts.values())


class ProbeAhead:
    """A scan's batches, each listed and probed while the one before it commits
    (``start_next`` is that batch's ``then``, run once its rows' statements are done): its
    files are read on the I/O threads while the renames' sync and the commit wait on the disk,
    instead of after; not beside the statements, whose every row would wait for the GIL's
    hand-over (bench/README.md, "Sixteenth pass").  An error listing or probing a batch
    surfaces when that batch is taken, never in the batch it was started from."""

    def __init__(self, indexer: Indexer, batches: Iterator[list[Candidate]]) -> None:
        self.indexer = indexer
        self.batches = batches
        #: Gives the next batch and its probe, None at the end, or raises its error.
        self.take: Callable[[], tuple[list[Candidate], Callable] | None] | None = None

    def start_next(self) -> None:
        """Take the next batch and start its probe (once per batch; ``then`` of ``ingest``)."""
        if self.take is not None:
            return
        try:
            batch = next(self.batches, None)
            taken = None if batch is None else (batch, self._probe(batch))
            self.take = lambda: taken
        except Exception as exc:
            self.take = partial(_reraise, exc)

    def _probe(self, batch: list[Candidate]) -> Callable:
        return self.indexer.ingestor.start_probe(batch, ready=False, known=_never)

    def __iter__(self) -> Iterator[tuple[list[Candidate], Callable]]:
        while True:
            self.start_next()
            take, self.take = self.take, None
            assert take is not None
            if (taken := take()) is None:
                return
            yield taken


def _reraise(exc: BaseException) -> None:
    raise exc


def settled_future(
    indexer: Indexer, future: list[Candidate], held: list[Candidate], listed_at: float
) -> BatchReport:
    """Files whose mtime is in the future (clock skew, NFS) are read once they have stayed
    unchanged for ``settle_seconds`` since they were listed, with the parsed files held back
    for them; the rest stay deferred."""
    wait = indexer.cfg.settle_seconds - (time.monotonic() - listed_at)
    if wait > 0:
        time.sleep(wait)
    steady = []
    for c in future:
        try:
            st = Stat.of(os.lstat(c.path))
        except OSError:
            continue
        if c.lstat is not None and (st.st_size, st.st_mtime_ns, st.st_ino) == (
            c.lstat.st_size,
            c.lstat.st_mtime_ns,
            c.lstat.st_ino,
        ):
            steady.append(Candidate(c.path, c.role, c.relpath, st))
    steady_tasks = {c.task for c in steady}
    again = steady + [c for c in held if c.task in steady_tasks]
    report = indexer.ingest(again, ready=True, known=_never) if again else BatchReport()
    for c in again:  # counted deferred by the first pass; this pass counts them again
        report.counts[(c.role.stage, "deferred")] -= 1
    return report


#: The document folders' names are doc ids (16 characters at most), sorted in runs this many
#: times ``RUN_NAMES`` (about 5 MB): a 43k-document tree's fit in one, where merging runs of
#: 8,192 took a third of the check (bench/README.md, "Twenty-second pass").  The check ends
#: before the listing starts, so it adds nothing to a scan's peak.
DOC_ID_RUNS = 8


def missing_document_tasks(indexer: Indexer) -> set[tuple[str, str]]:
    """Tasks with an indexed document whose directory is gone (deleted by hand): every
    doc_id, read in order from the primary key, merged with the names of the stage folders
    (sorted in bounded runs: neither side is held whole); only the ids not found there are
    looked up, and their own stage folder checked."""
    docs_root = indexer.store.docs_root
    names = sorted_names(
        itertools.chain.from_iterable(_names(docs_root / s) for s in STAGES), runs_of=DOC_ID_RUNS
    )
    absent = not_listed(indexer.index.doc_ids(), names)
    return {
        (stage, task_id)
        for doc_id, stage, task_id in indexer.index.document_tasks(absent)
        if not os.path.lexists(docs_root / stage / doc_id)
    }


def _names(folder: Path) -> Iterator[str]:
    """The entries of one of docwatch's own folders (none when it does not exist yet)."""
    try:
        yield from entry_names(folder)
    except FileNotFoundError:
        return


def _dry_run(
    cfg: Config, stages: list[str], result: ScanResult, progress: Callable[[int], None] | None
) -> None:
    """Probe without writing anything (the index is only read, if it exists)."""
    index = None
    if cfg.index_url or Path(cfg.db).exists():
        index = open_index(cfg.index_location, readonly=True)
    try:
        counts: Counter = Counter()
        ledger = index.ledger_in_folder if index is not None else None
        now = time.time_ns()
        for c in listing(cfg.data_root, cfg.folders, stages, ledger, counts):
            o = probe(
                c,
                known=_never,
                now_ns=now,
                settle_ns=int(cfg.settle_seconds * 1e9),
                max_bytes=cfg.max_file_bytes,
            )
            if o.status == NEW and index is not None and index.pinned([o.source.key]):
                o.status = INDEXED  # the same bytes with another mtime (a touch)
            result.counts[c.role.stage][o.status] += 1
            if o.status == "error":
                result.problems.append((o.relpath, o.reason or "error"))
            if progress:
                progress(1)
        for (stage, status), n in counts.items():
            result.counts[stage][status] += n
        if progress:
            progress(sum(counts.values()))
    finally:
        if index is not None:
            index.close()

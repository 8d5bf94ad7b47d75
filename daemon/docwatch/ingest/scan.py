"""``docwatch scan``: one-shot catch-up over the legacy folders, in task-ordered batches.

``catch_up`` is also the daemon's start-up and reconcile pass.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from docwatch.config import Config, require_data_root
from docwatch.core.layout import KINDS, STAGES, folder_roles, parse_name
from docwatch.ingest.indexer import Indexer
from docwatch.ingest.ingestor import BatchReport
from docwatch.ingest.sources import Candidate, Stat, list_folder, probe
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
    wanted = set(stages)
    roles = [r for r in folder_roles(cfg.folders) if r.stage in wanted]
    found = [c for role in roles for c in list_folder(cfg.data_root, role)]
    kind_order = {k: i for i, k in enumerate(KINDS)}
    stage_order = {s: i for i, s in enumerate(STAGES)}

    def key(c: Candidate) -> tuple:
        parsed = parse_name(c.path.name)
        task = parsed.task_id if not isinstance(parsed, str) else c.path.name
        return (stage_order[c.role.stage], task, kind_order[c.role.kind], c.relpath)

    return sorted(found, key=key)


def task_batches(cands: list[Candidate], size: int) -> Iterable[list[Candidate]]:
    """Cut the ordered listing into batches of about ``size`` files, never splitting a task."""
    batch: list[Candidate] = []
    last_task = None
    for c in cands:
        parsed = parse_name(c.path.name)
        task = (c.role.stage, parsed.task_id if not isinstance(parsed, str) else None)
        if len(batch) >= size and task != last_task:
            yield batch
            batch = []
        batch.append(c)
        last_task = task
    if batch:
        yield batch


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

    ``progress(total)`` is called once the folders are listed and returns ``update(n)``;
    ``run_facts`` opens the Dagster run records (the CLI passes it when configured).
    """
    started = time.monotonic()
    require_data_root(cfg)
    stages = [s for s in STAGES if s in set(stages)]
    result = ScanResult(dry_run=dry_run, run_id=run_id)
    cands = list_candidates(cfg, stages)
    if progress is not None:
        progress = progress(len(cands))
    if dry_run:
        _dry_run(cfg, cands, result, progress)
    else:
        indexer = Indexer(cfg, run_id)
        try:
            indexer.recover()
            records = run_facts(indexer) if run_facts is not None else None
            try:
                catch_up(indexer, cands, result.add, progress=progress)
                if records is not None:  # documents indexed before this scan
                    result.add(records.refresh(indexer))
            finally:
                if records is not None:
                    records.close()
        finally:
            indexer.close()
    result.seconds = time.monotonic() - started
    return result


def catch_up(
    indexer: Indexer,
    cands: list[Candidate],
    add: Callable[[BatchReport], None],
    *,
    progress: Callable[[int], None] | None = None,
    between: Callable[[], None] = lambda: None,
    stop: Callable[[], bool] = lambda: False,
    settle_future: bool = True,
) -> None:
    """What ``scan`` does with a listing (and ``watch`` at start-up and reconcile): rebuild
    missing document directories, ingest in task-ordered batches, give files with a future
    mtime a second look once they had time to settle, expire old pending raws, and re-plan
    what waits, a chunk at a time.  ``between`` runs after every batch (the daemon feeds its
    watchdog there); ``stop`` ends the pass early.  ``settle_future`` False leaves files with a
    future mtime deferred (in the report's ``retry``: the daemon watches them settle).
    """
    repair = missing_document_tasks(indexer)
    if repair:
        log.warning(
            "%d document directories are missing; rebuilding them from the sources", len(repair)
        )
        indexer.queue_replan(repair)
    stats = indexer.index.ledger_stats()

    def known(relpath: str, size: int, mtime_ns: int) -> bool:
        return in_ledger_stats(stats, relpath, size, mtime_ns)

    future: list[Candidate] = []
    listed_at = time.monotonic()
    for batch in task_batches(cands, indexer.cfg.batch_max_files):
        if stop():
            return
        report = indexer.ingest(batch, known=known)
        future += report.future
        add(report)
        between()
        if progress:
            progress(len(batch))
    if future and settle_future and not stop():
        add(settled_future(indexer, future, listed_at, known))
    indexer.expire_pending()
    add(indexer.ingest_queued(between))


def settled_future(
    indexer: Indexer, future: list[Candidate], listed_at: float, known
) -> BatchReport:
    """Files whose mtime is in the future (clock skew, NFS) are read once they have stayed
    unchanged for ``settle_seconds`` since they were listed; the rest stay deferred."""
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
    report = indexer.ingest(steady, ready=True, known=known) if steady else BatchReport()
    for c in steady:  # counted deferred by the first pass; this pass counts them again
        report.counts[(c.role.stage, "deferred")] -= 1
    return report


def missing_document_tasks(indexer: Indexer) -> set[tuple[str, str]]:
    """Tasks with an indexed document whose directory is gone (deleted by hand)."""
    present = set()
    for stage in STAGES:
        stage_dir = indexer.store.docs_root / stage
        if stage_dir.is_dir():
            present |= {(stage, e.name) for e in os.scandir(stage_dir)}
    return {(s, t) for s, d, t in indexer.index.document_places() if (s, d) not in present}


def _dry_run(
    cfg: Config, cands: list[Candidate], result: ScanResult, progress: Callable[[int], None] | None
) -> None:
    """Probe without writing anything (the index is only read, if it exists)."""
    stats: dict = {}
    if cfg.index_url or Path(cfg.db).exists():
        index = open_index(cfg.index_location, readonly=True)
        stats = index.ledger_stats()
        index.close()
    now = time.time_ns()
    for c in cands:
        o = probe(
            c,
            known=lambda r, s, m: in_ledger_stats(stats, r, s, m),
            now_ns=now,
            settle_ns=int(cfg.settle_seconds * 1e9),
            max_bytes=cfg.max_file_bytes,
        )
        result.counts[c.role.stage][o.status] += 1
        if o.status == "error":
            result.problems.append((o.relpath, o.reason or "error"))
        if progress:
            progress(1)


def in_ledger_stats(stats: dict, relpath: str, size: int, mtime_ns: int) -> bool:
    """The no-read skip against ``Index.ledger_stats()``: this path last seen with this stat?"""
    seen = stats.get(relpath)
    return seen == (size, mtime_ns) or (isinstance(seen, set) and (size, mtime_ns) in seen)

"""``docwatch scan``: one-shot catch-up over the legacy folders, in task-ordered batches."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from docwatch.config import Config
from docwatch.core.layout import KINDS, STAGES, folder_roles, parse_name
from docwatch.dagster import runrecords
from docwatch.ingest.batch import BatchReport
from docwatch.ingest.indexer import Indexer
from docwatch.ingest.sources import Candidate, list_folder, probe
from docwatch.store import index as ix

log = logging.getLogger("docwatch.scan")
COUNT_KEYS = ("new", "indexed", "ignored", "deferred", "error", "docs_created", "docs_updated")


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
) -> ScanResult:
    """Index everything settled under the data root; safe to run any number of times.

    ``progress(total)`` is called once the folders are listed and returns ``update(n)``.
    """
    started = time.monotonic()
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
            _scan_into(indexer, cands, result, progress)
        finally:
            indexer.close()
    result.seconds = time.monotonic() - started
    return result


def _scan_into(
    indexer: Indexer,
    cands: list[Candidate],
    result: ScanResult,
    progress: Callable[[int], None] | None,
) -> None:
    indexer.recover()
    records = runrecords.attach(indexer, indexer.cfg)  # None unless dagster_home is set
    try:
        _scan_batches(indexer, cands, result, progress)
        result.add(runrecords.refresh(indexer, records))  # documents indexed before this scan
    finally:
        if records is not None:
            records.close()


def _scan_batches(
    indexer: Indexer,
    cands: list[Candidate],
    result: ScanResult,
    progress: Callable[[int], None] | None,
) -> None:
    repair = missing_document_tasks(indexer)
    if repair:
        log.warning(
            "%d document directories are missing; rebuilding them from the sources", len(repair)
        )
        result.add(indexer.ingest([], extra_tasks=repair))
    stats = ix.ledger_stats(indexer.con)
    indexer.ingestor.known = lambda r, s, m: ix.in_ledger_stats(stats, r, s, m)
    for batch in task_batches(cands, indexer.cfg.batch_max_files):
        result.add(indexer.ingest(batch))
        if progress:
            progress(len(batch))
    result.add(indexer.expire_pending())
    if indexer.needs_replan():
        result.add(indexer.ingest([]))


def missing_document_tasks(indexer: Indexer) -> set[tuple[str, str]]:
    """Tasks with an indexed document whose directory is gone (deleted by hand)."""
    present = set()
    for stage in STAGES:
        stage_dir = indexer.store.docs_root / stage
        if stage_dir.is_dir():
            present |= {(stage, e.name) for e in os.scandir(stage_dir)}
    rows = indexer.con.execute("SELECT stage, doc_id, task_id FROM documents")
    return {(r[0], r[2]) for r in rows if (r[0], r[1]) not in present}


def _dry_run(
    cfg: Config, cands: list[Candidate], result: ScanResult, progress: Callable[[int], None] | None
) -> None:
    """Probe without writing anything (the index is only read, if it exists)."""
    stats: dict = {}
    if Path(cfg.db).exists():
        con = ix.connect(cfg.db, readonly=True)
        stats = ix.ledger_stats(con)
        con.close()
    now = time.time_ns()
    for c in cands:
        o = probe(
            c,
            known=lambda r, s, m: ix.in_ledger_stats(stats, r, s, m),
            now_ns=now,
            settle_ns=int(cfg.settle_seconds * 1e9),
            max_bytes=cfg.max_file_bytes,
        )
        result.counts[c.role.stage][o.status] += 1
        if o.status == "error":
            result.problems.append((o.relpath, o.reason or "error"))
        if progress:
            progress(1)

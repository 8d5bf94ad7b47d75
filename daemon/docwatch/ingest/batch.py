"""One batch of ingestion: probe files, re-plan the tasks they touch, write, commit.

Shared by ``scan`` and ``watch``: the watcher only decides *when* a file is ready.  The order
of a batch is the durability contract: stage files → sync → commit intents → rename → sync
directories → commit rows and ledger.  The caller holds the writer lock around ``run_batch``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from docwatch import __version__
from docwatch.core.layout import STAGES
from docwatch.core.model import (
    Attempt,
    ParentCandidate,
    Source,
    TaskInfo,
    choose_parent,
    document_row,
    iso_utc,
    plan_task,
)
from docwatch.core.tasks import TaskTables, task_info
from docwatch.ingest.sources import DEFERRED, ERROR, IGNORED, NEW, Candidate, Outcome, probe
from docwatch.store import faults
from docwatch.store import index as ix
from docwatch.store.docstore import Batch, DocStore, FileSource, SourceChanged

log = logging.getLogger("docwatch.ingest")
PARSED_ONLY = "parsed-only"
_STAGE_ORDER = {s: i for i, s in enumerate(STAGES)}


@dataclass(frozen=True)
class IngestSettings:
    """What a batch needs to know beyond the files themselves."""

    data_root: Path
    run_id: str
    settle_ns: int = 2_000_000_000
    pair_window_ns: int = 600_000_000_000
    max_bytes: int = 256 << 20
    prompt_copy: bool = True


@dataclass
class BatchReport:
    """Counts per (stage, outcome) plus what needs a retry."""

    counts: Counter = field(default_factory=Counter)
    problems: list[tuple[str, str]] = field(default_factory=list)
    retry: list[Candidate] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)

    def merge(self, other: BatchReport) -> None:
        self.counts.update(other.counts)
        self.problems += other.problems
        self.retry += other.retry
        self.created += other.created
        self.updated += other.updated


@dataclass
class _Change:
    """A document to create or update, with its row and the files it needs."""

    attempt: Attempt
    info: TaskInfo
    row: dict
    op: str  # create | update | retire
    files: dict[str, Source]
    parent_stage: str | None
    remove: tuple[str, ...] = ()


class Ingestor:
    """Turns probed sources into committed documents, one batch at a time."""

    def __init__(
        self,
        con: sqlite3.Connection,
        store: DocStore,
        settings: IngestSettings,
        tables: Callable[[], TaskTables],
    ) -> None:
        self.con = con
        self.store = store
        self.settings = settings
        self.tables = tables
        self.known: Callable[[str, int, int], bool] = lambda r, s, m: ix.ledger_has_stat(
            con, r, s, m
        )
        self._docs_base = Path(os.path.relpath(store.docs_root, settings.data_root)).as_posix()
        #: Documents to rewrite from their sources even if the index says they are current.
        self.force: set[str] = set()
        #: Optional ``enrich(row, attempt) -> row`` (run records: run_id, true status, usage).
        self.enrich: Callable[[dict, Attempt], dict] | None = None

    # -- probing -----------------------------------------------------------------------

    def probe_all(self, candidates: Iterable[Candidate], *, ready: bool) -> list[Outcome]:
        now = time.time_ns()
        seen: dict[str, Outcome] = {}
        for cand in candidates:
            seen[cand.relpath] = probe(
                cand,
                known=self.known,
                now_ns=now,
                settle_ns=self.settings.settle_ns,
                max_bytes=self.settings.max_bytes,
                ready=ready,
            )
        return list(seen.values())

    # -- the batch ---------------------------------------------------------------------

    def run_batch(
        self,
        candidates: Iterable[Candidate],
        *,
        ready: bool = False,
        extra_tasks: Iterable[tuple[str, str]] = (),
    ) -> BatchReport:
        """Probe, plan, write and commit; returns what happened, per stage and outcome."""
        report = BatchReport()
        outcomes = self.probe_all(candidates, ready=ready)
        new = [o for o in outcomes if o.status == NEW]
        for o in outcomes:
            report.counts[(o.candidate.role.stage, o.status)] += 1
            if o.status == ERROR:
                report.problems.append((o.relpath, o.reason or "error"))
                log.warning("%s: %s", o.relpath, o.reason)
            elif o.status == DEFERRED:
                report.retry.append(o.candidate)
                log.debug("%s: %s", o.relpath, o.reason)
            elif o.status == IGNORED:
                log.debug("ignored %s: %s", o.relpath, o.reason)
        tasks = {(o.source.stage, o.source.task_id) for o in new} | set(extra_tasks)
        if not tasks and not report.problems:
            return report
        contents = {o.source.key: o.content for o in new if o.content is not None}
        changes = self.plan(tasks, [o.source for o in new])
        self.write(changes, new, contents, report)
        return report

    def plan(self, tasks: set[tuple[str, str]], new: list[Source]) -> list[_Change]:
        """Re-plan every touched task (parents first) and its children; return the diffs."""
        tables = self.tables()
        new_by_task: dict[tuple[str, str], list[Source]] = {}
        for s in new:
            new_by_task.setdefault((s.stage, s.task_id), []).append(s)
        overlay: dict[tuple[str, str], list[ParentCandidate]] = {}
        todo = {stage: {t for s, t in tasks if s == stage} for stage in STAGES}
        changes: list[_Change] = []
        now = time.time_ns()
        for stage in STAGES:  # parents (earlier stages) are planned before their children
            for task_id in sorted(todo[stage]):
                task = (stage, task_id)
                task_changes = self._plan_task(task, tables, new_by_task, overlay, now)
                if task_changes:
                    changes += task_changes
                    for child_stage, child_id in ix.children_of(self.con, *task):
                        todo[child_stage].add(child_id)
        return changes

    def _plan_task(
        self, task: tuple[str, str], tables: TaskTables, new_by_task: dict, overlay: dict, now: int
    ) -> list[_Change]:
        """Plan one task from all its known sources and diff it against its documents."""
        info = task_info(tables, *task)
        existing = ix.task_documents(self.con, *task)
        sources = ix.task_sources(self.con, *task) + new_by_task.get(task, [])
        plan = plan_task(info, sources, now_ns=now, pair_window_ns=self.settings.pair_window_ns)
        overlay[task] = [
            ParentCandidate(a.doc_id, a.created_at_ns, a.version)
            for a in plan.attempts
            if a.status == "ok"
        ]
        changes = []
        for attempt in plan.attempts:
            change = self._diff(attempt, info, existing.pop(attempt.doc_id, None), overlay)
            if change is not None:
                changes.append(change)
        for old in existing.values():  # absorbed by a late raw: the plan no longer has it
            changes.append(_retirement(old, info))
        return changes

    def _diff(
        self,
        attempt: Attempt,
        info: TaskInfo,
        old: dict | None,
        overlay: dict[tuple[str, str], list[ParentCandidate]],
    ) -> _Change | None:
        parent_stage, parent_doc_id = self._parent(info, attempt, overlay)
        row = document_row(
            attempt,
            info,
            parent_doc_id=parent_doc_id,
            run_id=self.settings.run_id,
            doc_dir=self._doc_dir(attempt),
            raw_chars=None,
            parsed_chars=None,
        )
        wanted = {k: s for k, s in attempt.sources().items() if s is not None}
        if not self.settings.prompt_copy:
            wanted.pop("prompt", None)
        if old is not None:
            row["run_id"] = old["run_id"]  # who first ingested it
        if self.enrich is not None:  # facts only the pipeline's run records know
            row = self.enrich(row, attempt)
        doc_path = self.store.docs_root / info.stage / attempt.doc_id
        if old is None or attempt.doc_id in self.force or not doc_path.is_dir():
            return _Change(attempt, info, row, "create", wanted, parent_stage)
        for kind in ("raw", "parsed"):  # unchanged files keep their counts; staging sets new
            row[f"{kind}_chars"] = old[f"{kind}_chars"] if kind in wanted else None
        for key in ("usage_prompt_tokens", "usage_completion_tokens", "usage_max_tokens"):
            row[key] = old[key] if row[key] is None else row[key]
        files = {
            kind: s
            for kind, s in wanted.items()
            if old[f"_{kind}_key"] != ix.source_key(s.relpath, s.sha256)
        }
        remove = tuple(
            f"{k}.txt" for k in ("parsed", "prompt") if old[f"_{k}_key"] and k not in wanted
        )
        same = all(row[c] == old[c] for c in ix.DOCUMENT_COLUMNS)
        if same and not files and not remove:
            return None
        return _Change(attempt, info, row, "update", files, parent_stage, remove)

    def _doc_dir(self, attempt: Attempt) -> str:
        """``doc_dir`` as stored: relative to the data root (SPEC "Output")."""
        return f"{self._docs_base}/{attempt.stage}/{attempt.doc_id}"

    def _parent(
        self, info: TaskInfo, attempt: Attempt, overlay: dict
    ) -> tuple[str | None, str | None]:
        if info.parent_task_id is None:
            return info.parent_stage, None
        stages = [info.parent_stage] if info.parent_stage else ["essay", "draft"]
        for stage in stages:
            key = (stage, info.parent_task_id)
            cands = overlay.get(key)
            if cands is None:
                cands = overlay[key] = ix.ok_candidates(self.con, *key)  # same for the batch
            chosen = choose_parent(cands, attempt.parent_ref_ns)
            if chosen is not None:
                return stage, chosen
        return info.parent_stage, None

    # -- writing -----------------------------------------------------------------------

    def write(
        self,
        changes: list[_Change],
        new: list[Outcome],
        contents: dict[tuple, bytes],
        report: BatchReport,
    ) -> None:
        """Stage, sync, publish and commit ``changes``; tasks whose sources moved are retried."""
        batch = self.store.begin()
        try:
            dropped = self._stage_all(batch, changes, contents, report)
            kept = [c for c in changes if (c.info.stage, c.info.task_id) not in dropped]
            new_sources = [
                o.source for o in new if (o.source.stage, o.source.task_id) not in dropped
            ]
            for o in new:
                if (o.source.stage, o.source.task_id) in dropped:
                    report.retry.append(o.candidate)
            batch.sync_staged()
            with ix.transaction(self.con):
                ix.put_intents(
                    self.con,
                    [(c.attempt.doc_id, c.info.stage, c.info.task_id, c.op) for c in kept],
                )
            faults.point("intents_committed")
            batch.publish()
            with ix.transaction(self.con):
                ix.put_sources(self.con, new_sources)
                ix.put_problems(self.con, report.problems)
                for c in kept:
                    if c.op == "retire":
                        ix.delete_document(self.con, c.attempt.doc_id)
                        log.warning(
                            "retired %s: its files now belong to a newer attempt of %s",
                            c.attempt.doc_id,
                            c.info.task_id,
                        )
                    else:
                        ix.put_document(self.con, c.row, _attempt_facts(c))
                ix.clear_intents(self.con, [c.attempt.doc_id for c in kept if not _removes(c)])
                if kept:
                    ix.set_state(self.con, "last_ingest", ix.now_iso())
                    # Age of the freshest source at commit: the live ingest lag.
                    ages = [
                        time.time_ns() - c.attempt.created_at_ns for c in kept if c.op != "retire"
                    ]
                    lag = min(ages, default=0) / 1e9
                    ix.set_state(self.con, "last_lag_seconds", f"{lag:.6f}")
            faults.point("committed")
            removed = batch.remove_after_commit()
            if removed:
                with ix.transaction(self.con):
                    ix.clear_intents(self.con, removed)
        finally:
            batch.cleanup()
        for c in kept:
            if c.op != "retire":
                (report.created if c.op == "create" else report.updated).append(c.attempt.doc_id)
            report.counts[(c.info.stage, "docs_" + c.op + "d")] += 1

    def _stage_all(
        self,
        batch: Batch,
        changes: list[_Change],
        contents: dict[tuple, bytes],
        report: BatchReport,
    ) -> set[tuple[str, str]]:
        dropped: set[tuple[str, str]] = set()
        staged_by_task: dict[tuple[str, str], list] = {}
        for c in changes:
            task = (c.info.stage, c.info.task_id)
            if task in dropped:
                continue
            if c.op == "retire":
                batch.retire(c.attempt.doc_id, c.info.stage)
                continue
            try:
                staged = self._stage_one(batch, c, contents)
            except (SourceChanged, FileNotFoundError) as exc:
                reason = f"source changed or vanished while copying ({exc}); will retry"
                report.problems.append((c.attempt.primary.relpath, reason))
                log.warning("%s: %s", c.attempt.primary.relpath, reason)
                dropped.add(task)
                for s in staged_by_task.pop(task, []):
                    batch.drop(s)
                continue
            staged_by_task.setdefault(task, []).append(staged)
        return dropped

    def _stage_one(self, batch: Batch, c: _Change, contents: dict[tuple, bytes]):
        files = {
            f"{kind}.txt": FileSource(
                self.settings.data_root / s.relpath, s.sha256, contents.get(s.key), s.mtime_ns
            )
            for kind, s in c.files.items()
        }
        staged = batch.stage(c.attempt.doc_id, c.info.stage, c.op, files)
        staged.remove = c.remove
        for kind in ("raw", "parsed"):
            if f"{kind}.txt" in staged.chars:
                c.row[f"{kind}_chars"] = staged.chars[f"{kind}.txt"]
        batch.write_metadata(staged, self._metadata(c))
        return staged

    def _metadata(self, c: _Change) -> dict:
        provenance = {
            kind: None
            if s is None
            else {
                "path": s.relpath,
                "size": s.size,
                "sha256": s.sha256,
                "mtime_ns": s.mtime_ns,
                "mtime": iso_utc(s.mtime_ns),
            }
            for kind, s in c.attempt.sources().items()
        }
        return {
            "row": c.row,
            "attempt": _attempt_facts(c),
            "provenance": {"sources": provenance, "copied": sorted(c.files)},
            "docwatch": {"version": __version__, "written_at": ix.now_iso()},
        }


def _removes(c: _Change) -> bool:
    """Whether a change deletes files (done after its commit, guarded by its intent)."""
    return c.op == "retire" or bool(c.remove)


def _attempt_facts(c: _Change) -> dict:
    a = c.attempt

    def key(s: Source | None) -> str | None:
        return ix.source_key(s.relpath, s.sha256) if s else None

    return {
        "doc_id": a.doc_id,
        "version": a.version,
        "created_at_ns": a.created_at_ns,
        "parent_stage": c.parent_stage,
        "parent_task_id": c.info.parent_task_id,
        "parent_ref_ns": a.parent_ref_ns,
        "raw_key": key(a.raw),
        "parsed_key": key(a.parsed),
        "prompt_key": key(a.prompt),
        "info_hash": c.info.fingerprint(),
    }


def _retirement(old: dict, info: TaskInfo) -> _Change:
    """A document whose sources now belong to another attempt (a raw that arrived late)."""
    attempt = Attempt(
        doc_id=old["doc_id"],
        stage=old["stage"],
        task_id=old["task_id"],
        version=old["_version"],
        raw=None,
        parsed=None,
        prompt=None,
        status=old["status"],
        status_reason=None,
    )
    return _Change(attempt, info, old, "retire", {}, old["_parent_stage"])

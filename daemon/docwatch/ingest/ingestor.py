"""One batch of ingestion: probe files, pin what is known, plan the tasks they touch, write.

Shared by ``scan`` and ``watch``: the watcher only decides *when* a file is ready.  A source is
its path and its hash: bytes already in the ledger keep the facts pinned when they were first
ingested, so a touch, a restore or a copy without times changes nothing (only the ledger's stat
cache moves).  One task that cannot be planned is reported in ``problems`` and skipped; the
rest of its batch is written.  The caller holds the writer lock around ``run_batch``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from docwatch.core.model import Attempt, Source
from docwatch.core.tasks import TaskTables
from docwatch.ingest.batchplan import BatchPlanner
from docwatch.ingest.planner import (
    Change,
)
from docwatch.ingest.pool import give_back_memory, start_map_io
from docwatch.ingest.sources import (
    DEFERRED,
    ERROR,
    IGNORED,
    INDEXED,
    NEW,
    Candidate,
    Outcome,
    classify,
    read,
)
from docwatch.ingest.staging import HelperStaging, StagingHelper, StagingHere
from docwatch.ingest.writer import BatchInput, Writer
from docwatch.store.docstore import DocStore, Op
from docwatch.store.index import Index

log = logging.getLogger("docwatch.ingest")

Known = Callable[[str, int, int], bool]
Task = tuple[str, str]


@dataclass(frozen=True)
class IngestSettings:
    """What a batch needs to know beyond the files themselves."""

    data_root: Path
    run_id: str
    settle_ns: int = 2_000_000_000
    pair_window_ns: int = 600_000_000_000
    max_bytes: int = 256 << 20
    prompt_copy: bool = True
    #: The daemon's start: files written since then were seen live (their lag is meaningful).
    live_since_ns: int | None = None


@dataclass
class BatchReport:
    """Counts per (stage, outcome) plus what needs a retry."""

    counts: Counter = field(default_factory=Counter)
    problems: list[tuple[str, str]] = field(default_factory=list)
    retry: list[Candidate] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    #: Deferred because their mtime is in the future (the caller watches them settle).
    future: list[Candidate] = field(default_factory=list)
    #: Parsed files held back with a raw of their task that was not ready (read them with it).
    held: list[Candidate] = field(default_factory=list)
    #: Tasks to re-plan later (another writer of a shared index held them).
    replan_later: set[tuple[str, str]] = field(default_factory=set)

    def merge(self, other: BatchReport) -> None:
        self.counts.update(other.counts)
        self.problems += other.problems
        self.retry += other.retry
        self.created += other.created
        self.updated += other.updated
        self.superseded += other.superseded
        self.future += other.future
        self.held += other.held
        self.replan_later |= other.replan_later


class Ingestor:
    """Turns probed sources into committed documents, one batch at a time."""

    def __init__(
        self,
        index: Index,
        store: DocStore,
        settings: IngestSettings,
        tables: Callable[[], TaskTables],
        *,
        writer_id: str,
        enrich: Callable[[dict, Attempt], dict] | None = None,
    ) -> None:
        self.index = index
        #: Stages new documents while their batch is planned, during a pass that set one
        #: (``Indexer.staging_helper``; ``ingest/staging.py``).
        self.helper: StagingHelper | None = None
        self.store = store
        self.settings = settings
        self.tables = tables
        self.writer = Writer(
            index, store, settings.data_root, writer_id, live_since_ns=settings.live_since_ns
        )
        self.planner = BatchPlanner(
            index,
            store,
            tables,
            run_id=settings.run_id,
            docs_base=Path(os.path.relpath(store.docs_root, settings.data_root)).as_posix(),
            pair_window_ns=settings.pair_window_ns,
            prompt_copy=settings.prompt_copy,
            enrich=enrich,
        )

    @property
    def enrich(self) -> Callable[[dict, Attempt], dict] | None:
        """``enrich(row, attempt) -> row``: facts only the run records know (run_id, status)."""
        return self.planner.enrich

    @enrich.setter
    def enrich(self, enrich: Callable[[dict, Attempt], dict] | None) -> None:
        self.planner.enrich = enrich

    # -- probing -------------------------------------------------------------------------

    def start_probe(
        self, candidates: Iterable[Candidate], *, ready: bool, known: Known | None
    ) -> Callable[[], list[Outcome]]:
        """Classify the candidates here (lstat, the ledger) and start reading the new ones on
        the I/O threads; the returned function waits for the reads and gives the outcomes."""
        now = time.time_ns()
        candidates = list(candidates)
        known = known or self.index.ledger_seen(c.relpath for c in candidates)
        seen: dict[str, Outcome | tuple] = {}
        for cand in candidates:
            seen[cand.relpath] = (
                cand,
                classify(
                    cand,
                    known=known,
                    now_ns=now,
                    settle_ns=self.settings.settle_ns,
                    max_bytes=self.settings.max_bytes,
                    ready=ready,
                ),
            )
        to_read = [(c, found) for c, found in seen.values() if not isinstance(found, Outcome)]
        reading = start_map_io(lambda cf: read(cf[0], *cf[1]), to_read)

        def outcomes() -> list[Outcome]:
            read_by_path = {}
            for (cand, _), result in zip(to_read, reading(), strict=True):
                if isinstance(result, BaseException):
                    raise result
                read_by_path[cand.relpath] = result
            return [
                found if isinstance(found, Outcome) else read_by_path[c.relpath]
                for c, found in seen.values()
            ]

        return outcomes

    # -- the batch -----------------------------------------------------------------------

    def run_batch(
        self,
        candidates: Iterable[Candidate],
        *,
        ready: bool = False,
        extra_tasks: Iterable[Task] = (),
        known: Known | None = None,
        force: set[str] = frozenset(),
        probed: Callable[[], list[Outcome]] | None = None,
        then: Callable[[], None] = lambda: None,
    ) -> BatchReport:
        """Probe, plan, write and commit; returns what happened, per stage and outcome.

        ``known`` is the no-read skip (default: ask the index); ``force`` documents are
        rewritten from their sources (``verify --repair``).  ``probed``: the candidates'
        probe, begun earlier (``start_probe``).  ``then`` runs once: when the batch's rows are
        written and its sources' bytes let go, else at its end (a scan starts the next probe
        there, while this batch's renames sync and its rows commit).
        """
        report = BatchReport()
        then = once(then)
        outcomes = (probed or self.start_probe(candidates, ready=ready, known=known))()
        hold_parsed_of_unready_raws(outcomes)
        try:
            return self._run_locked(outcomes, set(extra_tasks), force, report, then)
        finally:
            then()
            self.index.unlock_tasks()

    def _run_locked(
        self,
        outcomes: list[Outcome],
        extra: set[Task],
        force: set[str],
        report: BatchReport,
        then: Callable[[], None],
    ) -> BatchReport:
        """The batch with its tasks locked (another writer of a shared index holds none of
        them): tasks it cannot lock wait for the next pass."""
        wanted = {(o.source.stage, o.source.task_id) for o in outcomes if o.status == NEW}
        locked = self.index.lock_tasks(wanted | extra)
        for o in outcomes:
            if o.status == NEW and (o.source.stage, o.source.task_id) not in locked:
                o.status, o.reason, o.content = DEFERRED, "another writer holds its task", None
        new, touched, seen = self._pin(outcomes)
        self._count(outcomes, report)
        tasks = {(s.stage, s.task_id) for s in new} | (extra & locked)
        report.replan_later |= extra - locked
        if not tasks and not report.problems and not touched:
            return report
        contents = {o.source.key: o.content for o in outcomes if o.content is not None}
        staging = (
            HelperStaging(self.helper, self.store, contents)
            if self.helper is not None
            else StagingHere(self.store)
        )
        try:
            plan = self.planner.plan(tasks, new, force, staging.add)
        except BaseException:
            staging.abandon()
            raise
        report.replan_later |= plan.unlocked | plan.deferred
        report.problems += task_problem_rows(plan.problems, new)
        skipped = plan.deferred | set(plan.problems)
        result = self.writer.write(
            BatchInput(
                changes=[c for tc in plan.planned.values() for c in tc.changes],
                new_sources=[s for s in new if (s.stage, s.task_id) not in skipped],
                touched=touched,
                seen=seen,
                problems=report.problems,
                tasks=[plan.infos[t] for t in plan.planned],
                contents=contents,
                tables_digest=plan.tables_digest,
            ),
            staging,
            after_rows=lambda: (release_contents(outcomes, contents), then()),
        )
        retry_tasks = result.retry | plan.deferred
        report.retry += [
            o.candidate
            for o in outcomes
            if o.status == NEW and (o.source.stage, o.source.task_id) in retry_tasks
        ]
        for c in result.written:
            self._account(c, report)
        return report

    def _pin(self, outcomes: list[Outcome]) -> tuple[list[Source], list[Source], dict]:
        """New sources, and known bytes seen again (a touch): those keep their pinned facts."""
        fresh = [o for o in outcomes if o.status == NEW]
        pinned = self.index.pinned(o.source.key for o in fresh)
        new, touched, seen = [], [], {}
        for o in fresh:
            seen[o.source.key] = (o.source.size, o.source.mtime_ns)
            if o.source.key in pinned:
                touched.append(pinned[o.source.key])
                o.status = INDEXED  # the same source: nothing to plan
            else:
                new.append(o.source)
        return new, touched, seen

    @staticmethod
    def _count(outcomes: list[Outcome], report: BatchReport) -> None:
        for o in outcomes:
            report.counts[(o.candidate.role.stage, o.status)] += 1
            if o.status == ERROR:
                report.problems.append((o.relpath, o.reason or "error"))
                log.warning("%s: %s", o.relpath, o.reason)
            elif o.status == DEFERRED:
                report.retry.append(o.candidate)
                if o.reason and o.reason.startswith("mtime in the future"):
                    report.future.append(o.candidate)
                elif o.reason and o.reason.startswith("held:"):
                    report.held.append(o.candidate)
                log.debug("%s: %s", o.relpath, o.reason)
            elif o.status == IGNORED:
                log.debug("ignored %s: %s", o.relpath, o.reason)

    @staticmethod
    def _account(c: Change, report: BatchReport) -> None:
        if c.stored_facts is not None:
            report.superseded.append(c.doc_id)
            log.warning(
                "%s (%s %s) is superseded by %s: its parsed file belongs to a raw that came later",
                c.doc_id,
                c.info.stage,
                c.info.task_id,
                c.row["meta_small"].get("superseded_by"),
            )
            outcome = "docs_superseded"
        elif c.op is Op.CREATE:
            report.created.append(c.doc_id)
            outcome = "docs_created"
        else:
            report.updated.append(c.doc_id)
            outcome = "docs_updated"
        report.counts[(c.info.stage, outcome)] += 1


def release_contents(outcomes: list[Outcome], contents: dict) -> None:
    """Once a batch's files are staged its sources' bytes are needed no more: let them go
    before the next batch's are read (a scan holds one batch's bytes at a time)."""
    contents.clear()
    for o in outcomes:
        o.content = None
    give_back_memory(len(outcomes))


def once(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` for a caller that may call it twice: it runs the first time only."""
    pending = [fn]

    def call() -> None:
        if pending:
            pending.pop()()

    return call


def hold_parsed_of_unready_raws(outcomes: list[Outcome]) -> None:
    """A parsed file waits while a raw file of its task is not ready in the same batch: read
    together later, they pair as a scan of the finished tree pairs them (no supersession)."""
    waiting = {
        o.candidate.task: o.relpath
        for o in outcomes
        if o.candidate.role.kind == "raw" and o.status == DEFERRED and o.candidate.task
    }
    if not waiting:
        return
    for o in outcomes:
        task = o.candidate.task
        if o.candidate.role.kind == "parsed" and o.status == NEW and task in waiting:
            o.status = DEFERRED
            o.reason = f"held: raw file {waiting[task]} of the same task is not ready yet"
            o.content = None


def task_problem_rows(problems: dict[Task, str], new: list[Source]) -> list[tuple[str, str]]:
    """``problems`` rows for tasks that were skipped: their new files, else the task itself."""
    rows = []
    for task, reason in sorted(problems.items()):
        paths = [s.relpath for s in new if (s.stage, s.task_id) == task]
        rows += [(p, reason) for p in paths] or [(f"task:{task[0]}/{task[1]}", reason)]
    return rows

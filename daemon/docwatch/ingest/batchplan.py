"""Planning a batch (I/O around the pure planner): what every touched task needs is read
from the index a stage at a time, tasks are planned parents first, and the children of a task
that changed are planned after it, in the same batch.  A task whose parent another writer of a
shared index holds waits for the next pass; one that cannot be planned is reported, skipped."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from docwatch.core.layout import STAGES
from docwatch.core.model import Attempt, ParentCandidate, Source, TaskInfo
from docwatch.core.tasks import TaskTables, effective_info, task_info
from docwatch.ingest.planner import (
    Change,
    PlanSettings,
    TaskChanges,
    parent_stages,
    plan_changes,
)
from docwatch.store.docstore import DocStore
from docwatch.store.index import Index, TasksData

log = logging.getLogger("docwatch.ingest")
Task = tuple[str, str]


class BatchPlanner:
    """Plans the tasks of one batch against what the index holds."""

    def __init__(
        self,
        index: Index,
        store: DocStore,
        tables: Callable[[], TaskTables],
        *,
        run_id: str,
        docs_base: str,
        pair_window_ns: int,
        prompt_copy: bool,
        enrich: Callable[[dict, Attempt], dict] | None = None,
    ) -> None:
        self.index = index
        self.store = store
        self.tables = tables
        self.run_id = run_id
        self.docs_base = docs_base
        self.pair_window_ns = pair_window_ns
        self.prompt_copy = prompt_copy
        self.enrich = enrich

    def plan(
        self,
        tasks: set[Task],
        new: list[Source],
        force: set[str],
        planned: Callable[[list[Change]], None] = lambda changes: None,
    ) -> BatchPlan:
        """Re-plan every touched task (parents first) and its children; ``planned`` gets each
        task's changes as soon as they are final (a scan's staging helper starts on them)."""
        tables = self.tables()
        new_by_task: dict[Task, list[Source]] = {}
        for s in new:
            new_by_task.setdefault((s.stage, s.task_id), []).append(s)
        out = BatchPlan(tables_digest=tables.digest or None)
        overlay: dict[Task, list[ParentCandidate]] = {}  # ok documents as this batch plans them
        settings = PlanSettings(
            run_id=self.run_id,
            docs_base=self.docs_base,
            now_ns=time.time_ns(),
            pair_window_ns=self.pair_window_ns,
            prompt_copy=self.prompt_copy,
        )
        todo = {stage: {t for s, t in tasks if s == stage} for stage in STAGES}
        ids: dict[str, Task] = {}
        stored = Prefetched(self.index)
        for stage in STAGES:  # parents (earlier stages) are planned before their children
            stored.ensure((stage, t) for t in todo[stage])  # a few queries for the whole stage
            for task_id in sorted(todo[stage]):
                task = (stage, task_id)
                info = effective_info(task_info(tables, *task), stored.data.facts.get(task))
                parent_tasks = {(s, info.parent_task_id) for s in parent_stages(info)}
                if self.index.lock_tasks(parent_tasks) != parent_tasks:
                    out.deferred.add(task)  # another writer is planning its parent: later
                    continue
                parents = {
                    s: self._parent_candidates((s, info.parent_task_id), overlay)
                    for s in parent_stages(info)
                }
                changes = self._plan_task(
                    task, info, new_by_task.get(task, []), parents, settings, force, stored
                )
                clash = next(
                    (c.doc_id for c in changes.changes if ids.get(c.doc_id, task) != task), None
                )
                if clash is not None:
                    changes.problem = f"doc_id {clash} would also belong to task {ids[clash][1]}"
                if changes.problem is not None:
                    out.problems[task] = changes.problem
                    log.error("%s %s: %s; skipped", stage, task_id, changes.problem)
                    continue
                ids.update((c.doc_id, task) for c in changes.changes)
                out.planned[task], out.infos[task] = changes, info
                planned(changes.changes)
                overlay[task] = changes.ok_candidates
                if changes.changes:
                    children = {
                        c for c in stored.data.children.get(task, ()) if c not in out.planned
                    }
                    locked = self.index.lock_tasks(children)
                    out.unlocked |= children - locked
                    for child_stage, child_id in locked:
                        todo[child_stage].add(child_id)
        return out

    def _plan_task(
        self,
        task: Task,
        info: TaskInfo,
        new: list[Source],
        parents: dict[str, list[ParentCandidate]],
        settings: PlanSettings,
        force: set[str],
        stored: Prefetched,
    ) -> TaskChanges:
        """Plan one task from its stored sources and documents and its new sources."""
        existing = stored.data.documents.get(task, {})
        pinned = stored.data.sources.get(task, [])
        missing = {
            doc_id for doc_id in existing if not self.store.doc_path(task[0], doc_id).is_dir()
        }
        try:
            return plan_changes(
                info,
                pinned + new,
                existing,
                parents,
                settings,
                missing_dirs=missing,
                force=force,
                enrich=self.enrich,
            )
        except Exception as exc:  # a bug or a bad value in one task must not block the batch
            log.exception("%s %s cannot be planned", *task)
            return TaskChanges(problem=f"cannot be planned: {exc!r}")

    def _parent_candidates(self, task: Task, overlay: dict) -> list[ParentCandidate]:
        cands = overlay.get(task)
        if cands is None:
            cands = overlay[task] = self.index.ok_candidates(*task)  # same for the batch
        return cands


class Prefetched:
    """What the index holds about the tasks a batch plans, read a stage at a time."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.data = TasksData()
        self.fetched: set[Task] = set()

    def ensure(self, tasks: Iterable[Task]) -> None:
        missing = set(tasks) - self.fetched
        if not missing:
            return
        more = self.index.tasks_data(missing)
        for name in ("facts", "sources", "documents"):
            getattr(self.data, name).update(getattr(more, name))
        for parent, children in more.children.items():
            self.data.children.setdefault(parent, set()).update(children)
        self.fetched |= missing


@dataclass
class BatchPlan:
    planned: dict[Task, TaskChanges] = field(default_factory=dict)
    infos: dict[Task, TaskInfo] = field(default_factory=dict)
    problems: dict[Task, str] = field(default_factory=dict)  # tasks skipped, with why
    unlocked: set[Task] = field(default_factory=set)  # children another writer held
    deferred: set[Task] = field(default_factory=set)  # parents another writer held
    tables_digest: str | None = None  # the task tables ``infos`` come from

"""Planning one task (pure): from its sources and its stored documents to the changes to write.

``plan_changes`` takes plain data (the task's effective facts, every known source, the stored
documents, parent candidates) and returns what must be created, updated or superseded.  The
ingestor loads that data from the index and hands the result to the writer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from docwatch.core.clock import iso_utc
from docwatch.core.layout import KINDS
from docwatch.core.model import (
    OK,
    SUPERSEDED,
    Attempt,
    ParentCandidate,
    Source,
    TaskInfo,
    choose_parent,
    document_row,
    plan_task,
)
from docwatch.store.docstore import Op
from docwatch.store.index import source_key, split_source_key
from docwatch.store.schema import DOCUMENT_COLUMNS

#: Parent stages tried, in order, when the tables do not say which stage a parent task is.
ANY_PARENT_STAGE = ("essay", "draft")


@dataclass(frozen=True)
class PlanSettings:
    run_id: str
    docs_base: str  # docs_root relative to the data root, POSIX
    now_ns: int
    pair_window_ns: int
    prompt_copy: bool = True


@dataclass
class Change:
    """A document to create or update, with its row and the source files it needs."""

    attempt: Attempt
    info: TaskInfo
    row: dict
    op: Op
    files: dict[str, Source]  # kind → source to copy
    parent_stage: str | None
    remove: tuple[str, ...] = ()  # file names the document drops
    stored_facts: dict | None = None  # superseded: the attempts row stays as it was

    @property
    def doc_id(self) -> str:
        return self.attempt.doc_id

    @property
    def task(self) -> tuple[str, str]:
        return (self.info.stage, self.info.task_id)

    @property
    def facts(self) -> dict:
        """The attempts row it writes (a superseded document keeps its stored facts), built
        once: metadata.json and the index write the same dict."""
        facts = self.__dict__.get("_facts")
        if facts is None:
            facts = attempt_facts(self.attempt, self.info, self.parent_stage)
            facts.update(self.stored_facts or {})
            self.__dict__["_facts"] = facts
        return facts


@dataclass
class TaskChanges:
    changes: list[Change] = field(default_factory=list)
    ok_candidates: list[ParentCandidate] = field(default_factory=list)
    problem: str | None = None  # set: the task cannot be planned; nothing of it is written


Enrich = Callable[[dict, Attempt], dict]


def plan_changes(
    info: TaskInfo,
    sources: list[Source],
    existing: Mapping[str, dict],
    parents: Mapping[str, list[ParentCandidate]],
    settings: PlanSettings,
    *,
    missing_dirs: set[str] = frozenset(),
    force: set[str] = frozenset(),
    enrich: Enrich | None = None,
) -> TaskChanges:
    """Every change one task needs so that its documents match its sources.

    ``existing`` holds the stored documents of the task (rows joined with their attempt facts,
    ``_``-prefixed); ``parents`` maps a parent stage to the ok documents of the parent task;
    ``missing_dirs`` are stored documents whose directory is gone; ``force`` documents are
    rewritten from their sources whatever the index says (``verify --repair``).
    """
    plan = plan_task(info, sources, now_ns=settings.now_ns, pair_window_ns=settings.pair_window_ns)
    out = TaskChanges(
        ok_candidates=[
            ParentCandidate(a.doc_id, a.created_at_ns, a.version)
            for a in plan.attempts
            if a.status == OK
        ]
    )
    ids = [a.doc_id for a in plan.attempts]
    if len(set(ids)) != len(ids):  # cannot happen with unique sources; never write it
        out.problem = "two attempts of this task would get one doc_id; task skipped"
        return out
    holder = {a.parsed.key: a.doc_id for a in plan.attempts if a.parsed is not None}
    by_key = {s.key: s for s in sources}
    for attempt in plan.attempts:
        parent_stage, parent_doc_id = choose_parent_doc(info, attempt, parents)
        old = existing.get(attempt.doc_id)
        change = _diff(
            attempt,
            info,
            old,
            parent_stage,
            parent_doc_id,
            settings,
            rebuild=attempt.doc_id in force or attempt.doc_id in missing_dirs,
            enrich=enrich,
        )
        if change is not None:
            out.changes.append(change)
    planned = set(ids)
    for doc_id, old in sorted(existing.items()):
        if doc_id not in planned:
            change = _supersede(old, info, holder, by_key, settings)
            if change is not None:
                out.changes.append(change)
    return out


def choose_parent_doc(
    info: TaskInfo, attempt: Attempt, parents: Mapping[str, list[ParentCandidate]]
) -> tuple[str | None, str | None]:
    """(parent stage, parent doc id) of an attempt; the doc id is None while unlinked."""
    if info.parent_task_id is None:
        return info.parent_stage, None
    for stage in parent_stages(info):
        chosen = choose_parent(parents.get(stage, ()), attempt.parent_ref_ns)
        if chosen is not None:
            return stage, chosen
    return info.parent_stage, None


def parent_stages(info: TaskInfo) -> tuple[str, ...]:
    if info.parent_task_id is None:
        return ()
    return (info.parent_stage,) if info.parent_stage else ANY_PARENT_STAGE


def _diff(
    attempt: Attempt,
    info: TaskInfo,
    old: dict | None,
    parent_stage: str | None,
    parent_doc_id: str | None,
    settings: PlanSettings,
    *,
    rebuild: bool,
    enrich: Enrich | None,
) -> Change | None:
    row = document_row(
        attempt,
        info,
        parent_doc_id=parent_doc_id,
        run_id=settings.run_id,
        doc_dir=f"{settings.docs_base}/{attempt.stage}/{attempt.doc_id}",
        raw_chars=None,
        parsed_chars=None,
    )
    wanted = {k: s for k, s in attempt.sources().items() if s is not None}
    if not settings.prompt_copy:
        wanted.pop("prompt", None)
    if old is not None:
        row["run_id"] = old["run_id"]  # who first ingested it
    if enrich is not None:  # facts only the pipeline's run records know
        row = enrich(row, attempt)
    if old is None or rebuild:
        return Change(attempt, info, row, Op.CREATE, wanted, parent_stage)
    for kind in ("raw", "parsed"):  # unchanged files keep their counts; staging sets new
        row[f"{kind}_chars"] = old[f"{kind}_chars"] if kind in wanted else None
    for key in ("usage_prompt_tokens", "usage_completion_tokens", "usage_max_tokens"):
        row[key] = old[key] if row[key] is None else row[key]
    files = {
        kind: s
        for kind, s in wanted.items()
        if old[f"_{kind}_key"] != source_key(s.relpath, s.sha256)
    }
    remove = tuple(f"{k}.txt" for k in ("parsed", "prompt") if old[f"_{k}_key"] and k not in wanted)
    same = all(row[c] == old[c] for c in DOCUMENT_COLUMNS)
    if same and not files and not remove and old["_parent_stage"] == parent_stage:
        return None
    return Change(attempt, info, row, Op.UPDATE, files, parent_stage, remove)


def _supersede(
    old: dict,
    info: TaskInfo,
    holder: Mapping[tuple[str, str], str],
    by_key: Mapping[tuple[str, str], Source],
    settings: PlanSettings,
) -> Change | None:
    """A stored document the plan no longer has: its parsed file now belongs to another
    attempt (a raw that arrived late).  Its row and directory stay, marked superseded."""
    keys = {kind: old[f"_{kind}_key"] for kind in KINDS}
    primary = split_source_key(keys["raw"] or keys["parsed"])
    by = holder.get(primary)
    meta = dict(old["meta_small"] or {})
    if old["status"] == SUPERSEDED and meta.get("superseded_by") == by:
        return None
    meta["superseded_by"] = by
    meta.setdefault("superseded_status", old["status"])
    row = {c: old[c] for c in DOCUMENT_COLUMNS}
    row["status"] = SUPERSEDED
    row["meta_small"] = meta
    sources = {k: by_key.get(split_source_key(v)) if v else None for k, v in keys.items()}
    attempt = Attempt(
        doc_id=old["doc_id"],
        stage=old["stage"],
        task_id=old["task_id"],
        version=old["_version"],
        raw=sources["raw"],
        parsed=sources["parsed"],
        prompt=sources["prompt"],
        status=SUPERSEDED,
        status_reason=None,
        lineage_prev_doc_id=old["lineage_prev_doc_id"],
    )
    stored = {
        "parent_task_id": old["_parent_task_id"],
        "parent_ref_ns": old["_parent_ref_ns"],
        "created_at_ns": old["_created_at_ns"],
    }
    return Change(attempt, info, row, Op.UPDATE, {}, old["_parent_stage"], stored_facts=stored)


def attempt_facts(attempt: Attempt, info: TaskInfo, parent_stage: str | None) -> dict:
    """The ``attempts`` row of a document: what the model needs that the seed row lacks."""

    def key(s: Source | None) -> str | None:
        return source_key(s.relpath, s.sha256) if s else None

    return {
        "doc_id": attempt.doc_id,
        "version": attempt.version,
        "created_at_ns": attempt.created_at_ns,
        "parent_stage": parent_stage,
        "parent_task_id": info.parent_task_id,
        "parent_ref_ns": attempt.parent_ref_ns,
        "raw_key": key(attempt.raw),
        "parsed_key": key(attempt.parsed),
        "prompt_key": key(attempt.prompt),
        "info_hash": info.fingerprint(),
    }


def metadata_with_chars(
    change: Change, chars: dict[str, int], version: str, written_at_ns: int
) -> dict:
    """``metadata.json`` of a staged change, once its copies' characters are counted (by
    file name; they go into its row too)."""
    for kind in ("raw", "parsed"):
        if f"{kind}.txt" in chars:
            change.row[f"{kind}_chars"] = chars[f"{kind}.txt"]
    return metadata(change, version, written_at_ns)


def metadata(change: Change, version: str, written_at_ns: int) -> dict:
    """``metadata.json``: the full row, the attempt and task facts, and provenance."""
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
        for kind, s in change.attempt.sources().items()
    }
    return {
        "row": change.row,
        "attempt": change.facts,
        "task": change.info.facts(),
        "provenance": {"sources": provenance, "copied": sorted(change.files)},
        "docwatch": {"version": version, "written_at": iso_utc(written_at_ns)},
    }

"""The attempt model (pure): which sources form which documents, and what their rows say.

Everything here works on plain data (``Source``, ``TaskInfo``) so that the scan and the live
watcher, fed the same files in any order, reach the same documents (SPEC "What an attempt is",
"Status", "Identity and links").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from docwatch.core.clock import iso_utc
from docwatch.core.ids import doc_id_for, hash36, logical_key_for

OK, PENDING, PARSE_ERROR, GEN_ERROR = "ok", "pending", "parse_error", "gen_error"
#: A document that was visible and whose sources now belong to another attempt (SPEC "Status").
SUPERSEDED = "superseded"


def attempt_order(version: int, created_at_ns: int) -> tuple[bool, int, int]:
    """Oldest first: an unversioned legacy file before every versioned one, then by creation
    time, then by version.  Lineage, parent choice and the readers' "latest" all use it."""
    return (version != 0, created_at_ns, version)


@dataclass(frozen=True, order=True)
class Source:
    """One version of one legacy file, identified by its path and its content hash."""

    stage: str
    kind: str  # prompt | raw | parsed
    relpath: str  # relative to the data root, POSIX
    task_id: str
    version: int  # 0 for an unversioned legacy file
    mtime_ns: int
    size: int
    sha256: str

    @property
    def key(self) -> tuple[str, str]:
        """Identity: path and content.  mtime and size are facts pinned at first ingestion."""
        return (self.relpath, self.sha256)

    def order(self) -> tuple[int, int, str, str]:
        """Chronological order: mtime, then version, then path and hash for a total order."""
        return (self.mtime_ns, self.version, self.relpath, self.sha256)


@dataclass(frozen=True)
class TaskInfo:
    """What the task and template tables say about one task (ids are the fallback)."""

    stage: str
    task_id: str
    template_id: str
    model_id: str
    parser: str | None = None  # None = identity (no parsing step)
    generator: str | None = None  # essays: llm | copy
    parent_stage: str | None = None  # essay → draft; evaluation → essay | draft
    parent_task_id: str | None = None
    provider: str | None = None
    from_tables: bool = False

    def fingerprint(self) -> str:
        """Changes exactly when what the tables say about this task changes (computed once:
        a batch asks for it per attempt and per row)."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            values = (str(v) if isinstance(v, bool) else v for v in self.facts().values())
            cached = hash36(*values)
            object.__setattr__(self, "_fingerprint", cached)  # frozen: not a field, no eq
        return cached

    def facts(self) -> dict:
        """The facts as plain data (stored with the task, and in each ``metadata.json``)."""
        return {name: getattr(self, name) for name in TASK_FACTS}

    @classmethod
    def from_facts(cls, stage: str, task_id: str, facts: dict) -> TaskInfo:
        return cls(stage, task_id, **{name: facts.get(name) for name in TASK_FACTS})


#: TaskInfo fields that are facts about the task (stage and task id identify it).
TASK_FACTS = (
    "template_id",
    "model_id",
    "parser",
    "generator",
    "parent_stage",
    "parent_task_id",
    "provider",
    "from_tables",
)


@dataclass(frozen=True)
class Attempt:
    """One document: a raw version, or a parsed-only version, with what pairs with it."""

    doc_id: str
    stage: str
    task_id: str
    version: int
    raw: Source | None
    parsed: Source | None
    prompt: Source | None
    status: str
    status_reason: str | None
    lineage_prev_doc_id: str | None = None

    @property
    def primary(self) -> Source:
        return self.raw or self.parsed  # type: ignore[return-value]

    @property
    def created_at_ns(self) -> int:
        return self.primary.mtime_ns

    @property
    def parent_ref_ns(self) -> int:
        """When the attempt was asked for: its prompt's mtime, else its creation time."""
        return self.prompt.mtime_ns if self.prompt else self.created_at_ns

    def sources(self) -> dict[str, Source | None]:
        return {"raw": self.raw, "parsed": self.parsed, "prompt": self.prompt}


@dataclass(frozen=True)
class ParentCandidate:
    """An ``ok`` document of a parent task, as far as parent choice needs it."""

    doc_id: str
    created_at_ns: int
    version: int


@dataclass
class TaskPlan:
    """The attempts of one task, oldest first."""

    stage: str
    task_id: str
    attempts: list[Attempt] = field(default_factory=list)


def pair_sources(
    raws: Sequence[Source], parsed: Sequence[Source]
) -> tuple[dict[tuple, Source], list[Source]]:
    """Pair parsed files with raw attempts; return raw key → parsed, and the parsed-only ones.

    A parsed file belongs to the newest raw whose mtime ≤ its own and that has no parsed yet
    (parsed files taken oldest first).  A pure function of the two sets, so the order in which
    files were seen never matters.
    """
    paired: dict[tuple, Source] = {}
    loose: list[Source] = []
    for p in sorted(parsed, key=Source.order):
        free = [r for r in raws if r.key not in paired and r.mtime_ns <= p.mtime_ns]
        if free:
            paired[max(free, key=Source.order).key] = p
        else:
            loose.append(p)
    return paired, loose


def choose_prompt(prompts: Sequence[Source], at_ns: int) -> Source | None:
    """The newest prompt version written no later than ``at_ns``; two byte versions of one
    path with one mtime (rewritten within the timestamp granularity) by hash, so the choice
    never depends on which was met first."""
    eligible = [p for p in prompts if p.mtime_ns <= at_ns]
    if not eligible:
        return None
    return max(eligible, key=lambda p: (p.version, p.mtime_ns, p.relpath, p.sha256))


def raw_only_status(
    info: TaskInfo, created_at_ns: int, has_newer: bool, now_ns: int, pair_window_ns: int
) -> tuple[str, str | None]:
    """Status of a raw attempt without a parsed file (SPEC "Status")."""
    expired = now_ns - created_at_ns >= pair_window_ns
    if not has_newer and not expired:
        return PENDING, None
    why = "a newer attempt exists" if has_newer else "pairing window passed"
    if info.parser:
        return PARSE_ERROR, f"raw without parsed file ({why}); template parser {info.parser!r}"
    return GEN_ERROR, f"raw without parsed file ({why}); no parser, so generation failed"


def plan_task(
    info: TaskInfo,
    sources: Iterable[Source],
    *,
    now_ns: int,
    pair_window_ns: int,
) -> TaskPlan:
    """Decide every attempt of one task from all its known sources."""
    by_kind: dict[str, list[Source]] = {"raw": [], "parsed": [], "prompt": []}
    for s in unique_sources(sources):
        by_kind[s.kind].append(s)
    raws = sorted(by_kind["raw"], key=Source.order)
    paired, loose = pair_sources(raws, by_kind["parsed"])
    drafts: list[tuple[Source | None, Source | None]] = [(r, paired.get(r.key)) for r in raws]
    drafts += [(None, p) for p in loose]
    drafts.sort(key=lambda rp: _draft_order(rp[0] or rp[1]))

    attempts: list[Attempt] = []
    for index, (raw, parsed) in enumerate(drafts):
        primary = raw or parsed
        assert primary is not None
        if parsed is not None:
            status, reason = OK, None
        else:
            has_newer = index < len(drafts) - 1
            status, reason = raw_only_status(
                info, primary.mtime_ns, has_newer, now_ns, pair_window_ns
            )
        attempts.append(
            Attempt(
                doc_id=doc_id_for(info.stage, info.task_id, primary.relpath, primary.sha256),
                stage=info.stage,
                task_id=info.task_id,
                version=primary.version,
                raw=raw,
                parsed=parsed,
                prompt=choose_prompt(by_kind["prompt"], primary.mtime_ns),
                status=status,
                status_reason=reason,
                lineage_prev_doc_id=attempts[-1].doc_id if attempts else None,
            )
        )
    return TaskPlan(info.stage, info.task_id, attempts)


def unique_sources(sources: Iterable[Source]) -> list[Source]:
    """One Source per identity (path, hash).  Callers pass the pinned facts of a known source;
    should two versions of its facts still meet here, the earliest wins, so a touch can never
    make a second attempt of the same bytes."""
    first: dict[tuple[str, str], Source] = {}
    for s in sources:
        seen = first.get(s.key)
        if seen is None or s.order() < seen.order():
            first[s.key] = s
    return list(first.values())


def _draft_order(primary: Source) -> tuple:
    return (*attempt_order(primary.version, primary.mtime_ns), primary.relpath, primary.sha256)


def choose_parent(candidates: Iterable[ParentCandidate], ref_ns: int) -> str | None:
    """The latest ok parent document created no later than ``ref_ns``."""
    eligible = [c for c in candidates if c.created_at_ns <= ref_ns]
    if not eligible:
        return None
    return max(
        eligible, key=lambda c: (*attempt_order(c.version, c.created_at_ns), c.doc_id)
    ).doc_id


def logical_key(info: TaskInfo, parent_doc_id: str | None) -> str:
    """The seed's logical key; drafts anchor on their task, others on their parent document."""
    if info.stage == "draft":
        anchor = info.task_id
    else:
        anchor = parent_doc_id or f"unlinked:{info.task_id}"
    return logical_key_for(info.stage, anchor, info.template_id, info.model_id)


def document_row(
    attempt: Attempt,
    info: TaskInfo,
    *,
    parent_doc_id: str | None,
    run_id: str,
    doc_dir: str,
    raw_chars: int | None,
    parsed_chars: int | None,
) -> dict:
    """The ``documents`` row of an attempt (meta_small as a dict; the index serialises it)."""
    meta: dict = {
        "sources": {k: (s.relpath if s else None) for k, s in attempt.sources().items()},
        "version": attempt.version,
    }
    if attempt.status_reason:
        meta["status_reason"] = attempt.status_reason
    if info.stage != "draft" and parent_doc_id is None:
        meta["unlinked"] = (
            f"parent task {info.parent_task_id} has no ok document yet"
            if info.parent_task_id
            else "parent task unknown (task missing from the task tables)"
        )
    if info.provider:
        meta["provider"] = info.provider
    if info.generator:
        meta["generator"] = info.generator
    return {
        "doc_id": attempt.doc_id,
        "logical_key_id": logical_key(info, parent_doc_id),
        "stage": attempt.stage,
        "task_id": attempt.task_id,
        "parent_doc_id": parent_doc_id,
        "template_id": info.template_id,
        "model_id": info.model_id,
        "run_id": run_id,
        "prompt_path": attempt.prompt.relpath if attempt.prompt else None,
        "parser": info.parser,
        "status": attempt.status,
        "usage_prompt_tokens": None,
        "usage_completion_tokens": None,
        "usage_max_tokens": None,
        "created_at": iso_utc(attempt.created_at_ns),
        "doc_dir": doc_dir,
        "raw_chars": raw_chars,
        "parsed_chars": parsed_chars,
        "meta_small": meta,
        "lineage_prev_doc_id": attempt.lineage_prev_doc_id,
    }

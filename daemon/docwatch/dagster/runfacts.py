"""Run records as plain data (pure): Dagster events → facts about documents.

Pure part (no Dagster import; unit-tested with plain dicts):

* ``event_from_dict`` / ``RunEvent``: one materialisation or step failure of ``draft_response``,
  ``essay_response`` or ``evaluation_response``;
* ``facts_of(event)`` → ``Facts``: run id, status, reason, usage, finish_reason, model;
* ``RecordBook``: the set of events, indexed for matching, and ``enrich(row, attempt)``.

Matching an event to a document (deterministic; a pure function of the *set* of events):

1. Events that name a raw file (metadata ``raw_path``) match the attempt whose raw source is
   that file.  ``raw_path`` is written relative to the pipeline's working directory
   (``data/3_generation/draft_responses_raw/<task>_v1.txt``) or absolute; it is mapped below the
   data root by finding one of the configured folders (``3_generation/draft_responses_raw``…)
   as the path components right above the file name (longest folder wins).  So the data root's
   own name and location do not matter.
2. Events without ``raw_path`` (evaluations, copy-mode essays) are materialisations only; they
   match a parsed-only attempt of the same stage whose task id is the event's partition key.
3. Among the candidates, the event nearest *after* the attempt's creation time (the raw
   file's mtime; for parsed-only attempts the parsed file's mtime) wins: the pipeline writes the
   file, then Dagster records the event.  Events up to ``SKEW_SECONDS`` before it are accepted
   only when none is after (clock granularity, network filesystems).  Partition matches must
   also lie within ``PARSED_LAG_SECONDS`` after the file (an attempt whose own event is missing
   must not borrow a much later attempt's).  Ties: storage id, run id.

Facts applied to the row (``Facts.apply``; the same facts twice give the same row):
``run_id`` ← the Dagster run id; ``status`` ← ``truncated`` when the record says ``truncated``
or ``finish_reason == "length"``, else for step failures ``parse_error`` when the failure names a
``parser`` or an ``error``, else ``gen_error``; a successful materialisation leaves the status
the files decided (``ok``, or ``pending`` while the parsed file is on its way), except that a
truncated but kept response (evaluations have no truncation guard) becomes ``truncated``.
``usage_completion_tokens`` ← ``completion_tokens``, ``usage_max_tokens`` ←
``requested_max_tokens`` or ``max_tokens``, ``usage_prompt_tokens`` ← ``prompt_tokens``;
``meta_small`` gets ``finish_reason``, ``model_used``, ``status_reason`` (the failure's own
description and error) and ``dagster`` (run id, partition, asset, step, event, time, metadata).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from docwatch.core.clock import iso_seconds
from docwatch.core.layout import parse_name

if TYPE_CHECKING:
    from docwatch.core.model import Attempt

log = logging.getLogger("docwatch.runrecords")

#: Dagster asset key (``/``-joined path) → stage.  The legacy pipeline's names.
ASSETS: dict[str, str] = {
    "draft_response": "draft",
    "essay_response": "essay",
    "evaluation_response": "evaluation",
}
MATERIALIZATION, STEP_FAILURE = "materialization", "step_failure"
TRUNCATED, PARSE_ERROR, GEN_ERROR = "truncated", "parse_error", "gen_error"
#: Events this long before a file's mtime still match it when none is after (clock skew).
SKEW_SECONDS = 5.0
#: A partition-matched (parsed-only) file's materialisation comes at most this long after it.
PARSED_LAG_SECONDS = 300.0
#: Task-id metadata keys per stage (fallback when the partition key is missing).
_TASK_KEYS = {
    "draft": ("task_id", "draft_task_id"),
    "essay": ("essay_task_id", "task_id"),
    "evaluation": ("evaluation_task_id", "task_id"),
}
_MAX_TEXT = 500  # longer metadata strings are cut in meta_small


# -- events and facts (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class RunEvent:
    """One materialisation or step failure of a response asset, as plain data."""

    kind: str  # materialization | step_failure
    asset: str
    stage: str
    run_id: str
    partition: str | None
    timestamp: float  # seconds since the epoch
    storage_id: int
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    step: str | None = None
    description: str | None = None  # a Failure's description
    error: str | None = None  # the step's error message

    @property
    def key(self) -> tuple[str, str, int]:
        """Identity: storage ids of step failures are only unique within their run."""
        return (self.kind, self.run_id, self.storage_id)

    def order(self) -> tuple[float, int, str, str]:
        return (self.timestamp, self.storage_id, self.run_id, self.kind)

    @property
    def raw_path(self) -> str | None:
        value = self.metadata.get("raw_path")
        return value if isinstance(value, str) and value.strip() else None

    def task_ids(self) -> set[str]:
        """The task this event is about: its partition, else a task-id key, else the raw name."""
        ids = {self.partition} if self.partition else set()
        if not ids:
            for key in _TASK_KEYS.get(self.stage, ("task_id",)):
                value = self.metadata.get(key)
                if isinstance(value, str) and value:
                    ids.add(value)
                    break
        if self.raw_path:
            parsed = parse_name(_parts(self.raw_path)[-1])
            if not isinstance(parsed, str):
                ids.add(parsed.task_id)
        return ids


def event_from_dict(d: Mapping[str, Any], assets: Mapping[str, str] = ASSETS) -> RunEvent | None:
    """A ``RunEvent`` from a plain dict; None when the asset is not one of ``assets``.

    Keys: ``asset`` (``"draft_response"`` or a list of key parts), ``event``
    (``materialization``/``step_failure``), ``run_id``, ``partition``, ``timestamp`` (seconds),
    ``storage_id``, ``metadata`` (plain values); optional ``step``, ``description``, ``error``.
    """
    asset = d["asset"]
    if not isinstance(asset, str):
        asset = "/".join(asset)
    stage = assets.get(asset)
    if stage is None:
        return None
    kind = d["event"]
    if kind not in (MATERIALIZATION, STEP_FAILURE):
        raise ValueError(f"event must be {MATERIALIZATION} or {STEP_FAILURE}, not {kind!r}")
    return RunEvent(
        kind=kind,
        asset=asset,
        stage=stage,
        run_id=str(d["run_id"]),
        partition=d.get("partition") or None,
        timestamp=float(d["timestamp"]),
        storage_id=int(d["storage_id"]),
        metadata=dict(d.get("metadata") or {}),
        step=d.get("step"),
        description=d.get("description"),
        error=d.get("error"),
    )


@dataclass(frozen=True)
class Facts:
    """What one event says about its document."""

    run_id: str
    failed: bool
    status: str | None  # None: keep the status the files decided
    reason: str | None
    usage_prompt_tokens: int | None
    usage_completion_tokens: int | None
    usage_max_tokens: int | None
    finish_reason: str | None
    model_used: str | None
    dagster: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def apply(self, row: dict) -> dict:
        """The row with these facts (a new dict; applying twice changes nothing more)."""
        out = dict(row)
        meta = dict(out.get("meta_small") or {})
        out["run_id"] = self.run_id
        if self.status is not None and (self.failed or out.get("status") == "ok"):
            out["status"] = self.status
            if self.reason:
                meta["status_reason"] = self.reason
        for key in ("usage_prompt_tokens", "usage_completion_tokens", "usage_max_tokens"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.finish_reason is not None:
            meta["finish_reason"] = self.finish_reason
        if self.model_used is not None:
            meta["model_used"] = self.model_used
        meta["dagster"] = json.loads(json.dumps(self.dagster, sort_keys=True))
        out["meta_small"] = meta
        return out


def facts_of(event: RunEvent) -> Facts:
    """The facts an event states (see the module docstring for the status rules)."""
    md = event.metadata
    finish = _text(md.get("finish_reason"))
    truncated = _truthy(md.get("truncated")) or finish == "length"
    failed = event.kind == STEP_FAILURE
    completion = _int(md.get("completion_tokens"))
    max_tokens = _int(md.get("requested_max_tokens"))
    if max_tokens is None:
        max_tokens = _int(md.get("max_tokens"))
    if truncated:
        status = TRUNCATED
    elif failed and ("parser" in md or "error" in md):
        status = PARSE_ERROR
    elif failed:
        status = GEN_ERROR
    else:
        status = None
    return Facts(
        run_id=event.run_id,
        failed=failed,
        status=status,
        reason=_reason(event, status, finish, completion, max_tokens),
        usage_prompt_tokens=_int(md.get("prompt_tokens")),
        usage_completion_tokens=completion,
        usage_max_tokens=max_tokens,
        finish_reason=finish,
        model_used=_text(md.get("model_used")) or _text(md.get("model_name")),
        dagster={
            "run_id": event.run_id,
            "partition": event.partition,
            "asset": event.asset,
            "step": event.step,
            "event": event.kind,
            "timestamp": iso_seconds(event.timestamp),
            "metadata": {k: _small(v) for k, v in sorted(md.items())},
        },
    )


def _reason(
    event: RunEvent,
    status: str | None,
    finish: str | None,
    completion: int | None,
    max_tokens: int | None,
) -> str | None:
    """``status_reason``: what the run's own record says (its Failure's description and error)."""
    if status is None:
        return None
    said = (event.description or "").strip() or (event.error or "").strip()
    error = _text(event.metadata.get("error"))
    if error and error not in said:
        said = f"{said}: {error}" if said else error
    if status == TRUNCATED:
        tokens = f", {completion}/{max_tokens} completion tokens" if completion else ""
        what = f"response truncated at the token limit (finish_reason={finish or 'length'}{tokens})"
        if event.kind != STEP_FAILURE:
            what += "; the pipeline kept it"
        return f"{what}: {said}" if said else what
    if status == PARSE_ERROR:
        parser = _text(event.metadata.get("parser"))
        return said or (f"parser {parser!r} failed" if parser else "parsing failed")
    return said or "the generation step failed"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() in ("true", "1", "yes")


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _small(value: Any) -> Any:
    """A metadata value as meta_small keeps it: long text cut, NaN and infinities as null
    (JSON has none: strict readers of meta_small and metadata.json reject them)."""
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        return value[:_MAX_TEXT] + "…"
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    text = json.dumps(value, default=str, sort_keys=True)
    if len(text) > _MAX_TEXT:
        return text[:_MAX_TEXT] + "…"
    return json.loads(text, parse_constant=lambda _constant: None)


# -- matching (pure) -----------------------------------------------------------------------


def _parts(path: str) -> tuple[str, ...]:
    """Path components, for POSIX or Windows spellings; ``.`` dropped."""
    pure = PureWindowsPath(path) if "\\" in path else PurePosixPath(path)
    return tuple(p for p in pure.parts if p not in (".", "/", "\\") and not p.endswith(":\\"))


def relpath_below_root(raw_path: str, folders: Iterable[str]) -> str | None:
    """``raw_path`` as written by the pipeline → the source's path relative to the data root.

    The folder (``3_generation/draft_responses_raw``) must be the components right above the
    file name; the longest matching folder wins.  None when no configured folder matches.
    """
    parts = _parts(raw_path)
    if len(parts) < 2:
        return None
    best: tuple[str, ...] | None = None
    for folder in folders:
        fparts = _parts(folder)
        n = len(fparts)
        matches = n and len(parts) > n and parts[-1 - n : -1] == fparts
        if matches and (best is None or n > len(best)):
            best = fparts
    return None if best is None else "/".join((*best, parts[-1]))


def choose(
    events: Iterable[RunEvent],
    ref_s: float,
    *,
    lag_s: float | None = None,
    skew_s: float = SKEW_SECONDS,
) -> RunEvent | None:
    """The event nearest after ``ref_s`` (within ``lag_s``), else the nearest up to ``skew_s``
    before it; ties by storage id and run id.  Pure and order-independent."""
    after, before = [], []
    for e in events:
        if e.timestamp >= ref_s:
            if lag_s is None or e.timestamp - ref_s <= lag_s:
                after.append(e)
        elif ref_s - e.timestamp <= skew_s:
            before.append(e)
    if after:
        return min(after, key=RunEvent.order)
    if before:
        return max(before, key=RunEvent.order)
    return None


class RecordBook:
    """The set of run events, indexed by raw source path and by (stage, task id)."""

    def __init__(self, folders: Iterable[str]) -> None:
        self.folders = tuple(sorted({f.strip("/") for f in folders if f.strip("/")}))
        self._events: dict[tuple[str, str, int], RunEvent] = {}
        self._by_path: dict[str, dict[tuple, RunEvent]] = {}
        self._by_task: dict[tuple[str, str], dict[tuple, RunEvent]] = {}
        self.unmatched_paths: set[str] = set()

    def __len__(self) -> int:
        return len(self._events)

    def add(self, events: Iterable[RunEvent]) -> set[tuple[str, str]]:
        """Add events (already known ones are ignored); return the tasks they concern."""
        touched: set[tuple[str, str]] = set()
        for e in events:
            if e.key in self._events:
                continue
            self._events[e.key] = e
            tasks = {(e.stage, t) for t in e.task_ids()}
            touched |= tasks
            if e.raw_path:
                rel = relpath_below_root(e.raw_path, self.folders)
                if rel is None:
                    self.unmatched_paths.add(e.raw_path)
                    log.debug(
                        "run %s: raw_path %r is under no configured folder", e.run_id, e.raw_path
                    )
                    continue
                self._by_path.setdefault(rel, {})[e.key] = e
            elif e.kind == MATERIALIZATION and e.partition:
                self._by_task.setdefault((e.stage, e.partition), {})[e.key] = e
        return touched

    def match(
        self, stage: str, task_id: str, raw_relpath: str | None, created_ns: int
    ) -> RunEvent | None:
        """The event of one attempt (see the module docstring), or None."""
        ref = created_ns / 1e9
        if raw_relpath is not None:
            cands = [e for e in self._by_path.get(raw_relpath, {}).values() if e.stage == stage]
            return choose(cands, ref)
        cands = list(self._by_task.get((stage, task_id), {}).values())
        return choose(cands, ref, lag_s=PARSED_LAG_SECONDS)

    def facts_for(self, attempt: Attempt) -> Facts | None:
        raw = attempt.raw.relpath if attempt.raw is not None else None
        event = self.match(attempt.stage, attempt.task_id, raw, attempt.created_at_ns)
        return facts_of(event) if event is not None else None

    def enrich(self, row: dict, attempt: Attempt) -> dict:
        """The ``Ingestor.enrich`` hook: the row with its run's facts, if any are known."""
        facts = self.facts_for(attempt)
        return facts.apply(row) if facts is not None else row


# -- reading the Dagster instance (I/O) ----------------------------------------------------

#: How long one read through ``dagster_python`` may take (the first one reads all history).

"""Run records as plain data (pure): Dagster events → facts about documents.

Pure part (no Dagster import; unit-tested with plain dicts):

* ``event_from_dict`` / ``RunEvent``: one materialisation or step failure of ``draft_response``,
  ``essay_response`` or ``evaluation_response``;
* ``facts_of(event)`` → ``Facts``: run id, status, reason, usage, finish_reason, model.

Which event belongs to which document: ``dagster/matching.py``.

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
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from docwatch.core.clock import iso_seconds
from docwatch.core.layout import parse_name

#: Dagster asset key (``/``-joined path) → stage.  The legacy pipeline's names.
ASSETS: dict[str, str] = {
    "draft_response": "draft",
    "essay_response": "essay",
    "evaluation_response": "evaluation",
}
MATERIALIZATION, STEP_FAILURE = "materialization", "step_failure"
TRUNCATED, PARSE_ERROR, GEN_ERROR = "truncated", "parse_error", "gen_error"
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
            parsed = parse_name(path_parts(self.raw_path)[-1])
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


def path_parts(path: str) -> tuple[str, ...]:
    """Path components, for POSIX or Windows spellings; ``.`` dropped."""
    pure = PureWindowsPath(path) if "\\" in path else PurePosixPath(path)
    return tuple(p for p in pure.parts if p not in (".", "/", "\\") and not p.endswith(":\\"))

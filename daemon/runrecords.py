"""Run records: what the Dagster instance knows about a document that its files cannot say.

The legacy files cannot tell a truncated response from a parser error, and carry no run id or
token counts; the Dagster instance that ran the pipeline records them (LEGACY_PIPELINE.md, "What
the Dagster instance records").  This module turns those records into *facts* about documents
and applies them through the ingest hook (``Ingestor.enrich``).

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

I/O part: ``RunRecords(dagster_home, folders, dagster_python=...)`` keeps the cursor of
``daemon/dagster_events.py`` (which does the reading: materialisations by storage id per asset,
step failures per run, runs by ``updated_after``; see its docstring), so ``poll()`` reads only
new events and returns the (stage, task_id) pairs they concern.  Two transports:

* ``Subprocess`` when ``dagster_python`` is set (the normal deployment): the pipeline venv's
  Python runs ``dagster_events.py`` by file path, so the instance is read by the Dagster that
  wrote it, whatever docwatch's own venv holds (Dagster >= 1.8.5 requires ``watchdog<7``, the
  daemon watchdog 7.1);
* ``InProcess`` otherwise: ``import daemon.dagster_events`` here (Dagster must import in
  docwatch's venv; ``import daemon`` never imports Dagster).

Wiring: ``attach(indexer, cfg)`` (``scan`` and ``watch`` at start) and ``refresh(indexer,
records)``: poll, then re-plan only the tasks with a stored document that does not carry its
facts yet (``stale_tasks``: one indexed query per task, no planning, so a re-scan stays cheap);
a Dagster read problem is logged and retried at the next call, never raised.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import shlex
import sqlite3
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, NoReturn

from . import dagster_events
from .errors import DocwatchError
from .index import row_to_dict, split_source_key
from .layout import STAGES, folder_roles, parse_name

if TYPE_CHECKING:
    from .config import Config
    from .indexer import Indexer
    from .ingest import BatchReport
    from .model import Attempt

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
#: How often ``watch`` should call ``refresh`` (seconds).
POLL_EVERY = 2.0
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
        kind=kind, asset=asset, stage=stage, run_id=str(d["run_id"]),
        partition=d.get("partition") or None, timestamp=float(d["timestamp"]),
        storage_id=int(d["storage_id"]), metadata=dict(d.get("metadata") or {}),
        step=d.get("step"), description=d.get("description"), error=d.get("error"),
    )  # fmt: skip


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
            "run_id": event.run_id, "partition": event.partition, "asset": event.asset,
            "step": event.step, "event": event.kind,
            "timestamp": datetime.fromtimestamp(event.timestamp, UTC).isoformat(
                timespec="microseconds").replace("+00:00", "Z"),
            "metadata": {k: _small(v) for k, v in sorted(md.items())},
        },
    )  # fmt: skip


def _reason(event: RunEvent, status: str | None, finish: str | None, completion: int | None,
            max_tokens: int | None) -> str | None:  # fmt: skip
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
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        return value[:_MAX_TEXT] + "…"
    if value is None or isinstance(value, bool | int | float | str):
        return value
    text = json.dumps(value, default=str, sort_keys=True)
    return json.loads(text) if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"


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


def choose(events: Iterable[RunEvent], ref_s: float, *, lag_s: float | None = None,
           skew_s: float = SKEW_SECONDS) -> RunEvent | None:  # fmt: skip
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
                    log.debug("run %s: raw_path %r is under no configured folder",
                              e.run_id, e.raw_path)  # fmt: skip
                    continue
                self._by_path.setdefault(rel, {})[e.key] = e
            elif e.kind == MATERIALIZATION and e.partition:
                self._by_task.setdefault((e.stage, e.partition), {})[e.key] = e
        return touched

    def match(self, stage: str, task_id: str, raw_relpath: str | None,
              created_ns: int) -> RunEvent | None:  # fmt: skip
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
SUBPROCESS_TIMEOUT = 120.0
#: While reads keep failing, the warning is repeated at most this often (seconds).
WARN_EVERY = 300.0
_STDERR_LINES = 60  # the tail of the reader's stderr kept for the log


class RunRecordsError(Exception):
    """A read of the run records failed (logged, and retried at the next poll)."""


class InProcess:
    """Reads with ``daemon.dagster_events`` in this process: Dagster must import here."""

    def __init__(self, dagster_home: Path, assets: Iterable[str], instance: Any = None) -> None:
        self.dagster_home = Path(dagster_home)
        self.assets = tuple(assets)
        self._instance = instance
        self._owns_instance = instance is None
        self.dagster_version: str | None = None

    def describe(self) -> str:
        return f"in process (Dagster {self.dagster_version or '?'})"

    def read(self, cursor: dict) -> tuple[list[dict], dict]:
        if self._instance is None:
            try:
                self.dagster_version = dagster_events.dagster_version()
            except ImportError as exc:
                raise DocwatchError(
                    f"dagster_home is set but Dagster cannot be imported here ({exc}); set "
                    "dagster_python to the Python of the pipeline's venv (README, \"Dagster "
                    'integration")'
                ) from None
            try:
                self._instance = dagster_events.open_instance(self.dagster_home)
            except NotADirectoryError as exc:
                raise DocwatchError(str(exc)) from None
        return dagster_events.read_events(self.dagster_home, cursor, assets=self.assets,
                                          instance=self._instance)  # fmt: skip

    def close(self) -> None:
        if self._instance is not None and self._owns_instance:
            try:
                self._instance.dispose()
            except Exception:  # disposing is best effort
                pass
            self._instance = None


class Subprocess:
    """Reads with ``daemon/dagster_events.py`` run by path under the pipeline's Python.

    One long-lived child (``--serve``): a request is a cursor on one line of its stdin, the
    answer one JSON line on its stdout, so Dagster is imported and the instance opened once,
    not every ``POLL_EVERY`` seconds.  Any failure (cannot start, exit, timeout, an answer
    that is not the expected JSON) ends the child and raises ``RunRecordsError`` with the
    command, its exit status and the tail of its stderr; the next read starts a new child.
    """

    def __init__(self, python: Path, dagster_home: Path, assets: Iterable[str], *,
                 timeout: float = SUBPROCESS_TIMEOUT) -> None:  # fmt: skip
        self.python = Path(os.path.abspath(python))  # a venv's python is a symlink: keep it
        self.dagster_home = Path(dagster_home)
        self.timeout = timeout
        script = Path(dagster_events.__file__).resolve()
        assets = tuple(assets)
        asset_args = [] if set(assets) == set(dagster_events.ASSETS) else [
            a for asset in assets for a in ("--asset", asset)]  # fmt: skip
        self.command = [os.fspath(self.python), os.fspath(script), "--dagster-home",
                        os.fspath(self.dagster_home), *asset_args, "--serve"]  # fmt: skip
        self.dagster_version: str | None = None
        self._proc: subprocess.Popen | None = None
        self._stderr: deque[str] = deque(maxlen=_STDERR_LINES)
        self._drain: threading.Thread | None = None
        self._buffer = b""

    def describe(self) -> str:
        return f"{self.python} (Dagster {self.dagster_version or '?'})"

    def read(self, cursor: dict) -> tuple[list[dict], dict]:
        proc = self._proc if self._proc is not None else self._start()
        deadline = time.monotonic() + self.timeout
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(cursor).encode() + b"\n")
            proc.stdin.flush()
        except OSError as exc:  # it exited already (BrokenPipeError)
            self._fail(f"cannot send the cursor ({exc.strerror or exc})")
        line = self._readline(proc, deadline)
        try:
            doc = json.loads(line)
            events, new = doc["events"], doc["cursor"]
            if not isinstance(events, list) or not isinstance(new, dict):
                raise TypeError("events must be a list and cursor an object")
        except (ValueError, KeyError, TypeError) as exc:
            self._fail(f"unexpected answer ({exc}): {line[:200]!r}")
        self.dagster_version = doc.get("dagster_version") or self.dagster_version
        return events, new

    def _start(self) -> subprocess.Popen:
        self._stderr.clear()
        self._buffer = b""
        try:
            proc = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, bufsize=0, start_new_session=True,  # not our ^C
            )  # fmt: skip
        except OSError as exc:
            raise RunRecordsError(
                f"cannot start {shlex.join(self.command)}: {exc.strerror or exc} "
                "(dagster_python must be the Python of the pipeline's venv)"
            ) from None
        self._proc = proc
        self._drain = threading.Thread(target=self._drain_stderr, args=(proc,),
                                       name="dagster-events-stderr", daemon=True)  # fmt: skip
        self._drain.start()
        return proc

    def _drain_stderr(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self._stderr.append(line)
            log.debug("dagster_events: %s", line)

    def _readline(self, proc: subprocess.Popen, deadline: float) -> str:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._fail(f"no answer within {self.timeout:g}s")
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    self._fail("it exited without an answer")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", "replace")

    def _fail(self, what: str) -> NoReturn:
        """End the child and raise what happened, with its command, exit status and stderr."""
        proc, self._proc = self._proc, None
        code: int | None = None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            code = proc.wait()
            if self._drain is not None:
                self._drain.join(2)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    if pipe is not None:
                        pipe.close()
                except OSError:
                    pass
        stderr = "\n".join(self._stderr).strip()[-4000:] or "(empty)"
        raise RunRecordsError(
            f"{what}: command {shlex.join(self.command)} exited with status {code}; "
            f"stderr:\n{stderr}"
        )

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()  # EOF: the child exits
            proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        if self._drain is not None:
            self._drain.join(2)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


class RunRecords:
    """Reads a Dagster instance incrementally and keeps a ``RecordBook`` of its events.

    ``dagster_python`` set: read through ``Subprocess`` (the pipeline's Python); else
    ``InProcess`` (Dagster must import in docwatch's venv).  ``transport``: any object with
    ``read(cursor) -> (events, cursor)``, ``describe()`` and ``close()``.
    """

    def __init__(self, dagster_home: Path | str, folders: Iterable[str], *,
                 assets: Mapping[str, str] = ASSETS, dagster_python: Path | str | None = None,
                 instance: Any = None, transport: Any = None,
                 timeout: float = SUBPROCESS_TIMEOUT) -> None:  # fmt: skip
        self.dagster_home = Path(dagster_home)
        self.assets = dict(assets)
        self.book = RecordBook(folders)
        if transport is None and dagster_python is not None:
            transport = Subprocess(Path(dagster_python), self.dagster_home, self.assets,
                                   timeout=timeout)  # fmt: skip
        elif transport is None:
            transport = InProcess(self.dagster_home, self.assets, instance)
        self.transport = transport
        self.cursor: dict = dagster_events.new_cursor()
        self._pending: set[tuple[str, str]] = set()
        self.polls = 0
        self.failures = 0  # reads failed in a row
        self._warned_at: float | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        self.transport.close()

    @property
    def enrich(self):
        """The ``Ingestor.enrich`` hook."""
        return self.book.enrich

    def take_pending(self) -> set[tuple[str, str]]:
        """Tasks from an earlier poll that were not handed to ``refresh`` yet."""
        out, self._pending = self._pending, set()
        return out

    # -- polling -----------------------------------------------------------------------

    def poll(self) -> set[tuple[str, str]]:
        """Read events added since the last poll; return the (stage, task_id) they concern.

        All or nothing: when a read fails, the cursor stays where it was.
        """
        raw, cursor = self.transport.read(self.cursor)
        try:
            events = [e for e in (event_from_dict(d, self.assets) for d in raw) if e is not None]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RunRecordsError(
                f"{self.transport.describe()}: malformed event ({exc!r})"
            ) from None
        self.cursor = cursor
        self.polls += 1
        touched = self.book.add(events)
        if events:
            log.debug("run records: %d new events, %d tasks", len(events), len(touched))
        return touched

    def poll_logged(self) -> set[tuple[str, str]] | None:
        """``poll``, but a failure is logged (and None returned) instead of raised.

        Configuration problems of the in-process reader (``DocwatchError``) are still raised.
        The first failure is a warning with everything known; while reads keep failing the
        warning is repeated at most every ``WARN_EVERY`` seconds; recovery is logged.
        """
        try:
            tasks = self.poll()
        except DocwatchError:
            raise
        except Exception as exc:  # Dagster storage busy, migrating, unreachable; the child died
            self.failures += 1
            now = time.monotonic()
            if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
                self._warned_at = now
                again = f" ({self.failures} failed reads in a row)" if self.failures > 1 else ""
                log.warning("reading Dagster run records from %s failed%s; retrying at the next "
                            "poll: %s", self.dagster_home, again, exc)  # fmt: skip
            else:
                log.debug("reading Dagster run records failed again: %r", exc)
            return None
        if self.failures:
            log.info("run records: reading again from %s after %d failed reads",
                     self.dagster_home, self.failures)  # fmt: skip
            self.failures, self._warned_at = 0, None
        return tasks


# -- wiring (scan and watch) ---------------------------------------------------------------


def attach(indexer: Indexer, cfg: Config) -> RunRecords | None:
    """Open the run records of ``cfg.dagster_home`` (None when unset), read everything once,
    and install the enrich hook; the first poll's tasks are handed out by ``refresh``.

    With ``cfg.dagster_python`` the records are read by that Python (the pipeline's venv);
    a failed first read is logged and retried at the next ``refresh``, never raised.
    """
    if cfg.dagster_home is None:
        return None
    records = RunRecords(cfg.dagster_home, [r.folder for r in folder_roles(cfg.folders)],
                         dagster_python=cfg.dagster_python)  # fmt: skip
    started = time.monotonic()
    tasks = records.poll_logged()
    records._pending |= tasks or set()
    indexer.ingestor.enrich = records.enrich
    if tasks is not None:
        log.info("run records: %d Dagster events read from %s via %s in %.1fs",
                 len(records.book), cfg.dagster_home, records.transport.describe(),
                 time.monotonic() - started)  # fmt: skip
    return records


def refresh(indexer: Indexer, records: RunRecords | None) -> BatchReport:
    """Poll the run records and re-plan the indexed tasks whose stored rows lack their facts.

    A Dagster read problem is logged and retried at the next call; it never stops the caller.
    """
    from .ingest import BatchReport

    report = BatchReport()
    if records is None:
        return report
    tasks = (records.poll_logged() or set()) | records.take_pending()
    tasks = stale_tasks(indexer.con, records.book, tasks)
    step = max(1, indexer.cfg.batch_max_files)
    ordered = sorted(tasks)
    for i in range(0, len(ordered), step):
        report.merge(indexer.ingest([], extra_tasks=ordered[i : i + step]))
    return report


_ROW_FIELDS = ("run_id", "status", "usage_prompt_tokens", "usage_completion_tokens",
               "usage_max_tokens")  # fmt: skip
_META_FIELDS = ("status_reason", "finish_reason", "model_used", "dagster")
_STORED = (
    "SELECT d.*, a.created_at_ns AS _created_at_ns, a.raw_key AS _raw_key"
    " FROM documents d JOIN attempts a USING (doc_id) WHERE d.stage = ? AND d.task_id = ?"
)


def stale_tasks(con: sqlite3.Connection, book: RecordBook,
                tasks: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:  # fmt: skip
    """The tasks with a stored document that does not carry its run's facts yet.

    Read-only and cheap (one indexed query per task, no planning), so a re-scan with
    ``dagster_home`` re-plans only what the run records would change.
    """
    out = set()
    for stage, task_id in tasks:
        if stage not in STAGES:
            continue
        for r in con.execute(_STORED, (stage, task_id)):
            stored = row_to_dict(r)
            raw = split_source_key(stored["_raw_key"])[0] if stored["_raw_key"] else None
            event = book.match(stage, task_id, raw, stored["_created_at_ns"])
            if event is None:
                continue
            want = facts_of(event).apply(stored)
            old_meta, new_meta = stored.get("meta_small") or {}, want["meta_small"]
            if any(want[k] != stored[k] for k in _ROW_FIELDS) or any(
                new_meta.get(k) != old_meta.get(k) for k in _META_FIELDS
            ):
                out.add((stage, task_id))
                break
    return out


__all__ = [
    "ASSETS", "Facts", "InProcess", "RecordBook", "RunEvent", "RunRecords", "RunRecordsError",
    "Subprocess", "attach", "choose", "event_from_dict", "facts_of", "refresh",
    "relpath_below_root", "stale_tasks",
]  # fmt: skip

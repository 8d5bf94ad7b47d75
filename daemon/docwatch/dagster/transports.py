"""How the run records are read: in this process, or by the pipeline's own Python.

* ``Subprocess`` when ``dagster_python`` is set (the normal deployment): the pipeline venv's
  Python runs ``events.py`` by file path, so the instance is read by the Dagster that wrote it
  (Dagster >= 1.8.5 requires ``watchdog<7``, the daemon watchdog 7.1); one long-lived child.
* ``InProcess`` otherwise: ``import docwatch.dagster.events`` here.

A transport is any object with ``read(cursor) -> (events, cursor)``, ``describe()``, ``close()``.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import shlex
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

from docwatch.children import end_at_eof, start_child
from docwatch.dagster import events as dagster_events
from docwatch.errors import DocwatchError

log = logging.getLogger("docwatch.runrecords")

SUBPROCESS_TIMEOUT = 120.0
_STDERR_LINES = 60  # the tail of the reader's stderr kept for the log


class RunRecordsError(Exception):
    """A read of the run records failed (logged, and retried at the next poll)."""


class InProcess:
    """Reads with ``docwatch.dagster.events`` in this process: Dagster must import here."""

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
        return dagster_events.read_events(
            self.dagster_home, cursor, assets=self.assets, instance=self._instance
        )

    def close(self) -> None:
        if self._instance is not None and self._owns_instance:
            try:
                self._instance.dispose()
            except Exception:  # disposing is best effort
                pass
            self._instance = None


class Subprocess:
    """Reads with ``docwatch/dagster/events.py`` run by path under the pipeline's Python.

    One long-lived child (``--serve``): a request is a cursor on one line of its stdin, the
    answer one JSON line on its stdout, so Dagster is imported and the instance opened once,
    not every ``POLL_EVERY`` seconds.  Any failure (cannot start, exit, timeout, an answer
    that is not the expected JSON) ends the child and raises ``RunRecordsError`` with the
    command, its exit status and the tail of its stderr; the next read starts a new child.
    The child leaves SIGINT and SIGTERM to the daemon (``children.start_child``): systemd's
    stop reaches every process of the service, and ``close`` ends the reader at EOF.
    """

    def __init__(
        self,
        python: Path,
        dagster_home: Path,
        assets: Iterable[str],
        *,
        timeout: float = SUBPROCESS_TIMEOUT,
    ) -> None:
        self.python = Path(os.path.abspath(python))  # a venv's python is a symlink: keep it
        self.dagster_home = Path(dagster_home)
        self.timeout = timeout
        script = Path(dagster_events.__file__).resolve()
        assets = tuple(assets)
        asset_args = (
            []
            if set(assets) == set(dagster_events.ASSETS)
            else [a for asset in assets for a in ("--asset", asset)]
        )
        self.command = [
            os.fspath(self.python),
            os.fspath(script),
            "--dagster-home",
            os.fspath(self.dagster_home),
            *asset_args,
            "--serve",
        ]
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
            proc = start_child(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                start_new_session=True,  # a terminal's other signals (SIGHUP) are ours too
            )
        except OSError as exc:
            raise RunRecordsError(
                f"cannot start {shlex.join(self.command)}: {exc.strerror or exc} "
                "(dagster_python must be the Python of the pipeline's venv)"
            ) from None
        self._proc = proc
        log.debug("dagster events reader started (pid %d)", proc.pid)
        self._drain = threading.Thread(
            target=self._drain_stderr, args=(proc,), name="dagster-events-stderr", daemon=True
        )
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
        code = end_at_eof(proc)
        log.debug("dagster events reader (pid %d) ended (exit %s)", proc.pid, code)
        if self._drain is not None:
            self._drain.join(2)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()

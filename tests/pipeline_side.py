"""The pipeline side of the Dagster tests: its venv, and the example pipeline's driver in it.

Dagster >= 1.8.5 requires ``watchdog<7`` and docwatch requires watchdog 7.1, so, as in
production, Dagster lives in a venv of its own: ``make test`` builds ``.venv-pipeline`` (current
Dagster + docwatch installed with ``--no-deps``) and names its Python in
``TEST_PIPELINE_PYTHON`` (default ``.venv-pipeline/bin/python``; not ``DOCWATCH_*``: docwatch
rejects unknown ``DOCWATCH_*`` variables, and the tests' subprocesses inherit the environment).
Without it the Dagster tests skip, and fail when ``REQUIRE_DAGSTER`` is set (``make test`` sets
it: CI cannot skip them silently).
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PIPELINE_PYTHON = Path(
    os.environ.get("TEST_PIPELINE_PYTHON") or REPO / ".venv-pipeline" / "bin" / "python"
)
DRIVER = REPO / "examples" / "dagster_pipeline" / "drive.py"


@cache
def _probe() -> tuple[str | None, str | None]:
    """(Dagster version, None) or (None, the problem)."""
    if not PIPELINE_PYTHON.exists():
        return None, f"the pipeline venv's Python {PIPELINE_PYTHON} does not exist"
    code = "import dagster; from docwatch.dagster import DocumentsIndex; print(dagster.__version__)"
    r = subprocess.run(
        [str(PIPELINE_PYTHON), "-c", code], capture_output=True, text=True, timeout=120, cwd="/"
    )  # the installed docwatch
    if r.returncode != 0:
        return None, f"{PIPELINE_PYTHON} cannot import dagster and docwatch.dagster:\n{r.stderr}"
    return r.stdout.strip(), None


def require_pipeline_python() -> Path:
    """The pipeline venv's Python, or skip (fail when REQUIRE_DAGSTER is set)."""
    version, problem = _probe()
    if problem is not None:
        if os.environ.get("REQUIRE_DAGSTER"):
            pytest.fail(f"REQUIRE_DAGSTER is set but {problem} (`make test` builds it)")
        pytest.skip(f"{problem}; `make test` builds .venv-pipeline")
    return PIPELINE_PYTHON


def dagster_version() -> str | None:
    return _probe()[0]


class PipelineDriver:
    """``examples/dagster_pipeline/drive.py`` running under the pipeline venv's Python."""

    def __init__(
        self,
        workdir: Path,
        dagster_home: Path,
        *,
        consolidated: bool = False,
        timeout: float = 120.0,
    ) -> None:
        python = require_pipeline_python()
        self.timeout = timeout
        self.stderr_path = workdir / "driver.stderr"
        cmd = [
            str(python),
            str(DRIVER),
            "--workdir",
            str(workdir),
            "--dagster-home",
            str(dagster_home),
        ]
        if consolidated:
            cmd.append("--consolidated")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCWATCH_", "DAGSTER_"))}
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env, bufsize=0
            )
        self._buffer = b""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-6000:]

    def request(self, op: str, **kwargs) -> dict:
        """One request; the answer, or AssertionError when the driver died or took too long."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kwargs}).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise AssertionError(f"the pipeline driver exited:\n{self.stderr()}") from None
        deadline = time.monotonic() + self.timeout
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no answer to {op} in {self.timeout}s:\n{self.stderr()}")
                if sel.select(left):
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        code = self.proc.wait(10)
                        raise AssertionError(
                            f"the pipeline driver exited ({code}):\n{self.stderr()}"
                        )
                    self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def ok(self, op: str, **kwargs) -> dict:
        """``request``, asserting it did not raise in the driver."""
        answer = self.request(op, **kwargs)
        assert answer["ok"], f"{op} {kwargs}: {answer}\n{self.stderr()}"
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

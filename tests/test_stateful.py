"""A Hypothesis state machine of the whole system against a simple model.

The pipeline writes prompts, raw files (sometimes caught half-written) and parsed files,
re-materialises tasks and rewrites its task table; docwatch ingests in batches, crashes at any
durable step (the fault seam raises through the batch, leaving what a dead process leaves),
restarts, meets a full disk or a locked index.  Invariant after quiescence: the index equals
the model — a scan of the same finished tree into an empty index — and `verify` is clean.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from conftest import docs_tree, make_config, snapshot
from docwatch.ingest.indexer import Indexer
from docwatch.ingest.scan import list_candidates, scan
from docwatch.ingest.verify import verify
from docwatch.store import faults
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

DRAFTS = [f"combo_00{i}__deliberate-rolling-thread-v2__sonnet-4" for i in range(3)]
ESSAYS = [f"combo_00{i}__synthesis-theme-narrative-v19__sonnet-4" for i in range(3)]
FOLDERS = {
    ("draft", "prompt"): "3_generation/draft_prompts",
    ("draft", "raw"): "3_generation/draft_responses_raw",
    ("draft", "parsed"): "3_generation/draft_responses",
    ("essay", "prompt"): "3_generation/essay_prompts",
    ("essay", "raw"): "3_generation/essay_responses_raw",
    ("essay", "parsed"): "3_generation/essay_responses",
}
ESSAY_TABLE = "essay_task_id,combo_id,draft_template,essay_template,generation_model,generation_model_name,draft_task_id\n"  # noqa: E501


class Crash(BaseException):
    """Stands for the process dying at a durable step (not caught by the retry logic)."""


class DocwatchMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="docwatch-state-"))
        self.data = self.tmp / "data"
        self.data.mkdir()
        self.clock = 1_700_000_000.0
        self.versions: dict[tuple[str, str, str], int] = {}
        # Files are dated in the past, except raw files caught half-written, which are "now":
        # younger than settle_seconds, so they wait until finished, as with the real writer.
        self.cfg = make_config(self.data, batch_max_files=3, settle_seconds=30)
        self.indexer = Indexer(self.cfg, "state", sleep=lambda s: None)
        self.half_written: list[Path] = []

    def teardown(self) -> None:
        faults.set_hook(None)
        self.indexer.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the pipeline --------------------------------------------------------------------

    def _write(
        self, stage: str, kind: str, task: str, data: bytes, new_version: bool, young: bool = False
    ) -> Path:
        key = (stage, kind, task)
        if new_version or key not in self.versions:
            self.versions[key] = self.versions.get(key, 0) + 1
        folder = self.data / FOLDERS[(stage, kind)]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{task}_v{self.versions[key]}.txt"
        self.clock += 7
        path.write_bytes(data)
        if not young:
            os.utime(path, (self.clock, self.clock))
        return path

    @rule(i=st.integers(0, 2), stage=st.sampled_from(["draft", "essay"]))
    def write_prompt(self, i, stage):
        task = (DRAFTS if stage == "draft" else ESSAYS)[i]
        self._write(stage, "prompt", task, f"prompt {self.clock}".encode(), new_version=True)

    @rule(i=st.integers(0, 2), stage=st.sampled_from(["draft", "essay"]), half=st.booleans())
    def write_raw(self, i, stage, half):
        task = (DRAFTS if stage == "draft" else ESSAYS)[i]
        body = f"raw {task} {self.clock}\n".encode() * 5
        data = body[: len(body) // 2] if half else body
        path = self._write(stage, "raw", task, data, True, young=half)
        if half:  # caught half-written: finished later (same name, final bytes)
            self.half_written.append(path)

    @rule(i=st.integers(0, 2), stage=st.sampled_from(["draft", "essay"]))
    def write_parsed(self, i, stage):
        task = (DRAFTS if stage == "draft" else ESSAYS)[i]
        self._write(stage, "parsed", task, f"parsed {self.clock}".encode(), new_version=True)

    @precondition(lambda self: self.half_written)
    @rule()
    def finish_raw_writes(self):
        for path in self.half_written:
            self.clock += 1
            with open(path, "ab") as fh:
                fh.write(b"... the rest of the response\n")
            os.utime(path, (self.clock, self.clock))
        self.half_written.clear()

    @rule(drop=st.booleans())
    def rewrite_task_table(self, drop):
        rows = (
            ""
            if drop
            else "".join(
                f"{e},combo_00{i},deliberate-rolling-thread-v2,synthesis-theme-narrative-v19,"
                f"sonnet-4,Sonnet 4,{d}\n"
                for i, (e, d) in enumerate(zip(ESSAYS, DRAFTS, strict=True))
            )
        )
        path = self.data / "2_tasks" / "essay_generation_tasks.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(ESSAY_TABLE + rows)

    # -- docwatch ------------------------------------------------------------------------

    def _ingest_some(self, n: int) -> None:
        cands = list_candidates(self.cfg, ("draft", "essay"))
        self.indexer.ingest(cands[:n])

    @rule(n=st.integers(1, 40))
    def ingest(self, n):
        self._ingest_some(n)

    @rule(
        point=st.sampled_from([p for p in faults.POINTS if p != "recovered"]), n=st.integers(1, 40)
    )
    def crash_during_ingest(self, point, n):
        def hook(reached):
            if reached == point:
                raise Crash(point)

        faults.set_hook(hook)
        try:
            self._ingest_some(n)
        except Crash:
            pass
        finally:
            faults.set_hook(None)
        self.restart()

    @rule()
    def restart(self):
        self.indexer.close()
        self.indexer = Indexer(self.cfg, "state", sleep=lambda s: None)
        self.indexer.recover()

    @rule(n=st.integers(1, 40), times=st.integers(1, 3))
    def disk_full_for_a_while(self, n, times):
        remaining = times

        def hook(reached):
            nonlocal remaining
            if reached == "renamed" and remaining > 0:
                remaining -= 1
                raise OSError(errno.ENOSPC, "injected: no space left on device")

        faults.set_hook(hook)
        try:
            self._ingest_some(n)
        finally:
            faults.set_hook(None)

    @rule(n=st.integers(1, 40))
    def index_locked_by_a_reader_for_a_while(self, n):
        if not self.cfg.db.exists():
            return
        locked = threading.Event()

        def hold():
            con = sqlite3.connect(self.cfg.db, isolation_level=None)
            con.execute("BEGIN IMMEDIATE")
            locked.set()
            time.sleep(0.2)
            con.execute("COMMIT")
            con.close()

        holder = threading.Thread(target=hold)
        holder.start()
        locked.wait()
        self._ingest_some(n)
        holder.join()

    # -- the invariant ---------------------------------------------------------------------

    @invariant()
    def every_visible_row_has_its_complete_directory(self):
        if not self.cfg.db.exists():
            return
        con = sqlite3.connect(self.cfg.db)
        rows = con.execute("SELECT doc_dir, meta_small FROM documents").fetchall()
        con.close()
        for doc_dir, meta in rows:
            assert (self.data / doc_dir / "metadata.json").exists(), doc_dir
            for kind, source in json.loads(meta)["sources"].items():
                if source is not None:
                    assert (self.data / doc_dir / f"{kind}.txt").exists(), (doc_dir, kind)

    def write_sticky_table(self, root: Path) -> None:
        """The model's essay table: what the index remembers of each task (sticky facts: a
        task the current table dropped keeps the facts it was indexed with), else the table."""
        con = sqlite3.connect(self.cfg.db)
        stored = con.execute(
            "SELECT task_id, template_id, model_id, parent_task_id FROM tasks"
            " WHERE stage = 'essay' AND from_tables = 1"
        ).fetchall()
        con.close()
        rows = {
            task: f"{task},x,deliberate-rolling-thread-v2,{tpl},{model},M,{parent}\n"
            for task, tpl, model, parent in stored
        }
        path = root / "2_tasks" / "essay_generation_tasks.csv"
        if path.exists():
            for line in path.read_text().splitlines()[1:]:
                rows[line.split(",")[0]] = line + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(ESSAY_TABLE + "".join(rows[k] for k in sorted(rows)))

    def check_quiescent_equals_model(self):
        self.finish_raw_writes() if self.half_written else None
        self.restart()
        scan(self.cfg, run_id="state")
        model_root = self.tmp / "model"
        shutil.copytree(self.data, model_root, ignore=shutil.ignore_patterns("db", "docs"))
        self.write_sticky_table(model_root)
        model_cfg = make_config(model_root)
        scan(model_cfg, run_id="state")
        assert snapshot(self.cfg.db) == snapshot(model_cfg.db)
        assert docs_tree(self.cfg.docs_root) == docs_tree(model_cfg.docs_root)
        report = verify(self.cfg)
        assert report.ok, report.problems


class QuiescentMachine(DocwatchMachine):
    def teardown(self) -> None:
        try:
            if self.data.exists():
                self.check_quiescent_equals_model()
        finally:
            super().teardown()


QuiescentMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestDocwatchStateful = QuiescentMachine.TestCase

"""Dagster end to end: the example pipeline (examples/dagster_pipeline) runs with real Dagster
(a temporary DAGSTER_HOME, the in-process executor) while ``docwatch watch`` runs as a
subprocess; its readers resolve documents through the ``DocumentsIndex`` resource, and the run
records fill run ids, true statuses, reasons and token counts.

Skipped only when Dagster is not importable (fails instead when ``REQUIRE_DAGSTER`` is set, as
``make test`` does, so CI cannot skip it silently).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pytest

from daemon.errors import DocumentNotFound
from daemon.reader import DocumentsIndex as CoreIndex

#: Dagster 1.8.4 (what the core's watchdog pin resolves to) trips a pydantic 2.11 deprecation.
pytestmark = pytest.mark.filterwarnings("ignore:Accessing the 'model_fields' attribute")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

try:
    import dagster as dg
except ImportError as exc:  # the optional extra is not installed
    if os.environ.get("REQUIRE_DAGSTER"):
        raise RuntimeError(f"REQUIRE_DAGSTER is set but dagster cannot be imported: {exc}") from exc
    pytest.skip(
        f"dagster is not importable ({exc}); install the extra: pip install -e '.[dagster]'",
        allow_module_level=True,
    )

with warnings.catch_warnings():  # the pydantic deprecation above, at definition time
    warnings.filterwarnings("ignore", "Accessing the 'model_fields' attribute")
    from dagster_pipeline import assets as A
    from dagster_pipeline.definitions import resources
    from dagster_pipeline.tables import (
        Draft,
        Essay,
        Evaluation,
        register_partitions,
        write_tables,
    )

    from daemon.dagster import DocumentsIndex


def wait_until(cond, timeout: float = 60.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class NotifySocket:
    """Stands in for systemd: collects the daemon's sd_notify datagrams (READY=1…)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="dwd")  # short: sun_path is 108 bytes
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def seen(self, line: str) -> bool:
        return any(line in m.splitlines() for m in self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def rows(db: Path) -> dict[tuple[str, str, int], dict]:
    """(stage, task_id, version) → row, meta_small decoded."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        out = {}
        sql = "SELECT d.*, a.version FROM documents d JOIN attempts a USING (doc_id)"
        for r in con.execute(sql):
            d = dict(r)
            d["meta_small"] = json.loads(d["meta_small"])
            out[(d["stage"], d["task_id"], d["version"])] = d
        return out
    finally:
        con.close()


def docwatch_scan(config: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "daemon", "scan", "--config", str(config), "--json"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def latest_ok(db: Path, stage: str, task_id: str) -> dict | None:
    if not db.exists():
        return None
    try:
        with CoreIndex(db) as idx:
            return idx.get_latest_by_task(stage, task_id)
    except DocumentNotFound:
        return None


# -- the resource on its own -------------------------------------------------------------------


def test_resource_fails_fast_and_opens_lazily(tmp_path):
    from conftest import make_config

    from daemon.scan import scan

    data = tmp_path / "data"
    db = data / "db" / "documents.sqlite"
    res = DocumentsIndex(db_path=str(db), docs_root=str(data / "docs"))
    with pytest.raises(Exception, match="no index here"):  # nothing opened, nothing cached
        res.get_latest_by_task("draft", "t")
    parsed = data / "3_generation" / "draft_responses" / "c1__tpl__m_v1.txt"
    parsed.parent.mkdir(parents=True)
    parsed.write_text("the draft\n")
    scan(make_config(data), run_id="t")
    row = res.get_latest_by_task("draft", "c1__tpl__m")
    assert res.read_text(row, "parsed") == "the draft\n"
    assert res.resolve_doc_dir(row) == data / "docs" / "draft" / row["doc_id"]
    assert res.get_latest_by_logical(row["logical_key_id"])["doc_id"] == row["doc_id"]
    with pytest.raises(DocumentNotFound, match="no ok essay document for task 'nope'"):
        res.get_latest_by_task("essay", "nope")
    with pytest.raises(DocumentNotFound, match="no truncated draft document"):
        res.get_latest_by_task("draft", "c1__tpl__m", status=("truncated",))
    res.close()


# -- the pipeline with the daemon ------------------------------------------------------------

D_OK = Draft("combo_v1_1f3a9c2b7d4e", "deliberate-rolling-thread-v2", "sonnet-4")
D_TRUNC = Draft("combo_v1_2a4b6c8d0e1f", "deliberate-rolling-thread-v2", "sonnet-4")
D_BAD = Draft("combo_v1_3c5e7a9b1d2f", "deliberate-rolling-thread-v2", "sonnet-4")
E_LLM = Essay(D_OK, "synthesis-theme-narrative-v19", "sonnet-4")
E_COPY = Essay(D_TRUNC, "parsed-from-links-v1", "sonnet-4")
V_ESSAY = Evaluation(E_LLM, "novelty", "sonnet-4")
V_DRAFT = Evaluation(D_OK, "style-coherence-v3", "gemini_25_pro")
DRAFTS, ESSAYS, EVALS = [D_OK, D_TRUNC, D_BAD], [E_LLM, E_COPY], [V_ESSAY, V_DRAFT]
SCRIPT = {D_TRUNC.task_id: "truncate,ok", D_BAD.task_id: "unparsable", V_DRAFT.task_id: "truncate"}


@pytest.fixture
def notify():
    n = NotifySocket()
    yield n
    n.close()


def test_pipeline_with_docwatch_watch(tmp_path, monkeypatch, notify):
    monkeypatch.chdir(tmp_path)  # the pipeline writes data/... relative to its cwd
    data, home = tmp_path / "data", tmp_path / "dagster_home"
    home.mkdir()
    db = data / "db" / "documents.sqlite"
    write_tables(Path("data"), DRAFTS, ESSAYS, EVALS)
    config = tmp_path / "docwatch.toml"
    config.write_text(
        f'data_root = "{data}"\nsettle_seconds = 0\nlog_level = "INFO"\ndagster_home = "{home}"\n'
    )
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DOCWATCH_", "NOTIFY", "DAGSTER_"))}  # fmt: skip
    env["NOTIFY_SOCKET"] = notify.path
    log = tmp_path / "watch.log"
    with open(log, "wb") as out:
        watch = subprocess.Popen(
            [sys.executable, "-m", "daemon", "watch", "--config", str(config)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(lambda: notify.seen("READY=1") or watch.poll() is not None, 60, "READY=1")
        assert watch.poll() is None, log.read_text()
        with dg.instance_for_test(temp_dir=str(home)) as instance:
            _run_pipeline_and_check(instance, data, db, config, log, watch)
        watch.send_signal(signal.SIGTERM)
        assert watch.wait(15) == 0, log.read_text()
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(10)


def _run_pipeline_and_check(instance, data: Path, db: Path, config: Path, log: Path,
                            watch: subprocess.Popen) -> None:  # fmt: skip
    register_partitions(instance, DRAFTS, ESSAYS, EVALS)
    res = resources("data", script=SCRIPT)
    runs: dict[tuple[str, int], dg.ExecuteInProcessResult] = {}  # (task_id, attempt) → run

    def materialize(assets, task_id: str) -> dg.ExecuteInProcessResult:
        result = dg.materialize(assets, partition_key=task_id, instance=instance, resources=res,
                                raise_on_error=False)  # fmt: skip
        n = 1 + sum(1 for t, _ in runs if t == task_id)
        runs[(task_id, n)] = result
        return result

    # Phase 1: drafts (one ok; one truncated, then ok on retry; one unparsable)
    assert materialize(A.DRAFT_ASSETS, D_OK.task_id).success
    assert not materialize(A.DRAFT_ASSETS, D_TRUNC.task_id).success
    assert materialize(A.DRAFT_ASSETS, D_TRUNC.task_id).success
    assert not materialize(A.DRAFT_ASSETS, D_BAD.task_id).success
    for d in (D_OK, D_TRUNC):  # the daemon indexes them live; readers need them
        wait_until(lambda d=d: latest_ok(db, "draft", d.task_id), 30,
                   f"docwatch watch to index {d.task_id}\n{log.read_text()}")  # fmt: skip

    # Phase 2: essays read their draft through the DocumentsIndex resource
    llm_essay = materialize(A.ESSAY_ASSETS, E_LLM.task_id)
    assert llm_essay.success
    assert materialize(A.ESSAY_ASSETS, E_COPY.task_id).success
    for e in ESSAYS:
        wait_until(lambda e=e: latest_ok(db, "essay", e.task_id), 30, f"essay {e.task_id}")

    # Phase 3: evaluations read their target through the resource (one is truncated but kept)
    for v in EVALS:
        assert materialize(A.EVALUATION_ASSETS, v.task_id).success
    wait_until(lambda: len(rows(db)) == 8, 30, f"8 documents\n{log.read_text()}")
    assert watch.poll() is None, log.read_text()

    # Run records: the daemon polls the Dagster instance itself and fills the documents.
    dagster_runs = {r.run_id for r in runs.values()}
    wait_until(lambda: all(r["run_id"] in dagster_runs for r in rows(db).values()), 30,
               f"the daemon to apply the run records\n{log.read_text()}")  # fmt: skip
    got = rows(db)

    def doc(stage, task, version=1) -> dict:
        return got[(stage, task.task_id, version)]

    def run_id(task, attempt=1) -> str:
        return runs[(task.task_id, attempt)].run_id

    # every document carries the Dagster run that produced it
    expected_runs = {
        ("draft", D_OK, 1): run_id(D_OK), ("draft", D_TRUNC, 1): run_id(D_TRUNC, 1),
        ("draft", D_TRUNC, 2): run_id(D_TRUNC, 2), ("draft", D_BAD, 1): run_id(D_BAD),
        ("essay", E_LLM, 1): run_id(E_LLM), ("essay", E_COPY, 1): run_id(E_COPY),
        ("evaluation", V_ESSAY, 1): run_id(V_ESSAY), ("evaluation", V_DRAFT, 1): run_id(V_DRAFT),
    }  # fmt: skip
    for (stage, task, version), want in expected_runs.items():
        row = doc(stage, task, version)
        assert row["run_id"] == want, (stage, task.task_id, version, row["meta_small"])
        assert row["meta_small"]["dagster"]["partition"] == task.task_id

    # truncated draft: true status, reason, token counts from the step failure
    trunc = doc("draft", D_TRUNC, 1)
    assert trunc["status"] == "truncated"
    assert trunc["usage_completion_tokens"] == A.DRAFT_MAX_TOKENS
    assert trunc["usage_max_tokens"] == A.DRAFT_MAX_TOKENS
    assert trunc["meta_small"]["finish_reason"] == "length"
    assert "truncated at the token limit" in trunc["meta_small"]["status_reason"]
    assert trunc["meta_small"]["dagster"]["event"] == "step_failure"
    retry = doc("draft", D_TRUNC, 2)
    assert retry["status"] == "ok" and retry["lineage_prev_doc_id"] == trunc["doc_id"]

    # parse failure: parse_error with the parser's own error (not the pairing-window guess)
    bad = doc("draft", D_BAD, 1)
    assert bad["status"] == "parse_error"
    assert "no <essay-idea> block found" in bad["meta_small"]["status_reason"]
    assert bad["usage_completion_tokens"] is None

    # successes: status from the files, max_tokens and model where Dagster had them
    ok = doc("draft", D_OK, 1)
    assert ok["status"] == "ok" and ok["usage_max_tokens"] == A.DRAFT_MAX_TOKENS
    assert ok["usage_completion_tokens"] is None  # a successful draft records no usage
    assert ok["meta_small"]["model_used"] == "anthropic/claude-sonnet-4"

    # the essay prompt was built from the draft document the index resolved
    mat = llm_essay.asset_materializations_for_node("essay_prompt")[0]
    draft_doc_id = mat.metadata["draft_doc_id"].value
    assert draft_doc_id == ok["doc_id"]
    with CoreIndex(db) as idx:
        draft_text = idx.read_text(idx.get(draft_doc_id), "parsed")
    prompt = (data / "3_generation" / "essay_prompts" / f"{E_LLM.task_id}_v1.txt").read_text()
    assert draft_text and draft_text in prompt
    essay = doc("essay", E_LLM)
    assert essay["status"] == "ok" and essay["parent_doc_id"] == draft_doc_id
    assert essay["prompt_path"] == f"3_generation/essay_prompts/{E_LLM.task_id}_v1.txt"

    # copy-mode essay (no raw; matched by partition and time): the retried draft, not the cut one
    copy = doc("essay", E_COPY)
    assert copy["status"] == "ok" and copy["parent_doc_id"] == retry["doc_id"]
    assert copy["meta_small"]["dagster"]["metadata"]["mode"] == "copy"
    with CoreIndex(db) as idx:
        assert idx.read_text(copy, "parsed") == idx.read_text(retry, "parsed")

    # evaluations (no raw): the truncated one is kept by the pipeline, flagged by the records
    v_ok, v_cut = doc("evaluation", V_ESSAY), doc("evaluation", V_DRAFT)
    assert v_ok["status"] == "ok" and v_ok["meta_small"]["finish_reason"] == "stop"
    assert v_ok["parent_doc_id"] == essay["doc_id"]
    assert v_cut["status"] == "truncated" and v_cut["meta_small"]["finish_reason"] == "length"
    assert v_cut["parent_doc_id"] == ok["doc_id"]
    assert "the pipeline kept it" in v_cut["meta_small"]["status_reason"]

    # readers: the latest ok document skips the truncated attempt
    res_index = DocumentsIndex(db_path=str(db), docs_root=str(data / "docs"))
    assert res_index.get_latest_by_task("draft", D_TRUNC.task_id)["doc_id"] == retry["doc_id"]
    with pytest.raises(DocumentNotFound):
        res_index.get_latest_by_task("draft", D_BAD.task_id)
    with pytest.raises(DocumentNotFound):
        res_index.get_latest_by_task("evaluation", V_DRAFT.task_id)
    res_index.close()

    # idempotent: another scan changes nothing
    again = docwatch_scan(config)
    assert again.returncode == 0, again.stderr
    stages = json.loads(again.stdout)["stages"].values()
    assert sum(s["docs_created"] + s["docs_updated"] for s in stages) == 0
    assert rows(db) == got

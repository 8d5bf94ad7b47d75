"""Dagster end to end, deployed as in production: the example pipeline
(examples/dagster_pipeline) runs with current Dagster in the *pipeline* venv (``.venv-pipeline``,
docwatch installed there with ``--no-deps`` for the ``DocumentsIndex`` resource; driven through
``examples/dagster_pipeline/drive.py``, a temporary DAGSTER_HOME, the in-process executor) while
``docwatch watch`` runs from docwatch's own venv with ``dagster_home`` and ``dagster_python``
(the pipeline venv's Python) in its config.  The pipeline's readers resolve documents through
the resource, and the run records fill run ids, true statuses, reasons and token counts.

Skipped only when the pipeline venv is missing (fails instead when ``REQUIRE_DAGSTER`` is set, as
``make test`` does, so CI cannot skip it silently).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from docwatch.errors import DocumentNotFound
from docwatch.reader import DocumentsIndex as CoreIndex
from pipeline_side import PipelineDriver, require_pipeline_python

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
from dagster_pipeline.tables import Draft, Essay, Evaluation, to_plain  # noqa: E402
from support import NotifySocket, kill_if_running, wait_until, watch_process  # noqa: E402


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
    cmd = [sys.executable, "-m", "docwatch", "scan", "--config", str(config), "--json"]
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
    """The resource in the pipeline venv: nothing opened or cached while there is no index;
    once ``docwatch scan`` (docwatch's venv) has made one, the same resource object reads it."""
    from conftest import make_config
    from docwatch.ingest.scan import scan

    data = tmp_path / "data"
    db = data / "db" / "documents.sqlite"
    driver = PipelineDriver(tmp_path, tmp_path / "home")
    try:
        paths = {"db_path": str(db), "docs_root": str(data / "docs")}

        def call(method, *args, **kwargs) -> dict:
            return driver.request("resource", method=method, args=args, kwargs=kwargs, **paths)

        failed = call("get_latest_by_task", "draft", "t")
        assert not failed["ok"] and "no index here" in failed["message"]
        parsed = data / "3_generation" / "draft_responses" / "c1__tpl__m_v1.txt"
        parsed.parent.mkdir(parents=True)
        parsed.write_text("the draft\n")
        scan(make_config(data), run_id="t")
        row = call("get_latest_by_task", "draft", "c1__tpl__m")["result"]
        assert call("read_text", row, "parsed")["result"] == "the draft\n"
        assert call("resolve_doc_dir", row)["result"] == str(
            data / "docs" / "draft" / row["doc_id"]
        )
        assert (
            call("get_latest_by_logical", row["logical_key_id"])["result"]["doc_id"]
            == row["doc_id"]
        )
        missing = call("get_latest_by_task", "essay", "nope")
        assert missing["error"] == "DocumentNotFound"
        assert "no ok essay document for task 'nope'" in missing["message"]
        missing = call("get_latest_by_task", "draft", "c1__tpl__m", status=["truncated"])
        assert missing["error"] == "DocumentNotFound"
        assert "no truncated draft document" in missing["message"]
    finally:
        driver.close()


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
    python = require_pipeline_python()
    monkeypatch.chdir(tmp_path)  # the pipeline writes data/... relative to its cwd
    data, home = tmp_path / "data", tmp_path / "dagster_home"
    db = data / "db" / "documents.sqlite"
    config = tmp_path / "docwatch.toml"
    config.write_text(
        f'data_root = "{data}"\nsettle_seconds = 0\nlog_level = "INFO"\n'
        f'dagster_home = "{home}"\ndagster_python = "{python}"\n'
    )
    driver = PipelineDriver(tmp_path, home)
    try:  # the task tables, the instance and its partitions, before the daemon starts
        info = driver.ok(
            "setup",
            drafts=[to_plain(d) for d in DRAFTS],
            essays=[to_plain(e) for e in ESSAYS],
            evaluations=[to_plain(v) for v in EVALS],
            script=SCRIPT,
        )
    except BaseException:
        driver.close()
        raise
    log = tmp_path / "watch.log"
    watch = watch_process(["--config", config], log, notify, cwd=REPO)
    try:
        wait_until(lambda: notify.seen("READY=1") or watch.poll() is not None, 60, what="READY=1")
        assert watch.poll() is None, log.read_text()
        _run_pipeline_and_check(driver, info["max_tokens"]["draft"], data, db, config, log, watch)
        watch.send_signal(signal.SIGTERM)
        assert watch.wait(15) == 0, log.read_text()
    finally:
        driver.close()
        kill_if_running(watch)
    text = log.read_text()
    assert f"via {python} (Dagster {info['dagster_version']})" in text, text  # the pipeline's


def _run_pipeline_and_check(
    driver: PipelineDriver,
    max_tokens: int,
    data: Path,
    db: Path,
    config: Path,
    log: Path,
    watch: subprocess.Popen,
) -> None:
    runs: dict[tuple[str, int], dict] = {}  # (task_id, attempt) → the driver's answer

    def materialize(stage: str, task) -> dict:
        result = driver.ok("materialize", stage=stage, task_id=task.task_id)
        n = 1 + sum(1 for t, _ in runs if t == task.task_id)
        runs[(task.task_id, n)] = result
        return result

    # Phase 1: drafts (one ok; one truncated, then ok on retry; one unparsable)
    assert materialize("draft", D_OK)["success"]
    assert not materialize("draft", D_TRUNC)["success"]
    assert materialize("draft", D_TRUNC)["success"]
    assert not materialize("draft", D_BAD)["success"]
    for d in (D_OK, D_TRUNC):  # the daemon indexes them live; readers need them
        wait_until(
            lambda d=d: latest_ok(db, "draft", d.task_id),
            30,
            what=f"docwatch watch to index {d.task_id}\n{log.read_text()}",
        )

    # Phase 2: essays read their draft through the DocumentsIndex resource
    llm_essay = materialize("essay", E_LLM)
    assert llm_essay["success"], driver.stderr()
    assert materialize("essay", E_COPY)["success"], driver.stderr()
    for e in ESSAYS:
        wait_until(lambda e=e: latest_ok(db, "essay", e.task_id), 30, what=f"essay {e.task_id}")

    # Phase 3: evaluations read their target through the resource (one is truncated but kept)
    for v in EVALS:
        assert materialize("evaluation", v)["success"], driver.stderr()
    wait_until(lambda: len(rows(db)) == 8, 30, what=f"8 documents\n{log.read_text()}")
    assert watch.poll() is None, log.read_text()

    # Run records: the daemon polls the Dagster instance itself and fills the documents.
    dagster_runs = {r["run_id"] for r in runs.values()}
    wait_until(
        lambda: all(r["run_id"] in dagster_runs for r in rows(db).values()),
        30,
        what=f"the daemon to apply the run records\n{log.read_text()}",
    )
    got = rows(db)

    def doc(stage, task, version=1) -> dict:
        return got[(stage, task.task_id, version)]

    def run_id(task, attempt=1) -> str:
        return runs[(task.task_id, attempt)]["run_id"]

    # every document carries the Dagster run that produced it
    expected_runs = {
        ("draft", D_OK, 1): run_id(D_OK),
        ("draft", D_TRUNC, 1): run_id(D_TRUNC, 1),
        ("draft", D_TRUNC, 2): run_id(D_TRUNC, 2),
        ("draft", D_BAD, 1): run_id(D_BAD),
        ("essay", E_LLM, 1): run_id(E_LLM),
        ("essay", E_COPY, 1): run_id(E_COPY),
        ("evaluation", V_ESSAY, 1): run_id(V_ESSAY),
        ("evaluation", V_DRAFT, 1): run_id(V_DRAFT),
    }
    for (stage, task, version), want in expected_runs.items():
        row = doc(stage, task, version)
        assert row["run_id"] == want, (stage, task.task_id, version, row["meta_small"])
        assert row["meta_small"]["dagster"]["partition"] == task.task_id

    # truncated draft: true status, reason, token counts from the step failure
    trunc = doc("draft", D_TRUNC, 1)
    assert trunc["status"] == "truncated"
    assert trunc["usage_completion_tokens"] == max_tokens
    assert trunc["usage_max_tokens"] == max_tokens
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
    assert ok["status"] == "ok" and ok["usage_max_tokens"] == max_tokens
    assert ok["usage_completion_tokens"] is None  # a successful draft records no usage
    assert ok["meta_small"]["model_used"] == "anthropic/claude-sonnet-4"

    # the essay prompt was built from the draft document the index resolved
    draft_doc_id = llm_essay["metadata"]["essay_prompt"]["draft_doc_id"]
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

    # readers (the pipeline's resource): the latest ok document skips the truncated attempt
    def latest(stage, task) -> dict:
        return driver.request("resource", method="get_latest_by_task", args=[stage, task.task_id])

    assert latest("draft", D_TRUNC)["result"]["doc_id"] == retry["doc_id"]
    assert latest("draft", D_BAD)["error"] == "DocumentNotFound"
    assert latest("evaluation", V_DRAFT)["error"] == "DocumentNotFound"

    # idempotent: another scan changes nothing
    again = docwatch_scan(config)
    assert again.returncode == 0, again.stderr
    stages = json.loads(again.stdout)["stages"].values()
    assert sum(s["docs_created"] + s["docs_updated"] for s in stages) == 0
    assert rows(db) == got

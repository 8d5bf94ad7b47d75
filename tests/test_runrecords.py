"""Run records: the pure event → facts mapping and matching, and reading a real Dagster instance.

The pure tests need no Dagster.  The integration tests run the example pipeline with current
Dagster in the pipeline venv (``tests/pipeline_side.py``: ``.venv-pipeline``, which ``make test``
builds) and read its instance the way the daemon does in production:
``daemon/docwatch/dagster/events.py`` run by path under that venv's Python
(``dagster_python``).  They skip only when the pipeline venv is missing, and fail instead
when ``REQUIRE_DAGSTER`` is set, as ``make test`` does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from docwatch.core.layout import DEFAULT_FOLDERS, folder_roles
from docwatch.core.model import Attempt, Source, TaskInfo, document_row
from docwatch.dagster import events as dagster_events
from docwatch.dagster.matching import (
    PARSED_LAG_SECONDS,
    SKEW_SECONDS,
    RecordBook,
    relpath_below_root,
)
from docwatch.dagster.runfacts import (
    MATERIALIZATION,
    STEP_FAILURE,
    _small,
    event_from_dict,
    facts_of,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pipeline_side import PipelineDriver, require_pipeline_python
from support import NotifySocket, child_of, kill_if_running, wait_until, watch_process

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
from dagster_pipeline.tables import Draft, to_plain  # noqa: E402  (stdlib only)

FOLDERS = [r.folder for r in folder_roles(DEFAULT_FOLDERS)]
RAW = {
    "draft": "3_generation/draft_responses_raw",
    "essay": "3_generation/essay_responses_raw",
    "evaluation": "4_evaluation/evaluation_responses_raw",
}
PARSED = {
    "draft": "3_generation/draft_responses",
    "essay": "3_generation/essay_responses",
    "evaluation": "4_evaluation/evaluation_responses",
}
ASSET = {"draft": "draft_response", "essay": "essay_response", "evaluation": "evaluation_response"}
SEC = 1_000_000_000


# -- helpers ---------------------------------------------------------------------------------


def ev(
    kind=MATERIALIZATION,
    stage="draft",
    task="t1",
    *,
    ts=100.0,
    sid=1,
    run=None,
    raw_version: int | None = 1,
    data_root="data",
    partition=True,
    **metadata,
):
    """A plain event dict as the I/O part would build it."""
    md = dict(metadata)
    if raw_version is not None:
        md.setdefault("raw_path", f"{data_root}/{RAW[stage]}/{task}_v{raw_version}.txt")
    return {
        "asset": ASSET[stage],
        "event": kind,
        "run_id": run or f"run-{kind}-{sid}",
        "partition": task if partition else None,
        "timestamp": ts,
        "storage_id": sid,
        "metadata": md,
        "step": ASSET[stage],
    }


def src(stage, kind, task, version, mtime_s: float) -> Source:
    folder = RAW[stage] if kind == "raw" else PARSED[stage]
    return Source(
        stage,
        kind,
        f"{folder}/{task}_v{version}.txt",
        task,
        version,
        int(mtime_s * SEC),
        10,
        f"{task}{kind}{version}",
    )


def attempt(
    stage="draft",
    task="t1",
    *,
    raw: float | None = 99.0,
    parsed: float | None = None,
    version=1,
    status="ok",
) -> Attempt:
    r = src(stage, "raw", task, version, raw) if raw is not None else None
    p = src(stage, "parsed", task, version, parsed) if parsed is not None else None
    return Attempt(
        f"doc{stage[:2]}{task}{version}".ljust(12, "0")[:16],
        stage,
        task,
        version,
        r,
        p,
        None,
        status,
        None,
    )


def row_for(a: Attempt, parser: str | None = "essay_idea_last") -> dict:
    info = TaskInfo(a.stage, a.task_id, "tpl", "model", parser=parser)
    return document_row(
        a,
        info,
        parent_doc_id=None,
        run_id="backfill-x",
        doc_dir="docs/x",
        raw_chars=None,
        parsed_chars=None,
    )


def book_of(*events: dict) -> RecordBook:
    book = RecordBook(FOLDERS)
    book.add(e for e in (event_from_dict(d) for d in events) if e is not None)
    return book


# -- raw_path → path below the data root -------------------------------------------------------


R1 = "3_generation/draft_responses_raw/t_v1.txt"


@pytest.mark.parametrize(
    ("raw_path", "expected"),
    [
        (f"data/{R1}", R1),
        (f"./data/{R1}", R1),
        (
            "/srv/dd/data/3_generation/essay_responses_raw/t_v2.txt",
            "3_generation/essay_responses_raw/t_v2.txt",
        ),
        (f"other_root/{R1}", R1),
        (R1, R1),
        ("C:\\dd\\data\\3_generation\\draft_responses_raw\\t_v1.txt", R1),
        ("data/3_generation/unknown_folder/t_v1.txt", None),
        ("data/draft_responses_raw/t_v1.txt", None),  # the folder's parent is part of the rule
        ("t_v1.txt", None),
    ],
)
def test_raw_path_is_matched_below_the_data_root(raw_path, expected):
    assert relpath_below_root(raw_path, FOLDERS) == expected


def test_longest_configured_folder_wins():
    folders = ["raw", "x/raw"]
    assert relpath_below_root("data/x/raw/t_v1.txt", folders) == "x/raw/t_v1.txt"
    assert relpath_below_root("data/y/raw/t_v1.txt", folders) == "raw/t_v1.txt"


# -- event → facts ---------------------------------------------------------------------------


def test_truncation_failure_gives_truncated_with_usage_and_reason():
    d = ev(
        STEP_FAILURE,
        finish_reason="length",
        truncated=True,
        completion_tokens=4096,
        requested_max_tokens=4096,
        raw_chars=9000,
        model_used="m/x",
    )
    d["description"] = "draft truncated"
    f = facts_of(event_from_dict(d))
    assert (f.status, f.failed, f.finish_reason) == ("truncated", True, "length")
    assert f.model_used == "m/x" and f.usage_prompt_tokens is None
    assert (f.usage_completion_tokens, f.usage_max_tokens) == (4096, 4096)
    assert "truncated at the token limit" in f.reason and "4096/4096" in f.reason
    assert "draft truncated" in f.reason


@pytest.mark.parametrize(
    ("kind", "metadata", "status"),
    [
        (STEP_FAILURE, {"finish_reason": "length"}, "truncated"),
        (STEP_FAILURE, {"truncated": "true"}, "truncated"),
        (STEP_FAILURE, {"truncated": True, "parser": "p", "error": "e"}, "truncated"),
        (STEP_FAILURE, {"parser": "essay_idea_last", "error": "no block"}, "parse_error"),
        (STEP_FAILURE, {"error": "bad format"}, "parse_error"),
        (STEP_FAILURE, {"function": "draft_response"}, "gen_error"),
        (STEP_FAILURE, {"truncated": False, "finish_reason": "stop"}, "gen_error"),
        (MATERIALIZATION, {"finish_reason": "stop", "truncated": False}, None),
        (MATERIALIZATION, {"finish_reason": "length"}, "truncated"),  # kept (evaluations)
    ],
)
def test_status_rules(kind, metadata, status):
    f = facts_of(event_from_dict(ev(kind, **metadata)))
    assert f.status == status
    assert f.failed is (kind == STEP_FAILURE)
    assert (f.reason is None) is (status is None)


def test_parse_error_reason_carries_the_error_and_description():
    d = ev(STEP_FAILURE, parser="essay_idea_last", error="no <essay-idea> block found")
    assert facts_of(event_from_dict(d)).reason == "no <essay-idea> block found"
    d["description"] = "parsing failed"
    assert facts_of(event_from_dict(d)).reason == "parsing failed: no <essay-idea> block found"


def test_gen_error_reason_falls_back_to_the_step_error():
    d = ev(STEP_FAILURE)
    d["error"] = "RuntimeError: provider returned 503"
    assert facts_of(event_from_dict(d)).reason == "RuntimeError: provider returned 503"


def test_usage_keys_and_fallbacks():
    f = facts_of(event_from_dict(ev(max_tokens=2048, prompt_tokens=300.0, model_name="n")))
    assert (f.usage_max_tokens, f.usage_prompt_tokens) == (2048, 300)
    assert f.usage_completion_tokens is None
    assert f.model_used == "n"
    f = facts_of(event_from_dict(ev(max_tokens=1, requested_max_tokens=7, completion_tokens="5")))
    assert (f.usage_max_tokens, f.usage_completion_tokens) == (7, 5)
    f = facts_of(event_from_dict(ev(completion_tokens=True, max_tokens="lots")))
    assert (f.usage_completion_tokens, f.usage_max_tokens) == (None, None)


def test_event_dicts():
    assert event_from_dict({**ev(), "asset": "some_other_asset"}) is None
    e = event_from_dict({**ev(), "asset": ["draft_response"]})
    assert e is not None and e.stage == "draft"
    with pytest.raises(ValueError):
        event_from_dict({**ev(), "event": "observation"})


# -- facts → row -------------------------------------------------------------------------------


@pytest.mark.parametrize("file_status", ["pending", "parse_error", "gen_error", "ok"])
def test_a_failure_decides_the_status_whatever_the_files_said(file_status):
    a = attempt(status=file_status)
    d = ev(STEP_FAILURE, finish_reason="length", truncated=True, completion_tokens=10)
    row = book_of(d).enrich(row_for(a), a)
    assert row["status"] == "truncated" and row["run_id"] == d["run_id"]
    assert row["meta_small"]["finish_reason"] == "length"
    assert "truncated" in row["meta_small"]["status_reason"]
    assert row["meta_small"]["dagster"]["event"] == "step_failure"


@pytest.mark.parametrize("file_status", ["pending", "parse_error", "ok"])
def test_a_success_keeps_the_file_status(file_status):
    a = attempt(status=file_status)
    row = book_of(ev(max_tokens=2048, model_used="m")).enrich(row_for(a), a)
    assert row["status"] == file_status and row["usage_max_tokens"] == 2048
    assert row["meta_small"]["model_used"] == "m" and row["run_id"] == "run-materialization-1"


def test_without_records_the_row_is_unchanged():
    a = attempt()
    row = row_for(a)
    assert RecordBook(FOLDERS).enrich(row, a) == row
    other = book_of(ev(task="t2"))
    assert other.enrich(row, a) == row


# -- matching ----------------------------------------------------------------------------------


def test_raw_path_match_takes_the_event_nearest_after_the_raw_file():
    a = attempt(raw=100.0)
    old = ev(STEP_FAILURE, ts=50.0, sid=1, finish_reason="length")  # an earlier run, same name
    new = ev(ts=101.0, sid=2)
    later = ev(ts=500.0, sid=3)
    book = book_of(old, new, later)
    assert book.match("draft", "t1", a.raw.relpath, a.created_at_ns).run_id == new["run_id"]


def test_an_event_slightly_before_the_file_matches_only_when_none_is_after():
    a = attempt(raw=100.0)
    skewed = ev(ts=100.0 - SKEW_SECONDS / 2, sid=1)
    assert book_of(skewed).match("draft", "t1", a.raw.relpath, a.created_at_ns) is not None
    too_old = ev(ts=100.0 - SKEW_SECONDS * 2, sid=1)
    assert book_of(too_old).match("draft", "t1", a.raw.relpath, a.created_at_ns) is None


def test_parsed_only_attempts_match_by_partition_and_time():
    first, second = attempt(raw=None, parsed=100.0), attempt(raw=None, parsed=103.0, version=2)
    e1 = ev(ts=100.2, sid=1, raw_version=None, finish_reason="stop")
    e2 = ev(ts=103.1, sid=2, raw_version=None, finish_reason="length")
    book = book_of(e2, e1)
    assert book.facts_for(first).run_id == e1["run_id"]
    assert book.facts_for(second).run_id == e2["run_id"]
    assert book.enrich(row_for(second), second)["status"] == "truncated"
    # far later events belong to later attempts, never to this one
    late = book_of(ev(ts=100.0 + PARSED_LAG_SECONDS + 1, sid=9, raw_version=None))
    assert late.facts_for(first) is None


def test_parsed_only_attempts_ignore_events_that_name_a_raw_file_or_failed():
    a = attempt(raw=None, parsed=100.0)
    assert book_of(ev(ts=100.5)).facts_for(a) is None  # has raw_path: belongs to a raw attempt
    assert book_of(ev(STEP_FAILURE, ts=100.5, raw_version=None)).facts_for(a) is None


def test_events_of_another_stage_never_match():
    a = attempt(stage="essay", raw=100.0)
    assert book_of(ev(stage="draft", task="t1", ts=100.5)).facts_for(a) is None
    assert book_of(ev(stage="essay", task="t1", ts=100.5)).facts_for(a) is not None


def test_add_reports_the_tasks_and_ignores_known_events():
    book = RecordBook(FOLDERS)
    e = event_from_dict(ev(task="t1", partition=False))
    assert book.add([e]) == {("draft", "t1")}  # from the raw file's name
    assert book.add([e]) == set() and len(book) == 1
    f = event_from_dict(ev(STEP_FAILURE, task="t2", raw_version=None))
    assert book.add([f]) == {("draft", "t2")}
    g = event_from_dict({**ev(task="t3", sid=7), "metadata": {"raw_path": "x/t3_v1.txt"}})
    assert book.add([g]) == {("draft", "t3")} and "x/t3_v1.txt" in book.unmatched_paths


# -- properties --------------------------------------------------------------------------------

TASKS = ("t1", "t2")


@st.composite
def scenarios(draw):
    """A few attempts per task (raw-backed or parsed-only) and events around them."""
    attempts, events = [], []
    t = 100.0
    for task in TASKS:
        for version in (1, 2):
            t += draw(st.floats(0.5, 50.0))
            parsed_only = draw(st.booleans())
            status = draw(st.sampled_from(["ok", "pending", "parse_error"]))
            if parsed_only:
                a = attempt(task=task, raw=None, parsed=t, version=version)
            else:
                a = attempt(task=task, raw=t, version=version, status=status)
            attempts.append(a)
    n = draw(st.integers(0, 8))
    for sid in range(n):
        kind = draw(st.sampled_from([MATERIALIZATION, STEP_FAILURE]))
        task = draw(st.sampled_from(TASKS))
        named = draw(st.booleans())
        md = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "finish_reason": st.sampled_from(["stop", "length"]),
                    "truncated": st.booleans(),
                    "parser": st.just("p"),
                    "error": st.just("e"),
                    "completion_tokens": st.integers(1, 5000),
                    "max_tokens": st.integers(1, 5000),
                },
            )
        )
        version = draw(st.sampled_from([1, 2])) if named else None
        ts = draw(st.floats(90.0, 400.0))
        events.append(ev(kind, task=task, ts=ts, sid=sid, raw_version=version, **md))
    return attempts, events


def _outcome(book: RecordBook, attempts: list[Attempt]) -> list[dict]:
    return [book.enrich(row_for(a), a) for a in attempts]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.randoms(use_true_random=False), st.integers(0, 8))
def test_order_and_batching_of_events_never_matter(scenario, rnd, cut):
    attempts, events = scenario
    expected = _outcome(book_of(*events), attempts)
    shuffled = list(events)
    rnd.shuffle(shuffled)
    book = RecordBook(FOLDERS)
    for chunk in (shuffled[:cut], shuffled[cut:], shuffled):  # in two polls, then all again
        book.add(event_from_dict(d) for d in chunk)
    assert _outcome(book, attempts) == expected


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_enrich_is_idempotent(scenario):
    attempts, events = scenario
    book = book_of(*events)
    for a in attempts:
        once = book.enrich(row_for(a), a)
        assert book.enrich(once, a) == once
        facts = book.facts_for(a)
        if facts is not None:
            assert facts.apply(facts.apply(row_for(a))) == facts.apply(row_for(a))


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_one_raw_event_names_at_most_one_attempt(scenario):
    attempts, events = scenario
    book = book_of(*events)
    claimed: dict[tuple, str] = {}
    for a in attempts:
        if a.raw is None:
            continue
        e = book.match(a.stage, a.task_id, a.raw.relpath, a.created_at_ns)
        if e is not None:
            assert claimed.setdefault(e.key, a.doc_id) == a.doc_id
            assert e.raw_path.endswith(a.raw.relpath)


# -- imports: the daemon's venv and the pipeline's ----------------------------------------------


def test_importing_daemon_never_imports_dagster():
    code = (
        "import sys, docwatch, docwatch.dagster.runrecords, docwatch.ingest.scan, docwatch.cli\n"
        "assert 'dagster' not in sys.modules, sorted(m for m in sys.modules if 'dagster' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_reader_side_imports_only_the_standard_library():
    """``import docwatch`` (the reader API) and ``docwatch.dagster.events`` (the script run by
    path under the pipeline's Python) import neither watchdog nor click nor Dagster."""
    code = (
        "import sys, docwatch, docwatch.reader, docwatch.dagster.events\n"
        "bad = {'watchdog', 'click', 'dagster'} & {m.split('.')[0] for m in sys.modules}\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    source = Path(dagster_events.__file__).read_text()
    assert "from docwatch" not in source and "from ." not in source
    assert "import docwatch" not in source


#: Run in the pipeline venv, where docwatch is installed with --no-deps (no click, watchdog 6).
RESOURCE_IMPORTS = """
import ast, importlib.metadata as md, json, sys
import docwatch
assert not {"watchdog", "click", "dagster"} & set(sys.modules), "import docwatch"
from docwatch.dagster import DocumentsIndex
assert "watchdog" not in sys.modules, "docwatch.dagster.DocumentsIndex imported watchdog"
# `import dagster` imports click itself (Dagster's CLI); none of docwatch's modules may.
ours = sorted(m for m in sys.modules if m == "docwatch" or m.startswith("docwatch."))
for name in ours:
    for node in ast.walk(ast.parse(open(sys.modules[name].__file__).read())):
        if isinstance(node, ast.Import):
            tops = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            tops = [(node.module or "").split(".")[0]]
        else:
            continue
        assert not {"watchdog", "click"} & set(tops), (name, tops)
print(json.dumps({"modules": ours, "file": docwatch.__file__, "docwatch": md.version("docwatch"),
                  "watchdog": md.version("watchdog"), "dagster": md.version("dagster")}))
"""


def test_the_resource_works_without_docwatchs_dependencies():
    """``pip install --no-deps docwatch`` in the pipeline venv: ``docwatch.dagster`` (the resource)
    imports only Dagster, the standard library and docwatch's stdlib-only reader."""
    python = require_pipeline_python()
    r = subprocess.run(
        [str(python), "-c", RESOURCE_IMPORTS], capture_output=True, text=True, cwd="/", timeout=120
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert Path(got["file"]).resolve() == REPO / "daemon" / "docwatch" / "__init__.py"
    assert int(got["watchdog"].split(".")[0]) < 7  # the conflict this layout exists for
    assert "docwatch.dagster.documents_index" in got["modules"]
    assert "docwatch.live.watcher" not in got["modules"]


# -- transports: failures are reported and retried, never raised by refresh ---------------------


class FakeTransport:
    """Canned reads: ``answers`` are (events, cursor) pairs or exceptions, in order."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.cursors: list[dict] = []
        self.closed = False

    def describe(self) -> str:
        return "fake"

    def read(self, cursor):
        self.cursors.append(cursor)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self):
        self.closed = True


def test_a_failed_read_leaves_the_cursor_where_it_was():
    from docwatch.dagster.runrecords import RunRecords

    cur1 = {**dagster_events.new_cursor(), "materializations": {"draft_response": 1}}
    transport = FakeTransport(
        ([ev(task="t1", sid=1)], cur1),
        RuntimeError("database is locked"),
        ([{"asset": "draft_response", "event": "nonsense"}], {"x": 1}),  # malformed: rejected
        ([ev(task="t2", sid=2), {**ev(sid=3), "asset": "unrelated"}], {"n": 2}),
    )
    records = RunRecords("home", FOLDERS, transport=transport)
    assert records.poll() == {("draft", "t1")}
    with pytest.raises(RuntimeError):
        records.poll()
    assert records.cursor == cur1
    with pytest.raises(Exception, match="malformed event"):
        records.poll()
    assert records.cursor == cur1 and len(records.book) == 1
    assert records.poll() == {("draft", "t2")}
    assert records.cursor == {"n": 2} and len(records.book) == 2
    assert transport.cursors == [dagster_events.new_cursor(), cur1, cur1, cur1]
    records.close()
    assert transport.closed


def _fake_python(tmp_path: Path, body: str) -> Path:
    """An executable standing in for the pipeline's Python: runs ``body`` with our Python."""
    script = tmp_path / "fake_reader.py"
    script.write_text(body)
    exe = tmp_path / "fake-python"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    exe.chmod(0o755)
    return exe


#: Answers like ``dagster_events.py --serve``: no events, the cursor's ``n`` plus one.
FAKE_SERVER = """
import json, sys
assert sys.argv[2:4] == ["--dagster-home", "HOME"] and sys.argv[-1] == "--serve", sys.argv
for line in sys.stdin:
    cur = json.loads(line)
    cur["n"] = cur.get("n", 0) + 1
    print(json.dumps({"events": [], "cursor": cur, "dagster_version": "fake"}), flush=True)
"""


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "import sys\nsys.stderr.write('no module named dagster\\n')\nsys.exit(3)",
            ["exited without an answer", "exited with status 3", "no module named dagster"],
        ),
        (
            "import sys, time\nsys.stdin.readline()\ntime.sleep(60)",
            ["no answer within 1s", "exited with status -9"],
        ),
        (
            "import sys\nsys.stdin.readline()\nprint('Traceback? not JSON', flush=True)\n"
            "sys.stdin.readline()",
            ["unexpected answer", "not JSON"],
        ),
    ],
)
def test_subprocess_failures_name_the_command_status_and_stderr(tmp_path, body, expected):
    from docwatch.dagster.runrecords import RunRecords, RunRecordsError

    exe = _fake_python(tmp_path, body)
    records = RunRecords("HOME", FOLDERS, dagster_python=exe, timeout=1)
    with pytest.raises(RunRecordsError) as info:
        records.poll()
    message = str(info.value)
    assert f"{exe} {dagster_events.__file__}" in message and "--dagster-home HOME" in message
    for part in expected:
        assert part in message
    assert records.cursor == dagster_events.new_cursor()
    records.close()


def test_subprocess_is_kept_and_restarted_after_it_dies(tmp_path):
    from docwatch.dagster.runrecords import RunRecords, RunRecordsError

    records = RunRecords("HOME", FOLDERS, dagster_python=_fake_python(tmp_path, FAKE_SERVER))
    records.poll()
    child = records.transport._proc
    records.poll()
    assert records.cursor["n"] == 2 and records.transport._proc is child  # one child, kept
    child.kill()
    child.wait()
    with pytest.raises(RunRecordsError, match="status -9"):
        records.poll()
    records.poll()  # a new child, the cursor where it was
    assert records.cursor["n"] == 3 and records.transport._proc is not child
    assert records.transport.describe().endswith("(Dagster fake)")
    child = records.transport._proc
    records.close()
    assert child.returncode == 0  # closed stdin: it exited by itself


def test_a_missing_interpreter_is_logged_and_retried_never_fatal(tmp_path, caplog):
    from conftest import make_config
    from docwatch.dagster import runrecords
    from docwatch.ingest.indexer import Indexer

    caplog.set_level(logging.INFO, logger="docwatch.runrecords")
    (tmp_path / "data").mkdir()
    cfg = make_config(
        tmp_path / "data",
        dagster_home=tmp_path / "home",
        dagster_python=tmp_path / "no-venv" / "bin" / "python",
    )
    indexer = Indexer(cfg, "watch")
    records = runrecords.attach(indexer, cfg)  # the first read fails: logged, not raised
    assert records is not None and records.failures == 1
    assert indexer.ingestor.enrich == records.enrich
    assert runrecords.refresh(indexer, records).updated == []
    assert records.failures == 2
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1  # repeated at most every WARN_EVERY seconds
    assert "cannot start" in warnings[0].getMessage()
    assert str(tmp_path / "no-venv" / "bin" / "python") in warnings[0].getMessage()
    records.transport = FakeTransport(([], dagster_events.new_cursor()))
    runrecords.refresh(indexer, records)
    assert records.failures == 0 and "reading again" in caplog.records[-1].getMessage()
    records.close()
    indexer.close()


# -- a real Dagster instance, read through the pipeline venv's Python ------------------------------

COMBO = "deliberate-rolling-thread-v2"
OK1, TRUNC1, BOOM1, OK2 = (
    Draft(f"combo_{n}", COMBO, "sonnet-4") for n in ("ok1", "cut", "boom", "ok2")
)


@pytest.fixture
def driver(request, tmp_path):
    d = PipelineDriver(
        tmp_path, tmp_path / "home", consolidated=getattr(request, "param", "") == "consolidated"
    )
    yield d
    d.close()


def _setup(driver, *drafts: Draft, script=None) -> dict:
    return driver.ok("setup", drafts=[to_plain(d) for d in drafts], script=script or {})


def _run(driver, draft: Draft) -> dict:
    return driver.ok("materialize", stage="draft", task_id=draft.task_id)


@pytest.mark.parametrize("driver", ["run-sharded", "consolidated"], indirect=True)
def test_poll_reads_only_new_events(driver, tmp_path):
    from docwatch.dagster.runrecords import RunRecords

    python = require_pipeline_python()
    info = _setup(
        driver, OK1, TRUNC1, BOOM1, OK2, script={TRUNC1.task_id: "truncate", BOOM1.task_id: "error"}
    )
    max_tokens = info["max_tokens"]["draft"]
    first = _run(driver, OK1)  # draft_prompt is materialised too: not ours, ignored
    assert first["success"]
    records = RunRecords(tmp_path / "home", FOLDERS, dagster_python=python)
    assert records.poll() == {("draft", OK1.task_id)}
    assert records.poll() == set()  # nothing new
    trunc, boom = _run(driver, TRUNC1), _run(driver, BOOM1)
    assert not trunc["success"] and not boom["success"]
    assert records.poll() == {("draft", TRUNC1.task_id), ("draft", BOOM1.task_id)}
    assert records.poll() == set()
    _run(driver, OK2)
    assert records.poll() == {("draft", OK2.task_id)}
    assert len(records.book) == 4  # 2 materialisations + 2 failures, each once
    assert records.transport.describe() == f"{python} (Dagster {info['dagster_version']})"

    def facts(draft, n=1):
        rel = f"{RAW['draft']}/{draft.task_id}_v{n}.txt"
        e = records.book.match("draft", draft.task_id, rel, int((time.time() - 60) * SEC))
        return facts_of(e) if e else None

    assert facts(OK1).run_id == first["run_id"] and facts(OK1).usage_max_tokens == max_tokens
    assert facts(OK1).status is None and facts(OK1).model_used == "anthropic/claude-sonnet-4"
    assert facts(TRUNC1).status == "truncated" and facts(TRUNC1).run_id == trunc["run_id"]
    assert facts(TRUNC1).usage_completion_tokens == max_tokens
    assert facts(BOOM1) is None  # no raw_path: no file of this failure exists
    event = next(e for e in records.book._events.values() if e.run_id == boom["run_id"])
    assert event.kind == "step_failure" and event.partition == BOOM1.task_id
    assert "provider returned 503" in (event.error or "")
    assert facts_of(event).status == "gen_error"
    records.close()


ONE_SHOT = """
import json, sys
from docwatch.dagster.events import read_events
from docwatch.dagster.runrecords import RunRecords
home, folders = sys.argv[1], json.loads(sys.argv[2])
events, cursor = read_events(home, None)
again, _ = read_events(home, cursor)
records = RunRecords(home, folders)  # no dagster_python: in process
tasks = sorted(records.poll())
print(json.dumps({"events": events, "again": again, "tasks": tasks,
                  "transport": records.transport.describe()}))
records.close()
"""


def test_the_script_by_path_and_in_process_read_the_same(driver, tmp_path):
    """``dagster_events.py --cursor`` (one shot, as documented for manual use), and, inside
    the pipeline venv, ``read_events`` and the in-process transport give the same events."""
    python = require_pipeline_python()
    _setup(driver, OK1, TRUNC1, script={TRUNC1.task_id: "truncate"})
    _run(driver, OK1), _run(driver, TRUNC1)
    home = str(tmp_path / "home")
    script = [str(python), dagster_events.__file__, "--dagster-home", home]
    r = subprocess.run(script, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(e["event"], e["partition"]) for e in doc["events"]] == [
        ("materialization", OK1.task_id),
        ("step_failure", TRUNC1.task_id),
    ]
    assert all(event_from_dict(e) is not None for e in doc["events"])
    r = subprocess.run(
        [*script, "--cursor", json.dumps(doc["cursor"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and json.loads(r.stdout)["events"] == [], r.stderr
    r = subprocess.run(
        [*script, "--cursor", "-"],
        input=json.dumps(doc["cursor"]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and json.loads(r.stdout)["events"] == [], r.stderr
    r = subprocess.run(
        [*script[:-1], str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 1 and r.stdout == "" and "not a directory" in r.stderr

    r = subprocess.run(
        [str(python), "-c", ONE_SHOT, home, json.dumps(FOLDERS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert r.returncode == 0, r.stderr
    inside = json.loads(r.stdout)
    assert inside["events"] == doc["events"] and inside["again"] == []
    assert inside["tasks"] == sorted([["draft", OK1.task_id], ["draft", TRUNC1.task_id]])
    assert inside["transport"].startswith("in process (Dagster ")


def test_in_process_without_dagster_is_a_configuration_error(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['dagster'] = None  # not importable, whatever this venv holds\n"
        "from docwatch.dagster.runrecords import InProcess\n"
        f"InProcess({str(tmp_path)!r}, ['draft_response']).read(None)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode != 0
    assert "DocwatchError" in r.stderr and "set dagster_python" in r.stderr


def test_refresh_applies_facts_to_documents_indexed_before_the_event(driver, tmp_path, monkeypatch):
    """What ``watch`` does live: a raw file is indexed (pending) before the run records say
    it was truncated; ``refresh`` re-plans the task and the row gets the true status."""
    from conftest import make_config
    from docwatch.dagster import runrecords
    from docwatch.ingest.indexer import Indexer
    from docwatch.ingest.scan import list_candidates
    from docwatch.reader import DocumentsIndex

    monkeypatch.chdir(tmp_path)
    info = _setup(driver, TRUNC1, script={TRUNC1.task_id: "truncate"})
    max_tokens = info["max_tokens"]["draft"]
    cfg = make_config(
        tmp_path / "data", dagster_home=tmp_path / "home", dagster_python=require_pipeline_python()
    )
    indexer = Indexer(cfg, "watch")
    records = runrecords.attach(indexer, cfg)  # nothing recorded yet
    assert records is not None and records.failures == 0 and len(records.book) == 0
    result = _run(driver, TRUNC1)  # writes the raw file, then Dagster records the failure
    assert not result["success"]
    indexer.ingest(list_candidates(cfg, ["draft"]))  # indexed before the next poll
    with DocumentsIndex(cfg.db) as idx:
        row = idx.get_latest_by_task("draft", TRUNC1.task_id, status={"pending"})
        assert row["run_id"] == "watch"
    report = runrecords.refresh(indexer, records)
    assert report.updated == [row["doc_id"]]
    with DocumentsIndex(cfg.db) as idx:
        row = idx.get(row["doc_id"])
    assert (row["status"], row["run_id"]) == ("truncated", result["run_id"])
    assert (row["usage_completion_tokens"], row["usage_max_tokens"]) == (max_tokens, max_tokens)
    assert row["meta_small"]["status_reason"].startswith("response truncated")
    task = {("draft", TRUNC1.task_id)}
    assert runrecords.stale_tasks(indexer.index, records.book, task) == set()
    assert runrecords.refresh(indexer, records).updated == []  # idempotent
    records.close()
    indexer.close()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_dagster_metadata_never_carries_nan_or_infinity(bad):
    # JSON has neither: orjson would write null where json writes NaN, and strict readers of
    # meta_small reject NaN.  They become null where run facts enter a row.
    assert _small(bad) is None
    nested = _small({"scores": [1.5, bad], "inner": {"v": bad}})
    assert nested == {"scores": [1.5, None], "inner": {"v": None}}
    assert _small(2.5) == 2.5 and _small("NaN") == "NaN"


@contextmanager
def _daemon_with_its_events_reader(driver, tmp_path, slow_start: float = 0.0):
    """``docwatch watch`` on a real Dagster instance's run records, read through the pipeline
    venv's Python, once its events reader has started: (watch, reader's pid, notify, log);
    the daemon is killed on the way out if it is still running.  ``slow_start``: the
    pipeline's Python starts that many seconds late (a cold venv), through a shell script
    that then execs it."""
    python = require_pipeline_python()
    if slow_start:
        script = tmp_path / "slow-python"
        script.write_text(f'#!/bin/sh\nsleep {slow_start}\nexec "{python}" "$@"\n')
        script.chmod(0o755)
        python = str(script)
    _setup(driver, OK1)
    assert _run(driver, OK1)["success"]
    config = tmp_path / "docwatch.toml"
    config.write_text(
        f'data_root = "{tmp_path / "data"}"\nsettle_seconds = 0\nlog_level = "DEBUG"\n'
        f'dagster_home = "{tmp_path / "home"}"\ndagster_python = "{python}"\n'
    )
    notify, log = NotifySocket(), tmp_path / "watch.log"
    watch = watch_process(["--config", config], log, notify)
    try:
        reader = wait_until(
            lambda: child_of(watch.pid, b"events.py") or watch.poll() is not None,
            60,
            0.002,
            what="the events reader",
        )
        assert reader is not True, log.read_text()
        yield watch, reader, notify, log
    finally:
        kill_if_running(watch)
        notify.close()


def test_systemds_stop_leaves_the_events_reader_to_the_daemon(driver, tmp_path):
    """systemd stops a service by SIGTERM to every process of its cgroup, the events reader
    too, even while it starts: the reader leaves it to the daemon, which stops polling and
    ends it at EOF (exit 0), and exits 0 with no warning."""
    with _daemon_with_its_events_reader(driver, tmp_path) as (watch, reader, notify, log):
        os.kill(reader, signal.SIGTERM)  # while it starts: before it can ignore the signal
        wait_until(
            lambda: (
                any(s in log.read_text() for s in ("Dagster events read from", "WARNING"))
                or watch.poll() is not None
            ),
            60,
            what="the first read of the run records",
        )
        assert "WARNING" not in log.read_text(), log.read_text()
        assert child_of(watch.pid, b"events.py") == reader, log.read_text()
        for pid in (reader, watch.pid):  # the reader first: it must outlive the signal
            os.kill(pid, signal.SIGTERM)
        assert watch.wait(30) == 0, log.read_text()
    text = log.read_text()
    assert f"dagster events reader (pid {reader}) ended (exit 0)" in text, text
    assert "WARNING" not in text, text
    assert notify.seen("STOPPING=1"), notify.messages


def test_a_stop_while_the_events_reader_starts_waits_for_it(driver, tmp_path):
    """systemd's stop right after start, as the units send it (``KillMode=mixed``: SIGTERM to
    the daemon alone): the first read of the run records outlasts the poller's join, so the
    daemon must not close the reader's pipes under the thread still reading them; it exits 0
    with no warning, and its reader ends at EOF (exit 0), not by a kill and not as an orphan.
    The reader starts 0.5 s late through a wrapper script, so its first answer comes after
    READY=1 on any machine."""
    with _daemon_with_its_events_reader(driver, tmp_path, 0.5) as (watch, reader, notify, log):
        wait_until(lambda: notify.seen("READY=1") or watch.poll() is not None, 60, what="READY")
        assert "Dagster events read from" not in log.read_text(), "the read was too quick"
        watch.send_signal(signal.SIGTERM)
        assert watch.wait(30) == 0, log.read_text()
    text = log.read_text()
    assert f"dagster events reader (pid {reader}) ended (exit 0)" in text, text
    assert "WARNING" not in text and "Traceback" not in text, text
    assert not os.path.exists(f"/proc/{reader}"), "the events reader outlived the daemon"


def test_the_children_leave_the_same_signals_to_the_daemon():
    """The staging helper and the events reader run by path (no ``docwatch`` import): each
    keeps its own copy of the signals the daemon starts them with blocked."""
    from docwatch import children
    from docwatch.store import stager

    assert stager.LEFT_TO_THE_PARENT == dagster_events.LEFT_TO_THE_PARENT
    assert dagster_events.LEFT_TO_THE_PARENT == children.LEFT_TO_THE_PARENT

"""Run records: the pure event → facts mapping and matching, and reading a real Dagster instance.

The pure tests need no Dagster.  The integration tests use a real temporary instance
(``instance_for_test``) and the in-process executor; they are skipped only when Dagster is not
importable (and fail instead when ``REQUIRE_DAGSTER`` is set, as ``make test`` does).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.layout import DEFAULT_FOLDERS, folder_roles
from daemon.model import Attempt, Source, TaskInfo, document_row
from daemon.runrecords import (
    MATERIALIZATION,
    PARSED_LAG_SECONDS,
    SKEW_SECONDS,
    STEP_FAILURE,
    RecordBook,
    event_from_dict,
    facts_of,
    relpath_below_root,
)

#: Dagster 1.8.4 (what the core's watchdog pin resolves to) trips a pydantic 2.11 deprecation.
pytestmark = pytest.mark.filterwarnings("ignore:Accessing the 'model_fields' attribute")
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


def require_dagster():
    """Import Dagster, or skip (fail when REQUIRE_DAGSTER is set: CI must run these)."""
    try:
        import dagster
    except ImportError as exc:
        if os.environ.get("REQUIRE_DAGSTER"):
            pytest.fail(f"REQUIRE_DAGSTER is set but dagster cannot be imported: {exc}")
        pytest.skip(f"dagster is not importable ({exc}); install with pip install -e '.[dagster]'")
    return dagster


# -- helpers ---------------------------------------------------------------------------------


def ev(kind=MATERIALIZATION, stage="draft", task="t1", *, ts=100.0, sid=1, run=None,
       raw_version: int | None = 1, data_root="data", partition=True, **metadata):  # fmt: skip
    """A plain event dict as the I/O part would build it."""
    md = dict(metadata)
    if raw_version is not None:
        md.setdefault("raw_path", f"{data_root}/{RAW[stage]}/{task}_v{raw_version}.txt")
    return {
        "asset": ASSET[stage], "event": kind, "run_id": run or f"run-{kind}-{sid}",
        "partition": task if partition else None, "timestamp": ts, "storage_id": sid,
        "metadata": md, "step": ASSET[stage],
    }  # fmt: skip


def src(stage, kind, task, version, mtime_s: float) -> Source:
    folder = RAW[stage] if kind == "raw" else PARSED[stage]
    return Source(stage, kind, f"{folder}/{task}_v{version}.txt", task, version,
                  int(mtime_s * SEC), 10, f"{task}{kind}{version}")  # fmt: skip


def attempt(stage="draft", task="t1", *, raw: float | None = 99.0, parsed: float | None = None,
            version=1, status="ok") -> Attempt:  # fmt: skip
    r = src(stage, "raw", task, version, raw) if raw is not None else None
    p = src(stage, "parsed", task, version, parsed) if parsed is not None else None
    return Attempt(f"doc{stage[:2]}{task}{version}".ljust(12, "0")[:16], stage, task, version,
                   r, p, None, status, None)  # fmt: skip


def row_for(a: Attempt, parser: str | None = "essay_idea_last") -> dict:
    info = TaskInfo(a.stage, a.task_id, "tpl", "model", parser=parser)
    return document_row(a, info, parent_doc_id=None, run_id="backfill-x", doc_dir="docs/x",
                        raw_chars=None, parsed_chars=None)  # fmt: skip


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
        ("/srv/dd/data/3_generation/essay_responses_raw/t_v2.txt",
         "3_generation/essay_responses_raw/t_v2.txt"),
        (f"other_root/{R1}", R1),
        (R1, R1),
        ("C:\\dd\\data\\3_generation\\draft_responses_raw\\t_v1.txt", R1),
        ("data/3_generation/unknown_folder/t_v1.txt", None),
        ("data/draft_responses_raw/t_v1.txt", None),  # the folder's parent is part of the rule
        ("t_v1.txt", None),
    ],
)  # fmt: skip
def test_raw_path_is_matched_below_the_data_root(raw_path, expected):
    assert relpath_below_root(raw_path, FOLDERS) == expected


def test_longest_configured_folder_wins():
    folders = ["raw", "x/raw"]
    assert relpath_below_root("data/x/raw/t_v1.txt", folders) == "x/raw/t_v1.txt"
    assert relpath_below_root("data/y/raw/t_v1.txt", folders) == "raw/t_v1.txt"


# -- event → facts ---------------------------------------------------------------------------


def test_truncation_failure_gives_truncated_with_usage_and_reason():
    d = ev(STEP_FAILURE, finish_reason="length", truncated=True, completion_tokens=4096,
           requested_max_tokens=4096, raw_chars=9000, model_used="m/x")  # fmt: skip
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
        md = draw(st.fixed_dictionaries({}, optional={
            "finish_reason": st.sampled_from(["stop", "length"]),
            "truncated": st.booleans(), "parser": st.just("p"), "error": st.just("e"),
            "completion_tokens": st.integers(1, 5000), "max_tokens": st.integers(1, 5000),
        }))  # fmt: skip
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


# -- the optional extra ------------------------------------------------------------------------


def test_importing_daemon_never_imports_dagster():
    code = (
        "import sys, daemon, daemon.runrecords, daemon.scan, daemon.cli\n"
        "assert 'dagster' not in sys.modules, sorted(m for m in sys.modules if 'dagster' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


# -- a real Dagster instance -------------------------------------------------------------------


def _assets(dg):
    """A minimal ``draft_response``: writes its raw file, then fails or succeeds per partition."""
    parts = dg.DynamicPartitionsDefinition(name="draft_tasks")

    @dg.asset(partitions_def=parts, name="draft_response")
    def draft_response(context) -> str:
        task = context.partition_key
        kind, _, n = task.partition("-")
        raw_path = f"data/{RAW['draft']}/{task}_v{n or 1}.txt"
        if kind == "trunc":
            raise dg.Failure(description="cut", metadata={
                "finish_reason": "length", "truncated": True, "completion_tokens": 64,
                "requested_max_tokens": 64, "raw_path": raw_path})  # fmt: skip
        if kind == "boom":
            raise RuntimeError("provider exploded")
        context.add_output_metadata({"raw_path": raw_path, "max_tokens": 64})
        return "ok"

    @dg.asset(partitions_def=parts, name="unrelated_asset")
    def unrelated(context) -> str:
        return "x"

    return parts, [draft_response, unrelated]


@pytest.fixture(params=["run-sharded", "consolidated"])
def instance(request, tmp_path):
    dg = require_dagster()
    overrides = None
    if request.param == "consolidated":  # storage ids are global here (Postgres-like)
        overrides = {"event_log_storage": {
            "module": "dagster._core.storage.event_log",
            "class": "ConsolidatedSqliteEventLogStorage",
            "config": {"base_dir": str(tmp_path / "home" / "history")},
        }}  # fmt: skip
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(overrides=overrides, temp_dir=str(tmp_path / "home")) as inst:
        yield inst


def _run(dg, inst, assets, key):
    return dg.materialize(assets, partition_key=key, instance=inst, raise_on_error=False,
                          selection=[assets[0]])  # fmt: skip


def test_poll_reads_only_new_events(instance, tmp_path):
    dg = require_dagster()
    from daemon.runrecords import RunRecords

    parts, assets = _assets(dg)
    instance.add_dynamic_partitions("draft_tasks", ["ok-1", "trunc-1", "boom-1", "ok-2"])
    first = _run(dg, instance, assets, "ok-1")
    dg.materialize([assets[1]], partition_key="ok-1", instance=instance)  # not ours: ignored
    records = RunRecords(tmp_path / "home", FOLDERS)
    assert records.poll() == {("draft", "ok-1")}
    assert records.poll() == set()  # nothing new
    trunc = _run(dg, instance, assets, "trunc-1")
    boom = _run(dg, instance, assets, "boom-1")
    assert records.poll() == {("draft", "trunc-1"), ("draft", "boom-1")}
    assert records.poll() == set()
    _run(dg, instance, assets, "ok-2")
    assert records.poll() == {("draft", "ok-2")}
    assert len(records.book) == 4  # 2 materialisations + 2 failures, each once

    def facts(task, n=1, mtime=None):
        rel = f"{RAW['draft']}/{task}_v{n}.txt"
        e = records.book.match("draft", task, rel, int((mtime or time.time() - 60) * SEC))
        return facts_of(e) if e else None

    assert facts("ok-1").run_id == first.run_id and facts("ok-1").usage_max_tokens == 64
    assert facts("trunc-1").status == "truncated" and facts("trunc-1").run_id == trunc.run_id
    assert facts("trunc-1").usage_completion_tokens == 64
    assert facts("boom-1") is None  # no raw_path: no file of this failure exists
    event = next(e for e in records.book._events.values() if e.run_id == boom.run_id)
    assert event.kind == "step_failure"
    assert event.partition == "boom-1" and "provider exploded" in (event.error or "")
    records.close()


def test_a_failed_read_leaves_the_cursors_where_they_were(instance, tmp_path):
    dg = require_dagster()
    from daemon.runrecords import RunRecords

    parts, assets = _assets(dg)
    instance.add_dynamic_partitions("draft_tasks", ["trunc-1"])
    _run(dg, instance, assets, "trunc-1")
    records = RunRecords(tmp_path / "home", FOLDERS)
    real = records.instance
    calls = {"n": 0}

    class Flaky:
        def __getattr__(self, name):
            if name == "get_records_for_run" and calls["n"] == 0:
                calls["n"] += 1
                raise RuntimeError("database is locked")
            return getattr(real, name)

    records._instance = Flaky()
    with pytest.raises(RuntimeError):
        records.poll()
    assert records.poll() == {("draft", "trunc-1")}
    records._instance = real
    records.close()


def test_refresh_applies_facts_to_documents_indexed_before_the_event(tmp_path, monkeypatch):
    """What ``watch`` does live: a raw file is indexed (pending), then the run records say
    it was truncated; ``refresh`` re-plans the task and the row gets the true status."""
    dg = require_dagster()
    from conftest import make_config

    from daemon import runrecords
    from daemon.indexer import Indexer
    from daemon.reader import DocumentsIndex
    from daemon.scan import list_candidates

    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    parts, assets = _assets(dg)
    raw = tmp_path / "data" / RAW["draft"] / "trunc-1_v1.txt"
    raw.parent.mkdir(parents=True)
    raw.write_text("a response cut in the mid")
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        cfg = make_config(tmp_path / "data", dagster_home=home)
        indexer = Indexer(cfg, "watch")
        records = runrecords.attach(indexer, cfg)  # nothing recorded yet
        indexer.ingest(list_candidates(cfg, ["draft"]))
        with DocumentsIndex(cfg.db) as idx:
            row = idx.get_latest_by_task("draft", "trunc-1", status={"pending"})
            assert row["run_id"] == "watch"
        inst.add_dynamic_partitions("draft_tasks", ["trunc-1"])
        result = _run(dg, inst, assets, "trunc-1")
        report = runrecords.refresh(indexer, records)
        assert report.updated == [row["doc_id"]]
        with DocumentsIndex(cfg.db) as idx:
            row = idx.get(row["doc_id"])
        assert (row["status"], row["run_id"]) == ("truncated", result.run_id)
        assert (row["usage_completion_tokens"], row["usage_max_tokens"]) == (64, 64)
        assert row["meta_small"]["status_reason"].startswith("response truncated")
        task = {("draft", "trunc-1")}
        assert runrecords.stale_tasks(indexer.con, records.book, task) == set()
        assert runrecords.refresh(indexer, records).updated == []  # idempotent
        records.close()
        indexer.close()

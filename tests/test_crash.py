"""Crash consistency: `docwatch scan` dies at every durable step; the state it leaves is checked
at once, then a rerun must equal a golden run (SPEC "Guarantees": exactly once, durable before
visible, nothing partial after a crash).

Each run is a real subprocess that dies abruptly: ``os._exit`` through the fault seam
(``DOCWATCH_FAULT=<point>:<n>:exit``) or a real SIGKILL.  ``DOCWATCH_TRACE`` records the durable
steps each process reached, so every test also asserts *where* it died.

The scenario reaches every point of the protocol, the update path included: phase A indexes a
tree with files held back (draft raws without their parsed file, essays' parsed files without
their raw, first prompts of re-run tasks, a failed draft's retry), phase B brings the held files:
parsed files pair with visible raw-only documents (``parsed.txt`` added, ``metadata.json``
replaced), late prompts replace ``prompt.txt``, a failed draft loses its parsed file to its retry
(a removal), parsed-only essays are superseded by their late raws, children are re-linked.
Phase B is where the crashes happen; the golden run is phase B without a crash.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import legacy_tree
import pytest
from conftest import assert_tombstones, docs_tree, make_config, snapshot, staged_batches
from crashcheck import (
    BATCH_POINTS,
    assert_durable_order,
    check_crash_state,
    points_of,
    trace_batches,
)
from docwatch.ingest.verify import verify
from docwatch.store.faults import CREATE_ONLY, EXIT_CODE

VERSIONED = re.compile(r"^(?P<task>.+)_v(?P<n>\d+)\.txt$")
F = legacy_tree.FOLDERS
#: Points a crash leaves intents at (a record recovery needs to undo or finish the batch).
WITH_INTENTS = {"intents_committed", "renamed", "dirs_synced", "replaced", "replaced_synced"}


def docwatch(data_root: Path, *args: str, batch_max: int, trace: Path | None, fault=None):
    """Run ``docwatch scan`` to its end; returns (returncode, pid, stderr)."""
    proc = start(data_root, *args, batch_max=batch_max, trace=trace, fault=fault)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, proc.pid, err


def start(data_root: Path, *args: str, batch_max: int, trace: Path | None, fault=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCWATCH_")}
    env |= {"DOCWATCH_SETTLE_SECONDS": "0", "DOCWATCH_BATCH_MAX_FILES": str(batch_max)}
    if trace is not None:
        env["DOCWATCH_TRACE"] = str(trace)
    if fault:
        env["DOCWATCH_FAULT"] = fault
    cmd = [sys.executable, "-m", "docwatch", "scan", "--run-id", "r", "--data-root", str(data_root)]
    return subprocess.Popen(
        [*cmd, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


@dataclass
class Scenario:
    full: Path  # the finished tree (sources only)
    base: Path  # phase A: the tree without the held files, with its index and documents
    held: list[str]  # files phase B brings (relative to the data root)
    late: tuple[str, str]  # (parsed, raw) of one essay task held back from phase A
    batch_max: int
    golden_rows: dict
    golden_docs: dict
    golden_tombstones: int
    golden_trace: Path

    def victim(self, dst: Path, *, without: tuple[str, ...] = ()) -> Path:
        """A copy of phase A (index and documents too), then phase B's files arrive."""
        shutil.copytree(self.base, dst, symlinks=True)
        self.arrive(dst, [r for r in self.held if r not in without])
        return dst

    def arrive(self, root: Path, rels: list[str]) -> None:
        for rel in rels:
            shutil.copy2(self.full / rel, root / rel)  # mtimes kept: the pipeline's times

    def assert_same_as_golden(self, data_root: Path) -> None:
        cfg = make_config(data_root)
        state = check_crash_state(cfg)  # the end state obeys the same rules, with no intents
        assert not state.intents, f"intents left after a clean run: {state.intents}"
        assert snapshot(cfg.db) == self.golden_rows
        assert docs_tree(cfg.docs_root) == self.golden_docs
        assert not staged_batches(cfg.docs_root), "staging leftovers"
        assert assert_tombstones(cfg.db, cfg.docs_root) == self.golden_tombstones
        report = verify(cfg)
        assert report.ok, report.problems


def held_files(full: Path, summary: legacy_tree.TreeSummary) -> tuple[list[str], tuple]:
    """What phase A lacks.  Drafts: their parsed files and later prompts (a failed draft keeps
    its parsed file but lacks its retry's raw and prompt); essays: their raws and later prompts,
    plus both files of one LLM essay (``late``)."""
    retried = set(summary.scenarios.get("draft_parse_fail", ()))
    held = []
    for path in sorted(full.rglob("*.txt")):
        rel, m = path.relative_to(full).as_posix(), VERSIONED.match(path.name)
        if m is None:
            continue
        folder, later = rel.rsplit("/", 1)[0], int(m["n"]) >= 2
        if m["task"] in retried:
            wanted = folder in (F["draft"]["raw"], F["draft"]["prompt"]) and later
        else:
            wanted = folder in (F["draft"]["parsed"], F["essay"]["raw"]) or (
                folder in (F["draft"]["prompt"], F["essay"]["prompt"]) and later
            )
        if wanted:
            held.append(rel)
    task = sorted(summary.scenarios["essay_llm"])[0]
    late = (f"{F['essay']['parsed']}/{task}_v1.txt", f"{F['essay']['raw']}/{task}_v1.txt")
    assert late[1] in held and (full / late[0]).exists()
    return [*held, late[0]], late


def build_scenario(root: Path, *, combos: int, seed: int, batch_max: int) -> Scenario:
    full = root / "full"
    summary = legacy_tree.build_tree(full, combos=combos, seed=seed)
    held, late = held_files(full, summary)
    base = root / "base"
    shutil.copytree(full, base, symlinks=True)
    for rel in held:
        (base / rel).unlink()
    rc, _, err = docwatch(base, batch_max=batch_max, trace=root / "trace-a")
    assert rc == 0, err
    before = snapshot(make_config(base).db)

    golden = root / "golden"
    shutil.copytree(base, golden, symlinks=True)
    scenario = Scenario(full, base, held, late, batch_max, {}, {}, 0, root / "trace-b")
    scenario.arrive(golden, held)
    rc, _, err = docwatch(golden, batch_max=batch_max, trace=scenario.golden_trace)
    assert rc == 0, err
    cfg = make_config(golden)
    scenario.golden_rows, scenario.golden_docs = snapshot(cfg.db), docs_tree(cfg.docs_root)
    scenario.golden_tombstones = assert_tombstones(cfg.db, cfg.docs_root)
    assert verify(cfg).ok

    # The scenario really takes every path: updates that add, replace and remove files, and
    # supersessions, in more than one batch each (so that ``<point>:2`` is reached too).
    after = scenario.golden_rows
    kept = [d for d in before if d in after]
    assert any(before[d][7] != after[d][7] for d in kept), "no prompt replaced"  # prompt_path
    assert any(before[d][13] is not None and after[d][13] is None for d in kept), "no removal"
    assert any(before[d][9] != after[d][9] for d in kept), "no status changed"
    assert scenario.golden_tombstones >= 2
    reached = Counter(points_of(scenario.golden_trace))
    assert all(reached[p] >= 2 for p in BATCH_POINTS), reached
    return scenario


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Scenario:
    return build_scenario(tmp_path_factory.mktemp("scenario"), combos=2, seed=7, batch_max=12)


def intents_of(data_root: Path) -> list[tuple[str, str, str, str]]:
    con = sqlite3.connect(f"file:{make_config(data_root).db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT doc_id, stage, task_id, op FROM intents").fetchall()
    finally:
        con.close()


def assert_died_at(trace: Path, pid: int, point: str, nth: int) -> None:
    reached = points_of(trace, pid)
    assert reached and reached[-1] == point, f"did not die at {point}: {reached[-5:]}"
    assert reached.count(point) == nth, reached
    for batch in trace_batches(trace):
        if batch.pid == pid:
            assert_durable_order(batch.points)


@pytest.mark.parametrize("nth", [1, 2])
@pytest.mark.parametrize("point", BATCH_POINTS)
def test_crash_at_every_durable_step_then_rerun(scenario, tmp_path, point, nth):
    """The n-th time phase B reaches a point it dies there; the state is checked at once (a
    crash inside the protocol leaves intents for recovery); the rerun recovers first and then
    equals the golden run."""
    victim = scenario.victim(tmp_path / "victim")
    trace = tmp_path / "trace"
    rc, pid, err = docwatch(
        victim, batch_max=scenario.batch_max, trace=trace, fault=f"{point}:{nth}:exit"
    )
    assert rc == EXIT_CODE, err
    assert_died_at(trace, pid, point, nth)

    state = check_crash_state(make_config(victim))
    if point in WITH_INTENTS:
        assert state.intents, f"a crash at {point} left no record for recovery"
    if point in ("replaced", "replaced_synced"):
        assert ("update", "committed") in state.phases()

    rc, pid, err = docwatch(victim, batch_max=scenario.batch_max, trace=trace)
    assert rc == 0, err
    if point != "cleaned":  # intents or staging left: undone or finished at start
        assert points_of(trace, pid)[:1] == ["recovered"]
    scenario.assert_same_as_golden(victim)


@pytest.mark.parametrize(
    ("first", "recovery_crashes"),
    [
        ("staged:1", 1),
        ("dirs_synced:1", 1),
        ("dirs_synced:1", 2),
        ("replaced:2", 1),
        ("replaced:2", 2),
    ],
)
def test_crash_during_recovery_then_rerun(scenario, tmp_path, first, recovery_crashes):
    """A run dies mid-batch; the next dies while recovering it (``recovered``: after the undo or
    finish, before the intents go), maybe twice (intents left: recovered again); then a run
    completes.  Recovery is idempotent.  (After ``staged`` only staging is left: once removed,
    there is nothing to recover a second time.)"""
    victim = scenario.victim(tmp_path / "victim")
    trace, batch_max = tmp_path / "trace", scenario.batch_max
    rc, pid, err = docwatch(victim, batch_max=batch_max, trace=trace, fault=f"{first}:exit")
    assert rc == EXIT_CODE, err
    check_crash_state(make_config(victim))
    for _ in range(recovery_crashes):
        rc, pid, err = docwatch(victim, batch_max=batch_max, trace=trace, fault="recovered:1:exit")
        assert rc == EXIT_CODE, err
        assert points_of(trace, pid) == ["recovered"]
        check_crash_state(make_config(victim))
    rc, pid, err = docwatch(victim, batch_max=batch_max, trace=trace)
    assert rc == 0, err
    scenario.assert_same_as_golden(victim)


@pytest.mark.parametrize("recovery_crash", [False, True])
def test_crash_then_a_new_raw_arrives_before_the_rerun(scenario, tmp_path, recovery_crash):
    """The rerun's tree differs from the crashed run's: a parsed-only essay was renamed into
    place by a batch that never committed, then its raw arrives (the attempt now has another
    doc_id, so no rerun rewrites that directory).  Recovery must remove the uncommitted
    directory, also when the first recovery dies before its intents are cleared: no orphan,
    `verify` clean."""
    parsed, raw = scenario.late
    victim = scenario.victim(tmp_path / "victim", without=(raw,))
    cfg, trace = make_config(victim), tmp_path / "trace"
    rc, pid, err = docwatch(victim, batch_max=100_000, trace=trace, fault="dirs_synced:1:exit")
    assert rc == EXIT_CODE, err  # one batch: nothing of phase B committed
    task = VERSIONED.match(Path(parsed).name)["task"]
    creating = [i for i in intents_of(victim) if i[2] == task and i[3] == "create"]
    assert creating, "the late essay's parsed-only document is not in the crashed batch"
    orphan = cfg.docs_root / "essay" / creating[0][0]
    assert orphan.is_dir()
    check_crash_state(cfg)

    scenario.arrive(victim, [raw])
    if recovery_crash:
        rc, pid, err = docwatch(
            victim, batch_max=scenario.batch_max, trace=trace, fault="recovered:1:exit"
        )
        assert rc == EXIT_CODE, err
        check_crash_state(cfg)
    rc, pid, err = docwatch(victim, batch_max=scenario.batch_max, trace=trace)
    assert rc == 0, err
    assert not orphan.exists()
    scenario.assert_same_as_golden(victim)


def test_durable_steps_in_order(scenario, tmp_path):
    """One traced run of each phase: creates only (phase A), then creates, updates with
    replacements and removals, and supersessions (phase B); every batch follows the protocol."""
    data = tmp_path / "data"
    shutil.copytree(scenario.full, data, symlinks=True)
    for rel in scenario.held:
        (data / rel).unlink()
    trace = tmp_path / "trace"
    rc, pid_a, err = docwatch(data, batch_max=scenario.batch_max, trace=trace)
    assert rc == 0, err
    scenario.arrive(data, scenario.held)
    rc, pid_b, err = docwatch(data, batch_max=scenario.batch_max, trace=trace)
    assert rc == 0, err
    batches = trace_batches(trace)
    for batch in batches:
        assert batch.finished, batch.points
        assert_durable_order(batch.points)
    phase_a = [b for b in batches if b.pid == pid_a]
    phase_b = [b for b in batches if b.pid == pid_b]
    assert phase_a and all(set(b.points) <= set(CREATE_ONLY) for b in phase_a)
    assert sum("replaced" in b.points for b in phase_b) >= 2
    assert set(points_of(trace)) == set(BATCH_POINTS)  # nothing to recover in a clean run
    scenario.assert_same_as_golden(data)


def test_injected_disk_full_is_retried_and_loses_nothing(scenario, tmp_path):
    victim = scenario.victim(tmp_path / "victim")
    trace = tmp_path / "trace"
    rc, pid, err = docwatch(
        victim, batch_max=scenario.batch_max, trace=trace, fault="renamed:3:enospc"
    )
    assert rc == 0, err
    assert "disk full" in err and "retrying" in err
    batches = trace_batches(trace)
    aborted = [b for b in batches if "committed" not in b.points]
    assert len(aborted) == 1, [b.points for b in batches]
    for batch in batches:
        assert_durable_order(batch.points, aborted_ok=batch is aborted[0])
    assert "recovered" in points_of(trace)  # the failed batch was undone before the retry
    scenario.assert_same_as_golden(victim)


# -- SIGKILL at random instants ------------------------------------------------------------


@pytest.fixture(scope="module")
def big_scenario(tmp_path_factory) -> Scenario:
    return build_scenario(tmp_path_factory.mktemp("big"), combos=5, seed=3, batch_max=10)


def _wait_for_first_batch(proc: subprocess.Popen, trace: Path) -> None:
    deadline = time.monotonic() + 60
    needle = f"{proc.pid} staged\n"
    while proc.poll() is None and time.monotonic() < deadline:
        if trace.exists() and needle in trace.read_text():
            return
        time.sleep(0.003)


def sigkill_until_landed(scenario: Scenario, tmp_path: Path, kills: int, seed: int) -> None:
    """Kill `docwatch scan` with SIGKILL at random instants of its batches until ``kills``
    kills landed mid-write (rc -9 and the process's last batch started but not cleaned),
    checking the state after every kill; runs go on on the same victim (each restart recovers
    what the last one left) until one finishes, then a fresh victim.  Finally the rerun equals
    the golden run."""
    rnd = random.Random(seed)
    trace = tmp_path / "trace"
    victims, landed, tries, window = 0, 0, 0, 0.25
    victim = scenario.victim(tmp_path / "victim-0")
    where: Counter = Counter()
    while landed < kills:
        tries += 1
        assert tries <= 20 * kills + 20, f"only {landed} of {kills} kills landed in {tries} tries"
        proc = start(victim, batch_max=scenario.batch_max, trace=trace)
        _wait_for_first_batch(proc, trace)
        if proc.poll() is None:
            time.sleep(rnd.uniform(0, window))
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait(60)
        proc.stderr.close()
        check_crash_state(make_config(victim))
        if rc == 0:  # finished before the kill: the state is the golden one; start afresh
            scenario.assert_same_as_golden(victim)
            window *= 0.7
            victims += 1
            victim = scenario.victim(tmp_path / f"victim-{victims}")
            continue
        assert rc == -signal.SIGKILL, rc
        mine = [b for b in trace_batches(trace) if b.pid == proc.pid]
        for batch in mine:
            assert_durable_order(batch.points)
        if mine and not mine[-1].finished:
            landed += 1
            where[mine[-1].points[-1]] += 1
    print(f"{landed} kills landed mid-write in {tries} tries, after: {dict(where)}")
    rc, _, err = docwatch(victim, batch_max=scenario.batch_max, trace=trace)
    assert rc == 0, err
    scenario.assert_same_as_golden(victim)


def test_sigkill_at_random_instants_mid_write(big_scenario, tmp_path):
    sigkill_until_landed(big_scenario, tmp_path, kills=5, seed=1)


@pytest.mark.long
def test_sigkill_at_random_instants_mid_write_long(big_scenario, tmp_path):
    sigkill_until_landed(big_scenario, tmp_path, kills=40, seed=2)

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

Every test runs on both index backends (the ``index_url`` fixture's ``sqlite`` and ``postgres``
parameters; SPEC "Index backends": the same guarantees).  On PostgreSQL each run of a scenario
has a database of its own: phase A's, the golden run's, and one per victim, each a copy of phase
A's (``CREATE DATABASE … TEMPLATE``: the counterpart of copying the SQLite file along with the
data root).  The per-point campaign runs its second reach (``<point>:2``) on SQLite only, to keep
the suite's time in check.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import legacy_tree
import pgserver
import pytest
from conftest import assert_tombstones, docs_tree, make_config, query, snapshot, staged_batches
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


# -- PostgreSQL databases on demand ----------------------------------------------------------

_db_counter = itertools.count(1)


class Databases:
    """Fresh databases on the run's PostgreSQL server (tests/pgserver.py), made on demand and
    dropped at teardown: empty ones, or copies of another (``template``: the source database
    must have no session, which holds once the docwatch process that wrote it has exited)."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request
        self._server: pgserver.PgServer | None = None
        self._made: list[str] = []

    def server(self) -> pgserver.PgServer:
        if self._server is None:  # started only when a test asks for PostgreSQL
            self._server = self._request.getfixturevalue("pg_server")
        return self._server

    def create(self, label: str, template: str | None = None) -> str:
        """The writer's URL of a new database ``c<N>_<label>`` (a copy of the database of the
        URL ``template`` when given)."""
        server = self.server()
        name = re.sub(r"[^a-z0-9_]+", "_", f"c{next(_db_counter):04d}_{label}".lower())[:63]
        if template is None:
            url = server.create_database(name)
        else:
            source = pgserver.database_of(template)
            server.admin_sql(
                f"CREATE DATABASE {name} TEMPLATE {source} OWNER {pgserver.WRITER};\n"
                f"REVOKE ALL ON DATABASE {name} FROM PUBLIC;\n"
            )
            url = server.url(name)
        self._made.append(name)
        return url

    def drop_all(self) -> None:
        while self._made:
            self.server().drop_database(self._made.pop())


@pytest.fixture(scope="module")
def module_dbs(request) -> Iterator[Databases]:
    """Databases that live as long as the module's scenarios."""
    dbs = Databases(request)
    yield dbs
    dbs.drop_all()


@pytest.fixture
def fresh_db(request) -> Iterator[Databases]:
    """Fresh PostgreSQL databases on demand for one test: ``fresh_db.create(label,
    template=url)`` returns a new URL; all are dropped after the test."""
    dbs = Databases(request)
    yield dbs
    dbs.drop_all()


# -- running docwatch ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Root:
    """A data root and its index: the SQLite file inside it (``url`` None) or a PostgreSQL
    database."""

    path: Path
    url: str | None = None

    def cfg(self):
        return make_config(self.path, index_url=self.url)

    @property
    def index(self) -> str | Path:
        """Where the index is, for conftest.query / snapshot / assert_tombstones."""
        return self.cfg().index_location


def docwatch(root: Root, *args: str, batch_max: int, trace: Path | None, fault=None):
    """Run ``docwatch scan`` to its end; returns (returncode, pid, stderr)."""
    proc = start(root, *args, batch_max=batch_max, trace=trace, fault=fault)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, proc.pid, err


def start(root: Root, *args: str, batch_max: int, trace: Path | None, fault=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCWATCH_")}
    env |= {"DOCWATCH_SETTLE_SECONDS": "0", "DOCWATCH_BATCH_MAX_FILES": str(batch_max)}
    if root.url is not None:
        env["DOCWATCH_INDEX_URL"] = root.url
    if trace is not None:
        env["DOCWATCH_TRACE"] = str(trace)
    if fault:
        env["DOCWATCH_FAULT"] = fault
    cmd = [sys.executable, "-m", "docwatch", "scan", "--run-id", "r", "--data-root", str(root.path)]
    return subprocess.Popen(
        [*cmd, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


@dataclass
class Scenario:
    full: Path  # the finished tree (sources only)
    base: Root  # phase A: the tree without the held files, with its index and documents
    held: list[str]  # files phase B brings (relative to the data root)
    late: tuple[str, str]  # (parsed, raw) of one essay task held back from phase A
    batch_max: int
    golden_rows: dict
    golden_docs: dict
    golden_tombstones: int
    golden_trace: Path

    def copy_of_base(self, dst: Path, dbs: Databases | None) -> Root:
        """Phase A's data root (documents, and the SQLite index inside it) copied to ``dst``;
        on PostgreSQL its database copied too (into one of ``dbs``)."""
        shutil.copytree(self.base.path, dst, symlinks=True)
        if self.base.url is None:
            return Root(dst)
        assert dbs is not None, "a PostgreSQL scenario needs somewhere to copy its database"
        return Root(dst, dbs.create(dst.name, template=self.base.url))

    def victim(
        self, dst: Path, dbs: Databases | None = None, *, without: tuple[str, ...] = ()
    ) -> Root:
        """A copy of phase A (index and documents too), then phase B's files arrive."""
        root = self.copy_of_base(dst, dbs)
        self.arrive(root, [r for r in self.held if r not in without])
        return root

    def arrive(self, root: Root, rels: list[str]) -> None:
        for rel in rels:
            shutil.copy2(self.full / rel, root.path / rel)  # mtimes kept: the pipeline's times

    def assert_same_as_golden(self, root: Root) -> None:
        cfg = root.cfg()
        if root.url is not None:
            assert not cfg.db.exists(), "a PostgreSQL run made an SQLite index"
        state = check_crash_state(cfg)  # the end state obeys the same rules, with no intents
        assert not state.intents, f"intents left after a clean run: {state.intents}"
        assert snapshot(root.index) == self.golden_rows
        assert docs_tree(cfg.docs_root) == self.golden_docs
        assert not staged_batches(cfg.docs_root), "staging leftovers"
        assert assert_tombstones(root.index, cfg.docs_root) == self.golden_tombstones
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


def build_scenario(
    root: Path, *, combos: int, seed: int, batch_max: int, dbs: Databases | None = None
) -> Scenario:
    """Phase A indexed, and the golden run of phase B; ``dbs``: on PostgreSQL, where phase A's
    and the golden run's databases are made."""
    full = root / "full"
    summary = legacy_tree.build_tree(full, combos=combos, seed=seed)
    held, late = held_files(full, summary)
    base = Root(root / "base", dbs.create("base") if dbs else None)
    shutil.copytree(full, base.path, symlinks=True)
    for rel in held:
        (base.path / rel).unlink()
    rc, _, err = docwatch(base, batch_max=batch_max, trace=root / "trace-a")
    assert rc == 0, err
    before = snapshot(base.index)

    scenario = Scenario(full, base, held, late, batch_max, {}, {}, 0, root / "trace-b")
    golden = scenario.copy_of_base(root / "golden", dbs)  # its own database on PostgreSQL
    scenario.arrive(golden, held)
    rc, _, err = docwatch(golden, batch_max=batch_max, trace=scenario.golden_trace)
    assert rc == 0, err
    cfg = golden.cfg()
    scenario.golden_rows, scenario.golden_docs = snapshot(golden.index), docs_tree(cfg.docs_root)
    scenario.golden_tombstones = assert_tombstones(golden.index, cfg.docs_root)
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


class Scenarios:
    """The module's scenarios, each built once per backend on first use."""

    def __init__(self, tmp_path_factory, dbs: Databases) -> None:
        self._tmp = tmp_path_factory
        self._dbs = dbs
        self._built: dict[tuple[str, str], Scenario] = {}

    def get(self, name: str, backend: str, **params) -> Scenario:
        key = (name, backend)
        if key not in self._built:
            root = self._tmp.mktemp(f"{name}-{backend}")
            dbs = self._dbs if backend == "postgres" else None
            self._built[key] = build_scenario(root, dbs=dbs, **params)
        return self._built[key]


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory, module_dbs) -> Scenarios:
    return Scenarios(tmp_path_factory, module_dbs)


def backend_of(index_url: str | None) -> str:
    return "sqlite" if index_url is None else "postgres"


@pytest.fixture
def scenario(scenarios, index_url) -> Scenario:
    return scenarios.get("scenario", backend_of(index_url), combos=2, seed=7, batch_max=12)


def intents_of(root: Root) -> list[tuple[str, str, str, str]]:
    return query(root.index, "SELECT doc_id, stage, task_id, op FROM intents")


def assert_died_at(trace: Path, pid: int, point: str, nth: int) -> None:
    reached = points_of(trace, pid)
    assert reached and reached[-1] == point, f"did not die at {point}: {reached[-5:]}"
    assert reached.count(point) == nth, reached
    for batch in trace_batches(trace):
        if batch.pid == pid:
            assert_durable_order(batch.points)


#: Every point reached once, on both backends; reached twice, on SQLite only (run time).
PER_POINT = [
    *(pytest.param("sqlite", point, 1, id=f"sqlite-{point}-1") for point in BATCH_POINTS),
    *(pytest.param("postgres", point, 1, id=f"postgres-{point}-1") for point in BATCH_POINTS),
    *(pytest.param("sqlite", point, 2, id=f"sqlite-{point}-2") for point in BATCH_POINTS),
]


@pytest.mark.parametrize(("index_url", "point", "nth"), PER_POINT, indirect=["index_url"])
def test_crash_at_every_durable_step_then_rerun(scenario, fresh_db, tmp_path, point, nth):
    """The n-th time phase B reaches a point it dies there; the state is checked at once (a
    crash inside the protocol leaves intents for recovery); the rerun recovers first and then
    equals the golden run."""
    victim = scenario.victim(tmp_path / "victim", fresh_db)
    trace = tmp_path / "trace"
    rc, pid, err = docwatch(
        victim, batch_max=scenario.batch_max, trace=trace, fault=f"{point}:{nth}:exit"
    )
    assert rc == EXIT_CODE, err
    assert_died_at(trace, pid, point, nth)

    state = check_crash_state(victim.cfg())
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
def test_crash_during_recovery_then_rerun(scenario, fresh_db, tmp_path, first, recovery_crashes):
    """A run dies mid-batch; the next dies while recovering it (``recovered``: after the undo or
    finish, before the intents go), maybe twice (intents left: recovered again); then a run
    completes.  Recovery is idempotent.  (After ``staged`` only staging is left: once removed,
    there is nothing to recover a second time.)"""
    victim = scenario.victim(tmp_path / "victim", fresh_db)
    trace, batch_max = tmp_path / "trace", scenario.batch_max
    rc, pid, err = docwatch(victim, batch_max=batch_max, trace=trace, fault=f"{first}:exit")
    assert rc == EXIT_CODE, err
    check_crash_state(victim.cfg())
    for _ in range(recovery_crashes):
        rc, pid, err = docwatch(victim, batch_max=batch_max, trace=trace, fault="recovered:1:exit")
        assert rc == EXIT_CODE, err
        assert points_of(trace, pid) == ["recovered"]
        check_crash_state(victim.cfg())
    rc, pid, err = docwatch(victim, batch_max=batch_max, trace=trace)
    assert rc == 0, err
    scenario.assert_same_as_golden(victim)


@pytest.mark.parametrize("recovery_crash", [False, True])
def test_crash_then_a_new_raw_arrives_before_the_rerun(
    scenario, fresh_db, tmp_path, recovery_crash
):
    """The rerun's tree differs from the crashed run's: a parsed-only essay was renamed into
    place by a batch that never committed, then its raw arrives (the attempt now has another
    doc_id, so no rerun rewrites that directory).  Recovery must remove the uncommitted
    directory, also when the first recovery dies before its intents are cleared: no orphan,
    `verify` clean."""
    parsed, raw = scenario.late
    victim = scenario.victim(tmp_path / "victim", fresh_db, without=(raw,))
    cfg, trace = victim.cfg(), tmp_path / "trace"
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


def test_durable_steps_in_order(scenario, index_url, tmp_path):
    """One traced run of each phase: creates only (phase A), then creates, updates with
    replacements and removals, and supersessions (phase B); every batch follows the protocol.
    (On PostgreSQL: on the empty database ``index_url``.)"""
    data = Root(tmp_path / "data", index_url)
    shutil.copytree(scenario.full, data.path, symlinks=True)
    for rel in scenario.held:
        (data.path / rel).unlink()
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


def test_injected_disk_full_is_retried_and_loses_nothing(scenario, fresh_db, tmp_path):
    victim = scenario.victim(tmp_path / "victim", fresh_db)
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


@pytest.fixture
def big_scenario(scenarios, index_url) -> Scenario:
    return scenarios.get("big", backend_of(index_url), combos=5, seed=3, batch_max=10)


def _wait_for(proc: subprocess.Popen, trace: Path, point: str, nth: int = 1) -> None:
    """Until the process has reached ``point`` ``nth`` times (or ended); each look at the
    trace reads only the bytes appended since the last one."""
    deadline = time.monotonic() + 60
    needle, seen, offset, rest = f"{proc.pid} {point}", 0, 0, b""
    while proc.poll() is None and time.monotonic() < deadline:
        if trace.exists():
            with open(trace, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            *lines, rest = (rest + chunk).split(b"\n")
            seen += sum(line.decode() == needle for line in lines)
            if seen >= nth:
                return
        time.sleep(0.0005)


def sigkill_until_landed(
    scenario: Scenario,
    dbs: Databases,
    tmp_path: Path,
    kills: int,
    seed: int,
    aim: str | None = None,
    aim_through: tuple[str, ...] = (),
) -> None:
    """Kill `docwatch scan` with SIGKILL at random instants of its batches until ``kills``
    kills landed mid-write (rc -9 and the process's last batch started but not cleaned),
    checking the state after every kill; runs go on on the same victim (each restart recovers
    what the last one left) until one finishes, then a fresh victim.  Finally the rerun equals
    the golden run.

    ``aim``: kill within milliseconds (10 at most, less after kills that came too late) after
    a batch (the first, second or third) reaches that point; a kill lands when the process died
    after it and before the next point, or, for points in ``aim_through``, before the point
    after those (the kill still fell in the stretch aimed at)."""
    rnd = random.Random(seed)
    trace = tmp_path / "trace"
    victims, landed, tries = 0, 0, 0
    window = 0.25 if aim is None else 0.01
    victim = scenario.victim(tmp_path / "victim-0", dbs)
    where: Counter = Counter()
    while landed < kills:
        tries += 1
        assert tries <= 20 * kills + 20, f"only {landed} of {kills} kills landed in {tries} tries"
        proc = start(victim, batch_max=scenario.batch_max, trace=trace)
        _wait_for(proc, trace, aim or "staged", rnd.randint(1, 3) if aim else 1)
        if proc.poll() is None:
            time.sleep(rnd.uniform(0, window))
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait(60)
        proc.stderr.close()
        check_crash_state(victim.cfg())
        if rc == 0:  # finished before the kill: the state is the golden one; start afresh
            scenario.assert_same_as_golden(victim)
            if aim is None:
                window *= 0.7
            victims += 1
            victim = scenario.victim(tmp_path / f"victim-{victims}", dbs)
            continue
        assert rc == -signal.SIGKILL, rc
        mine = [b for b in trace_batches(trace) if b.pid == proc.pid]
        for batch in mine:
            assert_durable_order(batch.points)
        if mine and not mine[-1].finished:
            last = mine[-1].points[-1]
            where[last] += 1
            aimed = last == aim or last in aim_through
            landed += aim is None or aimed
            if aim is not None and not aimed:  # too late: the step after it is shorter
                window = max(window * 0.8, 0.001)
    print(f"{landed} kills landed mid-write in {tries} tries, after: {dict(where)}")
    rc, _, err = docwatch(victim, batch_max=scenario.batch_max, trace=trace)
    assert rc == 0, err
    scenario.assert_same_as_golden(victim)


def test_sigkill_at_random_instants_mid_write(big_scenario, fresh_db, tmp_path):
    sigkill_until_landed(big_scenario, fresh_db, tmp_path, kills=5, seed=1)


def test_sigkill_during_the_commit(big_scenario, fresh_db, tmp_path):
    """Kills aimed at the commit (the rows, ledger, task facts and intents' phase: several
    statements in one transaction, after ``dirs_synced``, then its COMMIT after ``committing``):
    all of it or nothing is there.  With the statements done before the renames' sync (a small
    batch, a fast disk) the stretch before ``committing`` is a thread's wake-up, so a kill
    during the COMMIT counts too."""
    sigkill_until_landed(
        big_scenario,
        fresh_db,
        tmp_path,
        kills=5,
        seed=4,
        aim="dirs_synced",
        aim_through=("committing",),
    )


@pytest.mark.long
def test_sigkill_at_random_instants_mid_write_long(big_scenario, fresh_db, tmp_path):
    sigkill_until_landed(big_scenario, fresh_db, tmp_path, kills=40, seed=2)

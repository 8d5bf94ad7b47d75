"""`docwatch watch` dies at every durable step during a live replay; a restart converges.

Same seam as the scan crash test (``DOCWATCH_FAULT=<point>:<n>:exit``), but the daemon dies
while the simulated pipeline is writing.  The state it leaves is checked at once, before any
restart (``crashcheck.check_crash_state``: every row a complete document with the ledger's
bytes, no orphan directory); the restarted daemon must then reach the same index as a scan of
the finished tree (every column, every file's bytes), with `verify` clean.  ``DOCWATCH_TRACE``
shows where each process died.  On both index backends (``index_url``: the daemon writes that
PostgreSQL database; the reference scan writes SQLite).
"""

from __future__ import annotations

import threading

import legacy_tree
import pytest
from crashcheck import assert_durable_order, check_crash_state, points_of, trace_batches
from docwatch.store.faults import EXIT_CODE, POINTS
from test_watch_e2e import (  # noqa: F401  (env and notify are fixtures)
    assert_verified_and_same_as_scan,
    env,
    notify,
    stop,
    wait_ready,
    wait_until,
)

LIVE_POINTS = [p for p in POINTS if p != "recovered"]


def assert_died_at(trace, pid: int, point: str) -> None:
    reached = points_of(trace, pid)
    assert reached and reached[-1] == point, f"did not die at {point}: {reached[-5:]}"
    for batch in trace_batches(trace):
        if batch.pid == pid:
            assert_durable_order(batch.points)


@pytest.mark.parametrize("point", [*LIVE_POINTS, "recovered"])
def test_watch_dies_at_a_durable_step_then_restart_converges(
    env,  # noqa: F811  (the fixture)
    notify,  # noqa: F811
    index_url,
    point,
):
    """``recovered``: the daemon dies mid-batch (after its commit, replacements pending), the
    restarted one dies while recovering that batch, a third start converges."""
    env.config.write_text(env.config.read_text() + "batch_max_files = 8\n")
    trace = env.tmp / "trace"
    first = "replaced:3:exit" if point == "recovered" else f"{point}:3:exit"
    crashing = env.start(notify, extra_env={"DOCWATCH_FAULT": first, "DOCWATCH_TRACE": str(trace)})
    done = threading.Event()

    def pipeline():
        try:
            legacy_tree.run_pipeline(env.data, combos=2, seed=21, writers=10, raw_write_delay=0.05)
        finally:
            done.set()

    wait_ready(env, crashing, notify)
    writer = threading.Thread(target=pipeline, daemon=True)
    writer.start()
    assert crashing.wait(120) == EXIT_CODE, env.log(crashing)
    assert_died_at(trace, crashing.pid, first.split(":")[0])
    state = check_crash_state(env.cfg())  # at once: nothing has repaired anything yet

    if point == "recovered":
        assert ("update", "committed") in state.phases()
        recovering = env.start(
            notify, extra_env={"DOCWATCH_FAULT": "recovered:1:exit", "DOCWATCH_TRACE": str(trace)}
        )
        assert recovering.wait(60) == EXIT_CODE, env.log(recovering)
        assert points_of(trace, recovering.pid) == ["recovered"]
        check_crash_state(env.cfg())

    proc = env.start(notify, extra_env={"DOCWATCH_TRACE": str(trace)})
    wait_ready(env, proc, notify, n=2)  # the recovering start never got ready
    if point != "cleaned":  # intents or staging were left: the restart recovered them first
        assert points_of(trace, proc.pid)[:1] == ["recovered"]
    writer.join(120)
    assert done.is_set()
    wait_until(env.caught_up, 60, interval=0.3, what="the daemon to index everything")
    stop(env, proc, notify)
    state = check_crash_state(env.cfg())
    assert not state.intents, state.intents
    assert_verified_and_same_as_scan(env)

"""`docwatch watch` dies at every durable step during a live replay; a restart converges.

Same seam as the scan crash test (``DOCWATCH_FAULT=<point>:<n>:exit``), but the daemon dies
while the simulated pipeline is writing; the restarted daemon must reach the same index as a
scan of the finished tree, with `verify` clean.
"""

from __future__ import annotations

import threading

import legacy_tree
import pytest
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


@pytest.mark.parametrize("point", LIVE_POINTS)
def test_watch_dies_at_a_durable_step_then_restart_converges(env, notify, point):  # noqa: F811
    env.config.write_text(env.config.read_text() + "batch_max_files = 8\n")
    crashing = env.start(notify, extra_env={"DOCWATCH_FAULT": f"{point}:3:exit"})
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

    proc = env.start(notify)
    wait_ready(env, proc, notify, n=2)
    writer.join(120)
    assert done.is_set()
    wait_until(env.caught_up, 60, interval=0.3, what="the daemon to index everything")
    stop(env, proc, notify)
    assert_verified_and_same_as_scan(env)

"""Crash consistency: `docwatch scan` dies at every durable step, then a rerun completes.

Each run is a real subprocess that exits abruptly (``os._exit``) through the fault seam
(``DOCWATCH_FAULT``); the survivor must equal a golden run: same rows, same bytes, no orphan
directories, no staging leftovers, ``verify`` clean.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import docs_tree, make_config, snapshot, staged_batches
from docwatch.ingest.verify import verify
from docwatch.store.faults import EXIT_CODE, POINTS

WRITE_POINTS = [p for p in POINTS if p != "recovered"]


def docwatch(data_root, *args, fault: str | None = None, **kw):
    env = {**os.environ, "DOCWATCH_SETTLE_SECONDS": "0", "DOCWATCH_BATCH_MAX_FILES": "40"}
    env.pop("DOCWATCH_FAULT", None)
    if fault:
        env["DOCWATCH_FAULT"] = fault
    cmd = [sys.executable, "-m", "docwatch", *args, "--data-root", str(data_root)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture
def golden(tree, copy_tree, tmp_path):
    data_root, _ = tree
    golden_root = copy_tree(data_root, tmp_path / "golden")
    assert docwatch(golden_root, "scan", "--run-id", "r").returncode == 0
    cfg = make_config(golden_root)
    return data_root, snapshot(cfg.db), docs_tree(cfg.docs_root)


def assert_same_as_golden(data_root, golden_rows, golden_docs):
    cfg = make_config(data_root)
    assert snapshot(cfg.db) == golden_rows
    assert docs_tree(cfg.docs_root) == golden_docs
    assert not staged_batches(cfg.docs_root), "staging leftovers"
    report = verify(cfg)
    assert report.ok, report.problems


@pytest.mark.parametrize("point", WRITE_POINTS)
@pytest.mark.parametrize("nth", [1, 2])
def test_crash_at_every_durable_step_then_rerun(golden, copy_tree, tmp_path, point, nth):
    data_root, golden_rows, golden_docs = golden
    victim = copy_tree(data_root, tmp_path / "victim")
    crashed = docwatch(victim, "scan", "--run-id", "r", fault=f"{point}:{nth}:exit")
    assert crashed.returncode == EXIT_CODE, crashed.stderr
    second = docwatch(victim, "scan", "--run-id", "r")
    assert second.returncode == 0, second.stderr
    assert_same_as_golden(victim, golden_rows, golden_docs)


def test_injected_disk_full_is_retried_and_loses_nothing(golden, copy_tree, tmp_path):
    data_root, golden_rows, golden_docs = golden
    victim = copy_tree(data_root, tmp_path / "victim")
    run = docwatch(victim, "scan", "--run-id", "r", fault="renamed:3:enospc")
    assert run.returncode == 0, run.stderr
    assert "disk full" in run.stderr and "retrying" in run.stderr
    assert_same_as_golden(victim, golden_rows, golden_docs)


RANDOM_KILL_SEEDS = [*range(5), *(pytest.param(s, marks=pytest.mark.long) for s in range(5, 40))]


@pytest.mark.parametrize("seed", RANDOM_KILL_SEEDS)  # 3 kills each: 15 by default, 120 long
def test_sigkill_at_random_instants(golden, copy_tree, tmp_path, seed):
    data_root, golden_rows, golden_docs = golden
    victim = copy_tree(data_root, tmp_path / "victim")
    env = {**os.environ, "DOCWATCH_SETTLE_SECONDS": "0", "DOCWATCH_BATCH_MAX_FILES": "40"}
    rnd = random.Random(seed)
    delays = [rnd.uniform(0.05, 0.9) for _ in range(3)]
    for delay in delays:
        proc = subprocess.Popen(
            [sys.executable, "-m", "docwatch", "scan", "--run-id", "r", "--data-root", str(victim)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = docwatch(victim, "scan", "--run-id", "r")
    assert final.returncode == 0, final.stderr
    assert_same_as_golden(victim, golden_rows, golden_docs)

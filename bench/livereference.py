"""``bench/live.py``'s references for the sustained rate, on files written the same way: the
writers alone (no daemon), a one-shot ``docwatch scan`` of them, and the durable protocol's
floor on that scan's documents (``bench/protocol_floor.py``, with the scan's index; plain and
staged ahead): what the kernel and the disk cost to make those documents durable and visible,
with no docwatch logic.  The live rate over the floor's says how much of a missed target is
docwatch's and how much the machine's (issue 10: "a profile shows which physical floor stops
a target and by how much")."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from livekit import BenchFailed
from livephases import fresh_root, make_files, run_writers

REPO = Path(__file__).resolve().parent.parent
#: The live bench's daemons use docwatch's default batch_max_files; the floor replays batches
#: of that size.
BATCH_FILES = 2000


def reference_round(r: int, a: argparse.Namespace, p: dict, work: Path, logs: Path) -> dict:
    """The writers alone on the sustained set, a one-shot scan of it, then the protocol's
    floor on the scan's documents."""
    data = fresh_root(work / f"ref{r}" / "data")
    config = work / "live.toml"
    files = make_files(data, r, 15, p["ref_files"])
    start, closed = run_writers(files, None)
    writers_rate = len(files) / (max(closed) - start)
    time.sleep(a.settle_seconds + 0.2)  # the scan reads settled files only
    os.sync()  # the scan should not pay for the writers' dirty pages
    cmd = [sys.executable, "-m", "docwatch", "scan", "--data-root", str(data)]
    cmd += ["--config", str(config), "--run-id", "bench", "--json"]
    with open(logs / f"scan-ref{r}.log", "ab") as err:
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err)
        secs = time.perf_counter() - t0
    if out.returncode != 0:
        raise BenchFailed(f"reference scan exited {out.returncode}; see {logs}")
    report = json.loads(out.stdout)
    created = sum(s.get("docs_created", 0) for s in report["stages"].values())
    os.sync()  # the floor should not pay for the scan's dirty pages either
    floor = {
        mode: protocol_floor(data, work / f"ref{r}" / f"floor-{mode}", mode == "ahead", logs)
        for mode in ("plain", "ahead")
    }
    return {
        "writers_alone_rate": writers_rate,
        "scan_s": secs,
        "scan_rate": len(files) / secs,
        "scan_docs_created": created,
        "files": len(files),
        "floor_s": floor["plain"]["seconds"],
        "floor_rate": len(files) / floor["plain"]["seconds"],
        "floor_ahead_s": floor["ahead"]["seconds"],
        "floor_ahead_rate": len(files) / floor["ahead"]["seconds"],
        "floor_documents": floor["plain"]["documents"],
    }


def protocol_floor(data: Path, out: Path, ahead: bool, logs: Path) -> dict:
    """``bench/protocol_floor.py`` on the scan's documents and index; its JSON line."""
    cmd = [sys.executable, str(REPO / "bench" / "protocol_floor.py"), str(data / "docs"), str(out)]
    cmd += ["--batch-files", str(BATCH_FILES), "--index", str(data / "db" / "documents.sqlite")]
    cmd += ["--stage-ahead"] if ahead else []
    with open(logs / "protocol-floor.log", "ab") as err:
        done = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err)
    if done.returncode != 0:
        raise BenchFailed(f"protocol_floor.py exited {done.returncode}; see {logs}")
    return json.loads(done.stdout)

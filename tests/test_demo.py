"""``make demo`` end to end (examples/demo.py), faster: the real daemon, the live example
pipeline, the read-only event feed, SIGTERM, ``docwatch status`` and ``docwatch latest``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_shows_the_daemon_at_work(tmp_path):
    data = tmp_path / "example-data"
    cmd = [sys.executable, str(REPO / "examples" / "demo.py"), "--data-root", str(data)]
    cmd += ["--rate", "25", "--pair-window", "3", "--status-every", "1"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, timeout=120)
    out = done.stdout.decode(errors="replace")
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 0, out + "\n--- stderr ---\n" + err

    assert "docwatch demo: the daemon at work" in out
    assert "is READY (sd_notify READY=1)" in out
    # a raw indexed as pending, then ok when its parsed file arrived
    assert re.search(r"pending -> ok\s+doc \w+: \w+ \S+ v\d+; parsed file arrived", out), out
    # a parse failure, and its retry
    assert re.search(r"(pending|new) -> parse_error\s+doc \w+: draft ", out), out
    assert re.search(r"\bretry\s+doc \w+: draft \S+ v2 follows doc \w+ \[v1 parse_error\]", out)
    # a copy-mode essay linked to its draft: both doc ids and both task ids
    linked = re.search(
        r"copy-mode linked\s+essay doc (\w+) \(task (\S+)\) -> "
        r"parent draft doc (\w+) \(draft (\S+)",
        out,
    )
    assert linked, out
    assert linked[1] != linked[3]
    # periodic status lines (stdout is not a TTY here)
    assert re.search(r"pipeline \d+/\d+ files \| index \d+ docs, \d+ pending: draft \d+ ok", out)
    assert "index = plan:" in out
    assert "docwatch watch exited with code 0 after SIGTERM" in out
    assert "$ docwatch status" in out
    status = out.split("$ docwatch status", 1)[1]
    assert "essay" in status and "evaluation" in status
    assert "$ docwatch latest essay" in out
    assert "byte-identical to the parsed text of its draft" in out and ": yes)" in out
    assert out.rstrip().endswith("demo OK")
    assert (data / "db" / "documents.sqlite").exists()

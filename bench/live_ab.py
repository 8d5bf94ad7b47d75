"""Two daemons' sustained rate, in alternating pairs: ``bench/live.py``'s sustained phase alone
(20,000 files as fast as 10 writers go, after a 40-file warm-up), each round on a fresh data
root, with A's and B's extra environment for the daemon.  For a change behind an environment
variable or a ``DOCWATCH_*`` setting: the machine's state swings the rate by 2× within minutes
(bench/README.md, "Twenty-first pass"), so only the median of per-pair ratios says anything.

Example (a setting; pairs run A B, B A, A B, …):

    .venv/bin/python bench/live_ab.py --pairs 6 --b DOCWATCH_IO_THREADS=4

Not run by ``make bench``; nothing is deleted before the last round (``--out`` is kept).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import live
from livekit import Daemon, Poller
from livephases import make_files, run_phase

REPO = Path(__file__).resolve().parents[1]


def one_run(work: Path, env: dict[str, str], files: int) -> dict:
    """A fresh daemon with ``env``: warm-up, then the sustained phase; its result."""
    data = live.fresh_root(work / "data")
    config = work / "live.toml"
    live.write_config(config, live.parser().parse_args([]))  # live.py's phase settings
    daemon = Daemon(data, config, work / "watch.log", env=env)
    poller = None
    try:
        daemon.wait_ready()
        poller = Poller(daemon.db, work / "seen.tsv", 0.005)
        run_phase("warm-up", make_files(data, 1, 1, 40), 100, poller, daemon)
        time.sleep(0.5)
        return run_phase("sustained", make_files(data, 1, 2, files), None, poller, daemon)
    finally:
        if poller is not None:
            poller.stop()
        daemon.stop()
        daemon.kill()


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"live_ab.py: {item!r} is not KEY=VALUE")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pairs", type=int, default=6, help="alternating pairs (default 6)")
    ap.add_argument("--files", type=int, default=20_000, help="sustained files (default 20000)")
    ap.add_argument("--a", action="append", default=[], metavar="KEY=VALUE", help="A's env")
    ap.add_argument("--b", action="append", default=[], metavar="KEY=VALUE", help="B's env")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "live-ab")
    a = ap.parse_args(argv)
    envs = {"A": parse_env(a.a), "B": parse_env(a.b)}
    rates: dict[str, list[float]] = {"A": [], "B": []}
    for i in range(a.pairs):
        for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
            res = one_run(a.out / f"{name}{i}", envs[name], a.files)
            rates[name].append(res["throughput"])
            print(
                f"pair {i} {name}: {res['throughput']:.0f} files/s, lost {res['lost']}, "
                f"daemon CPU {res['daemon_cpu_ms_per_file']:.2f} ms a file",
                flush=True,
            )
    ratios = [b / a_ for a_, b in zip(rates["A"], rates["B"], strict=True)]
    print("B / A per pair:", " ".join(f"{r:.3f}" for r in ratios))
    print(
        f"median B / A {statistics.median(ratios):.3f}; medians A "
        f"{statistics.median(rates['A']):.0f}, B {statistics.median(rates['B']):.0f} files/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

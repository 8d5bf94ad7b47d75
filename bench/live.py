"""docwatch live benchmark: ``docwatch watch`` under a 10-writer load; latency, rate, idle cost.

Each round first runs the burst of issue 10 on its own daemon:

    burst       ``docwatch watch`` with docwatch's default settings on a data root that holds
                only the templates and task tables; 10 writer threads write a pipeline
                (examples/legacy_tree.py's plan, no quirks: drafts, then essays, then
                evaluations; default 21 combos, ~1,600 files), each attempt's files in order
                after random 0–20 ms gaps: the prompt (.tmp + rename), the raw in place (20%
                pause 0.1 s halfway), the parsed file (.tmp + rename); the stage folders are
                made by the writers during the burst.  Latency = when a poller polling every
                20 ms first sees the file's ledger row (a raw whose parsed file follows: its
                document ``ok``) minus the writer's time.time() right after close or rename;
                the daemon's batches are the burst's ledger rows grouped by ``ingested_at``
                (one per commit).  Checked: nothing lost, one live document per planned
                attempt with the planned status.

then starts ``python -m docwatch watch`` on an empty data root (only the two draft folders
exist) with ``NOTIFY_SOCKET`` bound here and waits for ``READY=1``, then:

    latency     10 writer threads at a fixed aggregate rate (default 200 files/s for 10 s),
                half raw files written in place, half parsed files (.tmp + os.replace), each
                its own task; latency = when a poller first sees the file's ledger row minus
                the writer's time.time() right after close (raw) or rename (parsed)
    pairs       raw then, right after, parsed of the *same* task (the real draft pattern: the
                parsed file is held while its raw is pending); diagnostic
    ladder      offered 500, 1000, 2000 files/s for 4 s each: p99 at each rate, and whether
                it kept up
    sustained   20,000 files as fast as the 10 writers can; files / (last row visible − first
                write), and zero loss
    idle        the daemon alone for 10 s: CPU % from /proc/<pid>/stat, wakeups/s (context
                switches of all its threads), VmRSS and VmHWM
    stop        SIGTERM: exit code and time to exit

and references: the writers alone (no daemon) writing 5,000 files like the sustained set, then a
one-shot ``docwatch scan`` of them (the batch path on the same kind of files), the durable
protocol's floor on that scan's documents (``bench/protocol_floor.py``: the kernel's and the
disk's share, no docwatch logic), and the RSS of a bare interpreter that imports the daemon.
The poller is a separate process (a read-only SQLite connection, ``SELECT rowid, relpath FROM
sources WHERE rowid > ?`` every 5 ms; the ledger row is committed in the same transaction as
the document row), so the writers' GIL never delays its clock.

Prints medians over the rounds (min, max) and latency percentiles pooled over all rounds;
writes ``<out>/live.json``.  Exits 1 when the daemon fails (not ready, crashed, a writer
failed), 3 when a check fails (a file lost, a wrong document count or status, exit code not 0),
never because of a target.  Stdlib only; run it with the venv's python.  Its parts:
``livekit.py`` (the daemon under test, the poller, CPU from /proc, percentiles), ``burst.py``
(the burst), ``livereference.py`` (the references), ``livereport.py`` (the summary and the
tables); this file runs the phases.

    .venv/bin/python bench/live.py                # 3 rounds (~5 min on 2 cores)
    .venv/bin/python bench/live.py --quick        # 1 small round (~1 min)
    .venv/bin/python bench/live.py --burst-only   # only the burst, 3 rounds (~30 s)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from burst import burst_round, summarise_burst
from bytecode import compile_docwatch
from host import docwatch_version, fs_type, git_rev, machine, rmtree
from livekit import (
    WRITERS,
    BenchFailed,
    Daemon,
    Poller,
    log,
    machine_cpu_s,
    proc_cpu_s,
    proc_status,
    proc_switches,
    self_cpu_s,
)
from livephases import (
    File,
    check_index,
    fresh_root,
    make_files,
    run_phase,
)
from livereference import reference_round
from livereport import summarise, table

REPO = Path(__file__).resolve().parent.parent


CONFIG = """\
# bench/live.py
settle_seconds = {settle}
batch_max_delay = "{delay}"
log_level = "WARNING"
link = {link}
"""

# Size presets: (default, --quick)
PRESETS = {
    "default": dict(
        rounds=3,
        lat_rate=200,
        lat_s=10.0,
        pair_rate=50,
        pair_s=5.0,
        ladder=(500, 1000, 2000),
        ladder_s=4.0,
        sustained=20_000,
        idle_s=10.0,
        ref_files=5_000,
        burst_combos=21,
    ),
    "quick": dict(
        rounds=1,
        lat_rate=200,
        lat_s=3.0,
        pair_rate=50,
        pair_s=2.0,
        ladder=(500, 1000, 2000),
        ladder_s=2.0,
        sustained=3_000,
        idle_s=3.0,
        ref_files=3_000,
        burst_combos=6,
    ),
}

# The RSS reference: an interpreter that imports what the daemon imports, then sleeps.
FLOOR = r"""
import sys, time
import docwatch.cli, docwatch.live.watcher, watchdog.observers.inotify  # noqa
print("ok", flush=True)
time.sleep(60)
"""


# ---------------------------------------------------------------- one round


def write_config(path: Path, a: argparse.Namespace) -> None:
    link = "true" if a.link else "false"
    path.write_text(CONFIG.format(settle=a.settle_seconds, delay=a.batch_max_delay, link=link))


def one_round(r: int, a: argparse.Namespace, p: dict, work: Path, logs: Path) -> dict:
    data = fresh_root(work / f"r{r}" / "data")
    config = work / "live.toml"
    write_config(config, a)
    res: dict = {"round": r, "phases": {}}
    written: dict[str, tuple[list[File], bool]] = {}
    daemon = Daemon(data, config, logs / f"watch-r{r}.log")
    poller = None
    try:
        res["ready_s"] = daemon.wait_ready()
        res["rss_at_ready_kib"] = proc_status(daemon.pid)
        noise0 = (time.perf_counter(), *machine_cpu_s(), proc_cpu_s(daemon.pid), self_cpu_s())
        poller = Poller(daemon.db, work / f"r{r}" / "seen.tsv", a.poll_ms / 1e3)
        phase_no = iter(range(1, 16))

        def phase(name, count, rate, *, pairs=False, record=True):
            files = make_files(data, r, next(phase_no), count, pairs=pairs)
            out = run_phase(name, files, rate, poller, daemon, pairs=pairs)
            written[name] = (files, pairs)
            if record:
                res["phases"][name] = out
            return out

        phase("warm-up", 40, 100, record=False)
        phase("latency", int(p["lat_rate"] * p["lat_s"]), p["lat_rate"])
        phase("pairs", 2 * int(p["pair_rate"] * p["pair_s"]), 2 * p["pair_rate"], pairs=True)
        for rate in p["ladder"]:
            time.sleep(0.5)
            phase(f"ladder-{rate}", int(rate * p["ladder_s"]), rate)
        time.sleep(0.5)
        phase("sustained", p["sustained"], None)
        poller_cpu = proc_cpu_s(poller.proc.pid)
        res["poller"] = poller.stop()
        poller = None
        # What everything else on the machine used meanwhile (it shares the CPUs with us).
        t1, busy1, steal1 = time.perf_counter(), *machine_cpu_s()
        ours = (proc_cpu_s(daemon.pid) - noise0[3]) + (self_cpu_s() - noise0[4]) + poller_cpu
        res["machine"] = {
            "seconds": t1 - noise0[0],
            "others_cores": max(0.0, busy1 - noise0[1] - ours) / (t1 - noise0[0]),
            "steal_cores": (steal1 - noise0[2]) / (t1 - noise0[0]),
            "loadavg": os.getloadavg(),
        }
        time.sleep(1.0)  # let the last batch's follow-ups (table check, status) pass
        daemon.alive()
        cpu0, sw0, t0 = proc_cpu_s(daemon.pid), proc_switches(daemon.pid), time.perf_counter()
        time.sleep(p["idle_s"])
        cpu1, sw1, t1 = proc_cpu_s(daemon.pid), proc_switches(daemon.pid), time.perf_counter()
        st = proc_status(daemon.pid)
        res["idle"] = {
            "seconds": t1 - t0,
            "cpu_s": cpu1 - cpu0,
            "cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
            "wakeups_per_s": (sw1 - sw0) / (t1 - t0),
            "rss_kib": st["VmRSS"],
            "hwm_kib": st["VmHWM"],
            "threads": st["Threads"],
        }
        res["daemon_cpu_total_s"] = proc_cpu_s(daemon.pid)
        rc, secs = daemon.stop()
        res["stop"] = {
            "exit_code": rc,
            "seconds": secs,
            "stopping_sent": daemon.notify.count("STOPPING=1") > 0,
            "watchdog_pings": daemon.notify.count("WATCHDOG=1"),
        }
        res["index"], res["checks"] = check_index(daemon.db, written)
        if rc != 0:
            res["checks"].append(f"exit code after SIGTERM was {rc}, expected 0")
        text = daemon.log_path.read_text(errors="replace")
        res["log_lines"] = len(text.splitlines())
        res["log_warnings"] = sum(("WARNING" in ln or "ERROR" in ln) for ln in text.splitlines())
        # "retired <doc>: its files now belong to a newer attempt": a document that was visible
        # and was deleted again (here: a parsed file indexed alone before its raw was seen).
        res["log_retired"] = text.count(": its files now belong to a newer attempt")
        res["log_tail"] = text.splitlines()[-5:]
    finally:
        if poller is not None:
            poller.stop()
        daemon.kill()
    return res


def rss_floor() -> int:
    proc = subprocess.Popen([sys.executable, "-c", FLOOR], cwd=REPO, stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()
        return proc_status(proc.pid)["VmRSS"]
    finally:
        proc.kill()
        proc.wait(10)


# ---------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    """The bench's options; their defaults are the daemon settings of every phase (also
    ``bench/live_ab.py``'s)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one small round (< 1 min)")
    ap.add_argument("--rounds", type=int, help="rounds (default 3; --quick 1)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="work directory")
    ap.add_argument("--keep", action="store_true", help="keep the data roots and indexes")
    ap.add_argument("--no-reference", action="store_true", help="skip writers-alone + scan")
    ap.add_argument("--poll-ms", type=float, default=5.0, help="poller period (default 5)")
    ap.add_argument("--settle-seconds", type=float, default=1.0, help="daemon setting (default 1)")
    ap.add_argument("--batch-max-delay", default="50ms", help='daemon setting (default "50ms")')
    ap.add_argument("--link", action="store_true", help="daemon setting link = true")
    ap.add_argument("--no-burst", action="store_true", help="skip the burst scenario")
    ap.add_argument("--burst-only", action="store_true", help="run only the burst scenario")
    ap.add_argument(
        "--burst-combos", type=int, help="the burst's pipeline size (default 21; --quick 6)"
    )
    ap.add_argument("--burst-seed", type=int, default=0, help="the burst's plan seed (default 0)")
    ap.add_argument(
        "--burst-poll-ms", type=float, default=20.0, help="the burst's poller period (default 20)"
    )
    ap.add_argument(
        "--burst-folders-first",
        action="store_true",
        help="make the stage folders before the burst (as in a running pipeline) instead of "
        "during it (issue 10's scenario)",
    )
    ap.add_argument(
        "--burst-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='a daemon setting for the burst, as a TOML line (e.g. batch_max_delay = "0ms"); '
        "repeatable; default: none (docwatch's defaults)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    a = ap.parse_args(argv)
    if a.no_burst and a.burst_only:
        ap.error("--no-burst and --burst-only exclude each other")
    params = dict(PRESETS["quick" if a.quick else "default"])
    if a.rounds is not None:
        if a.rounds < 1:
            ap.error("--rounds must be >= 1")
        params["rounds"] = a.rounds
    if a.burst_combos is not None:
        if a.burst_combos < 1:
            ap.error("--burst-combos must be >= 1")
        params["burst_combos"] = a.burst_combos
    out = a.out.resolve()
    work, logs = out / "live-work", out / "live-logs"
    rmtree(work)
    rmtree(logs)
    work.mkdir(parents=True)
    logs.mkdir(parents=True)
    started = time.perf_counter()
    compile_docwatch()
    res: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "fs_type": fs_type(out),
        "out": str(out),
        "rounds": params["rounds"],
        "params": params,
        "config": {
            "settle_seconds": a.settle_seconds,
            "batch_max_delay": a.batch_max_delay,
            "link": a.link,
            "poll_ms": a.poll_ms,
            "writers": WRITERS,
            "burst_poll_ms": a.burst_poll_ms,
            "burst_settings": a.burst_set,
            "burst_folders_first": a.burst_folders_first,
            "burst_seed": a.burst_seed,
        },
        "docwatch_rev": git_rev(),
    }
    rounds: list[dict] = []
    refs: list[dict] = []
    bursts: list[dict] = []
    try:
        res["docwatch_version"] = docwatch_version()
        res["rss_floor_mib"] = rss_floor() / 1024
        for r in range(1, params["rounds"] + 1):
            if not a.no_burst:
                log(f"round {r}/{params['rounds']}: burst (a fresh daemon, default settings)")
                bursts.append(burst_round(r, a, params, work, logs))
            if a.burst_only:
                continue
            log(f"round {r}/{params['rounds']}: daemon")
            rounds.append(one_round(r, a, params, work, logs))
            if not a.no_reference:
                log(f"round {r}/{params['rounds']}: references (writers alone, scan, floor)")
                refs.append(reference_round(r, a, params, work, logs))
                log(
                    f"    writers alone {refs[-1]['writers_alone_rate']:.0f} files/s, scan "
                    f"{refs[-1]['scan_rate']:.0f} files/s, protocol floor "
                    f"{refs[-1]['floor_rate']:.0f} (staged ahead "
                    f"{refs[-1]['floor_ahead_rate']:.0f})"
                )
    except BenchFailed as exc:
        log(f"FAILED: {exc}")
        res["error"] = str(exc)
        res["rounds_done"] = rounds
        res["bursts_done"] = bursts
        (out / "live.json").write_text(json.dumps(res, indent=1))
        return 1
    res["summary"] = summarise(rounds, refs) if rounds else None
    res["burst"] = summarise_burst(bursts) if bursts else None
    res["checks"] = [f"round {r['round']}: {c}" for r in [*bursts, *rounds] for c in r["checks"]]
    for x in refs:
        if x["scan_docs_created"] != x["files"]:
            res["checks"].append(
                f"reference scan created {x['scan_docs_created']} documents for {x['files']} files"
            )
    res["round_results"] = rounds
    res["references"] = refs
    res["burst_results"] = bursts
    res["total_seconds"] = round(time.perf_counter() - started, 1)
    (out / "live.json").write_text(json.dumps(res, indent=1))
    print(table(res))
    print(
        f"\n(total {res['total_seconds']} s; results in {out / 'live.json'}, daemon logs in {logs})"
    )
    # Only now: every round kept its trees, since on ext4 without a journal a deletion slows
    # the next minutes' file creations (bench/floor.py, "create after deleting").
    if not a.keep:
        rmtree(work)
    return 3 if res["checks"] else 0


if __name__ == "__main__":
    sys.exit(main())

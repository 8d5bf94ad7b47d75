"""docwatch PostgreSQL benchmark (issue 11): the PostgreSQL index against SQLite, in one run.

Starts a throwaway PostgreSQL server (``tests/pgserver.py``: initdb + pg_ctl on a temporary
directory, 127.0.0.1 and a free port, fsync on; stopped at the end) and builds a legacy tree of
about ``--files`` files (``examples/legacy_tree.py``, default 5,000).  Each of ``--rounds``
rounds (default 3) then measures, one right after the other:

    scan       ``docwatch scan`` of the tree into an empty SQLite index vs into an empty
               PostgreSQL database (copy mode, fresh docs roots; the order alternates between
               rounds); spawn to reap, with ``sync`` before each
    live       ``docwatch watch`` on an empty data root while 10 writer threads write
               ``--live-files`` files (default 5,000; raw in place and parsed .tmp + rename,
               each its own task, as fast as they go, as bench/live.py's sustained phase):
                 sqlite-1   one daemon, the SQLite index
                 pg-1       one daemon, the PostgreSQL index
                 pg-2       two daemons (two processes, DOCWATCH_INSTANCE_NAME bench-a and
                            bench-b) on the same data root, docs root and index_url
               files/s = files / (last ledger row visible − first write), from a poller in
               its own process counting the ledger every 20 ms; then SIGTERM, and the index is
               checked: every file in the ledger once, one document per task, nothing lost

and reports medians (min–max) and the ratios of medians to SQLite's figures.  The index URL
(with the writer role's random password) goes to docwatch through a 0600 config file and to the
poller through its environment, never on a command line.  Writes ``<out>/postgres.json``; the
commands' stderr and the daemons' logs go to ``<out>/pg-logs/``.  Exits 1 when a command or the
server fails, 3 when a check fails, never because of a ratio.  Stdlib plus psycopg (the
``postgres`` extra, in the venv); run it with the venv's python as a user who may run
PostgreSQL (as root, the server runs as the ``postgres`` system user, as in the tests).

    .venv/bin/python bench/postgres.py            # 5,000 files, 3 rounds (a few minutes)
    .venv/bin/python bench/postgres.py --quick    # 1,000 files, 1 round (smoke)
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

import live
import livekit
import livephases
from host import (
    CommandFailed,
    docwatch_version,
    fs_type,
    git_rev,
    machine,
    rmtree,
    run,
    timed_sync,
)
from livekit import BenchFailed, log, spread
from livekit import median_range as mr  # tables: "median (min–max)"
from run import build_tree, totals

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from pgserver import PgServer, PgServerError  # noqa: E402  (the tests' throwaway server)

LIVE_CASES = ("sqlite-1", "pg-1", "pg-2")
POLL_S = 0.020

# Counts the ledger every POLL_S in its own process; one line "<time>\t<count>" whenever the
# count changes (time = when the poll that saw it returned).  Stops at EOF on stdin.
COUNTER = r"""
import os, select, sys, time
target, out, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
if target == "postgresql":
    import psycopg
    con = psycopg.connect(os.environ["BENCH_INDEX_URL"], autocommit=True)
else:
    import sqlite3
    con = sqlite3.connect(f"file:{target}?mode=ro", uri=True, isolation_level=None)
last = -1
with open(out, "w") as f:
    while not select.select([sys.stdin], [], [], 0)[0]:
        t0 = time.time()
        n = con.execute("SELECT count(*) FROM sources").fetchone()[0]
        t1 = time.time()
        if n != last:
            f.write(f"{t1:.6f}\t{n}\n")
            f.flush()
            last = n
        time.sleep(max(0.0, interval - (time.time() - t0)))
"""

LIVE_CONFIG = """\
# bench/postgres.py (as bench/live.py; INFO for the daemons' closing counts)
settle_seconds = 1
batch_max_delay = "50ms"
log_level = "INFO"
"""


def private_file(path: Path, text: str) -> Path:
    """A file only its owner may read (it holds the index URL's password)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


class Counter:
    """The ledger counter process and this side's reading of its output."""

    def __init__(self, target: str, out: Path, url: str | None) -> None:
        self.out = out
        env = dict(os.environ) | ({"BENCH_INDEX_URL": url} if url else {})
        self.proc = subprocess.Popen(
            [sys.executable, "-c", COUNTER, target, str(out), str(POLL_S)],
            stdin=subprocess.PIPE,
            env=env,
        )

    def samples(self) -> list[tuple[float, int]]:
        try:
            lines = self.out.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            t, _, n = line.partition("\t")
            if n:
                out.append((float(t), int(n)))
        return out

    def first_at(self, count: int) -> float | None:
        return next((t for t, n in self.samples() if n >= count), None)

    def wait_for(self, count: int, timeout: float, daemons: list[livekit.Daemon]) -> float | None:
        deadline = time.time() + timeout
        while (t := self.first_at(count)) is None:
            if time.time() > deadline:
                return None
            for d in daemons:
                d.alive()
            if self.proc.poll() is not None:
                raise BenchFailed(f"the ledger counter exited with {self.proc.returncode}")
            time.sleep(0.05)
        return t

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)


# ---------------------------------------------------------------- scan


def scan(src: Path, dst: Path, config: Path | None, errlog: Path) -> tuple[float, int, dict]:
    """``docwatch scan`` of ``src`` into ``dst`` (SQLite there, or the config's index_url)."""
    rmtree(dst)
    cmd = [sys.executable, "-m", "docwatch", "scan", "--data-root", str(src)]
    cmd += ["--docs-root", str(dst / "docs"), "--run-id", "bench", "--json"]
    cmd += ["--config", str(config)] if config else ["--db", str(dst / "db" / "documents.sqlite")]
    timed_sync()
    r = run(cmd, errlog)
    return r.seconds, r.maxrss_kib, totals(json.loads(r.stdout))


# ---------------------------------------------------------------- live


def index_check(case: str, db: Path | None, url: str | None, files: list) -> tuple[dict, list]:
    """Every file in the ledger once, one live document per task (each file its own task)."""
    queries = {
        "ledger": "SELECT count(*) FROM sources",
        "ledger_paths": "SELECT count(DISTINCT relpath) FROM sources",
        "documents": "SELECT count(*) FROM documents WHERE status <> 'superseded'",
        "tasks": "SELECT count(DISTINCT task_id) FROM documents WHERE status <> 'superseded'",
        "superseded": "SELECT count(*) FROM documents WHERE status = 'superseded'",
    }
    if url:
        import psycopg

        with psycopg.connect(url, autocommit=True) as con:
            got = {k: con.execute(q).fetchone()[0] for k, q in queries.items()}
    else:
        import sqlite3

        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            got = {k: con.execute(q).fetchone()[0] for k, q in queries.items()}
        finally:
            con.close()
    n, bad = len(files), []
    if got["ledger"] != n or got["ledger_paths"] != n:
        bad.append(f"{case}: {got['ledger']} ledger rows ({got['ledger_paths']} paths) for {n}")
    if got["documents"] != n or got["tasks"] != n:
        bad.append(f"{case}: {got['documents']} documents of {got['tasks']} tasks for {n} tasks")
    return got, bad


def created_by(log_path: Path) -> int | None:
    """Documents a daemon created, from its closing INFO line ("stopped: N documents …")."""
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        if "stopped: " in line and " documents created" in line:
            return int(line.split("stopped: ", 1)[1].split()[0])
    return None


def live_case(
    case: str, r: int, n_files: int, work: Path, logs: Path, server: PgServer
) -> tuple[dict, list[str]]:
    base = work / f"live-{case}-r{r}"
    rmtree(base)
    base.mkdir(parents=True)
    data = live.fresh_root(base / "data")
    url = None
    if case.startswith("pg"):
        name = f"live_{case.replace('-', '_')}_r{r}"
        server.drop_database(name)
        url = server.create_database(name)
        config = private_file(base / "watch.toml", LIVE_CONFIG + f"index_url = {json.dumps(url)}\n")
    else:
        config = private_file(base / "watch.toml", LIVE_CONFIG)
    n_daemons = 2 if case == "pg-2" else 1
    daemons: list[livekit.Daemon] = []
    counter = None
    res: dict = {"case": case, "files": n_files, "daemons": n_daemons}
    try:
        for k in range(n_daemons):
            env = {"DOCWATCH_INSTANCE_NAME": f"bench-{'ab'[k]}"} if url else {}
            log_path = logs / f"watch-{case}-r{r}-{'ab'[k]}.log"
            log_path.unlink(missing_ok=True)
            daemons.append(livekit.Daemon(data, config, log_path, env=env))
        res["ready_s"] = [d.wait_ready() for d in daemons]
        target = "postgresql" if url else str(daemons[0].db)
        counter = Counter(target, base / "count.tsv", url)
        deadline = time.time() + 10
        while not counter.samples():  # counting (the first line is the empty ledger)
            if time.time() > deadline or counter.proc.poll() is not None:
                raise BenchFailed(f"{case}: the ledger counter did not start")
            time.sleep(0.02)
        files = livephases.make_files(data, r, 1, n_files)
        cpu0 = [livekit.proc_cpu_s(d.pid) for d in daemons]
        busy0, t0 = livekit.machine_cpu_s()[0], time.perf_counter()
        start, closed = livephases.run_writers(files, None)
        seen = counter.wait_for(n_files, 60 + n_files / 100, daemons)
        t1 = time.perf_counter()
        res["machine_busy_cores"] = (livekit.machine_cpu_s()[0] - busy0) / (t1 - t0)
        cpu1 = [livekit.proc_cpu_s(d.pid) for d in daemons]
        res["daemon_cpu_s"] = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
        last_close = max(closed)
        res["writers_rate"] = n_files / (last_close - start)
        res["visible_s"] = None if seen is None else seen - start
        res["throughput"] = None if seen is None else n_files / (seen - start)
        res["drain_s"] = None if seen is None else seen - last_close
        counts = counter.samples()
        res["visible_at_end"] = counts[-1][1] if counts else 0
        counter.stop()
        counter = None
        res["exit_codes"] = [d.stop()[0] for d in daemons]
        res["created_by"] = [created_by(d.log_path) for d in daemons]
        res["overflow_rescans"] = [d.overflows() for d in daemons]
        res["index"], bad = index_check(case, daemons[0].db, url, files)
        if seen is None:
            bad.append(f"{case}: {n_files - res['visible_at_end']} files never visible (lost)")
        if any(rc != 0 for rc in res["exit_codes"]):
            bad.append(f"{case}: exit codes after SIGTERM {res['exit_codes']}, expected 0")
    finally:
        if counter is not None:
            counter.stop()
        for d in daemons:
            d.kill()
    if url:
        server.drop_database(name)
    log(
        f"    live {case:<9} {n_files} files  written {res['writers_rate']:6.0f}/s  visible "
        f"{res['throughput'] or 0:6.0f}/s  created per daemon {res['created_by']}"
    )
    return res, bad


# ---------------------------------------------------------------- summary and table


def summarise(rounds: list[dict]) -> dict:
    def each(fn) -> dict:
        return spread([fn(r) for r in rounds])

    s = {
        "scan_sqlite_s": each(lambda r: r["scan"]["sqlite"]["seconds"]),
        "scan_pg_s": each(lambda r: r["scan"]["postgresql"]["seconds"]),
        "scan_sqlite_rss_mib": each(lambda r: r["scan"]["sqlite"]["maxrss_kib"] / 1024),
        "scan_pg_rss_mib": each(lambda r: r["scan"]["postgresql"]["maxrss_kib"] / 1024),
    }
    for case in LIVE_CASES:
        s[f"{case}_rate"] = each(lambda r, c=case: r["live"][c]["throughput"])
        s[f"{case}_writers"] = each(lambda r, c=case: r["live"][c]["writers_rate"])
        s[f"{case}_cpu_ms"] = each(
            lambda r, c=case: 1e3 * sum(r["live"][c]["daemon_cpu_s"]) / r["live"][c]["files"]
        )
        s[f"{case}_busy"] = each(lambda r, c=case: r["live"][c]["machine_busy_cores"])
    sq, pg = s["scan_sqlite_s"]["median"], s["scan_pg_s"]["median"]
    s["scan_pg_over_sqlite_time"] = pg / sq
    base = s["sqlite-1_rate"]["median"]
    for case in ("pg-1", "pg-2"):
        rate = s[f"{case}_rate"]["median"]
        s[f"{case}_over_sqlite"] = None if not (rate and base) else rate / base
    p1, p2 = s["pg-1_rate"]["median"], s["pg-2_rate"]["median"]
    s["pg-2_over_pg-1"] = None if not (p1 and p2) else p2 / p1
    s["created_split_pg2"] = [r["live"]["pg-2"]["created_by"] for r in rounds]
    return s


def table(res: dict) -> str:
    s, env, t = res["summary"], res["machine"], res["tree"]

    def ratio(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    cand = t["candidates"]
    lines = [
        f"docwatch PostgreSQL bench  {res['date']}  rev {res['docwatch_rev']}  "
        f"({res['docwatch_version']})",
        f"machine: nproc {env['nproc']}, {env['mem_available_mib']} MiB available, "
        f"{res['fs_type']} at {res['out']}, {env['cpu_model']}",
        f"PostgreSQL {res['server_version']} (tests/pgserver.py: 127.0.0.1, fsync on, as "
        f"{res['server_os_user']}); {res['rounds']} round(s), medians (min–max)",
        "",
        f"scan of a {t['total_files']}-file tree ({cand} candidates, {t['documents']} documents)",
        f"  SQLite      {mr(s['scan_sqlite_s'], '{:.2f}')} s  "
        f"({cand / s['scan_sqlite_s']['median']:.0f} files/s, peak RSS "
        f"{mr(s['scan_sqlite_rss_mib'])} MiB)",
        f"  PostgreSQL  {mr(s['scan_pg_s'], '{:.2f}')} s  "
        f"({cand / s['scan_pg_s']['median']:.0f} files/s, peak RSS "
        f"{mr(s['scan_pg_rss_mib'])} MiB)",
        f"  PostgreSQL / SQLite time: {ratio(s['scan_pg_over_sqlite_time'])}",
        "",
        f"live: {res['live_files']} files from 10 writer threads as fast as they go; files/s = "
        "files / (last ledger row visible − first write)",
        f"  {'case':<10} {'visible/s':>22} {'writers/s':>10} {'daemon CPU ms/file':>19} "
        f"{'machine busy cores':>19}",
    ]
    for case in LIVE_CASES:
        lines.append(
            f"  {case:<10} {mr(s[f'{case}_rate']):>22} {mr(s[f'{case}_writers']):>10} "
            f"{mr(s[f'{case}_cpu_ms'], '{:.2f}'):>19} {mr(s[f'{case}_busy'], '{:.2f}'):>19}"
        )
    lines += [
        f"  ratios of medians: pg-1 / sqlite-1 {ratio(s['pg-1_over_sqlite'])}, pg-2 / sqlite-1 "
        f"{ratio(s['pg-2_over_sqlite'])}, pg-2 / pg-1 {ratio(s['pg-2_over_pg-1'])}",
        f"  pg-2: documents created by bench-a, bench-b per round: {s['created_split_pg2']}",
    ]
    if res["checks"]:
        lines += ["", "CHECKS FAILED:"] + [f"  - {c}" for c in res["checks"]]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, help="scan tree size (default 5000; --quick 1000)")
    ap.add_argument("--live-files", type=int, help="live files (default 5000; --quick 1000)")
    ap.add_argument("--rounds", type=int, help="rounds (default 3; --quick 1)")
    ap.add_argument("--quick", action="store_true", help="1,000 files, 1 round (smoke)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="work directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the tree")
    a = ap.parse_args(argv)
    n_files = a.files or (1_000 if a.quick else 5_000)
    n_live = a.live_files or (1_000 if a.quick else 5_000)
    rounds_n = a.rounds or (1 if a.quick else 3)
    if min(n_files, n_live, rounds_n) < 1:
        ap.error("--files, --live-files and --rounds must be >= 1")
    out = a.out.resolve()
    work, logs = out / "pg-work", out / "pg-logs"
    rmtree(logs)
    logs.mkdir(parents=True)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    res: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "fs_type": fs_type(out),
        "out": str(out),
        "rounds": rounds_n,
        "live_files": n_live,
        "docwatch_rev": git_rev(),
        "checks": [],
    }
    server = PgServer()
    rounds: list[dict] = []
    try:
        res["docwatch_version"] = docwatch_version()
        tree = build_tree(work, n_files, a.seed, False, logs)
        src = work / "tree"
        log("starting a throwaway PostgreSQL server (tests/pgserver.py)")
        server.start()
        res["server_version"] = server.admin_sql("SHOW server_version")
        res["server_os_user"] = server.os_user
        for r in range(1, rounds_n + 1):
            log(f"round {r}/{rounds_n}")
            one: dict = {"scan": {}, "live": {}}
            name = f"scan_r{r}"
            server.drop_database(name)
            url = server.create_database(name)
            pg_config = private_file(work / "scan.toml", f"index_url = {json.dumps(url)}\n")
            engines = [("sqlite", None), ("postgresql", pg_config)]
            for engine, config in engines if r % 2 else engines[::-1]:
                dst = work / f"scan-{engine}-r{r}"  # kept to the end: deletions slow creations
                secs, rss, counts = scan(src, dst, config, logs / "scan.log")
                one["scan"][engine] = {"seconds": secs, "maxrss_kib": rss, "counts": counts}
                log(f"    scan {engine:<10} {secs:7.2f} s  {counts['docs_created']} documents")
            server.drop_database(name)
            c = {e: one["scan"][e]["counts"] for e in ("sqlite", "postgresql")}
            if c["sqlite"]["docs_created"] != c["postgresql"]["docs_created"]:
                res["checks"].append(
                    f"round {r}: scan created {c['sqlite']['docs_created']} documents on "
                    f"SQLite, {c['postgresql']['docs_created']} on PostgreSQL"
                )
            for e, t in c.items():
                if t["error"] or t["deferred"] or t["problems"]:
                    res["checks"].append(f"round {r}: scan into {e}: {t}")
            for d in ("db", "docs"):
                if (src / d).exists():
                    res["checks"].append(f"round {r}: the scan wrote {src / d} into the tree")
            for case in LIVE_CASES:
                one["live"][case], bad = live_case(case, r, n_live, work, logs, server)
                res["checks"] += [f"round {r}: {b}" for b in bad]
            rounds.append(one)
    except (BenchFailed, CommandFailed, PgServerError) as exc:
        log(f"FAILED: {exc}")
        res["error"] = str(exc)
        res["rounds_done"] = rounds
        (out / "postgres.json").write_text(json.dumps(res, indent=1))
        return 1
    finally:
        server.stop()
    first = rounds[0]["scan"]["sqlite"]["counts"]
    res["tree"] = {
        "total_files": tree["total_files"],
        "candidates": first["candidates"],
        "documents": first["docs_created"],
    }
    res["summary"] = summarise(rounds)
    res["round_results"] = rounds
    res["total_seconds"] = round(time.perf_counter() - started, 1)
    (out / "postgres.json").write_text(json.dumps(res, indent=1))
    print(table(res))
    print(f"\n(total {res['total_seconds']} s; results in {out / 'postgres.json'}, logs in {logs})")
    if not a.keep:
        rmtree(work)
    return 3 if res["checks"] else 0


if __name__ == "__main__":
    sys.exit(main())

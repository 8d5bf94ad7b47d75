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
one-shot ``docwatch scan`` of them (the batch path on the same kind of files), and the RSS of a
bare interpreter that imports the daemon.  The poller is a separate process (a read-only SQLite
connection, ``SELECT rowid, relpath FROM sources WHERE rowid > ?`` every 5 ms; the ledger row is
committed in the same transaction as the document row), so the writers' GIL never delays its
clock.

Prints medians over the rounds (min, max) and latency percentiles pooled over all rounds;
writes ``<out>/live.json``.  Exits 1 when the daemon fails (not ready, crashed, a writer
failed), 3 when a check fails (a file lost, a wrong document count or status, exit code not 0),
never because of a target.  Stdlib only; run it with the venv's python.

    .venv/bin/python bench/live.py                # 3 rounds (~5 min on 2 cores)
    .venv/bin/python bench/live.py --quick        # 1 small round (~1 min)
    .venv/bin/python bench/live.py --burst-only   # only the burst, 3 rounds (~30 s)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bytecode import compile_docwatch
from run import docwatch_version, fs_type, git_rev, machine, rmtree

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from support import NotifySocket  # noqa: E402  (the same stand-in for systemd the tests use)

sys.path.insert(0, str(REPO / "examples"))
import legacy_tree  # noqa: E402  (the pipeline's plans and writers)

CLK_TCK = os.sysconf("SC_CLK_TCK")
RAW_DIR = "3_generation/draft_responses_raw"
PARSED_DIR = "3_generation/draft_responses"
TEMPLATE, MODEL = "creative-synthesis-v2", "sonnet-4"
WRITERS = 10
TARGET_P99_MS = 250.0
TARGET_RATE = 2000.0  # issue 10: live sustained, 0 lost

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

# The poller: its own process and read-only connection.  One line per newly visible ledger row,
# "<time>\t<relpath>", time = time.time() when the poll that first returned it came back (an
# upper bound: the row became visible after the previous poll started).  With a 4th argument
# "ok" it also reads, in the same read transaction, the raw file of every `ok` document and
# writes "<time>\tok:<relpath>" the first time a raw's document is ok (the burst's "visible
# ok"; a full read of the ok documents, cheap at the burst's size).  Stops at EOF on stdin.
POLLER = r"""
import json, select, sqlite3, sys, time
db, out, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
ok_mode = len(sys.argv) > 4 and sys.argv[4] == "ok"
con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
q = "SELECT rowid, relpath FROM sources WHERE rowid > ? ORDER BY rowid"
q_ok = ("SELECT a.raw_key FROM documents d JOIN attempts a USING (doc_id)"
        " WHERE d.status = 'ok' AND a.raw_key IS NOT NULL")
last = polls = 0
q_sum = q_max = gap_max = 0.0
prev = None
ok_seen = set()
with open(out, "w") as f:
    while not select.select([sys.stdin], [], [], 0)[0]:
        t0 = time.time()
        if ok_mode:
            con.execute("BEGIN")
        rows = con.execute(q, (last,)).fetchall()
        oks = [k for (k,) in con.execute(q_ok) if k not in ok_seen] if ok_mode else []
        if ok_mode:
            con.execute("COMMIT")
        t1 = time.time()
        polls += 1
        q_sum += t1 - t0
        q_max = max(q_max, t1 - t0)
        if prev is not None:
            gap_max = max(gap_max, t0 - prev)
        prev = t0
        if rows or oks:
            last = rows[-1][0] if rows else last
            ok_seen.update(oks)
            f.write("".join(f"{t1:.6f}\t{r[1]}\n" for r in rows))
            f.write("".join(f"{t1:.6f}\tok:{k.partition(':')[2]}\n" for k in oks))
            f.flush()
        time.sleep(max(0.0, interval - (time.time() - t0)))
    f.write("#" + json.dumps({"polls": polls, "query_mean_ms": 1e3 * q_sum / max(polls, 1),
                              "query_max_ms": 1e3 * q_max, "gap_max_ms": 1e3 * gap_max}) + "\n")
"""

# The RSS reference: an interpreter that imports what the daemon imports, then sleeps.
FLOOR = r"""
import sys, time
import docwatch.cli, docwatch.live.watcher, watchdog.observers.inotify  # noqa
print("ok", flush=True)
time.sleep(60)
"""


class BenchFailed(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- percentiles and summaries


def pct(sorted_vals: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_vals:
        return None
    return sorted_vals[max(0, math.ceil(p / 100 * len(sorted_vals)) - 1)]


def lat_stats(ms: list[float]) -> dict:
    v = sorted(ms)
    return {
        "n": len(v),
        "p50": pct(v, 50),
        "p90": pct(v, 90),
        "p99": pct(v, 99),
        "max": v[-1] if v else None,
        "mean": statistics.fmean(v) if v else None,
        "over_250ms": sum(x > 250 for x in v),
        "over_1s": sum(x > 1000 for x in v),
    }


def spread(values: list[float | None]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "samples": []}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "samples": [round(v, 3) for v in vals],
    }


# ---------------------------------------------------------------- systemd's side, the daemon


def proc_cpu_s(pid: int) -> float:
    """utime + stime of the whole process (all its threads, live or ended), in seconds."""
    return sum(proc_user_sys_s(pid))


def proc_user_sys_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of the whole process in seconds: the interpreter's share (user) apart
    from the kernel's (system: file creation, syncs, inotify)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_status(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])  # KiB
        elif key == "Threads":
            out[key] = int(value)
    return out


def machine_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = f
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, steal / CLK_TCK


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def proc_switches(pid: int) -> int:
    """Context switches of every live thread: a count of wake-ups."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split(":")[1])
        except OSError:
            continue
    return total


class Daemon:
    """``python -m docwatch watch`` with a real NOTIFY_SOCKET (and systemd's WatchdogSec=60s)."""

    def __init__(
        self, data: Path, config: Path, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        """``env``: extra environment (e.g. ``DOCWATCH_INSTANCE_NAME``), after the bench's."""
        self.data, self.config, self.log_path = data, config, log_path
        self.db = data / "db" / "documents.sqlite"
        self.notify = NotifySocket()
        extra = env or {}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCWATCH_", "NOTIFY"))}
        env |= {"NOTIFY_SOCKET": self.notify.path, "WATCHDOG_USEC": "60000000"} | extra
        profile = os.environ.get("BENCH_PROFILE_DIR")  # the daemon under cProfile, for a profile
        wrap = ["-m", "cProfile", "-o", f"{profile}/watch-{time.time_ns()}.prof"] if profile else []
        # BENCH_STEPS=1: the daemon times its durable steps (bench/steps.py; table in its log)
        entry = [str(REPO / "bench" / "steps.py")] if os.environ.get("BENCH_STEPS") else []
        cmd = [
            sys.executable,
            *wrap,
            *(entry or ["-m", "docwatch"]),
            "watch",
            "--data-root",
            str(data),
            "--config",
            str(config),
        ]
        with open(log_path, "ab") as err:
            self.started = time.time()
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=err, stderr=err)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> float:
        deadline = time.time() + timeout
        while (t := self.notify.first("READY=1")) is None:
            if self.proc.poll() is not None:
                raise BenchFailed(
                    f"the daemon exited with {self.proc.returncode} before "
                    f"READY=1; see {self.log_path}"
                )
            if time.time() > deadline:
                raise BenchFailed(f"no READY=1 after {timeout}s; see {self.log_path}")
            time.sleep(0.01)
        return t - self.started

    def overflows(self) -> int:
        """Rescans the daemon logged for an inotify queue overflow (events were lost)."""
        try:
            return self.log_path.read_text(errors="replace").count("queue overflowed (events were")
        except OSError:
            return 0

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchFailed(f"the daemon died (exit {self.proc.returncode}); see {self.log_path}")

    def stop(self, timeout: float = 30.0) -> tuple[int | None, float]:
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            rc = None
        return rc, time.perf_counter() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.notify.close()


# ---------------------------------------------------------------- the poller


class Poller:
    """The poller process, and this side's tail of its output (relpath → first seen)."""

    def __init__(self, db: Path, out: Path, interval: float, *, ok: bool = False) -> None:
        self.out = out
        cmd = [sys.executable, "-c", POLLER, str(db), str(out), str(interval)]
        self.proc = subprocess.Popen(cmd + (["ok"] if ok else []), stdin=subprocess.PIPE)
        self.seen: dict[str, float] = {}
        self.stats: dict = {}
        self._pos = 0
        self._tail = b""

    def refresh(self) -> None:
        try:
            with open(self.out, "rb") as f:
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return
        self._pos += len(data)
        data = self._tail + data
        lines = data.split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            if line.startswith(b"#"):
                self.stats = json.loads(line[1:])
                continue
            t, _, rel = line.decode().partition("\t")
            self.seen.setdefault(rel, float(t))

    def wait_for(self, relpaths: list[str], timeout: float, daemon: Daemon) -> bool:
        deadline = time.time() + timeout
        while True:
            self.refresh()
            if all(r in self.seen for r in relpaths):
                return True
            if time.time() > deadline:
                return False
            daemon.alive()
            time.sleep(0.05)

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)
        self.refresh()
        return self.stats


# ---------------------------------------------------------------- the writers


@dataclass
class File:
    kind: str  # raw | parsed
    task: str
    relpath: str
    path: str
    data: bytes


FILLER = (
    "The essay considers how the combination of concepts suggests a new mechanism, "
    "then tests it against three counterexamples and refines the claim.\n"
) * 40  # ~4 KB, like a draft


def task_id(round_no: int, phase: int, n: int) -> str:
    return f"combo_v1_{(round_no << 44) | (phase << 36) | n:012x}__{TEMPLATE}__{MODEL}"


def make_files(data: Path, round_no: int, phase: int, count: int, *, pairs: bool = False):
    """``count`` files: alternately raw and parsed, each its own task; with ``pairs``, raw
    then parsed of the same task (count/2 tasks)."""
    files = []
    for i in range(count):
        n, kind = (i // 2, ("raw", "parsed")[i % 2]) if pairs else (i, ("raw", "parsed")[i % 2])
        task = task_id(round_no, phase, n)
        rel = f"{RAW_DIR if kind == 'raw' else PARSED_DIR}/{task}_v1.txt"
        body = f"{kind} {task}\n{FILLER}".encode()
        files.append(File(kind, task, rel, str(data / rel), body))
    return files


def write_file(f: File) -> float:
    """The real writers: raw in place (Path.write_text), parsed .tmp + os.replace."""
    if f.kind == "raw":
        with open(f.path, "wb") as out:
            out.write(f.data)
    else:
        tmp = f.path + ".tmp"
        with open(tmp, "wb") as out:
            out.write(f.data)
        os.replace(tmp, f.path)
    return time.time()


def run_writers(
    files: list[File], rate: float | None, *, pairs: bool = False, writers: int = WRITERS
) -> tuple[float, list[float]]:
    """Write ``files`` from ``writers`` threads; at ``rate`` files/s in aggregate (file j due
    at start + j/rate), or as fast as they can.  With ``pairs`` a thread writes both files of
    a task, one right after the other.  Returns the start time and each file's close time."""
    closed = [0.0] * len(files)
    errors: list[BaseException] = []
    go = threading.Event()
    step = 2 if pairs else 1
    units = list(range(0, len(files), step))
    start = [0.0]

    def work(k: int) -> None:
        go.wait()
        try:
            for u in units[k::writers]:
                if rate:
                    delay = start[0] + u / rate - time.time()
                    if delay > 0:
                        time.sleep(delay)
                for j in range(u, min(u + step, len(files))):
                    closed[j] = write_file(files[j])
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    start[0] = time.time()
    go.set()
    for t in threads:
        t.join()
    if errors:
        raise BenchFailed(f"a writer failed: {errors[0]!r}")
    return start[0], closed


# ---------------------------------------------------------------- one phase


def phase_result(
    name: str,
    files: list[File],
    rate: float | None,
    start: float,
    closed: list[float],
    poller: Poller,
    cpu: float,
) -> dict:
    seen = poller.seen
    lat = {"all": [], "raw": [], "parsed": []}
    for f, c in zip(files, closed, strict=True):
        if f.relpath in seen:
            ms = (seen[f.relpath] - c) * 1e3
            lat["all"].append(ms)
            lat[f.kind].append(ms)
    visible = [seen[f.relpath] for f in files if f.relpath in seen]
    last_close = max(closed)
    last_visible = max(visible) if visible else None
    steps = len({seen[f.relpath] for f in files if f.relpath in seen})
    # Backlog: the latency of the last quarter of the files (in write order) against the first.
    q = max(1, len(lat["all"]) // 4)
    first_q, last_q = sorted(lat["all"][:q]), sorted(lat["all"][-q:])
    growth = pct(last_q, 50) - pct(first_q, 50) if lat["all"] else None
    res = {
        "phase": name,
        "files": len(files),
        "offered_rate": rate,
        "write_s": last_close - start,
        "achieved_rate": len(files) / (last_close - start) if last_close > start else None,
        "visible": len(visible),
        "lost": len(files) - len(visible),
        "last_visible_after_last_close_s": (last_visible - last_close) if visible else None,
        "throughput": len(visible) / (last_visible - start) if visible else None,
        "latency_ms": lat_stats(lat["all"]),
        "latency_raw_ms": lat_stats(lat["raw"]),
        "latency_parsed_ms": lat_stats(lat["parsed"]),
        "visibility_steps": steps,
        "latency_growth_ms": growth,
        "daemon_cpu_s": cpu,
        "daemon_cpu_ms_per_file": 1e3 * cpu / len(files),
        "daemon_cpu_pct": 100 * cpu / (last_visible - start) if visible else None,
        "samples_ms": {k: [round(x, 2) for x in lat[k]] for k in ("raw", "parsed")},
    }
    if rate:
        # Kept up: nothing lost, the writers offered the rate, the daemon made files visible at
        # >= 90% of the rate they were written, and the last one within 1 s of its close.
        res["kept_up"] = bool(
            res["lost"] == 0
            and res["achieved_rate"] >= 0.95 * rate
            and res["throughput"] >= 0.9 * res["achieved_rate"]
            and res["last_visible_after_last_close_s"] <= 1.0
        )
    return res


def run_phase(
    name: str,
    files: list[File],
    rate: float | None,
    poller: Poller,
    daemon: Daemon,
    *,
    pairs: bool = False,
) -> dict:
    (user0, sys0), over0 = proc_user_sys_s(daemon.pid), daemon.overflows()
    start, closed = run_writers(files, rate, pairs=pairs)
    poller.wait_for([f.relpath for f in files], 60 + len(files) / 200, daemon)
    user1, sys1 = proc_user_sys_s(daemon.pid)
    res = phase_result(name, files, rate, start, closed, poller, user1 - user0 + sys1 - sys0)
    res["daemon_user_ms_per_file"] = 1e3 * (user1 - user0) / len(files)
    res["daemon_sys_ms_per_file"] = 1e3 * (sys1 - sys0) / len(files)
    res["overflow_rescans"] = daemon.overflows() - over0
    lt, over = res["latency_ms"], res["overflow_rescans"]
    log(
        f"    {name:<12} {len(files):6d} files  written {res['achieved_rate']:6.0f}/s  "
        f"visible {res['throughput'] or 0:6.0f}/s  lost {res['lost']}  p50 "
        f"{fmt_ms(lt['p50'])}  p99 {fmt_ms(lt['p99'])}  max {fmt_ms(lt['max'])} ms"
        + (f"  ({over} overflow rescans)" if over else "")
    )
    return res


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}" if v >= 10 else f"{v:.1f}"


# ---------------------------------------------------------------- checks on the index


def check_index(db: Path, phases: dict[str, tuple[list[File], bool]]) -> tuple[dict, list[str]]:
    """Every written file is in the ledger once and every task has exactly one document, with
    the status its files decide (raw only: pending; parsed only or paired: ok)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        docs = Counter()
        status: dict[str, str] = {}
        for tid, st in con.execute("SELECT task_id, status FROM documents"):
            docs[tid] += 1
            status[tid] = st
        ledger = Counter(r for (r,) in con.execute("SELECT relpath FROM sources"))
    finally:
        con.close()
    bad, counts = [], {}
    for name, (files, pairs) in phases.items():
        tasks = {f.task: ("ok" if pairs or f.kind == "parsed" else "pending") for f in files}
        missing = [f.relpath for f in files if ledger[f.relpath] != 1]
        wrong_n = [t for t in tasks if docs[t] != 1]
        wrong_s = [t for t, want in tasks.items() if docs[t] == 1 and status[t] != want]
        counts[name] = {
            "files": len(files),
            "tasks": len(tasks),
            "ledger_missing": len(missing),
            "tasks_without_one_document": len(wrong_n),
            "wrong_status": len(wrong_s),
        }
        if missing:
            bad.append(f"{name}: {len(missing)} files not in the ledger, e.g. {missing[0]}")
        if wrong_n:
            bad.append(
                f"{name}: {len(wrong_n)} tasks without exactly one document, e.g. "
                f"{wrong_n[0]} ({docs[wrong_n[0]]})"
            )
        if wrong_s:
            t = wrong_s[0]
            bad.append(
                f"{name}: {len(wrong_s)} documents with an unexpected status, e.g. {t} "
                f"{status[t]!r} (expected {tasks[t]!r})"
            )
    return counts, bad


# ---------------------------------------------------------------- one round


def write_config(path: Path, a: argparse.Namespace) -> None:
    link = "true" if a.link else "false"
    path.write_text(CONFIG.format(settle=a.settle_seconds, delay=a.batch_max_delay, link=link))


def fresh_root(path: Path) -> Path:
    rmtree(path)
    for d in (RAW_DIR, PARSED_DIR):
        (path / d).mkdir(parents=True)
    return path


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


def reference_round(r: int, a: argparse.Namespace, p: dict, work: Path, logs: Path) -> dict:
    """The writers alone (no daemon) on the sustained set, then a one-shot scan of it."""
    data = fresh_root(work / f"ref{r}" / "data")
    config = work / "live.toml"
    files = make_files(data, r, 15, p["ref_files"])
    start, closed = run_writers(files, None)
    writers_rate = len(files) / (max(closed) - start)
    time.sleep(a.settle_seconds + 0.2)  # the scan reads settled files only
    os.sync()  # the scan should not pay for the writers' dirty pages
    cmd = [
        sys.executable,
        "-m",
        "docwatch",
        "scan",
        "--data-root",
        str(data),
        "--config",
        str(config),
        "--run-id",
        "bench",
        "--json",
    ]
    with open(logs / f"scan-ref{r}.log", "ab") as err:
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err)
        secs = time.perf_counter() - t0
    if out.returncode != 0:
        raise BenchFailed(f"reference scan exited {out.returncode}; see {logs}")
    report = json.loads(out.stdout)
    created = sum(s.get("docs_created", 0) for s in report["stages"].values())
    rmtree(data.parent)
    return {
        "writers_alone_rate": writers_rate,
        "scan_s": secs,
        "scan_rate": len(files) / secs,
        "scan_docs_created": created,
        "files": len(files),
    }


def rss_floor() -> int:
    proc = subprocess.Popen([sys.executable, "-c", FLOOR], cwd=REPO, stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()
        return proc_status(proc.pid)["VmRSS"]
    finally:
        proc.kill()
        proc.wait(10)


# ---------------------------------------------------------------- the burst (issue 10)

BURST_PAUSE_SHARE = 0.2  # raws that pause mid-write
BURST_PAUSE_S = 0.1
BURST_GAP_S = 0.020  # a random 0–20 ms gap before each file
BURST_TARGET_P50_MS, BURST_TARGET_P99_MS = 20.0, 100.0


@dataclass
class BurstFile:
    rel: str
    kind: str  # prompt | raw | parsed
    mat: int  # the materialisation (one attempt's files) it belongs to
    paired: bool  # a raw whose parsed file follows: visible = its document is ok
    pause: bool  # a raw that pauses mid-write


def burst_plan(combos: int, seed: int) -> tuple[legacy_tree.Plan, list[BurstFile]]:
    """The pipeline's plan (drafts, essays, evaluations; no quirks: every file is pipeline
    output) and its files in planned order."""
    plan = legacy_tree.make_plan(combos, seed, quirks=False)
    files = []
    for i in plan.order:
        kinds = {op.kind for op in plan.mats[i].ops}
        for op in plan.mats[i].ops:
            raw = op.kind == "raw"
            draw = random.Random(f"{seed}|pause|{op.rel}").random()
            files.append(
                BurstFile(
                    op.rel, op.kind, i, raw and "parsed" in kinds, raw and draw < BURST_PAUSE_SHARE
                )
            )
    return plan, files


def run_burst_writers(
    root: Path, plan: legacy_tree.Plan, files: list[BurstFile], seed: int, writers: int = WRITERS
) -> tuple[float, dict[str, float]]:
    """The pipeline on ``writers`` threads: each takes the next attempt (in planned order)
    whose dependencies are written, and writes its files in order, each after a random 0–20 ms
    gap: the prompt (.tmp + os.replace), the raw in place (20% pause 0.1 s halfway), the parsed
    file (.tmp + os.replace); folders are made as needed (legacy_tree's writers).  Returns the
    start time and each file's time.time() right after its close or rename."""
    info = {f.rel: f for f in files}
    closed: dict[str, float] = {}
    cond, todo, done, errors = threading.Condition(), list(plan.order), set(), []
    go = threading.Event()

    def take() -> int | None:
        with cond:
            while todo and not errors:
                for j, i in enumerate(todo):
                    if plan.mats[i].deps <= done:
                        return todo.pop(j)
                cond.wait(0.05)
            return None

    def work(k: int) -> None:
        rng = random.Random(f"{seed}|writer|{k}")
        go.wait()
        while (i := take()) is not None:
            try:
                for op in plan.mats[i].ops:
                    data = op.make()
                    time.sleep(rng.uniform(0, BURST_GAP_S))
                    if op.kind == "raw":
                        delay = BURST_PAUSE_S if info[op.rel].pause else 0.0
                        legacy_tree.write_slowly(root / op.rel, data, delay)
                    else:
                        legacy_tree.write_atomic(root / op.rel, data)
                    closed[op.rel] = time.time()
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                errors.append(exc)
            with cond:
                done.add(i)
                cond.notify_all()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    start = time.time()
    go.set()
    for t in threads:
        t.join()
    if errors:
        raise BenchFailed(f"a burst writer failed: {errors[0]!r}")
    return start, closed


def burst_key(f: BurstFile) -> str:
    """What the poller reports when the file counts as visible."""
    return f"ok:{f.rel}" if f.paired else f.rel


def ledger_batches(db: Path, rels: set[str]) -> dict:
    """The daemon's group commits, from the ledger: every source a commit records gets that
    commit's one ``ingested_at`` (and keeps it: a known source is never re-stamped), so the
    burst's files grouped by ``ingested_at`` are the batches, in commit order."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT ingested_at, relpath FROM sources").fetchall()
    finally:
        con.close()
    sizes = Counter(at for at, rel in rows if rel in rels)
    stamps = sorted(sizes)
    secs = [
        datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        for s in stamps
    ]
    gaps = [1e3 * (b - a) for a, b in zip(secs, secs[1:], strict=False)]
    ordered = [sizes[s] for s in stamps]
    v = sorted(ordered)
    return {
        "batches": len(ordered),
        "size_p50": pct(v, 50),
        "size_p90": pct(v, 90),
        "size_max": v[-1] if v else None,
        "largest_at": ordered.index(v[-1]) + 1 if v else None,
        "commit_gap_max_ms": max(gaps) if gaps else None,
        "sizes": ordered,
        "commit_gaps_ms": [round(g, 1) for g in gaps],
    }


def check_burst(db: Path, files: list[BurstFile], expected: list) -> tuple[dict, list[str]]:
    """Every file in the ledger once; one live document per attempt the plan expects, with
    the plan's status (a raw-only attempt has a newer one, so it is an error at once)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        ledger = Counter(r for (r,) in con.execute("SELECT relpath FROM sources"))
        docs = con.execute(
            "SELECT d.status, a.raw_key, a.parsed_key FROM documents d JOIN attempts a"
            " USING (doc_id)"
        ).fetchall()
    finally:
        con.close()
    live = [d for d in docs if d[0] != "superseded"]
    status = {(raw or parsed).partition(":")[2]: st for st, raw, parsed in live}
    missing = [f.rel for f in files if ledger[f.rel] != 1]
    wrong = [
        (e.raw or e.parsed, e.status, status.get(e.raw or e.parsed))
        for e in expected
        if status.get(e.raw or e.parsed) != e.status
    ]
    counts = {
        "files": len(files),
        "ledger_missing_or_twice": len(missing),
        "documents_expected": len(expected),
        "documents_live": len(live),
        "documents_superseded": len(docs) - len(live),
        "wrong_status_or_missing": len(wrong),
        "statuses": dict(Counter(d[0] for d in docs)),
    }
    bad = []
    if missing:
        bad.append(f"burst: {len(missing)} files not in the ledger once, e.g. {missing[0]}")
    if len(live) != len(expected):
        bad.append(f"burst: {len(live)} live documents, the plan expects {len(expected)}")
    if wrong:
        rel, want, got = wrong[0]
        bad.append(
            f"burst: {len(wrong)} attempts without their expected document, e.g. {rel}: "
            f"expected {want!r}, found {got!r}"
        )
    return counts, bad


def burst_round(r: int, a: argparse.Namespace, p: dict, work: Path, logs: Path) -> dict:
    """Issue 10's live burst on a fresh daemon with docwatch's default settings: an empty data
    root (only the templates and task tables, which are not stage folders), then the pipeline
    on 10 writer threads; the stage folders appear during the burst."""
    base = work / f"burst{r}"
    rmtree(base)
    data = base / "data"
    plan, files = burst_plan(p["burst_combos"], a.burst_seed)
    for src in sorted(legacy_tree.TEMPLATES.glob("*.csv")):
        (data / "1_raw").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, data / "1_raw" / src.name)
    for rel, body in plan.tables.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(body)
    config = base / "burst.toml"
    config.write_text(
        "# bench/live.py burst: docwatch's default settings\n"
        + "".join(f"{kv}\n" for kv in a.burst_set)
    )
    daemon = Daemon(data, config, logs / f"watch-burst-r{r}.log")
    poller = None
    res: dict = {"round": r, "combos": p["burst_combos"], "files": len(files)}
    try:
        res["ready_s"] = daemon.wait_ready()
        poller = Poller(daemon.db, base / "seen.tsv", a.burst_poll_ms / 1e3, ok=True)
        time.sleep(0.3)  # the poller is polling
        t0, busy0, steal0 = time.perf_counter(), *machine_cpu_s()
        cpu0, self0, over0 = proc_cpu_s(daemon.pid), self_cpu_s(), daemon.overflows()
        poll0 = proc_cpu_s(poller.proc.pid)
        start, closed = run_burst_writers(data, plan, files, a.burst_seed)
        keys = [burst_key(f) for f in files] + [f.rel for f in files]
        poller.wait_for(keys, 60 + len(files) / 200, daemon)
        cpu = proc_cpu_s(daemon.pid) - cpu0
        t1, busy1, steal1 = time.perf_counter(), *machine_cpu_s()
        ours = cpu + (self_cpu_s() - self0) + proc_cpu_s(poller.proc.pid) - poll0
        res["machine"] = {
            "others_cores": max(0.0, busy1 - busy0 - ours) / (t1 - t0),
            "steal_cores": (steal1 - steal0) / (t1 - t0),
        }
        res["poller"] = poller.stop()
        seen = poller.seen
        poller = None
        lat: dict[str, list[float]] = {"all": [], "prompt": [], "raw": [], "parsed": []}
        raw_row: list[float] = []
        for f in files:
            c = closed[f.rel]
            if (key := burst_key(f)) in seen:
                lat["all"].append((seen[key] - c) * 1e3)
                lat[f.kind].append((seen[key] - c) * 1e3)
            if f.kind == "raw" and f.rel in seen:
                raw_row.append((seen[f.rel] - c) * 1e3)
        lost = [f.rel for f in files if burst_key(f) not in seen]
        visible = [seen[burst_key(f)] for f in files if burst_key(f) in seen]
        last_close = max(closed.values())
        res |= {
            "write_s": last_close - start,
            "writers_rate": len(files) / (last_close - start),
            "lost": len(lost),
            "lost_examples": lost[:5],
            "throughput": len(visible) / (max(visible) - start) if visible else None,
            "drain_s": max(visible) - last_close if visible else None,
            "latency_ms": lat_stats(lat["all"]),
            "latency_prompt_ms": lat_stats(lat["prompt"]),
            "latency_raw_ok_ms": lat_stats(lat["raw"]),
            "latency_parsed_ms": lat_stats(lat["parsed"]),
            "latency_raw_row_ms": lat_stats(raw_row),
            "kinds": dict(Counter(f.kind for f in files)),
            "paused_raws": sum(f.pause for f in files),
            "daemon_cpu_s": cpu,
            "daemon_cpu_ms_per_file": 1e3 * cpu / len(files),
            "overflow_rescans": daemon.overflows() - over0,
            "batches": ledger_batches(daemon.db, {f.rel for f in files}),
            "samples_ms": {k: [round(x, 2) for x in v] for k, v in lat.items() if k != "all"},
        }
        rc, secs = daemon.stop()
        res["stop"] = {"exit_code": rc, "seconds": secs}
        res["index"], res["checks"] = check_burst(daemon.db, files, plan.summary.expected)
        if res["lost"]:
            res["checks"].append(f"burst: {res['lost']} files never visible, e.g. {lost[0]}")
        if rc != 0:
            res["checks"].append(f"burst: exit code after SIGTERM was {rc}, expected 0")
        text = daemon.log_path.read_text(errors="replace")
        res["log_warnings"] = sum(("WARNING" in ln or "ERROR" in ln) for ln in text.splitlines())
        res["log_retired"] = text.count(": its files now belong to a newer attempt")
    finally:
        if poller is not None:
            poller.stop()
        daemon.kill()
    lt, b = res["latency_ms"], res["batches"]
    log(
        f"    burst        {len(files):6d} files  written {res['writers_rate']:6.0f}/s  "
        f"visible {res['throughput'] or 0:6.0f}/s  lost {res['lost']}  p50 {fmt_ms(lt['p50'])}  "
        f"p99 {fmt_ms(lt['p99'])}  max {fmt_ms(lt['max'])} ms  {b['batches']} batches "
        f"(max {b['size_max']} files)"
    )
    return res


def summarise_burst(bursts: list[dict]) -> dict:
    def each(fn) -> dict:
        return spread([fn(b) for b in bursts])

    pooled = {
        k: lat_stats([x for b in bursts for x in b["samples_ms"][k]])
        for k in ("prompt", "raw", "parsed")
    }
    pooled["all"] = lat_stats([x for b in bursts for v in b["samples_ms"].values() for x in v])
    return {
        "combos": bursts[0]["combos"],
        "files": bursts[0]["files"],
        "kinds": bursts[0]["kinds"],
        "paused_raws": bursts[0]["paused_raws"],
        "writers_rate": each(lambda b: b["writers_rate"]),
        "write_s": each(lambda b: b["write_s"]),
        "throughput": each(lambda b: b["throughput"]),
        "drain_s": each(lambda b: b["drain_s"]),
        **{f"{q}": each(lambda b, q=q: b["latency_ms"][q]) for q in ("p50", "p90", "p99", "max")},
        "prompt_p99": each(lambda b: b["latency_prompt_ms"]["p99"]),
        "raw_ok_p99": each(lambda b: b["latency_raw_ok_ms"]["p99"]),
        "parsed_p99": each(lambda b: b["latency_parsed_ms"]["p99"]),
        "raw_row_p99": each(lambda b: b["latency_raw_row_ms"]["p99"]),
        "pooled": pooled,
        "batches": each(lambda b: b["batches"]["batches"]),
        "batch_p50": each(lambda b: b["batches"]["size_p50"]),
        "batch_max": each(lambda b: b["batches"]["size_max"]),
        "commit_gap_max_ms": each(lambda b: b["batches"]["commit_gap_max_ms"]),
        "cpu_ms_per_file": each(lambda b: b["daemon_cpu_ms_per_file"]),
        "lost": sum(b["lost"] for b in bursts),
        "overflow_rescans": [b["overflow_rescans"] for b in bursts],
        "log_retired": [b["log_retired"] for b in bursts],
        "others_cores": [round(b["machine"]["others_cores"], 2) for b in bursts],
    }


def burst_table(s: dict, poll_ms: float, settings: list[str]) -> list[str]:
    def mr(d: dict, f: str = "{:.0f}") -> str:
        if d["median"] is None:
            return "-"
        if len(d["samples"]) == 1:
            return f.format(d["median"])
        return f"{f.format(d['median'])} ({f.format(d['min'])}–{f.format(d['max'])})"

    def met(d: dict, target: float) -> str:
        return "met" if d["median"] is not None and d["median"] <= target else "NOT met"

    k, po, paused = s["kinds"], s["pooled"]["all"], s["paused_raws"]
    shown = ", ".join(settings) or "defaults"
    return [
        f"burst (issue 10): a {s['combos']}-combo pipeline, {s['files']} files "
        f"({k.get('prompt', 0)} prompts, {k.get('raw', 0)} raws of which {paused} pause "
        f"0.1 s, {k.get('parsed', 0)} parsed), {WRITERS} writer threads, 0–20 ms gaps, stage "
        f"folders made during it; daemon settings: {shown}; poller every {poll_ms:g} ms",
        f"  writers {mr(s['writers_rate'])} files/s (done in {mr(s['write_s'], '{:.2f}')} s); "
        f"visible {mr(s['throughput'])} files/s; last visible {mr(s['drain_s'], '{:.2f}')} s "
        f"after the last write; lost {s['lost']}; daemon CPU "
        f"{mr(s['cpu_ms_per_file'], '{:.2f}')} ms/file",
        f"  close→visible ms (raw: its document ok): p50 {mr(s['p50'])}, p90 {mr(s['p90'])}, "
        f"p99 {mr(s['p99'])}, max {mr(s['max'])}; pooled p50 {po['p50'] or 0:.0f}, p99 "
        f"{po['p99'] or 0:.0f}",
        f"  p99 by kind: prompt {mr(s['prompt_p99'])}, raw ok {mr(s['raw_ok_p99'])}, parsed "
        f"{mr(s['parsed_p99'])}; raw's own ledger row {mr(s['raw_row_p99'])}",
        f"  batches (ledger ingested_at): {mr(s['batches'])} commits, size p50 "
        f"{mr(s['batch_p50'])}, max {mr(s['batch_max'])} files; longest time between two "
        f"commits {mr(s['commit_gap_max_ms'])} ms",
        f"  overflow rescans {s['overflow_rescans']}, documents retired {s['log_retired']}, "
        f"other processes used {s['others_cores']} cores",
        f"  targets: p50 <= {BURST_TARGET_P50_MS:.0f} ms: {met(s['p50'], BURST_TARGET_P50_MS)}; "
        f"p99 <= {BURST_TARGET_P99_MS:.0f} ms: {met(s['p99'], BURST_TARGET_P99_MS)}",
    ]


# ---------------------------------------------------------------- summary and table


def summarise(rounds: list[dict], refs: list[dict]) -> dict:
    def each(fn) -> dict:
        return spread([fn(r) for r in rounds])

    phases = {}
    for name, first in rounds[0]["phases"].items():
        pooled = {}
        for kind in ("all", "raw", "parsed"):
            kinds = ("raw", "parsed") if kind == "all" else (kind,)
            ms = [x for r in rounds for k in kinds for x in r["phases"][name]["samples_ms"][k]]
            pooled[kind] = lat_stats(ms)

        def ph(key: str, sub: str | None = None, n: str = name):
            if sub is None:
                return each(lambda rr: rr["phases"][n][key])
            return each(lambda rr: rr["phases"][n][key][sub])

        phases[name] = {
            "offered_rate": first["offered_rate"],
            "files": first["files"],
            "p50": ph("latency_ms", "p50"),
            "p90": ph("latency_ms", "p90"),
            "p99": ph("latency_ms", "p99"),
            "max": ph("latency_ms", "max"),
            "raw_p50": ph("latency_raw_ms", "p50"),
            "raw_p99": ph("latency_raw_ms", "p99"),
            "parsed_p50": ph("latency_parsed_ms", "p50"),
            "parsed_p99": ph("latency_parsed_ms", "p99"),
            "pooled": pooled,
            "achieved_rate": ph("achieved_rate"),
            "throughput": ph("throughput"),
            "drain_s": ph("last_visible_after_last_close_s"),
            "visibility_steps": ph("visibility_steps"),
            "cpu_ms_per_file": ph("daemon_cpu_ms_per_file"),
            "user_ms_per_file": ph("daemon_user_ms_per_file"),
            "sys_ms_per_file": ph("daemon_sys_ms_per_file"),
            "cpu_pct": ph("daemon_cpu_pct"),
            "overflow_rescans": [r["phases"][name]["overflow_rescans"] for r in rounds],
            "latency_growth_ms": ph("latency_growth_ms"),
            "lost": sum(r["phases"][name]["lost"] for r in rounds),
            "kept_up": [r["phases"][name].get("kept_up") for r in rounds],
        }
    out = {
        "phases": phases,
        "ready_s": each(lambda r: r["ready_s"]),
        "rss_at_ready_mib": each(lambda r: r["rss_at_ready_kib"]["VmRSS"] / 1024),
        "idle_cpu_pct": each(lambda r: r["idle"]["cpu_pct"]),
        "idle_wakeups_per_s": each(lambda r: r["idle"]["wakeups_per_s"]),
        "idle_rss_mib": each(lambda r: r["idle"]["rss_kib"] / 1024),
        "idle_hwm_mib": each(lambda r: r["idle"]["hwm_kib"] / 1024),
        "idle_threads": each(lambda r: r["idle"]["threads"]),
        "stop_s": each(lambda r: r["stop"]["seconds"]),
        "exit_codes": [r["stop"]["exit_code"] for r in rounds],
        "poll_query_mean_ms": each(lambda r: r["poller"].get("query_mean_ms")),
        "poll_gap_max_ms": each(lambda r: r["poller"].get("gap_max_ms")),
        "log_warnings": sum(r["log_warnings"] for r in rounds),
        "others_cores": [round(r["machine"]["others_cores"], 2) for r in rounds],
        "steal_cores": [round(r["machine"]["steal_cores"], 2) for r in rounds],
        "log_retired": [r["log_retired"] for r in rounds],
    }
    if refs:
        out["writers_alone_rate"] = spread([x["writers_alone_rate"] for x in refs])
        out["scan_rate"] = spread([x["scan_rate"] for x in refs])
        live = phases["sustained"]["throughput"]["median"]
        out["sustained_over_scan"] = live / out["scan_rate"]["median"]
    return out


def table(res: dict) -> str:
    env, cfg = res["machine"], res["config"]
    lines = [
        f"docwatch live bench  {res['date']}  rev {res['docwatch_rev']}  "
        f"({res['docwatch_version']})",
        f"machine: nproc {env['nproc']}, {env['mem_available_mib']} MiB available of "
        f"{env['mem_total_mib']}, {res['fs_type']} at {res['out']}, {env['cpu_model']}, "
        f"load {env['loadavg_at_start'][0]:.2f}",
        f"{res['rounds']} round(s); figures are medians over rounds (min–max)",
    ]
    if res["burst"] is not None:
        lines += ["", *burst_table(res["burst"], cfg["burst_poll_ms"], cfg["burst_settings"])]
    if res["summary"] is not None:
        lines += ["", *phases_table(res)]
    if res["checks"]:
        lines += ["", "CHECKS FAILED:"] + [f"  - {c}" for c in res["checks"]]
    return "\n".join(lines)


def phases_table(res: dict) -> list[str]:
    s, env, cfg = res["summary"], res["machine"], res["config"]
    ph = s["phases"]

    def m(d: dict, f: str = "{:.0f}") -> str:
        return "-" if d["median"] is None else f.format(d["median"])

    def mr(d: dict, f: str = "{:.0f}") -> str:
        if d["median"] is None:
            return "-"
        if len(d["samples"]) == 1:
            return f.format(d["median"])
        return f"{f.format(d['median'])} ({f.format(d['min'])}–{f.format(d['max'])})"

    lines = [
        f"phases: daemon settle_seconds {cfg['settle_seconds']}, batch_max_delay "
        f"{cfg['batch_max_delay']}, link {str(cfg['link']).lower()}, WATCHDOG_USEC 60 s; "
        f"{WRITERS} writer threads; poller "
        f"every {cfg['poll_ms']} ms; {res['rounds']} round(s), figures are medians over rounds",
        "",
        "latency from close/rename to the row being visible, ms (median over rounds; "
        "'pooled' = all rounds' files); CPU% = the daemon's, of one core",
        f"{'phase':<13} {'offered/s':>9} {'written/s':>9} {'visible/s':>9} {'CPU%':>5} {'p50':>6} "
        f"{'p90':>6} {'p99':>6} {'max':>6} {'raw p99':>8} {'parsed p99':>10} "
        f"{'pooled p99':>10}  kept up",
    ]
    for name, p in ph.items():
        off = "max" if p["offered_rate"] is None else f"{p['offered_rate']:.0f}"
        kept = (
            "-"
            if p["offered_rate"] is None
            else "/".join("yes" if k else "NO" for k in p["kept_up"])
        )
        lines.append(
            f"{name:<13} {off:>9} {m(p['achieved_rate']):>9} {m(p['throughput']):>9} "
            f"{m(p['cpu_pct']):>5} "
            f"{m(p['p50']):>6} {m(p['p90']):>6} {m(p['p99']):>6} {m(p['max']):>6} "
            f"{m(p['raw_p99']):>8} {m(p['parsed_p99']):>10} "
            f"{p['pooled']['all']['p99'] or 0:>10.0f}  {kept}"
        )
    sus = ph["sustained"]
    lines += [
        "",
        f"sustained ({sus['files']} files, as fast as {WRITERS} writers go): "
        f"{mr(sus['throughput'])} files/s, lost {sus['lost']}, drain after the last write "
        f"{mr(sus['drain_s'], '{:.2f}')} s, daemon CPU {mr(sus['cpu_ms_per_file'], '{:.2f}')} "
        f"ms/file: user {mr(sus['user_ms_per_file'], '{:.2f}')} (the interpreter), system "
        f"{mr(sus['sys_ms_per_file'], '{:.2f}')} (the kernel: file creation, syncs, inotify)",
    ]
    if "scan_rate" in s:
        lines.append(
            f"references ({res['params']['ref_files']} files written the same way): writers "
            f"alone {mr(s['writers_alone_rate'])} "
            f"files/s; one-shot `docwatch scan` {mr(s['scan_rate'])} files/s; "
            f"live/scan {s['sustained_over_scan']:.2f}"
        )
    lines += [
        f"idle ({res['params']['idle_s']:.0f} s after the bursts): CPU "
        f"{mr(s['idle_cpu_pct'], '{:.2f}')} % of one core, {mr(s['idle_wakeups_per_s'], '{:.1f}')}"
        f" wakeups/s, {m(s['idle_threads'])} threads",
        f"memory: VmRSS {mr(s['idle_rss_mib'], '{:.1f}')} MiB after the bursts, "
        f"{mr(s['rss_at_ready_mib'], '{:.1f}')} MiB at READY; VmHWM "
        f"{mr(s['idle_hwm_mib'], '{:.1f}')} MiB; bare interpreter importing the daemon "
        f"{res['rss_floor_mib']:.1f} MiB",
        f"start: READY=1 after {mr(s['ready_s'], '{:.2f}')} s; stop: SIGTERM → exit "
        f"{s['exit_codes']} in {mr(s['stop_s'], '{:.2f}')} s",
        "inotify queue overflows (each followed by a full rescan), per round: "
        + (
            ", ".join(
                f"{n} {p['overflow_rescans']}" for n, p in ph.items() if any(p["overflow_rescans"])
            )
            or "none"
        ),
        f"machine noise: other processes used {s['others_cores']} cores on average during "
        f"each round (of {env['nproc']}; VM steal {s['steal_cores']})",
        f"poller: query {mr(s['poll_query_mean_ms'], '{:.2f}')} ms mean, longest gap between "
        f"polls {mr(s['poll_gap_max_ms'])} ms; daemon log warnings/errors: {s['log_warnings']}, "
        f"of which documents retired per round: {s['log_retired']}",
        "",
        f"targets: p99 <= {TARGET_P99_MS:.0f} ms at 200 files/s (latency phase): "
        f"{m(ph['latency']['p99'])} ms -> "
        f"{'met' if ph['latency']['p99']['median'] <= TARGET_P99_MS else 'NOT met'}; "
        f">= {TARGET_RATE:.0f} files/s sustained: {m(sus['throughput'])} -> "
        f"{'met' if (sus['throughput']['median'] or 0) >= TARGET_RATE else 'NOT met'}",
    ]
    return lines


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
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
        "--burst-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='a daemon setting for the burst, as a TOML line (e.g. batch_max_delay = "0ms"); '
        "repeatable; default: none (docwatch's defaults)",
    )
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
                if not a.keep:
                    rmtree(work / f"burst{r}")
            if a.burst_only:
                continue
            log(f"round {r}/{params['rounds']}: daemon")
            rounds.append(one_round(r, a, params, work, logs))
            if not a.no_reference:
                log(f"round {r}/{params['rounds']}: references (writers alone, one-shot scan)")
                refs.append(reference_round(r, a, params, work, logs))
                log(
                    f"    writers alone {refs[-1]['writers_alone_rate']:.0f} files/s, scan "
                    f"{refs[-1]['scan_rate']:.0f} files/s"
                )
            if not a.keep:
                rmtree(work / f"r{r}")
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
    if not a.keep:
        rmtree(work)
    return 3 if res["checks"] else 0


if __name__ == "__main__":
    sys.exit(main())

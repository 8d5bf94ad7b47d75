"""What ``bench/live.py`` and ``bench/postgres.py`` measure a daemon with: ``docwatch watch``
under a real NOTIFY_SOCKET (``Daemon``), a poller in its own process that timestamps every
newly visible ledger row (``Poller``), the process's CPU from /proc, percentiles."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from host import log, proc_status  # noqa: E402, F401  (re-exported for the live benches)
from support import NotifySocket, children_of  # noqa: E402  (as the tests: systemd's socket, /proc)

CLK_TCK = os.sysconf("SC_CLK_TCK")
WRITERS = 10  # writer threads of every phase and of the burst

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


class BenchFailed(Exception):
    pass


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


def spread(values: list[float | None], digits: int = 3) -> dict:
    """Median, min, max of the rounds' values (a None: that round had none)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "samples": []}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "samples": [round(v, digits) for v in vals],
    }


def median_range(d: dict, f: str = "{:.0f}") -> str:
    """A ``spread`` as "median (min–max)", or the median alone for one round."""
    if d["median"] is None:
        return "-"
    if len(d["samples"]) == 1:
        return f.format(d["median"])
    return f"{f.format(d['median'])} ({f.format(d['min'])}–{f.format(d['max'])})"


# ---------------------------------------------------------------- systemd's side, the daemon


def proc_cpu_s(pid: int) -> float:
    """utime + stime of the whole process (all its threads, live or ended, and its children),
    in seconds."""
    return sum(proc_user_sys_s(pid))


def proc_user_sys_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of the whole process in seconds, its children included (the staging
    helper of a catch-up pass, live or ended): the interpreter's share (user) apart from the
    kernel's (system: file creation, syncs, inotify)."""
    user, system = _user_sys_with_ended_children(pid)
    for child in children_of(pid):
        try:
            u, s = _user_sys_with_ended_children(child)
        except (FileNotFoundError, ProcessLookupError):  # ended meanwhile: counted once reaped
            continue
        user, system = user + u, system + s
    return user, system


def _user_sys_with_ended_children(pid: int) -> tuple[float, float]:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # fields[0] is the state, field 3 of proc(5)
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + cutime) / CLK_TCK, (stime + cstime) / CLK_TCK


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
        if profile:
            Path(profile).mkdir(parents=True, exist_ok=True)
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
        """Rescans the daemon logged for an inotify queue overflow (the kernel dropped events)."""
        try:
            return self.log_path.read_text(errors="replace").count("queue overflowed (the kernel")
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


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}" if v >= 10 else f"{v:.1f}"

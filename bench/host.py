"""What every bench shares: the machine it runs on (its facts, the filesystem's kind, the
revision measured) and how a command is run, timed and cleaned up after."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20


class CommandFailed(Exception):
    pass


@dataclass
class Run:
    seconds: float
    maxrss_kib: int  # the command's peak RSS plus its children's (``docwatch scan``'s helper)
    stdout: bytes


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd: list[str], errlog: Path) -> Run:
    """Spawn, wait with wait4 (peak RSS of this child alone), time spawn→reap."""
    with open(errlog, "ab") as err:
        err.write(f"$ {' '.join(cmd)}\n".encode())
        err.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=REPO)
        children = ChildrenPeak(proc.pid)
        out = proc.stdout.read()
        children.stop()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.stdout.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = errlog.read_text(errors="replace")[-2000:]
        raise CommandFailed(f"exit {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return Run(seconds, usage.ru_maxrss + children.total_kib(), out)


class ChildrenPeak:
    """The peak RSS (VmHWM) of each child a command starts, sampled every 20 ms from /proc
    while it runs: wait4 gives the largest process's peak, not the sum of two processes that
    run at once (``docwatch scan`` and its staging helper)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peaks: dict[str, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        own = _cmdline(str(self.pid))
        while not self._done.wait(0.02):
            for child in self._children():
                if _cmdline(child) == own:  # forked, not yet exec'd: the command's own pages
                    continue
                hwm = _vm_hwm_kib(child)
                if hwm > self.peaks.get(child, 0):
                    self.peaks[child] = hwm

    def _children(self) -> list[str]:
        found = []
        for task in Path(f"/proc/{self.pid}/task").glob("*/children"):
            try:
                found += task.read_text().split()
            except OSError:
                continue
        return found

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def total_kib(self) -> int:
        return sum(self.peaks.values())


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _vm_hwm_kib(pid: str) -> int:
    try:
        return proc_status(int(pid)).get("VmHWM", 0)
    except OSError:  # it ended
        return 0


def proc_status(pid: int) -> dict:
    """VmRSS and VmHWM (KiB) and Threads from /proc/PID/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])  # KiB
        elif key == "Threads":
            out[key] = int(value)
    return out


def timed_sync() -> float:
    t0 = time.perf_counter()
    os.sync()
    return time.perf_counter() - t0


def rmtree(path: Path) -> None:
    """``rm -rf`` in a child: shutil.rmtree of a big tree would grow this process's heap, and
    with it the peak RSS that wait4 reports for every later child (see BUILD)."""
    if path.exists():
        subprocess.run(["rm", "-rf", "--", str(path)], check=True)


def machine() -> dict:
    mem = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            mem[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "mem_total_mib": mem.get("MemTotal", 0) // MIB,
        "mem_available_mib": mem.get("MemAvailable", 0) // MIB,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }


def fs_type(path: Path) -> str:
    """Filesystem type of the mount holding ``path`` (from /proc/self/mountinfo)."""
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, right = line.split(" - ", 1)
            mount = left.split()[4].replace("\\040", " ")
            inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, kind = mount, right.split()[0]
    except (OSError, ValueError, IndexError):
        pass
    if kind == "ext4" and ext4_journal(path) is False:
        kind = "ext4 without a journal"  # its inode allocator differs: bench/README.md
    return kind


def ext4_journal(path: Path) -> bool | None:
    """Whether the ext4 filesystem holding ``path`` has a journal (None: cannot tell).  Without
    one, ext4 skips inodes freed in the last 60 s (300 s while their table block is dirty)
    when it allocates, testing each: creating files right after deleting many costs more."""
    try:
        st = path.stat() if path.exists() else path.parent.stat()
        dev = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}").resolve().name
        task = Path(f"/sys/fs/ext4/{dev}/journal_task").read_text().strip()
    except OSError:
        return None
    return task != "<none>"


def git_rev() -> str:
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()

        rev, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "daemon")
        return rev + ("+dirty(daemon/)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def docwatch_version() -> str:
    try:
        out = subprocess.run(
            [sys.executable, "-m", "docwatch", "--version"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        msg = f"cannot run `{sys.executable} -m daemon` (use the venv's python): {exc}"
        raise CommandFailed(msg) from exc

"""``strace`` for the suite's syscall checks (``test_syscalls.py``): running it, and reading
what ``strace -f -y`` wrote into calls with their paths resolved.  Fails, never skips, when
strace is missing or may not trace here."""

from __future__ import annotations

import codecs
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

STRACE = shutil.which("strace") or "/usr/bin/strace"

LEGACY_TOP = ("1_raw", "2_tasks", "3_generation", "4_evaluation")

ORDER_TRACE = ["syncfs", "fsync", "fdatasync", "rename", "renameat", "renameat2", "pwrite64"]
ORDER_TRACE += ["write", "openat", "link", "linkat", "unlink", "unlinkat"]

WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND", "O_TMPFILE"}
LOCK_CMD = re.compile(r"^F_(OFD_)?SETLKW?(64)?$|^F_SETLEASE$")
#: name -> the (dirfd index | None | "fd", path index) of every path the call changes.  A hard
#: link's source (``link``'s first path) is not changed by it: only the new name counts.
CHANGED = {
    "rename": [(None, 0), (None, 1)],
    "renameat": [(0, 1), (2, 3)],
    "renameat2": [(0, 1), (2, 3)],
    "unlink": [(None, 0)],
    "unlinkat": [(0, 1)],
    "rmdir": [(None, 0)],
    "truncate": [(None, 0)],
    "ftruncate": [("fd", 0)],
    "utimensat": [(0, 1)],  # a NULL path: the fd itself (futimens)
    "utime": [(None, 0)],
    "utimes": [(None, 0)],
    "futimesat": [(0, 1)],
    "chmod": [(None, 0)],
    "fchmod": [("fd", 0)],
    "fchmodat": [(0, 1)],
    "fchmodat2": [(0, 1)],
    "chown": [(None, 0)],
    "lchown": [(None, 0)],
    "fchown": [("fd", 0)],
    "fchownat": [(0, 1)],
    "link": [(None, 1)],
    "linkat": [(2, 3)],
    "symlink": [(None, 1)],
    "symlinkat": [(1, 2)],
    "mkdir": [(None, 0)],
    "mkdirat": [(0, 1)],
    "mknod": [(None, 0)],
    "mknodat": [(0, 1)],
    "setxattr": [(None, 0)],
    "lsetxattr": [(None, 0)],
    "fsetxattr": [("fd", 0)],
    "removexattr": [(None, 0)],
    "lremovexattr": [(None, 0)],
    "fremovexattr": [("fd", 0)],
}
#: Everything that could change a file or a directory entry, or lock a file.  In strace's
#: filter ``?`` leaves out a syscall this architecture lacks (``open``, ``rename`` on arm64).
MUTATING = list(CHANGED)
READ_ONLY_TRACE = ["open", "openat", "flock", "fcntl", *MUTATING]


def require_strace() -> None:
    """Fail (never skip) when strace is missing or may not trace here."""
    if not os.access(STRACE, os.X_OK):
        pytest.fail(
            "strace is not installed (needed to check read-only and the durable order): "
            "run `make system-deps` (.ci/install-system-deps)"
        )
    probe = subprocess.run(
        [STRACE, "-f", "-o", "/dev/null", "-e", "trace=openat", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        pytest.fail(
            f"strace cannot trace a child here (ptrace not permitted? rc={probe.returncode}): "
            f"{probe.stderr.strip()}"
        )


def strace_argv(out: Path, syscalls: list[str]) -> list[str]:
    trace = ",".join(f"?{s}" for s in syscalls)
    return [STRACE, "-f", "-y", "-s", "4096", "-o", str(out), "-e", f"trace={trace}"]


@dataclass
class Call:
    """One syscall, its args split at the top level, the index of its line when it started
    and when it returned (one ``strace -f`` file is one order of events)."""

    pid: int
    name: str
    args: list[str]
    ret: str
    start: int
    end: int
    text: str

    def fd_path(self, i: int) -> str | None:
        return fd_path(self.args[i]) if i < len(self.args) else None

    def ret_path(self) -> str | None:
        return fd_path(self.ret)


_LINE = re.compile(r"^(\d+)\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(.*)$", re.S)
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$", re.S)
_FD = re.compile(r"^(?:AT_FDCWD|-?\d+)<(.*)>$", re.S)
_STR = re.compile(r'^"((?:[^"\\]|\\.)*)"(?:\.\.\.)?$', re.S)


def _unescape(s: str) -> str:
    return codecs.escape_decode(s.encode("utf-8", "surrogateescape"))[0].decode(
        "utf-8", "surrogateescape"
    )


def fd_path(arg: str) -> str | None:
    """The path ``-y`` printed for an fd (or AT_FDCWD: the cwd); None for sockets, NULL…"""
    m = _FD.match(arg.strip())
    if not m:
        return None
    path = _unescape(m.group(1))
    if path.endswith(" (deleted)"):
        path = path[: -len(" (deleted)")]
    return path if path.startswith("/") else None


def string_arg(arg: str) -> str | None:
    m = _STR.match(arg.strip())
    return _unescape(m.group(1)) if m else None


def split_args(s: str) -> list[str]:
    """Split strace's argument text at top-level commas (strings, structs, fd paths kept)."""
    out, cur, depth, i, in_str, in_fd = [], [], 0, 0, False, False
    while i < len(s):
        c = s[i]
        if in_str:
            cur.append(c)
            if c == "\\" and i + 1 < len(s):
                cur.append(s[i + 1])
                i += 1
            elif c == '"':
                in_str = False
        elif in_fd:
            cur.append(c)
            in_fd = c != ">"
        elif c == '"':
            in_str = True
            cur.append(c)
        elif c == "<" and cur and re.fullmatch(r"(AT_FDCWD|-?\d+)", "".join(cur).strip()):
            in_fd = True
            cur.append(c)
        elif c in "{[(":
            depth += 1
            cur.append(c)
        elif c in "}])":
            depth -= 1
            cur.append(c)
        elif c == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if cur or out:
        out.append("".join(cur).strip())
    return out


def parse_strace(path: Path) -> list[Call]:
    """Every completed syscall in an ``strace -f -y`` file (unfinished/resumed pairs joined),
    in the order they returned."""
    calls: list[Call] = []
    pending: dict[int, tuple[str, int]] = {}
    for n, line in enumerate(path.read_text(errors="surrogateescape").splitlines()):
        m = _LINE.match(line)
        if not m:
            continue
        pid, rest = int(m.group(1)), m.group(2)
        if rest.startswith(("+++", "---")):
            continue
        if rest.endswith("<unfinished ...>"):
            pending[pid] = (rest[: -len("<unfinished ...>")].rstrip(), n)
            continue
        start = n
        resumed = _RESUMED.match(rest)
        if resumed:
            head, start = pending.pop(pid, (f"{resumed.group(1)}(", n))
            rest = head + resumed.group(2)
        call = _CALL.match(rest)
        if not call:
            continue
        name, args, ret = call.groups()
        calls.append(Call(pid, name, split_args(args), ret.strip(), start, n, rest))
    return calls


def resolve(call: Call, dirfd: int | None, i: int, cwd: Path) -> str | None:
    """The absolute path of argument ``i`` (a string, relative to argument ``dirfd``'s fd)."""
    if i >= len(call.args):
        return None
    raw = string_arg(call.args[i])
    if raw is None:
        return None
    if raw.startswith("/"):
        return os.path.normpath(raw)
    base = call.fd_path(dirfd) if dirfd is not None else str(cwd)
    return os.path.normpath(os.path.join(base or str(cwd), raw))


def changed_paths(call: Call, cwd: Path) -> list[str]:
    out = []
    for dirfd, i in CHANGED.get(call.name, ()):
        if dirfd == "fd":
            p = call.fd_path(i)
        elif call.name == "utimensat" and len(call.args) > 1 and call.args[1] == "NULL":
            p = call.fd_path(0)
        else:
            p = resolve(call, dirfd, i, cwd)
        if p:
            out.append(p)
    return out


def legacy_rel(path: str | None, data_root: Path, tops=LEGACY_TOP) -> str | None:
    """``path`` relative to the data root when it lies in (or is) one of the legacy folders."""
    if not path:
        return None
    rel = os.path.relpath(os.path.normpath(path), data_root)
    if rel.startswith(".."):
        return None
    return rel if rel.split(os.sep)[0] in tops else None


def open_path(call: Call, cwd: Path) -> str | None:
    if call.name == "openat":
        return resolve(call, 0, 1, cwd)
    if call.name == "open":
        return resolve(call, None, 0, cwd)
    return None


def open_flags(call: Call) -> set[str]:
    i = 2 if call.name == "openat" else 1
    return set(call.args[i].split("|")) if i < len(call.args) else set()

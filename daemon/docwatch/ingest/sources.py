"""Reading the legacy folders: list candidates, and probe one file into a ``Source``.

Read-only on the sources: files are opened O_RDONLY|O_NOFOLLOW (and O_NOATIME where allowed),
never locked, renamed or written.  Every refusal carries the path and the reason.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from docwatch.core.layout import FolderRole, ParsedName, parse_name
from docwatch.core.model import Source
from docwatch.store.sourcefiles import open_source

log = logging.getLogger("docwatch.sources")
IN_MEMORY_MAX = 1 << 20  # smaller sources are kept in memory between hashing and copying
TAIL_READ = 1 << 16  # what a small source is read by after its expected size (usually: EOF)
CHUNK = 1 << 20
NEW, INDEXED, IGNORED, DEFERRED, ERROR = "new", "indexed", "ignored", "deferred", "error"


class Stat(NamedTuple):
    """The five lstat fields a probe needs (a full os.stat_result is ~3× bigger)."""

    st_mode: int
    st_ino: int
    st_dev: int
    st_size: int
    st_mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result | Stat) -> Stat:
        return cls(st.st_mode, st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Candidate:
    """A directory entry in a watched folder, with its role and path below the data root."""

    path: Path
    role: FolderRole
    relpath: str
    lstat: Stat | None = None

    @property
    def task(self) -> tuple[str, str] | None:
        """(stage, task_id) when the name is pipeline output."""
        name = parse_name(self.relpath.rpartition("/")[2])
        return None if isinstance(name, str) else (self.role.stage, name.task_id)


@dataclass
class Outcome:
    """What probing one candidate found: a new Source, or why it was not read (now)."""

    candidate: Candidate
    status: str
    reason: str | None = None
    source: Source | None = None
    content: bytes | None = None

    @property
    def relpath(self) -> str:
        return self.candidate.relpath


def list_folder(data_root: Path, role: FolderRole) -> Iterator[Candidate]:
    """Entries of one watched folder (non-recursive); a missing folder yields nothing."""
    folder = data_root / role.folder
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:  # unreadable folder: say so, keep going with the others
        log.error(
            "%s: cannot list the folder (%s); its files are not indexed until fixed",
            folder,
            exc.strerror,
        )
        return
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        yield Candidate(Path(entry.path), role, f"{role.folder}/{entry.name}", Stat.of(st))


def probe(
    cand: Candidate,
    *,
    known: Callable[[str, int, int], bool],
    now_ns: int,
    settle_ns: int,
    max_bytes: int,
    ready: bool = False,
) -> Outcome:
    """Classify and (when new and settled) read one candidate, hashing its bytes."""
    found = classify(
        cand, known=known, now_ns=now_ns, settle_ns=settle_ns, max_bytes=max_bytes, ready=ready
    )
    return found if isinstance(found, Outcome) else read(cand, *found)


def classify(
    cand: Candidate,
    *,
    known: Callable[[str, int, int], bool],
    now_ns: int,
    settle_ns: int,
    max_bytes: int,
    ready: bool = False,
) -> Outcome | tuple[ParsedName, Stat | os.stat_result]:
    """Everything ``probe`` decides without reading the file: an Outcome, or what ``read``
    needs (the name and the stat) when the file must be read now."""
    name = cand.path.name
    try:
        cand.relpath.encode("utf-8")
    except UnicodeEncodeError:
        return Outcome(cand, ERROR, "file name is not valid UTF-8; rename is up to the pipeline")
    parsed = parse_name(name)
    if isinstance(parsed, str):
        return Outcome(cand, IGNORED, parsed)
    try:
        st = cand.lstat or os.lstat(cand.path)
    except FileNotFoundError:
        return Outcome(cand, IGNORED, "vanished before it could be read")
    except OSError as exc:
        return Outcome(cand, ERROR, f"cannot stat: {exc.strerror}")
    kind_problem = _kind_problem(st)
    if kind_problem:
        status = IGNORED if stat.S_ISDIR(st.st_mode) else ERROR
        return Outcome(cand, status, kind_problem)
    if st.st_size > max_bytes:
        return Outcome(cand, ERROR, f"{st.st_size} bytes exceeds max_file_bytes ({max_bytes})")
    if known(cand.relpath, st.st_size, st.st_mtime_ns):
        return Outcome(cand, INDEXED)
    if not ready:
        unsettled = settle_problem(st.st_mtime_ns, now_ns, settle_ns)
        if unsettled:  # the stat seen now: a second look compares with it
            return Outcome(replace(cand, lstat=Stat.of(st)), DEFERRED, unsettled)
    return parsed, st


FUTURE = "mtime in the future; read once it stays unchanged for settle_seconds"


def settle_problem(mtime_ns: int, now_ns: int, settle_ns: int) -> str | None:
    """Why a file not known to be complete must wait (the settle rule), or None.

    A future mtime (clock skew, NFS) says nothing about age: such a file is read only once it
    has been seen unchanged for ``settle_seconds`` (``FUTURE``; the caller watches it).
    """
    age = now_ns - mtime_ns
    if age < 0:
        return FUTURE
    if age < settle_ns:
        return "younger than settle_seconds; left for later"
    return None


def _kind_problem(st: Stat | os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "symbolic link: not followed (copy the file itself into the folder)"
    if stat.S_ISDIR(st.st_mode):
        return "subfolder: watched folders are not recursive"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def read(cand: Candidate, name: ParsedName, st: Stat | os.stat_result) -> Outcome:
    """Read and hash one file that ``classify`` found new (thread-safe: only its own fds)."""
    try:
        fd = open_source(cand.path)
    except FileNotFoundError:
        return Outcome(cand, IGNORED, "vanished before it could be read")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Outcome(cand, ERROR, "symbolic link: not followed")
        return Outcome(cand, ERROR, f"cannot open: {exc.strerror}")
    try:
        before = os.fstat(fd)
        if (before.st_ino, before.st_dev) != (st.st_ino, st.st_dev):
            return Outcome(cand, DEFERRED, "replaced while being read; will retry")
        digest, content, size = _hash(fd, before.st_size)
        after = os.fstat(fd)
    except OSError as exc:
        return Outcome(cand, ERROR, f"read failed: {exc.strerror}")
    finally:
        os.close(fd)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or (
        size != after.st_size
    ):
        return Outcome(cand, DEFERRED, "changed while being read; will retry")
    source = Source(
        stage=cand.role.stage,
        kind=cand.role.kind,
        relpath=cand.relpath,
        task_id=name.task_id,
        version=name.version,
        mtime_ns=after.st_mtime_ns,
        size=size,
        sha256=digest,
    )
    return Outcome(cand, NEW, source=source, content=content)


def _hash(fd: int, size_hint: int) -> tuple[str, bytes | None, int]:
    """SHA-256 of the file; the bytes too when small (so they are read once)."""
    digest = hashlib.sha256()
    if size_hint <= IN_MEMORY_MAX:
        # Reads sized to the file: os.read allocates what it is asked for, and a megabyte
        # per small file (shrunk after) leaves the I/O threads' malloc arenas fragmented.
        parts = []
        want = size_hint + 1  # one more byte: a file that grew since its stat is noticed
        while chunk := os.read(fd, want):
            parts.append(chunk)
            if len(chunk) < want:  # a short read of a regular file is its end: no read of 0
                break  # bytes (the fstat after the read still catches a file that grew)
            want = TAIL_READ
        content = b"".join(parts)
        if len(content) <= IN_MEMORY_MAX:
            digest.update(content)
            return digest.hexdigest(), content, len(content)
        digest.update(content)
        return digest.hexdigest(), None, len(content)
    size = 0
    while chunk := os.read(fd, CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), None, size

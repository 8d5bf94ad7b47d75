"""Reading the task and template tables from the data root (I/O; parsing is ``core.tasks``).

The pipeline rewrites ``2_tasks/*.csv`` in place with pandas (not atomically), so a read can
see a half-written file; such reads are retried and otherwise replaced by the last good copy.
Read-only: files are opened for reading only, never written or locked.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from docwatch.core.layout import TASKS_DIR
from docwatch.core.tasks import (
    TABLE_COLUMNS,
    TABLE_FILES,
    DictBuilder,
    Table,
    TaskTables,
    parse_lines,
    split_lines,
    tables_digest,
)
from docwatch.ingest.tablestore import DiskBuilder
from docwatch.store.sourcefiles import open_source, sha256_of

Signature = tuple[int, int, int]  # size, mtime_ns, inode
#: Bytes read at a time from a table file (a big table is never held whole).
READ_CHUNK = 1 << 20


class _Read(NamedTuple):
    rows: Table | None  # None: bad read
    reason: str | None
    sig: Signature | None  # the stat before reading; None when missing
    retry: bool = False  # worth reading again soon (the file may be mid-write)
    sha256: str | None = None  # of the bytes parsed; None when missing or bad


def _signature(path: str | Path) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"


class TaskTableReader:
    """Loads the tables from a data root, keeping the last good copy of each file.

    Read-only: files are opened for reading only, never written or locked.
    """

    def __init__(
        self,
        data_root: Path,
        log: logging.Logger | None = None,
        retries: int = 3,
        retry_delay: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.data_root = Path(data_root)
        self.log = log or logging.getLogger(__name__)
        self.retries = max(0, retries)
        self.retry_delay = retry_delay
        self.sleep = sleep
        self.problems: list[str] = []
        self._good: dict[str, Table] = {}
        self._good_sha: dict[str, str] = {}
        self._sigs: dict[str, Signature | None] | None = None  # None: never loaded
        #: The files as strings, joined once: every batch asks whether one changed, and
        #: pathlib's joins cost 5 × the seven stats (bench/README.md, "Twenty-third pass").
        self._stat_paths = [(name, os.fspath(path)) for name, path in self.paths().items()]

    def paths(self) -> dict[str, Path]:
        """Each table's file path, by TaskTables field name."""
        return {
            name: self.data_root / folder / filename
            for name, (folder, filename, _) in TABLE_FILES.items()
        }

    def signatures(self) -> dict[str, Signature | None]:
        """Each table file's (size, mtime_ns, inode) now, None when missing."""
        return {name: _signature(path) for name, path in self._stat_paths}

    def changed(self) -> bool:
        """Whether any table file differs (size, mtime, inode, presence) from the last load."""
        return self._sigs is None or self.signatures() != self._sigs

    def load(self) -> TaskTables:
        """Read every table; a bad read keeps the previous good table and is in ``problems``."""
        problems: list[str] = []
        sigs: dict[str, Signature | None] = {}
        tables: dict[str, Table] = {}
        shas: dict[str, str | None] = {}
        for name, path in self.paths().items():
            folder, _, key = TABLE_FILES[name]
            result = self._read_with_retries(
                path, key, needs_final_newline=folder == TASKS_DIR, columns=TABLE_COLUMNS.get(name)
            )
            sigs[name] = result.sig
            if result.rows is not None:
                if result.sig is None:
                    self.log.debug("%s: missing; using an empty table", path)
                    self._good.pop(name, None)
                    self._good_sha.pop(name, None)
                else:
                    self._good[name] = result.rows
                    self._good_sha[name] = result.sha256
                tables[name] = result.rows
                shas[name] = result.sha256
            else:
                kept = self._good.get(name, {})
                message = (
                    f"{path}: {result.reason}; keeping the last good copy ({len(kept)} rows) "
                    "and retrying on the next change"
                )
                problems.append(message)
                self.log.warning("%s", message)
                tables[name] = kept
                shas[name] = self._good_sha.get(name)
        self.problems = problems
        self._sigs = sigs
        return TaskTables(**tables, digest=tables_digest(shas))

    def peek_digest(self) -> str | None:
        """The digest ``load`` would give if every file parses, from the bytes alone (no
        parsing, nothing kept); None when a file cannot be read whole right now."""
        shas: dict[str, str | None] = {}
        for name, path in self.paths().items():
            try:
                shas[name] = sha256_of(path)
            except FileNotFoundError:
                shas[name] = None
            except OSError:
                return None
        return tables_digest(shas)

    def _read_with_retries(
        self, path: Path, key: str, *, needs_final_newline: bool, columns: tuple[str, ...] | None
    ) -> _Read:
        result = self._read_once(path, key, needs_final_newline, columns)
        for _ in range(self.retries):
            if not result.retry:
                break
            self.sleep(self.retry_delay)
            result = self._read_once(path, key, needs_final_newline, columns)
        return result

    @staticmethod
    def _read_once(
        path: Path, key: str, needs_final_newline: bool, columns: tuple[str, ...] | None
    ) -> _Read:
        try:
            before = path.stat()
        except FileNotFoundError:
            return _Read({}, None, None)
        except OSError as exc:
            return _Read(None, f"cannot stat ({_describe(exc)})", None)
        sig = (before.st_size, before.st_mtime_ns, before.st_ino)
        try:
            fd = open_source(path)
        except FileNotFoundError:
            return _Read({}, None, None)
        except OSError as exc:
            return _Read(None, f"unreadable ({_describe(exc)})", sig)
        passes: list[_FileLines] = []

        def lines() -> Iterator[str]:
            passes.append(_FileLines(fd))
            return iter(passes[-1])

        try:
            parsed = parse_lines(
                lines,
                key,
                needs_final_newline=needs_final_newline,
                columns=columns,
                builder=DictBuilder if columns is None else DiskBuilder,  # task tables: on disk
            )
        except UnicodeDecodeError as exc:
            return _Read(None, f"not UTF-8 ({exc.reason} near byte {exc.start})", sig, retry=True)
        except OSError as exc:
            return _Read(None, f"unreadable ({_describe(exc)})", sig)
        finally:
            os.close(fd)
        read = passes[-1]
        if _signature(path) != sig or (not isinstance(parsed, str) and read.size != before.st_size):
            return _Read(None, "changed while being read", sig, retry=True)
        if isinstance(parsed, str):
            return _Read(None, parsed, sig, retry=True)
        return _Read(parsed, None, sig, sha256=read.sha256.hexdigest())


class _FileLines:
    """The lines of a table file read a chunk at a time from its start (``newline=""``
    splitting, UTF-8 with or without a BOM), hashing the bytes as they go by."""

    def __init__(self, fd: int, chunk: int = READ_CHUNK) -> None:
        self.fd = fd
        self.chunk = chunk
        self.sha256 = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8-sig")()
        carry = ""
        os.lseek(self.fd, 0, os.SEEK_SET)
        while True:
            chunk = os.read(self.fd, self.chunk)
            self.sha256.update(chunk)
            try:
                text = carry + decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                exc.start += self.size  # where in the file, give or take a split character
                raise
            self.size += len(chunk)
            if not chunk:
                yield from split_lines(text)
                return
            # A line ends at the last \n or \r, unless a \r ends the chunk (\r\n may be split).
            cut = max(text.rfind("\n"), text.rfind("\r", 0, len(text) - 1)) + 1
            carry = text[cut:]
            yield from split_lines(text[:cut])

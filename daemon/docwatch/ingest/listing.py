"""Listing the legacy folders against the ledger, streaming, in task order.

Memory stays flat in the size of the tree: a folder's names are sorted in bounded runs
(``sortedruns``) and merge-joined with the ledger's rows of that folder (read in order), so
a file already ingested with the same size and mtime costs one ``lstat`` and is only
counted; what is left (new or changed files) is sorted by task the same way and merged
across a stage's folders, so the files of one task arrive together and a scan can cut
batches without splitting a task.  Nothing holds the whole tree, nor a whole folder.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from docwatch.core.layout import KINDS, STAGES, FolderRole, folder_roles, parse_name
from docwatch.ingest.sortedruns import sorted_names
from docwatch.ingest.sources import Candidate

log = logging.getLogger("docwatch.sources")

#: Ledger rows of one folder: (relpath, seen_size, seen_mtime_ns, …), ordered by relpath.
#: The whole relpath, not the name: SQLite's ``substr`` cost more per row (0.37 µs) than the
#: merge's own ``prefix + name`` (bench/README.md, "Twenty-second pass").
LedgerRows = Callable[[str], Iterable[Sequence]]
_KIND_ORDER = {k: i for i, k in enumerate(KINDS)}


def _open_folder(data_root: Path, role: FolderRole) -> int | None:
    """A read-only descriptor of a watched folder (None when it is missing or unreadable, which
    is logged): its names and stats are read relative to it, one path component each."""
    folder = data_root / role.folder
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:  # unreadable folder: say so, keep going with the others
        _cannot_list(folder, exc)
        return None


def _cannot_list(folder: Path, exc: OSError) -> None:
    log.error(
        "%s: cannot list the folder (%s); its files are not indexed until fixed",
        folder,
        exc.strerror,
    )


def entry_names(folder: int | Path) -> Iterator[str]:
    """The names in a directory (a path or a descriptor), in the directory's order."""
    with os.scandir(folder) as it:
        for entry in it:
            yield entry.name


def _entries(data_root: Path, role: FolderRole, fd: int) -> Iterator[str]:
    """The names in a watched folder (an error is logged; what was read is kept)."""
    try:
        yield from entry_names(fd)
    except OSError as exc:
        _cannot_list(data_root / role.folder, exc)


def unknown_names(
    data_root: Path,
    role: FolderRole,
    ledger: LedgerRows | None,
    counts: Counter,
) -> Iterator[str]:
    """Names of one folder that are not in the ledger with their current size and mtime, by
    name; known ones are counted as ``indexed``.  Streamed: the folder's names are sorted in
    bounded runs (``sortedruns``) and merge-joined with the ledger's rows of the folder."""
    fd = _open_folder(data_root, role)
    if fd is None:
        return
    try:
        names = sorted_names(_entries(data_root, role, fd))
        if ledger is None:
            yield from names
        else:
            yield from _merge_with_ledger(names, role, ledger(role.folder), fd, counts)
    finally:
        os.close(fd)


def _merge_with_ledger(
    names: Iterable[str],
    role: FolderRole,
    ledger_rows: Iterable[Sequence],
    fd: int,
    counts: Counter,
) -> Iterator[str]:
    """The names the ledger does not know with their current stat (both sides sorted: the
    names, and the rows by relpath, the folder's ``role.folder/`` before each name; a name has
    one ledger row per version of its bytes)."""
    rows = iter(ledger_rows)
    row = next(rows, None)
    indexed = 0
    lstat, is_file = os.lstat, stat.S_ISREG
    prefix = f"{role.folder}/"
    for name in names:
        relpath = prefix + name
        while row is not None and row[0] < relpath:
            row = next(rows, None)
        if row is None or row[0] != relpath:
            yield name
            continue
        size, mtime_ns = row[1], row[2]
        more: list | None = None  # the name's other versions (rare: most names have one)
        row = next(rows, None)
        while row is not None and row[0] == relpath:
            more = more or []
            more.append((row[1], row[2]))
            row = next(rows, None)
        try:
            st = lstat(name, dir_fd=fd)
        except OSError:
            yield name  # vanished or unreadable: the probe says which
            continue
        if is_file(st.st_mode) and (
            (st.st_size == size and st.st_mtime_ns == mtime_ns)
            or (more is not None and (st.st_size, st.st_mtime_ns) in more)
        ):
            indexed += 1
        else:
            yield name
    counts[(role.stage, "indexed")] += indexed


def _task_of(name: str) -> str:
    """The task a file name belongs to (a name that does not parse is its own task)."""
    parsed = parse_name(name)
    return name if isinstance(parsed, str) else parsed.task_id


def _by_task(name: str) -> tuple[str, str]:
    return (_task_of(name), name)


def _of_task(item: tuple[FolderRole, str]) -> str:
    return _task_of(item[1])


def stage_candidates(
    data_root: Path,
    roles: list[FolderRole],
    ledger: LedgerRows | None,
    counts: Counter,
) -> Iterator[Candidate]:
    """The new or changed files of one stage's folders, a task's files together (prompt,
    raw, parsed: folders in kind order, and the merge keeps that order for equal tasks).
    Each folder's names are sorted by task in bounded runs (``sortedruns``)."""
    streams = []
    for role in sorted(roles, key=lambda r: (_KIND_ORDER[r.kind], r.folder)):
        names = sorted_names(unknown_names(data_root, role, ledger, counts), key=_by_task)
        streams.append(zip(itertools.repeat(role), names))
    folder_of = {role.folder: data_root / role.folder for role in roles}  # one join a file
    for role, name in heapq.merge(*streams, key=_of_task):
        yield Candidate(folder_of[role.folder] / name, role, f"{role.folder}/{name}")


def listing(
    data_root: Path,
    folders: dict,
    stages: Iterable[str],
    ledger: LedgerRows | None = None,
    counts: Counter | None = None,
) -> Iterator[Candidate]:
    """Every new or changed file of the selected stages, stage by stage, a task's files
    together; without ``ledger`` every file.  ``counts`` gets (stage, "indexed") counts."""
    counts = Counter() if counts is None else counts
    wanted = set(stages)
    for stage in STAGES:
        if stage in wanted:
            roles = [r for r in folder_roles(folders) if r.stage == stage]
            yield from stage_candidates(data_root, roles, ledger, counts)


def count_entries(data_root: Path, folders: dict, stages: Iterable[str]) -> int:
    """How many entries the selected folders hold (for a progress bar; names not kept)."""
    total = 0
    wanted = set(stages)
    for role in folder_roles(folders):
        if role.stage in wanted:
            try:
                with os.scandir(data_root / role.folder) as it:
                    total += sum(1 for _ in it)
            except OSError:
                continue
    return total


def not_listed(ids: Iterable[str], names: Iterable[str], page: int = 1000) -> list[str]:
    """The ``ids`` not among ``names`` (both sorted, ids unique; both streamed). Pages of ids
    that are all there, the usual case, are compared to as many names at once, in C."""
    absent: list[str] = []
    ids, names = iter(ids), iter(names)
    ahead: list[str] = []  # names read, not yet passed: ahead[i:]
    i = 0
    while chunk := list(itertools.islice(ids, page)):
        if len(ahead) - i < len(chunk):
            ahead = ahead[i:] + list(itertools.islice(names, len(chunk) + page))
            i = 0
        if chunk == ahead[i : i + len(chunk)]:
            i += len(chunk)
            continue
        for name in chunk:
            while True:
                if i == len(ahead):  # refill before comparing, also when a match used it up
                    ahead, i = list(itertools.islice(names, page)), 0
                if i == len(ahead) or ahead[i] >= name:
                    break
                i += 1
            if i < len(ahead) and ahead[i] == name:
                i += 1
            else:
                absent.append(name)
    return absent


def task_batches(cands: Iterable[Candidate], size: int) -> Iterator[list[Candidate]]:
    """Cut a task-ordered stream into batches of about ``size`` files, never splitting a task."""
    batch: list[Candidate] = []
    last_task = None
    for c in cands:
        task = c.task
        if len(batch) >= size and task != last_task:
            yield batch
            batch = []
        batch.append(c)
        last_task = task
    if batch:
        yield batch

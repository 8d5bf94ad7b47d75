"""Listing the legacy folders against the ledger, streaming, in task order.

Memory stays flat in the size of the tree: a folder's names are sorted and merge-joined with
the ledger's rows of that folder (read in ordered pages), so a file already ingested with the
same size and mtime costs one ``lstat`` and is only counted; what is left (new or changed
files) is merged across a stage's folders by task, so the files of one task arrive together
and a scan can cut batches without splitting a task.  Nothing holds the whole tree.
"""

from __future__ import annotations

import heapq
import logging
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from docwatch.core.layout import KINDS, STAGES, FolderRole, folder_roles, parse_name
from docwatch.ingest.sources import Candidate

log = logging.getLogger("docwatch.sources")

#: Ledger rows of one folder: (relpath, seen_size, seen_mtime_ns), ordered by relpath.
LedgerRows = Callable[[str], Iterable[tuple[str, int, int]]]
_KIND_ORDER = {k: i for i, k in enumerate(KINDS)}


def folder_names(data_root: Path, role: FolderRole) -> list[str]:
    """The entries of one watched folder, sorted (a missing folder has none)."""
    folder = data_root / role.folder
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:  # unreadable folder: say so, keep going with the others
        log.error(
            "%s: cannot list the folder (%s); its files are not indexed until fixed",
            folder,
            exc.strerror,
        )
        return []
    names.sort()
    return names


def unknown_names(
    data_root: Path,
    role: FolderRole,
    ledger: LedgerRows | None,
    counts: Counter,
) -> list[str]:
    """Names of one folder that are not in the ledger with their current size and mtime
    (sorted by name); known ones are counted as ``indexed``, noise as ``ignored``."""
    names = folder_names(data_root, role)
    if ledger is None:
        return names
    folder = os.path.join(data_root, role.folder)
    rows = iter(ledger(role.folder))
    row = next(rows, None)
    out = []
    prefix = role.folder + "/"
    for name in names:
        relpath = prefix + name
        while row is not None and row[0] < relpath:
            row = next(rows, None)
        seen = []
        while row is not None and row[0] == relpath:
            seen.append((row[1], row[2]))
            row = next(rows, None)
        if seen:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                out.append(name)  # vanished or unreadable: the probe says which
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) in seen:
                counts[(role.stage, "indexed")] += 1
                continue
        out.append(name)
    return out


def _task_key(role: FolderRole, name: str) -> tuple[str, int, str, str]:
    parsed = parse_name(name)
    task = name if isinstance(parsed, str) else parsed.task_id
    return (task, _KIND_ORDER[role.kind], role.folder, name)


def stage_candidates(
    data_root: Path,
    roles: list[FolderRole],
    ledger: LedgerRows | None,
    counts: Counter,
) -> Iterator[Candidate]:
    """The new or changed files of one stage's folders, a task's files together."""
    streams = []
    by_folder = {role.folder: role for role in roles}
    for role in roles:
        names = unknown_names(data_root, role, ledger, counts)
        streams.append(sorted(_task_key(role, n) for n in names))
        del names
    for _, _, folder, name in heapq.merge(*streams):
        role = by_folder[folder]
        yield Candidate(data_root / folder / name, role, f"{folder}/{name}")


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

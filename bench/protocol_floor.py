"""The kernel's and the disk's share of a scan: docwatch's durable protocol with no docwatch.

Replays, for every document directory of a scan's docs tree, the file-system calls and flushes
the SPEC's "durable before visible" protocol makes, a batch at a time, and nothing else: no
hashing, no planning, no JSON, no SQLite.

    per batch (about --batch-files source files, as the scan's batches)
      mkdir    the batch's staging directory
      per document: mkdir its staged directory; per file: read the bytes (O_NOATIME), create
               the copy (O_EXCL), write, close             (on --threads threads, as docwatch)
      syncfs   the staged files
      append + fsync   the intents (~100 bytes a document: SQLite's WAL commit)
      rename   each staged directory into <out>/<stage>/<doc_id>
      syncfs   the renames
      append + fsync   the rows (~300 bytes a document)
      rmdir    the batch's staging directory

With ``--stage-ahead`` (and ``--index``) one other process stages each batch, as docwatch's
staging helper does, and starts on the next batch as soon as this one is staged, while this
one syncs, commits its intents, renames and commits its rows: the floor of a scan that plans
its next batch before this one's rows exist (bench/README.md, "Nineteenth pass").

With ``--index DB`` (the scan's own index, read only) the two appends are the real index's work
instead (``bench/index_replay.py``): the scan's rows, in the order the scan wrote them, go into
a new SQLite index of the same schema (WAL, ``synchronous = FULL``, as docwatch opens it), one
transaction for the batch's intents and one for its share of the rows (sources, tasks,
documents, attempts, the intents deleted), up to 128 rows a statement, whose statements run
while the renames and their ``syncfs`` run on a thread, as docwatch runs them; the commit comes
after both. The rows are read before the clock starts.

The sources' copies are read from the scan's own docs tree, and each ``metadata.json`` is written
at its size without a read (docwatch writes it from memory): the same inodes and bytes as the
scan made.  What this takes is a
floor for ``docwatch scan`` on the same machine in the same state: every call here is one the
protocol needs, and the Python around each is a few microseconds against the kernel's tens.
Prints one JSON line.  Stdlib only.

    .venv/bin/python bench/protocol_floor.py OUT/scan_copy/docs OUT/protocol
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import json
import os
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from index_replay import IndexReplay

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
O_NOATIME = getattr(os, "O_NOATIME", 0)
INTENT_BYTES, ROW_BYTES = 100, 300
METADATA = "metadata.json"


PHASES = ("stage", "sync_staged", "intents_fsync", "rename", "sync_renames", "rows_fsync")
INDEX_PHASES = ("stage", "sync_staged", "intents_commit", "rows_beside_publish", "rows_commit")


class Clock:
    """Adds the time since the last lap to ``phases[name]``."""

    def __init__(self, phases: dict) -> None:
        self.phases, self.last = phases, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] += now - self.last
        self.last = now


def documents(docs: Path) -> list[tuple[str, str, list[str], int]]:
    """(stage, doc_id, file names, metadata.json's size) of every document directory, in a
    stable order (read before the clock starts)."""
    out = []
    for stage in sorted(p.name for p in docs.iterdir() if p.is_dir() and p.name != ".tmp"):
        for doc_id in sorted(os.listdir(docs / stage)):
            names = sorted(os.listdir(docs / stage / doc_id))
            meta = docs / stage / doc_id / METADATA
            out.append((stage, doc_id, names, meta.stat().st_size if METADATA in names else 0))
    return out


def batches(docs: list, batch_files: int) -> list[list]:
    """Groups of documents holding about ``batch_files`` source files (not metadata.json)."""
    out, current, count = [], [], 0
    for doc in docs:
        current.append(doc)
        count += len(doc[2]) - (METADATA in doc[2])
        if count >= batch_files:
            out.append(current)
            current, count = [], 0
    return out + ([current] if current else [])


def syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), f"syncfs {path}")
    finally:
        os.close(fd)


def copy(src: str, dst: str) -> int:
    fd = os.open(src, os.O_RDONLY | O_NOATIME)
    try:
        data = os.read(fd, os.fstat(fd).st_size + 1)
    finally:
        os.close(fd)
    return create(dst, data)


def create(dst: str, data: bytes) -> int:
    out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(out, data)
    finally:
        os.close(out)
    return len(data)


def stage(src_docs: str, root: str, doc: tuple[str, str, list[str], int]) -> int:
    """One document: its directory, a copy of each source, a ``metadata.json`` of its size
    (docwatch writes that one from memory: it is not read here either)."""
    stage_name, doc_id, names, meta_size = doc
    os.mkdir(f"{root}/{doc_id}", 0o755)
    written = 0
    for n in names:
        dst = f"{root}/{doc_id}/{n}"
        if n == METADATA:
            written += create(dst, b"{" * meta_size)
        else:
            written += copy(f"{src_docs}/{stage_name}/{doc_id}/{n}", dst)
    return written


def append_and_fsync(fd: int, size: int) -> None:
    os.write(fd, b"x" * size)
    os.fsync(fd)


def rename_into_place(base: str, out: Path, group: list) -> None:
    """A batch's staged directories renamed into ``<out>/<stage>/<doc_id>``."""
    for stage_name, doc_id, *_ in group:
        os.rename(f"{base}/{doc_id}", f"{out}/{stage_name}/{doc_id}")


def publish(base: str, out: Path, group: list) -> None:
    """The renames into place and their ``syncfs`` (one step: it runs beside the rows)."""
    rename_into_place(base, out, group)
    syncfs(out)


def layout(src_docs: Path, out: Path, batch_files: int) -> tuple[list, list, Path]:
    """The scan's documents, its batches, and the replay's staging and stage folders made."""
    docs = documents(src_docs)
    staging = out / ".tmp" / "floor"
    staging.mkdir(parents=True)
    for stage_name in {d[0] for d in docs}:
        (out / stage_name).mkdir()
    return docs, batches(docs, batch_files), staging


def result(
    started: float, docs: list, nbytes: int, groups: list, phases: dict, index, **how
) -> dict:
    """A replay's JSON line: its own clock, what it wrote, and its steps' seconds."""
    return {
        "seconds": time.perf_counter() - started,
        "documents": len(docs),
        "files": sum(len(d[2]) for d in docs),
        "bytes": nbytes,
        "batches": len(groups),
        **how,
        "index_rows": {t: len(r) for t, r in index.rows.items()} if index else None,
        "phases_s": {k: round(v, 4) for k, v in phases.items()},
    }


def replay(
    src_docs: Path, out: Path, batch_files: int, threads: int, scan_db: Path | None = None
) -> dict:
    docs, groups, staging = layout(src_docs, out, batch_files)
    index = IndexReplay(scan_db, out / "index.sqlite", len(groups)) if scan_db else None
    wal = os.open(out / "wal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    phases = dict.fromkeys(INDEX_PHASES if index else PHASES, 0.0)
    nbytes, started = 0, time.perf_counter()
    try:
        for i, group in enumerate(groups):
            clock = Clock(phases)
            root = staging / uuid.uuid4().hex
            root.mkdir(0o755)
            src, base = os.fspath(src_docs), os.fspath(root)
            if pool is None:
                nbytes += sum(stage(src, base, d) for d in group)
            else:
                nbytes += sum(pool.map(functools.partial(stage, src, base), group, chunksize=16))
            clock.lap("stage")
            syncfs(out)
            clock.lap("sync_staged")
            if index is not None:
                replay_index(index, i, group, base, out, pool, clock)
                root.rmdir()
                continue
            append_and_fsync(wal, INTENT_BYTES * len(group))
            clock.lap("intents_fsync")
            rename_into_place(base, out, group)
            clock.lap("rename")
            syncfs(out)
            clock.lap("sync_renames")
            append_and_fsync(wal, ROW_BYTES * len(group))
            root.rmdir()
            clock.lap("rows_fsync")
    finally:
        os.close(wal)
        if pool is not None:
            pool.shutdown()
        if index is not None:
            index.close()
    return result(started, docs, nbytes, groups, phases, index, threads=threads)


def stage_batch(src_docs: str, base: str, group: list) -> int:
    """A batch staged in one call (in the staging process of ``--stage-ahead``)."""
    os.mkdir(base, 0o755)
    return sum(stage(src_docs, base, d) for d in group)


def replay_staged_ahead(src_docs: Path, out: Path, batch_files: int, scan_db: Path) -> dict:
    """``replay`` with ``--index``, each batch staged by another process while the batch
    before it syncs and commits."""
    docs, groups, staging = layout(src_docs, out, batch_files)
    index = IndexReplay(scan_db, out / "index.sqlite", len(groups))
    bases = [os.fspath(staging / uuid.uuid4().hex) for _ in groups]
    src, phases = os.fspath(src_docs), dict.fromkeys(INDEX_PHASES, 0.0)
    pool = ThreadPoolExecutor(1)
    stager = ProcessPoolExecutor(1)
    stager.submit(int).result()  # started before the clock, as the scan's helper is
    nbytes, started = 0, time.perf_counter()
    try:
        staging_next = stager.submit(stage_batch, src, bases[0], groups[0])
        for i, group in enumerate(groups):
            clock = Clock(phases)
            nbytes += staging_next.result()
            if i + 1 < len(groups):
                staging_next = stager.submit(stage_batch, src, bases[i + 1], groups[i + 1])
            clock.lap("stage")
            syncfs(out)
            clock.lap("sync_staged")
            replay_index(index, i, group, bases[i], out, pool, clock)
            os.rmdir(bases[i])
    finally:
        pool.shutdown()
        stager.shutdown()
        index.close()
    return result(started, docs, nbytes, groups, phases, index, stage_ahead=True)


def replay_index(
    index: IndexReplay, i: int, group: list, base: str, out: Path, pool, clock: Clock
) -> None:
    """A batch's index work as docwatch orders it: the intents committed, then the rows'
    statements beside the renames and their sync, then the commit."""
    index.put_intents(group)
    clock.lap("intents_commit")
    publishing = pool.submit(publish, base, out, group) if pool is not None else None
    index.put_rows(i, group)
    if publishing is None:
        publish(base, out, group)
    else:
        publishing.result()
    clock.lap("rows_beside_publish")
    index.commit()
    clock.lap("rows_commit")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("docs", type=Path, help="a scan's docs tree (read only)")
    ap.add_argument("out", type=Path, help="a new directory for the replayed documents")
    ap.add_argument("--batch-files", type=int, default=2000, help="as batch_max_files")
    ap.add_argument(
        "--threads",
        type=int,
        default=min(4, len(os.sched_getaffinity(0))),
        help="staging threads (default: docwatch's io_threads 'auto')",
    )
    ap.add_argument(
        "--index",
        type=Path,
        metavar="DB",
        help="the scan's index (read only): write its rows as docwatch does, not the appends",
    )
    ap.add_argument(
        "--stage-ahead",
        action="store_true",
        help="stage each batch in another process while the one before it commits (--index)",
    )
    a = ap.parse_args(argv)
    if a.out.exists():
        ap.error(f"{a.out} exists: the replay writes into a new directory")
    if a.index is not None and not a.index.is_file():
        ap.error(f"{a.index}: no index file here (give the scan's documents.sqlite)")
    if a.stage_ahead and a.index is None:
        ap.error("--stage-ahead replays the index's work too: give --index")
    if a.stage_ahead:
        print(json.dumps(replay_staged_ahead(a.docs, a.out, a.batch_files, a.index)))
    else:
        print(json.dumps(replay(a.docs, a.out, a.batch_files, a.threads, a.index)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

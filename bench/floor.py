"""The physical floor under docwatch's figures, measured on this machine: what the kernel and
the disk cost for the operations a document needs, with no docwatch code in the way.

    file create   open(O_CREAT|O_EXCL) + write 4 KiB + close, in fresh directories
    create after  the same, right after deleting as many files (ext4 without a journal skips,
     deleting    testing each, the inodes freed in the last 60-300 s: a burst of creations
                  after a deletion pays for it; with a journal this costs nothing extra)
    mkdir         one directory per document
    rename        a staged directory into place
    syncfs        after a batch of N document-sized writes (the flush docwatch pays per batch)
    fsync         appending 100 bytes and fsync (SQLite's commit in WAL mode, synchronous=FULL)
    batch flush   staging k documents (a directory and 3 files of 2 KiB each) and making them
                  durable: one syncfs (what docwatch does), or an fsync of every file and
                  directory (what a small batch might do instead), for k = 4 and 64
    inotify       events delivered to a watchdog observer per second for files closed in a
                  watched folder by 4 writer threads (docwatch's event path, without docwatch)
    event path    CPU per file of docwatch's own event path (watchdog's observer with the
                  daemon's mask, renames unpaired, and its handler, into its queue, drained),
                  while a separate writer process writes the pipeline's way (2 of 3 files
                  renamed into place, 1 of 3 written in place): what the live path spends
                  before any ingest, mostly under the GIL; and the same with watchdog's own
                  observer, which pairs renames (the daemon's event path before the tenth pass)

Each is measured ``--rounds`` times on the filesystem of ``--dir`` (default: bench/out, the tree's
own filesystem) and reported as median (min–max).  From them: the floor of a scan (per source
file: its share of the 5 inodes of a document — directory, raw, parsed, prompt, metadata.json —
plus reading it) and of live throughput.  Stdlib, watchdog and docwatch's event handler.

    .venv/bin/python bench/floor.py
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from host import fs_type, rmtree  # noqa: E402

_libc = ctypes.CDLL(None, use_errno=True)
DATA = os.urandom(4096)


def files_created(base: Path, n: int) -> float:
    """Seconds per file: create + write 4 KiB + close, 3 files per directory like a document."""
    start = time.perf_counter()
    for i in range(0, n, 3):
        d = base / f"d{i}"
        d.mkdir()
        for name in ("raw.txt", "parsed.txt", "metadata.json"):
            fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, DATA)
            os.close(fd)
    elapsed = time.perf_counter() - start
    return elapsed / n


def files_created_after_delete(base: Path, n: int) -> float:
    """Seconds per file, as ``files_created``, right after as many files were deleted."""
    gone = base / "gone"
    gone.mkdir()
    files_created(gone, n)
    os.sync()
    rmtree(gone)
    after = base / "after-delete"
    after.mkdir()
    return files_created(after, n)


def dirs_made(base: Path, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        (base / f"m{i}").mkdir()
    return (time.perf_counter() - start) / n


def renames(base: Path, n: int) -> float:
    src, dst = base / "staging", base / "docs"
    src.mkdir()
    dst.mkdir()
    for i in range(n):
        (src / f"r{i}").mkdir()
    start = time.perf_counter()
    for i in range(n):
        os.rename(src / f"r{i}", dst / f"r{i}")
    return (time.perf_counter() - start) / n


def syncfs_after(base: Path, n: int) -> float:
    """Seconds of one syncfs after writing ``n`` 4 KiB files (a batch's staged documents)."""
    d = base / f"sync{n}"
    d.mkdir()
    for i in range(n):
        fd = os.open(d / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, DATA)
        os.close(fd)
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        start = time.perf_counter()
        _libc.syncfs(fd)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def fsyncs(base: Path, n: int) -> float:
    fd = os.open(base / "wal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        start = time.perf_counter()
        for _ in range(n):
            os.write(fd, b"x" * 100)
            os.fsync(fd)
        return (time.perf_counter() - start) / n
    finally:
        os.close(fd)


def batch_flush(base: Path, k: int, *, each: bool) -> float:
    """Seconds to stage ``k`` documents and make them durable: syncfs, or fsync each."""
    from docwatch.store.docstore import fsync_dir, sync_filesystem

    root = base / f"batch-{k}-{'each' if each else 'syncfs'}-{time.monotonic_ns()}"
    start = time.perf_counter()
    root.mkdir()
    for i in range(k):
        d = root / f"d{i}"
        d.mkdir()
        for name in ("raw.txt", "parsed.txt", "metadata.json"):
            fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, DATA[:2048])
            if each:
                os.fsync(fd)
            os.close(fd)
        if each:
            fsync_dir(d)
    if each:
        fsync_dir(root)
        fsync_dir(base)
    else:
        sync_filesystem(base)
    return time.perf_counter() - start


def inotify_rate(base: Path, n: int) -> float:
    """Close events per second through a watchdog observer, 4 writer threads."""
    from watchdog.events import FileClosedEvent, FileSystemEventHandler
    from watchdog.observers.inotify import InotifyObserver

    folder = base / "watched"
    folder.mkdir()
    seen = threading.Event()
    count = [0]

    class Counter(FileSystemEventHandler):
        def on_closed(self, event):
            count[0] += 1
            if count[0] >= n:
                seen.set()

    obs = InotifyObserver()
    obs.schedule(Counter(), str(folder), recursive=False, event_filter=[FileClosedEvent])
    obs.start()
    try:

        def write(k: int) -> None:
            for i in range(k, n, 4):
                with open(folder / f"f{i}", "wb") as f:
                    f.write(b"x")

        start = time.perf_counter()
        threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seen.wait(60)
        return count[0] / (time.perf_counter() - start)
    finally:
        obs.stop()
        obs.join()


#: The writer of ``event_path_cpu``: its own process, so that its CPU is not counted.
WRITER = """
import os, sys
folder, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    final = os.path.join(folder, f"t{i:07d}_v1.txt")
    if i % 3 == 1:  # a raw: written in place
        with open(final, "w") as f:
            f.write("x" * 2000)
    else:  # a prompt or a parsed file: a temp file renamed into place
        with open(final + ".tmp", "w") as f:
            f.write("x" * 2000)
        os.replace(final + ".tmp", final)
"""


def event_path_cpu(base: Path, n: int, *, watchdog_pairing: bool = False) -> float:
    """Seconds of this process's CPU per file for docwatch's event path (see the docstring):
    the daemon's own ``WatchSet`` (observer, mask, renames unpaired) and handler.
    ``watchdog_pairing``: watchdog's own observer instead, which pairs renames by scanning a
    queue (as the daemon ran it before ``live/inotify.py``: no 0.5 s hold), for reference."""
    from docwatch.live.events import READY, EnqueueHandler, WatchSet
    from watchdog.observers.inotify import InotifyObserver
    from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

    folder = str(base / ("events-pairing" if watchdog_pairing else "events"))
    os.mkdir(folder)
    out: queue.SimpleQueue = queue.SimpleQueue()
    watches = WatchSet(
        [folder],
        lambda: EnqueueHandler(out, [folder], polling=False),
        polling=False,
        poll_interval=1.0,
    )
    hold = InotifyMoveEventGrouper.delay
    if watchdog_pairing:
        InotifyMoveEventGrouper.delay = 0.0
        watches._new_observer = lambda: InotifyObserver(generate_full_events=True)
    try:
        watches.start()
    finally:
        InotifyMoveEventGrouper.delay = hold  # read once, as each watch's queue is made
    try:
        cpu = time.process_time()
        writer = subprocess.Popen([sys.executable, "-c", WRITER, folder, str(n)])
        ready, deadline = set(), time.monotonic() + 120
        while len(ready) < n and time.monotonic() < deadline:
            try:
                path, kind = out.get(timeout=1)
            except queue.Empty:
                continue
            if kind == READY:
                ready.add(path)
        cpu = time.process_time() - cpu
        writer.wait(60)
        if len(ready) < n:
            raise SystemExit(f"event path: {len(ready)} of {n} files seen ready in 120 s")
        return cpu / n
    finally:
        watches.stop()


def round_measures(base: Path, files: int) -> dict:
    """One round's rows: name → a function measuring it in ``base``."""
    return {
        "file_create_us": lambda: files_created(base, files) * 1e6,
        "mkdir_us": lambda: dirs_made(base, files // 3) * 1e6,
        "rename_us": lambda: renames(base, files // 3) * 1e6,
        "syncfs_after_300_files_ms": lambda: syncfs_after(base, 300) * 1e3,
        "syncfs_idle_ms": lambda: syncfs_after(base, 0) * 1e3,
        "fsync_us": lambda: fsyncs(base, 300) * 1e6,
        "flush_4_docs_syncfs_ms": lambda: batch_flush(base, 4, each=False) * 1e3,
        "flush_4_docs_fsync_each_ms": lambda: batch_flush(base, 4, each=True) * 1e3,
        "flush_64_docs_syncfs_ms": lambda: batch_flush(base, 64, each=False) * 1e3,
        "flush_64_docs_fsync_each_ms": lambda: batch_flush(base, 64, each=True) * 1e3,
        "inotify_close_events_per_s": lambda: inotify_rate(base, files),
        "event_path_cpu_us_per_file": lambda: event_path_cpu(base, files) * 1e6,
        "event_path_watchdog_pairing_us": lambda: (
            event_path_cpu(base, files, watchdog_pairing=True) * 1e6
        ),
    }


def med(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=REPO / "bench" / "out", help="filesystem to test")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--files", type=int, default=6000, help="files per round (default 6000)")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep <dir>/floor-work (make bench removes it after the last bench: a deletion "
        "would slow the next bench's file creations on ext4 without a journal)",
    )
    args = ap.parse_args(argv)
    work = args.dir / "floor-work"
    rmtree(work)
    results: dict[str, list[float]] = {}
    # Nothing is deleted until every other row is measured: on ext4 without a journal a
    # deletion slows the creations of the next minutes (the "after deleting" rows, last).
    for r in range(args.rounds):
        base = work / f"r{r}"
        base.mkdir(parents=True)
        measures = round_measures(base, args.files)
        for key, fn in measures.items():
            os.sync()
            results.setdefault(key, []).append(fn())
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    for r in range(args.rounds):
        os.sync()
        results.setdefault("file_create_after_delete_us", []).append(
            files_created_after_delete(work / f"r{r}", args.files) * 1e6
        )
    print("file creation after deleting: done", flush=True)
    if not args.keep:
        rmtree(work)
    summary = {k: med(v) for k, v in results.items()}
    fs = fs_type(args.dir)
    print(f"\nfloor on {args.dir}, {fs} (median, min–max over {args.rounds} rounds):")
    for key, (m, lo, hi) in summary.items():
        print(f"  {key:30} {m:10.1f}   ({lo:.1f}–{hi:.1f})")
    create, mkdir = summary["file_create_us"][0], summary["mkdir_us"][0]
    per_doc = 4 * create + mkdir  # raw, parsed, prompt, metadata.json + the directory
    print(
        f"\nper document (4 files + 1 directory): {per_doc:.0f} µs of file creation alone"
        f" → at most {1e6 / per_doc:,.0f} documents/s on one core, before any read, hash,"
        " sync or commit"
    )
    after = summary["file_create_after_delete_us"][0]
    print(
        f"file creation right after deleting as many files: {after:.0f} µs, "
        f"{after / create:.1f}× a creation with no deletion before it"
    )
    events = summary["event_path_cpu_us_per_file"][0]
    pairing = summary["event_path_watchdog_pairing_us"][0]
    print(
        f"event path: {events:.0f} µs of CPU per file before any ingest"
        f" → at most {1e6 / events:,.0f} files/s if the daemon did nothing else"
        f" (watchdog's own observer, renames paired: {pairing:.0f} µs,"
        f" {pairing / events:.2f}×)"
    )
    out = args.dir / "floor.json"
    rows = {k: list(v) for k, v in summary.items()}
    out.write_text(json.dumps(rows | {"fs_type": fs_type(args.dir)}, indent=2))
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A small pool of threads for file I/O: reads and hashes, copies and writes release the GIL,
so a batch's files are read and staged side by side (the machine's cores and the disk's queue
both get work) while the plan and the commit stay on the calling thread.  Also the process
settings of long batch work: freed memory handed back, the cycle collector run less often."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Threads for file I/O, one per core up to 4 (the ``io_threads`` setting; 0: every batch on
#: the caller); a batch with fewer items than ``SERIAL_BELOW`` runs on the caller.  More
#: threads than cores only pass the GIL around: on 2 cores a scan with 2 took 8% less time
#: than with 4 (bench/README.md, "Sixth pass").  None at all took the same time for 10-15%
#: less CPU ("Ninth pass"), but right after deletions the threads were twice as fast: they
#: spread the kernel's share of file creation over the cores ("Fifth pass").
IO_THREADS_AUTO = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
IO_THREADS = IO_THREADS_AUTO
SERIAL_BELOW = 8
#: Items go to the threads in about this many chunks per thread (a future per item cost
#: more Python than the item's own work for small files).
CHUNKS_PER_THREAD = 4

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _forget_in_child() -> None:
    """A forked child has none of the parent's threads: it makes a pool of its own."""
    global _pool, _lock
    _pool, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def use_io_threads(count: int | None) -> None:
    """The ``io_threads`` setting: ``count`` threads from the next batch on (None: one per
    core, at most 4; 0: every batch on the caller).  A pool of another size is let go."""
    global IO_THREADS, _pool
    count = IO_THREADS_AUTO if count is None else count
    with _lock:
        if count == IO_THREADS:
            return
        IO_THREADS, old, _pool = count, _pool, None
    if old is not None:
        old.shutdown(wait=True)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="docwatch-io")
        return _pool


def map_io(fn: Callable[[T], R], items: Iterable[T]) -> list[R | BaseException]:
    """``fn`` over ``items`` on the I/O threads, results in order; an item's exception is
    returned in its place (the caller decides what one bad file means for its batch)."""
    return start_map_io(fn, items)()


def start_map_io(fn: Callable[[T], R], items: Iterable[T]) -> Callable[[], list[R | BaseException]]:
    """``map_io`` begun now and collected later: the items go to the I/O threads at once and
    the returned function waits for their results (in order).  With no threads, or few
    items, they run here, now."""
    items = list(items)
    if IO_THREADS == 0 or len(items) < SERIAL_BELOW:
        done = [_call(fn, item) for item in items]
        return lambda: done
    size = -(-len(items) // (IO_THREADS * CHUNKS_PER_THREAD))
    pool = _executor()
    futures = [
        pool.submit(lambda chunk: [_call(fn, item) for item in chunk], items[i : i + size])
        for i in range(0, len(items), size)
    ]

    def results() -> list[R | BaseException]:
        out: list[R | BaseException] = []
        for future in futures:
            out += future.result()
        return out

    return results


def start_io(fn: Callable[[], R]) -> Future:
    """``fn()`` on an I/O thread while the caller goes on (with no I/O threads: here, now); the
    future holds its result or its exception."""
    if IO_THREADS > 0:
        return _executor().submit(fn)
    done: Future = Future()
    try:
        done.set_result(fn())
    except BaseException as exc:
        done.set_exception(exc)
    return done


def _call(fn: Callable[[T], R], item: T) -> R | BaseException:
    try:
        return fn(item)
    except Exception as exc:
        return exc


#: A batch of at least this many files gives its freed memory back to the system afterwards.
TRIM_AFTER = 256


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` from the process's own symbols (``ctypes.util.find_library``
    would run ``ldconfig`` in a child at every start)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_trim = _malloc_trim()


def give_back_memory(files: int) -> None:
    """After a big batch, hand the memory it freed back to the kernel (glibc keeps it in the
    I/O threads' arenas otherwise, and a scan's RSS would stay at its largest batch)."""
    if _trim is not None and files >= TRIM_AFTER:
        _trim(0)


#: The cycle collector's first threshold for the scan and the daemon (Python's default: 700).
#: Their batches allocate millions of short-lived objects that reference counting frees; a
#: collection every 700 of them took ~5% of a scan's CPU (bench/README.md, "Seventh pass").
GC_THRESHOLD = 50_000


def collect_cycles_less_often() -> None:
    """For ``scan`` and ``watch`` (not a reader's host process): look for reference cycles
    every ``GC_THRESHOLD`` allocations instead of every 700."""
    first, *older = gc.get_threshold()
    gc.set_threshold(max(first, GC_THRESHOLD), *older)

"""watchdog's inotify observer, with each watch's events in a plain FIFO: renames left unpaired;
and the observer's own queue a plain FIFO too.

watchdog 7.1 pairs a rename's ``IN_MOVED_FROM`` with its ``IN_MOVED_TO`` in a queue per watch,
by scanning that queue for the rename's cookie (twice per ``IN_MOVED_TO``, under its lock). In
a burst the emitter thread falls behind, the queue holds thousands of events, and every rename
pays for a scan of all of them: ~30% of the event path's CPU (bench/README.md, "Tenth pass").
docwatch never needs the pair. Only a move's destination matters, and an unpaired
``IN_MOVED_TO`` arrives as ``FileMovedEvent('' -> dest)``, which the handler reads as any
other move into place. (watchdog's own 0.5 s hold of an ``IN_MOVED_FROM``, for the pairing,
was already gone: ``bench/README.md``, the live figures.)

So each watch's events go through a ``SimpleQueue`` in the order inotify gave them; a file's
``IN_MOVED_FROM`` is dropped there (it names a path that no longer exists, which the handler
ignores anyway); a directory's is kept (a folder moved away: the watches are re-armed).

The observer's queue, from the emitter threads to its dispatcher thread, is watchdog's
``EventQueue``: a ``queue.Queue`` that drops an event equal to the one put before it, taking
two locks and a condition in Python for each event.  The emitter and the dispatcher contend for
them under the GIL on every event: in ``bench/floor.py``'s event path they cost more than half
of its CPU (bench/README.md, "Twenty-second pass").  Here it is a ``SimpleQueue`` (``EventFifo``,
one C-level lock).  Nothing is dropped: a repeated event is delivered again, which the
handler's queue and the pending table take as they take any repeat.
"""

from __future__ import annotations

import os
import queue
from dataclasses import dataclass, field

from watchdog.observers.inotify import InotifyFullEmitter, InotifyObserver, InotifyWatchGroup
from watchdog.observers.inotify_move_event_grouper import (
    InotifyMoveEventGrouper,
    PathedInotifyEvent,
)

_CLOSED = None  # what read_event gives once the queue is closed (watchdog's own contract)


class UnpairedMoves(InotifyMoveEventGrouper):
    """The watch group's event queue without the move pairing: FIFO, no scans, no delay."""

    def __init__(self) -> None:  # watchdog's DelayedQueue is not made at all
        self._events: queue.SimpleQueue[PathedInotifyEvent | None] = queue.SimpleQueue()
        self._closed = False

    def put_event(self, event: PathedInotifyEvent) -> None:
        if event.ev.is_moved_from and not event.ev.is_directory:
            return
        self._events.put(event)

    def read_event(self) -> PathedInotifyEvent | None:
        if self._closed:
            return _CLOSED
        return self._events.get()

    def get_queued_moved_from_event(self, cookie: int) -> PathedInotifyEvent | None:
        """Never paired (it only serves recursive watches' bookkeeping; docwatch's are not)."""
        return None

    def discard_pending_events(self) -> None:
        """On a kernel queue overflow, as watchdog does: what is queued is out of order."""
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if event is _CLOSED:
                self._events.put(_CLOSED)  # a close raced the overflow: keep its wake-up
                return

    def close(self) -> None:
        self._closed = True
        self._events.put(_CLOSED)  # wakes a reader blocked in read_event


@dataclass
class _FifoWatchGroup(InotifyWatchGroup):
    _move_event_grouper: InotifyMoveEventGrouper = field(default_factory=UnpairedMoves, init=False)


class _FifoEmitter(InotifyFullEmitter):
    """watchdog's full-events emitter (a move in from elsewhere is a move, not a create) over
    a ``_FifoWatchGroup``."""

    def on_thread_start(self) -> None:
        self._inotify = _FifoWatchGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=self.watch.follow_symlink,
        )


class EventFifo(queue.SimpleQueue):
    """The observer's event queue: what watchdog calls on it (``put``, ``put_nowait``,
    ``get``, ``task_done``), with no skipping of repeats and no per-event Python locks."""

    def task_done(self) -> None:
        """Nothing joins this queue: no count of unfinished events is kept."""


class FifoInotifyObserver(InotifyObserver):
    """watchdog's ``InotifyObserver(generate_full_events=True)`` whose watches keep their
    events in a FIFO (``UnpairedMoves``), and whose own queue is a FIFO (``EventFifo``);
    everything else is watchdog's."""

    def __init__(self) -> None:
        super().__init__(generate_full_events=True)
        self._event_queue = EventFifo()  # before any watch: each emitter is given this queue
        self._emitter_class = _FifoEmitter  # BaseObserver.schedule makes each watch's emitter

"""The watchdog side of ``docwatch watch``: which folders are watched, and what an event means.

Measured with watchdog 7.1 on Linux/ext4 (pinned by tests/test_watch.py), with the narrow
``EVENT_FILTER`` below and ``generate_full_events=True``:

* raw written in place (``write_text``): ``FileCreatedEvent`` then ``FileClosedEvent``
  (IN_CLOSE_WRITE) once the writer closes it: ready at the close, never at the create;
* ``.tmp`` + ``os.replace`` (prompts, parsed): created/closed for the ``.tmp`` name, then
  ``FileMovedEvent(tmp -> final)``, or ``('' -> final)`` through the daemon's own observer,
  which leaves renames unpaired (``live/inotify.py``): ready at the move;
* a file renamed in from outside the watched folder: ``FileMovedEvent('' -> final)`` (only a
  ``FileCreatedEvent`` without ``generate_full_events``): ready at the move;
* ``mkdir sub && write sub/x`` under a non-recursive watch: only ``DirCreatedEvent(sub)``; the
  file's own events are never seen, so a folder is listed right after its watch is added;
* deleting a watched folder: ``DirDeletedEvent`` for it (from its parent's watch, if any, and
  from its own IN_DELETE_SELF), and its emitter thread ends while the observer lives on;
* an inotify queue overflow: only a warning on the ``watchdog.observers.inotify_c`` logger
  (``OVERFLOW_MESSAGE``); the lost events never reach a handler.

Handlers here classify and enqueue ``(path, kind)``, and never raise (an exception in a
handler kills watchdog's dispatcher thread while events keep queueing).  Their one piece of
I/O: a folder that appears on the way to a watched folder gets its watch at once, on the
dispatcher thread (``WatchSet.watch_early``), so that the files written into it from then on
have events instead of waiting for the main thread's next turn and the listing's quiet rule;
the main thread's ``WatchSet.arm`` adopts that watch and lists the folder, as for any other.
``WatchSet`` owns the observer and its watches; ``PendingTable`` holds the paths the daemon's
main thread will ingest, by due time (the readiness rules themselves are in ``watch``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver, ObservedWatch

from docwatch.core.layout import FolderRole, parse_name
from docwatch.errors import DocwatchError

log = logging.getLogger("docwatch.watch")

#: The logger and message watchdog 7.1 uses when the kernel drops events (IN_Q_OVERFLOW).
OVERFLOW_LOGGER = "watchdog.observers.inotify_c"
OVERFLOW_MESSAGE = "Inotify queue overflowed"

#: What the handler asks for: only these reach it, and the inotify mask is built from them
#: (IN_CLOSE_WRITE | IN_MOVE | IN_CREATE | IN_DELETE | IN_DELETE_SELF; no IN_MODIFY/IN_OPEN).
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileClosedEvent,
    FileMovedEvent,
    FileCreatedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]
#: Polling sees no close events; it reports changes as created/modified/moved.
POLLING_FILTER = [*EVENT_FILTER, FileModifiedEvent]

# Kinds of queue entries (path, kind).
READY = "ready"  # closed after writing, or renamed into place: complete now
CREATED = "created"  # created (inotify): wait for its close; settle rule as a fallback
CHANGED = "changed"  # polling saw it appear or change: settle rule
DIRS = "dirs"  # a directory appeared, moved or vanished: re-arm the watches
WAKE = "wake"  # nothing to do; wakes the main loop (signals, stop)


def _fspath(p: bytes | str) -> str:
    return os.fsdecode(p) if isinstance(p, bytes) else p


class EnqueueHandler(FileSystemEventHandler):
    """Classify an event into ``(path, kind)`` on ``out``; it never raises.  A folder that
    appears is first passed to ``on_new_dir`` (``WatchSet.watch_early``), its only I/O."""

    def __init__(
        self,
        out: queue.SimpleQueue,
        role_dirs: Iterable[str],
        *,
        polling: bool,
        on_new_dir: Callable[[str], None] | None = None,
    ) -> None:
        self.out = out
        self.role_dirs = frozenset(role_dirs)
        self.polling = polling
        self.on_new_dir = on_new_dir  # a folder appeared (created or moved in)
        self.dropped = 0  # events that raised while being classified (should stay 0)

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._classify(event)
        except Exception:  # never let anything reach watchdog's dispatcher thread
            self.dropped += 1

    def _file(self, path: str, kind: str) -> None:
        head, name = os.path.split(path)
        if head in self.role_dirs and not isinstance(parse_name(name), str):
            self.out.put((path, kind))

    def _classify(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            if self.on_new_dir is not None and not isinstance(event, DirDeletedEvent):
                appeared = event.dest_path if isinstance(event, DirMovedEvent) else event.src_path
                if appeared:
                    with contextlib.suppress(Exception):  # the main thread's arm() retries
                        self.on_new_dir(_fspath(appeared))
            self.out.put((_fspath(event.src_path), DIRS))
            return
        if isinstance(event, FileMovedEvent):
            if event.dest_path:  # '' = moved out of the folder: nothing to index
                self._file(_fspath(event.dest_path), CHANGED if self.polling else READY)
        elif isinstance(event, FileClosedEvent):
            self._file(_fspath(event.src_path), READY)
        elif isinstance(event, FileCreatedEvent):
            self._file(_fspath(event.src_path), CHANGED if self.polling else CREATED)
        elif isinstance(event, FileModifiedEvent):
            self._file(_fspath(event.src_path), CHANGED)


class OverflowDetector(logging.Handler):
    """Sets ``flag`` when watchdog logs that the kernel queue overflowed (events were lost)."""

    def __init__(self, flag: threading.Event, wake: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self.flag = flag
        self.wake = wake
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if str(record.msg).startswith(OVERFLOW_MESSAGE):
                self.count += 1
                self.flag.set()
                self.wake()
        except Exception:  # a logging handler must not raise into the inotify thread
            pass

    def install(self) -> None:
        logger = logging.getLogger(OVERFLOW_LOGGER)
        # logs.setup() may raise the "watchdog" level above WARNING; the record must still
        # be created for this handler to see it.
        if logger.getEffectiveLevel() > logging.WARNING:
            logger.setLevel(logging.WARNING)
        logger.addHandler(self)

    def uninstall(self) -> None:
        logging.getLogger(OVERFLOW_LOGGER).removeHandler(self)


def nearest_existing_dir(path: str) -> str | None:
    """``path`` itself when it is a directory, else its nearest ancestor that is one."""
    p = path
    while True:
        if os.path.isdir(p):
            return p
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent


class WatchSet:
    """One observer with a non-recursive watch on every existing target folder, and on the
    nearest existing ancestor of each target that does not exist yet."""

    def __init__(
        self,
        targets: Iterable[str],
        make_handler: Callable[[], EnqueueHandler],
        *,
        polling: bool,
        poll_interval: float,
    ) -> None:
        self.targets = sorted(set(targets))
        self.make_handler = make_handler
        self.polling = polling
        self.poll_interval = poll_interval
        self.filter = POLLING_FILTER if polling else EVENT_FILTER
        self.observer: BaseObserver | None = None
        self.handler: EnqueueHandler | None = None
        self.watches: dict[str, tuple[ObservedWatch, tuple[int, int]]] = {}
        self._warned: set[str] = set()

    def _new_observer(self) -> BaseObserver:
        if self.polling:
            from watchdog.observers.polling import PollingObserver

            return PollingObserver(timeout=self.poll_interval)
        from docwatch.live.inotify import FifoInotifyObserver

        # Full events (a file renamed in from another folder arrives as a move: ready), and
        # renames left unpaired: only a move's destination matters here (live/inotify.py).
        return FifoInotifyObserver()

    def start(self) -> None:
        try:
            self.observer = self._new_observer()
        except OSError as exc:  # inotify_init: EMFILE when max_user_instances is reached
            raise DocwatchError(
                f"cannot start the inotify observer ({exc.strerror or exc}); raise "
                'fs.inotify.max_user_instances, or set observer = "polling" in the config'
            ) from exc
        self.handler = self.make_handler()
        self.watches.clear()
        self.observer.start()
        self.arm()

    def stop(self, timeout: float = 5.0) -> None:
        obs, self.observer = self.observer, None
        self.watches.clear()
        if obs is None:
            return
        try:
            obs.stop()
            obs.join(timeout)
        except Exception as exc:  # a broken observer must not block the shutdown
            log.debug("stopping the observer: %r", exc)

    def rebuild(self) -> None:
        self.stop(timeout=2.0)
        self.start()

    @property
    def watched_targets(self) -> list[str]:
        return [t for t in self.targets if t in self.watches]

    def _watch(self, path: str) -> bool:
        assert self.observer is not None and self.handler is not None
        try:
            watch = self.observer.schedule(
                self.handler, path, recursive=False, event_filter=self.filter
            )
            st = os.stat(path)
        except OSError as exc:
            if path not in self._warned:
                self._warned.add(path)
                hint = ""
                if exc.errno == errno.ENOSPC and not self.polling:
                    hint = "; raise fs.inotify.max_user_watches or use observer = polling"
                reason = exc.strerror or exc
                log.warning(
                    "cannot watch %s (%s); retrying every second, and the periodic "
                    "reconcile still indexes it%s",
                    path,
                    reason,
                    hint,
                )
            return False
        self.watches[path] = (watch, (st.st_dev, st.st_ino))
        self._warned.discard(path)
        return True

    def _unwatch(self, path: str) -> None:
        entry = self.watches.pop(path, None)
        if entry is None or self.observer is None:
            return
        try:
            self.observer.unschedule(entry[0])
        except Exception as exc:  # already gone (KeyError) or a dead emitter
            log.debug("unschedule %s: %r", path, exc)

    def watch_early(self, appeared: str) -> None:
        """On watchdog's dispatcher thread: watch the targets under a folder that just
        appeared (or their nearest existing ancestor under it) before the main thread's
        ``arm`` does.  Nothing of this set's own state changes here: ``arm`` adopts the watch
        (watchdog hands back the same one) and lists the folder, or drops it if unneeded."""
        obs, handler = self.observer, self.handler
        if obs is None or handler is None or self.polling:
            return
        inside = appeared.rstrip(os.sep) + os.sep
        for path in {
            anc
            for target in self.targets
            if target == appeared or target.startswith(inside)
            if (anc := nearest_existing_dir(target)) is not None
            if anc == appeared or anc.startswith(inside)
        }:
            obs.schedule(handler, path, recursive=False, event_filter=self.filter)

    def health(self) -> str | None:
        """Why the observer as a whole is broken (then rebuild it), or None."""
        obs = self.observer
        if obs is None:
            return "observer not running"
        if not obs.is_alive():
            return "the observer's dispatcher thread died"
        reader = getattr(obs, "_inotify_fd", None)  # InotifyObserver's own reader thread
        if isinstance(reader, threading.Thread) and not reader.is_alive():
            return "the inotify reader thread died"
        return None

    def prune(self) -> list[str]:
        """Drop watches whose emitter ended or whose folder was deleted or replaced."""
        if self.observer is None:
            return []
        alive = {e.watch: e.is_alive() for e in list(self.observer.emitters)}
        gone = []
        for path, (watch, ident) in list(self.watches.items()):
            try:
                st = os.stat(path)
                same = (st.st_dev, st.st_ino) == ident
            except OSError:
                same = False
            if not same or not alive.get(watch, False):
                gone.append(path)
                self._unwatch(path)
        return gone

    def arm(self) -> list[str]:
        """Watch what can be watched now; return the targets that just got their own watch
        (the caller lists them: files written before the watch existed have no events)."""
        if self.observer is None:
            return []
        self.prune()
        new: list[str] = []
        changed = True
        while changed:  # a deeper level may appear while we add a watch: repeat until stable
            changed = False
            for target in self.targets:
                if target in self.watches:
                    continue
                anc = nearest_existing_dir(target)
                if anc is None or anc in self.watches:
                    continue
                if self._watch(anc):
                    changed = True
                    if anc == target:
                        new.append(target)
        needed = set(self.watched_targets)
        for target in self.targets:
            if target not in self.watches and (anc := nearest_existing_dir(target)):
                needed.add(anc)
        for path in list(self.watches):
            if path not in needed:
                self._unwatch(path)
        self._drop_unadopted(needed)
        return new

    def _drop_unadopted(self, needed: set[str]) -> None:
        """Unschedule what ``watch_early`` scheduled and no target needs any more (a folder
        on the way to a target that exists now): it would hold a thread and an inotify
        instance for nothing."""
        assert self.observer is not None
        adopted = {watch for watch, _ in self.watches.values()}
        for emitter in list(self.observer.emitters):
            watch = emitter.watch
            if watch not in adopted and watch.path not in needed:
                try:
                    self.observer.unschedule(watch)
                except Exception as exc:  # already gone
                    log.debug("unschedule %s: %r", watch.path, exc)


def role_dirs(data_root: Path, roles: Iterable[FolderRole]) -> dict[str, FolderRole]:
    """Absolute, normalised folder path → its role (event paths are looked up by dirname)."""
    root = os.path.abspath(data_root)
    return {os.path.normpath(os.path.join(root, r.folder)): r for r in roles}

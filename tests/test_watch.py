"""``docwatch watch`` in-process: a real watchdog observer on real folders under tmp_path.

The ``Watcher`` runs in a thread (no signals); files are written the way the pipeline writes
them (LEGACY_PIPELINE.md).  Nothing is mocked: waits are bounded polling loops on the index.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import queue
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import watchdog.version
from docwatch.config import load_config
from docwatch.core.layout import FolderRole
from docwatch.live.events import (
    DIRS,
    EVENT_FILTER,
    OVERFLOW_LOGGER,
    OVERFLOW_MESSAGE,
    READY,
    EnqueueHandler,
    OverflowDetector,
    WatchSet,
)
from docwatch.live.inotify import EventFifo, FifoInotifyObserver, UnpairedMoves
from docwatch.live.pending import PendingTable
from docwatch.live.readiness import FileState, Policy, Verdict, decide
from docwatch.live.sdnotify import Notifier
from docwatch.live.watcher import Watcher
from support import wait_until
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEventHandler,
)
from watchdog.observers import inotify_c
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.inotify_move_event_grouper import PathedInotifyEvent

RAW = "3_generation/draft_responses_raw"
PARSED = "3_generation/draft_responses"
PROMPT = "3_generation/draft_prompts"
EVAL_PARSED = "4_evaluation/evaluation_responses"


def make_cfg(tmp_path: Path, **flags):
    base = {
        "data_root": tmp_path / "data",
        "db": tmp_path / "index" / "documents.sqlite",
        "docs_root": tmp_path / "index" / "docs",
        "settle_seconds": 0.5,
        "pair_window": 600,
        "reconcile_interval": 600,
        "run_id": "test-watch",
    }
    base.update(flags)
    (tmp_path / "data").mkdir(exist_ok=True)
    return load_config(None, {}, base)


@contextlib.contextmanager
def running(cfg):
    """A Watcher in a thread, ready (catch-up done); stopped and joined on exit."""
    w = Watcher(cfg, notifier=Notifier(None))
    errors: list[BaseException] = []

    def target():
        try:
            w.run()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=target, name="watcher", daemon=True)
    t.start()
    wait_until(lambda: w.ready.is_set() or not t.is_alive(), what="READY")
    assert not errors, errors
    try:
        yield w
    finally:
        w.stop()
        t.join(15)
    assert not t.is_alive(), "watcher did not stop"
    assert not errors, errors


def documents(cfg, task_id: str | None = None) -> list[dict]:
    if not Path(cfg.db).exists():
        return []
    con = sqlite3.connect(f"file:{cfg.db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        sql, args = "SELECT * FROM documents", ()
        if task_id is not None:
            sql, args = sql + " WHERE task_id = ?", (task_id,)
        return [dict(r) for r in con.execute(sql, args)]
    finally:
        con.close()


def write_atomic(path: Path, data: bytes) -> None:
    """Dagster IO manager: whole text to .tmp, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def doc_file(cfg, row: dict, name: str) -> bytes:
    return (Path(cfg.docs_root) / row["stage"] / row["doc_id"] / name).read_bytes()


# --- what watchdog 7.1 delivers (pinned; the design relies on it) ----------------------------


class _Recorder(FileSystemEventHandler):
    def __init__(self):
        self.events = []

    def on_any_event(self, event):
        self.events.append(event)


def test_watchdog_71_delivers_what_the_watcher_relies_on(tmp_path):
    assert watchdog.version.VERSION_STRING.startswith("7.1"), "re-measure before upgrading"
    watched, outside = tmp_path / "w", tmp_path / "outside"
    watched.mkdir()
    outside.mkdir()
    rec = _Recorder()
    obs = InotifyObserver(generate_full_events=True)
    obs.start()
    watch = obs.schedule(rec, str(watched), recursive=False, event_filter=EVENT_FILTER)

    def seen(cls, **kw):
        return lambda: [
            e
            for e in rec.events
            if type(e) is cls and all(getattr(e, k) == str(v) for k, v in kw.items())
        ]

    try:
        raw = watched / "t_v1.txt"  # in place, as the raw side write does
        with open(raw, "wb") as f:
            f.write(b"half")
            f.flush()
            time.sleep(0.05)
            f.write(b" and the rest")
        wait_until(seen(FileClosedEvent, src_path=raw), 10, what="close of an in-place write")
        assert seen(FileCreatedEvent, src_path=raw)()
        write_atomic(watched / "p_v1.txt", b"parsed")  # .tmp + os.replace
        wait_until(seen(FileMovedEvent, dest_path=watched / "p_v1.txt"), 10, what="rename")
        (outside / "o_v1.txt").write_bytes(b"from elsewhere")
        os.replace(outside / "o_v1.txt", watched / "o_v1.txt")
        wait_until(seen(FileMovedEvent, src_path="", dest_path=watched / "o_v1.txt"), 10)
        assert not seen(FileCreatedEvent, src_path=watched / "o_v1.txt")()
        (watched / "sub").mkdir()
        (watched / "sub" / "x_v1.txt").write_bytes(b"unseen")
        wait_until(seen(DirCreatedEvent, src_path=watched / "sub"), 10)
        time.sleep(0.3)  # give a (wrong) event for sub/x_v1.txt time to show up
        assert not [e for e in rec.events if "x_v1" in e.src_path]
        shutil.rmtree(watched)
        wait_until(seen(DirDeletedEvent, src_path=watched), 10, what="watched folder deleted")
        emitter = next(e for e in obs.emitters if e.watch == watch)
        wait_until(lambda: not emitter.is_alive(), 10, what="its emitter ends")
        assert obs.is_alive()  # ... while the observer lives on: only a supervisor notices
    finally:
        obs.stop()
        obs.join(5)


def test_the_daemon_s_observer_gives_every_rename_s_destination_once_and_stops(tmp_path):
    """``FifoInotifyObserver`` (renames unpaired): a burst of renames into place gives one
    move per destination, in the order written; a file's ``IN_MOVED_FROM`` never arrives, a
    folder's does (the watches are re-armed); stopping ends every thread."""
    watched, outside = tmp_path / "w", tmp_path / "outside"
    watched.mkdir()
    outside.mkdir()
    rec = _Recorder()
    obs = FifoInotifyObserver()
    obs.start()
    obs.schedule(rec, str(watched), recursive=False, event_filter=EVENT_FILTER)
    finals = [watched / f"t{i:04d}_v1.txt" for i in range(300)]
    try:
        for i, final in enumerate(finals):
            write_atomic(final, b"x" * (i % 7))  # the emitter falls behind: a queue builds up
        (watched / "raw_v1.txt").write_bytes(b"in place")
        (watched / "sub").mkdir()
        os.rename(watched / "sub", outside / "sub")

        def folder_moved_away():
            return [e for e in rec.events if type(e).__name__ == "DirMovedEvent"]

        wait_until(folder_moved_away, 10, what="the folder moved away")
        moves = [e for e in rec.events if isinstance(e, FileMovedEvent)]
        assert [(e.src_path, e.dest_path) for e in moves] == [("", str(f)) for f in finals]
        assert [(e.src_path, e.dest_path) for e in folder_moved_away()] == [
            (str(watched / "sub"), "")
        ]
        assert [e.src_path for e in rec.events if isinstance(e, FileClosedEvent)][-1] == str(
            watched / "raw_v1.txt"
        )
        emitters = list(obs.emitters)
    finally:
        stopper = threading.Thread(target=obs.stop, daemon=True)  # joins every emitter
        stopper.start()
        stopper.join(5)
        obs.join(5)
    assert not stopper.is_alive(), "stopping hung: an emitter stayed blocked in its queue"
    assert not obs.is_alive() and emitters and not [e for e in emitters if e.is_alive()]


class _HeldRecorder(_Recorder):
    """Holds watchdog's dispatcher thread in its first event until ``release`` is set, so the
    events after it wait in the observer's queue."""

    def __init__(self):
        super().__init__()
        self.holding = threading.Event()
        self.release = threading.Event()

    def on_any_event(self, event):
        if not self.holding.is_set():
            self.holding.set()
            self.release.wait(10)
        super().on_any_event(event)


def test_the_daemon_s_observer_queues_every_event_even_a_repeat(tmp_path):
    """The observer's own queue is ``EventFifo`` for every emitter: watchdog's ``EventQueue``
    drops an event equal to the one queued before it (and takes two Python locks an event).
    A raw rewritten in place while its first close still waits gives both closes."""
    watched = tmp_path / "w"
    watched.mkdir()
    rec = _HeldRecorder()
    obs = FifoInotifyObserver()
    obs.start()
    try:
        obs.schedule(rec, str(watched), recursive=False, event_filter=EVENT_FILTER)
        raw = watched / "t_v1.txt"
        raw.write_bytes(b"first")  # created, closed: the dispatcher holds the create
        wait_until(rec.holding.is_set, 10, what="the dispatcher holds the first event")
        time.sleep(0.2)  # the first close is queued behind it
        raw.write_bytes(b"second")  # the same path closed again: an equal event
        time.sleep(0.2)
        rec.release.set()
        closes = lambda: [e for e in rec.events if isinstance(e, FileClosedEvent)]  # noqa: E731
        wait_until(lambda: len(closes()) >= 2, 5, what="both closes of the raw")
        assert [e.src_path for e in closes()] == [str(raw), str(raw)]
        assert isinstance(obs.event_queue, EventFifo)
        assert [e._event_queue for e in obs.emitters] == [obs.event_queue]
    finally:
        rec.release.set()
        obs.stop()
        obs.join(5)
    assert not obs.is_alive()


def test_unpaired_moves_discards_on_overflow_but_keeps_a_close():
    moves = UnpairedMoves()
    for i in range(3):
        moves.put_event(
            PathedInotifyEvent(
                inotify_c.InotifyEvent(1, inotify_c.InotifyConstants.IN_CREATE, 0, b"f%d" % i),
                b"/w/f%d" % i,
            )
        )
    assert moves.read_event().path == b"/w/f0"
    moves.discard_pending_events()  # the kernel's queue overflowed: f1 and f2 are dropped
    reads: queue.SimpleQueue = queue.SimpleQueue()
    reader = threading.Thread(target=lambda: [reads.put(moves.read_event()) for _ in range(2)])
    reader.start()
    time.sleep(0.2)  # the emitter waits in read_event
    moves.close()
    moves.discard_pending_events()  # an overflow racing the close must not eat its wake-up
    reader.join(5)
    assert not reader.is_alive(), "the emitter stayed blocked after the close"
    assert [reads.get(), reads.get()] == [None, None]  # closed stays closed


def test_overflow_is_only_a_log_warning_and_the_detector_sees_it():
    source = inspect.getsource(inotify_c)
    assert f'logger.warning("{OVERFLOW_MESSAGE}; filesystem events were lost")' in source
    assert inotify_c.logger.name == OVERFLOW_LOGGER
    flag = threading.Event()
    detector = OverflowDetector(flag, lambda: None)
    detector.install()
    try:
        inotify_c.logger.warning("Inotify queue overflowed; filesystem events were lost")
    finally:
        detector.uninstall()
    assert flag.is_set() and detector.count == 1


# --- readiness and pairing ------------------------------------------------------------------


def test_slow_raw_is_read_whole_becomes_pending_then_ok_and_a_late_prompt_attaches(tmp_path):
    cfg = make_cfg(tmp_path)  # empty data root: every folder is created while watching
    data = Path(cfg.data_root)
    task = "combo_v1_aaaaaaaaaaaa__creative-synthesis-v2__sonnet-4"
    outside = tmp_path / "staging"
    outside.mkdir()
    (outside / f"{task}_v1.txt").write_bytes(b"the prompt\n")  # written before the raw
    chunks = [f"line {i} of a slowly streamed response\n".encode() for i in range(15)]
    with running(cfg) as w:
        raw = data / RAW / f"{task}_v1.txt"
        raw.parent.mkdir(parents=True)
        with open(raw, "wb") as f:  # in place, in pieces: mtime stays fresh, never settled
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                time.sleep(0.08)
        rows = wait_until(lambda: documents(cfg, task), what="raw document")
        assert len(rows) == 1 and rows[0]["status"] == "pending"
        assert doc_file(cfg, rows[0], "raw.txt") == b"".join(chunks)

        write_atomic(data / PARSED / f"{task}_v1.txt", b"parsed text\n")
        wait_until(lambda: [r for r in documents(cfg, task) if r["status"] == "ok"])

        # a prompt renamed in from another folder (older mtime) attaches to the attempt
        prompt = data / PROMPT / f"{task}_v1.txt"
        prompt.parent.mkdir(parents=True)
        os.replace(outside / f"{task}_v1.txt", prompt)
        rows = wait_until(lambda: [r for r in documents(cfg, task) if r["prompt_path"]])
        assert rows[0]["prompt_path"] == f"{PROMPT}/{task}_v1.txt"
        assert doc_file(cfg, rows[0], "prompt.txt") == b"the prompt\n"
        assert doc_file(cfg, rows[0], "parsed.txt") == b"parsed text\n"
        assert len(documents(cfg, task)) == 1
        assert w.stats["error"] == 0


def test_a_parsed_file_waits_for_the_raw_of_its_task_not_closed_yet(tmp_path):
    """Raw fully written but its close not seen yet when the parsed file lands: they pair
    (raw mtime <= parsed mtime).  Without the hold the parsed file would first become a
    parsed-only document that the raw then absorbs (retired): readers would see it flicker."""
    cfg = make_cfg(tmp_path)
    data = Path(cfg.data_root)
    task = "combo_v1_bbbbbbbbbbbb__creative-synthesis-v2__sonnet-4"
    (data / RAW).mkdir(parents=True)
    (data / PARSED).mkdir(parents=True)  # watched from the start: the rename is a live event
    with running(cfg) as w:
        raw = data / RAW / f"{task}_v1.txt"
        with open(raw, "wb") as f:
            f.write(b"the whole raw response\n")
            f.flush()
            time.sleep(0.05)
            write_atomic(data / PARSED / f"{task}_v1.txt", b"parsed\n")
            time.sleep(0.3)  # still open: the close comes later (below settle_seconds)
        rows = wait_until(lambda: [r for r in documents(cfg, task) if r["status"] == "ok"])
        assert len(documents(cfg, task)) == 1
        assert doc_file(cfg, rows[0], "raw.txt") == b"the whole raw response\n"
        assert doc_file(cfg, rows[0], "parsed.txt") == b"parsed\n"
        assert w.stats["docs_created"] == 1  # never a parsed-only document first


def test_a_file_that_only_gets_created_is_read_after_settle(tmp_path):
    """A hard link is IN_CREATE with no close: the settle rule reads it."""
    cfg = make_cfg(tmp_path)
    data = Path(cfg.data_root)
    (data / EVAL_PARSED).mkdir(parents=True)
    task = "combo_v1_cccccccccccc__s__m__novelty__sonnet-4"
    src = tmp_path / "elsewhere.txt"
    src.write_bytes(b"score: 7\n")
    with running(cfg):
        os.link(src, data / EVAL_PARSED / f"{task}_v1.txt")
        rows = wait_until(lambda: documents(cfg, task), what="hard-linked file indexed")
        assert rows[0]["status"] == "ok" and doc_file(cfg, rows[0], "parsed.txt") == b"score: 7\n"


#: ``close_wait_seconds``' default.
CLOSE_WAIT = load_config(None, {}, {}).close_wait_seconds


@pytest.mark.parametrize(
    ("created", "nlink", "waited", "close_wait", "verdict"),
    [
        (True, 1, 5.0, CLOSE_WAIT, Verdict.WAIT),  # seen created: its close, past settle_seconds
        (True, 1, CLOSE_WAIT + 1, CLOSE_WAIT, Verdict.READ),  # no close in time: the settle rule
        (True, 1, 400.0, 600.0, Verdict.WAIT),  # close_wait_seconds = 600: still its close
        (True, 1, 5.0, 4.0, Verdict.READ),  # close_wait_seconds = 4: the settle rule at 5 s
        (True, 2, 5.0, CLOSE_WAIT, Verdict.READ),  # a hard link: no close follows, settle rule
        (False, 1, 5.0, CLOSE_WAIT, Verdict.READ),  # listed, not seen created: the settle rule
    ],
)
def test_a_raw_seen_created_waits_for_its_close_not_the_settle_rule(
    created, nlink, waited, close_wait, verdict
):
    path = "/data/3_generation/draft_responses_raw/t__creative-synthesis-v2__sonnet-4_v1.txt"
    table = PendingTable({os.path.dirname(path): FolderRole("draft", "raw", RAW)})
    table.put(path, 0.0, awaiting_close=True, created=created, first=0.0)
    (entry,) = table.take_due(0.0, 10)
    now_ns = 10**18
    old_bytes = FileState(regular=True, size=100, mtime_ns=now_ns - 10**9, ino=1, nlink=nlink)
    policy = Policy(settle_s=0.5, close_wait_s=close_wait)
    decision = decide(entry, old_bytes, now=waited, now_ns=now_ns, policy=policy)
    assert decision.verdict is verdict
    if verdict is Verdict.WAIT:
        assert waited < decision.due <= close_wait  # looked at again, never later than the cap


def test_a_raw_created_while_watched_waits_for_its_close_however_long_its_writer_stalls(tmp_path):
    """The watcher saw the raw created, so its writer's close will come: a writer stalled
    mid-write past ``settle_seconds`` (a loaded machine) is not read by the settle rule, nor
    by a reconcile pass meanwhile.  A partial read would make an extra attempt, which a scan
    of the finished tree never makes (the CI failure of stop 24, live = scan after kill -9)."""
    cfg = make_cfg(tmp_path, settle_seconds=0.2, reconcile_interval=1)
    data = Path(cfg.data_root)
    (data / RAW).mkdir(parents=True)
    task = "combo_v1_dddddddddddd__creative-synthesis-v2__sonnet-4"
    with running(cfg) as w:
        reconciles = w.stats["reconciles"]
        with open(data / RAW / f"{task}_v1.txt", "wb") as f:
            f.write(b"the first half, ")
            f.flush()
            stalled_until = time.monotonic() + 2.5  # > 10 x settle_seconds, 2 reconciles
            while time.monotonic() < stalled_until:
                assert not documents(cfg, task), "a raw still open for writing was read"
                time.sleep(0.05)
            f.write(b"then the rest\n")
        rows = wait_until(lambda: documents(cfg, task), what="the raw read at its close")
        assert w.stats["reconciles"] > reconciles, "no reconcile pass ran during the stall"
    assert (
        len(rows) == 1 and doc_file(cfg, rows[0], "raw.txt") == b"the first half, then the rest\n"
    )


# --- folders --------------------------------------------------------------------------------


class _Events:
    """A WatchSet whose handler classifies into a queue, read here as the main loop would."""

    def __init__(self, targets: list[str]):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.seen: list[tuple[str, str]] = []
        self.ws = WatchSet(targets, self._handler, polling=False, poll_interval=1.0)

    def _handler(self) -> EnqueueHandler:
        return EnqueueHandler(
            self.queue, self.ws.targets, polling=False, on_new_dir=self.ws.watch_early
        )

    def has(self, path: Path, kind: str):
        def check() -> bool:
            while not self.queue.empty():
                self.seen.append(self.queue.get())
            return (str(path), kind) in self.seen

        return check

    def watched(self) -> set[str]:
        return {e.watch.path for e in self.ws.observer.emitters}


def test_a_folder_that_appears_is_watched_at_once_not_at_the_main_threads_next_turn(tmp_path):
    """Files written into a new stage folder after its creation event get their own events
    although the main thread has not armed it yet (it may be busy with a batch): only the
    files that beat the watch are left to the listing and its quiet rule."""
    folder = tmp_path / PROMPT
    ev = _Events([str(folder)])
    ev.ws.start()  # watches tmp_path, the nearest existing ancestor
    try:
        folder.parent.mkdir()
        wait_until(ev.has(folder.parent, DIRS), 10, what="its parent's creation")
        folder.mkdir()
        wait_until(ev.has(folder, DIRS), 10, what="the folder's creation, via the parent")
        write_atomic(folder / "t_v1.txt", b"a prompt")  # no arm() since the folder appeared
        wait_until(ev.has(folder / "t_v1.txt", READY), 10, what="an event from the new folder")
        assert ev.ws.arm() == [str(folder)]  # adopted, so the main thread lists it
        assert ev.watched() == {str(folder)} == set(ev.ws.watches)
    finally:
        ev.ws.stop()


def test_a_watch_made_early_on_the_way_to_a_folder_is_dropped_once_unneeded(tmp_path):
    """mkdir a, then a/b: the early watch on a (to see b appear) is not adopted by arm(),
    which still unschedules it once b has its own: no thread or inotify instance leaks."""
    target = tmp_path / "a" / "b"
    ev = _Events([str(target)])
    ev.ws.start()
    try:
        (tmp_path / "a").mkdir()
        wait_until(ev.has(tmp_path / "a", DIRS), 10, what="a appears")
        target.mkdir()
        wait_until(ev.has(target, DIRS), 10, what="b appears, seen by the early watch on a")
        assert str(tmp_path / "a") in ev.watched()
        assert ev.ws.arm() == [str(target)]
        assert ev.watched() == {str(target)} == set(ev.ws.watches)
    finally:
        ev.ws.stop()


def test_folders_created_later_deleted_and_recreated_are_watched(tmp_path):
    cfg = make_cfg(tmp_path)
    data = Path(cfg.data_root)
    with running(cfg) as w:
        # mkdir -p of two levels and a file written in the same instant: no event for it
        folder = data / EVAL_PARSED
        folder.mkdir(parents=True)
        (folder / "t1__a__b_v1.txt").write_bytes(b"written right after mkdir\n")
        wait_until(lambda: documents(cfg, "t1__a__b"), what="file written at mkdir time")
        assert str(folder) in w.watches.watches

        shutil.rmtree(folder)
        folder.mkdir()
        (folder / "t2__a__b_v1.txt").write_bytes(b"after the folder came back\n")
        wait_until(lambda: documents(cfg, "t2__a__b"), what="file in the recreated folder")
        write_atomic(folder / "t3__a__b_v1.txt", b"a live event again\n")
        wait_until(lambda: documents(cfg, "t3__a__b"), what="events in the recreated folder")


# --- safety nets ----------------------------------------------------------------------------


def test_a_real_inotify_queue_overflow_triggers_a_rescan(tmp_path):
    """Starve watchdog's reader thread, overflow the kernel queue, write files whose events the
    kernel then drops: only the rescan after watchdog's warning can find them."""
    cfg = make_cfg(tmp_path)
    folder = Path(cfg.data_root) / EVAL_PARSED
    folder.mkdir(parents=True)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    with running(cfg) as w:
        reader = w.watches.observer._inotify_fd  # the observer's own inotify reader thread
        with reader._lock:  # the reader blocks here: the kernel queue fills up
            noise = [os.fspath(folder / f"noise{i}.txt.tmp") for i in range(2)]
            for i in range(limit + 4096):  # IN_CLOSE_WRITE, alternating names (not merged)
                os.close(os.open(noise[i % 2], os.O_WRONLY | os.O_CREAT, 0o644))
            for i in range(5):  # their events are dropped by the kernel
                (folder / f"lost{i}__a__b_v1.txt").write_bytes(b"lost %d\n" % i)
        wait_until(lambda: w.overflow.count >= 1, what="watchdog's overflow warning")
        for i in range(5):
            wait_until(lambda i=i: documents(cfg, f"lost{i}__a__b"), what=f"lost{i} indexed")
        assert w.stats["rescans"] >= 1


def test_close_wait_seconds_bounds_how_long_a_created_raw_waits_for_its_close(tmp_path):
    """``close_wait_seconds`` reaches the watcher: with 1 s, a raw held open and idle past it
    is taken as closed (its close lost) and read by the settle rule; never before it."""
    cfg = make_cfg(tmp_path, settle_seconds=0.2, close_wait_seconds=1)
    data = Path(cfg.data_root)
    (data / RAW).mkdir(parents=True)
    task = "combo_v1_ffffffffffff__creative-synthesis-v2__sonnet-4"
    with running(cfg):
        opened = time.monotonic()  # before its creation: the wait is counted from after it
        with open(data / RAW / f"{task}_v1.txt", "wb") as f:
            f.write(b"the first half, ")
            f.flush()
            rows = wait_until(lambda: documents(cfg, task), timeout=20, what="the raw read")
            waited = time.monotonic() - opened
    assert waited >= 1.0, f"read {waited:.2f} s after it was created, before close_wait_seconds"
    assert len(rows) == 1 and doc_file(cfg, rows[0], "raw.txt") == b"the first half, "


def test_a_raw_seen_created_whose_close_the_kernel_dropped_is_read_by_the_settle_rule(tmp_path):
    """A raw seen created waits for its close; when the kernel drops that close (a queue
    overflow), the watcher stops waiting for it: the settle rule reads the file, not
    ``close_wait_seconds`` later."""
    cfg = make_cfg(tmp_path, settle_seconds=0.2)
    data = Path(cfg.data_root)
    (data / RAW).mkdir(parents=True)
    noise_dir = data / EVAL_PARSED
    noise_dir.mkdir(parents=True)
    task = "combo_v1_eeeeeeeeeeee__creative-synthesis-v2__sonnet-4"
    raw = data / RAW / f"{task}_v1.txt"
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    with running(cfg) as w:
        with open(raw, "wb") as f:
            f.write(b"a whole response\n")
            f.flush()
            wait_until(lambda: str(raw) in w.pending.closes_awaited(time.monotonic(), CLOSE_WAIT))
            with w.watches.observer._inotify_fd._lock:  # the reader blocks: the queue fills up
                noise = [os.fspath(noise_dir / f"noise{i}.txt.tmp") for i in range(2)]
                for i in range(limit + 4096):
                    os.close(os.open(noise[i % 2], os.O_WRONLY | os.O_CREAT, 0o644))
                f.close()  # its IN_CLOSE_WRITE is dropped by the kernel
        wait_until(lambda: w.overflow.count >= 1, what="watchdog's overflow warning")
        rows = wait_until(lambda: documents(cfg, task), timeout=15, what="the raw indexed")
    assert doc_file(cfg, rows[0], "raw.txt") == b"a whole response\n"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_observer_thread_is_rebuilt_and_what_it_missed_is_found(tmp_path):
    cfg = make_cfg(tmp_path)
    folder = Path(cfg.data_root) / EVAL_PARSED
    folder.mkdir(parents=True)

    class Boom(FileSystemEventHandler):
        def dispatch(self, event):
            raise RuntimeError("a handler that raises kills watchdog's dispatcher")

    with running(cfg) as w:
        old = w.watches.observer
        old.schedule(Boom(), str(folder), recursive=False, event_filter=EVENT_FILTER)
        write_atomic(folder / "first__a__b_v1.txt", b"its event kills the dispatcher\n")
        wait_until(lambda: not old.is_alive(), what="dispatcher thread dead")
        write_atomic(folder / "second__a__b_v1.txt", b"written while nobody listens\n")
        wait_until(lambda: w.stats["rebuilds"] >= 1, what="observer rebuilt")
        new = w.watches.observer
        assert new is not None and new is not old and new.is_alive()
        wait_until(lambda: documents(cfg, "first__a__b") and documents(cfg, "second__a__b"))
        write_atomic(folder / "third__a__b_v1.txt", b"live again\n")
        wait_until(lambda: documents(cfg, "third__a__b"), what="events after the rebuild")


def test_polling_observer_with_the_settle_rule(tmp_path):
    cfg = make_cfg(tmp_path, observer="polling", poll_interval=0.2)
    data = Path(cfg.data_root)
    task = "combo_v1_dddddddddddd__creative-synthesis-v2__sonnet-4"
    chunks = [b"polled chunk %d\n" % i for i in range(10)]
    with running(cfg) as w:
        raw = data / RAW / f"{task}_v1.txt"
        raw.parent.mkdir(parents=True)
        with open(raw, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                time.sleep(0.1)
        write_atomic(data / PARSED / f"{task}_v1.txt", b"parsed\n")
        rows = wait_until(lambda: [r for r in documents(cfg, task) if r["status"] == "ok"])
        assert doc_file(cfg, rows[0], "raw.txt") == b"".join(chunks)
        assert len(documents(cfg, task)) == 1 and w.polling


def test_task_table_change_replans_the_documents_it_affects(tmp_path):
    cfg = make_cfg(tmp_path)
    data = Path(cfg.data_root)
    task = "combo_v1_eeeeeeeeeeee__creative-synthesis-v2__sonnet-4"
    write_atomic(data / PARSED / f"{task}_v1.txt", b"parsed\n")
    with running(cfg):
        rows = wait_until(lambda: documents(cfg, task))
        assert rows[0]["template_id"] == "creative-synthesis-v2"  # from the id: no tables yet
        tables = data / "2_tasks"
        tables.mkdir()
        (tables / "draft_generation_tasks.csv").write_text(
            "draft_task_id,combo_id,draft_template,generation_model,generation_model_name\n"
            f"{task},combo_v1_eeeeeeeeeeee,creative-synthesis-v7,sonnet-4,Sonnet 4\n"
        )
        wait_until(
            lambda: documents(cfg, task)[0]["template_id"] == "creative-synthesis-v7",
            what="re-planned with the new table",
        )
    # rewritten while no daemon runs: the next start re-plans from the rows themselves
    (tables / "draft_generation_tasks.csv").write_text(
        "draft_task_id,combo_id,draft_template,generation_model,generation_model_name\n"
        f"{task},combo_v1_eeeeeeeeeeee,deliberate-rolling-thread-v2,sonnet-4,Sonnet 4\n"
    )
    with running(cfg):
        assert documents(cfg, task)[0]["template_id"] == "deliberate-rolling-thread-v2"


def test_overflow_warnings_are_not_swallowed_when_logging_is_quiet(tmp_path, caplog):
    """logs.setup() raises the watchdog level with the root level; the detector still fires."""
    logging.getLogger("watchdog").setLevel(logging.ERROR)
    try:
        flag = threading.Event()
        detector = OverflowDetector(flag, lambda: None)
        detector.install()
        inotify_c.logger.warning("Inotify queue overflowed; filesystem events were lost")
        detector.uninstall()
        assert flag.is_set()
    finally:
        logging.getLogger("watchdog").setLevel(logging.NOTSET)
        logging.getLogger(OVERFLOW_LOGGER).setLevel(logging.NOTSET)


def test_an_idle_daemon_sleeps_between_its_timers(tmp_path):
    """Counts wake-ups, not time: an idle loop wakes a few times a second, never spins."""
    cfg = make_cfg(tmp_path)
    with running(cfg) as w:
        time.sleep(3.0)  # past every timer's first due time (records, tables, expire)
        before = w.loop_turns
        time.sleep(2.0)
        turns = w.loop_turns - before
    assert turns <= 2.0 / 0.5 * 3 + 5, f"{turns} wake-ups in 2 s of idling"


def test_a_parsed_file_pulls_in_the_raw_it_proves_complete(tmp_path):
    """Events of two folders can arrive out of order; the parsed file's batch takes its raw."""
    cfg = make_cfg(tmp_path, settle_seconds=30)
    data = tmp_path / "data"
    raw_dir, parsed_dir = data / RAW, data / PARSED
    raw_dir.mkdir(parents=True)
    parsed_dir.mkdir(parents=True)
    task = "combo_v1_0123456789ab__creative-synthesis-v2__sonnet-4"
    with running(cfg) as w:
        # The raw appears as a hard link (a create event, no close): it waits for settle_seconds,
        # as an unclosed file must; nothing but the parsed file can prove it complete.
        outside = tmp_path / "outside.txt"
        outside.write_bytes(b"raw text\n")
        os.link(outside, raw_dir / f"{task}_v1.txt")
        wait_until(lambda: w.pending.raws_of(("draft", task)), what="the raw's create event")
        w.pending._raws.clear()  # as if the raw's event had not been dispatched yet
        (parsed_dir / f"{task}_v1.txt.tmp").write_bytes(b"parsed text\n")
        os.replace(parsed_dir / f"{task}_v1.txt.tmp", parsed_dir / f"{task}_v1.txt")
        db = cfg.db

        def one_ok_document():
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                return con.execute(
                    "SELECT status, doc_id, raw_chars FROM documents WHERE task_id = ?", (task,)
                ).fetchall()
            finally:
                con.close()

        seen: set[str] = set()

        def settled_ok():
            rows = one_ok_document()
            seen.update(r[1] for r in rows)
            return [r for r in rows if r[0] == "ok"]

        rows = wait_until(settled_ok, timeout=10, interval=0.01, what="an ok document")
    assert len(rows) == 1 and len(seen) == 1, f"a document came and went: {seen}"
    assert rows[0][2] is not None, "the raw file was paired with the parsed file"


def _source_state(root: Path) -> dict[str, tuple]:
    """What "read-only on sources" protects: each entry's kind, bytes, mode and mtime."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        body = (
            os.readlink(path)
            if path.is_symlink()
            else (path.read_bytes() if path.is_file() else None)
        )
        out[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, st.st_size, body)
    return out


def test_bad_input_live_is_reported_never_stops_the_daemon_and_sources_stay_untouched(tmp_path):
    cfg = make_cfg(tmp_path, settle_seconds=0.2)
    data = Path(cfg.data_root)
    parsed = data / PARSED
    parsed.mkdir(parents=True)
    good = "combo_v1_bbbbbbbbbbbb__creative-synthesis-v2__sonnet-4"
    with running(cfg) as w:
        os.symlink("/etc/passwd", parsed / "evil__t__m_v1.txt")
        (parsed / ".DS_Store").write_bytes(b"noise")
        (parsed / "left__t__m_v1.txt.tmp").write_bytes(b"in flight")
        write_atomic(parsed / "bytes__t__m_v1.txt", b"caf\xc3\xa9 \xff\xfe \x80\n")
        write_atomic(parsed / f"{good}_v1.txt", b"good\n")
        written = _source_state(data)  # the pipeline is done; from here only docwatch acts
        wait_until(
            lambda: documents(cfg, good) and documents(cfg, "bytes__t__m"),
            what="the good files indexed next to the bad ones",
        )
        con = sqlite3.connect(f"file:{cfg.db}?mode=ro", uri=True)
        query = "SELECT relpath, reason FROM problems"
        problems = wait_until(lambda: con.execute(query).fetchall(), what="the symlink reported")
        con.close()
        time.sleep(1.0)  # more loop turns, timers and checks: still nothing touched
        assert w.indexer is not None and not w.stop_requested.is_set()
    assert problems == [
        (
            f"{PARSED}/evil__t__m_v1.txt",
            "symbolic link: not followed (copy the file itself into the folder)",
        )
    ]
    assert doc_file(cfg, documents(cfg, "bytes__t__m")[0], "parsed.txt") == (
        b"caf\xc3\xa9 \xff\xfe \x80\n"
    )
    assert not list(Path(cfg.docs_root).rglob("*passwd*"))
    assert all(d["task_id"] not in ("evil__t__m", "left__t__m") for d in documents(cfg, None))
    assert _source_state(data) == written

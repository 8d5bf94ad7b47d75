"""A Hypothesis state machine of the whole system against a simple model.

The pipeline writes prompts, raw files (sometimes caught half-written) and parsed files, in
its order (``materialise``) or out of it: a parsed file before its raw (the raw arriving later
with an older mtime), raws and prompts written late with older mtimes.  Files are rewritten in
place (same name, new bytes: a new attempt), touched (same bytes, a new mtime in the past or
the future: nothing may change), a task's raw files leave the tree and come back later with
their original mtimes (a restore in two passes), and the task table is rewritten, dropping
tasks (their facts are sticky) or changing them (a re-plan).

docwatch ingests batches: a prefix of the listing (a scan), the unseen files in write order
(the watcher's events), or one folder kind (events of two folders out of order).  It crashes
like a process: the batch runs in a forked child (its own ``Indexer``; the parent holds none
across the fork) that dies by ``os._exit`` at the nth time it reaches a fault point, or at any
point a trial run on a copy of the whole state says the batch passes, ``recovered`` included;
docwatch then stays down (the pipeline may write meanwhile) until the next docwatch step
restarts it (a new ``Indexer`` and ``recover()``).  It meets a full disk (ENOSPC at any point,
retried in-process) and an index held by a reader.

Invariants after every step, at a crash before any restart too: a doc_id once visible always
resolves; every row has its complete directory, whose ``metadata.json`` (the full row) and
files match the row unless an intent for it is in flight, and nothing else; no directory
without a row or an intent; exactly once (one row per (task, primary source); every ingested
raw and parsed source in exactly one non-superseded document); the ledger's pinned facts are
those the bytes had when first ingested, and never those of half-written bytes; right after a
restart, no intent and no staging left.  At teardown (quiescent): the visible index equals the
model, a scan into an empty index of the finished tree (rewritten paths fed version by version,
every file given the mtime it had when first ingested, the sticky-facts task table), rows and
bytes; tombstones are valid; ``verify`` is clean.

The machine runs on both index backends (SPEC "Index backends": the same guarantees).  SQLite:
the index under the data root.  PostgreSQL (``TestDocwatchStatefulPostgres``): each example's
own database on the run's server (tests/pgserver.py; the ``pg_server`` fixture hands it over,
``OnTheRunsServer``), dropped at teardown; a trial copies it (``CREATE DATABASE … TEMPLATE``)
along with the data root; a reader holding the index is a session holding its tables.  The
model is scanned into SQLite either way: rows, documents and tombstones read the same from both.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import shutil
import signal
import sqlite3
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

import pgserver
import psycopg
import pytest
from conftest import (
    SNAPSHOT_COLUMNS,
    assert_tombstones,
    docs_tree,
    make_config,
    query,
    snapshot,
    staged_batches,
)
from docwatch.ingest.indexer import Indexer
from docwatch.ingest.scan import list_candidates, scan
from docwatch.ingest.verify import verify
from docwatch.store import faults
from docwatch.store.backend import open_index
from docwatch.store.index import Index
from docwatch.store.schema import DOCUMENT_COLUMNS
from hypothesis import HealthCheck, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

DRAFTS = [f"combo_00{i}__deliberate-rolling-thread-v2__sonnet-4" for i in range(3)]
ESSAYS = [f"combo_00{i}__synthesis-theme-narrative-v19__sonnet-4" for i in range(3)]
STAGES = ("draft", "essay")
FOLDERS = {
    ("draft", "prompt"): "3_generation/draft_prompts",
    ("draft", "raw"): "3_generation/draft_responses_raw",
    ("draft", "parsed"): "3_generation/draft_responses",
    ("essay", "prompt"): "3_generation/essay_prompts",
    ("essay", "raw"): "3_generation/essay_responses_raw",
    ("essay", "parsed"): "3_generation/essay_responses",
}
ESSAY_TABLE = "essay_task_id,combo_id,draft_template,essay_template,generation_model,generation_model_name,draft_task_id\n"  # noqa: E501
S = 1_000_000_000
#: Real files on tmpfs when there is one: every batch syncfs()es the filesystem it writes,
#: and on a shared disk that flushes everyone's writes (the protocol is the same on tmpfs).
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
#: How far back (seconds) a file written now may be dated: 0 is write order; 10 and more put
#: it before the previous write (the clock moves 7 s per write).
BACK = st.sampled_from([0, 0, 0, 3, 10, 30, 100])
#: Which files a batch takes, n of them: the listing (a scan: a task's prompt, raw and parsed
#: together), the files in the order they were written (the watcher's events: a raw file and
#: its parsed file in different batches), or one folder kind only (events of different folders
#: arriving out of order).
KINDS = st.sampled_from(["listing", "events", "events", "parsed", "prompt+parsed", "raw"])
#: How many files of the listing a batch takes (half the time all of them).
N = st.one_of(st.just(40), st.integers(1, 40))
#: Fault points, half the time one after the row commit (a visible document being updated).
AFTER_COMMIT = faults.POINTS[faults.POINTS.index("committed") : faults.POINTS.index("cleaned")]
POINTS = st.one_of(st.sampled_from(AFTER_COMMIT), st.sampled_from(faults.POINTS))


#: A forked docwatch child that has not finished by then is stuck (a liveness bound).
CHILD_TIMEOUT = 120
#: The index's tables docwatch writes in a batch (a session holding them blocks its writes).
INDEX_TABLES = ("documents", "attempts", "sources", "intents", "tasks", "state")


def event(what: str) -> None:
    """A Hypothesis statistic (--hypothesis-show-statistics); a no-op in a replay."""
    try:
        hypothesis_event(what)
    except InvalidArgument:
        pass


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def task_of(stage: str, i: int) -> str:
    return (DRAFTS if stage == "draft" else ESSAYS)[i]


#: Names of the PostgreSQL databases the machines make (unique in the run's server).
_databases = itertools.count(1)


class DocwatchMachine(RuleBasedStateMachine):
    #: The run's PostgreSQL server, for a machine whose index is there (``index_url``), set by
    #: the test that runs it (``OnTheRunsServer``).  None: the index is the SQLite file under
    #: the data root.
    pg: pgserver.PgServer | None = None

    def __init__(self) -> None:
        super().__init__()
        self.databases: list[str] = []  # made by this example, dropped at teardown
        self.reads: Index | None = None  # the read session (``_read``)
        self.tmp = Path(tempfile.mkdtemp(prefix="docwatch-state-", dir=SCRATCH))
        self.data = self.tmp / "data"
        self.data.mkdir()
        self.stash = self.tmp / "stash"  # raw files moved out of the tree (a restore's pass 2)
        self.clock = 1_700_000_000  # seconds; files are dated in the past
        self.serial = 0  # makes every written content unique
        self.versions: dict[tuple[str, str, str], int] = {}
        # The tree as the machine wrote it: relpath → (bytes, mtime_ns) of complete files.
        self.files: dict[str, tuple[bytes, int]] = {}
        self.half: dict[str, bytes] = {}  # raw files caught half-written → their final bytes
        self.late: list[tuple[str, bytes, int]] = []  # raws written after their parsed file
        self.stashed: dict[str, tuple[bytes, int]] = {}
        # (relpath, sha256) → the mtime those bytes had when docwatch first ingested them (a
        # touch of ingested bytes leaves it; of bytes not ingested yet, it moves it).
        self.first_mtime: dict[tuple[str, str], int] = {}
        self.partial: set[tuple[str, str]] = set()  # half-written bytes: never ingested
        # relpath → the ingested versions a rewrite in place replaced, oldest first.
        self.history: dict[str, list[tuple[bytes, int]]] = {}
        self.seen_ids: dict[str, str] = {}  # every doc_id ever visible → its stage
        # Raw files caught half-written are dated "now": younger than settle_seconds, so they
        # wait until finished, as with the real writer.
        self.index_url = self._new_database("state") if self.pg is not None else None
        self.cfg = self._config(self.data, self.index_url, settle_seconds=30)
        self.indexer: Indexer | None = None  # None: docwatch is down (crashed, not restarted)
        try:
            self._start()
        except BaseException:  # Hypothesis tears down only a machine it got
            self.teardown()
            raise

    def teardown(self) -> None:
        faults.set_hook(None)
        try:
            self._end_reads()
            if self.indexer is not None:
                self.indexer.close()
                self.indexer = None
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            while self.databases:
                self._drop_database(self.databases[-1])

    # -- where the index lives -----------------------------------------------------------

    @staticmethod
    def _config(data_root: Path, index_url: str | None, **overrides):
        """docwatch's config for a data root: the index is the SQLite file under it, or the
        PostgreSQL database ``index_url`` (the documents are under the data root either way)."""
        return make_config(data_root, batch_max_files=3, index_url=index_url, **overrides)

    def _admin(self, *statements: str) -> None:
        """Run statements as the server's superuser, as ``PgServer.admin_sql`` does (the unix
        socket, trust) but in a connection of our own: a psql process per statement was
        almost half of this variant's run time."""
        assert self.pg is not None
        with psycopg.connect(
            host=str(self.pg.socket_dir),
            port=self.pg.port,
            user=pgserver.SUPERUSER,
            dbname="postgres",
            autocommit=True,
        ) as con:
            for statement in statements:
                con.execute(statement)

    def _new_database(self, label: str, template: str | None = None) -> str:
        """The writer's URL of a new database on the run's server (as ``create_database``
        makes them): empty, or a copy of the database of the URL ``template`` (``CREATE
        DATABASE … TEMPLATE``: no session may be connected to it, which holds between steps:
        docwatch's children have exited, the parent's Indexer and read session are closed)."""
        assert self.pg is not None
        name = f"state_{os.getpid()}_{next(_databases)}_{label}"
        copy = f" TEMPLATE {pgserver.database_of(template)}" if template else ""
        self._admin(
            f"CREATE DATABASE {name}{copy} OWNER {pgserver.WRITER}",
            f"REVOKE ALL ON DATABASE {name} FROM PUBLIC",
        )
        self.databases.append(name)
        return self.pg.url(name)

    def _drop_database(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.databases.remove(name)

    # -- the pipeline --------------------------------------------------------------------

    def _content(self, what: str, task: str) -> bytes:
        self.serial += 1
        return f"{what} {task} #{self.serial} at {self.clock}\n".encode() * 3

    def _put(self, relpath: str, data: bytes, mtime_ns: int) -> None:
        """Write a complete file with its mtime (a new identity keeps the mtime it has now)."""
        path = self.data / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, ns=(mtime_ns, mtime_ns))
        self.files[relpath] = (data, mtime_ns)
        self.first_mtime.setdefault((relpath, sha(data)), mtime_ns)

    def _next(self, stage: str, kind: str, task: str) -> str:
        key = (stage, kind, task)
        self.versions[key] = self.versions.get(key, 0) + 1
        return f"{FOLDERS[(stage, kind)]}/{task}_v{self.versions[key]}.txt"

    def _tick(self) -> int:
        self.clock += 7
        return self.clock

    @rule(i=st.integers(0, 2), stage=st.sampled_from(STAGES), back=BACK)
    def write_prompt(self, i, stage, back):
        """A prompt; with ``back`` a late one, older than attempts written before it."""
        task = task_of(stage, i)
        self._put(
            self._next(stage, "prompt", task),
            self._content("prompt", task),
            self._tick() * S - back * S,
        )

    @rule(i=st.integers(0, 2), stage=st.sampled_from(STAGES), half=st.booleans(), back=BACK)
    def write_raw(self, i, stage, half, back):
        task = task_of(stage, i)
        relpath = self._next(stage, "raw", task)
        body = self._content("raw", task)
        mtime = self._tick() * S - back * S
        if not half:
            self._put(relpath, body, mtime)
            return
        path = self.data / relpath  # caught half-written: finished later (same name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body[: len(body) // 2])  # dated now: younger than settle_seconds
        self.half[relpath] = body
        self.partial.add((relpath, sha(body[: len(body) // 2])))

    @rule(i=st.integers(0, 2), stage=st.sampled_from(STAGES), back=BACK)
    def write_parsed(self, i, stage, back):
        task = task_of(stage, i)
        self._put(
            self._next(stage, "parsed", task),
            self._content("parsed", task),
            self._tick() * S - back * S,
        )

    @rule(i=st.integers(0, 2), stage=st.sampled_from(STAGES), parsed=st.booleans())
    def materialise(self, i, stage, parsed):
        """One materialisation in the pipeline's order: prompt, raw, and (unless parsing
        failed) parsed, each dated after the one before."""
        task = task_of(stage, i)
        for kind in ("prompt", "raw", "parsed") if parsed else ("prompt", "raw"):
            self._put(self._next(stage, kind, task), self._content(kind, task), self._tick() * S)

    @rule(i=st.integers(0, 2), stage=st.sampled_from(STAGES))
    def write_parsed_before_its_raw(self, i, stage):
        """The parsed file lands first; its raw (dated earlier) arrives later."""
        task = task_of(stage, i)
        raw_path, parsed_path = self._next(stage, "raw", task), self._next(stage, "parsed", task)
        t = self._tick()
        self._put(parsed_path, self._content("parsed", task), (t + 3) * S)
        self.late.append((raw_path, self._content("raw", task), (t + 1) * S))

    @precondition(lambda self: self.late)
    @rule(pick=st.integers(0, 20))
    def deliver_a_late_raw(self, pick):
        self._put(*self.late.pop(pick % len(self.late)))

    @precondition(lambda self: self.half)
    @rule()
    def finish_raw_writes(self):
        for relpath, body in sorted(self.half.items()):
            self._put(relpath, body, self._tick() * S)
        self.half.clear()

    def _ingested(self) -> set[tuple[str, str]]:
        """(relpath, sha256) of every source in the ledger."""
        return set(self._ledger())

    @rule(pick=st.integers(0, 200))
    def rewrite_in_place(self, pick):
        """Same name, new bytes, new mtime: a new attempt.  The replaced version, if docwatch
        ingested it, stays an attempt (the model feeds it before the current one).  Raw and
        parsed files only: an ingested one always has a document keeping its bytes; an
        ingested prompt may have none, and an attempt that should carry its old bytes then
        records them as unavailable, which depends on the order things happened
        (tests/test_identity.py has that case)."""
        rewritable = sorted(r for r in self.files if "_prompts/" not in r)
        if not rewritable:
            return
        relpath = rewritable[pick % len(rewritable)]
        data, _ = self.files.pop(relpath)
        ingested = (relpath, sha(data)) in self._ingested()
        if ingested:
            self.history.setdefault(relpath, []).append(
                (data, self.first_mtime[(relpath, sha(data))])
            )
        event("rewrite of an ingested file" if ingested else "rewrite of a file not ingested")
        self._put(relpath, self._content("rewritten", relpath), self._tick() * S)

    @rule(pick=st.integers(0, 200), when=st.sampled_from(["past", "far past", "future"]))
    def touch(self, pick, when):
        """Same bytes, another mtime (touch, restore, cp -r): must change nothing."""
        if not self.files:
            return
        relpath = sorted(self.files)[pick % len(self.files)]
        data, _ = self.files[relpath]
        mtime = {
            "past": (self.clock - 50) * S,
            "far past": 1_600_000_000 * S,
            "future": time.time_ns() + 10**6 * S,
        }[when]
        os.utime(self.data / relpath, ns=(mtime, mtime))
        self.files[relpath] = (data, mtime)
        key = (relpath, sha(data))
        if key not in self._ingested():  # not ingested yet: it will be with this mtime
            self.first_mtime[key] = mtime
        else:
            event("touch of an ingested file")

    @rule(i=st.integers(0, 2), stage=st.sampled_from(STAGES))
    def move_raw_files_out(self, i, stage):
        """Pass 1 of a two-pass restore: the task's raw files are not (yet) in the tree."""
        prefix = f"{FOLDERS[(stage, 'raw')]}/{task_of(stage, i)}_v"
        for relpath in [r for r in self.files if r.startswith(prefix)]:
            self.stashed[relpath] = self.files.pop(relpath)
            target = self.stash / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(self.data / relpath, target)

    @precondition(lambda self: self.stashed)
    @rule()
    def restore_raw_files(self):
        """Pass 2: the raw files come back with their original (older) mtimes (cp -p)."""
        for relpath, (data, mtime) in sorted(self.stashed.items()):
            shutil.copy2(self.stash / relpath, self.data / relpath)
            os.utime(self.data / relpath, ns=(mtime, mtime))
            (self.stash / relpath).unlink()
            self.files[relpath] = (data, mtime)
        self.stashed.clear()

    @rule(keep=st.sets(st.integers(0, 2)), shift=st.integers(0, 1))
    def rewrite_task_table(self, keep, shift):
        """The pipeline rewrites the table for a new experiment: tasks drop out (their facts
        are sticky) or come back with other facts (another draft parent: a re-plan)."""
        rows = "".join(
            f"{ESSAYS[i]},combo_00{i},deliberate-rolling-thread-v2,synthesis-theme-narrative-v19,"
            f"sonnet-4,Sonnet 4,{DRAFTS[(i + shift) % 3]}\n"
            for i in sorted(keep)
        )
        path = self.data / "2_tasks" / "essay_generation_tasks.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(ESSAY_TABLE + rows)

    # -- docwatch ------------------------------------------------------------------------

    def _start(self) -> None:
        """docwatch (re)starts: a new Indexer recovers what a dead writer left."""
        self.indexer = Indexer(self.cfg, "state", sleep=lambda s: None)
        self.indexer.recover()
        # Right after recovery, before any batch repairs anything: no intents, no staging,
        # no orphan, every document settled.
        self.check_the_invariants()

    def _running(self) -> Indexer:
        if self.indexer is None:
            self._start()
        assert self.indexer is not None
        return self.indexer

    def _batch(self, n: int, kinds: str) -> list:
        for relpath in self.half:  # still being written: its mtime keeps moving
            os.utime(self.data / relpath)
        cands = list_candidates(self.cfg, STAGES)
        if kinds == "events":  # files not seen yet (by their stat), as they were written
            seen = {(r, s["seen_size"], s["seen_mtime_ns"]) for (r, _), s in self._ledger().items()}
            stat = {c.relpath: os.lstat(c.path) for c in cands}
            cands = [
                c
                for c in cands
                if (c.relpath, stat[c.relpath].st_size, stat[c.relpath].st_mtime_ns) not in seen
            ]
            cands.sort(key=lambda c: (stat[c.relpath].st_mtime_ns, c.relpath))
        elif kinds != "listing":
            cands = [c for c in cands if c.role.kind in kinds.split("+")]
        return cands[:n]

    def _something_new(self) -> bool:
        """Whether a file waits that docwatch has not seen (a batch would have work)."""
        return bool(self._batch(1, "events"))

    @rule(n=N, kinds=KINDS)
    def ingest(self, n, kinds):
        self._running().ingest(self._batch(n, kinds))

    def _child(self, cfg, batch: list, hook) -> int:
        """Run a docwatch process in a forked child: it starts (its own Indexer, never the
        parent's connection), recovers and ingests ``batch``, with ``hook`` at every fault
        point.  Returns its exit code."""
        self._end_reads()  # no connection or lock of ours crosses the fork
        if self.indexer is not None:
            self.indexer.close()
            self.indexer = None
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                faults.set_hook(hook)
                indexer = Indexer(cfg, "state", sleep=lambda s: None)
                indexer.recover()
                indexer.ingest(batch)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        deadline = time.monotonic() + CHILD_TIMEOUT
        while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"the docwatch child hung for {CHILD_TIMEOUT} s")
            time.sleep(0.005)
        return os.waitstatus_to_exitcode(waited[1])

    def _crash(self, batch: list, die_at) -> str | None:
        """The child dies by os._exit wherever ``die_at(point)`` says (no finally runs, no
        cleanup); docwatch stays down until a restart.  Returns the point it died at."""
        died_at = self.tmp / "died_at"
        died_at.unlink(missing_ok=True)

        def hook(reached: str) -> None:
            if die_at(reached):
                died_at.write_text(reached)
                os._exit(faults.EXIT_CODE)

        code = self._child(self.cfg, batch, hook)
        assert code in (faults.EXIT_CODE, 0), f"the ingesting child failed (exit {code})"
        return died_at.read_text() if code == faults.EXIT_CODE else None

    def _trial(self, batch: list) -> list[str]:
        """The fault points a batch passes, from a trial run on a copy of the whole state
        (tree, index, documents, staging): a crash can then be aimed at any one of them."""
        self._end_reads()  # the index is copied closed
        if self.indexer is not None:
            self.indexer.close()
            self.indexer = None
        trial = self.tmp / "trial"
        shutil.rmtree(trial, ignore_errors=True)
        shutil.copytree(self.data, trial, symlinks=True)  # the SQLite index goes along
        trial_url = None
        if self.index_url is not None:  # the PostgreSQL index is copied beside it
            trial_url = self._new_database("trial", template=self.index_url)
        cfg = self._config(trial, trial_url, settle_seconds=30)
        listed = {c.relpath: c for c in list_candidates(cfg, STAGES)}
        trace = self.tmp / "trace"
        trace.unlink(missing_ok=True)

        def record(reached: str) -> None:
            with open(trace, "a") as fh:
                fh.write(reached + "\n")

        code = self._child(cfg, [listed[c.relpath] for c in batch], record)
        assert code == 0, f"the trial child failed (exit {code})"
        shutil.rmtree(trial)
        if trial_url is not None:
            self._drop_database(pgserver.database_of(trial_url))
        return trace.read_text().split() if trace.exists() else []

    @precondition(lambda self: self._something_new())
    @rule(point=POINTS, nth=st.sampled_from([1, 1, 2, 3]), n=N, kinds=KINDS)
    def crash_at_a_point(self, point, nth, n, kinds):
        """Dies the nth time it reaches ``point`` (``recovered``: while recovering)."""
        hits: Counter = Counter()

        def die_at(reached: str) -> bool:
            hits[reached] += 1
            return reached == point and hits[reached] == nth

        self._note_crash(self._crash(self._batch(n, kinds), die_at))

    @precondition(lambda self: self._something_new())
    @rule(k=st.integers(0, 1000), after_commit=st.booleans(), n=N, kinds=KINDS)
    def crash_at_any_durable_step(self, k, after_commit, n, kinds):
        """Dies at one of the fault points the batch passes (the kth, modulo how many: a
        trial run on a copy counts them), so the crash lands wherever the batch does work;
        with ``after_commit``, between its row commit and its end (an update unfinished)."""
        batch = self._batch(n, kinds)
        points = self._trial(batch)
        first = 0
        if after_commit and "committed" in points:
            first = points.index("committed")
            points = [p for p in points[first:] if p in AFTER_COMMIT]
        if not points:
            event("crash: the batch had nothing to write")
            return
        seen: list[str] = []

        def die_at(reached: str) -> bool:
            seen.append(reached)
            return len(seen) == first + k % len(points) + 1

        self._note_crash(self._crash(batch, die_at))

    def _note_crash(self, died: str | None) -> None:
        """Statistics (--hypothesis-show-statistics): where crashes landed."""
        if died is None:
            event("crash point not reached")
            return
        event(f"crashed at {died}")
        ops = {(i["op"], i["phase"]) for i in self._read_index()[2].values()}
        if ("update", "committed") in ops:
            event("crashed with a committed update unfinished")

    @rule()
    def restart(self):
        if self.indexer is not None:
            self.indexer.close()
            self.indexer = None
        self._start()

    @rule(
        point=POINTS,
        times=st.integers(1, 3),
        n=N,
        kinds=KINDS,
    )
    def disk_full_for_a_while(self, point, times, n, kinds):
        remaining = times

        def hook(reached):
            nonlocal remaining
            if reached == point and remaining > 0:
                remaining -= 1
                raise OSError(errno.ENOSPC, "injected: no space left on device")

        indexer = self._running()
        faults.set_hook(hook)
        try:
            indexer.ingest(self._batch(n, kinds))
        finally:
            faults.set_hook(None)
        event(f"disk full at {point}" if remaining < times else "disk-full point not reached")

    @rule(n=N)
    def index_locked_by_a_reader_for_a_while(self, n):
        """Another session holds the index still while a batch runs.  SQLite: a reader's
        BEGIN IMMEDIATE (the write lock).  PostgreSQL: a plain SELECT never blocks a writer
        (MVCC), so the session takes what one that keeps the tables still for a consistent
        read (a report, a backup script) takes: LOCK TABLE … IN SHARE MODE, which every
        INSERT, UPDATE and DELETE waits for."""
        indexer = self._running()
        locked = threading.Event()

        def hold():
            if self.index_url is None:
                con = sqlite3.connect(self.cfg.db, isolation_level=None)
                con.execute("BEGIN IMMEDIATE")
            else:
                con = psycopg.connect(self.index_url, autocommit=True)
                con.execute("BEGIN")
                con.execute(f"LOCK TABLE {', '.join(INDEX_TABLES)} IN SHARE MODE")
            locked.set()
            time.sleep(0.1)
            con.execute("COMMIT")
            con.close()

        holder = threading.Thread(target=hold)
        holder.start()
        assert locked.wait(CHILD_TIMEOUT), "the reader never took its lock"
        try:
            indexer.ingest(self._batch(n, "listing"))
        finally:
            holder.join()

    # -- reading the index ---------------------------------------------------------------

    def _read(self, *tables: str) -> list[list[dict]]:
        """Every row of each table, as plain dicts, read in a read-only session of the index
        (docwatch made its schema when it first started).  SQLite: opened for the read.
        PostgreSQL: kept open between reads (a connection costs ~20 ms, and a step reads
        several times) and closed whenever no session may be connected (``_end_reads``)."""
        if self.reads is None:
            self.reads = open_index(self.cfg.index_location, readonly=True)
        try:
            return [self.reads.all(f"SELECT * FROM {table}") for table in tables]
        finally:
            if self.index_url is None:
                self._end_reads()

    def _end_reads(self) -> None:
        """Close the read session: before a fork (no connection of ours crosses it), before
        the index is copied as a template, at teardown."""
        if self.reads is not None:
            self.reads.close()
            self.reads = None

    def _read_index(self):
        """(rows, attempts, intents, ledger) as plain dicts."""
        documents, attempts, intents, sources = self._read(
            "documents", "attempts", "intents", "sources"
        )
        return (
            {r["doc_id"]: r for r in documents},
            {r["doc_id"]: r for r in attempts},
            {r["doc_id"]: r for r in intents},
            self._by_source(sources),
        )

    @staticmethod
    def _by_source(sources: list[dict]) -> dict:
        return {(r["relpath"], r["sha256"]): r for r in sources}

    def _ledger(self) -> dict:
        return self._by_source(self._read("sources")[0])

    def _assert_no_orphans(self, rows: dict, intents: dict) -> None:
        """Every document directory has a row, or an intent (a batch that died writing it)."""
        for stage in STAGES:
            stage_dir = self.cfg.docs_root / stage
            if stage_dir.is_dir():
                for entry in stage_dir.iterdir():
                    assert entry.name in rows or entry.name in intents, f"orphan {entry}"

    # -- the invariants ------------------------------------------------------------------

    @invariant()
    def invariants(self):
        self.check_the_invariants()

    def check_the_invariants(self) -> None:
        rows, attempts, intents, ledger = self._read_index()
        self._check_ids_resolve(rows)
        self._check_directories(rows, attempts, intents)
        self._check_exactly_once(rows, attempts, ledger)
        self._check_pinned_facts(ledger)
        if self.indexer is not None:  # docwatch alive and between batches
            assert not intents, f"intents left by a finished batch: {sorted(intents)}"
            assert not staged_batches(self.cfg.docs_root), "staging left by a finished batch"

    def _check_directories(self, rows: dict, attempts: dict, intents: dict) -> None:
        """(a) every row has its complete directory; its metadata.json and files match the
        row unless an intent for it is in flight; no directory without a row or an intent."""
        for doc_id, row in rows.items():
            assert row["doc_dir"] == f"docs/{row['stage']}/{doc_id}", row["doc_dir"]
            doc_dir = self.data / row["doc_dir"]
            meta_path = doc_dir / "metadata.json"
            assert meta_path.is_file(), f"visible {doc_id} ({row['status']}) has no {meta_path}"
            meta = json.loads(meta_path.read_text())
            settled = doc_id not in intents
            if settled:  # metadata.json holds the full row; the order copy is the attempt's
                stored = {c: row[c] for c in DOCUMENT_COLUMNS}
                stored["meta_small"] = json.loads(row["meta_small"])
                assert meta["row"] == stored, (doc_id, meta["row"], stored)
                assert row["version"] == attempts[doc_id]["version"], (doc_id, row["version"])
            sources = json.loads(row["meta_small"])["sources"]
            for kind, relpath in sources.items():
                key = attempts[doc_id][f"{kind}_key"]
                if relpath is None:
                    assert key is None, (doc_id, kind, key)
                    continue
                assert key is not None and key.split(":", 1)[1] == relpath, (doc_id, kind, key)
                path = doc_dir / f"{kind}.txt"
                assert path.is_file(), f"visible {doc_id} ({row['status']}) has no {kind}.txt"
                if settled:
                    assert sha(path.read_bytes()) == key.split(":", 1)[0], (doc_id, kind)
            if settled:  # nothing else: a file a batch added and never committed is gone
                expected = {"metadata.json"} | {f"{k}.txt" for k, v in sources.items() if v}
                assert set(os.listdir(doc_dir)) == expected, (doc_id, os.listdir(doc_dir))
        self._assert_no_orphans(rows, intents)

    def _check_ids_resolve(self, rows: dict) -> None:
        """(b) a doc_id once visible always resolves: its row and its directory stay."""
        self.seen_ids.update((doc_id, row["stage"]) for doc_id, row in rows.items())
        for doc_id, stage in self.seen_ids.items():
            assert doc_id in rows, f"{doc_id} was visible and no longer resolves"
            assert (self.cfg.docs_root / stage / doc_id / "metadata.json").is_file(), doc_id

    def _check_exactly_once(self, rows: dict, attempts: dict, ledger: dict) -> None:
        """(c) one row per (task, primary source); every ingested raw and parsed source in
        exactly one non-superseded document, and documents only of ingested sources."""
        primaries = Counter(
            (row["stage"], row["task_id"], attempts[d]["raw_key"] or attempts[d]["parsed_key"])
            for d, row in rows.items()
        )
        assert all(n == 1 for n in primaries.values()), primaries.most_common(3)
        holders: Counter = Counter()
        for doc_id, row in rows.items():
            if row["status"] != "superseded":
                a = attempts[doc_id]
                holders.update(k for k in (a["raw_key"], a["parsed_key"]) if k)
        ingested = {
            f"{s}:{r}" for (r, s), src in ledger.items() if src["kind"] in ("raw", "parsed")
        }
        for key in ingested:
            assert holders[key] == 1, f"{key} is in {holders[key]} visible documents"
        assert set(holders) <= ingested, set(holders) - ingested

    def _check_pinned_facts(self, ledger: dict) -> None:
        """The ledger holds only complete bytes the pipeline wrote, each with the mtime it
        had when first ingested (a later touch never moves it)."""
        for key, src in ledger.items():
            assert key not in self.partial, f"half-written {key[0]} was ingested"
            assert key in self.first_mtime, f"{key} was never written"
            assert src["mtime_ns"] == self.first_mtime[key], (key, src, self.first_mtime[key])

    # -- quiescence: the index equals the model --------------------------------------------

    def write_sticky_table(self, root: Path) -> None:
        """The model's essay table: what the index remembers of each task (sticky facts: a
        task the current table dropped keeps the facts it was indexed with), else the table."""
        stored = query(
            self.cfg.index_location,
            "SELECT task_id, template_id, model_id, parent_task_id FROM tasks"
            " WHERE stage = 'essay' AND from_tables = 1",
        )
        rows = {
            task: f"{task},x,deliberate-rolling-thread-v2,{tpl},{model},M,{parent}\n"
            for task, tpl, model, parent in stored
        }
        path = root / "2_tasks" / "essay_generation_tasks.csv"
        if path.exists():
            for line in path.read_text().splitlines()[1:]:
                rows[line.split(",")[0]] = line + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(ESSAY_TABLE + "".join(rows[k] for k in sorted(rows)))

    def finish_the_tree(self) -> None:
        """The pipeline is done: late raws delivered, restores complete, writes finished."""
        while self.late:
            self.deliver_a_late_raw(0)
        if self.stashed:
            self.restore_raw_files()
        if self.half:
            self.finish_raw_writes()

    def check_quiescent_equals_model(self) -> None:
        self.finish_the_tree()
        self._running()
        self.indexer.close()
        self.indexer = None
        final_cfg = self._config(self.data, self.index_url)  # settle 0: future mtimes too
        scan(final_cfg, run_id="state")
        self.check_the_invariants()

        model_root = self.tmp / "model"
        shutil.copytree(self.data, model_root, ignore=shutil.ignore_patterns("db", "docs"))
        self.write_sticky_table(model_root)
        model_cfg = make_config(model_root)  # on SQLite whatever the backend under test

        def place(relpath: str, data: bytes, mtime_ns: int) -> None:
            (model_root / relpath).write_bytes(data)
            os.utime(model_root / relpath, ns=(mtime_ns, mtime_ns))

        for relpath, (data, _) in self.files.items():  # first-ingest mtimes, not touches
            place(relpath, data, self.first_mtime[(relpath, sha(data))])
        # Every version docwatch ingested of a rewritten path, oldest first, then the tree.
        for n in range(max((len(h) for h in self.history.values()), default=0)):
            for relpath, versions in self.history.items():
                data, _ = versions[n] if n < len(versions) else self.files[relpath]
                place(relpath, data, self.first_mtime[(relpath, sha(data))])
            scan(model_cfg, run_id="state")
        for relpath in self.history:
            data, _ = self.files[relpath]
            place(relpath, data, self.first_mtime[(relpath, sha(data))])
        scan(model_cfg, run_id="state")

        got, want = snapshot(self.cfg.index_location), snapshot(model_cfg.db)
        assert got == want, differences(got, want)
        assert docs_tree(self.cfg.docs_root) == docs_tree(model_cfg.docs_root)
        tombstones = assert_tombstones(self.cfg.index_location, self.cfg.docs_root)
        event(f"tombstones at the end: {min(tombstones, 3)}{'+' if tombstones >= 3 else ''}")
        report = verify(self.cfg)
        assert report.ok, report.problems


def differences(got: dict, want: dict) -> str:
    """The index against the model, row by row (only the differing columns)."""
    lines = [f"only in the index: {got[d]}" for d in sorted(set(got) - set(want))]
    lines += [f"only in the model: {want[d]}" for d in sorted(set(want) - set(got))]
    for d in sorted(set(got) & set(want)):
        diff = [
            f"{column}: index {a!r} model {b!r}"
            for column, a, b in zip(SNAPSHOT_COLUMNS, got[d], want[d], strict=True)
            if a != b
        ]
        if diff:
            lines.append(f"{d}: " + "; ".join(diff))
    return "\n".join(lines)


class QuiescentMachine(DocwatchMachine):
    def teardown(self) -> None:
        try:
            if self.data.exists():
                self.check_quiescent_equals_model()
        finally:
            super().teardown()


SETTINGS = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# -- SQLite: the index under the data root --------------------------------------------------

QuiescentMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=30, **SETTINGS)
TestDocwatchStateful = QuiescentMachine.TestCase


class LongQuiescentMachine(QuiescentMachine):
    pass


LongQuiescentMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=60, **SETTINGS
)
TestDocwatchStatefulLong = pytest.mark.long(LongQuiescentMachine.TestCase)


# -- PostgreSQL: a fresh database on the run's server per example ---------------------------


class PostgresQuiescentMachine(QuiescentMachine):
    pass


class OnTheRunsServer:
    """A Hypothesis TestCase takes no fixtures: this autouse one hands the run's PostgreSQL
    server (started on first use, shared with the rest of the suite) to its machine."""

    machine: type[DocwatchMachine]

    @pytest.fixture(autouse=True)
    def _pg(self, pg_server):
        self.machine.pg = pg_server
        try:
            yield
        finally:
            self.machine.pg = None


# Sized for `make test` on 2 cores: ~25 s (the SQLite variant's 50 x 30: ~15 s).  An example
# costs about 3 times as much here (a database made and dropped per example, one copied per
# trial, a session per docwatch start).
PostgresQuiescentMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=25, **SETTINGS
)


class TestDocwatchStatefulPostgres(OnTheRunsServer, PostgresQuiescentMachine.TestCase):
    machine = PostgresQuiescentMachine


class LongPostgresQuiescentMachine(QuiescentMachine):
    pass


# Half the SQLite twin's examples: each costs a database (about 14 min at 300 on 2 cores).
LongPostgresQuiescentMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, **SETTINGS
)


@pytest.mark.long
class TestDocwatchStatefulPostgresLong(OnTheRunsServer, LongPostgresQuiescentMachine.TestCase):
    machine = LongPostgresQuiescentMachine

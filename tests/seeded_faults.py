"""Seeded faults: each is planted in a throwaway copy of the package, and the tests that stand
for its promise must fail.  ``make test-faults`` (part of ``make test-long``) runs them all and
prints one line per fault; it exits 1 when a fault survives or no longer applies (the code it
edits changed: update the fault with the code).

    .venv/bin/python tests/seeded_faults.py                 # every fault
    .venv/bin/python tests/seeded_faults.py sync_noop ...   # some of them
    .venv/bin/python tests/seeded_faults.py --list

A fault edits exact text (``old`` must occur once); the copy is imported first by the tests and
by every ``docwatch`` process they start (``PYTHONPATH`` and pytest's ``pythonpath``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PKG = "daemon/docwatch"


@dataclass(frozen=True)
class Fault:
    name: str
    promise: str  # what breaks
    edits: tuple[tuple[str, str, str], ...]  # (file under daemon/docwatch, old, new)
    tests: tuple[str, ...]  # pytest node ids or files; any failure catches the fault
    extra: tuple[str, ...] = field(default=())  # more pytest arguments (-k ...)


FAULTS = (
    # -- durable before visible, nothing partial after a crash (issue 12) ----------------------
    Fault(
        "commit_before_publish",
        "rows committed before their files are renamed into place",
        (
            (
                "ingest/writer.py",
                "        publishing = start_io(batch.publish) if batch is not None else None\n",
                "        publishing = start_io(lambda: None) if batch is not None else None\n",
            ),
            (
                "ingest/writer.py",
                "            self._commit(batch, batch_in, kept, result, after_rows)\n",
                "            self._commit(batch, batch_in, kept, result, after_rows)\n            batch.publish()\n",
            ),
        ),
        ("tests/test_crash.py",),
        ("-k", "renamed or durable_steps"),
    ),
    Fault(
        "commit_beside_renames",
        "the rows commit while their renames still run on the I/O thread (no wait for them)",
        (
            (
                "ingest/writer.py",
                "                    publishing.result()  # the renames durable before the rows commit\n",
                "",
            ),
        ),
        (
            "tests/test_faults.py::test_rows_stay_invisible_until_their_renames_are_durable",
            "tests/test_crash.py::test_durable_steps_in_order",
        ),
    ),
    Fault(
        "rename_before_intents",
        "documents renamed into place before the intents commit",
        (
            (
                "ingest/writer.py",
                "        publishing = start_io(batch.publish) if batch is not None else None\n",
                "        publishing = start_io(lambda: None) if batch is not None else None\n",
            ),
            (
                "ingest/writer.py",
                "        task_of = {c.doc_id: c.info.task_id for c in kept}\n",
                "        task_of = {c.doc_id: c.info.task_id for c in kept}\n"
                "        batch.publish()\n",
            ),
        ),
        ("tests/test_crash.py::test_durable_steps_in_order",),
    ),
    Fault(
        "intents_flush_left_to_another_filesystem",
        "the intents' commit is left unflushed for the documents' syncfs even when the index is "
        "on another filesystem (that syncfs never flushes it: intents not durable before the "
        "renames)",
        (
            (
                "store/sqlite.py",
                "            return os.stat(path).st_dev == os.stat(self.path.parent).st_dev\n",
                "            return True\n",
            ),
        ),
        ("tests/test_syscalls.py",),
        ("-k", "durable_order or another_filesystem"),
    ),
    Fault(
        "commits_left_unflushed_after_the_intents",
        "after the intents' unflushed commit the index never flushes its commits again (the "
        "rows commit unflushed: a visible row not durable)",
        (
            (
                "store/sqlite.py",
                "{SYNCHRONOUS if on else 'NORMAL'}",
                "{'NORMAL'}",
            ),
        ),
        ("tests/test_syscalls.py",),
        ("-k", "durable_order"),
    ),
    Fault(
        "intents_written_after_the_syncfs",
        "the unflushed intents' commit comes after the batch's syncfs instead of before it (so "
        "nothing flushes the intents before the renames)",
        (
            (
                "ingest/writer.py",
                "            with self.index.transaction(flush=False):\n"
                "                self.index.put_intents(self.writer_id, rows)\n"
                "            batch.sync_staged()\n",
                "            batch.sync_staged()\n"
                "            with self.index.transaction(flush=False):\n"
                "                self.index.put_intents(self.writer_id, rows)\n",
            ),
        ),
        ("tests/test_syscalls.py",),
        ("-k", "durable_order or another_filesystem"),
    ),
    Fault(
        "sync_noop",
        "syncfs made a no-op (files never made durable)",
        (("store/docstore.py", "if _libc.syncfs(fd) != 0:", "if 0 != 0:"),),
        ("tests/test_syscalls.py",),
    ),
    Fault(
        "recovery_keeps_uncommitted_dirs",
        "start-up never removes the directories of an uncommitted batch",
        (
            (
                "store/docstore.py",
                '            if intent["op"] == Op.CREATE.value and not committed and target.exists():\n'
                "                shutil.rmtree(target)\n",
                '            if intent["op"] == Op.CREATE.value and not committed and target.exists():\n'
                "                pass\n",
            ),
        ),
        ("tests/test_crash.py::test_crash_then_a_new_raw_arrives_before_the_rerun",),
    ),
    Fault(
        "recovery_wipes_every_staging",
        "start-up recovery removes every writer's staging under docs/.tmp, not only its own",
        (
            (
                "store/docstore.py",
                "        if self.staging_root.exists():\n"
                "            for leftover in self.staging_root.iterdir():\n",
                "        if (self.docs_root / '.tmp').exists():\n"
                "            for leftover in (self.docs_root / '.tmp').iterdir():\n",
            ),
        ),
        (
            "tests/test_faults.py::test_a_writer_recovers_only_its_own_staging_in_a_shared_docs_root",
        ),
    ),
    Fault(
        "finish_before_commit",
        "files of visible documents replaced before their rows commit",
        (
            (
                "ingest/writer.py",
                "            self._commit(batch, batch_in, kept, result, after_rows)\n"
                "            committed = True\n"
                '            faults.point("committed")\n'
                "            if batch.has_work_after_commit():\n"
                "                batch.finish()\n",
                "            work = batch.has_work_after_commit()\n"
                "            if work:\n"
                "                batch.finish()\n"
                "            self._commit(batch, batch_in, kept, result, after_rows)\n"
                "            committed = True\n"
                '            faults.point("committed")\n'
                "            if work:\n",
            ),
        ),
        ("tests/test_crash.py",),
        ("-k", "committed or durable_steps"),
    ),
    Fault(
        "recovery_skips_updates",
        "recovery ignores update intents (committed replacements never finished)",
        (
            (
                "store/docstore.py",
                "                        os.replace(staged / name, target / name)\n"
                "                        changed += 1\n",
                "                        changed += 1\n",
            ),
        ),
        ("tests/test_crash.py",),
        ("-k", "replaced or recovery"),
    ),
    Fault(
        "removals_before_commit",
        "files a visible document no longer references are deleted before its row commits",
        (
            (
                "store/docstore.py",
                "                for name in staged.add:\n"
                "                    os.rename(staged.staged_dir / name, target / name)\n",
                "                for name in staged.add:\n"
                "                    os.rename(staged.staged_dir / name, target / name)\n"
                "                for name in staged.remove:\n"
                "                    _unlink(target / name)\n",
            ),
        ),
        ("tests/test_crash.py",),
        ("-k", "renamed or dirs_synced or intents_committed"),
    ),
    Fault(
        "supersession_removed",
        "a document whose parsed file a late raw absorbed is never superseded (two ok documents)",
        (
            (
                "ingest/planner.py",
                '    if old["status"] == SUPERSEDED and meta.get("superseded_by") == by:\n'
                "        return None\n",
                "    if True:\n        return None\n",
            ),
        ),
        ("tests/test_scan.py::test_any_batching_and_order_converges_to_one_scan",),
    ),
    # -- identity (issue 8) --------------------------------------------------------------------
    Fault(
        "dedupe_whole_source",
        "the model dedupes sources on the whole Source, mtime included",
        (
            (
                "core/model.py",
                "        if seen is None or s.order() < seen.order():\n            first[s.key] = s\n"
                "    return list(first.values())\n",
                "        first[(s.key, s.mtime_ns)] = s\n    return list(first.values())\n",
            ),
            (
                "ingest/ingestor.py",
                "            if o.source.key in pinned:\n",
                "            if False:\n",
            ),
        ),
        ("tests/test_identity.py",),
        ("-k", "touching_one"),
    ),
    Fault(
        "pinned_facts_move",
        "the ledger moves a known source's mtime (facts not pinned)",
        (
            (
                "store/index.py",
                '    " ON CONFLICT (relpath, sha256) DO UPDATE SET seen_size = excluded.seen_size,"\n',
                '    " ON CONFLICT (relpath, sha256) DO UPDATE SET mtime_ns = excluded.mtime_ns,'
                ' seen_size = excluded.seen_size,"\n',
            ),
            (
                "ingest/ingestor.py",
                "                touched.append(pinned[o.source.key])\n",
                "                touched.append(o.source)\n",
            ),
        ),
        ("tests/test_identity.py",),
        ("-k", "touching_every"),
    ),
    Fault(
        "supersede_deletes",
        "a superseded document's row is deleted (a visible id vanishes)",
        (
            (
                "ingest/writer.py",
                "        self.index.put_documents((c.row, c.facts) for c in kept)\n",
                "        self.index.put_documents(\n"
                "            (c.row, c.facts) for c in kept if c.stored_facts is None\n"
                "        )\n"
                "        for c in kept:\n"
                "            if c.stored_facts is not None:\n"
                "                self.index.execute(\n"
                "                    'DELETE FROM documents WHERE doc_id = ?', (c.doc_id,))\n",
            ),
        ),
        ("tests/test_identity.py",),
        ("-k", "two_pass and scan"),
    ),
    Fault(
        "facts_not_sticky",
        "a task dropped from the tables loses the facts it was indexed with",
        (
            (
                "core/tasks.py",
                "    if current.from_tables or stored is None:\n        return current\n    return stored\n",
                "    return current\n",
            ),
        ),
        ("tests/test_identity.py",),
        ("-k", "rewritten_to_a_header and scan"),
    ),
    Fault(
        "late_link_misses_unknown_stage",
        "a child whose parent's stage was unknown is never linked when the parent arrives",
        (
            (
                "store/index.py",
                'for stage in [r["parent_stage"]] if r["parent_stage"] else ["essay", "draft"]:',
                'for stage in [r["parent_stage"]]:',
            ),
        ),
        ("tests/test_identity.py",),
        ("-k", "unknown_stage and scan"),
    ),
    Fault(
        "future_mtime_skips_settle",
        "in watch, a future mtime skips the settle rule",
        (
            (
                "live/readiness.py",
                "    if age_ns < 0:  # a future mtime",
                "    if age_ns < 0:\n        return Decision(Verdict.READ)\n    if age_ns < 0:  #",
            ),
        ),
        ("tests/test_identity.py",),
        ("-k", "future_mtime_only_once_written"),
    ),
    Fault(
        "ledger_on_path_alone",
        "the ledger matches a path alone: a file rewritten in place is never read again",
        (
            (
                "store/index.py",
                "return lambda relpath, size, mtime_ns: (relpath, size, mtime_ns) in seen",
                "return lambda relpath, size, mtime_ns: relpath in {s[0] for s in seen}",
            ),
        ),
        ("tests/test_identity.py",),
        ("-k", "rewritten_in_place and watch"),
    ),
    Fault(
        "replan_in_one_batch",
        "a big re-plan runs in one batch, blocking the loop",
        (("ingest/indexer.py", "REPLAN_CHUNK = 200", "REPLAN_CHUNK = 10**9"),),
        ("tests/test_identity.py",),
        ("-k", "large_replan"),
    ),
    Fault(
        "status_string_split",
        'get_latest_by_task(..., status="ok") turns the string into {"o", "k"}',
        (
            (
                "reader.py",
                "    return [status] if isinstance(status, str) else sorted(set(status))",
                "    return sorted(set(status))",
            ),
        ),
        ("tests/test_readers.py::test_status_as_a_plain_string",),
    ),
    Fault(
        "no_reader_files",
        "a writer leaves no -wal/-shm: other users cannot read the index",
        (("store/sqlite.py", "            leave_reader_files(self.path)\n", "            pass\n"),),
        ("tests/test_readers.py",),
        ("-k", "readable_by_others or as_another_user"),
    ),
    Fault(
        "typo_data_root_makes_an_index",
        "a data root that does not exist becomes a new empty index",
        (("config.py", "    if not root.is_dir():\n", "    if False:\n"),),
        ("tests/test_readers.py",),
        ("-k", "missing_data_root"),
    ),
    # -- live = scan, read-only, exactly once (issue 12) ---------------------------------------
    Fault(
        "watcher_ignores_events",
        "the watcher ignores every file event (only reconcile would carry it)",
        (("live/events.py", "            self._classify(event)\n", "            pass\n"),),
        ("tests/test_watch_e2e.py::test_live_pipeline_converges_with_a_scan_of_the_finished_tree",),
    ),
    Fault(
        "created_raw_settles",
        "a raw the watcher saw created is read by the settle rule while its writer stalls",
        (
            (
                "live/readiness.py",
                "    if entry.awaits_close(now, close_wait) and state.regular and state.nlink == 1:",
                "    if False:",
            ),
        ),
        ("tests/test_watch.py",),
        ("-k", "seen_created or waits_for_its_close"),
    ),
    Fault(
        "reconcile_reads_open_raw",
        "a reconcile pass reads a raw the watcher saw created and still waits to see closed",
        (
            (
                "live/watcher.py",
                "                skip=self.pending.closes_awaited(\n"
                "                    time.monotonic(), self.batches.policy.close_wait_s\n"
                "                ).__contains__,",
                "                skip=None,",
            ),
        ),
        ("tests/test_watch.py",),
        ("-k", "waits_for_its_close"),
    ),
    Fault(
        "close_wait_not_a_setting",
        "close_wait_seconds is read but a created raw always waits 60 s for its close",
        (
            (
                "live/readiness.py",
                "    close_wait = policy.close_wait_s\n",
                "    close_wait = 60.0\n",
            ),
        ),
        ("tests/test_watch.py",),
        ("-k", "seen_created"),
    ),
    Fault(
        "close_wait_setting_unused",
        "the daemon's batches ignore close_wait_seconds (a created raw always waits 60 s)",
        (
            (
                "live/batches.py",
                "        self.policy = Policy(cfg.settle_seconds, cfg.close_wait_seconds)\n",
                "        self.policy = Policy(cfg.settle_seconds, 60.0)\n",
            ),
        ),
        ("tests/test_watch.py",),
        ("-k", "close_wait_seconds"),
    ),
    Fault(
        "lost_close_awaited",
        "after a queue overflow, a raw seen created still waits close_wait_seconds for a close lost with it",
        (("live/pending.py", "            entry.created = False\n", "            pass\n"),),
        ("tests/test_watch.py",),
        ("-k", "close_the_kernel_dropped"),
    ),
    Fault(
        "new_folder_waits_for_arm",
        "a new stage folder is watched only at the main loop's next turn, not at its event",
        (
            (
                "live/events.py",
                "        obs, handler = self.observer, self.handler\n",
                "        obs, handler = None, None\n",
            ),
        ),
        ("tests/test_watch.py",),
        ("-k", "appears_is_watched_at_once or made_early"),
    ),
    Fault(
        "new_folder_not_listed",
        "a folder just watched is not listed: files written before its watch are lost",
        (
            (
                "live/watcher.py",
                "                for c in list_folder(self.data_root, role):",
                "                for c in []:",
            ),
        ),
        ("tests/test_watch_e2e.py::test_stage_folders_made_while_watched_converge_with_a_scan",),
    ),
    Fault(
        "early_watch_leaks",
        "an early watch no target needs is never unscheduled (a thread and an inotify each)",
        (("live/events.py", "        self._drop_unadopted(needed)\n", "        pass\n"),),
        ("tests/test_watch.py",),
        ("-k", "made_early"),
    ),
    Fault(
        "observer_queue_is_watchdogs",
        "the observer's queue is watchdog's EventQueue again: repeats dropped, two Python "
        "locks an event (half the event path's CPU)",
        (
            (
                "live/inotify.py",
                "        self._event_queue = EventFifo()  # before any watch",
                "        pass  # before any watch",
            ),
        ),
        ("tests/test_watch.py",),
        ("-k", "queues_every_event"),
    ),
    Fault(
        "writer_lock_rewritten_every_batch",
        "the writer lock's file is truncated and written at every batch (137 µs a take on "
        "ext4, and a dirty file for every batch's syncfs)",
        (
            (
                "store/locks.py",
                "        if os.pread(fd, len(pid) + 1, 0) != pid:\n",
                "        if True:\n",
            ),
        ),
        ("tests/test_locks.py",),
    ),
    Fault(
        "stale_chars_on_update",
        "updates keep stale raw_chars/parsed_chars",
        (
            (
                "ingest/planner.py",
                '        if f"{kind}.txt" in chars:\n',
                '        if f"{kind}.txt" in chars and change.op.value == "create":\n',
            ),
        ),
        (
            # The live test meets an update only when the daemon indexes a raw before its
            # parsed file (timing); the batching property meets one in every run.
            "tests/test_scan.py::test_any_batching_and_order_converges_to_one_scan",
            "tests/test_watch_e2e.py::test_live_pipeline_converges_with_a_scan_of_the_finished_tree",
        ),
    ),
    Fault(
        "chars_are_bytes",
        "raw_chars/parsed_chars count bytes, not characters (the ASCII fast path for all)",
        (("store/sourcefiles.py", "    if data.isascii():\n", "    if True:\n"),),
        ("tests/test_sourcefiles.py",),
    ),
    Fault(
        "prompt_tie_by_arrival",
        "two byte versions of a prompt with one mtime: the one met first is chosen",
        (
            (
                "core/model.py",
                "    return max(eligible, key=lambda p: (p.version, p.mtime_ns, p.relpath, p.sha256))\n",
                "    return max(eligible, key=lambda p: (p.version, p.mtime_ns, p.relpath))\n",
            ),
        ),
        ("tests/test_model.py",),
        ("-k", "one_mtime or identity_given_twice"),
    ),
    Fault(
        "sources_opened_rdwr",
        "sources opened O_RDWR",
        (
            (
                "store/sourcefiles.py",
                "    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK\n",
                "    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK\n",
            ),
        ),
        ("tests/test_syscalls.py",),
    ),
    Fault(
        "no_noatime",
        "sources read without O_NOATIME",
        (
            (
                "store/sourcefiles.py",
                '    noatime = getattr(os, "O_NOATIME", 0)\n',
                "    noatime = 0\n",
            ),
        ),
        ("tests/test_syscalls.py",),
    ),
    Fault(
        "sources_locked",
        "every source flock'ed (LOCK_EX) once opened",
        (
            (
                "store/sourcefiles.py",
                "    try:\n        return os.open(path, flags | noatime)\n",
                "    try:\n        fd = os.open(path, flags | noatime)\n"
                "        import fcntl\n        fcntl.flock(fd, fcntl.LOCK_EX)\n        return fd\n",
            ),
        ),
        ("tests/test_syscalls.py",),
    ),
    Fault(
        "busy_lock_kills_the_second_writer",
        "a second scan's thread dies on a busy writer lock (must fail, not only warn)",
        (
            (
                "store/locks.py",
                "            except BlockingIOError:\n",
                "            except BlockingIOError:\n"
                "                raise RuntimeError('the writer lock is busy')\n",
            ),
        ),
        ("tests/test_faults.py::test_second_writer_waits_for_the_writer_lock",),
    ),
    # -- speed without losing a promise (issue 10) ---------------------------------------------
    Fault(
        "tables_check_skipped",
        "a re-scan trusts the task facts although the tables changed",
        (
            (
                "store/sweeps.py",
                "        return (\n            self.execute(\n"
                '                "SELECT 1 FROM tasks WHERE tables_digest IS NULL',
                "        return True or (\n            self.execute(\n"
                '                "SELECT 1 FROM tasks WHERE tables_digest IS NULL',
            ),
        ),
        ("tests/test_scan.py",),
        ("-k", "rescan_with_the_same_tables"),
    ),
    Fault(
        "checked_mark_unguarded",
        "a task re-planned by another writer is marked checked against tables it was not",
        (
            (
                "store/sweeps.py",
                '"UPDATE tasks SET tables_digest = ? WHERE stage = ? AND task_id = ? AND info_hash = ?"',
                '"UPDATE tasks SET tables_digest = ? WHERE stage = ? AND task_id = ? AND ? IS NOT NULL"',
            ),
        ),
        ("tests/test_index.py",),
        ("-k", "marks_only_the_facts"),
    ),
    Fault(
        "table_chunk_splits_crlf",
        "a task table read in chunks splits a \\r\\n that straddles two chunks",
        (
            (
                "ingest/tables.py",
                'cut = max(text.rfind("\\n"), text.rfind("\\r", 0, len(text) - 1)) + 1',
                'cut = max(text.rfind("\\n"), text.rfind("\\r")) + 1',
            ),
        ),
        ("tests/test_tasks.py",),
        ("-k", "chunk_at_a_time"),
    ),
    Fault(
        "missing_dirs_unseen",
        "a document directory deleted by hand is never rebuilt by scan",
        (
            (
                "ingest/listing.py",
                "                absent.append(name)\n",
                "                pass\n",
            ),
        ),
        ("tests/test_cli.py",),
        ("-k", "deleted_document_dir"),
    ),
    # -- memory flat in the tree, same answers (issue 10) --------------------------------------
    Fault(
        "spilled_runs_merged_by_name",
        "a folder bigger than a run is merged back by name, not by task: a task's files split",
        (
            (
                "ingest/sortedruns.py",
                "heapq.merge(*map(_read, spilled), run, key=key)",
                "heapq.merge(*map(_read, spilled), run)",
            ),
        ),
        ("tests/test_listing.py",),
    ),
    Fault(
        "disk_table_first_row_wins",
        "a task listed twice keeps its first row on disk where the in-memory table kept the last",
        (("ingest/tablestore.py", "INSERT OR REPLACE INTO t", "INSERT OR IGNORE INTO t"),),
        ("tests/test_tablestore.py",),
    ),
    # -- CPU per document, nothing moved (issue 10, seventh pass) ------------------------------
    Fault(
        "id_digit_pairs_reversed",
        "ids built two digits at a time with the pair's digits swapped: every id changes",
        (
            (
                "core/ids.py",
                "_PAIRS = [_ALPHABET[p % 36] + _ALPHABET[p // 36] for p in range(_PAIR_BASE)]",
                "_PAIRS = [_ALPHABET[p // 36] + _ALPHABET[p % 36] for p in range(_PAIR_BASE)]",
            ),
        ),
        ("tests/test_model.py",),
        ("-k", "hash36 or pinned"),
    ),
    Fault(
        "intent_names_the_batch_not_the_document",
        "an intent's staging path names the batch's directory, not the document's: recovery "
        "cannot finish a committed batch",
        (
            (
                "store/docstore.py",
                '"dir": f"{staging_from_docs}/{self.staged_dir.name}",',
                '"dir": staging_from_docs,',
            ),
        ),
        ("tests/test_crash.py",),
        ("-k", "every_durable_step_then_rerun"),
    ),
    # -- the readers' latest from one index (issue 10, eighth pass) ----------------------------
    Fault(
        "document_version_not_copied",
        "documents.version (the readers' order) written as 0: an unversioned legacy file "
        "becomes the latest when it is the newest",
        (
            (
                "store/index.py",
                "values += [attempt[c] for c in DOCUMENT_ORDER_COLUMNS]",
                "values += [0 for c in DOCUMENT_ORDER_COLUMNS]",
            ),
        ),
        ("tests/test_identity.py",),
        ("-k", "unversioned_file_is_the_oldest"),
    ),
    Fault(
        "latest_orders_by_time_alone",
        "the readers' latest ignores the unversioned-first rule (created_at alone)",
        (
            (
                "store/readsql.py",
                'f" ORDER BY ({version} <> 0) DESC, d.created_at DESC, {version} DESC,',
                'f" ORDER BY d.created_at DESC, {version} DESC,',
            ),
        ),
        ("tests/test_index.py",),
        ("-k", "readers_seek_latest"),
    ),
    # -- a scan's next batch probed while this one commits (issue 10, twelfth and sixteenth pass)
    Fault(
        "probe_ahead_takes_two",
        "the next batch is taken again when asked twice: a batch of the scan is never ingested",
        (
            (
                "ingest/scan.py",
                "        if self.take is not None:\n            return\n",
                "",
            ),
        ),
        ("tests/test_scan.py",),
        ("-k", "probing_each_batch_ahead"),
    ),
    Fault(
        "probe_ahead_error_in_this_batch",
        "an error listing or probing the next batch fails the batch it was started from",
        (
            (
                "ingest/scan.py",
                "        except Exception as exc:\n            self.take = partial(_reraise, exc)\n",
                "        except ZeroDivisionError as exc:\n            self.take = partial(_reraise, exc)\n",
            ),
        ),
        ("tests/test_scan.py",),
        ("-k", "error_taking_the_next_batch"),
    ),
    Fault(
        "batch_bytes_kept",
        "a batch keeps its sources' bytes while the next batch is read (two batches in memory)",
        (
            (
                "ingest/ingestor.py",
                "after_rows=lambda: (release_contents(outcomes, contents), then()),",
                "after_rows=then,",
            ),
        ),
        ("tests/test_scan.py",),
        ("-k", "lets_its_bytes_go"),
    ),
    Fault(
        "read_stops_at_stat_size",
        "the probe stops reading a small source at its stat's size (a file that grew is cut)",
        (
            (
                "ingest/sources.py",
                "            if len(chunk) < want:",
                "            if len(chunk) <= want:",
            ),
        ),
        ("tests/test_scan.py",),
        ("-k", "read_whole"),
    ),
    # -- many rows a statement (issue 10, seventeenth pass) --------------------------------------
    Fault(
        "many_rows_chunks_out_of_order",
        "an INSERT of many rows runs its chunks out of order: an upsert meets its rows reordered",
        (
            (
                "store/sqlite.py",
                "        for size, chunk in row_chunks(rows, values_at_once(self.con) // len(rows[0])):",
                "        for size, chunk in reversed(\n"
                "            list(row_chunks(rows, values_at_once(self.con) // len(rows[0])))\n"
                "        ):",
            ),
        ),
        ("tests/test_index.py",),
        ("-k", "many_rows_at_once"),
    ),
    Fault(
        "problem_outlives_its_fix",
        "a file's problem row stays after the file is ingested (status counts it forever)",
        (
            (
                "store/index.py",
                '"DELETE FROM problems WHERE relpath IN"',
                '"DELETE FROM problems WHERE relpath || 1 IN"',
            ),
        ),
        ("tests/test_scan.py",),
        ("-k", "problem_goes"),
    ),
    # -- the staging helper process (issue 10, eighteenth pass) ----------------------------------
    Fault(
        "helper_drops_metadata",
        "the staging helper writes a document's copies but not its metadata.json",
        (
            (
                "store/stager.py",
                "        for name, data in files:\n            write_new_file(",
                "        for name, data in files[:-1]:\n            write_new_file(",
            ),
        ),
        ("tests/test_staging.py",),
        ("-k", "makes_what_staging_here_makes"),
    ),
    Fault(
        "helper_death_loses_its_documents",
        "the documents given to a helper that died are taken as staged, not staged again",
        (
            (
                "ingest/staging.py",
                "        if failed is None:  # the helper died",
                "        failed = failed or {}\n        if False:  # the helper died",
            ),
        ),
        ("tests/test_staging.py",),
        ("-k", "killed_mid_scan"),
    ),
    Fault(
        "helper_not_awaited",
        "the writer syncs and renames a batch without waiting for the helper to write it",
        (
            (
                "ingest/staging.py",
                '        self.helper.send(("end",))\n        return self.helper.reply()\n',
                "        return {}\n",
            ),
        ),
        (
            "tests/test_syscalls.py::test_durable_order_of_a_batch_by_syscalls",
            "tests/test_staging.py::test_a_scan_through_the_helper_makes_what_staging_here_makes",
        ),
    ),
    Fault(
        "helper_outlives_its_scan",
        "the helper does not die with its parent (a stopped helper stays behind)",
        (("store/stager.py", "    _die_with_parent(int(sys.argv[1]))\n", ""),),
        ("tests/test_staging.py",),
        ("-k", "dies_with_its_scan"),
    ),
    Fault(
        "helper_outlives_its_daemon",
        "the helper does not die with the daemon killed mid-catch-up (a stopped helper stays)",
        (("store/stager.py", "    _die_with_parent(int(sys.argv[1]))\n", ""),),
        ("tests/test_staging.py",),
        ("-k", "killed_mid_catch_up"),
    ),
    Fault(
        "helper_ignores_eof",
        "the helper does not end when its parent closes its input",
        (
            (
                "store/stager.py",
                "died mid-message\n            return\n",
                "died mid-message\n            __import__('time').sleep(3600)\n",
            ),
        ),
        ("tests/test_staging.py",),
        ("-k", "cannot_write"),
    ),
    Fault(
        "scan_without_its_helper",
        "docwatch scan stages everything on its own threads (the helper is never started)",
        (("ingest/scan.py", "with indexer.staging_helper():", "if True:"),),
        ("tests/test_staging.py",),
        ("-k", "killed_mid_scan"),
    ),
    Fault(
        "daemon_catch_up_without_its_helper",
        "docwatch watch's catch-up stages everything on its own threads (no helper)",
        (("live/watcher.py", "with self.indexer.staging_helper():", "if True:"),),
        ("tests/test_staging.py",),
        ("-k", "daemon_catches_up"),
    ),
    Fault(
        "helper_takes_the_groups_sigterm",
        "the helper dies of the SIGTERM systemd sends its whole cgroup (the daemon then warns "
        "and restages its documents)",
        (("store/stager.py", "        signal.signal(sig, signal.SIG_IGN)\n", "        pass\n"),),
        ("tests/test_staging.py",),
        ("-k", "whole_group"),
    ),
    Fault(
        "helper_started_unblocked",
        "the children are started with SIGTERM unblocked: one sent before they ignore it kills "
        "them (the staging helper, the events reader)",
        (
            (
                "children.py",
                "signal.pthread_sigmask(signal.SIG_BLOCK, LEFT_TO_THE_PARENT)",
                "signal.pthread_sigmask(signal.SIG_BLOCK, set())",
            ),
        ),
        ("tests/test_staging.py", "tests/test_runrecords.py"),
        ("-k", "whole_group or systemds_stop"),
    ),
    Fault(
        "rescan_skips_same_size_rewrite",
        "a rescan takes a file whose size matches the ledger's as known, whatever its mtime "
        "(new bytes of the same length are never read)",
        (
            (
                "ingest/listing.py",
                "(st.st_size == size and st.st_mtime_ns == mtime_ns)",
                "(st.st_size == size)",
            ),
        ),
        ("tests/test_identity.py",),
        ("-k", "same_size"),
    ),
    Fault(
        "rescan_reads_only_the_first_ledger_version",
        "a rescan compares a known name's stat with its first ledger row only (a name whose "
        "bytes changed and changed back, with several versions in the ledger, is read again)",
        (
            (
                "ingest/listing.py",
                "or (more is not None and (st.st_size, st.st_mtime_ns) in more)",
                "or False",
            ),
        ),
        ("tests/test_listing.py",),
        ("-k", "ledger_versions"),
    ),
    Fault(
        "rescan_unpacks_three_ledger_columns",
        "a rescan unpacks a ledger row as (relpath, size, mtime): PostgreSQL's rows have more "
        "columns, so its rescans fail",
        (("ingest/listing.py", "size, mtime_ns = row[1], row[2]", "_, size, mtime_ns = row"),),
        ("tests/test_listing.py",),
        ("-k", "ledger_versions"),
    ),
    Fault(
        "rescan_ledger_keyed_by_name",
        "a rescan matches the ledger's rows (keyed by relpath) against bare names: no file is "
        "ever known, and every rescan reads and hashes the whole tree again",
        (("ingest/listing.py", "        relpath = prefix + name\n", "        relpath = name\n"),),
        ("tests/test_listing.py",),
        ("-k", "ledger_versions or bigger_than_a_run"),
    ),
    Fault(
        "events_reader_takes_the_groups_sigterm",
        "the Dagster events reader dies of the SIGTERM systemd sends its whole cgroup (a stop "
        "during a read warns; the reader is killed, not ended at EOF)",
        (("dagster/events.py", "        signal.signal(sig, signal.SIG_IGN)\n", "        pass\n"),),
        ("tests/test_runrecords.py",),
        ("-k", "systemds_stop"),
    ),
    Fault(
        "events_pipe_closed_under_the_poller",
        "the daemon's stop closes the events reader's output before the reader ended, while the "
        "poller thread still waits for the first answer (the reader dies of a broken pipe)",
        (
            (
                "dagster/transports.py",
                "        code = end_at_eof(proc)\n",
                "        proc.stdout.close()\n        code = end_at_eof(proc)\n",
            ),
        ),
        ("tests/test_runrecords.py",),
        ("-k", "stop_while_the_events_reader_starts"),
    ),
    Fault(
        "helper_outlives_its_pass",
        "a catch-up pass leaves its helper running (an idle daemon keeps an 11 MiB child)",
        (
            (
                "ingest/indexer.py",
                "            helper.close()\n",
                "            self.ingestor.helper = helper\n",
            ),
        ),
        ("tests/test_staging.py",),
        ("-k", "daemon_catches_up"),
    ),
)


def plant(fault: Fault, root: Path) -> str | None:
    """Copy the package under ``root`` and apply the fault; None, or why it no longer applies."""
    shutil.copytree(REPO / "daemon", root / "daemon", ignore=shutil.ignore_patterns("__pycache__"))
    for rel, old, new in fault.edits:
        path = root / PKG / rel
        text = path.read_text()
        if text.count(old) != 1:
            return f"{rel}: the text to edit occurs {text.count(old)} times (update the fault)"
        path.write_text(text.replace(old, new))
    return None


def run(fault: Fault, timeout: float) -> tuple[str, str]:
    """(verdict, detail): CAUGHT when a named test fails against the planted fault."""
    with tempfile.TemporaryDirectory(prefix=f"fault-{fault.name}-") as tmp:
        root = Path(tmp)
        problem = plant(fault, root)
        if problem is not None:
            return "STALE", problem
        copy = str(root / "daemon")
        env = {**os.environ, "PYTHONPATH": copy}
        check = subprocess.run(
            [sys.executable, "-c", "import docwatch; print(docwatch.__file__)"],
            env=env,
            capture_output=True,
            text=True,
            cwd=tmp,
        )
        if not check.stdout.startswith(copy):
            return "ERROR", f"the copy is not the package imported: {check.stdout or check.stderr}"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "-o",
            f"pythonpath={copy}",
            *fault.extra,
            *fault.tests,
        ]
        try:
            done = subprocess.run(
                cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return "CAUGHT", f"the tests hung past {timeout:.0f}s"
        tail = (done.stdout.strip().splitlines() or ["?"])[-1]
        if done.returncode == 5:
            return "ERROR", f"no test selected: {tail}"
        return ("CAUGHT" if done.returncode != 0 else "SURVIVED"), tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="faults to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the faults and exit")
    ap.add_argument("--timeout", type=float, default=600.0, help="per fault (seconds)")
    args = ap.parse_args(argv)
    by_name = {f.name: f for f in FAULTS}
    if args.list:
        for f in FAULTS:
            print(f"{f.name:36} {f.promise}")
        return 0
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        ap.error(f"unknown faults: {', '.join(unknown)}")
    chosen = [by_name[n] for n in args.names] or list(FAULTS)
    bad = 0
    for fault in chosen:
        started = time.monotonic()
        verdict, detail = run(fault, args.timeout)
        bad += verdict != "CAUGHT"
        print(
            f"{verdict:8} {fault.name:36} {time.monotonic() - started:5.0f}s  {fault.promise}"
            f"  [{detail}]",
            flush=True,
        )
    print(f"{len(chosen) - bad} of {len(chosen)} seeded faults caught")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

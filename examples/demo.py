"""`make demo`: the docwatch daemon indexing a legacy pipeline while it writes.

Starts ``docwatch watch`` on an empty data root, replays the bundled example pipeline
(legacy_tree.py) into it live at a pace a human can follow, and watches the index (read-only
SQLite, every 0.2 s) to show documents appearing and changing; then stops the daemon with
SIGTERM and reads the result with ``docwatch status`` and ``docwatch latest``.

    python examples/demo.py [--data-root example-data] [--rate 4] [--combos 2] [--seed 1]

The data root is deleted and recreated on every run.  Exit code 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import legacy_tree  # noqa: E402

FAILED = ("parse_error", "gen_error")
SHORT = {"draft": "draft", "essay": "essay", "evaluation": "eval"}
COLUMNS = (
    "doc_id, stage, task_id, status, parent_doc_id, lineage_prev_doc_id, created_at, meta_small"
)
CONFIG = """\
# written by examples/demo.py
settle_seconds = 0.5
pair_window = {pair_window}
reconcile_interval = "1h"
log_level = "INFO"
log_format = "human"
"""
INTRO = """\
docwatch demo: the daemon at work.  `docwatch watch` is started on an empty data root ({root}),
then the bundled example of the legacy "daydreaming" pipeline (examples/legacy_tree.py:
{combos} combos, seed {seed}, {writers} writer threads) writes {files} files into it live, about
{rate:g} per second, with the pipeline's own writer patterns (prompts and parsed files: .tmp +
rename; raw responses: slow in-place writes).  The daemon indexes every file as it lands; this
script only reads the SQLite index (read-only, every 0.2 s) and prints what changes: a raw
response is indexed at once as `pending` and turns `ok` when its parsed file arrives; a raw whose
parsed file never comes becomes `parse_error`/`gen_error` (at its retry, or after pair_window,
here {pair_window:g} s instead of 10 min); a copy-mode essay is linked to the draft it copies.
Finally the daemon is stopped with SIGTERM and `docwatch status` and `docwatch latest` read the
result.  Takes about {eta:.0f} s."""


def docwatch(*args: str) -> list[str]:
    """The docwatch CLI of the Python running this script (the venv's, from the Makefile)."""
    return [sys.executable, "-m", "docwatch", *args]


class Notify:
    """A unix datagram socket standing in for systemd: the daemon's READY=1 and STOPPING=1."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.lines: list[str] = []
        self.closed = False
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        while not self.closed:
            try:
                self.lines += self.sock.recv(65536).decode(errors="replace").splitlines()
            except TimeoutError:
                continue
            except OSError:
                return

    def seen(self, line: str) -> bool:
        return line in self.lines

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class Pace:
    """``before_write`` hook for legacy_tree.run_pipeline: at most ``rate`` files per second over
    all writer threads, and a parsed file comes ``parse_delay`` s after the step started (the
    parse; for evaluations and copy-mode essays, the LLM call or the copy)."""

    def __init__(self, rate: float, parse_delay: float, stop: threading.Event) -> None:
        self.interval, self.parse_delay, self.stop = 1.0 / rate, parse_delay, stop
        self.lock = threading.Lock()
        self.next = time.monotonic()
        self.written = 0

    def __call__(self, op: legacy_tree.Op) -> None:
        if op.kind == "parsed":
            self.stop.wait(self.parse_delay)
        with self.lock:
            now = time.monotonic()
            wait, self.next = self.next - now, max(now, self.next) + self.interval
        if wait > 0:
            self.stop.wait(wait)
        with self.lock:
            self.written += 1


class Screen:
    """Event lines scroll; the status line is rewritten in place (\\r) on a terminal, printed
    every ``every`` seconds otherwise."""

    def __init__(self, every: float) -> None:
        self.tty = sys.stdout.isatty()
        self.every, self.last, self.status = every, 0.0, ""

    def event(self, text: str) -> None:
        if self.tty:
            sys.stdout.write("\r\x1b[K" + text + "\n" + self._fit(self.status))
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def update(self, status: str, force: bool = False) -> None:
        self.status = status
        if self.tty:
            sys.stdout.write("\r" + self._fit(status) + "\x1b[K")
        elif force or time.monotonic() - self.last >= self.every:
            sys.stdout.write(status + "\n")
            self.last = time.monotonic()
        sys.stdout.flush()

    def done(self) -> None:
        if self.tty and self.status:
            sys.stdout.write("\r" + self._fit(self.status) + "\x1b[K\n")
            sys.stdout.flush()
        self.status = ""

    def _fit(self, text: str) -> str:
        width = shutil.get_terminal_size((100, 24)).columns - 1
        return text if len(text) <= width else text[: width - 1] + "…"


def read_rows(con: sqlite3.Connection) -> dict[str, dict]:
    rows = {}
    for values in con.execute(f"SELECT {COLUMNS} FROM documents"):
        row = dict(zip([c.strip() for c in COLUMNS.split(",")], values, strict=True))
        try:
            row["meta"] = json.loads(row["meta_small"] or "{}")
        except ValueError:
            row["meta"] = {}
        rows[row["doc_id"]] = row
    return rows


class Watcher:
    """Diffs the index's rows by doc_id and status and turns the changes into event lines."""

    SHOW_OK, SHOW_COPY = 3, 3

    def __init__(self, screen: Screen, t0: float) -> None:
        self.screen, self.t0 = screen, t0
        self.rows: dict[str, dict] = {}
        self.pending_since: dict[str, float] = {}
        self.seen = Counter()
        self.copy_linked: list[dict] = []

    def name(self, row: dict) -> str:
        return f"{row['stage']} {row['task_id']} {self.version(row)}".rstrip()

    @staticmethod
    def version(row: dict) -> str:
        version = row["meta"].get("version")
        if version == 0:  # <task_id>.txt of an older run
            return "(unversioned legacy file)"
        return f"v{version}" if version else ""

    def ref(self, doc_id: str | None) -> str:
        row = self.rows.get(doc_id or "")
        return f"doc {doc_id} ({self.name(row)})" if row else f"doc {doc_id}"

    def say(self, tag: str, text: str) -> None:
        self.screen.event(f"{time.monotonic() - self.t0:6.1f}s  {tag:<22} {text}")

    def update(self, new: dict[str, dict]) -> None:
        old, self.rows, now = self.rows, {**self.rows, **new}, time.monotonic()
        for doc_id, row in new.items():
            before = old.get(doc_id)
            status, was = row["status"], before and before["status"]
            if status == "pending" and was != "pending":
                self.pending_since[doc_id] = now
                if not self.seen["pending"]:
                    self.say(
                        "raw -> pending",
                        f"doc {doc_id}: {self.name(row)}; the raw file is indexed at once, "
                        "waiting for its parsed file",
                    )
                self.seen["pending"] += 1
            elif was == "pending" and status == "ok":
                self.seen["pending->ok"] += 1
                if self.seen["pending->ok"] <= self.SHOW_OK:
                    waited = now - self.pending_since.get(doc_id, now)
                    more = " (more are counted on the status line)"
                    self.say(
                        "pending -> ok",
                        f"doc {doc_id}: {self.name(row)}; parsed file arrived "
                        f"{waited:.1f}s later" + (more if self.seen["pending->ok"] == 3 else ""),
                    )
            elif status in FAILED and was != status:
                self.seen["failed"] += 1
                reason = row["meta"].get("status_reason") or "no parsed file"
                self.say(
                    f"{was or 'new'} -> {status}",
                    f"doc {doc_id}: {self.name(row)}; {reason}",
                )
            elif status != was and status not in ("ok", "pending"):
                self.say(f"{was or 'new'} -> {status}", f"doc {doc_id}: {self.name(row)}")
            prev = row["lineage_prev_doc_id"]
            if before is None and prev:
                earlier = self.rows.get(prev)  # the same task's previous attempt
                failed = earlier is not None and earlier["status"] in FAILED
                self.seen["retry" if failed else "rerun"] += 1
                what = f" [{self.version(earlier)} {earlier['status']}]" if earlier else ""
                self.say(
                    "retry" if failed else "newer attempt",
                    f"doc {doc_id}: {self.name(row)} follows doc {prev}{what}",
                )
            parent = row["parent_doc_id"]
            if parent and parent != (before or {}).get("parent_doc_id"):
                if row["meta"].get("generator") == "copy":
                    self.copy_linked.append(row)
                    if len(self.copy_linked) <= self.SHOW_COPY:
                        same = self.rows.get(parent, {}).get("task_id") == row["task_id"]
                        self.say(
                            "copy-mode linked",
                            f"essay doc {doc_id} (task {row['task_id']}) -> parent draft "
                            f"{self.ref(parent)}" + (" [same task id, other stage]" * same),
                        )
                elif before is not None and before["parent_doc_id"]:
                    self.say("re-linked", f"doc {doc_id}: {self.name(row)} -> {self.ref(parent)}")
        for doc_id in old.keys() - new.keys():
            self.say("removed", f"doc {doc_id}: {self.name(old[doc_id])}")
            self.rows.pop(doc_id, None)

    def status_line(self, pace: Pace, total: int) -> str:
        by = Counter((r["stage"], r["status"]) for r in self.rows.values())
        parts = []
        for stage in ("draft", "essay", "evaluation"):
            counts = {s: n for (st, s), n in sorted(by.items()) if st == stage}
            if counts:
                detail = ", ".join(f"{n} {s}" for s, n in counts.items())
                parts.append(f"{SHORT[stage]} {detail}")
        newest = max(self.rows.values(), key=lambda r: r["created_at"] or "", default=None)
        line = (
            f"{time.monotonic() - self.t0:6.1f}s  pipeline {pace.written}/{total} files | "
            f"index {len(self.rows)} docs, {by_status(self.rows)['pending']} pending: "
            + " · ".join(parts or ["(empty)"])
        )
        if newest:
            line += f" | newest {newest['stage']} {newest['doc_id']} {newest['task_id']}"
        return line


def by_status(rows: dict[str, dict]) -> Counter:
    return Counter(r["status"] for r in rows.values())


def check_plan(summary: legacy_tree.TreeSummary) -> list[str]:
    """The plan must show what the demo is for; a regression in legacy_tree is caught here."""
    failed = [a for a in summary.expected if a.status in FAILED]
    retried = {(a.stage, a.task_id) for a in failed} & {
        (a.stage, a.task_id) for a in summary.expected if a.status == "ok"
    }
    problems = []
    if not any(a.status == "parse_error" for a in failed):
        problems.append("no parse failure (draft parse_error) in the plan")
    if not retried:
        problems.append("no retry (a failed attempt followed by an ok one) in the plan")
    if not summary.scenarios.get("essay_copy"):
        problems.append("no copy-mode essay in the plan")
    return problems


def run(cmd: list[str], title: str, lines: int | None = None) -> subprocess.CompletedProcess:
    """Run a docwatch command and print its output (with ``lines``: the first lines, cut)."""
    print(f"\n$ {title}", flush=True)
    done = subprocess.run(cmd, capture_output=True)
    out = done.stdout.decode(errors="replace").splitlines()
    if lines is not None and len(out) > lines:
        out = [x if len(x) <= 98 else x[:97] + "…" for x in out[:lines]]
        out.append(f"[... {len(done.stdout)} bytes in all]")
    print("\n".join(out), flush=True)
    if done.returncode:
        print(done.stderr.decode(errors="replace").rstrip(), flush=True)
        print(f"(exit code {done.returncode})", flush=True)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="demo.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", type=Path, default=Path("example-data"), help="recreated")
    ap.add_argument("--rate", type=float, default=4.0, help="pipeline files per second")
    ap.add_argument("--combos", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--pair-window", type=float, default=5.0, help="seconds")
    ap.add_argument("--status-every", type=float, default=5.0, help="seconds, when not a TTY")
    a = ap.parse_args(argv)
    sys.stdout.reconfigure(errors="replace")
    root = a.data_root
    plan = legacy_tree.make_plan(a.combos, a.seed)
    summary = plan.summary
    total = len(plan.tables) + len(plan.pre) + sum(len(m.ops) for m in plan.mats)
    problems = check_plan(summary)
    if problems:
        print(f"demo: combos={a.combos} seed={a.seed}: " + "; ".join(problems), file=sys.stderr)
        return 1
    parse_delay, raw_delay = max(0.5, 3.0 / a.rate), min(0.25, 1.0 / a.rate)
    eta = total / a.rate + 8
    intro = INTRO.format(
        root=root,
        combos=a.combos,
        seed=a.seed,
        writers=a.writers,
        files=total,
        rate=a.rate,
        pair_window=a.pair_window,
        eta=eta,
    )
    print(textwrap.fill(" ".join(intro.split()), 98, break_on_hyphens=False) + "\n", flush=True)

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    work = tempfile.mkdtemp(prefix="dwdemo")  # short: a socket path holds 108 bytes
    config, log_path = Path(work, "docwatch.toml"), Path(work, "watch.log")
    config.write_text(CONFIG.format(pair_window=a.pair_window))
    notify = Notify(work)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCWATCH_", "NOTIFY_"))}
    env |= {"NOTIFY_SOCKET": notify.path}
    common = ["--config", str(config), "--data-root", str(root)]
    print(f"$ docwatch watch --config {config.name} --data-root {root}", flush=True)
    settings = [x for x in config.read_text().splitlines() if not x.startswith("#")]
    print("  with " + "; ".join(settings) + "\n", flush=True)
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            docwatch("watch", *common), env=env, stdout=log, stderr=subprocess.STDOUT
        )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, interrupted)  # like Ctrl-C: the daemon is stopped too
    try:
        return demo(a, root, daemon, notify, log_path, plan, total, parse_delay, raw_delay, stop)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the pipeline and the daemon", flush=True)
        return 130
    finally:
        stop.set()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        notify.close()
        shutil.rmtree(work, ignore_errors=True)


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def log_tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def demo(a, root, daemon, notify, log_path, plan, total, parse_delay, raw_delay, stop) -> int:
    summary, failures = plan.summary, []
    deadline = time.monotonic() + 60
    while not notify.seen("READY=1"):
        if daemon.poll() is not None or time.monotonic() > deadline:
            print(f"docwatch watch did not become ready (exit code {daemon.poll()}):")
            print(log_tail(log_path))
            return 1
        time.sleep(0.05)
    print(f"daemon pid {daemon.pid} is READY (sd_notify READY=1): watching an empty data root\n")

    pace = Pace(a.rate, parse_delay, stop)
    result: dict[str, object] = {}

    def pipeline() -> None:
        try:
            result["summary"] = legacy_tree.run_pipeline(
                root,
                combos=a.combos,
                seed=a.seed,
                writers=a.writers,
                raw_write_delay=raw_delay,
                stop=stop,
                before_write=pace,
            )
        except BaseException as exc:  # reported in the main thread
            result["error"] = exc

    t0 = time.monotonic()
    screen, writer = Screen(a.status_every), threading.Thread(target=pipeline, daemon=True)
    watcher = Watcher(screen, t0)
    db = root / "db" / "documents.sqlite"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
    writer.start()
    want = Counter((x.stage, x.status) for x in summary.expected)
    settled_at = None
    while True:
        try:
            watcher.update(read_rows(con))
        except sqlite3.OperationalError as exc:  # busy or mid-checkpoint: next poll
            screen.event(f"(index read skipped: {exc})")
        screen.update(watcher.status_line(pace, total))
        if daemon.poll() is not None:
            screen.done()
            print(f"docwatch watch exited early with code {daemon.returncode}:")
            print(log_tail(log_path))
            return 1
        if not writer.is_alive():
            settled_at = settled_at or time.monotonic()
            got = Counter(
                (r["stage"], r["status"])
                for r in watcher.rows.values()
                if r["status"] != "superseded"
            )
            if got == want or time.monotonic() - settled_at > a.pair_window + 20:
                break
        time.sleep(0.2)
    con.close()
    screen.update(watcher.status_line(pace, total), force=True)
    screen.done()
    elapsed = time.monotonic() - t0
    if "error" in result:
        failures.append(f"the pipeline failed: {result['error']!r}")

    print(f"\npipeline finished; the index caught up {elapsed:.1f}s after the first write.")
    if got == want:
        print(f"index = plan: {sum(want.values())} documents, statuses as expected:", end=" ")
        print(", ".join(f"{st} {s} {n}" for (st, s), n in sorted(want.items())))
    else:
        failures.append(f"index does not match the plan: got {dict(got)}, want {dict(want)}")
    for what, key in (
        ("a pending raw turning ok", "pending->ok"),
        ("a parse failure", "failed"),
        ("a retry", "retry"),
    ):
        if not watcher.seen[key]:
            failures.append(f"not observed: {what}")
    if not watcher.copy_linked:
        failures.append("not observed: a copy-mode essay linked to its draft")
    print(
        f"observed: {watcher.seen['pending']} raw -> pending, "
        f"{watcher.seen['pending->ok']} pending -> ok, {watcher.seen['failed']} failures, "
        f"{watcher.seen['retry']} retries, {watcher.seen['rerun']} newer attempts after an ok one, "
        f"{len(watcher.copy_linked)} copy-mode essays linked"
    )

    print(f"\n$ kill -TERM {daemon.pid}   # docwatch watch", flush=True)
    daemon.send_signal(signal.SIGTERM)
    try:
        code = daemon.wait(15)
    except subprocess.TimeoutExpired:
        code = None
        failures.append("docwatch watch did not exit within 15s of SIGTERM")
    print(f"docwatch watch exited with code {code} after SIGTERM", end="")
    print(" (sd_notify STOPPING=1 received)" if notify.seen("STOPPING=1") else "")
    if code != 0:
        failures.append(f"docwatch watch exit code {code} (expected 0)")
    for line in log_path.read_text(errors="replace").splitlines():
        if " watching " in f" {line}" and "folders" in line or "stopped:" in line:
            print("  daemon log:", line.strip())

    common = ["--data-root", str(root)]
    if run(docwatch("status", *common), f"docwatch status --data-root {root}").returncode:
        failures.append("docwatch status failed")
    if watcher.copy_linked:
        rows = watcher.rows
        essay = next(
            (
                e
                for e in watcher.copy_linked
                if rows.get(e["parent_doc_id"], {}).get("task_id") != e["task_id"]
            ),
            watcher.copy_linked[0],
        )
        task = essay["task_id"]
        shown = run(
            docwatch("latest", "essay", task, *common, "--field", "parsed"),
            f"docwatch latest essay {task} --data-root {root} --field parsed",
            lines=4,
        )
        parent = essay["parent_doc_id"]
        draft = subprocess.run(
            docwatch("show", parent, *common, "--field", "parsed"), capture_output=True
        )
        same = shown.returncode == 0 and draft.returncode == 0 and shown.stdout == draft.stdout
        print(
            f"(copy mode: byte-identical to the parsed text of its draft {parent}: "
            f"{'yes' if same else 'NO'})"
        )
        if not same:
            failures.append("the copy-mode essay differs from its draft's parsed text")
    print(
        textwrap.dedent(f"""
        The index is {root}/db/documents.sqlite and the documents are under {root}/docs/.
        Try: .venv/bin/docwatch show <doc_id> --data-root {root}""").rstrip()
    )
    if failures:
        print("\nDEMO CHECKS FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        print(log_tail(log_path), file=sys.stderr)
        return 1
    print("\ndemo OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

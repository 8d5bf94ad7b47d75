"""The state a crash leaves, checked at once (before any rerun or repair), and the order of
durable steps recorded through the fault seam (``DOCWATCH_TRACE``).

``check_crash_state(cfg)`` opens the index read-only (the SQLite file, or the PostgreSQL
database of ``cfg.index_url``) and reads the document directories; it changes nothing.  The
promise it checks (SPEC "Guarantees", "Durable before visible"): every row is a complete
document whose files hold the bytes the ledger says, and no directory exists that no row and no
unfinished batch accounts for.  What an unfinished batch (a row in ``intents``)
may leave is exactly what ``DocStore.recover`` undoes or finishes:

* ``create`` not committed: its directory may exist (renamed into place), with no row;
* ``update`` not committed (phase ``staged``): the row is the old one and every file it
  references is the old one; files new to the directory (``detail.add``) may already be there;
* ``update`` committed: the row is the new one; a file it replaces (``detail.replace``,
  ``metadata.json`` always) may still be the previous version while the new one waits in
  staging (``docs/<detail.dir>/<name>``); a file it drops (``detail.remove``) may still be there.

Everything else must hold exactly, whatever the status (a superseded document stays resolvable).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from docwatch.store.backend import open_index
from docwatch.store.faults import CREATE_ONLY, POINTS
from docwatch.store.schema import DOCUMENT_COLUMNS

KINDS = ("raw", "parsed", "prompt")
DOC_FILES = {f"{k}.txt" for k in KINDS} | {"metadata.json"}


@dataclass
class CrashState:
    rows: int
    intents: list[dict]
    problems: list[str] = field(default_factory=list)

    def phases(self) -> set[tuple[str, str]]:
        """(op, phase) of every intent in flight."""
        return {(i["op"], i["phase"]) for i in self.intents}


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _json(path: Path):
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        return exc


#: Other sessions on the database: a killed writer's server session outlives it a moment.
_OTHER_SESSIONS = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def _has_index(cfg) -> bool:
    """Whether the index exists at all (a run may die before it creates it)."""
    if not cfg.index_url:
        return Path(cfg.db).exists()
    import psycopg

    with psycopg.connect(cfg.index_url, autocommit=True) as con:
        return con.execute("SELECT to_regclass('docwatch_schema') IS NOT NULL").fetchone()[0]


def _wait_for_other_sessions(index, timeout: float = 30.0) -> None:
    """PostgreSQL: wait until no other session uses the database.  A writer killed just after
    it sent a COMMIT still commits: the state a crash leaves is the one its server session
    leaves when it ends (a moment after the process)."""
    deadline = time.monotonic() + timeout
    while index.scalar(_OTHER_SESSIONS):
        if time.monotonic() > deadline:
            raise AssertionError(f"{index.location}: other sessions still there after {timeout}s")
        time.sleep(0.02)


def _read_index(cfg) -> tuple[list[dict], dict[str, dict], set[tuple[str, str]]]:
    """Rows (with their attempts' source keys), intents and ledger, from one snapshot of the
    index, through docwatch's own read-only opening of either backend."""
    index = open_index(cfg.index_location, readonly=True)
    try:
        if cfg.index_url:
            _wait_for_other_sessions(index)
            index.con.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        else:
            index.con.execute("BEGIN")  # WAL: one read snapshot for the three reads
        rows = index.all(
            f"SELECT {', '.join('d.' + c for c in DOCUMENT_COLUMNS)},"
            " a.raw_key, a.parsed_key, a.prompt_key"
            " FROM documents d LEFT JOIN attempts a USING (doc_id)"
        )
        intents = {
            r["doc_id"]: {**r, "detail": json.loads(r["detail"] or "{}")}
            for r in index.all("SELECT doc_id, stage, op, phase, detail FROM intents")
        }
        ledger = {
            (r["relpath"], r["sha256"]) for r in index.all("SELECT relpath, sha256 FROM sources")
        }
        index.con.execute("COMMIT")
    finally:
        index.close()
    return rows, intents, ledger


def _short(value, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _same_row(meta_row: dict, row: dict) -> list[str]:
    """Columns where metadata.json's row differs from the index row."""
    diff = []
    for c in DOCUMENT_COLUMNS:
        want = row[c]
        if c == "meta_small" and isinstance(want, str):
            want = json.loads(want)
        if meta_row.get(c) != want:
            diff.append(c)
    return diff


def check_crash_state(cfg, *, raise_on_problem: bool = True) -> CrashState:
    """Check the index and the document directories as a crash left them (read-only)."""
    docs_root = Path(cfg.docs_root)
    if _has_index(cfg):
        rows, intents, ledger = _read_index(cfg)
    else:  # died before the index was created: there must be no document either
        rows, intents, ledger = [], {}, set()
    state = CrashState(rows=len(rows), intents=list(intents.values()))
    problems = state.problems

    for row in rows:
        doc_id, stage = row["doc_id"], row["stage"]
        target = docs_root / stage / doc_id
        where = f"{stage}/{doc_id} ({row['status']})"
        intent = intents.get(doc_id)
        update = intent if intent is not None and intent["op"] == "update" else None
        committed = update is not None and update["phase"] == "committed"
        detail = update["detail"] if update else {}
        staged_dir = docs_root / detail["dir"] if detail.get("dir") else None
        replace = set(detail.get("replace", ())) if committed else set()

        if row["raw_key"] is None and row["parsed_key"] is None:
            problems.append(f"{where}: no attempts row (or neither raw nor parsed)")
        if (Path(cfg.data_root) / row["doc_dir"]).resolve() != target.resolve():
            problems.append(f"{where}: doc_dir {row['doc_dir']} is not {target}")
        if not target.is_dir():
            problems.append(f"{where}: visible row without its directory {target}")
            continue

        meta_small = json.loads(row["meta_small"] or "{}")
        sources = meta_small.get("sources") or {}
        referenced = {"metadata.json"}
        for kind in KINDS:
            key = row[f"{kind}_key"]
            rel = sources.get(kind)
            if (key is None) != (rel is None):
                problems.append(f"{where}: meta_small.sources.{kind}={rel!r} but key {key!r}")
                continue
            if key is None:
                continue
            sha, _, relpath = key.partition(":")
            if relpath != rel:
                problems.append(f"{where}: {kind} key names {relpath}, meta_small {rel}")
            if (relpath, sha) not in ledger:
                problems.append(f"{where}: {kind} source {relpath} ({sha[:12]}) not in the ledger")
            if kind == "prompt" and not cfg.prompt_copy:
                continue
            name = f"{kind}.txt"
            referenced.add(name)
            found = _sha256(target / name)
            if found == sha:
                continue
            if name in replace and staged_dir and _sha256(staged_dir / name) == sha:
                continue  # the new version waits in staging: recovery puts it in place
            what = "missing" if found is None else f"sha256 {found[:12]} != ledger {sha[:12]}"
            problems.append(f"{where}: {name} {what} (intent: {intent and intent['phase']})")

        meta = _json(target / "metadata.json")
        if not isinstance(meta, dict):
            problems.append(f"{where}: metadata.json {'missing' if meta is None else meta}")
        else:
            diff = _same_row(meta.get("row", {}), row)
            if diff and committed and "metadata.json" in replace and staged_dir:
                staged_meta = _json(staged_dir / "metadata.json")
                if isinstance(staged_meta, dict):
                    diff = _same_row(staged_meta.get("row", {}), row)
            if diff:
                shown = {c: (_short(meta.get("row", {}).get(c)), _short(row[c])) for c in diff[:3]}
                problems.append(f"{where}: metadata.json row differs in {diff}: {shown}")

        extra = {p.name for p in target.iterdir()} - referenced
        allowed = set()
        if update is not None:
            allowed = set(detail.get("add", ())) | (
                set(detail.get("remove", ())) if committed else set()
            )
        if extra - allowed:
            problems.append(f"{where}: files no row references: {sorted(extra - allowed)}")

    known = {(r["stage"], r["doc_id"]) for r in rows}
    creating = {(i["stage"], i["doc_id"]) for i in intents.values() if i["op"] == "create"}
    if docs_root.is_dir():
        for entry in sorted(docs_root.iterdir()):
            if entry.name == ".tmp":
                continue
            if not entry.is_dir():
                problems.append(f"unexpected file {entry} in the docs root")
                continue
            for doc_dir in sorted(entry.iterdir()):
                if (entry.name, doc_dir.name) not in known | creating:
                    problems.append(
                        f"orphan directory {entry.name}/{doc_dir.name}: no row, no intent"
                    )

    if problems and raise_on_problem:
        shown = "\n  ".join(problems[:25])
        raise AssertionError(f"{len(problems)} problems in the state after a crash:\n  {shown}")
    return state


# -- the order of durable steps (DOCWATCH_TRACE) ---------------------------------------------

#: point → the points that may come next within one batch (a batch is ``staged`` … ``cleaned``).
NEXT = {
    "staged": {"files_synced"},
    "files_synced": {"intents_committed"},
    "intents_committed": {"renamed", "dirs_synced"},
    "renamed": {"renamed", "dirs_synced"},
    "dirs_synced": {"committing"},
    "committing": {"committed"},
    "committed": {"replaced", "replaced_synced", "cleaned"},
    "replaced": {"replaced", "replaced_synced"},
    "replaced_synced": {"intents_cleared"},
    "intents_cleared": {"cleaned"},
    "cleaned": set(),
}
BATCH_POINTS = tuple(p for p in POINTS if p != "recovered")
assert set(NEXT) == set(BATCH_POINTS), "faults.POINTS changed: update crashcheck.NEXT"
assert [p for p in BATCH_POINTS if p in CREATE_ONLY] == list(CREATE_ONLY)


@dataclass
class TracedBatch:
    pid: int
    points: list[str]

    @property
    def finished(self) -> bool:
        return bool(self.points) and self.points[-1] == "cleaned"


def trace_lines(trace_file: Path) -> list[tuple[int, str]]:
    if not Path(trace_file).exists():
        return []
    out = []
    for line in Path(trace_file).read_text().splitlines():
        pid, point = line.split()
        out.append((int(pid), point))
    return out


def trace_batches(trace_file: Path) -> list[TracedBatch]:
    """The batches in a trace, per process, in order: each starts at ``staged``.  A point seen
    outside any batch other than ``recovered`` starts a (malformed) batch of its own, so that
    ``assert_durable_order`` reports it."""
    batches: list[TracedBatch] = []
    open_batch: dict[int, TracedBatch] = {}
    for pid, point in trace_lines(trace_file):
        current = open_batch.get(pid)
        if point == "staged" or (current is None and point != "recovered"):
            current = open_batch[pid] = TracedBatch(pid, [])
            batches.append(current)
        if current is None:
            continue  # recovery at start, between batches
        current.points.append(point)
        if point == "cleaned":
            del open_batch[pid]
    return batches


def points_of(trace_file: Path, pid: int | None = None) -> list[str]:
    return [p for q, p in trace_lines(trace_file) if pid is None or q == pid]


def assert_durable_order(points: list[str], *, aborted_ok: bool = False) -> None:
    """One batch's points follow the protocol: staged < files_synced < intents_committed <
    renamed* < dirs_synced < committing < committed < (replaced* < replaced_synced <
    intents_cleared)? <
    cleaned, or a prefix of it (a crash).  ``aborted_ok``: ``cleaned`` may also follow any
    point (a batch that raised: ``finally: cleanup``)."""
    assert points, "an empty batch"
    assert points[0] == "staged", f"a batch must start with staged: {points}"
    seen: set[str] = set()
    for i, (prev, point) in enumerate(zip(points, points[1:], strict=False), 1):
        seen.add(prev)
        if point == "renamed" and "intents_committed" not in seen:
            raise AssertionError(f"renamed before intents_committed at step {i}: {points}")
        if point == "committed" and "dirs_synced" not in seen:
            raise AssertionError(f"committed before dirs_synced at step {i}: {points}")
        if point in ("replaced", "replaced_synced") and "committed" not in seen:
            raise AssertionError(f"{point} before committed at step {i}: {points}")
        if point in NEXT[prev] or (aborted_ok and point == "cleaned"):
            continue
        raise AssertionError(f"{point} may not follow {prev} (step {i}): {points}")

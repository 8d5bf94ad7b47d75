"""``docwatch verify``: the index against the document directories and the sources.

Read-only everywhere.  Problems (exit non-zero): missing or incomplete document directories,
checksum mismatches, orphan directories, settled sources not indexed, parents that should be
linked but are not.  Notes (exit zero): documents whose parent task is unknown or has no ok
document yet, and sources that cannot be indexed (symlinks, oversized …; scan reports them).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from docwatch.config import Config, require_data_root
from docwatch.core.layout import STAGES
from docwatch.core.model import SUPERSEDED, choose_parent
from docwatch.ingest.listing import listing
from docwatch.ingest.planner import ANY_PARENT_STAGE
from docwatch.ingest.sources import DEFERRED, ERROR, NEW, probe
from docwatch.store.backend import open_index
from docwatch.store.index import Index
from docwatch.store.schema import DOCUMENT_COLUMNS
from docwatch.store.sourcefiles import digest_and_chars


@dataclass
class VerifyReport:
    problems: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    damaged: set[str] = field(default_factory=set)  # doc ids whose directory needs a rewrite

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "problems": [{"where": w, "what": p} for w, p in self.problems],
            "notes": [{"where": w, "what": p} for w, p in self.notes],
        }


def verify(cfg: Config, *, checksums: bool = True) -> VerifyReport:
    """Read-only: superseded documents are checked like any other (their directories stay);
    what an unfinished batch left (its intents) is a note: the next writer finishes it."""
    require_data_root(cfg)
    report = VerifyReport()
    index = open_index(cfg.index_location, readonly=True)
    try:
        rows = index.all(
            "SELECT d.*, a.parent_stage, a.parent_task_id, a.parent_ref_ns,"
            " a.version AS _attempt_version FROM documents d JOIN attempts a USING (doc_id)"
        )
        unfinished = {r["doc_id"] for r in index.all("SELECT doc_id FROM intents")}
        report.checked["documents"] = len(rows)
        for r in rows:
            meta = _check_document(cfg, r["doc_id"], r["stage"], checksums, report)
            if meta is not None and r["doc_id"] not in unfinished:
                _check_metadata_row(cfg, r, meta, report)
            _check_order_copy(r, report)
        _check_orphans(cfg, {r["doc_id"] for r in rows}, unfinished, report)
        _check_parents(index, rows, report)
        _check_sources(cfg, index, report)
        for doc_id in sorted(unfinished):
            report.notes.append(
                (
                    doc_id,
                    "a batch writing it was interrupted; the next start "
                    "of a docwatch writer finishes or undoes it",
                )
            )
    finally:
        index.close()
    return report


def _check_metadata_row(cfg: Config, row: dict, meta: dict, report: VerifyReport) -> None:
    """metadata.json's row is the index's row (rebuild-index restores the index from it)."""
    stored = {c: row[c] for c in DOCUMENT_COLUMNS}
    stored["meta_small"] = json.loads(stored["meta_small"]) if stored["meta_small"] else None
    if meta.get("row") != stored:
        differ = sorted(c for c in DOCUMENT_COLUMNS if (meta.get("row") or {}).get(c) != stored[c])
        where = str(cfg.docs_root / row["stage"] / row["doc_id"] / "metadata.json")
        report.problems.append(
            (where, f"says other {', '.join(differ)} than the index; `verify --repair` rewrites it")
        )
        report.damaged.add(row["doc_id"])


def _check_order_copy(row: dict, report: VerifyReport) -> None:
    """``documents.version`` (the readers' order, schema v5) is its attempt's version; a
    writer older than v5 left running beside a newer one writes it empty."""
    if "version" in row and row["version"] != row["_attempt_version"]:
        report.problems.append(
            (
                row["doc_id"],
                f"the index orders it as version {row['version']}, its attempt is version "
                f"{row['_attempt_version']} (a writer from before schema v5 still running?); "
                "`docwatch verify --repair` rewrites it",
            )
        )
        report.damaged.add(row["doc_id"])


def _check_document(
    cfg: Config, doc_id: str, stage: str, checksums: bool, report: VerifyReport
) -> dict | None:
    doc_dir = cfg.docs_root / stage / doc_id
    where = str(doc_dir)
    try:
        meta = json.loads((doc_dir / "metadata.json").read_text())
    except FileNotFoundError:
        what = "document directory missing" if not doc_dir.exists() else "metadata.json missing"
        report.problems.append((where, f"{what}; `docwatch verify --repair` rewrites it"))
        report.damaged.add(doc_id)
        return None
    except (OSError, ValueError) as exc:
        report.problems.append((where, f"metadata.json unreadable: {exc}"))
        report.damaged.add(doc_id)
        return None
    sources = meta.get("provenance", {}).get("sources", {})
    gone = (meta.get("row", {}).get("meta_small") or {}).get("unavailable", {})
    for kind, source in sources.items():
        path = doc_dir / f"{kind}.txt"
        if source is None or (kind == "prompt" and not cfg.prompt_copy) or kind in gone:
            continue
        if not path.exists():
            report.problems.append((str(path), f"{kind}.txt missing (source {source['path']})"))
            report.damaged.add(doc_id)
        elif checksums:
            _check_file(path, kind, source, meta.get("row") or {}, report)
    return meta


def _check_file(path: Path, kind: str, source: dict, row: dict, report: VerifyReport) -> None:
    """A document file holds its source's bytes, and the row counts its characters."""
    digest, chars = digest_and_chars(path)
    if digest != source["sha256"]:
        what = f"checksum differs from its source {source['path']} (edited by hand?)"
    elif kind in ("raw", "parsed") and row.get(f"{kind}_chars") != chars:
        what = f"has {chars} characters, its row says {kind}_chars = {row.get(f'{kind}_chars')}"
    else:
        return
    report.problems.append((str(path), f"{what}; `docwatch verify --repair` rewrites it"))
    report.damaged.add(path.parent.name)


def repair(cfg: Config, doc_ids: set[str], run_id: str) -> int:
    """Rewrite damaged documents from their sources (where the sources still hold the bytes)."""
    from docwatch.ingest.indexer import Indexer

    indexer = Indexer(cfg, run_id)
    try:
        indexer.recover()
        marks = ", ".join("?" * len(doc_ids))
        tasks = indexer.index.all(
            f"SELECT DISTINCT stage, task_id FROM documents WHERE doc_id IN ({marks})",
            sorted(doc_ids),
        )
        tasks = [(r["stage"], r["task_id"]) for r in tasks]
        report = indexer.ingest([], extra_tasks={(r[0], r[1]) for r in tasks}, force=set(doc_ids))
        return len(report.created)
    finally:
        indexer.close()


def _check_orphans(
    cfg: Config, doc_ids: set[str], unfinished: set[str], report: VerifyReport
) -> None:
    for stage in STAGES:
        stage_dir = cfg.docs_root / stage
        if not stage_dir.is_dir():
            continue
        for entry in stage_dir.iterdir():
            if entry.name in unfinished and entry.name not in doc_ids:
                report.notes.append(
                    (str(entry), "written by an interrupted batch (undone at the next start)")
                )
            elif entry.name not in doc_ids:
                report.problems.append((str(entry), "orphan directory: no row in the index"))
    staging = cfg.docs_root / ".tmp"
    if staging.is_dir():
        for batch in staging.glob("*/*/*"):
            report.notes.append((str(batch), "staging leftover (cleaned at the next start)"))


def _check_parents(index: Index, rows, report: VerifyReport) -> None:
    for r in rows:
        if r["stage"] == "draft" or r["status"] == SUPERSEDED:  # a tombstone keeps its links
            continue
        expected = None
        for stage in [r["parent_stage"]] if r["parent_stage"] else ANY_PARENT_STAGE:
            if r["parent_task_id"] is None:
                break
            cands = index.ok_candidates(stage, r["parent_task_id"])
            expected = choose_parent(cands, r["parent_ref_ns"])
            if expected:
                break
        if expected != r["parent_doc_id"]:
            report.problems.append(
                (r["doc_id"], f"parent is {r['parent_doc_id']}, expected {expected}")
            )
        elif expected is None:
            why = (
                f"parent task {r['parent_task_id']} has no ok document yet"
                if r["parent_task_id"]
                else "parent task unknown"
            )
            report.notes.append((r["doc_id"], f"unlinked: {why}"))


def _check_sources(cfg: Config, index: Index, report: VerifyReport) -> None:
    """Every settled source is in the ledger (listed against it, as scan does)."""
    now = time.time_ns()
    counts: Counter = Counter()
    listed = 0
    for c in listing(cfg.data_root, cfg.folders, STAGES, index.ledger_in_folder, counts):
        listed += 1
        o = probe(
            c,
            known=lambda r, s, m: False,
            now_ns=now,
            settle_ns=int(cfg.settle_seconds * 1e9),
            max_bytes=cfg.max_file_bytes,
        )
        if o.status == NEW and index.pinned([o.source.key]):
            continue  # the same bytes with another mtime (touched, restored): indexed
        if o.status == NEW and c.role.kind == "prompt":
            report.notes.append((c.relpath, "prompt not in the ledger (no document uses it)"))
        elif o.status == NEW:
            report.problems.append((c.relpath, "source not indexed; run `docwatch scan`"))
        elif o.status == ERROR:
            report.notes.append((c.relpath, f"source cannot be indexed: {o.reason}"))
        elif o.status == DEFERRED:
            report.notes.append((c.relpath, o.reason or "deferred"))
    report.checked["source_entries"] = listed + sum(counts.values())

"""``docwatch rebuild-index``: recreate the index from the documents' metadata.json files.

The document directories are the durable truth; the index is derived from them.  The old
database file (corrupt or not) is moved aside, never deleted.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from docwatch.core.layout import STAGES, parse_name
from docwatch.core.model import Source, TaskInfo
from docwatch.store.backend import open_index
from docwatch.store.index import Index


@dataclass
class RebuildReport:
    documents: int = 0
    sources: int = 0
    moved_aside: str | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "documents": self.documents,
            "sources": self.sources,
            "moved_aside": self.moved_aside,
            "problems": [{"path": p, "reason": r} for p, r in self.problems],
        }


def move_aside(db: Path) -> str | None:
    """Rename the database and its WAL/SHM files to ``<name>.bak-<timestamp>``."""
    if not db.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = db.with_name(f"{db.name}.bak-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        old = Path(str(db) + suffix)
        if old.exists():
            os.replace(old, Path(str(target) + suffix))
    return str(target)


def rebuild(db: Path, docs_root: Path) -> RebuildReport:
    """Move the old index aside and load every document's metadata into a new one.

    Superseded documents come back as superseded (their metadata.json says so), and each
    task's sticky facts come back from its documents' metadata.  The caller holds the locks
    that keep every writer away (``cli.rebuild_index``).
    """
    report = RebuildReport(moved_aside=move_aside(db))
    index = open_index(db)
    try:
        load(index, docs_root, report)
    finally:
        index.close()
    return report


def rebuild_postgres(url: str, docs_root: Path) -> RebuildReport:
    """The same for a PostgreSQL index: its tables move to a backup schema, never dropped.
    Refused (exit 4) while any writer, on any host, uses the index."""
    index = open_index(url)
    try:
        index.claim_users(exclusive=True)
        report = RebuildReport(moved_aside=index.move_aside())
        load(index, docs_root, report)
    finally:
        index.close()
    return report


def load(index: Index, docs_root: Path, report: RebuildReport) -> None:
    """Every document's metadata.json into ``index``, in one transaction."""
    with index.transaction():
        tasks: dict[tuple[str, str], TaskInfo] = {}
        for stage in STAGES:
            stage_dir = docs_root / stage
            if stage_dir.is_dir():
                for doc_dir in sorted(stage_dir.iterdir()):
                    _load_one(index, doc_dir, report, tasks)
        index.put_tasks(tasks.values())


def _load_one(index: Index, doc_dir: Path, report: RebuildReport, tasks: dict) -> None:
    meta_path = doc_dir / "metadata.json"
    try:
        meta = json.loads(meta_path.read_text())
        row, attempt = meta["row"], meta["attempt"]
        if row["doc_id"] != doc_dir.name:
            raise ValueError(f"doc_id {row['doc_id']!r} does not match the directory name")
        sources = _sources(row, meta["provenance"]["sources"])
        facts = meta.get("task")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        report.problems.append((str(meta_path), f"skipped: {exc}"))
        return
    index.put_document(row, attempt)
    index.put_sources(sources)
    if facts is not None and row["status"] != "superseded":
        tasks[(row["stage"], row["task_id"])] = TaskInfo.from_facts(
            row["stage"], row["task_id"], facts
        )
    report.documents += 1
    report.sources += len(sources)


def _sources(row: dict, provenance: dict) -> list[Source]:
    out = []
    for kind, s in provenance.items():
        if s is None:
            continue
        name = parse_name(Path(s["path"]).name)
        version = 0 if isinstance(name, str) else name.version
        out.append(
            Source(
                stage=row["stage"],
                kind=kind,
                relpath=s["path"],
                task_id=row["task_id"],
                version=version,
                mtime_ns=s["mtime_ns"],
                size=s["size"],
                sha256=s["sha256"],
            )
        )
    return out

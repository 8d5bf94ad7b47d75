"""``docwatch status``: what the index holds and how fresh it is (read-only)."""

from __future__ import annotations

from datetime import UTC, datetime

from docwatch.core.layout import STAGES
from docwatch.store import index as ix


def status(db) -> dict:
    """Counts by stage and status, pending, unlinked, newest document, ingest lag."""
    con = ix.connect(db, readonly=True)
    try:
        counts = {s: {} for s in STAGES}
        for r in con.execute("SELECT stage, status, count(*) FROM documents GROUP BY 1, 2"):
            counts.setdefault(r[0], {})[r[1]] = r[2]
        unlinked = con.execute(
            "SELECT count(*) FROM documents WHERE stage != 'draft' AND parent_doc_id IS NULL"
        ).fetchone()[0]
        newest = con.execute(
            "SELECT doc_id, stage, task_id, created_at FROM documents"
            " ORDER BY created_at DESC LIMIT 1"
        ).fetchone()
        problems = con.execute("SELECT count(*) FROM problems").fetchone()[0]
        last_ingest = ix.get_state(con, "last_ingest")
        lag = ix.get_state(con, "last_lag_seconds")
    finally:
        con.close()
    return {
        "documents": sum(sum(c.values()) for c in counts.values()),
        "by_stage": counts,
        "pending": sum(c.get("pending", 0) for c in counts.values()),
        "unlinked": unlinked,
        "source_problems": problems,
        "newest": dict(newest) if newest else None,
        "last_ingest": last_ingest,
        "seconds_since_last_ingest": _age(last_ingest),
        "last_lag_seconds": float(lag) if lag else None,
    }


def _age(stamp: str | None) -> float | None:
    if not stamp:
        return None
    then = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return round((datetime.now(UTC) - then).total_seconds(), 1)


def render(s: dict) -> str:
    lines = [f"documents: {s['documents']}"]
    for stage, by_status in s["by_stage"].items():
        detail = ", ".join(f"{k} {v}" for k, v in sorted(by_status.items())) or "none"
        lines.append(f"  {stage:<10} {detail}")
    lines.append(
        f"pending: {s['pending']}   unlinked: {s['unlinked']}   "
        f"source problems: {s['source_problems']}"
    )
    if s["newest"]:
        n = s["newest"]
        lines.append(f"newest: {n['doc_id']} {n['stage']} {n['task_id']} ({n['created_at']})")
    if s["last_ingest"]:
        lag = s["last_lag_seconds"]
        lag_text = f", lag of that batch {lag:.3f}s" if lag is not None else ""
        lines.append(
            f"last ingest: {s['last_ingest']} ({s['seconds_since_last_ingest']}s ago{lag_text})"
        )
    return "\n".join(lines)

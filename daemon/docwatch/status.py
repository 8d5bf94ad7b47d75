"""``docwatch status``: what the index holds and how fresh it is (read-only)."""

from __future__ import annotations

import time

from docwatch.core.clock import parse_iso
from docwatch.core.layout import STAGES
from docwatch.store.backend import open_index


def status(db) -> dict:
    """Counts by stage and status, pending, unlinked, newest document, ingest lag.

    The lag is the time from the newest file of the last batch to its commit, for files the
    daemon saw written; a batch of files older than that (a scan, a catch-up) is a backfill.
    """
    index = open_index(db, readonly=True)
    try:
        counts: dict[str, dict[str, int]] = {s: {} for s in STAGES}
        for r in index.all("SELECT stage, status, count(*) AS n FROM documents GROUP BY 1, 2"):
            counts.setdefault(r["stage"], {})[r["status"]] = r["n"]
        unlinked = index.scalar(
            "SELECT count(*) AS n FROM documents WHERE stage <> 'draft'"
            " AND parent_doc_id IS NULL AND status <> 'superseded'"
        )
        newest = index.one(
            "SELECT doc_id, stage, task_id, created_at FROM documents"
            " ORDER BY created_at DESC LIMIT 1"
        )
        problems = index.scalar("SELECT count(*) AS n FROM problems")
        state = {k: index.get_state(k) for k in ("last_ingest", "last_lag_seconds", "last_batch")}
    finally:
        index.close()
    lag = state["last_lag_seconds"]
    return {
        "documents": sum(sum(c.values()) for c in counts.values()),
        "by_stage": counts,
        "pending": sum(c.get("pending", 0) for c in counts.values()),
        "superseded": sum(c.get("superseded", 0) for c in counts.values()),
        "unlinked": unlinked,
        "source_problems": problems,
        "newest": newest,
        "last_ingest": state["last_ingest"],
        "seconds_since_last_ingest": _age(state["last_ingest"]),
        "last_batch": state["last_batch"] or ("live" if lag else None),
        "last_lag_seconds": float(lag) if lag else None,
    }


def _age(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return round((time.time_ns() - parse_iso(stamp)) / 1e9, 1)


def render(s: dict) -> str:
    lines = [f"documents: {s['documents']}"]
    for stage, by_status in s["by_stage"].items():
        detail = ", ".join(f"{k} {v}" for k, v in sorted(by_status.items())) or "none"
        lines.append(f"  {stage:<10} {detail}")
    lines.append(
        f"pending: {s['pending']}   unlinked: {s['unlinked']}   "
        f"superseded: {s['superseded']}   source problems: {s['source_problems']}"
    )
    if s["newest"]:
        n = s["newest"]
        lines.append(f"newest: {n['doc_id']} {n['stage']} {n['task_id']} ({n['created_at']})")
    if s["last_ingest"]:
        if s["last_batch"] == "backfill":
            lag_text = "; a backfill of files written before the daemon saw them (no lag)"
        elif s["last_lag_seconds"] is not None:
            lag_text = f"; from file close to its row {s['last_lag_seconds']:.3f}s"
        else:
            lag_text = ""
        lines.append(
            f"last ingest: {s['last_ingest']} ({s['seconds_since_last_ingest']}s ago{lag_text})"
        )
    return "\n".join(lines)

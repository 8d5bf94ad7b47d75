"""Which run event belongs to which document (pure): ``RecordBook`` holds the set of events,
indexed for matching, and ``enrich(row, attempt)`` applies the facts of an attempt's event.

Matching an event to a document (deterministic; a pure function of the *set* of events):

1. Events that name a raw file (metadata ``raw_path``) match the attempt whose raw source is
   that file.  ``raw_path`` is written relative to the pipeline's working directory
   (``data/3_generation/draft_responses_raw/<task>_v1.txt``) or absolute; it is mapped below the
   data root by finding one of the configured folders (``3_generation/draft_responses_raw``…)
   as the path components right above the file name (longest folder wins).  So the data root's
   own name and location do not matter.
2. Events without ``raw_path`` (evaluations, copy-mode essays) are materialisations only; they
   match a parsed-only attempt of the same stage whose task id is the event's partition key.
3. Among the candidates, the event nearest *after* the attempt's creation time (the raw
   file's mtime; for parsed-only attempts the parsed file's mtime) wins: the pipeline writes the
   file, then Dagster records the event.  Events up to ``SKEW_SECONDS`` before it are accepted
   only when none is after (clock granularity, network filesystems).  Partition matches must
   also lie within ``PARSED_LAG_SECONDS`` after the file (an attempt whose own event is missing
   must not borrow a much later attempt's).  Ties: storage id, run id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from docwatch.dagster.runfacts import MATERIALIZATION, Facts, RunEvent, facts_of, path_parts

if TYPE_CHECKING:
    from docwatch.core.model import Attempt

log = logging.getLogger("docwatch.runrecords")

#: Events this long before a file's mtime still match it when none is after (clock skew).
SKEW_SECONDS = 5.0
#: A partition-matched (parsed-only) file's materialisation comes at most this long after it.
PARSED_LAG_SECONDS = 300.0


def relpath_below_root(raw_path: str, folders: Iterable[str]) -> str | None:
    """``raw_path`` as written by the pipeline → the source's path relative to the data root.

    The folder (``3_generation/draft_responses_raw``) must be the components right above the
    file name; the longest matching folder wins.  None when no configured folder matches.
    """
    parts = path_parts(raw_path)
    if len(parts) < 2:
        return None
    best: tuple[str, ...] | None = None
    for folder in folders:
        fparts = path_parts(folder)
        n = len(fparts)
        matches = n and len(parts) > n and parts[-1 - n : -1] == fparts
        if matches and (best is None or n > len(best)):
            best = fparts
    return None if best is None else "/".join((*best, parts[-1]))


def choose(
    events: Iterable[RunEvent],
    ref_s: float,
    *,
    lag_s: float | None = None,
    skew_s: float = SKEW_SECONDS,
) -> RunEvent | None:
    """The event nearest after ``ref_s`` (within ``lag_s``), else the nearest up to ``skew_s``
    before it; ties by storage id and run id.  Pure and order-independent."""
    after, before = [], []
    for e in events:
        if e.timestamp >= ref_s:
            if lag_s is None or e.timestamp - ref_s <= lag_s:
                after.append(e)
        elif ref_s - e.timestamp <= skew_s:
            before.append(e)
    if after:
        return min(after, key=RunEvent.order)
    if before:
        return max(before, key=RunEvent.order)
    return None


class RecordBook:
    """The set of run events, indexed by raw source path and by (stage, task id)."""

    def __init__(self, folders: Iterable[str]) -> None:
        self.folders = tuple(sorted({f.strip("/") for f in folders if f.strip("/")}))
        self._events: dict[tuple[str, str, int], RunEvent] = {}
        self._by_path: dict[str, dict[tuple, RunEvent]] = {}
        self._by_task: dict[tuple[str, str], dict[tuple, RunEvent]] = {}
        self.unmatched_paths: set[str] = set()

    def __len__(self) -> int:
        return len(self._events)

    def add(self, events: Iterable[RunEvent]) -> set[tuple[str, str]]:
        """Add events (already known ones are ignored); return the tasks they concern."""
        touched: set[tuple[str, str]] = set()
        for e in events:
            if e.key in self._events:
                continue
            self._events[e.key] = e
            tasks = {(e.stage, t) for t in e.task_ids()}
            touched |= tasks
            if e.raw_path:
                rel = relpath_below_root(e.raw_path, self.folders)
                if rel is None:
                    self.unmatched_paths.add(e.raw_path)
                    log.debug(
                        "run %s: raw_path %r is under no configured folder", e.run_id, e.raw_path
                    )
                    continue
                self._by_path.setdefault(rel, {})[e.key] = e
            elif e.kind == MATERIALIZATION and e.partition:
                self._by_task.setdefault((e.stage, e.partition), {})[e.key] = e
        return touched

    def match(
        self, stage: str, task_id: str, raw_relpath: str | None, created_ns: int
    ) -> RunEvent | None:
        """The event of one attempt (see the module docstring), or None."""
        ref = created_ns / 1e9
        if raw_relpath is not None:
            cands = [e for e in self._by_path.get(raw_relpath, {}).values() if e.stage == stage]
            return choose(cands, ref)
        cands = list(self._by_task.get((stage, task_id), {}).values())
        return choose(cands, ref, lag_s=PARSED_LAG_SECONDS)

    def facts_for(self, attempt: Attempt) -> Facts | None:
        raw = attempt.raw.relpath if attempt.raw is not None else None
        event = self.match(attempt.stage, attempt.task_id, raw, attempt.created_at_ns)
        return facts_of(event) if event is not None else None

    def enrich(self, row: dict, attempt: Attempt) -> dict:
        """The ``Ingestor.enrich`` hook: the row with its run's facts, if any are known."""
        facts = self.facts_for(attempt)
        return facts.apply(row) if facts is not None else row

"""Read the run records of a Dagster instance as plain JSON: the pipeline side of run records.

Self-contained on purpose: this file imports only the standard library and ``dagster`` (lazily),
never ``docwatch.*``, so it runs under the *pipeline's* Python, whose Dagster wrote the instance
(the daemon's own venv cannot hold a current Dagster: Dagster >= 1.8.5 requires ``watchdog<7``,
the daemon requires watchdog 7.1).  ``docwatch.dagster.runrecords`` uses it in one of two ways:

* in process, ``read_events(dagster_home, cursor) -> (events, cursor)``, when Dagster imports
  in the daemon's venv and ``dagster_python`` is not configured;
* by file path, with ``dagster_python`` (the pipeline venv's interpreter):

      <pipeline-python> .../docwatch/dagster/events.py --dagster-home H --cursor '<json>'

  prints one JSON document ``{"events": [...], "cursor": {...}, "dagster_version": "..."}``
  (``--cursor -`` reads the cursor from standard input; no ``--cursor``: from the start).
  With ``--serve`` it answers one request per line instead: a line with a cursor (JSON) on
  standard input gets a line with that document on standard output; the instance stays open
  between requests.  Any failure: the traceback on standard error and exit status 1.

Events are the plain dicts ``docwatch.dagster.runfacts.event_from_dict`` takes: ``asset``, ``event``
(``materialization`` / ``step_failure``), ``run_id``, ``partition``, ``timestamp`` (seconds),
``storage_id``, ``metadata`` (plain values), ``step``, ``description``, ``error``.

The cursor is plain JSON too (``new_cursor()``; the caller keeps it and passes it back; an input
cursor is never modified, so a failed read leaves the caller's cursor where it was):

* ``materializations``: per asset, the last storage id read; materialisations are read with
  ``fetch_materializations(AssetRecordsFilter(asset_key, after_storage_id=...))`` (asset events
  live in the index shard, so their storage ids are global);
* step failures: ``get_event_records(EventRecordsFilter(STEP_FAILURE, after_cursor=<int>))``
  raises on the default run-sharded SQLite storage ("cursor that is not run-aware"), so failures
  are read per run: runs that did not succeed and were updated after ``runs_updated_after`` (an
  ISO time; ``get_run_records(RunsFilter(updated_after=...))``), plus the ``open_runs`` still in
  progress at the last read, then ``get_records_for_run(run_id, cursor, of_type=STEP_FAILURE)``
  from the per-run cursor in ``runs``; the partition comes from the run's ``dagster/partition``
  tag.  ``runs_updated_after`` trails the newest update seen by ``SKEW_SECONDS`` (re-reads are
  free: per-run cursors), and per-run cursors are dropped once their run is finished and older
  than that, so the cursor stays small (a run seen again is re-read from its start; the caller
  ignores events it already has).  Works on every storage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import traceback

if (
    __name__ == "__main__"
    and sys.path
    and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__))
):
    # Run by path: this folder is not a place to import from (its module names could shadow
    # the ones Dagster imports).
    del sys.path[0]

from datetime import datetime, timedelta, timezone

#: The legacy pipeline's response assets (``/``-joined asset key paths).
ASSETS = ("draft_response", "essay_response", "evaluation_response")
MATERIALIZATION, STEP_FAILURE = "materialization", "step_failure"
PARTITION_TAG = "dagster/partition"
#: ``runs_updated_after`` trails the newest run update seen by this much (clock skew).
SKEW_SECONDS = 5.0
PAGE = 1000
CURSOR_VERSION = 1
#: Ignored with ``--serve``: the daemon that started this reader decides when it ends (at EOF).
LEFT_TO_THE_PARENT = frozenset({signal.SIGINT, signal.SIGTERM})
_MAX_TEXT = 500  # longer metadata strings are cut
_UTC = timezone.utc  # noqa: UP017 - this file also runs under a pipeline's older Python


def _dagster():
    import dagster  # the only import outside the standard library

    return dagster


def dagster_version() -> str:
    return _dagster().__version__


def new_cursor() -> dict:
    """The cursor of a first read: everything from the start."""
    return {
        "version": CURSOR_VERSION,
        "materializations": {},
        "runs": {},
        "open_runs": [],
        "runs_updated_after": None,
    }


def _checked_cursor(cursor: dict | None) -> dict:
    """A deep copy of ``cursor`` (None: a new one), its shape checked."""
    if cursor is None:
        return new_cursor()
    if not isinstance(cursor, dict) or cursor.get("version") != CURSOR_VERSION:
        raise ValueError(f"not a version {CURSOR_VERSION} run-records cursor: {cursor!r:.200}")
    out = new_cursor()
    out["materializations"] = {
        str(k): (None if v is None else int(v))
        for k, v in dict(cursor.get("materializations") or {}).items()
    }
    out["runs"] = {str(k): str(v) for k, v in dict(cursor.get("runs") or {}).items()}
    out["open_runs"] = sorted({str(r) for r in cursor.get("open_runs") or ()})
    after = cursor.get("runs_updated_after")
    out["runs_updated_after"] = None if after is None else _parse_time(after).isoformat()
    return out


def _parse_time(text: str) -> datetime:
    stamp = datetime.fromisoformat(text)
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=_UTC)


def open_instance(dagster_home: str | os.PathLike):
    """The Dagster instance of ``dagster_home`` (its ``dagster.yaml``); the caller disposes it."""
    home = os.fspath(dagster_home)
    if not os.path.isdir(home):
        raise NotADirectoryError(
            f"dagster_home {home}: not a directory (set it to the pipeline's DAGSTER_HOME)"
        )
    quiet = logging.getLogger("alembic")  # Dagster's schema check logs at INFO
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.WARNING)
    return _dagster().DagsterInstance.from_config(home)


def read_events(
    dagster_home: str | os.PathLike, cursor: dict | None = None, *, assets=ASSETS, instance=None
) -> tuple[list[dict], dict]:
    """The events recorded after ``cursor``, and the cursor after them.

    ``instance``: an open instance to use (else one is opened from ``dagster_home`` and disposed
    of).  ``cursor`` is not modified: when reading fails, the caller's cursor is still valid.
    """
    cur = _checked_cursor(cursor)
    owned = instance is None
    if owned:
        instance = open_instance(dagster_home)
    try:
        events = list(_read_materializations(instance, cur, assets))
        events += _read_failures(instance, cur, assets)
    finally:
        if owned:
            instance.dispose()
    return events, cur


# -- materialisations ----------------------------------------------------------------------


def _read_materializations(instance, cur: dict, assets) -> list[dict]:
    dg = _dagster()
    out = []
    for asset in assets:
        key = dg.AssetKey(asset.split("/"))
        while True:
            after = cur["materializations"].get(asset)
            flt = dg.AssetRecordsFilter(asset_key=key, after_storage_id=after)
            result = instance.fetch_materializations(flt, limit=PAGE, ascending=True)
            for rec in result.records:
                out.append(_materialization(rec, asset))
                cur["materializations"][asset] = max(rec.storage_id, after or 0)
                after = cur["materializations"][asset]
            if not result.has_more or not result.records:
                break
    return out


def _materialization(rec, asset: str) -> dict:
    entry = rec.event_log_entry
    mat = rec.asset_materialization
    partition = getattr(rec, "partition_key", None) or (mat.partition if mat else None)
    return {
        "asset": asset,
        "event": MATERIALIZATION,
        "run_id": entry.run_id,
        "partition": partition,
        "timestamp": float(entry.timestamp),
        "storage_id": rec.storage_id,
        "metadata": _metadata(mat.metadata if mat else None),
        "step": entry.step_key,
        "description": None,
        "error": None,
    }


# -- step failures -------------------------------------------------------------------------


def _read_failures(instance, cur: dict, assets) -> list[dict]:
    dg = _dagster()
    status = dg.DagsterRunStatus
    not_success = [s for s in status if s != status.SUCCESS]
    after = cur["runs_updated_after"]
    runs = {
        r.dagster_run.run_id: r
        for r in instance.get_run_records(
            filters=dg.RunsFilter(updated_after=after and _parse_time(after), statuses=not_success),
            order_by="update_timestamp",
            ascending=True,
        )
    }
    missing = set(cur["open_runs"]) - set(runs)
    if missing:
        runs.update(
            (r.dagster_run.run_id, r)
            for r in instance.get_run_records(filters=dg.RunsFilter(run_ids=sorted(missing)))
        )
    steps = {a.replace("/", "__"): a for a in assets}
    finished = {status.SUCCESS, status.FAILURE, status.CANCELED}
    open_runs, stamps, out = set(), {}, []
    newest = _parse_time(after) if after else None
    for run_id, record in runs.items():
        run = record.dagster_run
        out += _run_failures(instance, cur, run_id, run.tags.get(PARTITION_TAG), steps)
        if run.status not in finished:
            open_runs.add(run_id)
        stamp = record.update_timestamp
        if stamp is not None and stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=_UTC)
        stamps[run_id] = stamp
        if stamp is not None and (newest is None or stamp > newest):
            newest = stamp
    if newest is not None:  # re-read a margin: per-run cursors make re-reads free
        margin = newest - timedelta(seconds=SKEW_SECONDS)
        if after is None or margin > _parse_time(after):
            cur["runs_updated_after"] = margin.isoformat()
    # keep the per-run cursors the next read may use: open runs and runs it will list again
    floor = cur["runs_updated_after"] and _parse_time(cur["runs_updated_after"])

    def listed_again(run_id: str) -> bool:
        stamp = stamps.get(run_id, floor)
        return run_id in stamps and (stamp is None or floor is None or stamp >= floor)

    cur["runs"] = {r: c for r, c in cur["runs"].items() if r in open_runs or listed_again(r)}
    cur["open_runs"] = sorted(open_runs)
    return out


def _run_failures(
    instance, cur: dict, run_id: str, partition: str | None, steps: dict
) -> list[dict]:
    dg = _dagster()
    out = []
    while True:
        conn = instance.get_records_for_run(
            run_id,
            cursor=cur["runs"].get(run_id),
            of_type=dg.DagsterEventType.STEP_FAILURE,
            limit=PAGE,
        )
        for rec in conn.records:
            event = _failure(rec, run_id, partition, steps)
            if event is not None:
                out.append(event)
        if conn.records:
            cur["runs"][run_id] = conn.cursor
        if not conn.has_more or not conn.records:
            break
    return out


def _failure(rec, run_id: str, partition: str | None, steps: dict) -> dict | None:
    entry = rec.event_log_entry
    event = entry.dagster_event
    step = entry.step_key or (event.step_key if event else None)
    asset = steps.get(step or "")
    if asset is None or event is None:
        return None
    data = event.step_failure_data
    user = getattr(data, "user_failure_data", None)
    return {
        "asset": asset,
        "event": STEP_FAILURE,
        "run_id": run_id,
        "partition": partition or getattr(event, "partition", None),
        "timestamp": float(entry.timestamp),
        "storage_id": rec.storage_id,
        "metadata": _metadata(getattr(user, "metadata", None)),
        "step": step,
        "description": getattr(user, "description", None),
        "error": _error_text(getattr(data, "error", None)),
    }


# -- plain values --------------------------------------------------------------------------


def _metadata(md) -> dict:
    return {str(k): _small(_plain(v)) for k, v in (md or {}).items()}


def _plain(value):
    """A Dagster MetadataValue (or a raw value) as a JSON-friendly plain value."""
    raw = getattr(value, "value", value)
    if raw is value and type(value).__module__.startswith("dagster"):
        raw = getattr(value, "text", None) or getattr(value, "path", None) or str(value)
    if raw is None or isinstance(raw, (bool, int, float, str)):  # noqa: UP038 - older Pythons
        return raw
    if isinstance(raw, os.PathLike):
        return os.fspath(raw)
    try:
        return json.loads(json.dumps(raw, default=str))
    except (TypeError, ValueError):
        return str(raw)


def _small(value):
    """Long strings and large structures cut to ``_MAX_TEXT`` characters."""
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        return value[:_MAX_TEXT] + "…"
    if value is None or isinstance(value, (bool, int, float, str)):  # noqa: UP038
        return value
    text = json.dumps(value, default=str, sort_keys=True)
    return json.loads(text) if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"


def _error_text(err) -> str | None:
    """The innermost cause's message of a SerializableErrorInfo, first line."""
    seen = 0
    while err is not None and getattr(err, "cause", None) is not None and seen < 10:
        err, seen = err.cause, seen + 1
    message = (getattr(err, "message", None) or "").strip()
    return message.splitlines()[0] if message else None


# -- the command line ----------------------------------------------------------------------


def _document(events: list[dict], cursor: dict) -> str:
    doc = {"events": events, "cursor": cursor, "dagster_version": dagster_version()}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), default=str)


def _serve(home: str, assets, out) -> int:
    """One request per line on stdin (a cursor), one JSON line per answer; EOF: exit 0."""
    instance = open_instance(home)
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            events, cursor = read_events(home, json.loads(line), assets=assets, instance=instance)
            out.write(_document(events, cursor) + "\n")
            out.flush()
    finally:
        instance.dispose()
    return 0


def _leave_signals_to_the_parent() -> None:
    """systemd's stop sends SIGTERM to every process of the service, this reader too: the
    daemon ends it at EOF once it stops polling.  It started us with them blocked
    (``docwatch.children.start_child``), so one sent before this call is dropped here."""
    for sig in LEFT_TO_THE_PARENT:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, LEFT_TO_THE_PARENT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Print the run records of a Dagster instance as JSON (docwatch)."
    )
    parser.add_argument("--dagster-home", required=True, help="the instance's DAGSTER_HOME")
    parser.add_argument("--cursor", help="the cursor of the previous read (JSON; '-': stdin)")
    parser.add_argument(
        "--asset",
        action="append",
        dest="assets",
        help=f"an asset to read (repeatable; default: {', '.join(ASSETS)})",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="answer one cursor per stdin line with one JSON line, until EOF (SIGINT and "
        "SIGTERM are ignored: the process that started it ends it by closing its input)",
    )
    args = parser.parse_args(argv)
    if args.serve:
        _leave_signals_to_the_parent()
    assets = tuple(args.assets or ASSETS)
    out = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):  # only our JSON goes to stdout
            if args.serve:
                return _serve(args.dagster_home, assets, out)
            text = sys.stdin.read() if args.cursor == "-" else args.cursor
            cursor = json.loads(text) if text and text.strip() else None
            events, cursor = read_events(args.dagster_home, cursor, assets=assets)
            out.write(_document(events, cursor) + "\n")
            out.flush()
            return 0
    except KeyboardInterrupt:
        return 130
    except Exception:
        traceback.print_exc(file=sys.stderr)
        return 1


if __name__ == "__main__":
    # Run by path, this file's directory (``daemon/``, which holds a ``dagster.py``) would come
    # first on sys.path and shadow the real ``dagster``: take it off before importing Dagster.
    _here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _here]
    sys.exit(main())

"""Timestamps as text: one format everywhere (ISO-8601 UTC, microseconds, ``Z``), so they sort
as strings in the index and read the same in rows, metadata.json and ``status``."""

from __future__ import annotations

import time
from datetime import UTC, datetime

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def iso_utc(ns: int) -> str:
    """``2025-09-14T10:02:03.123456Z`` for a time in nanoseconds since the epoch."""
    dt = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC)
    return dt.replace(microsecond=(ns % 1_000_000_000) // 1000).strftime(_FORMAT)


def iso_seconds(seconds: float) -> str:
    """The same format for a time in (float) seconds since the epoch."""
    return iso_utc(int(round(seconds * 1_000_000)) * 1000)


def now_iso() -> str:
    return iso_utc(time.time_ns())


def parse_iso(text: str) -> int:
    """Nanoseconds since the epoch of a timestamp written by ``iso_utc`` (or without
    microseconds, as indexes written by docwatch 0.1 have)."""
    fmt = _FORMAT if "." in text else "%Y-%m-%dT%H:%M:%SZ"
    dt = datetime.strptime(text, fmt).replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000

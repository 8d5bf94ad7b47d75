"""Timestamps as text: one format everywhere (ISO-8601 UTC, microseconds, ``Z``), so they sort
as strings in the index and read the same in rows, metadata.json and ``status``."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime, timedelta

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def iso_utc(ns: int) -> str:
    """``2025-09-14T10:02:03.123456Z`` for a time in nanoseconds since the epoch (formatted
    by hand: ``strftime`` took 3× as long, several times per document)."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    hour, in_hour = divmod(seconds, 3600)  # POSIX time: every hour is 3,600 seconds
    minute, second = divmod(in_hour, 60)
    return f"{_hour(hour)}:{minute:02d}:{second:02d}.{fraction // 1000:06d}Z"


@functools.lru_cache(maxsize=256)  # a batch's timestamps fall in a few hours
def _hour(hour: int) -> str:
    t = time.gmtime(hour * 3600)
    if not 1 <= t.tm_year <= 9999:
        raise ValueError(f"year {t.tm_year} is out of range")
    year = str(t.tm_year)  # unpadded below 1000, as strftime wrote it (ids must not change)
    return f"{year}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}"


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
    return (dt - _EPOCH) // _MICROSECOND * 1000  # exact before 1970 too (timestamp() is not)

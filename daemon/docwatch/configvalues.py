"""Parsers of one configuration value each: a number, a duration, a byte count, a mode, a
path, a URL, a folder list.  Each returns the value, or raises ``Bad`` saying what was expected
(``config.py`` adds the key and where the value came from, and reports every problem at once).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit


class Bad(ValueError):
    """A value that does not parse; the message says what was expected."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, None: 1}
BYTES = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, None: 1}
_MODE = re.compile(r"^(?:0o|0)?([0-7]{1,4})$")
_BOOLS = {"1": True, "true": True, "yes": True, "on": True}
_BOOLS |= {"0": False, "false": False, "no": False, "off": False}


def duration(value: object) -> float:
    """Seconds from a number or a string with a unit: "500ms", "90s", "10m", "2h"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        number, unit = float(match[1]), match[2]
        seconds = number / 1000 if unit == "ms" else number * _SECONDS[unit]
    else:
        seconds = -1.0
    if not 0 <= seconds < math.inf:
        raise Bad('expected a duration such as 600, "10m", "90s" (units ms, s, m, h)')
    return seconds


def positive_duration(value: object) -> float:
    """A duration greater than zero."""
    if (seconds := duration(value)) <= 0:
        raise Bad('expected a duration greater than zero, such as 2, "500ms", "10m"')
    return seconds


def whole(units: dict[str | None, int], expected: str) -> Callable[[object], int]:
    """A parser of whole numbers ≥ 1: an int, or digits with one of ``units`` in a string."""
    pattern = re.compile(r"^\s*(\d+)\s*(" + "|".join(u for u in units if u) + r")?\s*$")

    def parse(value: object) -> int:
        if isinstance(value, str) and (match := pattern.match(value)):
            value = int(match[1]) * units[match[2] or None]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise Bad(expected)
        return value

    return parse


def io_threads(value: object) -> int | None:
    """Either "auto" (None: one thread per core, at most 4) or a count from 0 (no threads)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 64:
        raise Bad('expected "auto" or a whole number from 0 (no I/O threads) to 64')
    return value


def mode(required: int) -> Callable[[object], int]:
    """A parser of permission modes (0o644, "0644", "0o644") that must include ``required``."""

    def parse(value: object) -> int:
        if isinstance(value, str) and (match := _MODE.match(value.strip())):
            value = int(match[1], 8)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
            raise Bad('expected an octal mode such as 0o644 or "0644" (TOML 644 is decimal)')
        if value & required != required:
            raise Bad(f"expected a mode that includes {required:#o} for the owner")
        return value

    return parse


def boolean(value: object) -> bool:
    """A boolean, or one of 1/0, true/false, yes/no, on/off (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLS:
        return _BOOLS[value.strip().lower()]
    raise Bad("expected true or false (also 1/0, yes/no, on/off)")


def choice(*options: str, upper: bool = False) -> Callable[[object], str]:
    """A parser of one of ``options``, case-insensitive, stored in the options' case."""

    def parse(value: object) -> str:
        text = value.strip().lower() if isinstance(value, str) else None
        if text not in options:
            raise Bad("expected one of " + ", ".join(o.upper() if upper else o for o in options))
        return text.upper() if upper else text

    return parse


def path(value: object) -> Path:
    """A non-empty path (``~`` expanded, otherwise kept as given)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise Bad("expected a non-empty path")
    return Path(value).expanduser()


def index_url(value: object) -> str:
    """A PostgreSQL URL (``postgresql://user@host:port/dbname``)."""
    if not isinstance(value, str) or not value.startswith(("postgresql://", "postgres://")):
        raise Bad("expected a PostgreSQL URL such as postgresql://docwatch@db-host:5432/docwatch")
    parts = urlsplit(value)
    if not parts.hostname and "host=" not in parts.query or not parts.path.strip("/"):
        raise Bad("expected postgresql://user@host[:port]/dbname (a host and a database)")
    return value


def redact_url(url: str) -> str:
    """A URL without its password (for messages and logs: credentials are never shown)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def label(value: object) -> str:
    """A non-empty run label without control characters."""
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise Bad("expected a non-empty label without control characters")
    return value


def folder_list(raw: object) -> tuple[str, ...]:
    """A folder or list of folders, each relative to data_root, without ``..``."""
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise Bad("expected a folder or a list of folders")
    folders = []
    for item in items:
        path = PurePosixPath(item.strip())
        if path.is_absolute() or ".." in path.parts or not path.parts or "\0" in item:
            raise Bad(f'"{item}" must be a relative path under data_root, without ".."')
        folders.append(path.as_posix())
    return tuple(folders)

"""Configuration: defaults → TOML file → ``DOCWATCH_*`` environment → command-line flags.

Every value given in any layer is validated (even one a later layer overrides) and all problems
are raised together as one :class:`ConfigError`.  Relative paths are relative to the current
directory; ``db`` and ``docs_root`` default to ``<data_root>/db/documents.sqlite`` and
``<data_root>/docs`` only when not given.  Folders are set in the TOML file only and are relative
to ``data_root``.  An empty ``DOCWATCH_*`` variable counts as not given.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

from docwatch.core.layout import DEFAULT_FOLDERS, KINDS, STAGES, folder_roles

ENV_PREFIX = "DOCWATCH_"
CONFIG_ENV = "DOCWATCH_CONFIG"
#: Environment variables that are not settings (the test-only fault seam and its trace).
NOT_SETTINGS = frozenset({CONFIG_ENV, "DOCWATCH_FAULT", "DOCWATCH_TRACE"})


class ConfigError(Exception):
    """One or more configuration problems; ``problems`` lists every one of them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        count = len(self.problems)
        head = f"invalid configuration ({count} problem{'' if count == 1 else 's'}):"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


@dataclass(frozen=True)
class Config:
    """The effective settings; ``sources`` says where each key came from."""

    data_root: Path
    db: Path
    docs_root: Path
    run_id: str | None
    link: bool
    folders: dict[str, dict[str, tuple[str, ...]]]
    settle_seconds: float
    pair_window: float
    reconcile_interval: float
    observer: str
    poll_interval: float
    batch_max_files: int
    batch_max_delay: float
    io_threads: int | None
    log_level: str
    log_format: str
    file_mode: int
    dir_mode: int
    prompt_copy: bool
    max_file_bytes: int
    dagster_home: Path | None
    dagster_python: Path | None
    index_url: str | None
    instance_name: str
    sources: dict[str, str]

    @property
    def index_location(self) -> str | Path:
        """Where the index is: the PostgreSQL URL when set, else the SQLite file."""
        return self.index_url or self.db

    @property
    def index_name(self) -> str:
        """The index for messages: the SQLite path, or the URL without its password."""
        return redact_url(self.index_url) if self.index_url else str(self.db)


class _Bad(ValueError):
    """A value that does not parse; the message says what was expected."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, None: 1}
_BYTES = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, None: 1}
_MODE = re.compile(r"^(?:0o|0)?([0-7]{1,4})$")
_BOOLS = {"1": True, "true": True, "yes": True, "on": True}
_BOOLS |= {"0": False, "false": False, "no": False, "off": False}


def _duration(value: object) -> float:
    """Seconds from a number or a string with a unit: "500ms", "90s", "10m", "2h"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        number, unit = float(match[1]), match[2]
        seconds = number / 1000 if unit == "ms" else number * _SECONDS[unit]
    else:
        seconds = -1.0
    if not 0 <= seconds < math.inf:
        raise _Bad('expected a duration such as 600, "10m", "90s" (units ms, s, m, h)')
    return seconds


def _positive_duration(value: object) -> float:
    """A duration greater than zero."""
    if (seconds := _duration(value)) <= 0:
        raise _Bad('expected a duration greater than zero, such as 2, "500ms", "10m"')
    return seconds


def _whole(units: dict[str | None, int], expected: str) -> Callable[[object], int]:
    """A parser of whole numbers ≥ 1: an int, or digits with one of ``units`` in a string."""
    pattern = re.compile(r"^\s*(\d+)\s*(" + "|".join(u for u in units if u) + r")?\s*$")

    def parse(value: object) -> int:
        if isinstance(value, str) and (match := pattern.match(value)):
            value = int(match[1]) * units[match[2] or None]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _Bad(expected)
        return value

    return parse


def _io_threads(value: object) -> int | None:
    """Either "auto" (None: one thread per core, at most 4) or a count from 0 (no threads)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 64:
        raise _Bad('expected "auto" or a whole number from 0 (no I/O threads) to 64')
    return value


def _mode(required: int) -> Callable[[object], int]:
    """A parser of permission modes (0o644, "0644", "0o644") that must include ``required``."""

    def parse(value: object) -> int:
        if isinstance(value, str) and (match := _MODE.match(value.strip())):
            value = int(match[1], 8)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
            raise _Bad('expected an octal mode such as 0o644 or "0644" (TOML 644 is decimal)')
        if value & required != required:
            raise _Bad(f"expected a mode that includes {required:#o} for the owner")
        return value

    return parse


def _bool(value: object) -> bool:
    """A boolean, or one of 1/0, true/false, yes/no, on/off (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLS:
        return _BOOLS[value.strip().lower()]
    raise _Bad("expected true or false (also 1/0, yes/no, on/off)")


def _choice(*options: str, upper: bool = False) -> Callable[[object], str]:
    """A parser of one of ``options``, case-insensitive, stored in the options' case."""

    def parse(value: object) -> str:
        text = value.strip().lower() if isinstance(value, str) else None
        if text not in options:
            raise _Bad("expected one of " + ", ".join(o.upper() if upper else o for o in options))
        return text.upper() if upper else text

    return parse


def _path(value: object) -> Path:
    """A non-empty path (``~`` expanded, otherwise kept as given)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise _Bad("expected a non-empty path")
    return Path(value).expanduser()


def _index_url(value: object) -> str:
    """A PostgreSQL URL (``postgresql://user@host:port/dbname``)."""
    if not isinstance(value, str) or not value.startswith(("postgresql://", "postgres://")):
        raise _Bad("expected a PostgreSQL URL such as postgresql://docwatch@db-host:5432/docwatch")
    parts = urlsplit(value)
    if not parts.hostname and "host=" not in parts.query or not parts.path.strip("/"):
        raise _Bad("expected postgresql://user@host[:port]/dbname (a host and a database)")
    return value


def redact_url(url: str) -> str:
    """A URL without its password (for messages and logs: credentials are never shown)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _label(value: object) -> str:
    """A non-empty run label without control characters."""
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise _Bad("expected a non-empty label without control characters")
    return value


_LEVELS = ("debug", "info", "warning", "error")
_SIZE_EXPECTED = 'expected a byte count such as 268435456 or "256MiB" (units KiB, MiB, GiB)'

#: key -> (parser, default); ``db`` and ``docs_root`` default to paths under ``data_root``.
_FIELDS: dict[str, tuple[Callable[[object], object], object]] = {
    "data_root": (_path, Path("data")),
    "db": (_path, None),
    "docs_root": (_path, None),
    "run_id": (_label, None),
    "link": (_bool, False),
    "settle_seconds": (_duration, 2.0),
    "pair_window": (_duration, 600.0),
    "reconcile_interval": (_positive_duration, 600.0),
    "observer": (_choice("inotify", "polling"), "inotify"),
    "poll_interval": (_positive_duration, 2.0),
    "batch_max_files": (_whole({None: 1}, "expected a whole number of at least 1"), 2000),
    "batch_max_delay": (_duration, 0.0),
    "io_threads": (_io_threads, None),
    "log_level": (_choice(*_LEVELS, upper=True), "INFO"),
    "log_format": (_choice("auto", "human", "journal", "json"), "auto"),
    "file_mode": (_mode(0o400), 0o644),
    "dir_mode": (_mode(0o700), 0o755),
    "prompt_copy": (_bool, True),
    "max_file_bytes": (_whole(_BYTES, _SIZE_EXPECTED), 256 << 20),
    "dagster_home": (_path, None),
    "dagster_python": (_path, None),
    "index_url": (_index_url, None),
    "instance_name": (_label, None),
}


def _show(value: object) -> str:
    """Render a value as in TOML (near enough), for messages."""
    return json.dumps(value, ensure_ascii=False, default=str)


def _unknown(name: str, known: list[str], origin: str) -> str:
    """The message for an unknown key, with a suggestion when one is close."""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{name} (from {origin}): unknown key{hint}"


class _Layers:
    """Accumulates parsed values, their sources and every problem found."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.sources: dict[str, str] = {}
        self.problems: list[str] = []
        self.folders = {stage: dict(kinds) for stage, kinds in DEFAULT_FOLDERS.items()}

    def set(self, key: str, raw: object, origin: str) -> None:
        """Parse one value; record it, or record why it is wrong."""
        try:
            self.values[key] = _FIELDS[key][0](raw)
            self.sources[key] = origin
        except _Bad as bad:
            shown = redact_url(raw) if key == "index_url" and isinstance(raw, str) else raw
            self.problems.append(f"{key} = {_show(shown)} (from {origin}): {bad}")

    def file(self, path: Path) -> None:
        """Apply a TOML file."""
        table = _read_toml(path, self.problems)
        for key, raw in table.items():
            if key == "folders":
                self.set_folders(raw, str(path))
            elif key in _FIELDS:
                self.set(key, raw, str(path))
            else:
                self.problems.append(_unknown(key, [*_FIELDS, "folders"], str(path)))

    def set_folders(self, table: object, origin: str) -> None:
        """Apply a ``[folders.<stage>]`` table; omitted stages and kinds keep their default."""
        if not isinstance(table, dict):
            self.problems.append(
                f"folders (from {origin}): expected tables such as [folders.draft]"
            )
            return
        for stage, kinds in table.items():
            if stage not in STAGES:
                known = [f"folders.{s}" for s in STAGES]
                self.problems.append(_unknown(f"folders.{stage}", known, origin))
            elif not isinstance(kinds, dict):
                self.problems.append(f"folders.{stage} (from {origin}): expected a table")
            else:
                for kind, raw in kinds.items():
                    self.set_kind(stage, kind, raw, origin)

    def set_kind(self, stage: str, kind: str, raw: object, origin: str) -> None:
        """Apply the folder list of one stage and kind."""
        key = f"folders.{stage}.{kind}"
        if kind not in KINDS:
            known = [f"folders.{stage}.{k}" for k in KINDS]
            self.problems.append(_unknown(key, known, origin))
            return
        try:
            self.folders[stage][kind] = _folder_list(raw)
            self.sources[key] = origin
        except _Bad as bad:
            self.problems.append(f"{key} = {_show(raw)} (from {origin}): {bad}")

    def env(self, env: Mapping[str, str]) -> None:
        """Apply ``DOCWATCH_<KEY>`` variables; unknown ``DOCWATCH_*`` names are problems."""
        names = {ENV_PREFIX + key.upper(): key for key in _FIELDS}
        for name, raw in sorted(env.items()):
            if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
                continue
            if name not in names:
                self.problems.append(_unknown(name, [*names, CONFIG_ENV], "environment"))
            elif raw != "":
                self.set(names[name], raw, f"env {name}")

    def flags(self, flags: Mapping[str, object]) -> None:
        """Apply flags; None means not given, and keys that are not settings are ignored."""
        for key, raw in flags.items():
            if raw is not None and key in _FIELDS:
                self.set(key, raw, "flag --" + key.replace("_", "-"))

    def check_folders(self) -> None:
        """A folder may serve only one stage and kind."""
        seen: dict[str, str] = {}
        for role in folder_roles(self.folders):
            where = f"folders.{role.stage}.{role.kind}"
            if seen.setdefault(role.folder, where) != where:
                origin = self.sources.get(where, "default")
                first = (
                    f"{seen[role.folder]} (from {self.sources.get(seen[role.folder], 'default')})"
                )
                self.problems.append(
                    f'{where} (from {origin}): "{role.folder}" is already listed in {first}'
                )


def _folder_list(raw: object) -> tuple[str, ...]:
    """A folder or list of folders, each relative to data_root, without ``..``."""
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise _Bad("expected a folder or a list of folders")
    folders = []
    for item in items:
        path = PurePosixPath(item.strip())
        if path.is_absolute() or ".." in path.parts or not path.parts or "\0" in item:
            raise _Bad(f'"{item}" must be a relative path under data_root, without ".."')
        folders.append(path.as_posix())
    return tuple(folders)


def _read_toml(path: Path, problems: list[str]) -> dict[str, object]:
    """The parsed file, or {} after recording why it cannot be read."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        problems.append(f"config file {path}: cannot be read ({exc.strerror})")
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"config file {path}: invalid TOML: {exc}")
    except UnicodeDecodeError as exc:
        problems.append(f"config file {path}: invalid TOML: not UTF-8 (byte {exc.start})")
    return {}


def load_config(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> Config:
    """Layer defaults, the TOML file (or ``$DOCWATCH_CONFIG``), ``env`` and ``flags``."""
    env = os.environ if env is None else env
    layers = _Layers()
    if config_file is None and env.get(CONFIG_ENV):
        config_file = Path(env[CONFIG_ENV])
    if config_file is not None:
        layers.file(Path(config_file))
    layers.env(env)
    layers.flags(flags or {})
    layers.check_folders()
    if layers.problems:
        raise ConfigError(layers.problems)
    return _build(layers)


def _build(layers: _Layers) -> Config:
    """The Config from validated layers, defaults filled in."""
    values = {key: layers.values.get(key, default) for key, (_, default) in _FIELDS.items()}
    data_root = values["data_root"]
    assert isinstance(data_root, Path)
    values["db"] = values["db"] or data_root / "db" / "documents.sqlite"
    values["docs_root"] = values["docs_root"] or data_root / "docs"
    values["instance_name"] = values["instance_name"] or socket.gethostname() or "local"
    keys = [*_FIELDS, *(f"folders.{stage}.{kind}" for stage in STAGES for kind in KINDS)]
    sources = {key: layers.sources.get(key, "default") for key in keys}
    return Config(**values, folders=layers.folders, sources=sources)  # type: ignore[arg-type]


def require_data_root(cfg: Config) -> None:
    """A data root that does not exist is a configuration error, never a new empty index."""
    root = cfg.data_root
    if not root.is_dir():
        why = "is not a directory" if root.exists() else "does not exist"
        raise ConfigError(
            [
                f"data_root = {_show(str(root))} (from {cfg.sources.get('data_root', 'default')}): "
                f"{why}; check the path (nothing was created)"
            ]
        )

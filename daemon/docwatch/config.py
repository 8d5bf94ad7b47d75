"""Configuration: defaults → TOML file → ``DOCWATCH_*`` environment → command-line flags.

Every value given in any layer is validated (even one a later layer overrides) and all problems
are raised together as one :class:`ConfigError`.  Relative paths are relative to the current
directory; ``db`` and ``docs_root`` default to ``<data_root>/db/documents.sqlite`` and
``<data_root>/docs`` only when not given.  Folders are set in the TOML file only and are relative
to ``data_root``.  An empty ``DOCWATCH_*`` variable counts as not given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from docwatch import configvalues as parse
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
    close_wait_seconds: float
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
        return parse.redact_url(self.index_url) if self.index_url else str(self.db)


_LEVELS = ("debug", "info", "warning", "error")
_SIZE_EXPECTED = 'expected a byte count such as 268435456 or "256MiB" (units KiB, MiB, GiB)'

#: key -> (parser, default); ``db`` and ``docs_root`` default to paths under ``data_root``.
_FIELDS: dict[str, tuple[Callable[[object], object], object]] = {
    "data_root": (parse.path, Path("data")),
    "db": (parse.path, None),
    "docs_root": (parse.path, None),
    "run_id": (parse.label, None),
    "link": (parse.boolean, False),
    "settle_seconds": (parse.duration, 2.0),
    # How long a raw seen created waits for its close (a lost close event, else): a writer
    # holding a raw file open this long is not the pipeline's.
    "close_wait_seconds": (parse.duration, 60.0),
    "pair_window": (parse.duration, 600.0),
    "reconcile_interval": (parse.positive_duration, 600.0),
    "observer": (parse.choice("inotify", "polling"), "inotify"),
    "poll_interval": (parse.positive_duration, 2.0),
    "batch_max_files": (parse.whole({None: 1}, "expected a whole number of at least 1"), 2000),
    "batch_max_delay": (parse.duration, 0.0),
    "io_threads": (parse.io_threads, None),
    "log_level": (parse.choice(*_LEVELS, upper=True), "INFO"),
    "log_format": (parse.choice("auto", "human", "journal", "json"), "auto"),
    "file_mode": (parse.mode(0o400), 0o644),
    "dir_mode": (parse.mode(0o700), 0o755),
    "prompt_copy": (parse.boolean, True),
    "max_file_bytes": (parse.whole(parse.BYTES, _SIZE_EXPECTED), 256 << 20),
    "dagster_home": (parse.path, None),
    "dagster_python": (parse.path, None),
    "index_url": (parse.index_url, None),
    "instance_name": (parse.label, None),
}


def _show(value: object) -> str:
    """Render a value as in TOML (near enough), for messages."""
    return json.dumps(value, ensure_ascii=False, default=str)


def _unknown(name: str, known: list[str], origin: str) -> str:
    """The message for an unknown key, with a suggestion when one is close."""
    import difflib  # here, not at the top: every command's start would pay for it

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
        except parse.Bad as bad:
            shown = parse.redact_url(raw) if key == "index_url" and isinstance(raw, str) else raw
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
            self.folders[stage][kind] = parse.folder_list(raw)
            self.sources[key] = origin
        except parse.Bad as bad:
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


def _read_toml(path: Path, problems: list[str]) -> dict[str, object]:
    """The parsed file, or {} after recording why it cannot be read."""
    import tomllib  # here: a command given no config file does not pay for it

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


def _host_name() -> str:
    """The host's name: uname's nodename, which is what gethostname(2) returns, without
    importing ``socket`` (4 ms of every command's start) where there is a uname."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


def _build(layers: _Layers) -> Config:
    """The Config from validated layers, defaults filled in."""
    values = {key: layers.values.get(key, default) for key, (_, default) in _FIELDS.items()}
    data_root = values["data_root"]
    assert isinstance(data_root, Path)
    values["db"] = values["db"] or data_root / "db" / "documents.sqlite"
    values["docs_root"] = values["docs_root"] or data_root / "docs"
    values["instance_name"] = values["instance_name"] or _host_name() or "local"
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

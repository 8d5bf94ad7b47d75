"""Configuration layering, parsing and error reporting (daemon.config)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from docwatch.config import Config, ConfigError, load_config
from docwatch.core.layout import DEFAULT_FOLDERS
from hypothesis import given
from hypothesis import strategies as st

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"


def write(tmp_path: Path, text: str, name: str = "docwatch.toml") -> Path:
    """Write a config file and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(**kwargs: object) -> list[str]:
    """The problems load_config reports (an isolated environment unless ``env`` is given)."""
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)  # type: ignore[arg-type]
    return info.value.problems


def settings(config: Config) -> dict[str, object]:
    """Every field but ``sources``."""
    values = dataclasses.asdict(config)
    del values["sources"]
    return values


def test_defaults() -> None:
    config = load_config(env={})
    assert config.data_root == Path("data")
    assert config.db == Path("data/db/documents.sqlite")
    assert config.docs_root == Path("data/docs")
    assert config.run_id is None and config.link is False and config.prompt_copy is True
    assert config.folders == DEFAULT_FOLDERS
    assert (config.settle_seconds, config.pair_window, config.reconcile_interval) == (2, 600, 600)
    assert config.close_wait_seconds == 60
    assert (config.observer, config.poll_interval) == ("inotify", 2.0)
    assert (config.batch_max_files, config.batch_max_delay) == (2000, 0.0)
    assert (config.log_level, config.log_format) == ("INFO", "auto")
    assert (config.file_mode, config.dir_mode) == (0o644, 0o755)
    assert config.max_file_bytes == 256 * 1024 * 1024
    assert config.dagster_home is None and config.dagster_python is None
    assert set(config.sources.values()) == {"default"}
    assert "folders.essay.raw" in config.sources


def test_defaults_do_not_share_folder_dicts() -> None:
    load_config(env={}).folders["draft"]["raw"] = ("elsewhere",)
    assert load_config(env={}).folders == DEFAULT_FOLDERS


def test_db_and_docs_root_follow_data_root_unless_given(tmp_path: Path) -> None:
    config = load_config(env={}, flags={"data_root": tmp_path})
    assert config.db == tmp_path / "db" / "documents.sqlite"
    assert config.docs_root == tmp_path / "docs"
    path = write(tmp_path, 'data_root = "/srv/data"\ndb = "index.sqlite"\n')
    config = load_config(path, env={})
    assert config.db == Path("index.sqlite")  # relative to the current directory
    assert config.docs_root == Path("/srv/data/docs")


def test_layers_override_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, 'pair_window = "1m"\nlink = true\nlog_level = "debug"\nrun_id = "f"\n')
    env = {"DOCWATCH_PAIR_WINDOW": "2m", "DOCWATCH_LINK": "off", "DOCWATCH_RUN_ID": "e"}
    flags = {"pair_window": "3m", "run_id": None, "link": None, "observer": "polling"}
    config = load_config(path, env=env, flags=flags)
    assert config.pair_window == 180 and config.sources["pair_window"] == "flag --pair-window"
    assert config.link is False and config.sources["link"] == "env DOCWATCH_LINK"
    assert config.run_id == "e" and config.sources["run_id"] == "env DOCWATCH_RUN_ID"
    assert config.log_level == "DEBUG" and config.sources["log_level"] == str(path)
    assert config.observer == "polling" and config.sources["observer"] == "flag --observer"
    assert config.sources["settle_seconds"] == "default"


def test_file_overrides_defaults_and_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "batch_max_files = 10\n")
    assert load_config(path, env={}).batch_max_files == 10
    assert load_config(path, env={"DOCWATCH_BATCH_MAX_FILES": "20"}).batch_max_files == 20


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "settle_seconds = 7\n")
    config = load_config(env={"DOCWATCH_CONFIG": str(path)})
    assert config.settle_seconds == 7 and config.sources["settle_seconds"] == str(path)
    other = write(tmp_path, "settle_seconds = 9\n", "other.toml")
    assert load_config(other, env={"DOCWATCH_CONFIG": str(path)}).settle_seconds == 9


def test_empty_env_value_is_not_given() -> None:
    assert load_config(env={"DOCWATCH_RUN_ID": "", "DOCWATCH_CONFIG": ""}).run_id is None


def test_unrelated_flags_are_ignored() -> None:
    assert load_config(env={}, flags={"dry_run": True, "json": False}) == load_config(env={})


def test_close_wait_seconds_is_a_duration_from_file_or_environment(tmp_path: Path) -> None:
    path = write(tmp_path, 'close_wait_seconds = "10m"\n')
    assert load_config(path, env={}).close_wait_seconds == 600
    env = {"DOCWATCH_CLOSE_WAIT_SECONDS": "90"}
    assert load_config(path, env=env).close_wait_seconds == 90
    assert problems_of(env={"DOCWATCH_CLOSE_WAIT_SECONDS": "soon"})[0].startswith(
        'close_wait_seconds = "soon" (from env DOCWATCH_CLOSE_WAIT_SECONDS): expected a duration'
    )


def test_io_threads_is_auto_or_a_count_from_zero(tmp_path: Path) -> None:
    assert load_config(env={}).io_threads is None  # auto: one a core, at most 4
    path = write(tmp_path, "io_threads = 0\n")
    assert load_config(path, env={}).io_threads == 0
    assert load_config(path, env={"DOCWATCH_IO_THREADS": "3"}).io_threads == 3
    assert load_config(path, env={"DOCWATCH_IO_THREADS": "Auto"}).io_threads is None
    bad = write(tmp_path, "io_threads = -1\n", name="bad.toml")
    problems = problems_of(config_file=bad, env={})
    assert problems == [
        f'io_threads = -1 (from {bad}): expected "auto" or a whole number from 0 '
        "(no I/O threads) to 64"
    ]
    for raw in ("many", "65", "true", "1.5"):
        assert problems_of(env={"DOCWATCH_IO_THREADS": raw})[0].startswith(
            f'io_threads = "{raw}" (from env DOCWATCH_IO_THREADS): expected "auto"'
        )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, 'pair_window = "ten"\nbatch_max_files = 0\nobserver = "fanotify"\n')
    problems = problems_of(config_file=path, env={"DOCWATCH_LINK": "maybe"})
    assert len(problems) == 4
    assert problems[0] == (
        f'pair_window = "ten" (from {path}): expected a duration such as 600, "10m", "90s"'
        " (units ms, s, m, h)"
    )
    assert problems[1].startswith(f"batch_max_files = 0 (from {path}): ")
    assert problems[2].startswith(f'observer = "fanotify" (from {path}): expected one of ')
    assert problems[3].startswith('link = "maybe" (from env DOCWATCH_LINK): expected true')


def test_error_message_lists_every_problem(tmp_path: Path) -> None:
    path = write(tmp_path, 'log_level = "loud"\nfile_mode = "rw"\ndir_mode = 0o600\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={}, flags={"poll_interval": 0})
    text = str(info.value)
    assert text.startswith("invalid configuration (4 problems):")
    for key in ("log_level", "file_mode", "dir_mode", "poll_interval = 0 (from flag --poll-"):
        assert key in text


def test_overridden_bad_values_are_still_reported(tmp_path: Path) -> None:
    path = write(tmp_path, 'pair_window = "soon"\n')
    assert len(problems_of(config_file=path, flags={"pair_window": 5})) == 1


def test_unknown_keys_with_suggestions(tmp_path: Path) -> None:
    path = write(
        tmp_path, 'pair_windw = 5\ncolour = "red"\n[folders.drafts]\n[folders.essay]\nrow = []\n'
    )
    problems = problems_of(config_file=path, env={"DOCWATCH_SETTLE_SECOND": "1"})
    assert problems == [
        f"pair_windw (from {path}): unknown key; did you mean pair_window?",
        f"colour (from {path}): unknown key",
        f"folders.drafts (from {path}): unknown key; did you mean folders.draft?",
        f"folders.essay.row (from {path}): unknown key; did you mean folders.essay.raw?",
        "DOCWATCH_SETTLE_SECOND (from environment): unknown key;"
        " did you mean DOCWATCH_SETTLE_SECONDS?",
    ]


def test_bad_toml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'link = true\npair_window = "10m\n')
    (problem,) = problems_of(config_file=path)
    assert problem.startswith(f"config file {path}: invalid TOML: ") and "line 2" in problem


def test_missing_or_unreadable_config_file(tmp_path: Path) -> None:
    (problem,) = problems_of(config_file=tmp_path / "nope.toml")
    assert problem.startswith(f"config file {tmp_path / 'nope.toml'}: cannot be read")
    assert len(problems_of(env={"DOCWATCH_CONFIG": str(tmp_path)})) == 1
    (tmp_path / "latin1.toml").write_bytes(b'run_id = "caf\xe9"\n')
    assert "not UTF-8" in problems_of(config_file=tmp_path / "latin1.toml")[0]


def test_folders(tmp_path: Path) -> None:
    text = '[folders.draft]\nraw = "gen/raw/"\nprompt = []\n'
    text += '[folders.evaluation]\nparsed = ["a", "./b"]\n'
    config = load_config(write(tmp_path, text), env={})
    assert config.folders["draft"] == {
        **DEFAULT_FOLDERS["draft"],
        "raw": ("gen/raw",),
        "prompt": (),
    }
    assert config.folders["evaluation"]["parsed"] == ("a", "b")
    assert config.folders["essay"] == DEFAULT_FOLDERS["essay"]
    assert config.sources["folders.draft.raw"] == str(tmp_path / "docwatch.toml")
    assert config.sources["folders.draft.parsed"] == "default"


@pytest.mark.parametrize(
    "value", ['"/abs/raw"', '"../up"', '["ok", "a/../b"]', "3", '[""]', '["a", 1]', "{}"]
)
def test_bad_folders(tmp_path: Path, value: str) -> None:
    (problem,) = problems_of(config_file=write(tmp_path, f"[folders.essay]\nraw = {value}\n"))
    assert problem.startswith("folders.essay.raw = ")


def test_folder_serves_one_role(tmp_path: Path) -> None:
    path = write(tmp_path, '[folders.essay]\nraw = ["3_generation/draft_responses_raw"]\n')
    (problem,) = problems_of(config_file=path)
    assert "already listed in folders.draft.raw" in problem


def test_folders_must_be_tables(tmp_path: Path) -> None:
    assert len(problems_of(config_file=write(tmp_path, 'folders = "x"\n'))) == 1
    assert len(problems_of(config_file=write(tmp_path, "[folders]\ndraft = 1\n"))) == 1


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(600, 600), (0.5, 0.5), ("600", 600), ("500ms", 0.5), ("90s", 90), ("10m", 600)]
    + [("2h", 7200), ("1.5h", 5400), (" 3 m ", 180), ("0", 0), (".25s", 0.25)],
)
def test_durations(raw: object, seconds: float) -> None:
    assert load_config(env={}, flags={"pair_window": raw}).pair_window == seconds


@pytest.mark.parametrize("raw", ["ten", "-1", -1, "10 minutes", "1d", True, "", "nan", 1e999])
def test_bad_durations(raw: object) -> None:
    (problem,) = problems_of(flags={"settle_seconds": raw})
    assert problem.startswith("settle_seconds = ")


@given(st.integers(0, 10**6), st.sampled_from([("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]))
def test_duration_round_trip(number: int, unit: tuple[str, float]) -> None:
    config = load_config(env={"DOCWATCH_BATCH_MAX_DELAY": f"{number}{unit[0]}"})
    assert config.batch_max_delay == pytest.approx(number * unit[1])


@pytest.mark.parametrize(
    ("raw", "mode"), [(0o640, 0o640), ("0640", 0o640), ("0o600", 0o600), ("644", 0o644)]
)
def test_modes(raw: object, mode: int) -> None:
    assert load_config(env={}, flags={"file_mode": raw}).file_mode == mode


@pytest.mark.parametrize("raw", [644, "0o1644", "0x1a4", "rw-r--r--", "0o044", True])
def test_bad_modes(raw: object) -> None:
    (problem,) = problems_of(flags={"file_mode": raw})
    assert problem.startswith("file_mode = ")


@given(st.integers(0o700, 0o777), st.sampled_from(["", "0", "0o"]))
def test_mode_round_trip(mode: int, prefix: str) -> None:
    config = load_config(env={"DOCWATCH_DIR_MODE": f"{prefix}{mode:o}"})
    assert config.dir_mode == mode


@given(
    st.sampled_from(["1", "true", "yes", "on", "0", "false", "no", "off"]).flatmap(
        lambda word: st.tuples(
            st.just(word),
            st.lists(st.booleans(), min_size=len(word), max_size=len(word)),
        )
    )
)
def test_bool_words_any_case(case: tuple[str, list[bool]]) -> None:
    word, upper = case
    raw = "".join(c.upper() if u else c for c, u in zip(word, upper, strict=True))
    expected = word in {"1", "true", "yes", "on"}
    assert load_config(env={"DOCWATCH_PROMPT_COPY": raw}).prompt_copy is expected


def test_other_values() -> None:
    env = {"DOCWATCH_MAX_FILE_BYTES": "2MiB", "DOCWATCH_LOG_FORMAT": "JSON"}
    env |= {"DOCWATCH_BATCH_MAX_FILES": "7", "DOCWATCH_DAGSTER_HOME": "/opt/dagster"}
    config = load_config(env=env, flags={"log_level": "warning"})
    assert (config.max_file_bytes, config.log_format, config.batch_max_files) == (
        2 << 20,
        "json",
        7,
    )
    assert config.dagster_home == Path("/opt/dagster") and config.log_level == "WARNING"
    assert load_config(env={}, flags={"data_root": "~/d"}).data_root == Path.home() / "d"


def test_dagster_python(tmp_path: Path) -> None:
    """The pipeline venv's Python for the run-records reader: file, env, ``~``; validated."""
    path = write(tmp_path, 'dagster_python = "/srv/pipeline/.venv/bin/python"\n')
    config = load_config(path, env={})
    assert config.dagster_python == Path("/srv/pipeline/.venv/bin/python")
    assert config.sources["dagster_python"] == str(path)
    env = {"DOCWATCH_DAGSTER_PYTHON": "~/venv/bin/python"}
    config = load_config(path, env=env)
    assert config.dagster_python == Path.home() / "venv" / "bin" / "python"
    assert config.sources["dagster_python"] == "env DOCWATCH_DAGSTER_PYTHON"
    assert load_config(env={"DOCWATCH_DAGSTER_PYTHON": ""}).dagster_python is None
    problems = problems_of(config_file=write(tmp_path, "dagster_python = 3\n", "bad.toml"))
    assert problems == [
        f"dagster_python = 3 (from {tmp_path / 'bad.toml'}): expected a non-empty path"
    ]
    assert (
        "did you mean DOCWATCH_DAGSTER_PYTHON?"
        in problems_of(env={"DOCWATCH_DAGSTER_PYTON": "/x"})[0]
    )


def test_example_file_loads_to_defaults() -> None:
    config = load_config(EXAMPLE, env={})
    assert settings(config) == settings(load_config(env={}))


def test_example_file_documents_every_key_with_its_default(tmp_path: Path) -> None:
    """Uncommenting every setting of the example changes only the keys without a default value."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    setting = re.compile(r"^# (\w+ = .*|\[folders\.\w+\])$")
    uncommented = [m[1] if (m := setting.match(line)) else line for line in lines]
    config = load_config(write(tmp_path, "\n".join(uncommented)), env={})
    assert config.run_id == "watch" and config.dagster_home == Path("/opt/dagster/home")
    assert config.dagster_python == Path("/opt/pipeline/.venv/bin/python")
    assert config.index_url == "postgresql://docwatch@db-host:5432/docwatch"
    expected = settings(load_config(env={})) | {
        "run_id": "watch",
        "dagster_home": config.dagster_home,
        "dagster_python": config.dagster_python,
        "index_url": config.index_url,
        "instance_name": "pipeline-host-1",  # the default is the host name
    }
    assert settings(config) == expected
    from_example = {key for key, source in config.sources.items() if source != "default"}
    assert from_example == set(config.sources)

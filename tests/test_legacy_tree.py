"""The synthetic legacy tree generator (examples/legacy_tree.py), on real files."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
import legacy_tree as lt  # noqa: E402

VERSIONED = re.compile(r"^(.+)_v(\d+)\.txt$")
SCENARIOS = {
    "draft_normal",
    "draft_parse_fail",
    "draft_remat",
    "essay_llm",
    "essay_truncated",
    "essay_copy",
    "evaluation_of_essay",
    "evaluation_of_draft",
    "evaluation_crashed",
    "evaluation_undecodable",
    "missing_from_tables",
    "legacy_unversioned",
    "links_one_phase",
    "unicode_task_id",
}
QUIRKS = {"ds_store", "notes", "editor_backup", "empty_dir", "leftover_tmp", "undecodable"}
COLUMNS = {
    "draft_generation_tasks.csv": "draft_task_id, combo_id, draft_template, generation_model, "
    "generation_model_name",
    "essay_generation_tasks.csv": "essay_task_id, combo_id, draft_template, essay_template, "
    "generation_model, generation_model_name, draft_task_id",
    "evaluation_tasks.csv": "evaluation_task_id, document_id, stage, origin, file_path, combo_id, "
    "draft_template, essay_template, generation_model, generation_model_name, draft_task_id, "
    "essay_task_id, source_asset, source_dir, evaluation_template, evaluation_model, "
    "evaluation_model_name, parser",
}


def snapshot(root: Path, mtimes: bool = True) -> dict[str, tuple[bytes, int | None]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns if mtimes else None)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def mtime(root: Path, rel: str | None) -> int:
    return (root / rel).stat().st_mtime_ns


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    return root, lt.build_tree(root, combos=6, seed=1)


def test_build_tree_is_deterministic(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert lt.build_tree(a, combos=3, seed=7) == lt.build_tree(b, combos=3, seed=7)
    assert snapshot(a) == snapshot(b)
    lt.build_tree(c, combos=3, seed=8)
    assert snapshot(a) != snapshot(c)


def test_summary_matches_the_files(tree):
    root, s = tree
    snap = snapshot(root)
    counts: dict[str, int] = {}
    for rel in snap:
        counts[rel.rsplit("/", 1)[0]] = counts.get(rel.rsplit("/", 1)[0], 0) + 1
    assert counts == s.files and len(snap) == s.total_files
    for a in s.expected:
        for rel in (a.prompt, a.raw, a.parsed):
            assert rel is None or rel in snap
        assert a.status == "ok" if a.parsed else a.status in ("parse_error", "gen_error")
    assert s.attempts == {st: sum(a.stage == st for a in s.expected) for st in s.attempts}
    assert s.raw_only["draft"] >= 1 and s.raw_only["essay"] >= 1 and s.raw_only["evaluation"] == 0
    assert sorted(p.name for p in (root / "1_raw").iterdir()) == sorted(
        p.name for p in (EXAMPLES / "1_raw").glob("*.csv")
    )
    for p in (EXAMPLES / "1_raw").glob("*.csv"):
        assert (root / "1_raw" / p.name).read_bytes() == p.read_bytes()


def test_every_scenario_and_quirk_is_present(tree):
    root, s = tree
    assert {k for k, v in s.scenarios.items() if v} >= SCENARIOS
    assert {k for k, v in s.quirks.items() if v} >= QUIRKS
    assert all((root / rel).is_file() for k, v in s.quirks.items() if k != "empty_dir" for rel in v)
    (empty,) = s.quirks["empty_dir"]
    assert (root / empty).is_dir() and not any((root / empty).iterdir())
    (bad,) = s.quirks["undecodable"]
    with pytest.raises(UnicodeDecodeError):
        (root / bad).read_bytes().decode("utf-8")


def versions(root: Path, stage: str, kind: str, task: str) -> list[int]:
    folder = root / lt.FOLDERS[stage][kind]
    found = [VERSIONED.match(p.name) for p in folder.iterdir()]
    return sorted(int(m[2]) for m in found if m and m[1] == task)


def test_retries_and_rematerialisation_follow_the_pipeline(tree):
    root, s = tree
    task = s.scenarios["draft_parse_fail"][0]
    got = [versions(root, "draft", k, task) for k in ("prompt", "raw", "parsed")]
    assert got == [[1, 2], [1, 2], [1]]
    task = s.scenarios["essay_truncated"][0]
    got = [versions(root, "essay", k, task) for k in ("prompt", "raw", "parsed")]
    assert got == [[1, 2], [1, 2], [1]]
    task = s.scenarios["draft_remat"][0]
    got = [versions(root, "draft", k, task) for k in ("prompt", "raw", "parsed")]
    assert got == [[1, 2], [1, 2], [1, 2]]
    later = mtime(root, f"{lt.FOLDERS['draft']['prompt']}/{task}_v2.txt")
    essays = read_csv(root / "2_tasks/essay_generation_tasks.csv")
    built_on = {task} | {r["essay_task_id"] for r in essays if r["draft_task_id"] == task}
    evals = read_csv(root / "2_tasks/evaluation_tasks.csv")
    built_on |= {r["evaluation_task_id"] for r in evals if r["document_id"] in built_on}
    assert len(built_on) > 2
    for a in s.expected:  # the re-materialisation comes after everything built on v1
        if a.task_id in built_on - {task}:
            assert mtime(root, a.parsed or a.raw) < later


def test_contents_follow_the_writers(tree):
    root, s = tree
    drafts = {r["draft_task_id"]: r for r in read_csv(root / "2_tasks/draft_generation_tasks.csv")}
    essays = {r["essay_task_id"]: r for r in read_csv(root / "2_tasks/essay_generation_tasks.csv")}
    seen = set()
    for a in s.expected:
        parsed = (root / a.parsed).read_bytes() if a.parsed else None
        raw = (root / a.raw).read_bytes() if a.raw else None
        if a.stage == "draft" and raw and parsed:
            parser = lt.DRAFT_PARSER[a.task_id.split("__")[1]]
            assert (parsed == raw) == (not parser), a.task_id
            assert parsed.strip() in raw
            seen.add(f"draft parser={bool(parser)}")
        if a.stage == "essay" and a.task_id in s.scenarios["essay_copy"]:
            assert raw is None and (root / a.prompt).read_bytes() == b"COPY_MODE: no prompt needed"
            draft = essays[a.task_id]["draft_task_id"]
            assert parsed == (root / lt.FOLDERS["draft"]["parsed"] / f"{draft}_v1.txt").read_bytes()
            seen.add("copy")
        if a.stage == "essay" and raw and parsed:
            assert raw == parsed
            seen.add("llm essay")
        if a.stage == "evaluation":
            assert raw is None and re.search(rb"\nSCORE: \d\n$", parsed)
        sizes = {"prompt": (3000, 12100), "raw": (1900, 15100)}
        for kind, (lo, hi) in sizes.items():
            rel = getattr(a, kind)
            if rel and a.task_id not in s.scenarios["essay_copy"]:
                assert lo <= (root / rel).stat().st_size <= hi, rel
    assert seen == {"draft parser=True", "draft parser=False", "copy", "llm essay"}
    assert not (root / lt.FOLDERS["evaluation"]["raw"]).exists()
    missing = s.scenarios["missing_from_tables"]
    assert missing and all(t not in drafts and t in s.tasks["draft"] for t in missing)
    assert all(t in drafts for t in s.scenarios["draft_normal"] if t not in missing)


def test_mtimes_follow_each_materialisation(tree):
    root, s = tree
    spans = []
    for a in s.expected:
        times = [mtime(root, rel) for rel in (a.prompt, a.raw, a.parsed) if rel]
        assert times == sorted(times) and len(set(times)) == len(times), a
        spans.append((times[0], times[-1], a.task_id))
    spans.sort()
    assert any(b[0] < a[1] and a[2] != b[2] for a, b in zip(spans, spans[1:], strict=False))
    ok = {}
    for a in s.expected:
        if a.parsed and a.task_id not in ok:
            ok[a.task_id] = mtime(root, a.parsed)
    essays = read_csv(root / "2_tasks/essay_generation_tasks.csv")
    parent = {r["essay_task_id"]: r["draft_task_id"] for r in essays}
    for a in s.expected:  # an essay/evaluation is prompted after its parent's parsed file
        if a.stage != "draft":
            up = parent[a.task_id] if a.stage == "essay" else a.task_id.rsplit("__", 2)[0]
            assert mtime(root, a.prompt) > ok[up]


def test_file_names_are_versioned_except_the_quirks(tree):
    root, s = tree
    quirky = {rel for v in s.quirks.values() for rel in v}
    legacy = {a.parsed for a in s.expected if not VERSIONED.match(a.parsed or "x_v1.txt")}
    assert len(legacy) == len(s.scenarios["legacy_unversioned"])
    for top in ("3_generation", "4_evaluation"):
        for p in (root / top).rglob("*"):
            rel = p.relative_to(root).as_posix()
            if p.is_file() and rel not in quirky | legacy:
                assert VERSIONED.match(p.name), rel


def test_task_tables_have_the_legacy_columns_and_ids(tree):
    root, s = tree
    models = {r["id"] for r in read_csv(EXAMPLES / "1_raw/llm_models.csv")}
    for name, cols in COLUMNS.items():
        text = (root / "2_tasks" / name).read_text()
        assert text.splitlines()[0] == cols.replace(", ", ",")
        for row in csv.DictReader(text.splitlines()):
            task = next(iter(row.values()))
            head, template, model = task.rsplit("__", 2)
            assert model in models
            if name == "evaluation_tasks.csv":
                assert head == row["document_id"]
                assert row["stage"] == ("essay2p" if row["essay_task_id"] else "essay1p")
            else:
                assert re.fullmatch(r"combo_v1_[0-9a-f]{12}|combo_\d{3}", head)


def test_no_quirks_gives_a_clean_tree(tmp_path):
    s = lt.build_tree(tmp_path, combos=2, seed=3, quirks=False)
    assert not s.quirks
    names = [p.name for p in tmp_path.rglob("*") if p.is_file() and "_tasks" not in str(p)]
    assert all(VERSIONED.match(n) or n.endswith(".csv") for n in names)
    assert {"draft_parse_fail", "essay_truncated", "draft_remat", "essay_copy"} <= set(s.scenarios)


def test_run_pipeline_writes_the_same_tree(tmp_path):
    built, live = tmp_path / "built", tmp_path / "live"
    expected = lt.build_tree(built, combos=3, seed=5)
    got = lt.run_pipeline(live, combos=3, seed=5, writers=4, raw_write_delay=0.002)
    assert got.complete and got.expected == expected.expected
    assert snapshot(live, mtimes=False) == snapshot(built, mtimes=False)
    assert sorted(p.relative_to(live) for p in live.rglob("*") if p.is_dir()) == sorted(
        p.relative_to(built) for p in built.rglob("*") if p.is_dir()
    )
    tmps = {p.relative_to(live).as_posix() for p in live.rglob("*.tmp")}
    assert tmps == set(got.quirks["leftover_tmp"])
    for a in got.expected:  # real mtimes, still in the pipeline's order
        times = [mtime(live, rel) for rel in (a.prompt, a.raw, a.parsed) if rel]
        assert times == sorted(times)
    essays = read_csv(live / "2_tasks/essay_generation_tasks.csv")
    for row in essays:
        draft = live / lt.FOLDERS["draft"]["parsed"] / f"{row['draft_task_id']}_v1.txt"
        prompt = live / lt.FOLDERS["essay"]["prompt"] / f"{row['essay_task_id']}_v1.txt"
        assert prompt.stat().st_mtime_ns >= draft.stat().st_mtime_ns


def test_raw_writes_are_visible_half_written(tmp_path):
    path, data = tmp_path / "raw" / "x_v1.txt", b"a" * 5000 + b"b" * 5000
    writer = threading.Thread(target=lt.write_slowly, args=(path, data, 0.5))
    writer.start()
    deadline = time.monotonic() + 5
    while not (path.exists() and path.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert path.read_bytes() == data[:5000]
    writer.join()
    assert path.read_bytes() == data


def test_run_pipeline_stops_when_asked(tmp_path):
    stop = threading.Event()
    stop.set()
    s = lt.run_pipeline(tmp_path, combos=2, seed=0, writers=2, stop=stop)
    assert not s.complete
    assert sum(1 for p in tmp_path.rglob("*") if p.is_file()) < s.total_files


def test_files_target_scales_the_tree(tmp_path):
    s = lt.build_tree(tmp_path, files_target=20_000, seed=2)
    assert 18_000 <= s.total_files <= 22_000
    assert sum(1 for p in tmp_path.rglob("*") if p.is_file()) == s.total_files
    assert len(s.scenarios["draft_parse_fail"]) > 20 and len(s.scenarios["essay_truncated"]) > 20


def test_cli(tmp_path):
    script = str(EXAMPLES / "legacy_tree.py")
    for args in ([str(tmp_path / "b"), "--combos", "2"], ["live", str(tmp_path / "l")]):
        out = subprocess.run([sys.executable, script, *args, "--seed", "1"], capture_output=True)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["total_files"] > 100

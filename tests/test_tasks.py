"""Task/template tables: real sample templates, id fallbacks, and half-written CSVs."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from docwatch.core.tasks import TaskTables, parse_bool, parse_table, task_info
from docwatch.ingest.tables import TaskTableReader
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

SAMPLE_RAW = Path("/work/shared/legacy-sample/1_raw")
COMBO = "combo_v1_1f3a9c2b7d4e"
DRAFT_ID = f"{COMBO}__deliberate-rolling-thread-v2__sonnet-4"
ESSAY_ID = f"{COMBO}__synthesis-theme-narrative-v19__sonnet-4"
EVAL_ID = f"{ESSAY_ID}__novelty__sonnet-4"

DRAFT_HEADER = "draft_task_id,combo_id,draft_template,generation_model,generation_model_name"
ESSAY_HEADER = (
    "essay_task_id,combo_id,draft_template,essay_template,generation_model,"
    "generation_model_name,draft_task_id"
)
EVAL_HEADER = (
    "evaluation_task_id,document_id,stage,origin,file_path,combo_id,draft_template,"
    "essay_template,generation_model,generation_model_name,draft_task_id,essay_task_id,"
    "source_asset,source_dir,evaluation_template,evaluation_model,evaluation_model_name,parser"
)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def lines(*rows: str) -> str:
    return "".join(row + "\n" for row in rows)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A data root holding copies of the real sample templates."""
    shutil.copytree(SAMPLE_RAW, tmp_path / "1_raw")
    return tmp_path


@pytest.fixture
def sample_tables(root: Path) -> TaskTables:
    reader = TaskTableReader(root, retries=0)
    tables = reader.load()
    assert reader.problems == []
    return tables


def test_real_templates_give_parsers_and_generators(sample_tables: TaskTables) -> None:
    draft = task_info(sample_tables, "draft", DRAFT_ID)
    assert (draft.template_id, draft.model_id) == ("deliberate-rolling-thread-v2", "sonnet-4")
    assert draft.parser == "essay_idea_last"
    assert draft.provider == "anthropic"
    assert not draft.from_tables and draft.parent_stage is None and draft.parent_task_id is None

    assert task_info(sample_tables, "draft", f"{COMBO}__creative-synthesis-v2__x").parser is None
    assert task_info(sample_tables, "draft", f"{COMBO}__creative-synthesis-v7__x").parser == (
        "essay_block"
    )

    copy = task_info(sample_tables, "essay", f"{COMBO}__creative-synthesis-v7__sonnet-4")
    assert copy.generator == "copy" and copy.parser is None
    assert (copy.parent_stage, copy.parent_task_id) == ("draft", None)
    assert task_info(sample_tables, "essay", ESSAY_ID).generator == "llm"

    evaluation = task_info(sample_tables, "evaluation", EVAL_ID)
    assert evaluation.parser == "in_last_line"  # from parsing_strategy
    assert (evaluation.template_id, evaluation.model_id) == ("novelty", "sonnet-4")
    assert evaluation.parent_task_id == ESSAY_ID
    # Not in any task table, but its template is only an essay template.
    assert evaluation.parent_stage == "essay"


def test_evaluation_fallback_parent_stage_from_task_tables(root: Path) -> None:
    write(root / "2_tasks/draft_generation_tasks.csv", lines(DRAFT_HEADER, f"{DRAFT_ID},,,,"))
    tables = TaskTableReader(root, retries=0).load()
    info = task_info(tables, "evaluation", f"{DRAFT_ID}__novelty__sonnet-4")
    assert (info.parent_stage, info.parent_task_id) == ("draft", DRAFT_ID)
    assert not info.from_tables
    # creative-synthesis-v7 is both a draft and an essay template: undecidable.
    both = task_info(tables, "evaluation", f"{COMBO}__creative-synthesis-v7__m__novelty__m")
    assert (both.parent_stage, both.parent_task_id) == (None, f"{COMBO}__creative-synthesis-v7__m")


def test_rows_win_over_ids(root: Path) -> None:
    write(
        root / "2_tasks/draft_generation_tasks.csv",
        lines(DRAFT_HEADER, f"d1,{COMBO},creative-synthesis-v7,gemini_25_pro,Gemini"),
    )
    write(
        root / "2_tasks/essay_generation_tasks.csv",
        lines(
            ESSAY_HEADER, f"e1,{COMBO},creative-synthesis-v7,creative-synthesis-v7,sonnet-4,S,d1"
        ),
    )
    row = "a,b,c,d,e,f,g,h,i,j,k"  # origin … source_dir
    write(
        root / "2_tasks/evaluation_tasks.csv",
        lines(
            EVAL_HEADER,
            f"v1,d1,essay1p,{row},novelty,sonnet-4,Sonnet,",
            f"v2,e1,essay2p,{row},novelty,sonnet-4,Sonnet,complex",
            f"v3,e1,ESSAY2P,{row},,,,",
        ),
    )
    tables = TaskTableReader(root, retries=0).load()
    draft = task_info(tables, "draft", "d1")
    assert (draft.template_id, draft.model_id, draft.parser) == (
        "creative-synthesis-v7",
        "gemini_25_pro",
        "essay_block",
    )
    assert draft.provider == "google" and draft.from_tables

    essay = task_info(tables, "essay", "e1")
    assert (essay.parent_stage, essay.parent_task_id, essay.generator) == ("draft", "d1", "copy")

    v1 = task_info(tables, "evaluation", "v1")
    assert (v1.parent_stage, v1.parent_task_id, v1.parser) == ("draft", "d1", "in_last_line")
    v2 = task_info(tables, "evaluation", "v2")
    assert (v2.parent_stage, v2.parent_task_id, v2.parser) == ("essay", "e1", "complex")
    v3 = task_info(tables, "evaluation", "v3")  # empty cells: id fallback, then "unknown"
    assert (v3.template_id, v3.model_id, v3.parent_stage) == ("v3", "unknown", "essay")


def test_missing_columns_fall_back_to_ids(root: Path) -> None:
    essay_id = f"{COMBO}__creative-synthesis-v7__sonnet-4"
    eval_id = f"{DRAFT_ID}__novelty__sonnet-4"
    write(root / "2_tasks/draft_generation_tasks.csv", lines("draft_task_id", DRAFT_ID))
    write(
        root / "2_tasks/essay_generation_tasks.csv",
        lines("essay_task_id,essay_template", f"{essay_id},creative-synthesis-v7"),
    )
    write(
        root / "2_tasks/evaluation_tasks.csv",
        lines(
            "evaluation_task_id,document_id,evaluation_template", f"{eval_id},{DRAFT_ID},novelty"
        ),
    )
    tables = TaskTableReader(root, retries=0).load()
    draft = task_info(tables, "draft", DRAFT_ID)
    assert draft.from_tables and draft.template_id == "deliberate-rolling-thread-v2"
    assert draft.model_id == "sonnet-4" and draft.parser == "essay_idea_last"
    essay = task_info(tables, "essay", essay_id)
    assert essay.from_tables and essay.parent_task_id is None and essay.generator == "copy"
    evaluation = task_info(tables, "evaluation", eval_id)
    assert (evaluation.parent_stage, evaluation.parent_task_id) == ("draft", DRAFT_ID)
    assert evaluation.parser == "in_last_line" and evaluation.model_id == "sonnet-4"


def test_ids_that_do_not_split() -> None:
    for stage in ("draft", "essay", "evaluation"):
        info = task_info(TaskTables.EMPTY, stage, "legacy_task")
        assert (info.template_id, info.model_id) == ("legacy_task", "unknown")
        assert info.parent_task_id is None and not info.from_tables
    with pytest.raises(ValueError):
        task_info(TaskTables.EMPTY, "links", "x")


def test_empty_tables() -> None:
    assert TaskTables.EMPTY == TaskTables.empty() == TaskTables()
    assert TaskTables.EMPTY.draft_tasks == {} and TaskTables.EMPTY.models == {}


def test_missing_files_are_empty_tables_without_problems(tmp_path: Path) -> None:
    reader = TaskTableReader(tmp_path / "nowhere", retries=0)
    assert reader.load() == TaskTables.EMPTY
    assert reader.problems == []
    assert not reader.changed()


def test_bom_whitespace_extra_columns_and_mixed_case_booleans(tmp_path: Path) -> None:
    text = lines(
        " template_id , active ,parser,extra",
        " a , True , essay_block ,x,surplus",
        "b,true,,",
        "c,False,,",
        "d,false,,",
        "",
    )
    write(tmp_path / "1_raw/draft_templates.csv", b"\xef\xbb\xbf" + text.encode())
    reader = TaskTableReader(tmp_path, retries=0)
    templates = reader.load().draft_templates
    assert reader.problems == []
    assert templates["a"] == {
        "template_id": "a",
        "active": "True",
        "parser": "essay_block",
        "extra": "x",
    }
    assert [parse_bool(templates[k]["active"]) for k in "abcd"] == [True, True, False, False]
    assert parse_bool("") is None and parse_bool(None) is None and parse_bool("maybe") is None


def test_truncated_table_keeps_last_good_copy(tmp_path: Path, caplog) -> None:
    path = tmp_path / "2_tasks/draft_generation_tasks.csv"
    good = lines(
        DRAFT_HEADER, f"{DRAFT_ID},{COMBO},deliberate-rolling-thread-v2,sonnet-4,S", "d2,c,t,m,M"
    )
    write(path, good)
    reader = TaskTableReader(tmp_path, retries=1, retry_delay=0)
    first = reader.load().draft_tasks
    assert set(first) == {DRAFT_ID, "d2"}

    write(path, good + "d3,c,t")  # pandas caught mid-row
    assert reader.changed()
    again = reader.load().draft_tasks
    assert again == first
    assert len(reader.problems) == 1
    assert str(path) in reader.problems[0]
    assert "truncated" in reader.problems[0]
    assert "keeping the last good copy (2 rows)" in reader.problems[0]
    assert str(path) in caplog.text
    assert not reader.changed()  # retried on the next change, not on every poll

    write(path, good + "d3,c,t,m,M\n")  # the write finished
    assert reader.changed()
    assert set(reader.load().draft_tasks) == {DRAFT_ID, "d2", "d3"}
    assert reader.problems == []


def test_the_digest_names_the_bytes_parsed_and_a_peek_agrees_without_parsing(
    tmp_path: Path,
) -> None:
    """``load().digest`` is what facts are stored with and ``peek_digest`` what a re-scan
    compares them to: equal for the same bytes, different after any change, and a kept
    good copy keeps its own digest while the file on disk is bad."""
    path = tmp_path / "2_tasks/draft_generation_tasks.csv"
    reader = TaskTableReader(tmp_path, retries=0)
    empty = reader.load().digest
    assert empty == reader.peek_digest()
    good = lines(DRAFT_HEADER, "d1,c,t,m,M")
    write(path, good)
    first = reader.load().digest
    assert first == reader.peek_digest() != empty
    write(path, good.replace("m,M", "n,M"))  # one cell, same size
    assert reader.load().digest == reader.peek_digest() != first
    write(path, good)
    assert reader.load().digest == first  # the bytes, not when they were written

    write(path, good + "d3,c,t")  # pandas caught mid-row: the good copy is kept
    kept = reader.load()
    assert set(kept.draft_tasks) == {"d1"} and reader.problems
    assert kept.digest == first != reader.peek_digest()

    write(tmp_path / "1_raw/llm_models.csv", lines("id,provider", "m,p"))
    write(path, good)
    assert reader.load().digest == reader.peek_digest() != first  # every file counts


def test_truncated_without_previous_copy_is_empty_and_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "2_tasks/evaluation_tasks.csv", "evaluation_task_id,document_id,st")
    reader = TaskTableReader(tmp_path, retries=0)
    assert reader.load().evaluation_tasks == {}
    assert reader.problems == [
        f"{path}: truncated (no final newline); keeping the last good copy (0 rows) "
        "and retrying on the next change"
    ]


def test_every_prefix_of_a_task_table_is_rejected_or_a_true_subset(tmp_path: Path) -> None:
    """Whatever byte pandas was at, the reader never yields a row that was not written."""
    good = lines(
        EVAL_HEADER,
        f'v1,d1,essay1p,o,"data/x, y.txt",{COMBO},t,,m,M,d1,,s,dir,novelty,sonnet-4,Sonnet,',
        f"v2,e1,essay2p,o,p,{COMBO},t,e,m,M,d1,e1,s,dir,novelty,sonnet-4,Sonnet,complex",
    ).encode()
    path = write(tmp_path / "2_tasks/evaluation_tasks.csv", good)
    reader = TaskTableReader(tmp_path, retries=0)
    full = reader.load().evaluation_tasks
    # The quoted comma in file_path (a column docwatch drops) keeps the later cells in place.
    assert set(full) == {"v1", "v2"} and full["v1"]["evaluation_template"] == "novelty"
    for cut in range(len(good)):
        write(path, good)
        reader.load()
        write(path, good[:cut])
        got = reader.load().evaluation_tasks
        if reader.problems:
            assert got == full, cut
        else:
            assert good[cut - 1 : cut] == b"\n", cut
            assert all(full[k] == row for k, row in got.items()), cut


def test_undecodable_and_unreadable_files_are_problems(tmp_path: Path) -> None:
    bad = write(tmp_path / "1_raw/llm_models.csv", b"id,provider\nm,\xff\xfe\n")
    folder = tmp_path / "1_raw/essay_templates.csv"
    folder.mkdir(parents=True)
    reader = TaskTableReader(tmp_path, retries=0)
    tables = reader.load()
    assert tables.models == {} and tables.essay_templates == {}
    assert len(reader.problems) == 2
    assert any(str(bad) in p and "not UTF-8" in p for p in reader.problems)
    assert any(str(folder) in p and "IsADirectoryError" in p for p in reader.problems)


def test_permission_denied_is_a_problem() -> None:
    """As a real other user (root reads anything): a table it may not read is a problem with
    the path and the reason, and the other tables still load."""
    root = Path(tempfile.mkdtemp(prefix="docwatch-perm-"))
    try:
        root.chmod(0o755)
        path = write(root / "1_raw/llm_models.csv", lines("id,provider", "m,p"))
        write(root / "1_raw/draft_templates.csv", lines("template_id,parser", "t,"))
        for folder in (root / "1_raw",):
            folder.chmod(0o755)
        path.chmod(0o600)  # root's only
        (root / "1_raw/draft_templates.csv").chmod(0o644)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: nobody, no groups
            try:
                os.close(read_fd)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                reader = TaskTableReader(root, retries=3, sleep=lambda s: None)
                tables = reader.load()
                out = {
                    "problems": reader.problems,
                    "models": tables.models,
                    "templates": sorted(tables.draft_templates),
                }
                os.write(write_fd, json.dumps(out).encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            got = json.loads(pipe.read() or b"{}")
        os.waitpid(pid, 0)
    finally:
        shutil.rmtree(root)
    assert got["models"] == {} and got["templates"] == ["t"]
    assert got["problems"] == [
        f"{path}: unreadable (PermissionError: Permission denied); keeping the last good copy "
        "(0 rows) and retrying on the next change"
    ]


def test_missing_key_column_and_empty_file(tmp_path: Path) -> None:
    write(tmp_path / "1_raw/llm_models.csv", lines("model,provider", "m,p"))
    write(tmp_path / "1_raw/draft_templates.csv", "")
    reader = TaskTableReader(tmp_path, retries=0)
    reader.load()
    assert sorted(p.split(": ", 1)[1].split(";")[0] for p in reader.problems) == [
        "empty file (no header)",
        "no 'id' column in the header",
    ]


def test_bad_reads_are_retried_then_succeed(tmp_path: Path) -> None:
    """pandas rewrites in place: the first read sees the file cut short; the writer finishes it
    while the reader waits (its sleep), and the retry reads the whole table."""
    path = write(tmp_path / "2_tasks/draft_generation_tasks.csv", DRAFT_HEADER + "\nd1,c,t,m")
    sleeps: list[float] = []

    def writer_finishes_while_we_wait(seconds: float) -> None:
        sleeps.append(seconds)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(",M\nd2,c,t,m,M\n")

    reader = TaskTableReader(
        tmp_path, retries=3, retry_delay=0.5, sleep=writer_finishes_while_we_wait
    )
    assert set(reader.load().draft_tasks) == {"d1", "d2"}
    assert reader.problems == [] and sleeps == [0.5]


def test_persistently_bad_file_uses_all_retries(tmp_path: Path) -> None:
    write(tmp_path / "2_tasks/essay_generation_tasks.csv", ESSAY_HEADER + "\ne1,c")
    sleeps: list[float] = []
    reader = TaskTableReader(tmp_path, retries=2, retry_delay=0.1, sleep=sleeps.append)
    reader.load()
    assert sleeps == [0.1, 0.1] and len(reader.problems) == 1


def test_changed_tracks_size_mtime_inode_and_presence(tmp_path: Path) -> None:
    reader = TaskTableReader(tmp_path, retries=0)
    assert reader.changed()  # never loaded
    reader.load()
    assert not reader.changed()
    path = write(tmp_path / "1_raw/llm_models.csv", lines("id,provider", "m,p"))
    assert reader.changed()  # appeared
    reader.load()
    assert not reader.changed()
    st_before = path.stat()
    os.utime(path, ns=(st_before.st_atime_ns, st_before.st_mtime_ns + 1))
    assert reader.changed()  # same size, new mtime
    reader.load()
    path.unlink()
    assert reader.changed()  # vanished
    assert reader.load().models == {}


def test_load_never_modifies_the_tables(root: Path) -> None:
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (root / "1_raw").iterdir()}
    TaskTableReader(root, retries=0).load()
    assert before == {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (root / "1_raw").iterdir()}


def test_parse_table_keeps_only_the_columns_asked_for_and_shares_equal_cells() -> None:
    text = lines("id,a,b,c", "x,same,drop,1", "y,same,drop,2")
    rows = parse_table(text, "id", columns=("a", "c"))
    assert rows == {
        "x": {"id": "x", "a": "same", "c": "1"},
        "y": {"id": "y", "a": "same", "c": "2"},
    }
    assert rows["x"]["a"] is rows["y"]["a"]
    assert parse_table(text, "id") == {
        "x": {"id": "x", "a": "same", "b": "drop", "c": "1"},
        "y": {"id": "y", "a": "same", "b": "drop", "c": "2"},
    }


def test_parse_table_tolerates_stray_quotes_in_hand_edited_files() -> None:
    rows = parse_table(lines("template_id,description", 'a,say "hi"', 'b,"ok"x'), "template_id")
    assert isinstance(rows, dict) and set(rows) == {"a", "b"}
    assert parse_table('template_id,d\na,"open', "template_id") == "truncated inside a quoted field"


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task_id=st.text(), stage=st.sampled_from(["draft", "essay", "evaluation"]))
def test_task_info_never_raises(sample_tables: TaskTables, task_id: str, stage: str) -> None:
    for tables in (TaskTables.EMPTY, sample_tables):
        info = task_info(tables, stage, task_id)
        assert info.template_id and info.model_id
        assert info.stage == stage and info.task_id == task_id and not info.from_tables


_part = st.text(st.characters(codec="utf-8", exclude_characters="_"), min_size=1)


@given(head=_part, template=_part, model=_part)
def test_fallback_recovers_template_and_model_from_ids(
    head: str, template: str, model: str
) -> None:
    task_id = f"{head}__{template}__{model}"
    for stage in ("draft", "essay", "evaluation"):
        info = task_info(TaskTables.EMPTY, stage, task_id)
        assert (info.template_id, info.model_id) == (template, model)
    assert task_info(TaskTables.EMPTY, "evaluation", task_id).parent_task_id == head


@given(st.text(alphabet='ab,"\r\n\u2028\x0c', max_size=40))
def test_table_lines_split_as_a_file_opened_with_newline_empty(text: str) -> None:
    """The line splitter that replaced io.StringIO (4 bytes a character) splits alike."""
    from docwatch.core.tasks import split_lines

    assert list(split_lines(text)) == list(io.StringIO(text, newline=""))


@given(
    st.text(alphabet='ab,"\r\n\u2028\xe9\U0001f600', max_size=40),
    st.booleans(),
    st.integers(min_value=1, max_value=9),
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=200)
@example("a\r\nb", False, 2)  # a \r\n across two chunks: random draws do not always make one
def test_a_table_file_read_a_chunk_at_a_time_splits_and_hashes_as_read_whole(
    tmp_path: Path, text: str, bom: bool, chunk: int
) -> None:
    """Chunks end anywhere: inside a character, between \\r and \\n, inside the BOM."""
    import hashlib

    from docwatch.ingest.tables import _FileLines

    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        read = _FileLines(fd, chunk=chunk)
        assert list(read) == list(io.StringIO(text, newline=""))
    finally:
        os.close(fd)
    assert read.sha256.hexdigest() == hashlib.sha256(data).hexdigest()
    assert read.size == len(data)

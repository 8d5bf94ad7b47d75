"""What the legacy task and template tables say about a task (pure: parsing and lookup).

``ingest/tables.py`` reads the files; here they are plain text and dicts.  Task facts are
sticky (SPEC "Identity and links"): a task the tables no longer list keeps the facts it was
indexed with (``effective_info``).
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from docwatch.core.layout import TASKS_DIR, TEMPLATES_DIR, split_task_id
from docwatch.core.model import TaskInfo


class Cells(tuple):
    """One row of a task table: the cells kept, read by column name like a read-only dict.

    A task table has hundreds of thousands of rows; a tuple holds them in a third of a
    dict's memory.  Each parse makes a subclass that knows its columns (``of_columns``).
    """

    __slots__ = ()
    columns: ClassVar[tuple[str, ...]] = ()
    at: ClassVar[dict[str, int]] = {}

    @staticmethod
    def of_columns(columns: Iterable[str]) -> type[Cells]:
        names = tuple(columns)
        at = {name: i for i, name in enumerate(names)}
        return type("Cells", (Cells,), {"__slots__": (), "columns": names, "at": at})

    def get(self, column: str, default: str | None = None) -> str | None:
        i = self.at.get(column)
        return default if i is None else tuple.__getitem__(self, i)

    def __getitem__(self, column):  # type: ignore[override]
        if isinstance(column, str):
            return tuple.__getitem__(self, self.at[column])
        return tuple.__getitem__(self, column)

    def keys(self) -> tuple[str, ...]:
        return self.columns

    def items(self) -> Iterator[tuple[str, str]]:
        return zip(self.columns, tuple.__iter__(self), strict=True)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, dict):
            return dict(self.items()) == other
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = tuple.__hash__


Row = dict[str, str] | Cells
#: Key → row; held in memory (a dict) or, for the big task tables, on disk (``ingest.tablestore``).
Table = Mapping[str, Row]


class TableBuilder(Protocol):
    """Receives a table's rows as they are parsed and gives the finished table."""

    def put(self, key: str, cells: list[str]) -> None: ...

    def table(self) -> Table: ...


#: Makes an empty builder for rows of these columns (the kept ones, in file order).
BuilderFactory = Callable[[tuple[str, ...]], TableBuilder]


class DictBuilder:
    """A table held in memory as ``Cells``; equal cells share one string."""

    def __init__(self, columns: tuple[str, ...]) -> None:
        self.row_of = Cells.of_columns(columns)
        self.rows: dict[str, Row] = {}
        self.shared: dict[str, str] = {}

    def put(self, key: str, cells: list[str]) -> None:
        share = self.shared.setdefault
        self.rows[key] = self.row_of(share(cell, cell) for cell in cells)

    def table(self) -> Table:
        return self.rows


#: Model id used when neither the tables nor the task id name one.
UNKNOWN = "unknown"

#: TaskTables field → (folder under the data root, file name, key column).
TABLE_FILES: dict[str, tuple[str, str, str]] = {
    "draft_tasks": (TASKS_DIR, "draft_generation_tasks.csv", "draft_task_id"),
    "essay_tasks": (TASKS_DIR, "essay_generation_tasks.csv", "essay_task_id"),
    "evaluation_tasks": (TASKS_DIR, "evaluation_tasks.csv", "evaluation_task_id"),
    "draft_templates": (TEMPLATES_DIR, "draft_templates.csv", "template_id"),
    "essay_templates": (TEMPLATES_DIR, "essay_templates.csv", "template_id"),
    "evaluation_templates": (TEMPLATES_DIR, "evaluation_templates.csv", "template_id"),
    "models": (TEMPLATES_DIR, "llm_models.csv", "id"),
}
#: The cells ``task_info`` reads from each task table; the others are dropped when parsed.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "draft_tasks": ("draft_template", "generation_model"),
    "essay_tasks": ("essay_template", "generation_model", "draft_task_id"),
    "evaluation_tasks": (
        "evaluation_template",
        "evaluation_model",
        "stage",
        "document_id",
        "essay_task_id",
        "draft_task_id",
        "parser",
    ),
}


@dataclass(frozen=True)
class TaskTables:
    """Every table as plain dicts (key → row of stripped strings); treat as read-only.

    ``digest`` names the bytes they were parsed from (``tables_digest``): facts planned with
    these tables are stored with it, so a later check can skip every task planned with the
    same bytes.  Empty when unknown (built by hand).
    """

    draft_tasks: Table = field(default_factory=dict)
    essay_tasks: Table = field(default_factory=dict)
    evaluation_tasks: Table = field(default_factory=dict)
    draft_templates: Table = field(default_factory=dict)
    essay_templates: Table = field(default_factory=dict)
    evaluation_templates: Table = field(default_factory=dict)
    models: Table = field(default_factory=dict)
    digest: str = field(default="", compare=False)

    EMPTY: ClassVar[TaskTables]

    @classmethod
    def empty(cls) -> TaskTables:
        return cls()


TaskTables.EMPTY = TaskTables()


def tables_digest(file_digests: dict[str, str | None]) -> str:
    """One name for a set of table files, from each file's sha256 (None: the file is missing)."""
    h = hashlib.sha256()
    for name in sorted(file_digests):
        h.update(f"{name}={file_digests[name] or '-'}\n".encode())
    return h.hexdigest()[:32]


def parse_bool(value: str | None) -> bool | None:
    """``True``/``true``/``1``/``yes`` → True, the opposites → False, anything else → None."""
    text = (value or "").strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    return None


def _cell(row: Row | None, column: str) -> str:
    return ((row or {}).get(column) or "").strip()


def _document_stage(tables: TaskTables, document_id: str, stage_cell: str = "") -> str | None:
    """Stage of an evaluated document: the ``stage`` column, else the tables, else its template.

    The template test only decides when the document's template is in exactly one of the
    draft and essay template tables (some template ids, e.g. copy-mode ones, are in both).
    """
    stage = stage_cell.lower()
    if stage in ("essay2p", "essay"):
        return "essay"
    if stage in ("essay1p", "draft"):
        return "draft"
    if document_id in tables.essay_tasks:
        return "essay"
    if document_id in tables.draft_tasks:
        return "draft"
    _, template, _ = split_task_id(document_id)
    if template is not None:
        in_essay, in_draft = template in tables.essay_templates, template in tables.draft_templates
        if in_essay != in_draft:
            return "essay" if in_essay else "draft"
    return None


def task_info(tables: TaskTables, stage: str, task_id: str) -> TaskInfo:
    """What the tables say about one task; every field the tables lack comes from the id.

    A table cell that is empty falls back to the id's part; an id that does not split into
    ``<head>__<template>__<model>`` uses the task id as template and ``"unknown"`` as model.
    """
    head, id_template, id_model = split_task_id(task_id)
    parent_stage: str | None = None
    parent_task_id: str | None = None
    parser: str | None = None
    generator: str | None = None
    if stage == "draft":
        row = tables.draft_tasks.get(task_id)
        template = _cell(row, "draft_template") or id_template or task_id or UNKNOWN
        model = _cell(row, "generation_model") or id_model or UNKNOWN
        parser = _cell(tables.draft_templates.get(template), "parser") or None
    elif stage == "essay":
        row = tables.essay_tasks.get(task_id)
        template = _cell(row, "essay_template") or id_template or task_id or UNKNOWN
        model = _cell(row, "generation_model") or id_model or UNKNOWN
        parent_stage = "draft"
        # Without a row the parent is unknown: an essay id does not carry its draft template.
        parent_task_id = _cell(row, "draft_task_id") or None
        generator = _cell(tables.essay_templates.get(template), "generator").lower() or None
    elif stage == "evaluation":
        row = tables.evaluation_tasks.get(task_id)
        template = _cell(row, "evaluation_template") or id_template or task_id or UNKNOWN
        model = _cell(row, "evaluation_model") or id_model or UNKNOWN
        stage_cell = _cell(row, "stage")
        by_stage = {"essay2p": "essay_task_id", "essay1p": "draft_task_id"}.get(stage_cell.lower())
        parent_task_id = (
            _cell(row, "document_id")
            or (_cell(row, by_stage) if by_stage else "")
            or (head if id_template is not None else "")
            or None
        )
        if parent_task_id is not None:
            parent_stage = _document_stage(tables, parent_task_id, stage_cell)
        template_row = tables.evaluation_templates.get(template)
        parser = (
            _cell(row, "parser")
            or _cell(template_row, "parser")
            or _cell(template_row, "parsing_strategy")
            or None
        )
    else:
        raise ValueError(f"unknown stage {stage!r} (expected draft, essay or evaluation)")
    return TaskInfo(
        stage=stage,
        task_id=task_id,
        template_id=template,
        model_id=model,
        parser=parser,
        generator=generator,
        parent_stage=parent_stage,
        parent_task_id=parent_task_id,
        provider=_cell(tables.models.get(model), "provider") or None,
        from_tables=row is not None,
    )


def parse_table(
    text: str,
    key: str,
    *,
    needs_final_newline: bool = False,
    columns: Collection[str] | None = None,
    builder: BuilderFactory = DictBuilder,
) -> Table | str:
    """Rows of a CSV text keyed by ``key``, or why the text is not a complete table (pure).

    ``needs_final_newline`` is for pandas-written files, which always end with a newline, so
    a missing one means the last field was cut.  ``columns`` keeps only those cells of each
    row (a big task table is mostly paths and names no rule reads).  ``builder`` keeps the
    rows: in memory, equal cells sharing one string (memory grows with the rows a table has,
    not with its width), or on disk (``ingest.tablestore``: memory stays flat).
    """
    return parse_lines(
        lambda: split_lines(text),
        key,
        needs_final_newline=needs_final_newline,
        columns=columns,
        builder=builder,
    )


def parse_lines(
    lines: Callable[[], Iterable[str]],
    key: str,
    *,
    needs_final_newline: bool = False,
    columns: Collection[str] | None = None,
    builder: BuilderFactory = DictBuilder,
) -> Table | str:
    """``parse_table`` over the lines ``lines()`` gives, afresh for each pass (a file read a
    chunk at a time: the table is never held whole as text); ``builder`` keeps the rows."""
    last = [""]
    try:
        records = csv.reader(_keep_last(lines(), last), strict=True)
        rows = _parse_rows(records, key, columns, builder)
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            return "truncated inside a quoted field"
        try:  # hand-edited quirks (a quote inside a field): read leniently, as pandas does
            rows = _parse_rows(csv.reader(_keep_last(lines(), last)), key, columns, builder)
        except csv.Error as exc2:
            return f"malformed CSV ({exc2})"
    if not isinstance(rows, str) and needs_final_newline and not last[0].endswith(("\n", "\r")):
        return "truncated (no final newline)"
    return rows


def _keep_last(lines: Iterable[str], last: list[str]) -> Iterator[str]:
    for line in lines:
        last[0] = line
        yield line


#: A line and its ending, split as ``open(newline="")`` splits: at \n, \r or \r\n.
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def split_lines(text: str) -> Iterator[str]:
    """The lines of ``text`` one at a time (an ``io.StringIO`` holds a copy at 4 bytes per
    character: 4x the size of a big task table, at once)."""
    return (m.group() for m in _LINE.finditer(text))


def _parse_rows(
    records: Iterable[list[str]],
    key: str,
    columns: Collection[str] | None,
    builder: BuilderFactory,
) -> Table | str:
    """The rows of a CSV reader, streamed into a builder (never held at their full width)."""
    header: list[str] | None = None
    rows: TableBuilder | None = None
    last: list[str] | None = None
    for record in records:
        if not any(cell.strip() for cell in record):
            continue
        if header is None:
            header = [name.strip().lstrip("\ufeff").strip() for name in record]
            if key not in header:
                return f"no {key!r} column in the header"
            wanted = [
                (i, name)
                for i, name in enumerate(header)
                if name and (columns is None or name in columns or name == key)
            ]
            key_at = header.index(key)
            at = [i for i, _ in wanted]
            rows = builder(tuple(name for _, name in wanted))
            continue
        last = record
        cells = [cell.strip() for cell in record]
        task = cells[key_at] if key_at < len(cells) else ""
        if task:
            rows.put(task, [cells[i] if i < len(cells) else "" for i in at])
    if header is None or rows is None:
        return "empty file (no header)"
    if last is not None and len(last) < len(header):
        return f"truncated (last row has {len(last)} of {len(header)} fields)"
    return rows.table()


def effective_info(current: TaskInfo, stored: TaskInfo | None) -> TaskInfo:
    """The facts to plan with: the tables' when they list the task (or nothing was stored),
    else the stored ones, so rewriting the tables for a new experiment never rewrites the
    history of tasks from earlier ones."""
    if current.from_tables or stored is None:
        return current
    return stored

"""Task and template tables of the example project (``data/2_tasks``, ``data/1_raw``).

Column sets are the legacy pipeline's (LEGACY_PIPELINE.md, "Task tables"); tables are rewritten
whole and in place, like pandas ``to_csv``.  Task ids: drafts and essays
``<combo_id>__<template>__<model>``, evaluations ``<document_id>__<template>__<model>``.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent.parent / "1_raw"  # examples/1_raw
PARTITIONS = {"draft": "draft_tasks", "essay": "essay_tasks", "evaluation": "evaluation_tasks"}
_GEN = ["generation_model", "generation_model_name"]
COLUMNS = {
    "draft_generation_tasks.csv": ["draft_task_id", "combo_id", "draft_template", *_GEN],
    "essay_generation_tasks.csv": [
        "essay_task_id",
        "combo_id",
        "draft_template",
        "essay_template",
        *_GEN,
        "draft_task_id",
    ],
    "evaluation_tasks.csv": [
        "evaluation_task_id",
        "document_id",
        "stage",
        "origin",
        "file_path",
        "combo_id",
        "draft_template",
        "essay_template",
        *_GEN,
        "draft_task_id",
        "essay_task_id",
        "source_asset",
        "source_dir",
        "evaluation_template",
        "evaluation_model",
        "evaluation_model_name",
        "parser",
    ],
}


@dataclass(frozen=True)
class Draft:
    combo_id: str
    template: str
    model: str

    @property
    def task_id(self) -> str:
        return f"{self.combo_id}__{self.template}__{self.model}"


@dataclass(frozen=True)
class Essay:
    draft: Draft
    template: str
    model: str

    @property
    def task_id(self) -> str:
        return f"{self.draft.combo_id}__{self.template}__{self.model}"


@dataclass(frozen=True)
class Evaluation:
    target: Draft | Essay
    template: str
    model: str

    @property
    def task_id(self) -> str:
        return f"{self.target.task_id}__{self.template}__{self.model}"


def to_plain(task: Draft | Essay | Evaluation) -> dict:
    """A task as plain JSON (``from_plain`` inverts it): how the tests hand tasks to the
    pipeline's driver (``drive.py``), which runs in another venv."""
    return asdict(task)


def from_plain(d: dict) -> Draft | Essay | Evaluation:
    if "target" in d:
        return Evaluation(from_plain(d["target"]), d["template"], d["model"])
    if "draft" in d:
        return Essay(from_plain(d["draft"]), d["template"], d["model"])
    return Draft(d["combo_id"], d["template"], d["model"])


def _read(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    key = next(iter(rows[0])) if rows else ""
    return {r[key]: r for r in rows}


def model_names(data_root: Path) -> dict[str, str]:
    return {k: r.get("model", k) for k, r in _read(data_root / "1_raw" / "llm_models.csv").items()}


def template_row(data_root: Path, stage: str, template_id: str) -> dict[str, str]:
    table = _read(data_root / "1_raw" / f"{stage}_templates.csv")
    if template_id not in table:
        raise KeyError(f"template {template_id!r} is not in {stage}_templates.csv")
    return table[template_id]


def task_row(data_root: Path, stage: str, task_id: str) -> dict[str, str]:
    name = {
        "draft": "draft_generation_tasks.csv",
        "essay": "essay_generation_tasks.csv",
        "evaluation": "evaluation_tasks.csv",
    }[stage]
    table = _read(data_root / "2_tasks" / name)
    if task_id not in table:
        raise KeyError(f"task {task_id!r} is not in 2_tasks/{name}")
    return table[task_id]


def write_tables(
    data_root: Path, drafts: list[Draft], essays: list[Essay], evaluations: list[Evaluation]
) -> None:
    """Copy the template tables to ``1_raw`` and write the three task tables to ``2_tasks``."""
    raw = data_root / "1_raw"
    raw.mkdir(parents=True, exist_ok=True)
    for src in TEMPLATES.glob("*.csv"):
        shutil.copyfile(src, raw / src.name)
    names = model_names(data_root)
    rows: dict[str, list[dict[str, str]]] = {name: [] for name in COLUMNS}
    for d in drafts:
        rows["draft_generation_tasks.csv"].append(
            {
                "draft_task_id": d.task_id,
                "combo_id": d.combo_id,
                "draft_template": d.template,
                "generation_model": d.model,
                "generation_model_name": names.get(d.model, d.model),
            }
        )
    for e in essays:
        rows["essay_generation_tasks.csv"].append(
            {
                "essay_task_id": e.task_id,
                "combo_id": e.draft.combo_id,
                "draft_template": e.draft.template,
                "essay_template": e.template,
                "generation_model": e.model,
                "generation_model_name": names.get(e.model, e.model),
                "draft_task_id": e.draft.task_id,
            }
        )
    for v in evaluations:
        t = v.target
        draft = t.draft if isinstance(t, Essay) else t
        is_essay = isinstance(t, Essay)
        rows["evaluation_tasks.csv"].append(
            {
                "evaluation_task_id": v.task_id,
                "document_id": t.task_id,
                "stage": "essay2p" if is_essay else "essay1p",
                "origin": "example",
                "file_path": "",
                "combo_id": draft.combo_id,
                "draft_template": draft.template,
                "essay_template": t.template if is_essay else "",
                "generation_model": t.model,
                "generation_model_name": names.get(t.model, t.model),
                "draft_task_id": draft.task_id,
                "essay_task_id": t.task_id if is_essay else "",
                "source_asset": "essay_response" if is_essay else "draft_response",
                "source_dir": "essay_responses" if is_essay else "draft_responses",
                "evaluation_template": v.template,
                "evaluation_model": v.model,
                "evaluation_model_name": names.get(v.model, v.model),
                "parser": "in_last_line",
            }
        )
    tasks = data_root / "2_tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    for name, columns in COLUMNS.items():
        with (tasks / name).open("w", newline="", encoding="utf-8") as f:  # in place, like pandas
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows[name])


def register_partitions(
    instance, drafts: list[Draft], essays: list[Essay], evaluations: list[Evaluation]
) -> None:
    """Add every task id to its stage's dynamic partitions (one partition per task)."""
    for stage, items in (("draft", drafts), ("essay", essays), ("evaluation", evaluations)):
        if items:
            instance.add_dynamic_partitions(PARTITIONS[stage], [i.task_id for i in items])

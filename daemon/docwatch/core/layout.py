"""The legacy pipeline's folder layout and file names (pure: no I/O).

Facts from LEGACY_PIPELINE.md: which folders hold which kind of file for which stage,
and which names are pipeline output (``<task>_vN.txt``, unversioned ``<task>.txt``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

STAGES = ("draft", "essay", "evaluation")
KINDS = ("prompt", "raw", "parsed")

#: Default folders per stage and kind, relative to the data root.  Order matters only for
#: display; ``links_*`` are the older one-phase drafts (parsed-only, no raw).
DEFAULT_FOLDERS: dict[str, dict[str, tuple[str, ...]]] = {
    "draft": {
        "prompt": ("3_generation/draft_prompts", "3_generation/links_prompts"),
        "raw": ("3_generation/draft_responses_raw",),
        "parsed": ("3_generation/draft_responses", "3_generation/links_responses"),
    },
    "essay": {
        "prompt": ("3_generation/essay_prompts",),
        "raw": ("3_generation/essay_responses_raw",),
        "parsed": ("3_generation/essay_responses",),
    },
    "evaluation": {
        "prompt": ("4_evaluation/evaluation_prompts",),
        "raw": ("4_evaluation/evaluation_responses_raw",),
        "parsed": ("4_evaluation/evaluation_responses",),
    },
}

TASKS_DIR = "2_tasks"
TEMPLATES_DIR = "1_raw"

_VERSIONED = re.compile(r"^(?P<task_id>.+)_v(?P<n>\d+)\.txt$")


@dataclass(frozen=True)
class FolderRole:
    """What a watched folder holds: files of one kind for one stage."""

    stage: str
    kind: str
    folder: str  # relative to the data root, POSIX separators


@dataclass(frozen=True)
class ParsedName:
    """A pipeline output name: task id and version (0 = unversioned legacy file)."""

    task_id: str
    version: int


@functools.lru_cache(maxsize=8192)  # a name is parsed several times on its way through a batch
def parse_name(name: str) -> ParsedName | str:
    """Classify a file name; return a ParsedName, or the reason it is not pipeline output."""
    if name.endswith(".tmp"):
        return "in-flight temp file"
    if name.startswith("."):
        return "hidden file"
    if name.endswith("~"):
        return "editor backup"
    if not name.endswith(".txt"):
        return "not a .txt file"
    match = _VERSIONED.match(name)
    if match:
        return ParsedName(match["task_id"], int(match["n"]))
    task_id = name[: -len(".txt")]
    if not task_id:
        return "empty task id"
    return ParsedName(task_id, 0)


def folder_roles(folders: dict[str, dict[str, tuple[str, ...] | list[str]]]) -> list[FolderRole]:
    """Flatten a stage → kind → folders mapping into roles, in stage order."""
    roles = []
    for stage in STAGES:
        for kind in KINDS:
            for folder in folders.get(stage, {}).get(kind, ()):
                roles.append(FolderRole(stage, kind, folder.strip("/")))
    return roles


def split_task_id(task_id: str) -> tuple[str, str | None, str | None]:
    """Split ``<head>__<template>__<model>``; head is the combo id or the evaluated document id."""
    parts = task_id.rsplit("__", 2)
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    return task_id, None, None

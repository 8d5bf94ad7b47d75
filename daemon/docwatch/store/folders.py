"""A file operation whose folder may not exist yet: tried first, the folder made only when the
operation finds it missing, so code that runs every batch pays no ``mkdir`` that fails."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def made_if_missing(folder: Path, mode: int, op: Callable[..., T], *args: object) -> T:
    """``op(*args)``; when it raises ``FileNotFoundError``, ``folder`` (with its parents) is
    made with ``mode`` and ``op`` tried once more (a second failure is raised)."""
    try:
        return op(*args)
    except FileNotFoundError:
        folder.mkdir(parents=True, exist_ok=True, mode=mode)
        return op(*args)

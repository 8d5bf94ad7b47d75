"""How the legacy pipeline writes files: versioned text with temp+rename, raw side-writes in place.

* ``VersionedTextIOManager`` (prompts and parsed responses): ``<root>/<partition>_v<N>.txt``
  with N = the next free version of that partition; written to ``<name>.tmp`` and then
  ``os.replace``d (no fsync), exactly like the pipeline's IO manager.  Loading an input reads
  the partition's newest version.
* ``save_versioned_raw_text``: the raw side-write inside a response asset,
  ``Path(<root>/<task>_v<N>.txt).write_text(text)``: created empty, written, closed, in place.

Paths are relative to the working directory (``data/3_generation/...``), as the pipeline's.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import dagster as dg

_VERSION = re.compile(r"^(?P<task>.+)_v(?P<n>\d+)\.txt$")


def versions(root: Path, task_id: str) -> list[int]:
    """The versions of ``task_id`` present in ``root`` (``.tmp`` files are not versions)."""
    if not root.is_dir():
        return []
    found = []
    for entry in os.scandir(root):
        match = _VERSION.match(entry.name)
        if match and match["task"] == task_id:
            found.append(int(match["n"]))
    return sorted(found)


def next_version(root: Path, task_id: str) -> int:
    have = versions(root, task_id)
    return (have[-1] + 1) if have else 1


def save_versioned_raw_text(root: Path, task_id: str, text: str) -> Path:
    """The raw side-write: next version, written in place with ``Path.write_text``."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{task_id}_v{next_version(root, task_id)}.txt"
    path.write_text(text, encoding="utf-8")
    return path


class VersionedTextIOManager(dg.ConfigurableIOManager):
    """Versioned text files, one per materialisation of a partition."""

    root: str

    def handle_output(self, context: dg.OutputContext, obj: str) -> None:
        root = Path(self.root)
        task_id = context.asset_partition_key
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"{task_id}_v{next_version(root, task_id)}.txt"
        tmp = final.with_name(final.name + ".tmp")
        tmp.write_text(obj, encoding="utf-8")
        os.replace(tmp, final)

    def load_input(self, context: dg.InputContext) -> str:
        root = Path(self.root)
        task_id = context.asset_partition_key
        have = versions(root, task_id)
        if not have:
            raise dg.Failure(description=f"no {root.name} file for {task_id} in {root}")
        return (root / f"{task_id}_v{have[-1]}.txt").read_text(encoding="utf-8")

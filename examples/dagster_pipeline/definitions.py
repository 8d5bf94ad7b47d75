"""``Definitions`` of the example project, and ``resources()`` to build them for any data root.

    dagster dev -m dagster_pipeline.definitions     # from examples/, with DAGSTER_HOME set

The ``documents_index`` resource is docwatch's reader (``docwatch.dagster.DocumentsIndex``),
pointed at the index ``docwatch watch`` keeps for the same data root.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from docwatch.dagster.documents_index import DocumentsIndex

from .assets import ALL_ASSETS, DataRoot
from .llm import FakeLLMClient
from .writers import VersionedTextIOManager

#: IO manager key → folder under the data root (LEGACY_PIPELINE.md, "Folders").
IO_FOLDERS = {
    "draft_prompt_io_manager": "3_generation/draft_prompts",
    "draft_response_io_manager": "3_generation/draft_responses",
    "essay_prompt_io_manager": "3_generation/essay_prompts",
    "essay_response_io_manager": "3_generation/essay_responses",
    "evaluation_prompt_io_manager": "4_evaluation/evaluation_prompts",
    "evaluation_response_io_manager": "4_evaluation/evaluation_responses",
}


def resources(
    data_root: str = "data",
    *,
    db_path: str | None = None,
    docs_root: str | None = None,
    script: dict[str, str] | None = None,
) -> dict:
    """Every resource the assets need; paths relative to the working directory, as in the
    pipeline (so ``raw_path`` metadata reads ``data/3_generation/...``)."""
    io = {
        key: VersionedTextIOManager(root=str(Path(data_root, folder)))
        for key, folder in IO_FOLDERS.items()
    }
    return {
        "data_root": DataRoot(path=data_root),
        "llm": FakeLLMClient(script=script or {}),
        "documents_index": DocumentsIndex(
            db_path=db_path or str(Path(data_root, "db", "documents.sqlite")),
            docs_root=docs_root or str(Path(data_root, "docs")),
        ),
        **io,
    }


defs = dg.Definitions(
    assets=ALL_ASSETS,
    resources=resources(os.environ.get("DAYDREAM_DATA_ROOT", "data")),
)

"""Demo: ``python -m dagster_pipeline WORKDIR`` (from ``examples/``, with the pipeline venv's
Python: ``../.venv-pipeline/bin/python -m dagster_pipeline /tmp/demo``).

Creates ``WORKDIR/data`` (tables) and ``WORKDIR/dagster_home``, materialises a few drafts (one
truncated then retried, one unparsable), essays (LLM and copy mode) and evaluations with the
in-process executor, runs ``docwatch scan`` after each phase so the essay and evaluation prompts
can resolve their inputs through the index, and prints the index.  ``docwatch`` is docwatch's
own venv (``--docwatch``, default ``../.venv/bin/docwatch``, else ``docwatch`` on PATH), run with
``dagster_home`` and ``dagster_python`` = this Python, as deployed.  With ``docwatch watch``
running instead, the scans are not needed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
from docwatch import assets as A
from docwatch.reader import DocumentsIndex

from .definitions import resources
from .tables import Draft, Essay, Evaluation, register_partitions, write_tables

_VENV_DOCWATCH = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "docwatch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument(
        "--docwatch",
        default=str(_VENV_DOCWATCH)
        if _VENV_DOCWATCH.exists()
        else shutil.which("docwatch") or "docwatch",
        help="docwatch's command, from its own venv",
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(args.workdir)  # the pipeline writes data/... relative to its working directory
    home = Path("dagster_home").resolve()
    home.mkdir(exist_ok=True)
    config = Path("docwatch.toml").resolve()
    data = Path("data").resolve()
    config.write_text(
        f'data_root = "{data}"\nsettle_seconds = 0\ndagster_home = "{home}"\n'
        f'dagster_python = "{sys.executable}"\n'
    )

    ok = Draft("combo_v1_1f3a9c2b7d4e", "deliberate-rolling-thread-v2", "sonnet-4")
    cut = Draft("combo_v1_2a4b6c8d0e1f", "deliberate-rolling-thread-v2", "sonnet-4")
    bad = Draft("combo_v1_3c5e7a9b1d2f", "deliberate-rolling-thread-v2", "sonnet-4")
    essays = [
        Essay(ok, "synthesis-theme-narrative-v19", "sonnet-4"),
        Essay(cut, "parsed-from-links-v1", "sonnet-4"),
    ]
    evals = [
        Evaluation(essays[0], "novelty", "sonnet-4"),
        Evaluation(ok, "style-coherence-v3", "gemini_25_pro"),
    ]
    script = {cut.task_id: "truncate,ok", bad.task_id: "unparsable", evals[1].task_id: "truncate"}
    write_tables(Path("data"), [ok, cut, bad], essays, evals)
    res = resources("data", script=script)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        register_partitions(instance, [ok, cut, bad], essays, evals)
        phases = [
            (A.DRAFT_ASSETS, [ok, cut, cut, bad]),
            (A.ESSAY_ASSETS, essays),
            (A.EVALUATION_ASSETS, evals),
        ]
        for assets, tasks in phases:
            for task in tasks:
                result = dg.materialize(
                    assets,
                    partition_key=task.task_id,
                    instance=instance,
                    resources=res,
                    raise_on_error=False,
                )
                print(f"{'ok    ' if result.success else 'FAILED'} {task.task_id}  {result.run_id}")
            subprocess.run([args.docwatch, "scan", "--config", str(config)], check=True)

    with DocumentsIndex(Path("data", "db", "documents.sqlite"), Path("data", "docs")) as idx:
        columns = "stage, task_id, status, run_id, usage_completion_tokens, usage_max_tokens"
        for r in idx.execute(f"SELECT {columns} FROM documents ORDER BY stage, created_at"):
            print(" | ".join(str(v) for v in tuple(r)))


if __name__ == "__main__":
    main()

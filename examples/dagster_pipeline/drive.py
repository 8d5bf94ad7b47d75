"""Drive the example pipeline from another process: one JSON request per line, one answer each.

Runs in the *pipeline's* venv (Dagster, and docwatch installed with ``--no-deps`` for the
``DocumentsIndex`` resource), by path::

    .venv-pipeline/bin/python examples/dagster_pipeline/drive.py --workdir W --dagster-home H

The pipeline writes ``data/...`` relative to ``W``; the instance is ``H`` (a ``dagster.yaml``
with telemetry off is written when there is none; ``--consolidated`` selects the consolidated
SQLite event log, whose storage ids are global like Postgres').  Requests (stdin, one JSON
object per line); answers (stdout) are ``{"ok": true, ...}``, or ``{"ok": false, "error":
"<exception type>", "message": "..."}`` when the request raised:

* ``{"op": "setup", "drafts": [...], "essays": [...], "evaluations": [...], "script": {...}}``
  writes the task tables (``tables.write_tables``; tasks as ``tables.to_plain`` makes them),
  registers the partitions and configures the fake LLM (``llm.FakeLLMClient`` script);
  answers ``dagster_version`` and the stages' ``max_tokens``;
* ``{"op": "materialize", "stage": "draft", "task_id": "..."}`` runs the stage's prompt and
  response assets for that partition (in-process executor); answers ``run_id``, ``success``
  and ``metadata`` (asset → the metadata of its materialisation in that run);
* ``{"op": "resource", "method": "get_latest_by_task", "args": [...], "kwargs": {...}}`` calls
  the pipeline's ``documents_index`` resource (``docwatch.dagster.DocumentsIndex``) and answers
  ``result``; ``{"op": "resource", "db_path" (or "index_url"): ..., "docs_root": ..., ...}``
  uses a resource of its own for that index, kept for the next calls with the same one.

Used by ``tests/test_dagster_e2e.py`` and ``tests/test_runrecords.py`` beside ``docwatch watch``
running from docwatch's own venv.  End of input: exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from pathlib import Path

if __name__ == "__main__":  # run by path: examples/, not this folder, goes on sys.path
    _here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import dagster as dg  # noqa: E402

from dagster_pipeline import assets as A  # noqa: E402
from dagster_pipeline.definitions import resources  # noqa: E402
from dagster_pipeline.tables import from_plain, register_partitions, write_tables  # noqa: E402

STAGE_ASSETS = {"draft": A.DRAFT_ASSETS, "essay": A.ESSAY_ASSETS, "evaluation": A.EVALUATION_ASSETS}
MAX_TOKENS = {
    "draft": A.DRAFT_MAX_TOKENS,
    "essay": A.ESSAY_MAX_TOKENS,
    "evaluation": A.EVALUATION_MAX_TOKENS,
}
OPS = ("setup", "materialize", "resource")
CONSOLIDATED = """event_log_storage:
  module: dagster._core.storage.event_log
  class: ConsolidatedSqliteEventLogStorage
  config:
    base_dir: {base_dir}
"""


def plain(value):
    """A Dagster MetadataValue, a row or a path as plain JSON."""
    value = getattr(value, "value", value)
    return json.loads(json.dumps(value, default=str))


class Driver:
    def __init__(self, dagster_home: Path, data_root: str) -> None:
        self.instance = dg.DagsterInstance.from_config(str(dagster_home))
        self.data_root = data_root
        self.resources = resources(data_root)
        self.own_indexes: dict[tuple[str, str], object] = {}

    def close(self) -> None:
        for res in [self.resources["documents_index"], *self.own_indexes.values()]:
            res.close()
        self.instance.dispose()

    def setup(self, drafts=(), essays=(), evaluations=(), script=None) -> dict:
        drafts, essays, evaluations = (
            [from_plain(t) for t in ts] for ts in (drafts, essays, evaluations)
        )
        write_tables(Path(self.data_root), drafts, essays, evaluations)
        register_partitions(self.instance, drafts, essays, evaluations)
        self.resources = resources(self.data_root, script=script or {})
        return {"dagster_version": dg.__version__, "max_tokens": MAX_TOKENS}

    def materialize(self, stage: str, task_id: str) -> dict:
        assets = STAGE_ASSETS[stage]
        result = dg.materialize(
            assets,
            partition_key=task_id,
            instance=self.instance,
            resources=self.resources,
            raise_on_error=False,
        )
        metadata = {}
        for a in assets:
            for mat in result.asset_materializations_for_node(a.key.to_user_string()):
                metadata[a.key.to_user_string()] = {k: plain(v) for k, v in mat.metadata.items()}
        return {"run_id": result.run_id, "success": result.success, "metadata": metadata}

    def resource(
        self, method: str, args=(), kwargs=None, db_path=None, docs_root=None, index_url=None
    ) -> dict:
        index = self.resources["documents_index"]
        if db_path is not None or index_url is not None:
            key = (db_path or "", index_url or "", docs_root or "")
            if key not in self.own_indexes:
                self.own_indexes[key] = type(index)(
                    db_path=db_path or "", index_url=index_url or "", docs_root=docs_root or ""
                )
            index = self.own_indexes[key]
        return {"result": plain(getattr(index, method)(*args, **(kwargs or {})))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--dagster-home", type=Path, required=True)
    parser.add_argument("--data-root", default="data", help="relative to --workdir")
    parser.add_argument("--consolidated", action="store_true")
    args = parser.parse_args(argv)
    home = args.dagster_home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        extra = CONSOLIDATED.format(base_dir=home / "history") if args.consolidated else ""
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n" + extra)
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(args.workdir)  # the pipeline writes data/... relative to its working directory
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # Dagster's chatter must not reach the answers
        driver = Driver(home, args.data_root)
        try:
            for line in sys.stdin:
                if not line.strip():
                    continue
                request = json.loads(line)
                op = request.pop("op")
                try:
                    if op not in OPS:
                        raise ValueError(f"unknown op {op!r} (one of {', '.join(OPS)})")
                    answer = {"ok": True, **getattr(driver, op)(**request)}
                except Exception as exc:
                    traceback.print_exc(file=sys.stderr)
                    answer = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
                out.write(json.dumps(answer) + "\n")
                out.flush()
        finally:
            driver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

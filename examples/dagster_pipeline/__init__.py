"""A small Dagster project that writes exactly like the legacy "daydreaming" pipeline.

Used by ``tests/test_dagster_e2e.py`` and as a reference for wiring docwatch into Dagster:
``definitions.py`` (resources, including ``documents_index``), ``assets.py`` (prompt → response
per stage, readers through the index), ``writers.py`` (versioned IO manager, raw side-writes),
``llm.py`` (a fake LLM that truncates or returns unparsable text on request), ``tables.py``
(task and template tables, dynamic partitions).  ``python -m dagster_pipeline DIR`` (from
``examples/``) runs a small demo.
"""

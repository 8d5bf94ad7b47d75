"""The example pipeline's assets: prompt → response per stage, one dynamic partition per task.

Writes exactly like the legacy pipeline (LEGACY_PIPELINE.md): prompts and parsed responses via
the versioned IO manager (temp + rename), raw responses as in-place side-writes before parsing,
failures as ``dagster.Failure`` with the legacy metadata (``finish_reason``, ``truncated``,
``completion_tokens``, ``requested_max_tokens``, ``raw_path``; ``parser``, ``error``), and
successful materialisations with the legacy output metadata.

Readers follow the seed's contract: ``essay_prompt`` (and copy-mode ``essay_response``) read
the latest ok draft, ``evaluation_prompt`` the target document, through the ``documents_index``
resource (``docwatch.dagster.DocumentsIndex``) — never by searching folders.
"""

# No ``from __future__ import annotations`` here: Dagster reads the parameter annotations
# (context type, resource types) at definition time.
import re
from pathlib import Path

import dagster as dg
from docwatch.dagster.documents_index import DocumentsIndex

from .llm import FakeLLMClient
from .tables import PARTITIONS, task_row, template_row
from .writers import next_version, save_versioned_raw_text

draft_tasks = dg.DynamicPartitionsDefinition(name=PARTITIONS["draft"])
essay_tasks = dg.DynamicPartitionsDefinition(name=PARTITIONS["essay"])
evaluation_tasks = dg.DynamicPartitionsDefinition(name=PARTITIONS["evaluation"])

GEN = "3_generation"
EVAL = "4_evaluation"
COPY_PROMPT = "COPY_MODE: no prompt needed"
DRAFT_MAX_TOKENS = 2048
ESSAY_MAX_TOKENS = 4096
EVALUATION_MAX_TOKENS = 1024


class DataRoot(dg.ConfigurableResource):
    """Where the pipeline's data lives, relative to its working directory (``data``)."""

    path: str = "data"

    def folder(self, *parts: str) -> Path:
        return Path(self.path, *parts)

    def root(self) -> Path:
        return Path(self.path)


# -- parsers (the template's ``parser`` column) ---------------------------------------------


def parse(parser: str, text: str) -> str:
    """Apply a template parser; ValueError when the text lacks what the parser needs."""
    if not parser:
        return text
    if parser == "essay_idea_last":
        ideas = re.findall(r"<essay-idea[^>]*>\s*(.*?)\s*</essay-idea>", text, re.S)
        if not ideas:
            raise ValueError("no <essay-idea> block found")
        return ideas[-1].strip() + "\n"
    if parser == "essay_block":
        match = re.search(r"<essay>\s*(.*?)\s*</essay>", text, re.S)
        if not match:
            raise ValueError("no <essay> block found")
        return match.group(1).strip() + "\n"
    raise ValueError(f"unknown parser {parser!r}")


def _model(data: DataRoot, model_id: str) -> str:
    from .tables import model_names

    return model_names(data.root()).get(model_id, model_id)


def _raise_truncated(
    stage_fn: str, key: str, task_id: str, model: str, raw: str, resp, raw_path: Path
) -> None:
    raise dg.Failure(
        description=f"{stage_fn}: response for {task_id} was truncated at the token limit "
        f"({resp.completion_tokens}/{resp.max_tokens} tokens)",
        metadata={
            "function": stage_fn,
            key: task_id,
            "model_used": model,
            "finish_reason": resp.finish_reason,
            "truncated": True,
            "raw_chars": len(raw),
            "completion_tokens": resp.completion_tokens,
            "requested_max_tokens": resp.max_tokens,
            "raw_path": str(raw_path),
        },
    )


# -- drafts ---------------------------------------------------------------------------------


@dg.asset(partitions_def=draft_tasks, io_manager_key="draft_prompt_io_manager")
def draft_prompt(context: dg.AssetExecutionContext, data_root: DataRoot) -> str:
    row = task_row(data_root.root(), "draft", context.partition_key)
    tpl = template_row(data_root.root(), "draft", row["draft_template"])
    return (
        f"# {tpl.get('template_name', row['draft_template'])}\n"
        f"Combination {row['combo_id']}: explore links between the concepts, step by step, and "
        f"end each step with an <essay-idea> block.\n"
    )


@dg.asset(partitions_def=draft_tasks, io_manager_key="draft_response_io_manager")
def draft_response(
    context: dg.AssetExecutionContext, draft_prompt: str, data_root: DataRoot, llm: FakeLLMClient
) -> str:
    task_id = context.partition_key
    row = task_row(data_root.root(), "draft", task_id)
    parser = (
        template_row(data_root.root(), "draft", row["draft_template"]).get("parser") or ""
    ).strip()
    model = row.get("generation_model_name") or _model(data_root, row["generation_model"])
    raw_dir = data_root.folder(GEN, "draft_responses_raw")
    resp = llm.generate(
        draft_prompt,
        stage="draft",
        task_id=task_id,
        attempt=next_version(raw_dir, task_id),
        model=model,
        max_tokens=DRAFT_MAX_TOKENS,
    )
    raw_path = save_versioned_raw_text(raw_dir, task_id, resp.text)
    if resp.truncated:
        _raise_truncated("draft_response", "task_id", task_id, model, resp.text, resp, raw_path)
    try:
        parsed = parse(parser, resp.text)
    except ValueError as exc:
        raise dg.Failure(
            description=f"draft_response: parsing {task_id} with {parser!r} failed",
            metadata={
                "function": "draft_response",
                "task_id": task_id,
                "parser": parser,
                "error": str(exc),
                "raw_path": str(raw_path),
            },
        ) from exc
    context.add_output_metadata(
        {
            "function": "draft_response",
            "raw_line_count": len(resp.text.splitlines()),
            "model_used": model,
            "max_tokens": resp.max_tokens,
            "parser": parser or "identity",
            "parsed_chars": len(parsed),
            "raw_chars": len(resp.text),
            "raw_path": str(raw_path),
        }
    )
    return parsed


# -- essays ---------------------------------------------------------------------------------


def _essay_task(data_root: DataRoot, task_id: str) -> tuple[dict, str]:
    row = task_row(data_root.root(), "essay", task_id)
    tpl = template_row(data_root.root(), "essay", row["essay_template"])
    return row, (tpl.get("generator") or "llm").strip().lower()


@dg.asset(partitions_def=essay_tasks, io_manager_key="essay_prompt_io_manager")
def essay_prompt(
    context: dg.AssetExecutionContext, data_root: DataRoot, documents_index: DocumentsIndex
) -> str:
    """Phase-2 prompt: built from the latest ok draft, resolved through the index."""
    row, generator = _essay_task(data_root, context.partition_key)
    if generator == "copy":
        return COPY_PROMPT
    draft = documents_index.get_latest_by_task("draft", row["draft_task_id"])  # fails fast
    draft_text = documents_index.read_text(draft, "parsed")
    context.add_output_metadata(
        {"draft_task_id": row["draft_task_id"], "draft_doc_id": draft["doc_id"]}
    )
    return (
        f"# Essay ({row['essay_template']})\nWrite an essay that develops this idea:\n\n"
        f"{draft_text}"
    )


@dg.asset(partitions_def=essay_tasks, io_manager_key="essay_response_io_manager")
def essay_response(
    context: dg.AssetExecutionContext,
    essay_prompt: str,
    data_root: DataRoot,
    llm: FakeLLMClient,
    documents_index: DocumentsIndex,
) -> str:
    task_id = context.partition_key
    row, generator = _essay_task(data_root, task_id)
    if generator == "copy":  # no LLM, no raw: the parsed essay is the draft
        draft = documents_index.get_latest_by_task("draft", row["draft_task_id"])
        text = documents_index.read_text(draft, "parsed")
        context.add_output_metadata(
            {
                "function": "essay_response",
                "mode": "copy",
                "essay_task_id": task_id,
                "source_draft_task_id": row["draft_task_id"],
                "chars": len(text),
                "lines": len(text.splitlines()),
            }
        )
        return text
    model = row.get("generation_model_name") or _model(data_root, row["generation_model"])
    raw_dir = data_root.folder(GEN, "essay_responses_raw")
    resp = llm.generate(
        essay_prompt,
        stage="essay",
        task_id=task_id,
        attempt=next_version(raw_dir, task_id),
        model=model,
        max_tokens=ESSAY_MAX_TOKENS,
    )
    raw_path = save_versioned_raw_text(raw_dir, task_id, resp.text)
    if resp.truncated:
        _raise_truncated(
            "essay_response", "essay_task_id", task_id, model, resp.text, resp, raw_path
        )
    context.add_output_metadata(
        {
            "function": "essay_response",
            "essay_task_id": task_id,
            "model_used": model,
            "chars": len(resp.text),
            "truncated": False,
            "raw_path": str(raw_path),
        }
    )
    return resp.text  # essays are not parsed: parsed == raw


# -- evaluations ----------------------------------------------------------------------------


@dg.asset(partitions_def=evaluation_tasks, io_manager_key="evaluation_prompt_io_manager")
def evaluation_prompt(
    context: dg.AssetExecutionContext, data_root: DataRoot, documents_index: DocumentsIndex
) -> str:
    """Reads the evaluated document (essay or draft, per evaluation_tasks.csv) via the index."""
    row = task_row(data_root.root(), "evaluation", context.partition_key)
    stage = "essay" if row["stage"] == "essay2p" else "draft"
    target = documents_index.get_latest_by_task(stage, row["document_id"])
    text = documents_index.read_text(target, "parsed")
    context.add_output_metadata({"target_stage": stage, "target_doc_id": target["doc_id"]})
    return f"# Evaluate ({row['evaluation_template']})\n\n{text}\nEnd with SCORE: <0-9>.\n"


@dg.asset(partitions_def=evaluation_tasks, io_manager_key="evaluation_response_io_manager")
def evaluation_response(
    context: dg.AssetExecutionContext,
    evaluation_prompt: str,
    data_root: DataRoot,
    llm: FakeLLMClient,
) -> str:
    """No raw file and no truncation guard: a truncated evaluation is still written."""
    task_id = context.partition_key
    row = task_row(data_root.root(), "evaluation", task_id)
    model = row.get("evaluation_model_name") or _model(data_root, row["evaluation_model"])
    parsed_dir = data_root.folder(EVAL, "evaluation_responses")
    resp = llm.generate(
        evaluation_prompt,
        stage="evaluation",
        task_id=task_id,
        attempt=next_version(parsed_dir, task_id),
        model=model,
        max_tokens=EVALUATION_MAX_TOKENS,
    )
    context.add_output_metadata(
        {"evaluation_task_id": task_id, "model_used": model, "finish_reason": resp.finish_reason}
    )
    return resp.text


DRAFT_ASSETS = [draft_prompt, draft_response]
ESSAY_ASSETS = [essay_prompt, essay_response]
EVALUATION_ASSETS = [evaluation_prompt, evaluation_response]
ALL_ASSETS = [*DRAFT_ASSETS, *ESSAY_ASSETS, *EVALUATION_ASSETS]

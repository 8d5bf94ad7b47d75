"""A fake LLM client that can be told, per task and attempt, to misbehave.

``FakeLLMClient(script={"<task_id>": "truncate,ok"})``: the task's first attempt is cut at
the token limit (``finish_reason="length"``), the second succeeds.  Behaviours:

* ``ok`` — a well-formed response for the stage (drafts carry ``<essay-idea>`` blocks and an
  ``<essay>`` block, evaluations end with ``SCORE: <n>``);
* ``truncate`` — the text stops mid-sentence, ``finish_reason="length"``, and the completion
  tokens equal the requested maximum;
* ``unparsable`` — a complete response (``finish_reason="stop"``) without the blocks or the
  score line a parser looks for;
* ``error`` — the provider fails (``RuntimeError``) before any text exists: no raw file, a
  step failure without metadata (docwatch: ``gen_error``).  No file is written, so the attempt
  number does not advance: ``error`` is for every attempt of its task.

Attempts are numbered from 1 (the raw file version about to be written, or for evaluations the
parsed version).  Tasks not in the script, and attempts past its end, behave ``ok``.  Text is
deterministic: derived from the prompt's hash.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import dagster as dg

WORDS = (  # noqa: SIM905
    "signal drift memory recursion loop feedback daydream concept link mechanism agent model "
    "search novelty gradient attention network tension pattern synthesis insight thread lattice "
    "curiosity replay consolidation noise filter critic generator value idea bridge analogy"
).split()
BEHAVIOURS = ("ok", "truncate", "unparsable", "error")


@dataclass(frozen=True)
class LLMResponse:
    text: str
    finish_reason: str  # stop | length
    prompt_tokens: int
    completion_tokens: int
    max_tokens: int

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class FakeLLMClient(dg.ConfigurableResource):
    """Deterministic stand-in for the pipeline's LLM client."""

    script: dict[str, str] = {}
    max_tokens: int = 2048

    def behaviour(self, task_id: str, attempt: int) -> str:
        plan = [b.strip() for b in self.script.get(task_id, "").split(",") if b.strip()]
        chosen = plan[attempt - 1] if 0 < attempt <= len(plan) else "ok"
        if chosen not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {chosen!r} for {task_id} (one of {BEHAVIOURS})")
        return chosen

    def generate(
        self,
        prompt: str,
        *,
        stage: str,
        task_id: str,
        attempt: int,
        model: str,
        max_tokens: int | None = None,
    ) -> LLMResponse:
        limit = max_tokens or self.max_tokens
        seed = hashlib.sha256(f"{model}\0{attempt}\0{prompt}".encode()).digest()
        rng = random.Random(seed)
        behaviour = self.behaviour(task_id, attempt)
        if behaviour == "error":
            raise RuntimeError(f"provider returned 503 for {task_id} (attempt {attempt})")
        text = _response(rng, stage, parsable=behaviour != "unparsable")
        finish = "stop"
        completion = len(text.split())
        if behaviour == "truncate":
            words = text.split(" ")
            text = " ".join(words[: max(3, len(words) * 2 // 3)])  # stops mid-sentence
            finish, completion = "length", limit
        return LLMResponse(text, finish, len(prompt.split()), min(completion, limit), limit)


def _sentence(rng: random.Random, n: int = 12) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + "."


def _paragraph(rng: random.Random, sentences: int = 3) -> str:
    return " ".join(_sentence(rng, rng.randint(8, 16)) for _ in range(sentences))


def _response(rng: random.Random, stage: str, *, parsable: bool) -> str:
    if stage == "draft":
        steps = [
            f"Step {i}: {_paragraph(rng, 2)}\n"
            + (f'<essay-idea stage="{i}">\n{_paragraph(rng)}\n</essay-idea>\n' if parsable else "")
            for i in range(1, 4)
        ]
        essay = f"\n<essay>\n{_paragraph(rng, 4)}\n</essay>\n" if parsable else ""
        return "\n".join(steps) + essay
    if stage == "essay":
        return "\n\n".join(_paragraph(rng, 4) for _ in range(3)) + "\n"
    score = f"\nSCORE: {rng.randint(1, 9)}\n" if parsable else "\n"
    return f"{_paragraph(rng, 3)}\n{_paragraph(rng, 2)}{score}"

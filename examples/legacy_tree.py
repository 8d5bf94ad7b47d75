"""Synthetic trees of the legacy "daydreaming" pipeline (see LEGACY_PIPELINE.md). Stdlib only.

One plan of "what the pipeline does", two ways to perform it:

* ``build_tree`` writes the finished tree at once and sets realistic mtimes (os.utime);
* ``run_pipeline`` replays it in real time with the pipeline's own writer patterns
  (prompts/parsed: ``.tmp`` + ``os.replace``; raw: slow in-place writes) on ``writers`` threads.

Both produce the same relative paths and bytes for the same seed and combos.

    python examples/legacy_tree.py OUT_DIR [--combos N] [--seed S] [--files-target N] [--no-quirks]
    python examples/legacy_tree.py live OUT_DIR [--combos N] [--seed S] [--writers W]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "1_raw"
START = datetime(2025, 9, 1, tzinfo=UTC)
SEC = 1_000_000_000
FOLDERS = {
    stage: {
        "prompt": f"{top}/{stage}_prompts",
        "raw": f"{top}/{stage}_responses_raw",
        "parsed": f"{top}/{stage}_responses",
    }
    for stage, top in (("draft", "3_generation"), ("essay", "3_generation"))
}
FOLDERS["evaluation"] = {
    k: f"4_evaluation/evaluation_{v}"
    for k, v in (("prompt", "prompts"), ("raw", "responses_raw"), ("parsed", "responses"))
}
LINKS = {"prompt": "3_generation/links_prompts", "parsed": "3_generation/links_responses"}
# draft template -> essay templates it feeds (distinct per combo and model: essay ids must not clash)
RECIPES = (
    ("deliberate-rolling-thread-v2", ("synthesis-theme-narrative-v19", "parsed-from-links-v1")),
    ("creative-synthesis-v7", ("creative-synthesis-v7",)),
    ("creative-synthesis-v2", ("synthesis-theme-narrative-v18",)),
)
GEN_MODELS = ("sonnet-4", "gemini_25_pro", "deepseek_r1_p", "gemini_2.5_flash", "qwen3-235b-a22b")
EVALS = (("novelty", "sonnet-4"), ("style-coherence-v3", "gemini_25_pro"))
COPY_PROMPT = b"COPY_MODE: no prompt needed"
TABLE_COLUMNS = {
    "draft": "draft_task_id combo_id draft_template generation_model generation_model_name",
    "essay": "essay_task_id combo_id draft_template essay_template generation_model "
    "generation_model_name draft_task_id",
    "evaluation": "evaluation_task_id document_id stage origin file_path combo_id draft_template "
    "essay_template generation_model generation_model_name draft_task_id essay_task_id "
    "source_asset source_dir evaluation_template evaluation_model evaluation_model_name parser",
}
TABLE_FILES = {
    "draft": "2_tasks/draft_generation_tasks.csv",
    "essay": "2_tasks/essay_generation_tasks.csv",
    "evaluation": "2_tasks/evaluation_tasks.csv",
}
WORDS = (
    "signal drift memory recursion loop feedback daydream concept link mechanism agent model "
    "search novelty gradient attention network tension pattern synthesis insight thread lattice "
    "curiosity default mode hippocampus replay consolidation noise filter critic generator value "
    "combinatorial idea pair bridge analogy transfer constraint budget evaluation score frontier "
    "background process wander sample prune rank select archive revisit compress abstraction the "
    "a of and to in that with from which by as this each its over under through between while"
).split()


def _table(name: str) -> list[dict[str, str]]:
    with open(TEMPLATES / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


DRAFT_PARSER = {r["template_id"]: r["parser"] for r in _table("draft_templates.csv")}
ESSAY_GEN = {r["template_id"]: r["generator"] for r in _table("essay_templates.csv")}
EVAL_PARSER = {r["template_id"]: r["parsing_strategy"] for r in _table("evaluation_templates.csv")}
MODEL_NAME = {r["id"]: r["model"] for r in _table("llm_models.csv")}


@dataclass
class Attempt:
    """One expected document: a raw version or a parsed-only version (paths rel. to data root)."""

    stage: str
    task_id: str
    prompt: str | None
    raw: str | None
    parsed: str | None
    status: str  # ok | parse_error | gen_error


@dataclass
class TreeSummary:
    combos: list[str]
    files: dict[str, int]  # folder (relative) -> number of files written there
    total_files: int
    attempts: dict[str, int]  # stage -> expected documents
    raw_only: dict[str, int]  # stage -> attempts that end as failures (raw, no parsed)
    tasks: dict[str, list[str]]  # stage -> task ids present in the files
    scenarios: dict[str, list[str]]  # scenario -> task ids
    quirks: dict[str, list[str]]  # quirk -> relative paths
    expected: list[Attempt]
    complete: bool = True  # False when run_pipeline was stopped early


@dataclass
class Op:
    rel: str
    kind: str  # prompt | raw | parsed | tmp (left over, never renamed) | other
    t: int  # mtime in ns (an offset from the materialisation's start until scheduled)
    make: Callable[[], bytes]


@dataclass
class Mat:
    """One materialisation: the files of one attempt, in write order."""

    ops: list[Op]
    wave: int
    deps: set[int]


@dataclass
class Task:
    stage: str
    task: str
    combo: str
    template: str
    model: str
    scenario: str = "normal"
    in_tables: bool = True
    parent: Task | None = None
    folders: dict[str, str] | None = None
    ok_mat: int = -1
    parsed: Callable[[], bytes] | None = None
    downstream: set[int] = field(default_factory=set)


@dataclass
class Plan:
    mats: list[Mat]
    order: list[int]  # materialisations by planned start
    pre: list[Op]  # files that exist before the run (older trees, noise)
    dirs: list[str]  # empty folders
    tables: dict[str, bytes]
    table_t: int
    summary: TreeSummary


class Texts:
    """Cheap deterministic text: slices of one seeded corpus, chosen by a per-file key."""

    _cache: dict[int, str] = {}

    def __init__(self, seed: int):
        self.seed = seed
        if seed not in self._cache:
            rng, paras = random.Random(f"corpus:{seed}"), []
            for _ in range(1200):
                sents = [" ".join(rng.choices(WORDS, k=rng.randint(8, 22))) for _ in range(5)]
                paras.append(" ".join(s.capitalize() + "." for s in sents))
            self._cache[seed] = "\n\n".join(paras)
        self.corpus = self._cache[seed]

    def rng(self, key: str) -> random.Random:
        return random.Random(f"{self.seed}|{key}")

    def chunk(self, rng: random.Random, n: int) -> str:
        c = self.corpus
        s = c.find(" ", rng.randrange(len(c) - n - 200)) + 1
        piece = c[s : s + n]
        return piece[: piece.rfind(" ")]

    def prompt(self, key: str) -> bytes:
        rng = self.rng(key)
        concepts = ", ".join(rng.sample(WORDS[:40], 4))
        body = self.chunk(rng, rng.randint(3000, 12000))
        return f"Concepts: {concepts}\n\nInstructions:\n{body}\n".encode()

    def draft_raw(self, key: str, parser: str, ok: bool) -> str:
        rng = self.rng(key)
        n = rng.randint(2000, 10000)
        if not ok:  # cut at the token limit while thinking: no block to extract
            return "<thinking>\n" + self.chunk(rng, n)
        if parser == "essay_idea_last":
            k = rng.randint(2, 4)
            return "".join(
                f"<thinking>\n{self.chunk(rng, n // (2 * k))}\n</thinking>\n"
                f'<essay-idea stage="{i}">\n{self.chunk(rng, n // (2 * k))}\n</essay-idea>\n'
                for i in range(1, k + 1)
            )
        if parser == "essay_block":
            parts = [self.chunk(rng, n // 5), self.chunk(rng, 3 * n // 5), self.chunk(rng, n // 5)]
            return "{}\n\n<essay>\n{}\n</essay>\n\n{}\n".format(*parts)
        return self.chunk(rng, n) + "\n"

    def essay(self, key: str, truncated: bool = False) -> bytes:
        rng = self.rng(key)
        text = f"# {' '.join(rng.sample(WORDS[:40], 3)).title()}\n\n"
        text += self.chunk(rng, rng.randint(4000, 15000)) + "\n"
        return (text[: int(len(text) * rng.uniform(0.6, 0.9))] if truncated else text).encode()

    def evaluation(self, key: str, partial_text: bool = False) -> bytes:
        rng = self.rng(key)
        text = f"**Assessment**\n\n{self.chunk(rng, rng.randint(1000, 6000))}\n\n"
        text += f"SCORE: {rng.choice((3, 5, 6, 7, 7, 8, 9))}\n"
        return (text[: len(text) // 3] if partial_text else text).encode()


def parse_draft(text: str, parser: str) -> str:
    """The pipeline's draft parsers (identity when the template has none)."""
    if parser == "essay_idea_last":
        s = text.index(">", text.rindex("<essay-idea")) + 1
        return text[s : text.index("</essay-idea>", s)].strip() + "\n"
    if parser == "essay_block":
        s = text.index("<essay>") + len("<essay>")
        return text[s : text.index("</essay>", s)].strip() + "\n"
    return text


def _raw_bytes(tx: Texts, key: str, parser: str, ok: bool) -> bytes:
    return tx.draft_raw(key, parser, ok).encode()


def _parsed_bytes(tx: Texts, key: str, parser: str) -> bytes:
    return parse_draft(tx.draft_raw(key, parser, True), parser).encode()


def _const(data: bytes) -> bytes:
    return data


def _poison(make: Callable[[], bytes]) -> bytes:
    data = make()
    mid = len(data) // 2
    return data[:mid] + b"\xff\xfe\x00\xd8 undecodable \xc3\x28\x80 " + data[mid:]


class Planner:
    def __init__(self, seed: int, quirks: bool, start_ns: int):
        self.rng, self.tx, self.quirks, self.t0 = random.Random(seed), Texts(seed), quirks, start_ns
        self.mats: list[Mat] = []
        self.pre: list[Op] = []
        self.dirs: list[str] = []
        self.expected: list[Attempt] = []
        self.versions: Counter[tuple[str, str, str]] = Counter()
        self.scen: dict[str, list[str]] = defaultdict(list)
        self.qpaths: dict[str, list[str]] = defaultdict(list)
        self.task_ids: dict[str, list[str]] = {s: [] for s in FOLDERS}

    def sec(self, lo: float, hi: float) -> int:
        return int(self.rng.uniform(lo, hi) * SEC)

    def combo_id(self, i: int) -> str:
        if i % 7 == 1:
            return f"combo_{i:03d}"  # older naming
        return f"combo_v1_{random.Random(f'combo:{self.tx.seed}:{i}').getrandbits(48):012x}"

    def tasks(self, combos: int) -> tuple[list[Task], list[Task], list[Task]]:
        drafts, essays, evals = [], [], []
        for i in range(combos):
            combo = self.combo_id(i)
            for model in self.rng.sample(GEN_MODELS, 2):
                for dtpl, etpls in RECIPES:
                    d = Task("draft", f"{combo}__{dtpl}__{model}", combo, dtpl, model)
                    r = self.rng.random()
                    if DRAFT_PARSER[dtpl] and r < 0.08:
                        d.scenario = "parse_fail"
                    elif r > 0.95:
                        d.scenario = "remat"
                    drafts.append(d)
                    for et in etpls:
                        e = Task("essay", f"{combo}__{et}__{model}", combo, et, model, parent=d)
                        e.scenario = "copy" if ESSAY_GEN[et] == "copy" else "llm"
                        if e.scenario == "llm" and self.rng.random() < 0.1:
                            e.scenario = "truncated"
                        essays.append(e)
        for target in [*essays, *(d for d in drafts if d.template == RECIPES[0][0])]:
            for etpl, emodel in EVALS if target.stage == "essay" else EVALS[:1]:
                v = Task(
                    "evaluation", f"{target.task}__{etpl}__{emodel}", target.combo, etpl, emodel
                )
                v.parent = target
                evals.append(v)
        return drafts, essays, evals

    def force(self, tasks: list[Task], scenario: str, ok: Callable[[Task], bool]) -> None:
        """Make sure a scenario occurs at least once (tiny trees)."""
        if not any(t.scenario == scenario for t in tasks):
            self.rng.choice([t for t in tasks if ok(t)]).scenario = scenario

    def mat(self, t: Task, wave: int, deps: set[int], steps: list[tuple]) -> int:
        """Add a materialisation of ``t``: steps are (kind, maker, offset_ns)."""
        ops, rels = [], {}
        for kind, make, off in steps:
            fkind = "parsed" if kind == "tmp" else kind
            self.versions[(t.stage, t.task, fkind)] += 1
            n = self.versions[(t.stage, t.task, fkind)]
            rel = f"{(t.folders or FOLDERS[t.stage])[fkind]}/{t.task}_v{n}.txt"
            rel += ".tmp" if kind == "tmp" else ""
            rels[kind] = rel
            ops.append(Op(rel, kind, off, make))
        if "raw" in rels or "parsed" in rels:
            bad = "parse_error" if t.stage == "draft" and DRAFT_PARSER[t.template] else "gen_error"
            status = "ok" if "parsed" in rels else bad
            self.expected.append(
                Attempt(
                    t.stage, t.task, rels.get("prompt"), rels.get("raw"), rels.get("parsed"), status
                )
            )
        self.mats.append(Mat(ops, wave, deps))
        self.task_ids[t.stage].append(t.task)
        up = t.parent
        while up is not None:  # a re-materialised draft comes after everything built on it
            up.downstream.add(len(self.mats) - 1)
            up = up.parent
        return len(self.mats) - 1

    def prompt_step(self, t: Task, n: int) -> tuple:
        return ("prompt", partial(self.tx.prompt, f"{t.stage}|{t.task}|p{n}"), 0)

    def draft(self, d: Task, n: int, wave: int, deps: set[int], ok: bool = True) -> int:
        key, parser, raw_t = f"draft|{d.task}|r{n}", DRAFT_PARSER[d.template], self.sec(20, 120)
        steps = [
            self.prompt_step(d, n),
            ("raw", partial(_raw_bytes, self.tx, key, parser, ok), raw_t),
        ]
        if ok:
            parsed = partial(_parsed_bytes, self.tx, key, parser)
            steps.append(("parsed", parsed, raw_t + self.sec(0.5, 3)))
            d.parsed = d.parsed or parsed
        i = self.mat(d, wave, deps, steps)
        d.ok_mat = i if ok and d.ok_mat < 0 else d.ok_mat
        return i

    def run_draft(self, d: Task) -> None:
        first = self.draft(d, 1, 0, set(), ok=d.scenario != "parse_fail")
        if d.scenario == "parse_fail":
            self.draft(d, 2, 1, {first})

    def run_essay(self, e: Task) -> None:
        deps = {e.parent.ok_mat}
        if e.scenario == "copy":
            steps = [
                ("prompt", partial(_const, COPY_PROMPT), 0),
                ("parsed", e.parent.parsed, self.sec(1, 4)),
            ]
            e.ok_mat = self.mat(e, 2, deps, steps)
            return
        if e.scenario == "truncated":
            bad = partial(self.tx.essay, f"essay|{e.task}|r1", True)
            deps = {self.mat(e, 2, deps, [self.prompt_step(e, 1), ("raw", bad, self.sec(30, 150))])}
        n = 2 if e.scenario == "truncated" else 1
        text, raw_t = partial(self.tx.essay, f"essay|{e.task}|r{n}"), self.sec(30, 150)
        steps = [
            self.prompt_step(e, n),
            ("raw", text, raw_t),
            ("parsed", text, raw_t + self.sec(0.2, 2)),
        ]
        e.ok_mat = self.mat(e, 3 if n == 2 else 2, deps, steps)

    def run_eval(self, v: Task) -> None:
        crashed = v.scenario == "crashed"
        text = partial(self.tx.evaluation, f"evaluation|{v.task}", crashed)
        if v.scenario == "undecodable":
            text = partial(_poison, text)
        steps = [self.prompt_step(v, 1), ("tmp" if crashed else "parsed", text, self.sec(10, 60))]
        self.mat(v, 4, {v.parent.ok_mat}, steps)
        if crashed:
            self.qpaths["leftover_tmp"].append(self.mats[-1].ops[-1].rel)
        if v.scenario == "undecodable":
            self.qpaths["undecodable"].append(self.mats[-1].ops[-1].rel)

    def add_pre(self, rel: str, data: bytes | Callable[[], bytes], days_ago: float, kind="other"):
        make = data if callable(data) else partial(_const, data)
        self.pre.append(Op(rel, kind, self.t0 - int(days_ago * 86400 * SEC), make))

    def old_files(self, drafts: list[Task]) -> None:
        """Older runs: an unversioned legacy draft and a one-phase links draft per old combo."""
        for d in drafts:
            if d.combo.startswith("combo_v1_") or d.template != "creative-synthesis-v2":
                continue
            rel = f"{FOLDERS['draft']['parsed']}/{d.task}.txt"
            self.add_pre(
                rel, partial(_raw_bytes, self.tx, f"legacy|{d.task}", "", True), 20, "parsed"
            )
            self.expected.append(Attempt("draft", d.task, None, None, rel, "ok"))
            self.scen["legacy_unversioned"].append(d.task)
            links = Task("draft", f"{d.combo}__creative-synthesis-v10__{d.model}", d.combo, "", "")
            p, r = (f"{LINKS[k]}/{links.task}_v1.txt" for k in ("prompt", "parsed"))
            self.add_pre(p, partial(self.tx.prompt, f"links|{links.task}"), 25, "prompt")
            self.add_pre(
                r, partial(_raw_bytes, self.tx, f"links|{links.task}", "", True), 24.99, "parsed"
            )
            self.expected.append(Attempt("draft", links.task, p, None, r, "ok"))
            self.task_ids["draft"] += [d.task, links.task]
            self.scen["links_one_phase"].append(links.task)

    def noise(self, essays: list[Task]) -> None:
        """--- quirks: things a real data root collects that are not pipeline output ---"""
        dr, er = FOLDERS["draft"]["parsed"], FOLDERS["essay"]["parsed"]
        items = {
            "ds_store": (f"{dr}/.DS_Store", b"\x00\x00\x00\x01Bud1\x00\x00\x10\x00"),
            "notes": (
                f"{er}/notes.md",
                b"# notes\n\nrerun the truncated essays with more tokens\n",
            ),
            "editor_backup": (f"{er}/{essays[0].task}_v1.txt~", b"an older edit of this essay\n"),
        }
        for name, (rel, data) in items.items():
            self.add_pre(rel, data, 1)
            self.qpaths[name].append(rel)
        self.dirs.append(f"{FOLDERS['draft']['raw']}/old_runs")
        self.qpaths["empty_dir"].append(self.dirs[-1])
        u = Task("draft", "combo_v1_café_日本語__creative-synthesis-v2__sonnet-4", "", "", "")
        u.template, u.in_tables = "creative-synthesis-v2", False
        self.draft(u, 1, 0, set())
        self.scen["unicode_task_id"].append(u.task)
        self.qpaths["unicode"] += [op.rel for op in self.mats[-1].ops]

    def schedule(self) -> list[int]:
        cursor, end = self.t0, {}
        for i in sorted(range(len(self.mats)), key=lambda i: (self.mats[i].wave, i)):
            m = self.mats[i]
            cursor += self.sec(2, 8)
            start = max([cursor] + [end[d] + self.sec(1, 5) for d in m.deps])
            for op in m.ops:
                op.t += start
            end[i] = m.ops[-1].t
        return sorted(range(len(self.mats)), key=lambda i: (self.mats[i].ops[0].t, i))


def _csv(rows: list[dict[str, str]], stage: str) -> bytes:
    out = io.StringIO()
    w = csv.DictWriter(out, TABLE_COLUMNS[stage].split(), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue().encode()


def _rows(drafts: list[Task], essays: list[Task], evals: list[Task]) -> dict[str, bytes]:
    def gen(t: Task, d: Task) -> dict[str, str]:
        m = {"generation_model": t.model, "generation_model_name": MODEL_NAME[t.model]}
        return {"combo_id": t.combo, "draft_template": d.template, **m}

    dr = [{"draft_task_id": d.task, **gen(d, d)} for d in drafts if d.in_tables]
    es = [
        {"essay_task_id": e.task, "essay_template": e.template, "draft_task_id": e.parent.task}
        | gen(e, e.parent)
        for e in essays
    ]
    ev = []
    for v in evals:
        t = v.parent
        d = t.parent or t
        kind, stage = ("essay", "essay2p") if t.stage == "essay" else ("draft", "essay1p")
        row = gen(t, d) | {"evaluation_task_id": v.task, "document_id": t.task, "stage": stage}
        row |= {"origin": kind, "file_path": f"data/{FOLDERS[kind]['parsed']}/{t.task}_v1.txt"}
        row |= {"essay_template": t.template if kind == "essay" else "", "draft_task_id": d.task}
        row |= {
            "essay_task_id": t.task if kind == "essay" else "",
            "source_asset": f"{kind}_response",
        }
        row |= {"source_dir": f"{kind}_responses", "evaluation_template": v.template}
        row |= {"evaluation_model": v.model, "evaluation_model_name": MODEL_NAME[v.model]}
        ev.append(row | {"parser": EVAL_PARSER[v.template]})
    return {
        TABLE_FILES[s]: _csv(r, s) for s, r in (("draft", dr), ("essay", es), ("evaluation", ev))
    }


def make_plan(combos: int = 6, seed: int = 0, start: datetime = START, quirks: bool = True) -> Plan:
    """Decide every file of the tree (contents are produced lazily by ``Op.make``)."""
    if combos < 1:
        raise ValueError("combos must be >= 1")
    p = Planner(seed, quirks, int(start.timestamp()) * SEC)
    drafts, essays, evals = p.tasks(combos)
    p.force(
        drafts, "parse_fail", lambda t: t.scenario == "normal" and bool(DRAFT_PARSER[t.template])
    )
    p.force(drafts, "remat", lambda t: t.scenario == "normal")
    p.force(essays, "truncated", lambda t: t.scenario == "llm")
    if quirks:
        p.force(evals, "crashed", lambda t: t.scenario == "normal")
        p.force(
            evals, "undecodable", lambda t: t.scenario == "normal" and t.parent.stage == "essay"
        )
        p.rng.choice([d for d in drafts if d.scenario == "normal"]).in_tables = False
        p.old_files(drafts)
    for d in drafts:
        p.run_draft(d)
    for e in essays:
        p.run_essay(e)
    for v in evals:
        p.run_eval(v)
    for d in (d for d in drafts if d.scenario == "remat"):
        p.draft(d, 2, 5, {d.ok_mat} | d.downstream)
    if quirks:
        p.noise([e for e in essays if e.scenario == "llm"])
    tables = _rows(drafts, essays, evals)
    for t in [*drafts, *essays, *evals]:
        p.scen[f"{t.stage}_{t.scenario}"].append(t.task)
        if t.stage == "evaluation":
            p.scen["evaluation_of_" + t.parent.stage].append(t.task)
        if not t.in_tables:
            p.scen["missing_from_tables"].append(t.task)
    order = p.schedule()
    return Plan(p.mats, order, p.pre, p.dirs, tables, p.t0 - 120 * SEC, _summary(p, tables, drafts))


def _summary(p: Planner, tables: dict[str, bytes], drafts: list[Task]) -> TreeSummary:
    rels = [op.rel for op in p.pre] + [op.rel for m in p.mats for op in m.ops]
    rels += list(tables) + [f"1_raw/{f.name}" for f in sorted(TEMPLATES.glob("*.csv"))]
    return TreeSummary(
        combos=sorted({d.combo for d in drafts}),
        files=dict(sorted(Counter(r.rsplit("/", 1)[0] for r in rels).items())),
        total_files=len(rels),
        attempts={s: sum(a.stage == s for a in p.expected) for s in FOLDERS},
        raw_only={s: sum(a.stage == s and a.parsed is None for a in p.expected) for s in FOLDERS},
        tasks={s: list(dict.fromkeys(v)) for s, v in p.task_ids.items()},
        scenarios=dict(p.scen),
        quirks=dict(p.qpaths),
        expected=p.expected,
    )


def combos_for_files(files_target: int, *, seed: int = 0, quirks: bool = True) -> int:
    """How many combos make a tree of about ``files_target`` files."""
    n10 = make_plan(10, seed, quirks=quirks).summary.total_files
    n30 = make_plan(30, seed, quirks=quirks).summary.total_files
    per = (n30 - n10) / 20
    return max(1, round((files_target - (n10 - 10 * per)) / per))


def _copy_templates(root: Path, t: int | None) -> None:
    (root / "1_raw").mkdir(parents=True, exist_ok=True)
    for f in sorted(TEMPLATES.glob("*.csv")):
        shutil.copyfile(f, root / "1_raw" / f.name)
        if t is not None:
            os.utime(root / "1_raw" / f.name, ns=(t, t))


def build_tree(
    data_root: Path,
    *,
    combos: int = 6,
    seed: int = 0,
    start: datetime = START,
    quirks: bool = True,
    files_target: int | None = None,
) -> TreeSummary:
    """Write the finished tree quickly (plain writes) with realistic mtimes."""
    if files_target:
        combos = combos_for_files(files_target, seed=seed, quirks=quirks)
    plan, root, made = make_plan(combos, seed, start, quirks), Path(data_root), set()
    _copy_templates(root, plan.table_t - 3 * 86400 * SEC)
    files = [Op(rel, "other", plan.table_t, partial(_const, d)) for rel, d in plan.tables.items()]
    for op in files + plan.pre + [op for i in plan.order for op in plan.mats[i].ops]:
        path = root / op.rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        with open(path, "wb") as f:
            f.write(op.make())
        os.utime(path, ns=(op.t, op.t))
    for d in plan.dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    return plan.summary


def write_atomic(path: Path, data: bytes) -> None:
    """Dagster IO manager: whole text to ``.tmp``, then os.replace (no fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_slowly(path: Path, data: bytes, delay: float) -> None:
    """Raw side write: in place, not atomic, so an early reader sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(delay)
        f.write(data[len(data) // 2 :])


def write_plain(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # like pandas to_csv / a stray editor: open('w'), write
        f.write(data)


def _live_op(root: Path, op: Op, delay: float) -> None:
    if op.kind in ("prompt", "parsed"):
        write_atomic(root / op.rel, op.make())
    elif op.kind == "raw":
        time.sleep(delay)  # the LLM call
        write_slowly(root / op.rel, op.make(), delay)
    else:
        write_plain(root / op.rel, op.make())


def run_pipeline(
    data_root: Path,
    *,
    combos: int = 4,
    seed: int = 0,
    writers: int = 10,
    raw_write_delay: float = 0.02,
    stop: threading.Event | None = None,
    quirks: bool = True,
) -> TreeSummary:
    """Replay the plan in real time on ``writers`` threads with the pipeline's writer patterns."""
    plan, root = make_plan(combos, seed, quirks=quirks), Path(data_root)
    _copy_templates(root, None)
    for rel, data in plan.tables.items():
        write_plain(root / rel, data)
    for op in plan.pre:
        _live_op(root, op, 0)
    for d in plan.dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    plan.summary.complete = _run_mats(root, plan, writers, raw_write_delay, stop)
    return plan.summary


def _run_mats(
    root: Path, plan: Plan, writers: int, delay: float, stop: threading.Event | None
) -> bool:
    cond, todo, done, errors = threading.Condition(), list(plan.order), set(), []

    def take() -> int | None:
        with cond:
            while todo and not errors and not (stop and stop.is_set()):
                for j, i in enumerate(todo):
                    if plan.mats[i].deps <= done:
                        return todo.pop(j)
                cond.wait(0.05)
            return None

    def worker() -> None:
        while (i := take()) is not None:
            try:
                for op in plan.mats[i].ops:
                    _live_op(root, op, delay)
            except BaseException as exc:  # surfaced in the caller's thread
                errors.append(exc)
            with cond:
                done.add(i)
                cond.notify_all()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, writers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return not todo


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    live = bool(argv) and argv[0] == "live"
    ap = argparse.ArgumentParser(prog="legacy_tree.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--combos", type=int, default=4 if live else 6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-quirks", dest="quirks", action="store_false")
    if live:
        ap.add_argument("--writers", type=int, default=10)
        ap.add_argument("--raw-write-delay", type=float, default=0.02)
    else:
        ap.add_argument("--files-target", type=int, default=None)
    a = ap.parse_args(argv[1:] if live else argv)
    t0 = time.perf_counter()
    if live:
        kw = {"writers": a.writers, "raw_write_delay": a.raw_write_delay}
        s = run_pipeline(a.out_dir, combos=a.combos, seed=a.seed, quirks=a.quirks, **kw)
    else:
        kw = {"files_target": a.files_target}
        s = build_tree(a.out_dir, combos=a.combos, seed=a.seed, quirks=a.quirks, **kw)
    out = {k: v for k, v in asdict(s).items() if k not in ("expected", "tasks", "scenarios")}
    out["scenarios"] = {k: len(v) for k, v in s.scenarios.items()}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

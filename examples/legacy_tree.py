"""Synthetic trees of the legacy "daydreaming" pipeline (see LEGACY_PIPELINE.md). Stdlib only.

One plan of "what the pipeline does", performed two ways:

* ``build_tree`` writes the finished tree at once and sets realistic mtimes (os.utime);
* ``run_pipeline`` replays it in real time with the pipeline's writer patterns (prompts and
  parsed: ``.tmp`` + ``os.replace``; raw: slow in-place writes) on ``writers`` threads.

Both give the same relative paths and bytes for the same seed and combos.

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
_SUFFIX = {"prompt": "prompts", "raw": "responses_raw", "parsed": "responses"}
_TOP = {"draft": "3_generation", "essay": "3_generation", "evaluation": "4_evaluation"}
FOLDERS = {s: {k: f"{top}/{s}_{v}" for k, v in _SUFFIX.items()} for s, top in _TOP.items()}
KINDS = tuple(_SUFFIX)
LINKS = {"prompt": "3_generation/links_prompts", "parsed": "3_generation/links_responses"}
EMPTY_DIR = "3_generation/draft_responses_raw/old_runs"
# draft template -> the essay templates it feeds (essay ids must not clash within a combo+model)
RECIPES = (
    ("deliberate-rolling-thread-v2", ("synthesis-theme-narrative-v19", "parsed-from-links-v1")),
    ("creative-synthesis-v7", ("creative-synthesis-v7",)),
    ("creative-synthesis-v2", ("synthesis-theme-narrative-v18",)),
)
GEN_MODELS = ("sonnet-4", "gemini_25_pro", "deepseek_r1_p", "gemini_2.5_flash", "qwen3-235b-a22b")
EVALS = (("novelty", "sonnet-4"), ("style-coherence-v3", "gemini_25_pro"))
COPY_PROMPT = b"COPY_MODE: no prompt needed"
_GEN = "generation_model generation_model_name"
TABLES = {  # stage -> (file, columns), exactly as in LEGACY_PIPELINE.md
    "draft": ("draft_generation_tasks", f"draft_task_id combo_id draft_template {_GEN}"),
    "essay": (
        "essay_generation_tasks",
        f"essay_task_id combo_id draft_template essay_template {_GEN} draft_task_id",
    ),
    "evaluation": (
        "evaluation_tasks",
        f"evaluation_task_id document_id stage origin file_path combo_id draft_template "
        f"essay_template {_GEN} draft_task_id essay_task_id source_asset source_dir "
        "evaluation_template evaluation_model evaluation_model_name parser",
    ),
}
WORDS = (  # noqa: SIM905
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
class Op:  # one file write; t is an offset from the materialisation's start until scheduled
    rel: str
    kind: str  # prompt | raw | parsed | tmp (left over, never renamed) | other
    t: int
    make: Callable[[], bytes]


@dataclass
class Mat:  # one materialisation: the files of one attempt, in write order
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
    parent: Task | None = None
    scenario: str = "normal"
    in_tables: bool = True
    ok_mat: int = -1
    parsed: Callable[[], bytes] | None = None  # the first successful parsed text
    downstream: set[int] = field(default_factory=set)


@dataclass
class Plan:
    mats: list[Mat]
    order: list[int]  # materialisations by planned start
    pre: list[Op]  # files that exist before the run (older trees, noise)
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
        return c[s : s + n].rsplit(" ", 1)[0]

    def prompt(self, key: str) -> bytes:
        rng = self.rng(key)
        concepts = ", ".join(rng.sample(WORDS[:40], 4))
        return f"Concepts: {concepts}\n\n{self.chunk(rng, rng.randint(3000, 12000))}\n".encode()

    def draft_raw(self, key: str, parser: str, ok: bool = True) -> str:
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

    def raw(self, key: str, parser: str, ok: bool = True) -> bytes:
        return self.draft_raw(key, parser, ok).encode()

    def parsed(self, key: str, parser: str) -> bytes:
        return parse_draft(self.draft_raw(key, parser), parser).encode()

    def essay(self, key: str, truncated: bool = False) -> bytes:
        rng = self.rng(key)
        text = f"# {' '.join(rng.sample(WORDS[:40], 3)).title()}\n\n"
        text += self.chunk(rng, rng.randint(4000, 15000)) + "\n"
        return (text[: int(len(text) * rng.uniform(0.6, 0.9))] if truncated else text).encode()

    def evaluation(self, key: str, cut: bool = False, poison: bool = False) -> bytes:
        rng = self.rng(key)
        text = f"**Assessment**\n\n{self.chunk(rng, rng.randint(1000, 6000))}\n\n"
        data = (text + f"SCORE: {rng.choice((3, 5, 6, 7, 7, 8, 9))}\n").encode()
        if poison:  # undecodable bytes inside, as seen once in a real tree
            data = (
                data[: len(data) // 2] + b"\xff\xfe\x00\xd8 \xc3\x28\x80 " + data[len(data) // 2 :]
            )
        return data[: len(data) // 3] if cut else data


def parse_draft(text: str, parser: str) -> str:
    """The pipeline's draft parsers (identity when the template has none)."""
    if parser == "essay_idea_last":
        s = text.index(">", text.rindex("<essay-idea")) + 1
        return text[s : text.index("</essay-idea>", s)].strip() + "\n"
    if parser == "essay_block":
        s = text.index("<essay>") + len("<essay>")
        return text[s : text.index("</essay>", s)].strip() + "\n"
    return text


class Planner:
    def __init__(self, seed: int, start_ns: int):
        self.rng, self.tx, self.t0 = random.Random(seed), Texts(seed), start_ns
        self.mats: list[Mat] = []
        self.pre: list[Op] = []
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
        for combo in map(self.combo_id, range(combos)):
            for model in self.rng.sample(GEN_MODELS, 2):
                for dtpl, etpls in RECIPES:
                    d = Task("draft", f"{combo}__{dtpl}__{model}", combo, dtpl, model)
                    r = self.rng.random()
                    d.scenario = "parse_fail" if DRAFT_PARSER[dtpl] and r < 0.08 else d.scenario
                    d.scenario = "remat" if r > 0.95 else d.scenario
                    d.in_tables = self.rng.random() > 0.003
                    drafts.append(d)
                    for et in etpls:
                        e = Task("essay", f"{combo}__{et}__{model}", combo, et, model, d)
                        e.scenario = "copy" if ESSAY_GEN[et] == "copy" else "llm"
                        if e.scenario == "llm" and self.rng.random() < 0.1:
                            e.scenario = "truncated"
                        essays.append(e)
        for target in [*essays, *(d for d in drafts if d.template == RECIPES[0][0])]:
            for tpl, model in EVALS if target.stage == "essay" else EVALS[:1]:
                v = Task("evaluation", f"{target.task}__{tpl}__{model}", target.combo, tpl, model)
                v.parent, v.scenario = target, "crashed" if self.rng.random() < 0.002 else "normal"
                evals.append(v)
        return drafts, essays, evals

    def force(self, tasks: list[Task], scenario: str, ok: Callable[[Task], bool]) -> None:
        """Make sure a scenario occurs at least once (tiny trees)."""
        if not any(t.scenario == scenario for t in tasks):
            self.rng.choice([t for t in tasks if ok(t)]).scenario = scenario

    def mat(self, t: Task, wave: int, deps: set[int], steps: list[tuple]) -> int:
        """Add a materialisation of ``t``; steps are (kind, maker, offset_ns)."""
        ops, rels = [], {}
        for kind, make, off in steps:
            fkind = "parsed" if kind == "tmp" else kind
            self.versions[(t.stage, t.task, fkind)] += 1
            n = self.versions[(t.stage, t.task, fkind)]
            rels[kind] = f"{FOLDERS[t.stage][fkind]}/{t.task}_v{n}.txt" + (".tmp" * (kind == "tmp"))
            ops.append(Op(rels[kind], kind, off, make))
        if "raw" in rels or "parsed" in rels:
            bad = "parse_error" if t.stage == "draft" and DRAFT_PARSER[t.template] else "gen_error"
            status = "ok" if "parsed" in rels else bad
            r = (rels.get(k) for k in KINDS)
            self.expected.append(Attempt(t.stage, t.task, *r, status))
        self.mats.append(Mat(ops, wave, deps))
        self.task_ids[t.stage].append(t.task)
        up = t.parent
        while up is not None:  # a re-materialised draft comes after everything built on it
            up.downstream.add(len(self.mats) - 1)
            up = up.parent
        return len(self.mats) - 1

    def prompt(self, t: Task, n: int) -> tuple:
        return ("prompt", partial(self.tx.prompt, f"{t.stage}|{t.task}|p{n}"), 0)

    def draft(self, d: Task, n: int, wave: int, deps: set[int], ok: bool = True) -> int:
        key, parser, raw_t = f"draft|{d.task}|r{n}", DRAFT_PARSER[d.template], self.sec(20, 120)
        steps = [self.prompt(d, n), ("raw", partial(self.tx.raw, key, parser, ok), raw_t)]
        if ok:
            parsed = partial(self.tx.parsed, key, parser)
            steps.append(("parsed", parsed, raw_t + self.sec(0.5, 3)))
            d.parsed = d.parsed or parsed
        i = self.mat(d, wave, deps, steps)
        d.ok_mat = i if ok and d.ok_mat < 0 else d.ok_mat
        return i

    def essay(self, e: Task) -> None:
        deps = {e.parent.ok_mat}
        if e.scenario == "copy":
            steps = [("prompt", partial(bytes, COPY_PROMPT), 0)]
            e.ok_mat = self.mat(e, 2, deps, [*steps, ("parsed", e.parent.parsed, self.sec(1, 4))])
            return
        n = 2 if e.scenario == "truncated" else 1
        if n == 2:
            bad = ("raw", partial(self.tx.essay, f"essay|{e.task}|r1", True), self.sec(30, 150))
            deps = {self.mat(e, 2, deps, [self.prompt(e, 1), bad])}
        text, raw_t = partial(self.tx.essay, f"essay|{e.task}|r{n}"), self.sec(30, 150)
        steps = [("raw", text, raw_t), ("parsed", text, raw_t + self.sec(0.2, 2))]
        e.ok_mat = self.mat(e, 1 + n, deps, [self.prompt(e, n), *steps])

    def evaluation(self, v: Task) -> None:
        cut, poison = v.scenario == "crashed", v.scenario == "undecodable"
        text = partial(self.tx.evaluation, f"evaluation|{v.task}", cut, poison)
        steps = [self.prompt(v, 1), ("tmp" if cut else "parsed", text, self.sec(10, 60))]
        self.mat(v, 4, {v.parent.ok_mat}, steps)
        if cut or poison:
            self.qpaths["leftover_tmp" if cut else "undecodable"].append(self.mats[-1].ops[-1].rel)

    def add_pre(self, rel: str, make: Callable[[], bytes], days_ago: float, kind: str = "other"):
        self.pre.append(Op(rel, kind, self.t0 - int(days_ago * 86400 * SEC), make))

    def old_files(self, drafts: list[Task]) -> None:
        """Older runs, per old combo: an unversioned legacy draft and a one-phase links draft."""
        for d in drafts:
            if d.combo.startswith("combo_v1_") or d.template != "creative-synthesis-v2":
                continue
            rel = f"{FOLDERS['draft']['parsed']}/{d.task}.txt"
            self.add_pre(rel, partial(self.tx.raw, f"legacy|{d.task}", ""), 20, "parsed")
            self.expected.append(Attempt("draft", d.task, None, None, rel, "ok"))
            links = f"{d.combo}__creative-synthesis-v10__{d.model}"
            p, r = (f"{LINKS[k]}/{links}_v1.txt" for k in ("prompt", "parsed"))
            self.add_pre(p, partial(self.tx.prompt, f"links|{links}"), 25, "prompt")
            self.add_pre(r, partial(self.tx.raw, f"links|{links}", ""), 24.99, "parsed")
            self.expected.append(Attempt("draft", links, p, None, r, "ok"))
            self.task_ids["draft"] += [d.task, links]
            self.scen["legacy_unversioned"].append(d.task)
            self.scen["links_one_phase"].append(links)

    def quirks(self, essay: Task) -> None:
        """--- quirks: things a real data root collects that are not pipeline output ---"""
        dr, er = FOLDERS["draft"]["parsed"], FOLDERS["essay"]["parsed"]
        for name, rel, data in (
            ("ds_store", f"{dr}/.DS_Store", b"\x00\x00\x00\x01Bud1\x00\x00\x10\x00"),
            ("notes", f"{er}/notes.md", b"# notes\n\nrerun the truncated essays\n"),
            ("editor_backup", f"{er}/{essay.task}_v1.txt~", b"an older edit of this essay\n"),
        ):
            self.add_pre(rel, partial(bytes, data), 1)
            self.qpaths[name].append(rel)
        self.qpaths["empty_dir"].append(EMPTY_DIR)
        u = Task("draft", "combo_v1_café_日本語__creative-synthesis-v2__sonnet-4", "", "", "")
        u.template, u.in_tables = "creative-synthesis-v2", False
        self.draft(u, 1, 0, set())
        self.scen["unicode_task_id"].append(u.task)
        self.qpaths["unicode"] += [op.rel for op in self.mats[-1].ops]

    def schedule(self) -> list[int]:
        """Give every write its mtime; return the materialisations in start order."""
        cursor, end = self.t0, {}
        for i in sorted(range(len(self.mats)), key=lambda i: (self.mats[i].wave, i)):
            m = self.mats[i]
            cursor += self.sec(2, 8)
            start = max([cursor] + [end[d] + self.sec(1, 5) for d in m.deps])
            for op in m.ops:
                op.t += start
            end[i] = m.ops[-1].t
        return sorted(range(len(self.mats)), key=lambda i: (self.mats[i].ops[0].t, i))


def _row(v: Task) -> dict[str, str]:
    """One row of a task table (any stage)."""
    t = v.parent if v.stage == "evaluation" else v  # the generated document
    d = t.parent or t  # its draft
    row = {f"{v.stage}_task_id": v.task, "combo_id": t.combo, "draft_template": d.template}
    row |= {"generation_model": t.model, "generation_model_name": MODEL_NAME[t.model]}
    if v.stage == "essay":
        return row | {"essay_template": v.template, "draft_task_id": d.task}
    if v.stage == "draft":
        return row
    kind = t.stage
    row |= {"document_id": t.task, "stage": "essay2p" if kind == "essay" else "essay1p"}
    row |= {"origin": kind, "file_path": f"data/{FOLDERS[kind]['parsed']}/{t.task}_v1.txt"}
    row |= {"essay_template": t.template if kind == "essay" else "", "draft_task_id": d.task}
    row |= {"essay_task_id": t.task if kind == "essay" else "", "source_dir": f"{kind}_responses"}
    row |= {"source_asset": f"{kind}_response", "evaluation_template": v.template}
    row |= {"evaluation_model": v.model, "evaluation_model_name": MODEL_NAME[v.model]}
    return row | {"parser": EVAL_PARSER[v.template]}


def _tables(tasks: list[Task]) -> dict[str, bytes]:
    out = {}
    for stage, (name, columns) in TABLES.items():
        buf = io.StringIO()
        w = csv.DictWriter(buf, columns.split(), lineterminator="\n")  # like pandas to_csv
        w.writeheader()
        w.writerows(_row(t) for t in tasks if t.stage == stage and t.in_tables)
        out[f"2_tasks/{name}.csv"] = buf.getvalue().encode()
    return out


def make_plan(combos: int = 6, seed: int = 0, start: datetime = START, quirks: bool = True) -> Plan:
    """Decide every file of the tree (contents are produced lazily by ``Op.make``)."""
    if combos < 1:
        raise ValueError("combos must be >= 1")
    p = Planner(seed, int(start.timestamp()) * SEC)
    drafts, essays, evals = p.tasks(combos)
    _decide(p, drafts, essays, evals, quirks)
    for d in drafts:
        first = p.draft(d, 1, 0, set(), ok=d.scenario != "parse_fail")
        if d.scenario == "parse_fail":  # retried later: prompt v2, raw v2, parsed v1
            p.draft(d, 2, 1, {first})
    for e in essays:
        p.essay(e)
    for v in evals:
        p.evaluation(v)
    for d in (d for d in drafts if d.scenario == "remat"):
        p.draft(d, 2, 5, {d.ok_mat} | d.downstream)
    if quirks:
        p.quirks(next(e for e in essays if e.scenario == "llm"))
    order, tables = p.schedule(), _tables([*drafts, *essays, *evals])
    return Plan(p.mats, order, p.pre, tables, p.t0 - 120 * SEC, _summary(p, tables, drafts))


def _decide(p: Planner, drafts: list[Task], essays: list[Task], evals: list[Task], quirks: bool):
    """Settle the scenarios: each at least once, quirks only when asked for."""
    p.force(drafts, "parse_fail", lambda t: t.scenario == "normal" and DRAFT_PARSER[t.template])
    p.force(drafts, "remat", lambda t: t.scenario == "normal")
    p.force(essays, "truncated", lambda t: t.scenario == "llm")
    if quirks:
        p.force(evals, "crashed", lambda t: t.scenario == "normal")
        p.force(
            evals, "undecodable", lambda t: t.scenario == "normal" and t.parent.stage == "essay"
        )
        if all(d.in_tables for d in drafts):
            p.rng.choice([d for d in drafts if d.scenario == "normal"]).in_tables = False
        p.old_files(drafts)
    for t in [*drafts, *essays, *evals]:
        if not quirks:  # a clean tree: every task in the tables, no crashed evaluation
            t.in_tables, t.scenario = True, t.scenario if t.stage != "evaluation" else "normal"
        p.scen[f"{t.stage}_{t.scenario}"].append(t.task)
        if t.stage == "evaluation":
            p.scen["evaluation_of_" + t.parent.stage].append(t.task)
        if not t.in_tables:
            p.scen["missing_from_tables"].append(t.task)


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
    """Write the finished tree quickly (plain writes) and give each file a realistic mtime."""
    if files_target:
        combos = combos_for_files(files_target, seed=seed, quirks=quirks)
    plan, root, made = make_plan(combos, seed, start, quirks), Path(data_root), set()
    _copy_templates(root, plan.table_t - 3 * 86400 * SEC)
    tables = [Op(rel, "other", plan.table_t, partial(bytes, b)) for rel, b in plan.tables.items()]
    for op in tables + plan.pre + [op for i in plan.order for op in plan.mats[i].ops]:
        path = root / op.rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        with open(path, "wb") as f:
            f.write(op.make())
        os.utime(path, ns=(op.t, op.t))
    if quirks:
        (root / EMPTY_DIR).mkdir(parents=True, exist_ok=True)
    return plan.summary


def write_atomic(path: Path, data: bytes) -> None:
    """Dagster IO manager: the whole text to ``<name>.tmp``, then os.replace (no fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_slowly(path: Path, data: bytes, delay: float) -> None:
    """Raw side write, in place and not atomic: an early reader sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(delay)
        f.write(data[len(data) // 2 :])


def _live_op(root: Path, op: Op, delay: float) -> None:
    if op.kind in ("prompt", "parsed"):
        write_atomic(root / op.rel, op.make())
    elif op.kind == "raw":
        time.sleep(delay)  # the LLM call
        write_slowly(root / op.rel, op.make(), delay)
    else:  # pandas to_csv, an editor, a crash: open('w') in place, write, close
        (root / op.rel).parent.mkdir(parents=True, exist_ok=True)
        (root / op.rel).write_bytes(op.make())


def run_pipeline(
    data_root: Path,
    *,
    combos: int = 4,
    seed: int = 0,
    writers: int = 10,
    raw_write_delay: float = 0.02,
    stop: threading.Event | None = None,
    quirks: bool = True,
    before_write: Callable[[Op], None] | None = None,
) -> TreeSummary:
    """Replay the plan in real time on ``writers`` threads with the pipeline's writer patterns.

    ``before_write(op)``, when given, is called in the writing thread just before each file of
    the replay is written (task tables and older files included): it may sleep to pace the
    replay (examples/demo.py) or count files.
    """
    plan, root = make_plan(combos, seed, quirks=quirks), Path(data_root)
    _copy_templates(root, None)
    for op in [Op(rel, "other", 0, partial(bytes, b)) for rel, b in plan.tables.items()] + plan.pre:
        if before_write is not None:
            before_write(op)
        _live_op(root, op, 0)
    if quirks:
        (root / EMPTY_DIR).mkdir(parents=True, exist_ok=True)
    plan.summary.complete = _run_mats(root, plan, writers, raw_write_delay, stop, before_write)
    return plan.summary


def _run_mats(
    root: Path,
    plan: Plan,
    writers: int,
    delay: float,
    stop: threading.Event | None,
    before_write: Callable[[Op], None] | None = None,
):
    """Run materialisations in planned order as soon as their dependencies are done."""
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
                    if before_write is not None:
                        before_write(op)
                    _live_op(root, op, delay)
            except BaseException as exc:  # re-raised in the caller's thread
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
    live = argv[:1] == ["live"]
    ap = argparse.ArgumentParser(prog="legacy_tree.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--combos", type=int, default=4 if live else 6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-quirks", dest="quirks", action="store_false")
    ap.add_argument("--files-target", type=int, default=None, help="build mode only")
    ap.add_argument("--writers", type=int, default=10, help="live mode only")
    ap.add_argument("--raw-write-delay", type=float, default=0.02, help="live mode only")
    a, t0 = ap.parse_args(argv[live:]), time.perf_counter()
    kw = {"combos": a.combos, "seed": a.seed, "quirks": a.quirks}
    if live:
        s = run_pipeline(a.out_dir, writers=a.writers, raw_write_delay=a.raw_write_delay, **kw)
    else:
        s = build_tree(a.out_dir, files_target=a.files_target, **kw)
    out = {k: v for k, v in asdict(s).items() if k not in ("expected", "tasks", "scenarios")}
    out["scenarios"] = {k: len(v) for k, v in s.scenarios.items()}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``bench/reader.py``'s index: rows shaped like the legacy pipeline's (the templates and
models of ``examples/legacy_tree.py``), written through docwatch's own store API in big
transactions, with what the reader should find for each task."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from livekit import log

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples"))
import legacy_tree  # noqa: E402  (the pipeline's templates, models and folders)

BUILD_VERSION = 1  # bump when the generated rows change (--reuse then rebuilds)
CHUNK = 20_000  # documents per transaction
STATUSES_LAST = (("ok", 0.90), ("parse_error", 0.04), ("gen_error", 0.03), ("pending", 0.03))
STATUSES_EARLIER = (
    ("ok", 0.60),
    ("parse_error", 0.12),
    ("gen_error", 0.08),
    ("superseded", 0.15),
    ("pending", 0.05),
)
ATTEMPTS = (1, 2, 3, 3, 4, 5)  # per task: mean 3
START_NS = int(datetime(2025, 9, 1, tzinfo=UTC).timestamp()) * 1_000_000_000


# ---------------------------------------------------------------- the rows


def combo_tasks(i: int, rng: random.Random):
    """(stage, task_id, template, model, (parent stage, parent task) or None) of one combo, as
    the pipeline makes
    them: per generation model, each draft recipe's draft and essays, evaluations of every
    essay and of the first recipe's draft."""
    combo = f"combo_v1_{random.Random(f'combo:{i}').getrandbits(48):012x}"
    for model in rng.sample(legacy_tree.GEN_MODELS, 2):
        for dtpl, etpls in legacy_tree.RECIPES:
            draft = f"{combo}__{dtpl}__{model}"
            yield "draft", draft, dtpl, model, None
            essays = [(f"{combo}__{et}__{model}", et) for et in etpls]
            for essay, et in essays:
                yield "essay", essay, et, model, ("draft", draft)
            evals = [(("essay", e), legacy_tree.EVALS) for e, _ in essays]
            if dtpl == legacy_tree.RECIPES[0][0]:
                evals.append((("draft", draft), legacy_tree.EVALS[:1]))
            for target, kinds in evals:
                for etpl, emodel in kinds:
                    yield "evaluation", f"{target[1]}__{etpl}__{emodel}", etpl, emodel, target


def draw(rng: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    x = rng.random()
    for name, share in table:
        x -= share
        if x < 0:
            return name
    return table[-1][0]


def generate(n_docs: int, seed: int):
    """Yield (document row, attempt facts, sources) until ``n_docs`` documents."""
    from docwatch.core.clock import iso_utc
    from docwatch.core.ids import doc_id_for, logical_key_for
    from docwatch.core.model import Source
    from docwatch.store.schema import ATTEMPT_COLUMNS, DOCUMENT_COLUMNS

    rng = random.Random(seed)
    t = START_NS
    made = 0
    last_ok: dict[tuple, str] = {}  # (stage, task) -> its newest ok doc_id (for children)
    folders = legacy_tree.FOLDERS
    for combo in range(1 << 40):
        for stage, task, tpl, model, parent in combo_tasks(combo, rng):
            n = rng.choice(ATTEMPTS)
            legacy = rng.random() < 0.02
            for k in range(n):
                version = 0 if legacy and k == 0 else k + (not legacy)
                suffix = f"_v{version}" if version else ""
                status = draw(rng, STATUSES_LAST if k == n - 1 else STATUSES_EARLIER)
                t += rng.randint(1_000_000_000, 30_000_000_000)
                rels = {k: f"{folders[stage][k]}/{task}{suffix}.txt" for k in legacy_tree.KINDS}
                if status not in ("ok", "superseded"):
                    rels["parsed"] = None
                if stage == "evaluation":
                    rels["raw"] = None  # evaluations: prompt and parsed only
                    if rels["parsed"] is None:
                        rels["parsed"] = f"{folders[stage]['parsed']}/{task}{suffix}.txt"
                sizes = {kind: rng.randint(2_000, 15_000) for kind in rels}
                shas = {
                    kind: hashlib.sha256(f"{seed}|{rel}|{t}".encode()).hexdigest()
                    for kind, rel in rels.items()
                    if rel
                }
                primary = "raw" if rels["raw"] else "parsed"
                doc_id = doc_id_for(stage, task, rels[primary], shas[primary])
                parent_doc = last_ok.get(parent) if parent else None
                anchor = task if stage == "draft" else parent_doc or f"unlinked:{task}"
                row = dict.fromkeys(DOCUMENT_COLUMNS)
                row |= {
                    "doc_id": doc_id,
                    "logical_key_id": logical_key_for(stage, anchor, tpl, model),
                    "stage": stage,
                    "task_id": task,
                    "parent_doc_id": parent_doc,
                    "template_id": tpl,
                    "model_id": model,
                    "run_id": "bench-reader",
                    "prompt_path": rels["prompt"],
                    "parser": None,
                    "status": status,
                    "created_at": iso_utc(t),
                    "doc_dir": f"{stage}/{doc_id}",
                    "raw_chars": sizes["raw"] if rels["raw"] else None,
                    "parsed_chars": sizes["parsed"] if rels["parsed"] else None,
                    "meta_small": {"sources": rels, "version": version},
                }
                attempt = dict.fromkeys(ATTEMPT_COLUMNS)
                attempt |= {
                    "doc_id": doc_id,
                    "version": version,
                    "created_at_ns": t,
                    "parent_stage": parent[0] if parent else None,
                    "parent_task_id": parent[1] if parent else None,
                }
                for kind in ("raw", "parsed", "prompt"):
                    if rels[kind]:
                        attempt[f"{kind}_key"] = f"{shas[kind]}:{rels[kind]}"
                sources = [
                    Source(stage, kind, rel, task, version, t, sizes[kind], shas[kind])
                    for kind, rel in rels.items()
                    if rel
                ]
                if status == "ok":
                    last_ok[(stage, task)] = doc_id
                yield row, attempt, sources
                made += 1
                if made >= n_docs:
                    return


# ---------------------------------------------------------------- building the index


def build(db: Path | None, n_docs: int, seed: int, with_sources: bool) -> tuple[dict, dict]:
    """Write the rows (when ``db`` is given) and return what the reader should find: (stage,
    task) -> the doc_id of its latest ok document, or None; and the build's counts."""
    from docwatch.store.sqlite import open_sqlite

    index = open_sqlite(db) if db is not None else None
    if index is not None:  # this building connection only: the indexes outgrow the default
        index.con.execute("PRAGMA cache_size = -262144")  # 256 MiB of page cache
    expected: dict[tuple[str, str], str | None] = {}
    counts = {"documents": 0, "sources": 0, "statuses": {}}
    rows: list = []
    t0 = time.perf_counter()

    def flush() -> None:
        if index is None or not rows:
            return
        with index.transaction():
            for row, attempt, _ in rows:
                index.put_document(row, attempt)
            if with_sources:
                index.put_sources([s for _, _, srcs in rows for s in srcs])
        rows.clear()

    try:
        for row, attempt, sources in generate(n_docs, seed):
            key = (row["stage"], row["task_id"])
            if row["status"] == "ok":
                expected[key] = row["doc_id"]
            else:
                expected.setdefault(key, None)
            counts["documents"] += 1
            counts["sources"] += len(sources) if with_sources else 0
            st = counts["statuses"]
            st[row["status"]] = st.get(row["status"], 0) + 1
            rows.append((row, attempt, sources))
            if len(rows) >= CHUNK:
                flush()
                if index is not None and counts["documents"] % (10 * CHUNK) == 0:
                    rate = counts["documents"] / (time.perf_counter() - t0)
                    log(f"    {counts['documents']:,} documents ({rate:,.0f}/s)")
        flush()
        if index is not None:
            index.set_state("bench_reader", json.dumps(build_params(n_docs, seed, with_sources)))
    finally:
        if index is not None:
            index.close()
    counts["tasks"] = len(expected)
    counts["tasks_with_ok"] = sum(v is not None for v in expected.values())
    counts["stages"] = {s: sum(k[0] == s for k in expected) for s in legacy_tree.FOLDERS}
    counts["seconds"] = time.perf_counter() - t0
    return expected, counts


def build_params(n_docs: int, seed: int, with_sources: bool) -> dict:
    return {"docs": n_docs, "seed": seed, "sources": with_sources, "version": BUILD_VERSION}


def built_with(db: Path) -> dict | None:
    """The parameters an existing bench index was built with (None: none, or unreadable)."""
    if not db.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT value FROM state WHERE key = 'bench_reader'").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return json.loads(row[0]) if row else None


def index_counts(db: Path) -> dict:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        one = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "documents": one("SELECT count(*) FROM documents"),
            "attempts": one("SELECT count(*) FROM attempts"),
            "sources": one("SELECT count(*) FROM sources"),
            "page_size": one("PRAGMA page_size"),
            "pages": one("PRAGMA page_count"),
        }
    finally:
        con.close()

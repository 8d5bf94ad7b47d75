"""Issue 10's live burst for ``bench/live.py``: a pipeline (examples/legacy_tree.py's plan)
written by 10 threads into a daemon with docwatch's default settings; close→visible per file,
the daemon's batches, and checks that nothing was lost (see ``bench/live.py``'s docstring)."""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from docwatch.core.clock import parse_iso
from host import rmtree
from livekit import (
    WRITERS,
    BenchFailed,
    Daemon,
    Poller,
    fmt_ms,
    lat_stats,
    log,
    machine_cpu_s,
    pct,
    proc_cpu_s,
    proc_user_sys_s,
    self_cpu_s,
    spread,
)
from livekit import (
    median_range as mr,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples"))
import legacy_tree  # noqa: E402  (the pipeline's plans and writers)

BURST_PAUSE_SHARE = 0.2  # raws that pause mid-write
BURST_PAUSE_S = 0.1
BURST_GAP_S = 0.020  # a random 0–20 ms gap before each file
BURST_TARGET_P50_MS, BURST_TARGET_P99_MS = 20.0, 100.0


@dataclass
class BurstFile:
    rel: str
    kind: str  # prompt | raw | parsed
    mat: int  # the materialisation (one attempt's files) it belongs to
    paired: bool  # a raw whose parsed file follows: visible = its document is ok
    pause: bool  # a raw that pauses mid-write


def burst_plan(combos: int, seed: int) -> tuple[legacy_tree.Plan, list[BurstFile]]:
    """The pipeline's plan (drafts, essays, evaluations; no quirks: every file is pipeline
    output) and its files in planned order."""
    plan = legacy_tree.make_plan(combos, seed, quirks=False)
    files = []
    for i in plan.order:
        kinds = {op.kind for op in plan.mats[i].ops}
        for op in plan.mats[i].ops:
            raw = op.kind == "raw"
            draw = random.Random(f"{seed}|pause|{op.rel}").random()
            files.append(
                BurstFile(
                    op.rel, op.kind, i, raw and "parsed" in kinds, raw and draw < BURST_PAUSE_SHARE
                )
            )
    return plan, files


def run_burst_writers(
    root: Path, plan: legacy_tree.Plan, files: list[BurstFile], seed: int, writers: int = WRITERS
) -> tuple[float, dict[str, float]]:
    """The pipeline on ``writers`` threads: each takes the next attempt (in planned order)
    whose dependencies are written, and writes its files in order, each after a random 0–20 ms
    gap: the prompt (.tmp + os.replace), the raw in place (20% pause 0.1 s halfway), the parsed
    file (.tmp + os.replace); folders are made as needed (legacy_tree's writers).  Returns the
    start time and each file's time.time() right after its close or rename."""
    info = {f.rel: f for f in files}
    closed: dict[str, float] = {}
    cond, todo, done, errors = threading.Condition(), list(plan.order), set(), []
    go = threading.Event()

    def take() -> int | None:
        with cond:
            while todo and not errors:
                for j, i in enumerate(todo):
                    if plan.mats[i].deps <= done:
                        return todo.pop(j)
                cond.wait(0.05)
            return None

    def work(k: int) -> None:
        rng = random.Random(f"{seed}|writer|{k}")
        go.wait()
        while (i := take()) is not None:
            try:
                for op in plan.mats[i].ops:
                    data = op.make()
                    time.sleep(rng.uniform(0, BURST_GAP_S))
                    if op.kind == "raw":
                        delay = BURST_PAUSE_S if info[op.rel].pause else 0.0
                        legacy_tree.write_slowly(root / op.rel, data, delay)
                    else:
                        legacy_tree.write_atomic(root / op.rel, data)
                    closed[op.rel] = time.time()
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                errors.append(exc)
            with cond:
                done.add(i)
                cond.notify_all()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    start = time.time()
    go.set()
    for t in threads:
        t.join()
    if errors:
        raise BenchFailed(f"a burst writer failed: {errors[0]!r}")
    return start, closed


def burst_key(f: BurstFile) -> str:
    """What the poller reports when the file counts as visible."""
    return f"ok:{f.rel}" if f.paired else f.rel


def ledger_batches(db: Path, closed: dict[str, float]) -> dict:
    """The daemon's group commits, from the ledger: every source a commit records gets that
    commit's one ``ingested_at`` (and keeps it: a known source is never re-stamped), so the
    burst's files grouped by ``ingested_at`` are the batches, in commit order.  ``commit_ms``:
    each file's close → its commit (``ingested_at``, stamped as the commit begins): the
    latency without the poller's share."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT ingested_at, relpath FROM sources").fetchall()
    finally:
        con.close()
    sizes = Counter(at for at, rel in rows if rel in closed)
    stamps = sorted(sizes)
    secs = [parse_iso(s) / 1e9 for s in stamps]  # docwatch's own timestamp format
    gaps = [1e3 * (b - a) for a, b in zip(secs, secs[1:], strict=False)]
    at = dict(zip(stamps, secs, strict=True))
    commit_ms = [1e3 * (at[s] - closed[rel]) for s, rel in rows if rel in closed]
    ordered = [sizes[s] for s in stamps]
    v = sorted(ordered)
    return {
        "batches": len(ordered),
        "size_p50": pct(v, 50),
        "size_p90": pct(v, 90),
        "size_max": v[-1] if v else None,
        "largest_at": ordered.index(v[-1]) + 1 if v else None,
        "commit_gap_max_ms": max(gaps) if gaps else None,
        "commit_ms": lat_stats(commit_ms),
        "sizes": ordered,
        "commit_gaps_ms": [round(g, 1) for g in gaps],
    }


def check_burst(db: Path, files: list[BurstFile], expected: list) -> tuple[dict, list[str]]:
    """Every file in the ledger once; one live document per attempt the plan expects, with
    the plan's status (a raw-only attempt has a newer one, so it is an error at once)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        ledger = Counter(r for (r,) in con.execute("SELECT relpath FROM sources"))
        docs = con.execute(
            "SELECT d.status, a.raw_key, a.parsed_key FROM documents d JOIN attempts a"
            " USING (doc_id)"
        ).fetchall()
    finally:
        con.close()
    live = [d for d in docs if d[0] != "superseded"]
    status = {(raw or parsed).partition(":")[2]: st for st, raw, parsed in live}
    missing = [f.rel for f in files if ledger[f.rel] != 1]
    wrong = [
        (e.raw or e.parsed, e.status, status.get(e.raw or e.parsed))
        for e in expected
        if status.get(e.raw or e.parsed) != e.status
    ]
    counts = {
        "files": len(files),
        "ledger_missing_or_twice": len(missing),
        "documents_expected": len(expected),
        "documents_live": len(live),
        "documents_superseded": len(docs) - len(live),
        "wrong_status_or_missing": len(wrong),
        "statuses": dict(Counter(d[0] for d in docs)),
    }
    bad = []
    if missing:
        bad.append(f"burst: {len(missing)} files not in the ledger once, e.g. {missing[0]}")
    if len(live) != len(expected):
        bad.append(f"burst: {len(live)} live documents, the plan expects {len(expected)}")
    if wrong:
        rel, want, got = wrong[0]
        bad.append(
            f"burst: {len(wrong)} attempts without their expected document, e.g. {rel}: "
            f"expected {want!r}, found {got!r}"
        )
    return counts, bad


def burst_round(r: int, a: argparse.Namespace, p: dict, work: Path, logs: Path) -> dict:
    """Issue 10's live burst on a fresh daemon with docwatch's default settings: an empty data
    root (only the templates and task tables, which are not stage folders), then the pipeline
    on 10 writer threads; the stage folders appear during the burst (before it with
    ``--burst-folders-first``)."""
    base = work / f"burst{r}"
    rmtree(base)
    data = base / "data"
    plan, files = burst_plan(p["burst_combos"], a.burst_seed)
    for src in sorted(legacy_tree.TEMPLATES.glob("*.csv")):
        (data / "1_raw").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, data / "1_raw" / src.name)
    for rel, body in plan.tables.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(body)
    if a.burst_folders_first:  # the folders a running pipeline would have made already
        for rel in {str(Path(f.rel).parent) for f in files}:
            (data / rel).mkdir(parents=True, exist_ok=True)
    config = base / "burst.toml"
    config.write_text(
        "# bench/live.py burst: docwatch's default settings\n"
        + "".join(f"{kv}\n" for kv in a.burst_set)
    )
    daemon = Daemon(data, config, logs / f"watch-burst-r{r}.log")
    poller = None
    res: dict = {
        "round": r,
        "combos": p["burst_combos"],
        "files": len(files),
        "folders_first": a.burst_folders_first,
    }
    try:
        res["ready_s"] = daemon.wait_ready()
        poller = Poller(daemon.db, base / "seen.tsv", a.burst_poll_ms / 1e3, ok=True)
        time.sleep(0.3)  # the poller is polling
        t0, busy0, steal0 = time.perf_counter(), *machine_cpu_s()
        (user0, sys0), self0, over0 = proc_user_sys_s(daemon.pid), self_cpu_s(), daemon.overflows()
        poll0 = proc_cpu_s(poller.proc.pid)
        start, closed = run_burst_writers(data, plan, files, a.burst_seed)
        keys = [burst_key(f) for f in files] + [f.rel for f in files]
        poller.wait_for(keys, 60 + len(files) / 200, daemon)
        user1, sys1 = proc_user_sys_s(daemon.pid)
        cpu = user1 - user0 + sys1 - sys0
        t1, busy1, steal1 = time.perf_counter(), *machine_cpu_s()
        ours = cpu + (self_cpu_s() - self0) + proc_cpu_s(poller.proc.pid) - poll0
        res["machine"] = {
            "others_cores": max(0.0, busy1 - busy0 - ours) / (t1 - t0),
            "steal_cores": (steal1 - steal0) / (t1 - t0),
        }
        res["poller"] = poller.stop()
        seen = poller.seen
        poller = None
        lat: dict[str, list[float]] = {"all": [], "prompt": [], "raw": [], "parsed": []}
        raw_row: list[float] = []
        for f in files:
            c = closed[f.rel]
            if (key := burst_key(f)) in seen:
                lat["all"].append((seen[key] - c) * 1e3)
                lat[f.kind].append((seen[key] - c) * 1e3)
            if f.kind == "raw" and f.rel in seen:
                raw_row.append((seen[f.rel] - c) * 1e3)
        waits = [((seen[k] - closed[f.rel]) * 1e3, f) for f in files if (k := burst_key(f)) in seen]
        waits.sort(key=lambda t: -t[0])
        lost = [f.rel for f in files if burst_key(f) not in seen]
        visible = [seen[burst_key(f)] for f in files if burst_key(f) in seen]
        last_close = max(closed.values())
        res |= {
            "write_s": last_close - start,
            "writers_rate": len(files) / (last_close - start),
            "lost": len(lost),
            "lost_examples": lost[:5],
            "throughput": len(visible) / (max(visible) - start) if visible else None,
            "drain_s": max(visible) - last_close if visible else None,
            "latency_ms": lat_stats(lat["all"]),
            "latency_prompt_ms": lat_stats(lat["prompt"]),
            "latency_raw_ok_ms": lat_stats(lat["raw"]),
            "latency_parsed_ms": lat_stats(lat["parsed"]),
            "latency_raw_row_ms": lat_stats(raw_row),
            "kinds": dict(Counter(f.kind for f in files)),
            "paused_raws": sum(f.pause for f in files),
            "daemon_cpu_s": cpu,
            "daemon_cpu_ms_per_file": 1e3 * cpu / len(files),
            "daemon_user_ms_per_file": 1e3 * (user1 - user0) / len(files),
            "daemon_system_ms_per_file": 1e3 * (sys1 - sys0) / len(files),
            "overflow_rescans": daemon.overflows() - over0,
            "batches": ledger_batches(daemon.db, closed),
            "slowest": [  # named, with when they were closed: what sets the tail
                {"rel": f.rel, "kind": f.kind, "closed_s": closed[f.rel] - start, "ms": ms}
                for ms, f in waits[:10]
            ],
            "samples_ms": {k: [round(x, 2) for x in v] for k, v in lat.items() if k != "all"},
        }
        rc, secs = daemon.stop()
        res["stop"] = {"exit_code": rc, "seconds": secs}
        res["index"], res["checks"] = check_burst(daemon.db, files, plan.summary.expected)
        if res["lost"]:
            res["checks"].append(f"burst: {res['lost']} files never visible, e.g. {lost[0]}")
        if rc != 0:
            res["checks"].append(f"burst: exit code after SIGTERM was {rc}, expected 0")
        text = daemon.log_path.read_text(errors="replace")
        res["log_warnings"] = sum(("WARNING" in ln or "ERROR" in ln) for ln in text.splitlines())
        res["log_retired"] = text.count(": its files now belong to a newer attempt")
    finally:
        if poller is not None:
            poller.stop()
        daemon.kill()
    lt, b = res["latency_ms"], res["batches"]
    log(
        f"    burst        {len(files):6d} files  written {res['writers_rate']:6.0f}/s  "
        f"visible {res['throughput'] or 0:6.0f}/s  lost {res['lost']}  p50 {fmt_ms(lt['p50'])}  "
        f"p99 {fmt_ms(lt['p99'])}  max {fmt_ms(lt['max'])} ms  {b['batches']} batches "
        f"(max {b['size_max']} files)"
    )
    return res


def summarise_burst(bursts: list[dict]) -> dict:
    def each(fn) -> dict:
        return spread([fn(b) for b in bursts])

    pooled = {
        k: lat_stats([x for b in bursts for x in b["samples_ms"][k]])
        for k in ("prompt", "raw", "parsed")
    }
    pooled["all"] = lat_stats([x for b in bursts for v in b["samples_ms"].values() for x in v])
    return {
        "combos": bursts[0]["combos"],
        "folders_first": bursts[0]["folders_first"],
        "files": bursts[0]["files"],
        "kinds": bursts[0]["kinds"],
        "paused_raws": bursts[0]["paused_raws"],
        "writers_rate": each(lambda b: b["writers_rate"]),
        "write_s": each(lambda b: b["write_s"]),
        "throughput": each(lambda b: b["throughput"]),
        "drain_s": each(lambda b: b["drain_s"]),
        **{f"{q}": each(lambda b, q=q: b["latency_ms"][q]) for q in ("p50", "p90", "p99", "max")},
        "prompt_p99": each(lambda b: b["latency_prompt_ms"]["p99"]),
        "raw_ok_p99": each(lambda b: b["latency_raw_ok_ms"]["p99"]),
        "parsed_p99": each(lambda b: b["latency_parsed_ms"]["p99"]),
        "raw_row_p99": each(lambda b: b["latency_raw_row_ms"]["p99"]),
        "pooled": pooled,
        "batches": each(lambda b: b["batches"]["batches"]),
        "batch_p50": each(lambda b: b["batches"]["size_p50"]),
        "batch_max": each(lambda b: b["batches"]["size_max"]),
        "commit_gap_max_ms": each(lambda b: b["batches"]["commit_gap_max_ms"]),
        "commit_p50": each(lambda b: b["batches"]["commit_ms"]["p50"]),
        "commit_p99": each(lambda b: b["batches"]["commit_ms"]["p99"]),
        "cpu_ms_per_file": each(lambda b: b["daemon_cpu_ms_per_file"]),
        "user_ms_per_file": each(lambda b: b["daemon_user_ms_per_file"]),
        "system_ms_per_file": each(lambda b: b["daemon_system_ms_per_file"]),
        "lost": sum(b["lost"] for b in bursts),
        "overflow_rescans": [b["overflow_rescans"] for b in bursts],
        "log_retired": [b["log_retired"] for b in bursts],
        "others_cores": [round(b["machine"]["others_cores"], 2) for b in bursts],
        "slowest": [b["slowest"][:3] for b in bursts],
    }


def burst_table(s: dict, poll_ms: float, settings: list[str]) -> list[str]:
    def met(d: dict, target: float) -> str:
        return "met" if d["median"] is not None and d["median"] <= target else "NOT met"

    k, po, paused = s["kinds"], s["pooled"]["all"], s["paused_raws"]
    shown = ", ".join(settings) or "defaults"
    made = "made before it" if s.get("folders_first") else "made during it"
    return [
        f"burst (issue 10): a {s['combos']}-combo pipeline, {s['files']} files "
        f"({k.get('prompt', 0)} prompts, {k.get('raw', 0)} raws of which {paused} pause "
        f"0.1 s, {k.get('parsed', 0)} parsed), {WRITERS} writer threads, 0–20 ms gaps, stage "
        f"folders {made}; daemon settings: {shown}; poller every {poll_ms:g} ms",
        f"  writers {mr(s['writers_rate'])} files/s (done in {mr(s['write_s'], '{:.2f}')} s); "
        f"visible {mr(s['throughput'])} files/s; last visible {mr(s['drain_s'], '{:.2f}')} s "
        f"after the last write; lost {s['lost']}; daemon CPU "
        f"{mr(s['cpu_ms_per_file'], '{:.2f}')} ms/file (user "
        f"{mr(s['user_ms_per_file'], '{:.2f}')}, system {mr(s['system_ms_per_file'], '{:.2f}')})",
        f"  close→visible ms (raw: its document ok): p50 {mr(s['p50'])}, p90 {mr(s['p90'])}, "
        f"p99 {mr(s['p99'])}, max {mr(s['max'])}; pooled p50 {po['p50'] or 0:.0f}, p99 "
        f"{po['p99'] or 0:.0f}",
        f"  p99 by kind: prompt {mr(s['prompt_p99'])}, raw ok {mr(s['raw_ok_p99'])}, parsed "
        f"{mr(s['parsed_p99'])}; raw's own ledger row {mr(s['raw_row_p99'])}",
        f"  batches (ledger ingested_at): {mr(s['batches'])} commits, size p50 "
        f"{mr(s['batch_p50'])}, max {mr(s['batch_max'])} files; longest time between two "
        f"commits {mr(s['commit_gap_max_ms'])} ms; close→commit (no poller) p50 "
        f"{mr(s['commit_p50'])}, p99 {mr(s['commit_p99'])} ms",
        f"  overflow rescans {s['overflow_rescans']}, documents retired {s['log_retired']}, "
        f"other processes used {s['others_cores']} cores",
        "  slowest files per round (ms, kind, closed at s into the burst): "
        + "; ".join(
            ", ".join(f"{x['ms']:.0f} {x['kind']} at {x['closed_s']:.2f}" for x in r)
            for r in s["slowest"]
        ),
        f"  targets: p50 <= {BURST_TARGET_P50_MS:.0f} ms: {met(s['p50'], BURST_TARGET_P50_MS)}; "
        f"p99 <= {BURST_TARGET_P99_MS:.0f} ms: {met(s['p99'], BURST_TARGET_P99_MS)}",
    ]

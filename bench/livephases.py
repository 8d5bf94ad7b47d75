"""``bench/live.py``'s phases: the writers (the pipeline's two ways of writing a file, from 10
threads, at a rate or as fast as they go), one phase's latency and rate, and the checks on the
index after a round."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from host import rmtree
from livekit import (
    WRITERS,
    BenchFailed,
    Daemon,
    Poller,
    fmt_ms,
    lat_stats,
    log,
    pct,
    proc_user_sys_s,
)

RAW_DIR = "3_generation/draft_responses_raw"
PARSED_DIR = "3_generation/draft_responses"
TEMPLATE, MODEL = "creative-synthesis-v2", "sonnet-4"


# ---------------------------------------------------------------- the writers


@dataclass
class File:
    kind: str  # raw | parsed
    task: str
    relpath: str
    path: str
    data: bytes


FILLER = (
    "The essay considers how the combination of concepts suggests a new mechanism, "
    "then tests it against three counterexamples and refines the claim.\n"
) * 40  # ~4 KB, like a draft


def task_id(round_no: int, phase: int, n: int) -> str:
    return f"combo_v1_{(round_no << 44) | (phase << 36) | n:012x}__{TEMPLATE}__{MODEL}"


def make_files(data: Path, round_no: int, phase: int, count: int, *, pairs: bool = False):
    """``count`` files: alternately raw and parsed, each its own task; with ``pairs``, raw
    then parsed of the same task (count/2 tasks)."""
    files = []
    for i in range(count):
        n, kind = (i // 2, ("raw", "parsed")[i % 2]) if pairs else (i, ("raw", "parsed")[i % 2])
        task = task_id(round_no, phase, n)
        rel = f"{RAW_DIR if kind == 'raw' else PARSED_DIR}/{task}_v1.txt"
        body = f"{kind} {task}\n{FILLER}".encode()
        files.append(File(kind, task, rel, str(data / rel), body))
    return files


def write_file(f: File) -> float:
    """The real writers: raw in place (Path.write_text), parsed .tmp + os.replace."""
    if f.kind == "raw":
        with open(f.path, "wb") as out:
            out.write(f.data)
    else:
        tmp = f.path + ".tmp"
        with open(tmp, "wb") as out:
            out.write(f.data)
        os.replace(tmp, f.path)
    return time.time()


def run_writers(
    files: list[File], rate: float | None, *, pairs: bool = False, writers: int = WRITERS
) -> tuple[float, list[float]]:
    """Write ``files`` from ``writers`` threads; at ``rate`` files/s in aggregate (file j due
    at start + j/rate), or as fast as they can.  With ``pairs`` a thread writes both files of
    a task, one right after the other.  Returns the start time and each file's close time."""
    closed = [0.0] * len(files)
    errors: list[BaseException] = []
    go = threading.Event()
    step = 2 if pairs else 1
    units = list(range(0, len(files), step))
    start = [0.0]

    def work(k: int) -> None:
        go.wait()
        try:
            for u in units[k::writers]:
                if rate:
                    delay = start[0] + u / rate - time.time()
                    if delay > 0:
                        time.sleep(delay)
                for j in range(u, min(u + step, len(files))):
                    closed[j] = write_file(files[j])
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    start[0] = time.time()
    go.set()
    for t in threads:
        t.join()
    if errors:
        raise BenchFailed(f"a writer failed: {errors[0]!r}")
    return start[0], closed


# ---------------------------------------------------------------- one phase


def phase_result(
    name: str,
    files: list[File],
    rate: float | None,
    start: float,
    closed: list[float],
    poller: Poller,
    cpu: float,
) -> dict:
    seen = poller.seen
    lat = {"all": [], "raw": [], "parsed": []}
    for f, c in zip(files, closed, strict=True):
        if f.relpath in seen:
            ms = (seen[f.relpath] - c) * 1e3
            lat["all"].append(ms)
            lat[f.kind].append(ms)
    visible = [seen[f.relpath] for f in files if f.relpath in seen]
    last_close = max(closed)
    last_visible = max(visible) if visible else None
    steps = len({seen[f.relpath] for f in files if f.relpath in seen})
    # Backlog: the latency of the last quarter of the files (in write order) against the first.
    q = max(1, len(lat["all"]) // 4)
    first_q, last_q = sorted(lat["all"][:q]), sorted(lat["all"][-q:])
    growth = pct(last_q, 50) - pct(first_q, 50) if lat["all"] else None
    res = {
        "phase": name,
        "files": len(files),
        "offered_rate": rate,
        "write_s": last_close - start,
        "achieved_rate": len(files) / (last_close - start) if last_close > start else None,
        "visible": len(visible),
        "lost": len(files) - len(visible),
        "last_visible_after_last_close_s": (last_visible - last_close) if visible else None,
        "throughput": len(visible) / (last_visible - start) if visible else None,
        "latency_ms": lat_stats(lat["all"]),
        "latency_raw_ms": lat_stats(lat["raw"]),
        "latency_parsed_ms": lat_stats(lat["parsed"]),
        "visibility_steps": steps,
        "latency_growth_ms": growth,
        "daemon_cpu_s": cpu,
        "daemon_cpu_ms_per_file": 1e3 * cpu / len(files),
        "daemon_cpu_pct": 100 * cpu / (last_visible - start) if visible else None,
        "samples_ms": {k: [round(x, 2) for x in lat[k]] for k in ("raw", "parsed")},
    }
    if rate:
        # Kept up: nothing lost, the writers offered the rate, the daemon made files visible at
        # >= 90% of the rate they were written, and the last one within 1 s of its close.
        res["kept_up"] = bool(
            res["lost"] == 0
            and res["achieved_rate"] >= 0.95 * rate
            and res["throughput"] >= 0.9 * res["achieved_rate"]
            and res["last_visible_after_last_close_s"] <= 1.0
        )
    return res


def run_phase(
    name: str,
    files: list[File],
    rate: float | None,
    poller: Poller,
    daemon: Daemon,
    *,
    pairs: bool = False,
) -> dict:
    (user0, sys0), over0 = proc_user_sys_s(daemon.pid), daemon.overflows()
    start, closed = run_writers(files, rate, pairs=pairs)
    poller.wait_for([f.relpath for f in files], 60 + len(files) / 200, daemon)
    user1, sys1 = proc_user_sys_s(daemon.pid)
    res = phase_result(name, files, rate, start, closed, poller, user1 - user0 + sys1 - sys0)
    res["daemon_user_ms_per_file"] = 1e3 * (user1 - user0) / len(files)
    res["daemon_sys_ms_per_file"] = 1e3 * (sys1 - sys0) / len(files)
    res["overflow_rescans"] = daemon.overflows() - over0
    lt, over = res["latency_ms"], res["overflow_rescans"]
    log(
        f"    {name:<12} {len(files):6d} files  written {res['achieved_rate']:6.0f}/s  "
        f"visible {res['throughput'] or 0:6.0f}/s  lost {res['lost']}  p50 "
        f"{fmt_ms(lt['p50'])}  p99 {fmt_ms(lt['p99'])}  max {fmt_ms(lt['max'])} ms"
        + (f"  ({over} overflow rescans)" if over else "")
    )
    return res


# ---------------------------------------------------------------- checks on the index


def check_index(db: Path, phases: dict[str, tuple[list[File], bool]]) -> tuple[dict, list[str]]:
    """Every written file is in the ledger once and every task has exactly one document, with
    the status its files decide (raw only: pending; parsed only or paired: ok)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        docs = Counter()
        status: dict[str, str] = {}
        for tid, st in con.execute("SELECT task_id, status FROM documents"):
            docs[tid] += 1
            status[tid] = st
        ledger = Counter(r for (r,) in con.execute("SELECT relpath FROM sources"))
    finally:
        con.close()
    bad, counts = [], {}
    for name, (files, pairs) in phases.items():
        tasks = {f.task: ("ok" if pairs or f.kind == "parsed" else "pending") for f in files}
        missing = [f.relpath for f in files if ledger[f.relpath] != 1]
        wrong_n = [t for t in tasks if docs[t] != 1]
        wrong_s = [t for t, want in tasks.items() if docs[t] == 1 and status[t] != want]
        counts[name] = {
            "files": len(files),
            "tasks": len(tasks),
            "ledger_missing": len(missing),
            "tasks_without_one_document": len(wrong_n),
            "wrong_status": len(wrong_s),
        }
        if missing:
            bad.append(f"{name}: {len(missing)} files not in the ledger, e.g. {missing[0]}")
        if wrong_n:
            bad.append(
                f"{name}: {len(wrong_n)} tasks without exactly one document, e.g. "
                f"{wrong_n[0]} ({docs[wrong_n[0]]})"
            )
        if wrong_s:
            t = wrong_s[0]
            bad.append(
                f"{name}: {len(wrong_s)} documents with an unexpected status, e.g. {t} "
                f"{status[t]!r} (expected {tasks[t]!r})"
            )
    return counts, bad


def fresh_root(path: Path) -> Path:
    """An empty data root with the two draft folders the writers write into."""
    rmtree(path)
    for d in (RAW_DIR, PARSED_DIR):
        (path / d).mkdir(parents=True)
    return path

"""docwatch benchmark: scan vs ``cp -a``, scan --link vs ``cp -al``, no-op rescan vs a walk.

Builds a legacy tree of about ``--files`` files with ``examples/legacy_tree.py``, then runs
``--repeats`` rounds.  Each round times, one right after the other so that machine noise hits
both sides of every comparison:

    cp -a SRC            vs  docwatch scan          (copy mode, empty index)
    cp -al SRC           vs  docwatch scan --link   (empty index, docs on SRC's filesystem)
    walk+stat of SRC     vs  docwatch scan          (no-op rescan of the copy-mode index; an
                                                     untimed walk first, so both read warm)
    find SRC -type f     (second reference for the rescan)
    cp -a DOCS           (right after the scan: its own output tree copied by cp, the kernel's
                          cost of docwatch's layout, one directory per document; the scan's
                          ratio to it is docwatch's own overhead)
    protocol floor       (then: bench/protocol_floor.py replays the durable protocol's calls
                          and flushes for the same documents, with no docwatch logic: staged
                          copies, syncfs, renames, syncfs, and the scan's own rows written
                          into a new index with its two commits a batch; the kernel's, the
                          disk's and SQLite's share of a scan); at the end of the round,
                          again with each batch staged by another process while the one
                          before it commits (``--stage-ahead``: a pipelined scan's floor)

Each pair runs in turn, the reference first in odd rounds and docwatch first in even ones.
Every round writes to its own directories, and nothing is removed before the run ends: on ext4
without a journal, a file created within minutes of a deletion costs several times more (see
``bench/floor.py``), so removing a round's outputs would slow the next round's first creator.
The outputs of all rounds need about ``--repeats`` × 3 times the tree's size on disk.

Every command is a child process timed with ``time.perf_counter`` from spawn to reap; its peak
RSS comes from ``os.wait4``, plus the peak of every child a command starts, sampled from
/proc (``docwatch scan``'s staging helper: the two run at once, so their peaks add).  ``sync``
runs (timed separately, never inside a measurement) before and after every measurement, so no
command pays for another's dirty pages; the
``+ sync`` figures add the flush that makes ``cp``'s copy durable (docwatch syncs its own
writes: one ``syncfs`` after staging and one after the renames of each batch).  Caches are not
dropped (that needs root): every command reads a warm tree.

Prints medians (min, max) and ratios of medians; writes ``<out>/results.json``.  Exits 1 when a
command fails, 3 when a consistency check fails (documents created differ between rounds or
modes, errors or deferred files, a rescan that creates something, the source tree changed);
never because of a ratio (the checks, the table and ``results.json``: ``runreport.py``).
Stdlib only.

    .venv/bin/python bench/run.py                        # ~100,000 files, 3 rounds
    .venv/bin/python bench/run.py --files 5000 --repeats 1   # smoke
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bytecode import compile_docwatch
from host import (
    REPO,
    CommandFailed,
    Run,
    docwatch_version,
    fs_type,
    git_rev,
    log,
    machine,
    rmtree,
    run,
    timed_sync,
)
from runreport import MEASURES, report

GENERATOR = REPO / "examples" / "legacy_tree.py"
PROTOCOL_FLOOR = REPO / "bench" / "protocol_floor.py"

# The reference for a no-op rescan: a recursive os.scandir with one stat per entry, in a fresh
# interpreter like the docwatch process (so both sides pay for an interpreter start).
WALK = r"""
import os, sys
files = size = 0
stack = [sys.argv[1]]
while stack:
    with os.scandir(stack.pop()) as it:
        for e in it:
            st = e.stat(follow_symlinks=False)
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
            else:
                files += 1
                size += st.st_size
print(files, size)
"""

DOCWATCH = ("scan_copy", "scan_link", "rescan")


# Runs in a child process so that the plan of a big tree never inflates this process: a child's
# peak RSS as reported by wait4 includes the RSS of the parent it was forked from.
BUILD = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import legacy_tree
s = legacy_tree.build_tree(Path(sys.argv[2]), files_target=int(sys.argv[3]), seed=int(sys.argv[4]))
print(json.dumps({"combos": len(s.combos), "total_files": s.total_files, "attempts": s.attempts}))
"""


def build_tree(out: Path, files: int, seed: int, reuse: bool, logs: Path) -> dict:
    """Build (or, with --reuse-tree, reuse a matching) legacy tree at ``out/tree``."""
    src, marker = out / "tree", out / "tree.json"
    gen_hash = hashlib.sha256(GENERATOR.read_bytes()).hexdigest()[:16]
    want = {"files_target": files, "seed": seed, "generator_sha256": gen_hash}
    if reuse and src.is_dir() and marker.exists():
        info = json.loads(marker.read_text())
        if {k: info.get(k) for k in want} == want:
            log(f"reusing the tree at {src} ({info['total_files']} files)")
            return info
    rmtree(src)
    marker.unlink(missing_ok=True)
    log(f"building a ~{files}-file legacy tree at {src} ...")
    cmd = [sys.executable, "-c", BUILD, str(GENERATOR.parent), str(src), str(files), str(seed)]
    r = run(cmd, logs / "build.log")
    summary = json.loads(r.stdout)
    info = {
        **want,
        "combos": summary["combos"],
        "total_files": summary["total_files"],
        "expected_documents": summary["attempts"],
        "build_seconds": round(r.seconds, 2),
    }
    marker.write_text(json.dumps(info, indent=2))
    log(f"built {info['total_files']} files in {info['build_seconds']} s")
    return info


# ---------------------------------------------------------------- one round


def scan_cmd(src: Path, dst: Path, link: bool) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "docwatch",
        "scan",
        "--data-root",
        str(src),
        "--db",
        str(dst / "db" / "documents.sqlite"),
        "--docs-root",
        str(dst / "docs"),
        "--run-id",
        "bench",
        "--json",
    ]
    return cmd + ["--link"] if link else cmd


def totals(report: dict) -> dict:
    keys = ("new", "indexed", "ignored", "deferred", "error", "docs_created", "docs_updated")
    out = {k: sum(stage.get(k, 0) for stage in report["stages"].values()) for k in keys}
    out["candidates"] = sum(out[k] for k in ("new", "indexed", "ignored", "deferred", "error"))
    out["problems"] = len(report.get("problems", []))
    return out


LINK_KEYS = frozenset({"cp_al", "cp_al+sync", "scan_link"})


def one_round(
    i: int, src: Path, work: Path, logs: Path, samples: dict, reports: dict, link: bool = True
) -> None:
    def record(key: str, r: Run) -> None:
        samples[key]["seconds"].append(r.seconds)
        samples[key]["maxrss_kib"].append(r.maxrss_kib)
        log(f"  [{i}] {key:<10} {r.seconds:8.3f} s  {r.maxrss_kib / 1024:7.1f} MiB")

    def measure(key: str, cmd: list[str]) -> Run:
        timed_sync()  # start clean: nothing dirty from the previous step
        r = run(cmd, logs / f"{key}.log")
        record(key, r)
        return r

    def protocol_floor(docs: Path, work: Path, key: str = "protocol", *flags: str) -> dict:
        """The replay's own clock (no interpreter start, no listing of its input): the
        lowest figure, so the floor is never overstated."""
        timed_sync()
        cmd = [sys.executable, str(PROTOCOL_FLOOR), str(docs), str(work / key), *flags]
        cmd += ["--index", str(docs.parent / "db" / "documents.sqlite")]
        r = run(cmd, logs / f"{key}.log")
        out = json.loads(r.stdout)
        record(key, Run(out["seconds"], r.maxrss_kib, r.stdout))
        return out

    def with_sync(key: str, r: Run) -> None:
        s = timed_sync()
        samples[key]["seconds"].append(r.seconds + s)
        samples[key]["maxrss_kib"].append(r.maxrss_kib)

    # Each round writes to its own directories and nothing is deleted until the run ends: on
    # ext4 without a journal a deletion slows every file creation of the next one to five
    # minutes (bench/floor.py, "create after deleting"), whoever makes it.  Even rounds still
    # go docwatch first, so that the medians favour neither side.
    work = work / f"r{i}"
    work.mkdir(parents=True, exist_ok=True)
    docwatch_first = i % 2 == 0
    pairs = [("cp_a", ["cp", "-a"], "scan_copy", False)]
    if link:
        pairs.append(("cp_al", ["cp", "-al"], "scan_link", True))
    for cp_key, cp, scan_key, scan_link in pairs:
        for step in ("scan", "cp") if docwatch_first else ("cp", "scan"):
            if step == "cp":
                r = measure(cp_key, [*cp, str(src), str(work / cp_key)])
                with_sync(f"{cp_key}+sync", r)
            else:
                r = measure(scan_key, scan_cmd(src, work / scan_key, link=scan_link))
                reports[scan_key].append(totals(json.loads(r.stdout)))
                if not scan_link:  # the kernel's cost of the layout docwatch writes, by cp
                    docs = [str(work / scan_key / "docs"), str(work / "cp_docs")]
                    with_sync("cp_docs+sync", measure("cp_docs", ["cp", "-a", *docs]))
                    reports["protocol"].append(protocol_floor(work / scan_key / "docs", work))
    # Untimed first walk: the docs copies above may have pushed the tree's inodes out of the
    # cache, and the rescan below runs after the walk and find have brought them back.
    run([sys.executable, "-c", WALK, str(src)], logs / "walk-warmup.log")
    r = measure("walk", [sys.executable, "-c", WALK, str(src)])
    files, size = map(int, r.stdout.split())
    reports["walk"].append({"files": files, "bytes": size})
    measure("find", ["find", str(src), "-type", "f", "-printf", ""])
    r = measure("rescan", scan_cmd(src, work / "scan_copy", link=False))
    reports["rescan"].append(totals(json.loads(r.stdout)))
    # Last in the round: run before the walk, its gigabyte of writes made the rescan 0.71-0.94 s
    # against 0.57-0.65 in earlier runs (the rescan alone, on either code: 0.54-0.68).
    docs = work / "scan_copy" / "docs"
    ahead = protocol_floor(docs, work, "protocol_ahead", "--stage-ahead")
    reports["protocol_ahead"].append(ahead)
    r = run(["true"], logs / "true.log")  # the peak-RSS floor (see rss_floor_mib)
    reports["rss_floor_kib"].append(r.maxrss_kib)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000, help="tree size (default 100000)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="work directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the tree and all outputs")
    ap.add_argument(
        "--no-link",
        action="store_true",
        help="skip cp -al and scan --link (the 1M-file run: saves ~40%% of its time)",
    )
    ap.add_argument(
        "--reuse-tree",
        action="store_true",
        help="reuse <out>/tree when built with the same --files, --seed and "
        "generator (and keep it)",
    )
    a = ap.parse_args(argv)
    if a.repeats < 1 or a.files < 1:
        ap.error("--files and --repeats must be >= 1")
    out = a.out.resolve()
    work, logs = out / "work", out / "logs"
    rmtree(logs)
    for d in (work, logs):
        d.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    res: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "fs_type": fs_type(out),
        "out": str(out),
        "repeats": a.repeats,
        "link": not a.no_link,
        "files_target": a.files,
        "docwatch_rev": git_rev(),
    }
    samples = {k: {"seconds": [], "maxrss_kib": []} for k, _ in MEASURES}
    reports: dict = {
        k: [] for k in (*DOCWATCH, "walk", "rss_floor_kib", "protocol", "protocol_ahead")
    }
    try:
        compile_docwatch()
        res["docwatch_version"] = docwatch_version()
        tree = build_tree(out, a.files, a.seed, a.reuse_tree, logs)
        src = out / "tree"
        for i in range(a.repeats):
            log(f"round {i + 1}/{a.repeats}")
            one_round(i + 1, src, work, logs, samples, reports, link=not a.no_link)
        code = report(res, samples, reports, tree, out, started)  # before the slow clean-up
    except CommandFailed as exc:
        log(f"FAILED: {exc}")
        res["error"] = str(exc)
        (out / "results.json").write_text(json.dumps(res, indent=2))
        return 1
    finally:
        if not a.keep:
            rmtree(work)
    if not (a.keep or a.reuse_tree):
        rmtree(out / "tree")
        (out / "tree.json").unlink(missing_ok=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""``bench/run.py``'s summary: the measures and ratios it reports, the consistency checks,
the table it prints and ``results.json`` (as ``livereport.py`` is ``live.py``'s).  Stdlib only."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from host import MIB

# (key, label) in table order
MEASURES = (
    ("cp_a", "cp -a SRC DST"),
    ("cp_a+sync", "cp -a + sync"),
    ("scan_copy", "docwatch scan (copy)"),
    ("cp_docs", "cp -a of the scan's docs tree"),
    ("cp_docs+sync", "cp -a docs + sync"),
    ("protocol", "protocol floor (replay + index)"),
    ("protocol_ahead", "protocol floor, staged ahead"),
    ("cp_al", "cp -al SRC DST"),
    ("cp_al+sync", "cp -al + sync"),
    ("scan_link", "docwatch scan --link"),
    ("walk", "walk+stat (python scandir)"),
    ("find", "find SRC -type f -printf ''"),
    ("rescan", "docwatch rescan (no-op)"),
)
RATIOS = (
    ("scan_copy", "cp_a", "scan / cp -a  (target <= 2.5)"),
    ("scan_copy", "cp_a+sync", "scan / (cp -a + sync)"),
    ("cp_docs", "cp_a", "cp -a docs / cp -a SRC  (the layout)"),
    ("cp_docs+sync", "cp_a", "(cp -a docs + sync) / cp -a (floor)"),
    ("scan_copy", "cp_docs+sync", "scan / (cp -a docs + sync)"),
    ("protocol", "cp_a", "protocol floor / cp -a"),
    ("scan_copy", "protocol", "scan / protocol floor"),
    ("protocol_ahead", "cp_a", "floor staged ahead / cp -a"),
    ("scan_link", "cp_al", "scan --link / cp -al"),
    ("scan_link", "cp_al+sync", "scan --link / (cp -al + sync)"),
    ("rescan", "walk", "rescan / walk+stat  (target <= 2)"),
    ("rescan", "find", "rescan / find"),
)


def checks(reports: dict, tree: dict) -> list[str]:
    bad = []
    created = [t["docs_created"] for k in ("scan_copy", "scan_link") for t in reports[k]]
    if len(set(created)) > 1:
        bad.append(f"docs_created differs between rounds/modes: {created}")
    for k in ("scan_copy", "scan_link", "rescan"):
        for n, t in enumerate(reports[k]):
            if t["error"] or t["deferred"] or t["problems"]:
                bad.append(
                    f"{k} round {n}: error={t['error']} deferred={t['deferred']} "
                    f"problems={t['problems']} (see the logs)"
                )
    for n, p in enumerate(reports["protocol"] + reports["protocol_ahead"]):
        n %= len(reports["protocol"])
        if p["documents"] != reports["scan_copy"][n]["docs_created"]:
            bad.append(
                f"protocol floor round {n} replayed {p['documents']} documents, the scan "
                f"created {reports['scan_copy'][n]['docs_created']}"
            )
        rows = (p.get("index_rows") or {}).get("documents")
        if rows != reports["scan_copy"][n]["docs_created"]:
            bad.append(f"protocol floor round {n} wrote {rows} document rows into its index")
    for n, t in enumerate(reports["rescan"]):
        if t["new"] or t["docs_created"] or t["docs_updated"]:
            bad.append(f"rescan round {n} was not a no-op: {t}")
    walks = {(w["files"], w["bytes"]) for w in reports["walk"]}
    if len(walks) > 1 or reports["walk"][0]["files"] != tree["total_files"]:
        bad.append(
            f"the source tree changed or differs from the generator: {walks} vs "
            f"{tree['total_files']} files"
        )
    return bad


def summarise(samples: dict) -> dict:
    out = {}
    for key, s in samples.items():
        secs = s["seconds"]
        if not secs:  # not measured (--no-link)
            continue
        out[key] = {
            "median_s": statistics.median(secs),
            "min_s": min(secs),
            "max_s": max(secs),
            "samples_s": [round(x, 4) for x in secs],
            "peak_rss_mib": round(max(s["maxrss_kib"]) / 1024, 1),
            "median_rss_mib": round(statistics.median(s["maxrss_kib"]) / 1024, 1),
        }
    return out


def table(res: dict) -> str:
    s, env, tree = res["summary"], res["machine"], res["tree"]
    lines = [
        f"docwatch bench  {res['date']}  rev {res['docwatch_rev']}  ({res['docwatch_version']})",
        f"machine: nproc {env['nproc']}, {env['mem_available_mib']} MiB available of "
        f"{env['mem_total_mib']}, {res['fs_type']} at {res['out']}, {env['cpu_model']}",
        f"tree: {tree['files']} files, {tree['bytes'] / MIB:.1f} MiB; docwatch candidates "
        f"{tree['candidates']}, documents created {tree['documents_created']} "
        f"(generator expects {tree['expected_documents']}); {res['repeats']} round(s)",
        "",
        f"{'measurement':<30} {'median s':>9} {'min s':>8} {'max s':>8} {'peak RSS MiB':>13}",
    ]
    for key, label in MEASURES:
        if key not in s:
            continue
        m = s[key]
        rss = "" if key.endswith("+sync") else f"{m['peak_rss_mib']:.1f}"
        lines.append(
            f"{label:<30} {m['median_s']:9.3f} {m['min_s']:8.3f} {m['max_s']:8.3f} {rss:>13}"
        )
    lines.append(
        f"(peak RSS floor: `true` spawned the same way reports {res['rss_floor_mib']} MiB)"
    )
    lines += ["", "ratios of medians"]
    lines += [f"  {label:<32} {value:7.2f}" for label, value in res["ratios"].items()]
    rate = res["rates"]
    lines += [
        "",
        f"scan (copy): {rate['scan_files_per_s']:.0f} files/s, {rate['scan_mib_per_s']:.1f} MiB/s; "
        + (f"--link: {rate['link_files_per_s']:.0f} files/s; " if rate["link_files_per_s"] else "")
        + f"rescan: "
        f"{rate['rescan_files_per_s']:.0f} files/s",
        "fsync policy: docwatch makes each batch (batch_max_files, default 2000) durable with one "
        "syncfs(2) after staging and one after the renames; cp does no fsync (see '+ sync').",
    ]
    if res.get("protocol_phases_s"):
        lines.append(
            "protocol floor by step, median s: "
            + ", ".join(f"{k} {v:.2f}" for k, v in res["protocol_phases_s"].items())
        )
    if res["checks"]:
        lines += ["", "CHECKS FAILED:"] + [f"  - {c}" for c in res["checks"]]
    return "\n".join(lines)


def report(res: dict, samples: dict, reports: dict, tree: dict, out: Path, started: float) -> int:
    """Summarise the rounds into ``res``, write ``results.json`` and print the table; the
    exit code (3 when a check failed)."""
    summary = summarise(samples)
    med = {k: v["median_s"] for k, v in summary.items()}
    first, walk = reports["scan_copy"][0], reports["walk"][0]
    res["tree"] = {
        "files": walk["files"],
        "bytes": walk["bytes"],
        "candidates": first["candidates"],
        "documents_created": first["docs_created"],
        "expected_documents": sum(tree["expected_documents"].values()),
        "generator": tree,
    }
    res["summary"] = summary
    res["ratios"] = {
        label: med[a_] / med[b_] for a_, b_, label in RATIOS if a_ in med and b_ in med
    }
    res["rates"] = {
        "scan_files_per_s": first["candidates"] / med["scan_copy"],
        "scan_mib_per_s": walk["bytes"] / MIB / med["scan_copy"],
        "link_files_per_s": first["candidates"] / med["scan_link"] if "scan_link" in med else None,
        "rescan_files_per_s": first["candidates"] / med["rescan"],
    }
    # wait4's ru_maxrss of a child counts the parent's RSS it was forked from; `true` shows it.
    res["rss_floor_mib"] = round(max(reports["rss_floor_kib"]) / 1024, 1)
    if reports["protocol"]:
        steps = reports["protocol"][0]["phases_s"]
        res["protocol_phases_s"] = {
            k: statistics.median(p["phases_s"][k] for p in reports["protocol"]) for k in steps
        }
    res["docwatch_reports"] = reports
    res["checks"] = checks(reports, {"total_files": tree["total_files"]})
    res["total_seconds"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    print(table(res))
    print(f"\n(total {res['total_seconds']} s; results in {out / 'results.json'})")
    return 3 if res["checks"] else 0

"""The report side of ``benchmarks/throughput.py``: the tables, the ratios, issue 15's goals
marked met / not met with the figure, and the PNG chart (from the same JSON figures, so
``python benchmarks/bench_report.py results.json chart.png`` redraws a saved run, and
``... results.json --markdown`` prints its tables for docs/benchmarks.md)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

COLUMNS = [
    ("enqueue", "enqueue/s"),
    ("enqueue_sync", "sync/s"),
    ("enqueue_c100", "c100/s"),
    ("bulk", "bulk/s"),
    ("drain", "drain/s"),
    ("cold", "cold/s"),
    ("cpu_us", "cpu us/job"),
    ("sleep", "sleep/s"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
]
Rows = dict[str, dict[str, Any] | None]


def fmt(value: Any, key: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if key.endswith("_ms") else f"{value:,.0f}"


def table(rows: Rows, defaults: dict[str, str] | None = None) -> list[str]:
    keys = [(k, t) for k, t in COLUMNS if any(r and r.get(k) is not None for r in rows.values())]
    out = [f"{'system':<16}" + "".join(f"{t:>11}" for _, t in keys)]
    for name, figures in rows.items():
        if figures is None:
            out.append(f"{name:<16}  failed (see above)")
            continue
        out.append(f"{name:<16}" + "".join(f"{fmt(figures.get(k), k):>11}" for k, _ in keys))
    return out


def peers_of(rows: Rows) -> dict[str, dict[str, Any]]:
    return {n: r for n, r in rows.items() if r is not None and not n.startswith("vaultq")}


def lower_is_better(key: str) -> bool:
    return key.endswith("_ms") or key == "cpu_us"


def best(rows: Rows, key: str, redis_only: bool = True) -> tuple[float, str] | None:
    got = [
        (r[key], n)
        for n, r in peers_of(rows).items()
        if r.get(key) is not None and not (redis_only and n.endswith("-sqlite"))
    ]
    if not got:
        return None
    return min(got) if lower_is_better(key) else max(got)


def get(results: dict[str, Any], mode: str, label: str, key: str) -> float | None:
    row = results.get("modes", {}).get(mode, {}).get(label)
    value = row.get(key) if row else None
    return float(value) if value is not None else None


def goal(name: str, figure: str, met: bool | None) -> dict[str, Any]:
    return {"goal": name, "figure": figure, "met": met}


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 15's goals that this run measured, each with its figure."""
    out: list[dict[str, Any]] = []
    modes = results.get("modes", {})
    d, e = modes.get("defaults", {}), modes.get("equal", {})
    ours = get(results, "defaults", "vaultq", "cold")
    top = best(d, "cold")
    if ours and top:
        ratio = ours / top[0]
        warm, top_warm = get(results, "defaults", "vaultq", "drain"), best(d, "drain")
        extra = f"; from first completion {warm / top_warm[0]:.2f}x" if warm and top_warm else ""
        out.append(
            goal(
                "processing at defaults >= 3x the best peer (start-up included)",
                f"{ratio:.2f}x ({fmt(ours)}/s vs {top[1]} {fmt(top[0])}/s{extra})",
                ratio >= 3,
            )
        )
    tuned = [
        (r["drain"], f"{mode}/{n}", r.get("cpu_us"))
        for mode, rows in modes.items()
        for n, r in rows.items()
        if r and n.startswith("vaultq") and "sqlite" not in n and "ed25519" not in n
    ]
    if tuned:
        rate, where, _ = max(tuned)
        cpu_best = min(t[2] for t in tuned if t[2])
        out.append(
            goal(
                ">= 10,000 jobs/s at tuned concurrency",
                f"{fmt(rate)}/s wall ({where}); {fmt(1e6 / cpu_best)}/s of one free core by "
                f"the worker's CPU time ({cpu_best:.0f} us/job)",
                rate >= 10_000,
            )
        )
    enqueue_goals = [
        ("enqueue_sync >= 1.0x huey's call", "enqueue_sync", "huey-redis", 1.0),
        ("await enqueue >= 1.5x dramatiq's send()", "enqueue", "dramatiq", 1.5),
    ]
    for name, key, peer, factor in enqueue_goals:
        parts, met = [], True
        for mode in modes:
            ours, theirs = get(results, mode, "vaultq", key), get(results, mode, peer, "enqueue")
            if ours and theirs:
                parts.append(f"{mode} {ours / theirs:.2f}x ({fmt(ours)} vs {fmt(theirs)}/s)")
                met = met and ours >= factor * theirs
        if parts:
            out.append(goal(name, "; ".join(parts), met))
    for name, key, floor in (
        ("100 coroutines enqueueing >= 20,000/s", "enqueue_c100", 20_000),
        ("enqueue_many >= 30,000/s", "bulk", 30_000),
    ):
        got = {m: get(results, m, "vaultq", key) for m in modes}
        shown = [f"{m} {fmt(v)}/s" for m, v in got.items() if v]
        if shown:
            met = all(v >= floor for v in got.values() if v)
            out.append(goal(name, "; ".join(shown), met))
    p50, p99 = get(results, "equal", "vaultq", "p50_ms"), get(results, "equal", "vaultq", "p99_ms")
    hp50 = get(results, "equal", "huey-redis", "p50_ms")
    if p50 is not None and p99 is not None:
        vs = f" vs huey {hp50:.2f}" if hp50 is not None else ""
        met = p99 <= 2 and (hp50 is None or p50 <= hp50)
        out.append(
            goal(
                "latency p50 <= huey's, p99 <= 2 ms (measured enqueue -> result)",
                f"p50 {p50:.2f} ms{vs}, p99 {p99:.2f} ms",
                met,
            )
        )
    ceiling = results.get("ed25519_ceiling")
    for label, suffix in (
        ("vaultq-ed25519", ""),
        ("vaultq-ed25519-batch", " (batch signatures, jobs queued by enqueue_many)"),
    ):
        eds = [r for m in modes.values() for n, r in m.items() if r and n == label]
        if not (ceiling and eds):
            continue
        rate = max(r["drain"] for r in eds)
        cpu_rate = 1e6 / min(r["cpu_us"] for r in eds)
        out.append(
            goal(
                f"ed25519 worker >= 70% of the verification ceiling{suffix}",
                f"{rate / ceiling:.0%} wall ({fmt(rate)}/s), {cpu_rate / ceiling:.0%} by the "
                f"worker's CPU time ({fmt(cpu_rate)}/s of one core) vs {fmt(ceiling)} "
                "verifications/s of one core",
                rate >= 0.7 * ceiling,
            )
        )
    sq, hs = (
        get(results, "equal", "vaultq-sqlite", "enqueue"),
        get(results, "equal", "huey-sqlite", "enqueue"),
    )
    if sq and hs:
        out.append(
            goal(
                "SQLite one-by-one enqueue >= huey-sqlite's",
                f"{sq / hs:.2f}x ({fmt(sq)} vs {fmt(hs)}/s)",
                sq >= hs,
            )
        )
    sp50 = get(results, "equal", "vaultq-sqlite", "p50_ms")
    if sp50 is not None:
        out.append(
            goal(
                "SQLite cross-process p50 <= 2 ms (enqueue -> result)", f"{sp50:.2f} ms", sp50 <= 2
            )
        )
    procs = results.get("processes")
    if procs:
        ratio = procs["p2"]["warm"] / procs["p1"]["warm"]
        out.append(
            goal(
                "--processes 2 >= 1.6x one process",
                f"{ratio:.2f}x ({fmt(procs['p2']['warm'])} vs {fmt(procs['p1']['warm'])}/s)",
                ratio >= 1.6,
            )
        )
    backlog = results.get("backlog")
    if backlog:
        out.append(
            goal(
                f"throughput with {backlog['queued']:,} queued within 20% of empty",
                f"{backlog['ratio']:.2f}x ({fmt(backlog['backlog'])} vs {fmt(backlog['empty'])}/s)",
                backlog["ratio"] >= 0.8,
            )
        )
    for memory in (results.get("memory"), (backlog or {}).get("memory")):
        if not memory:
            continue
        per_job, env = memory["settled_per_job"], memory["envelope_bytes"]
        out.append(
            goal(
                f"Redis memory per queued job <= envelope + 200 B ({memory['jobs']:,} queued)",
                f"{per_job:.0f} B/job once the 15 s dedup markers expired, "
                f"{memory['info_delta_per_job']:.0f} B/job while they live (INFO used_memory "
                f"deltas) vs sealed envelope {env} B (+{per_job - env:.0f} B)",
                per_job <= env + 200,
            )
        )
    rss = results.get("rss")
    if rss and len(rss["marks"]) >= 3:
        marks = rss["marks"]
        base, last = marks[1][1], marks[-1][1]  # after the first 10%: warm caches
        growth = last / base - 1
        out.append(
            goal(
                f"worker RSS flat over {rss['jobs']:,} jobs",
                f"{base:.1f} MB at {marks[1][0]:,} -> {last:.1f} MB at {marks[-1][0]:,} "
                f"({growth:+.1%})",
                growth <= 0.05,
            )
        )
    for mode, rows in (("defaults", d), ("equal", e)):
        sleep = get(results, mode, "vaultq", "sleep")
        top = best(rows, "sleep")
        if sleep and top:
            out.append(
                goal(
                    f"10 ms sleep jobs ahead of every peer ({mode})",
                    f"{sleep / top[0]:.2f}x ({fmt(sleep)} vs {top[1]} {fmt(top[0])}/s)",
                    sleep > top[0],
                )
            )
    return out


def print_all(results: dict[str, Any]) -> None:
    meta = results["meta"]
    print()
    print(
        f"{meta['date']}, {meta['cpus']} CPUs, load {meta['loadavg_start']} -> "
        f"{meta['loadavg_end']}, Python {meta['python']}, N={meta['jobs']}, "
        f"{meta['sleep_jobs']} sleep jobs, median of {meta.get('rounds', 1)} round(s), "
        f"{meta['seconds']} s"
    )
    for mode, rows in results["modes"].items():
        what = (
            "each system's default concurrency"
            if mode == "defaults"
            else f"concurrency {meta['concurrency']}"
        )
        print(f"\n[{mode}] {what}")
        print("\n".join(table(rows)))
        ours = rows.get("vaultq")
        if ours:
            parts = []
            for key, title in COLUMNS:
                top = best(rows, key)
                if ours.get(key) is None or top is None:
                    continue
                parts.append(
                    f"  {title:<11}{ours[key] / top[0]:>6.2f}x  "
                    f"(best peer: {top[1]}, {fmt(top[0], key)})"
                )
            if parts:
                print(
                    "vaultq / best Redis peer (rates: >1 = vaultq faster; "
                    "latencies and CPU: <1 = vaultq better)"
                )
                print("\n".join(parts))
    if "processes" in results:
        p = results["processes"]
        print(
            f"\nvaultq worker --processes 1: {fmt(p['p1']['warm'])}/s, "
            f"cpu {p['p1']['cpu_us']:.0f} us/job;"
            f" --processes 2: {fmt(p['p2']['warm'])}/s, cpu {p['p2']['cpu_us']:.0f} us/job"
        )
    for memory in (results.get("memory"), (results.get("backlog") or {}).get("memory")):
        if not memory:
            continue
        print(
            f"Redis memory per queued job ({memory['jobs']:,} queued): "
            f"{memory['info_delta_per_job']:.0f} B just after enqueue and "
            f"{memory['settled_per_job']:.0f} B once the dedup markers expired (INFO memory "
            f"deltas); MEMORY USAGE: stream {memory['stream_usage_per_job']:.0f} B/job, dedup "
            f"marker {memory['dedup_marker_usage']} B ({memory['dedup_markers']:,} live); "
            f"sealed envelope {memory['envelope_bytes']} B"
        )
    if "backlog" in results:
        b = results["backlog"]
        print(
            f"drain with {b['queued']:,} queued: {fmt(b['backlog'])}/s; "
            f"empty: {fmt(b['empty'])}/s ({b['ratio']:.2f}x)"
        )
    if "rss" in results:
        marks = ", ".join(f"{c:,}: {mb:.1f}" for c, mb in results["rss"]["marks"])
        print(f"worker RSS MB by jobs done: {marks}")
    if "ed25519_ceiling" in results:
        print(f"ed25519 verifications/s of one core (same run): {fmt(results['ed25519_ceiling'])}")
    print("\nissue 15 goals measured in this run:")
    for g in results["goals"]:
        mark = {True: "MET", False: "NOT MET", None: "?"}[g["met"]]
        print(f"  {mark:<8} {g['goal']}: {g['figure']}")


def chart(results: dict[str, Any], path: Path) -> None:
    """Horizontal bars per mode: drain/s (cold and from first completion) and sleep/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in ("defaults", "equal") if results["modes"].get(m)]
    panels = [
        ("drain", "no-op jobs/s, one worker process"),
        ("cold", "no-op jobs/s incl. start-up"),
        ("sleep", "10 ms sleep jobs/s"),
    ]
    fig, axes = plt.subplots(len(modes), len(panels), figsize=(15, 4.2 * len(modes)), squeeze=False)
    for i, mode in enumerate(modes):
        rows = {n: r for n, r in results["modes"][mode].items() if r}
        names = list(rows)[::-1]
        for j, (key, title) in enumerate(panels):
            ax = axes[i][j]
            values = [rows[n].get(key) or 0 for n in names]
            colors = ["#2a6f97" if n.startswith("vaultq") else "#adb5bd" for n in names]
            ax.barh(names, values, color=colors)
            for y, v in enumerate(values):
                ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
            what = (
                "each at its default concurrency"
                if mode == "defaults"
                else f"concurrency {results['meta']['concurrency']}"
            )
            ax.set_title(f"{title}\n[{mode}: {what}]", fontsize=10)
            ax.set_xlim(0, max([*values, 1]) * 1.25)
            ax.tick_params(labelsize=8)
    meta = results["meta"]
    fig.suptitle(
        f"vaultq vs peers, one run, {meta['date']}, {meta['cpus']} shared cores "
        f"(load {meta['loadavg_start'][0]}), N={meta['jobs']}, "
        f"median of {meta.get('rounds', 1)} round(s)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(results: dict[str, Any]) -> str:
    """The tables and the goals as Markdown, for docs/benchmarks.md."""
    out: list[str] = []
    defaults = results["meta"].get("defaults", {})
    for mode, rows in results["modes"].items():
        keys = [
            (k, t) for k, t in COLUMNS if any(r and r.get(k) is not None for r in rows.values())
        ]
        what = (
            "each at its default concurrency"
            if mode == "defaults"
            else (f"concurrency {results['meta']['concurrency']}")
        )
        out += [f"**{mode}** ({what})", ""]
        head = [
            "system",
            *(["default concurrency"] if mode == "defaults" else []),
            *(t for _, t in keys),
        ]
        out.append("| " + " | ".join(head) + " |")
        out.append("| --- |" + " ---: |" * (len(head) - 1))
        for name, r in rows.items():
            conc = []
            if mode == "defaults":
                base = name.split("-c")[0] if name.startswith("vaultq-c") else name
                label = defaults.get(base.replace("-ed25519", "").replace("-batch", ""), "")
                conc = [name.rsplit("-c", 1)[1] if name.startswith("vaultq-c") else label]
            cells = [fmt(r.get(k) if r else None, k) for k, _ in keys]
            out.append("| " + " | ".join([name, *conc, *cells]) + " |")
        out.append("")
    out += ["| goal (issue 15) | this run | met |", "| --- | --- | --- |"]
    for g in results["goals"]:
        mark = {True: "**met**", False: "not met", None: "?"}[g["met"]]
        out.append(f"| {g['goal']} | {g['figure']} | {mark} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    saved = json.loads(Path(sys.argv[1]).read_text())
    saved["goals"] = goals(saved)
    if sys.argv[2] == "--markdown":
        print(markdown(saved))
    else:
        chart(saved, Path(sys.argv[2]))

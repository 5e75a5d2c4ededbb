"""benchmarks/throughput.py runs end to end in a tiny configuration (vaultq alone, no
peer venvs), so the harness cannot rot. Nothing here looks at a timing: only that every
phase ran, counted its jobs and reported a figure."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_throughput_harness_runs_vaultq_end_to_end(tmp_path: Path) -> None:
    out_json, out_png = tmp_path / "results.json", tmp_path / "chart.png"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "throughput.py"),
        "--jobs",
        "200",
        "--systems",
        "vaultq,vaultq-ed25519-batch",
        "--modes",
        "equal",
        "--sleep-jobs",
        "40",
        "--latency-samples",
        "5",
        "--processes-jobs",
        "300",
        "--memory-jobs",
        "300",
        "--dedup-wait",
        "0",
        "--json",
        str(out_json),
    ]
    # The chart is drawn only where matplotlib (benchmarks/requirements.txt) is installed.
    if importlib.util.find_spec("matplotlib") is not None:
        cmd += ["--chart", str(out_png)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out_json.read_text())

    row = results["modes"]["equal"]["vaultq"]
    for key in ("enqueue", "enqueue_sync", "enqueue_c100", "bulk", "drain", "cold", "sleep"):
        assert row[key] > 0, key
    assert 0 < row["p50_ms"] <= row["p99_ms"]
    # batch signatures on: everything queued by enqueue_many (no one-by-one figures), as
    # many jobs as the other vaultq rows, all drained and counted
    batch = results["modes"]["equal"]["vaultq-ed25519-batch"]
    assert batch["bulk"] > 0 and batch["drain"] > 0 and batch["cold"] > 0
    assert "enqueue" not in batch and "enqueue_c100" not in batch
    # --processes 1 and 2 went through the real CLI and both counted every job
    assert results["processes"]["p1"]["jobs"] == results["processes"]["p2"]["jobs"] == 300
    assert results["processes"]["p2"]["warm"] > 0
    memory = results["memory"]
    assert memory["envelope_bytes"] > 100
    assert memory["info_delta_per_job"] > memory["envelope_bytes"] / 2
    assert memory["dedup_markers"] == 300  # one per job, within the 15 s window
    goals = {g["goal"]: g for g in results["goals"]}
    assert "--processes 2 >= 1.6x one process" in goals
    assert any("(batch signatures" in name for name in goals)
    assert all(g["met"] in (True, False) for g in goals.values())
    assert "issue 15 goals measured in this run" in done.stdout
    if "--chart" in cmd:
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""``benchmarks/gpu_check.py --dry-run``: every phase of the GPU check runs on the CPU at tiny shapes, so
the script cannot rot between the rare sessions that have a GPU."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu-check"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    with (out / "gpu_check.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert {r["phase"] for r in rows} == {"a", "b", "c", "d"}
    failures = [r for r in rows if r["note"].startswith(("failed", "out of memory"))]
    assert not failures, failures
    # phase a collected the GPU tests; b timed every kernel family against its reference and compiled reference
    assert "tests collected" in next(r for r in rows if r["phase"] == "a")["note"]
    kernels = {r["name"] for r in rows if r["phase"] == "b"}
    assert kernels == {"local_attention", "local_correlation", "anchor_nll", "knn_propagate"}
    assert {r["provider"] for r in rows if r["phase"] == "b"} == {"fused", "reference", "compiled"}
    # c: every recipe trained; d: our propagation and CRW's on the same video
    assert {r["name"] for r in rows if r["phase"] == "c" and r["steps_per_s"] > 0} == {
        "recipes/dul.py",
        "recipes/stt_spatial.py",
        "recipes/stt.py",
        "recipes/liir.py",
    }
    assert {"tritoncorr", "crw"} <= {r["provider"] for r in rows if r["phase"] == "d"}
    assert all(r["device"].startswith("CPU") for r in rows)
    table = (out / "gpu_check.md").read_text()
    assert table.count("\n| ") == len(rows) + 1  # header + one line per row

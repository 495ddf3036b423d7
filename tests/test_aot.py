"""The kernel report: tensor-core instruction counts, the roofline model, and the bar every hot kernel meets.

``aot`` tests compile real kernels for sm_80 / sm_90 without a GPU (``triton.compile`` + ``GPUTarget``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from tritoncorr.kernels._utils import triton_available
from tritoncorr.kernels.aot import KERNEL_FAMILIES, tensor_core_counts

from tritoncorr.bench.model import DEVICES, ModelCase, device_for, disc_cells, limit, paper_cases

HAS_TRITON = triton_available()


def test_tensor_core_counts_parse_ptx():
    ptx = """
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1}, {%r1}, {%r2}, {%f1};
    mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%f1}, {%r1}, {%r2}, {%f1};
    wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%f1}, %rd1, %rd2, 1, 1, 1, 0, 0;
    wgmma.fence.sync.aligned;
    wgmma.commit_group.sync.aligned;
    """
    assert tensor_core_counts(ptx) == (2, 1)  # wgmma's fence / commit are not MMAs
    assert tensor_core_counts("fma.rn.f32 %f1, %f2, %f3, %f4;") == (0, 0)


def test_model_limits_follow_the_bound():
    h100, h200 = DEVICES["H100 SXM"], DEVICES["H200"]
    by_name = {(c.kernel, c.shape, c.mode, c.dtype): c for c in paper_cases()}
    for case in by_name.values():
        assert case.flops > 0 and case.bytes > 0
        if case.executed is not None:
            assert case.executed >= case.flops  # the tiles never do less than the op
        bound, t100 = limit(case, h100)
        _, t200 = limit(case, h200)
        # same compute peaks, more bandwidth: memory-bound kernels get faster by the bandwidth ratio
        if bound == "memory":
            assert t200 < t100
        else:
            assert t200 == pytest.approx(t100)
    # DUL's softmax over anchors is compute bound (K 128 dot products per 2-byte element)
    dul = next(c for c in by_name.values() if c.kernel == "anchor_nll" and c.mode == "fwd")
    assert limit(dul, h100)[0] == "compute"
    assert dul.flops == 2 * 81_920 * 1_024 * 128
    # a toy case: 1 GFLOP and 1 GB at bf16 on an H100 is memory bound at 1 GB / 3.35 TB/s
    toy = ModelCase("toy", "-", "fwd", "bf16", 1e9, 1e9, None, {})
    assert limit(toy, h100) == ("memory", pytest.approx(1e3 / 3.35e3))
    assert dataclasses.replace(toy, dtype="fp32").intensity == 1.0


def test_device_names_from_torch():
    assert device_for("NVIDIA H100 80GB HBM3").name == "H100 SXM"
    assert device_for("NVIDIA H100 PCIe").name == "H100 PCIe"
    assert device_for("NVIDIA H200").name == "H200"
    assert device_for("NVIDIA A100-SXM4-80GB").name == "A100"
    assert device_for("NVIDIA GeForce RTX 4090") is None


def test_disc_cells():
    assert disc_cells(1) == 1
    assert disc_cells(2) == 9  # dy^2 + dx^2 < 4
    assert disc_cells(12) == sum(1 for y in range(-12, 13) for x in range(-12, 13) if y * y + x * x < 144)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_model_tiles_match_the_local_attention_kernels():
    from tritoncorr.kernels.local_corr import triton_kernels as tk

    from tritoncorr.bench import model

    assert (model._TILE, model._BLOCK_CO, model._FUSED_MAX_C) == (tk.TILE_H, tk.BLOCK_CO, tk.FUSED_MAX_C)
    assert tk.TILE_H == tk.TILE_W
    assert model._BLOCK_D == tk.launch_config(64, 1, tk.torch.bfloat16, interpret=False)["BLOCK_D"]


_SCRIPT = r"""
import json, os, sys
os.environ.pop("TRITON_INTERPRET", None)
from tritoncorr.kernels.aot import KERNEL_FAMILIES, compile_spec, family_specs
out = []
for family in KERNEL_FAMILIES:
    seen = set()
    for spec in family_specs(family):
        # the main bf16 configuration of each kernel function: its first bf16 spec
        if "bf16" not in spec.name or spec.fn in seen:
            continue
        seen.add(spec.fn)
        out.append(dict(compile_spec(spec, 90).__dict__, family=family))
print(json.dumps(out))
"""


@pytest.mark.aot
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_every_hot_kernel_uses_wgmma_for_bf16_on_sm90():
    """Each kernel function of every family, in its first bf16 configuration, compiled for sm_90: it issues
    wgmma (Hopper's warpgroup tensor-core MMA) and does not spill."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {r["family"] for r in records} == set(KERNEL_FAMILIES)
    bad = [r for r in records if r["error"] or r["spills"] or r["wgmma"] == 0]
    assert not bad, "\n".join(
        f"{r['kernel']}: wgmma={r['wgmma']} mma={r['mma']} spills={r['spills']} {r['error']}" for r in bad
    )


_CLI_SCRIPT = r"""
import os, sys
os.environ.pop("TRITON_INTERPRET", None)
from rich.console import Console
from pathlib import Path
from tritoncorr.cli import bench as cli
from tritoncorr.kernels import aot
specs = [s for s in aot.family_specs("local_corr") if s.name in ("corr_fwd_bf16_c64", "attn_fwd_zero_fp32_c64_d3")]
aot.all_specs = lambda: specs
cli.aot_cli(Path(sys.argv[1]), Console(width=200))
"""


@pytest.mark.aot
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_bench_aot_command_reports_tensor_cores_and_the_model(tmp_path):
    """``tritoncorr bench --aot --json`` (two configurations): per configuration mma.sync / wgmma counts,
    then the model rows."""
    out = tmp_path / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", _CLI_SCRIPT, str(out)], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "wgmma" in proc.stdout and "Roofline model" in proc.stdout
    report = json.loads(out.read_text())
    kernels = {(r["kernel"], r["arch"]): r for r in report["kernels"]}
    assert set(kernels) == {
        (n, a) for n in ("corr_fwd_bf16_c64", "attn_fwd_zero_fp32_c64_d3") for a in ("sm_80", "sm_90")
    }
    assert kernels[("corr_fwd_bf16_c64", "sm_90")]["wgmma"] > 0
    assert kernels[("corr_fwd_bf16_c64", "sm_80")]["mma"] > 0
    assert all(r["spills"] == 0 and not r["error"] for r in report["kernels"])
    assert len(report["model"]) == len(paper_cases())
    assert {"H100 SXM t_min_ms", "H200 t_min_ms", "intensity"} <= set(report["model"][0])

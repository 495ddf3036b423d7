"""``tritoncorr bench``: kernel benchmarks and the ahead-of-time compile report."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tritoncorr.cli.common import fail, resolve_device


def default_out() -> Path:
    """Where results go unless ``--out`` says: ``$XDG_CACHE_HOME/tritoncorr/bench`` (``~/.cache/...``),
    never the current folder or the package's."""
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "tritoncorr" / "bench"


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def model_table(console: Console) -> list[dict]:
    """Print the roofline model of the hot kernels at the papers' shapes; return its rows."""
    from tritoncorr.bench.model import DEVICES, limit, paper_cases

    devices = [DEVICES["H100 SXM"], DEVICES["H200"]]
    table = Table(title="Roofline model at the papers' shapes (useful work; the limit a GPU run is measured against)")
    for col in (
        "kernel",
        "shape",
        "pass",
        "dtype",
        "GFLOP",
        "executed / useful",
        "min MB",
        "FLOP/B",
        *(f"{d.name}: bound, t_min us" for d in devices),
    ):
        table.add_column(col, justify="left" if col in ("kernel", "shape", "pass", "dtype") else "right")
    rows = []
    for case in paper_cases():
        limits = [limit(case, d) for d in devices]
        overhead = case.executed / case.flops if case.executed else None
        table.add_row(
            case.kernel,
            case.shape,
            case.mode,
            case.dtype,
            f"{case.flops / 1e9:.1f}",
            _fmt(overhead),
            f"{case.bytes / 2**20:.1f}",
            f"{case.intensity:.0f}",
            *(f"{bound}, {ms * 1e3:.0f}" for bound, ms in limits),
        )
        rows.append(
            {
                **dataclasses.asdict(case),
                "intensity": case.intensity,
                **{f"{d.name} bound": b for d, (b, _) in zip(devices, limits)},
                **{f"{d.name} t_min_ms": ms for d, (_, ms) in zip(devices, limits)},
            }
        )
    console.print(table)
    return rows


def aot_cli(json_path: Path | None, console: Console) -> None:
    """Compile every kernel configuration for sm_80 / sm_90 (no GPU needed): registers, spills, shared
    memory and tensor-core instructions (``mma.sync``, ``wgmma``); then the roofline model."""
    from tritoncorr.kernels.aot import ARCHS, all_specs, compile_spec

    specs = all_specs()
    table = Table(title="Ahead-of-time compile report (no GPU needed)")
    for col in ("kernel", "arch", "warps", "registers", "spills (B)", "shared (B)", "mma.sync", "wgmma", "status"):
        table.add_column(col, justify="right" if col not in ("kernel", "status") else "left")
    records = []
    with console.status("compiling kernels for sm_80 / sm_90 ...") as status:
        for i, spec in enumerate(specs):
            status.update(f"compiling {spec.name} ({i + 1}/{len(specs)}) for sm_80 / sm_90 ...")
            for arch in ARCHS:
                rec = compile_spec(spec, arch)
                records.append(rec)
                table.add_row(
                    rec.kernel,
                    rec.arch,
                    str(rec.num_warps),
                    str(rec.registers),
                    str(rec.spills),
                    str(rec.shared_bytes),
                    str(rec.mma),
                    str(rec.wgmma),
                    _aot_status(rec),
                )
    console.print(table)
    model = model_table(console)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(
            json.dumps({"kernels": [dataclasses.asdict(r) for r in records], "model": model}, indent=2)
        )
        console.print(f"wrote {json_path}")
    failed = [r for r in records if r.error or r.spills != 0 or not _uses_tensor_cores(r)]
    if failed:
        console.print(
            f"[red]{len(failed)} kernel configuration(s) failed to compile, spill or (16-bit) miss the tensor cores[/red]"
        )
        raise typer.Exit(code=1)


def _uses_tensor_cores(rec) -> bool:
    """The bar for 16-bit configurations: wgmma on sm_90, mma.sync on sm_80. fp32 configurations may use
    tensor cores (TF32) or exact fp32 FMAs (``input_precision="ieee"``, where results must match fp32)."""
    if "bf16" in rec.kernel or "fp16" in rec.kernel:
        return rec.wgmma > 0 if rec.arch == "sm_90" else rec.mma > 0
    return True


def _aot_status(rec) -> str:
    if rec.error:
        return "[red]" + rec.error[:60] + "[/red]"
    if rec.spills:
        return "[red]spills[/red]"
    if not _uses_tensor_cores(rec):
        return "[red]no tensor cores[/red]"
    return "[green]ok[/green]" if rec.mma + rec.wgmma else "[green]ok (exact fp32 FMAs)[/green]"


def bench_cli(
    *,
    kernels: list[str],
    aot: bool,
    json_path: Path | None,
    csv_path: Path | None,
    quick: bool,
    device: str,
    out: Path | None = None,
) -> None:
    console = Console()
    if aot:
        aot_cli(json_path, console)
        return

    from tritoncorr.bench.runner import FAMILIES, append_csv, device_name, load_cases, run_case, write_json

    dev = resolve_device(device)
    unknown = [k for k in kernels if k not in FAMILIES]
    if unknown:
        fail(f"unknown kernel(s) {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    families = kernels or list(FAMILIES)
    if dev.type == "cpu":
        console.print(
            "[yellow]No GPU: benchmarking the CPU paths (PyTorch windowed/chunked ops vs the dense references). "
            "Triton providers are skipped; their figures need a CUDA device.[/yellow]"
        )
    console.print(f"device: {device_name(dev)}")
    cases = load_cases(families, dev, quick)
    results = []
    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(cases))
        for case in cases:
            progress.update(task, description=f"{case.kernel} {case.shape} {case.mode}")
            results.extend(run_case(case, dev, quick=quick))
            progress.advance(task)

    table = Table(title=f"tritoncorr bench on {device_name(dev)}")
    for col in (
        "kernel",
        "shape",
        "mode",
        "provider",
        "p50 ms",
        "p20 ms",
        "p80 ms",
        "peak MiB",
        "TFLOP/s",
        "GB/s",
        "% roof",
        "note",
    ):
        table.add_column(col, justify="left" if col in ("kernel", "shape", "mode", "provider", "note") else "right")
    for r in results:
        table.add_row(
            r.kernel,
            r.shape,
            r.mode,
            r.provider,
            _fmt(r.p50_ms),
            _fmt(r.p20_ms),
            _fmt(r.p80_ms),
            _fmt(r.peak_mb),
            _fmt(r.tflops),
            _fmt(r.gbps),
            _fmt(r.roofline_pct),
            r.note,
        )
    console.print(table)
    _print_ratios(results, console)
    csv_path = csv_path or (out or default_out()) / ("bench-quick.csv" if quick else "bench.csv")
    append_csv(csv_path, results)
    console.print(f"appended {len(results)} rows to {csv_path}")
    if json_path is not None:
        write_json(json_path, results)
        console.print(f"wrote {json_path}")


def _print_ratios(results, console: Console) -> None:
    """Side-by-side ratios (time and peak memory) of each provider against the slowest baseline of its case."""
    from collections import defaultdict

    groups = defaultdict(dict)
    for r in results:
        if not math.isnan(r.p50_ms):
            groups[(r.kernel, r.shape, r.mode)][r.provider] = r
    table = Table(title="ratios within each case (baseline = the reference provider named)")
    for col in ("kernel", "shape", "mode", "provider", "vs", "speed-up", "memory ratio"):
        table.add_column(col)
    baselines = ("dense", "unfold", "eager")
    rows = 0
    for (kernel, shape, mode), provs in groups.items():
        base = next((provs[b] for b in baselines if b in provs), None)
        if base is None:
            continue
        for name, r in provs.items():
            if r is base:
                continue
            mem = base.peak_mb / r.peak_mb if r.peak_mb > 0 else float("inf")
            table.add_row(
                kernel, shape, mode, name, base.provider, f"{base.p50_ms / r.p50_ms:.2f}x", f"{mem:.1f}x less"
            )
            rows += 1
    if rows:
        console.print(table)

"""``tritoncorr bench``: kernel benchmarks and the ahead-of-time compile report."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

DEFAULT_CSV = Path("benchmarks/results/bench.csv")


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def aot_cli(json_path: Path | None, console: Console) -> None:
    from tritoncorr.kernels.aot import all_specs, compile_spec, ARCHS

    specs = all_specs()
    if not specs:
        console.print("[yellow]no Triton kernels registered yet[/yellow]")
        raise typer.Exit(code=1)
    table = Table(title="Ahead-of-time compile report (no GPU needed)")
    for col in ("kernel", "arch", "warps", "registers", "spills (B)", "shared (B)", "status"):
        table.add_column(col, justify="right" if col not in ("kernel", "status") else "left")
    records = []
    with console.status("compiling kernels for sm_80 / sm_90 ..."):
        for spec in specs:
            for arch in ARCHS:
                rec = compile_spec(spec, arch)
                records.append(rec)
                status = "[red]" + rec.error[:60] + "[/red]" if rec.error else ("[green]ok[/green]" if rec.spills == 0 else "[red]spills[/red]")
                table.add_row(rec.kernel, rec.arch, str(rec.num_warps), str(rec.registers), str(rec.spills), str(rec.shared_bytes), status)
    console.print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps([dataclasses.asdict(r) for r in records], indent=2))
        console.print(f"wrote {json_path}")
    failed = [r for r in records if r.error or r.spills != 0]
    if failed:
        console.print(f"[red]{len(failed)} kernel configuration(s) failed to compile or spill[/red]")
        raise typer.Exit(code=1)


def bench_cli(*, kernels: list[str], aot: bool, json_path: Path | None, csv_path: Path | None, quick: bool, device: str) -> None:
    console = Console()
    if aot:
        aot_cli(json_path, console)
        return

    import torch

    from tritoncorr.bench.runner import FAMILIES, append_csv, device_name, load_cases, run_case, write_json

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        console.print("[red]--device cuda requested but no CUDA device is available[/red]")
        raise typer.Exit(code=2)
    dev = torch.device(device)
    unknown = [k for k in kernels if k not in FAMILIES]
    if unknown:
        console.print(f"[red]unknown kernel(s) {', '.join(unknown)}; choose from {', '.join(FAMILIES)}[/red]")
        raise typer.Exit(code=2)
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
    for col in ("kernel", "shape", "mode", "provider", "p50 ms", "p20 ms", "p80 ms", "peak MiB", "TFLOP/s", "GB/s", "% roof", "note"):
        table.add_column(col, justify="left" if col in ("kernel", "shape", "mode", "provider", "note") else "right")
    for r in results:
        table.add_row(r.kernel, r.shape, r.mode, r.provider, _fmt(r.p50_ms), _fmt(r.p20_ms), _fmt(r.p80_ms), _fmt(r.peak_mb), _fmt(r.tflops), _fmt(r.gbps), _fmt(r.roofline_pct), r.note)
    console.print(table)
    _print_ratios(results, console)
    csv_path = csv_path or DEFAULT_CSV
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
            table.add_row(kernel, shape, mode, name, base.provider, f"{base.p50_ms / r.p50_ms:.2f}x", f"{mem:.1f}x less")
            rows += 1
    if rows:
        console.print(table)

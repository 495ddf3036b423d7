"""Run benchmark cases: time and peak memory per provider, roofline fraction, result rows.

Results are appended to a CSV (one row per kernel/shape/mode/provider) together with the device
name, versions and the date, so figures from different machines and commits can be compared; a
plotting script or a person reads the CSV.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import importlib
import json
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from tritoncorr.bench.core import BenchCase, BenchResult, SkipProvider, peak_memory_bytes, time_fn
from tritoncorr.bench.model import Device, device_for

FAMILIES = ("knn_propagate", "local_corr", "anchor_softmax", "eval_davis")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def roofline_for(device: torch.device) -> Device | None:
    """The data-sheet peaks of ``device`` (:data:`tritoncorr.bench.model.DEVICES`); None on CPU or unknown GPUs."""
    if device.type != "cuda":
        return None
    return device_for(torch.cuda.get_device_name(device))


def load_cases(families: list[str], device: torch.device, quick: bool) -> list[BenchCase]:
    cases: list[BenchCase] = []
    for family in families:
        try:
            module = importlib.import_module(f"tritoncorr.bench.{family}")
        except ModuleNotFoundError as exc:
            if exc.name == f"tritoncorr.bench.{family}":
                continue
            raise
        cases.extend(module.cases(device, quick))
    return cases


def _untimed(case: BenchCase, provider: str, dev: str, note: str) -> BenchResult:
    """The row of a provider that was not timed (``note`` says why): NaN times and memory, no rates."""
    nan = float("nan")
    return BenchResult(
        case.kernel, case.shape, case.mode, provider, dev, nan, nan, nan, nan, None, None, None, note=note
    )


def run_case(
    case: BenchCase, device: torch.device, *, quick: bool, on_result: Callable[[BenchResult], None] | None = None
) -> list[BenchResult]:
    results: list[BenchResult] = []
    roof = roofline_for(device)
    for provider, factory in case.providers.items():
        dev = device_name(device)
        try:
            fn = factory()
        except SkipProvider as skip:
            result = _untimed(case, provider, dev, f"skipped: {skip}")
        except torch.OutOfMemoryError as exc:
            result = _untimed(case, provider, dev, f"out of memory: {str(exc).splitlines()[0]}")
        else:
            p50, p20, p80 = time_fn(fn, device, quick=quick)
            peak = peak_memory_bytes(fn, device) / 2**20
            tflops = case.flops / (p50 * 1e-3) / 1e12 if case.flops else None
            gbps = case.bytes / (p50 * 1e-3) / 1e9 if case.bytes else None
            pct = None
            if roof is not None and tflops is not None:
                pct = 100.0 * tflops / roof.bf16_tflops
            elif roof is not None and gbps is not None:
                pct = 100.0 * gbps / (roof.tbps * 1e3)
            result = BenchResult(
                case.kernel, case.shape, case.mode, provider, dev, p50, p20, p80, peak, tflops, gbps, pct
            )
            del fn
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def environment() -> dict[str, str]:
    """Date and versions for each result row (triton "None" where it is not installed)."""
    from tritoncorr.provenance import versions

    found = versions()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": str(found["triton"]),
        "python": platform.python_version(),
        "cuda": str(torch.version.cuda),
    }


def append_csv(path: Path, results: list[BenchResult]) -> None:
    env = environment()
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = [f.name for f in dataclasses.fields(BenchResult)] + list(env)
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        if new:
            writer.writeheader()
        for r in results:
            writer.writerow({**dataclasses.asdict(r), **env})


def write_json(path: Path, results: list[BenchResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"environment": environment(), "results": [dataclasses.asdict(r) for r in results]},
            indent=2,
            allow_nan=True,
        )
    )

"""The one command that measures tritoncorr's GPU path, most important first, in about 8 minutes.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu-<device>-<date>
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu-check      # every phase on the CPU, tiny shapes

Phases (``--phases`` picks some; each has a time budget, cases past it are recorded as skipped):

a. ``pytest -m gpu``: every kernel test on CUDA (values and gradients against the references,
   fp32 and bf16). Dry run: collects them (they skip on CPU).
b. each kernel family at the papers' shapes (:mod:`tritoncorr.bench.model`) against its PyTorch
   reference and ``torch.compile`` of it: forward, backward and forward+backward time
   (``triton.testing.do_bench``; CPU: the median of a few calls), peak memory, and the percentage of
   the roofline limit the model gives for the device.
c. training throughput of every recipe at its paper shape (synthetic clips of the recipe's crop and
   batch), ~30 optimiser steps: steps/s, images/s, peak memory, with the fused kernels and with the
   PyTorch path of the ops (``TRITONCORR_BACKEND=torch``), eager and ``torch.compile``'d.
d. ``eval davis``'s work on a generated 480p video (features, propagation, masks) against CRW's
   dense propagation of the same features (:mod:`tritoncorr.bench.eval_davis`).

Every row is appended to ``OUT/gpu_check.csv`` and ``OUT/gpu_check.jsonl`` the moment it is measured
(a timeout keeps what finished); the end prints one markdown table and writes it to
``OUT/gpu_check.md`` with the device, versions and date.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("a", "b", "c", "d")
#: Seconds per phase on the GPU (dry run: no budget); the whole check stays under 8 minutes.
BUDGET_S = {"a": 150, "b": 150, "c": 120, "d": 60}


@dataclasses.dataclass
class Row:
    phase: str
    name: str
    shape: str
    mode: str
    provider: str
    ms: float = math.nan
    peak_mib: float = math.nan
    limit_pct: float = math.nan
    steps_per_s: float = math.nan
    images_per_s: float = math.nan
    note: str = ""


class Recorder:
    """Appends every row to ``gpu_check.csv`` / ``gpu_check.jsonl`` as soon as it exists."""

    def __init__(self, out: Path, env: dict[str, str]):
        self.out, self.env, self.rows = out, env, []
        out.mkdir(parents=True, exist_ok=True)
        self.csv = out / "gpu_check.csv"
        self.jsonl = out / "gpu_check.jsonl"
        for path in (self.csv, self.jsonl):
            path.unlink(missing_ok=True)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        record = {**dataclasses.asdict(row), **self.env}
        new = not self.csv.exists()
        with self.csv.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(record))
            if new:
                writer.writeheader()
            writer.writerow(record)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(
            f"[{row.phase}] {row.name} | {row.shape} | {row.mode} | {row.provider}: {_fmt(row.ms)} ms"
            f"{'' if math.isnan(row.limit_pct) else f' ({row.limit_pct:.0f}% of limit)'} {row.note}",
            flush=True,
        )


def _fmt(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def environment(device) -> dict[str, str]:
    import torch

    from tritoncorr.provenance import versions

    triton_version = str(versions()["triton"])
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    return {
        "device": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": str(torch.version.cuda),
        "git": sha,
        "date": dt.date.today().isoformat(),
    }


class Budget:
    """Time left for one phase; ``None`` seconds = no limit (dry run)."""

    def __init__(self, seconds: float | None):
        self.end = None if seconds is None else time.monotonic() + seconds

    def exhausted(self) -> bool:
        return self.end is not None and time.monotonic() > self.end


# ---------------------------------------------------------------------------------------------
# timing helpers
# ---------------------------------------------------------------------------------------------


def time_ms(fn: Callable[[], object], device) -> float:
    """Median milliseconds of ``fn``: ``triton.testing.do_bench`` on CUDA, a few timed calls on CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=5, rep=40))
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def peak_mib(fn: Callable[[], object], device) -> float:
    """Peak CUDA memory of one call (MiB); NaN on CPU (the dry run checks the plumbing, not memory)."""
    if device.type != "cuda":
        return math.nan
    from tritoncorr.bench.core import peak_memory_bytes

    return peak_memory_bytes(fn, device) / 2**20


# ---------------------------------------------------------------------------------------------
# phase a: pytest -m gpu
# ---------------------------------------------------------------------------------------------


def phase_a(rec: Recorder, dry_run: bool, budget_s: float | None) -> None:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"]
    if dry_run:
        cmd.insert(-1, "--collect-only")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=budget_s)
        tail = (proc.stdout.strip().splitlines() or [""])[-1]
        note = f"exit {proc.returncode}: {tail}"
    except subprocess.TimeoutExpired:
        note = f"stopped at the phase budget ({budget_s:.0f} s)"
    rec.add(
        Row(
            "a",
            "pytest -m gpu",
            "tests/",
            "collect" if dry_run else "run",
            "pytest",
            ms=1e3 * (time.perf_counter() - t0),
            note=note,
        )
    )


# ---------------------------------------------------------------------------------------------
# phase b: kernel families at the papers' shapes vs their references
# ---------------------------------------------------------------------------------------------


def _tiny(case):
    """The dry run's stand-in for a model case: the same kernel and pass at a few-KB shape."""
    p = dict(case.params)
    if case.kernel in ("local_attention", "local_correlation"):
        p.update(B=1, C=min(p["C"], 8), H=9, W=10, radius=min(p["radius"], 2))
    elif case.kernel == "anchor_nll":
        p.update(P=64, A=16, K=8)
    elif case.kernel == "knn_propagate":
        p.update(h=6, w=7, C=8, frames=3, radius=2, labels=2)
    return p


def _kernel_providers(kernel: str, p: dict, dtype, device, compile_backend: str) -> dict[str, tuple[Callable, list]]:
    """provider -> (function of the inputs, inputs) for one kernel at one shape."""
    import torch

    def _compile(fn: Callable, feasible: bool) -> Callable | None:
        """``torch.compile`` of a reference, or None where its compile would not fit the check (a Python
        loop over 625 window offsets unrolls into a graph that takes minutes to compile)."""
        return torch.compile(fn, backend=compile_backend) if feasible else None

    from tritoncorr import kernels as K
    from tritoncorr.bench.local_corr import unfold_attention

    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    if kernel == "local_attention":
        B, C, D, H, W, r = (p[k] for k in ("B", "C", "D", "H", "W", "radius"))
        s = 1 / math.sqrt(C)
        inputs = [rand(B, C, H, W), rand(B, C, H, W), rand(B, D, H, W)]
        border = "zero" if D == 3 else "truncate"
        fused = lambda q, k, v: K.local_attention(q, k, v, r, scale=s, border=border)  # noqa: E731
        ref = lambda q, k, v: unfold_attention(q, k, v, r, s, border)  # noqa: E731
        return {"fused": (fused, inputs), "reference": (ref, inputs), "compiled": (_compile(ref, r <= 6), inputs)}
    if kernel == "local_correlation":
        B, C, H, W, r = (p[k] for k in ("B", "C", "H", "W", "radius"))
        inputs = [rand(B, C, H, W, scale=C**-0.25), rand(B, C, H, W, scale=C**-0.25)]
        fused = lambda q, k: K.local_correlation(q, k, r)  # noqa: E731
        ref = lambda q, k: K.local_correlation_reference(q, k, r).to(dtype)  # noqa: E731
        return {"fused": (fused, inputs), "reference": (ref, inputs), "compiled": (_compile(ref, True), inputs)}
    if kernel == "anchor_nll":
        P, A, Kd = p["P"], p["A"], p["K"]
        feats = torch.nn.functional.normalize(rand(P, Kd).float(), dim=1).to(dtype)
        anchors = torch.nn.functional.normalize(rand(A, Kd).float(), dim=1).to(dtype)
        labels = torch.randint(0, A, (P,), generator=g).to(device)
        fused = lambda f, a: K.anchor_nll(f, a, labels, 0.05)  # noqa: E731
        ref = lambda f, a: K.anchor_nll_reference(f, a, labels, 0.05)  # noqa: E731
        return {
            "fused": (fused, [feats, anchors]),
            "reference": (ref, [feats, anchors]),
            "compiled": (_compile(ref, True), [feats, anchors]),
        }
    if kernel == "knn_propagate":
        h, w, C, T, r, L = (p[k] for k in ("h", "w", "C", "frames", "radius", "labels"))
        query = torch.nn.functional.normalize(rand(C, h, w).float(), dim=0).to(dtype)
        keys = torch.nn.functional.normalize(rand(T, C, h, w).float(), dim=1).to(dtype)
        values = torch.softmax(torch.randn(T, L, h, w, generator=g), dim=1).to(device)
        kw = dict(radius=r, topk=10, temperature=0.05, window="disc", unrestricted=1)
        fused = lambda q, k: K.knn_propagate(q, k, values, **kw)  # noqa: E731
        ref = lambda q, k: K.knn_propagate_dense(q, k, values, K.KnnSearch(**kw))  # noqa: E731
        return {"fused": (fused, [query, keys]), "reference": (ref, [query, keys])}
    raise ValueError(kernel)


def _modes(kernel: str, mode: str) -> list[str]:
    if kernel == "knn_propagate":
        return ["fwd"]
    return ["fwd", "fwd+bwd"] if mode == "fwd" else ["bwd"]


def phase_b(rec: Recorder, device, dry_run: bool, budget: Budget) -> None:
    import torch

    # the backward of a compiled reference is timed repeatedly on one graph (retain_graph)
    import torch._functorch.config

    from tritoncorr.bench.core import run_for_mode
    from tritoncorr.bench.model import device_for, limit, paper_cases

    torch._functorch.config.donated_buffer = False
    gpu = device_for(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    compile_backend = "aot_eager" if dry_run else "inductor"
    model = {(c.kernel, c.shape, c.mode, c.dtype): c for c in paper_cases()}
    cases = paper_cases()
    if dry_run:  # every kernel and pass once: the plumbing, not the numbers
        cases = list({(c.kernel, c.mode): c for c in reversed(cases)}.values())[::-1]
    for case in cases:
        dtype = torch.bfloat16 if case.dtype == "bf16" else torch.float32
        params = _tiny(case) if dry_run else case.params
        for mode in _modes(case.kernel, case.mode):
            for provider, (fn, inputs) in _kernel_providers(
                case.kernel, params, dtype, device, compile_backend
            ).items():
                if budget.exhausted():
                    rec.add(Row("b", case.kernel, case.shape, mode, provider, note="skipped: phase budget spent"))
                    continue
                if fn is None:
                    rec.add(
                        Row(
                            "b", case.kernel, case.shape, mode, provider, note="skipped: compile too long for the check"
                        )
                    )
                    continue
                try:
                    leaves = [t.detach().requires_grad_(mode != "fwd" and t.is_floating_point()) for t in inputs]
                    call = run_for_mode(
                        lambda fn=fn, leaves=leaves: fn(*leaves), [t for t in leaves if t.requires_grad], mode
                    )
                    ms = time_ms(call, device)
                    mem = peak_mib(call, device)
                except torch.OutOfMemoryError:
                    rec.add(Row("b", case.kernel, case.shape, mode, provider, note="out of memory"))
                    torch.cuda.empty_cache()
                    continue
                pct = math.nan
                if gpu is not None and not dry_run:
                    passes = ["fwd", "bwd"] if mode == "fwd+bwd" else [mode]
                    t_min = sum(
                        limit(model[(case.kernel, case.shape, m, case.dtype)], gpu)[1]
                        for m in passes
                        if (case.kernel, case.shape, m, case.dtype) in model
                    )
                    pct = 100.0 * t_min / ms
                rec.add(
                    Row(
                        "b",
                        case.kernel,
                        case.shape,
                        mode,
                        provider,
                        ms=ms,
                        peak_mib=mem,
                        limit_pct=pct,
                        note=case.dtype,
                    )
                )


# ---------------------------------------------------------------------------------------------
# phase c: training throughput per recipe
# ---------------------------------------------------------------------------------------------

#: The recipes whose paper shape phase c trains (their default config; the dry run takes ``:smoke``).
RECIPES = ("recipes/dul.py", "recipes/stt_spatial.py", "recipes/stt.py", "recipes/liir.py")


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _paper_config(ref: str, device: str, dry_run: bool, compile_: bool, steps: int):
    """The recipe's paper config (dry run: its smoke config) on synthetic clips of its crop and batch."""
    from tritoncorr.engine.recipe import load_recipe

    cfg = load_recipe(f"{ref}:smoke" if dry_run else ref, validate=False)
    data = cfg.data
    crop = getattr(data, "crop_size", 256) or 256
    changes = dict(source="synthetic", root="", num_workers=0, pin_memory=False)
    if hasattr(data, "synthetic_size"):
        changes["synthetic_size"] = (crop + 16, crop + 48)
        changes["synthetic_videos"] = max(getattr(data, "synthetic_videos", 4), data.batch_size)
    data = dataclasses.replace(data, **{k: v for k, v in changes.items() if hasattr(data, k)})
    method = cfg.method
    if hasattr(method, "teacher_weights") and not dry_run:  # no published teacher on the machine: a random one
        method = dataclasses.replace(
            method, teacher_weights="random", **({"use_teacher": True} if hasattr(method, "use_teacher") else {})
        )
    return dataclasses.replace(
        cfg,
        data=data,
        method=method,
        steps=steps,
        device=device,
        compile=compile_,
        compile_backend="aot_eager" if dry_run else "inductor",
        eval=dataclasses.replace(cfg.eval, every=0),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=0),
        log_every=10**9,
        curves_every=0,
        sync_bn=False,
    )


def phase_c(rec: Recorder, device, dry_run: bool, budget: Budget) -> None:
    import torch

    from tritoncorr.engine.loop import Trainer

    steps, warmup = (2, 1) if dry_run else (30, 5)
    variants = [("fused", "auto", False), ("pytorch-path", "torch", False), ("fused+compile", "auto", True)]
    for ref in RECIPES:
        # dry run: every recipe with the fused kernels, every variant with the first recipe
        for name, backend, compile_ in variants if not dry_run or ref == RECIPES[0] else variants[:1]:
            shape = "smoke" if dry_run else "paper"
            if budget.exhausted():
                rec.add(Row("c", ref, shape, "train", name, note="skipped: phase budget spent"))
                continue
            try:
                with _env(TRITONCORR_BACKEND=backend), tempfile.TemporaryDirectory() as tmp:
                    cfg = _paper_config(ref, device.type, dry_run, compile_, steps)
                    cfg.validate()
                    trainer = Trainer(cfg, Path(tmp) / "run", progress=False)
                    try:
                        if device.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(device)
                        t_start = None
                        for i in range(steps):
                            if i == warmup:
                                if device.type == "cuda":
                                    torch.cuda.synchronize(device)
                                t_start = time.perf_counter()
                            trainer.train_step()
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                        elapsed = time.perf_counter() - t_start
                        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else math.nan
                    finally:
                        trainer.close()
                per_step = elapsed / (steps - warmup)
                images = cfg.data.batch_size * max(2, getattr(cfg.data, "clip_len", 2))
                rec.add(
                    Row(
                        "c",
                        ref,
                        f"{shape}: batch {cfg.data.batch_size}, crop {getattr(cfg.data, 'crop_size', '-')}",
                        "train",
                        name,
                        ms=1e3 * per_step,
                        peak_mib=peak,
                        steps_per_s=1 / per_step,
                        images_per_s=images / per_step,
                    )
                )
            except torch.OutOfMemoryError:
                rec.add(Row("c", ref, shape, "train", name, note="out of memory"))
                torch.cuda.empty_cache()
            except Exception as exc:  # one recipe's failure is a finding, not the end of the check
                rec.add(Row("c", ref, shape, "train", name, note=f"failed: {type(exc).__name__}: {str(exc)[:160]}"))


# ---------------------------------------------------------------------------------------------
# phase d: DAVIS-style propagation end to end vs CRW
# ---------------------------------------------------------------------------------------------


def phase_d(rec: Recorder, device, dry_run: bool, budget: Budget) -> None:
    from tritoncorr.bench import eval_davis

    size, frames = ((48, 64), 4) if dry_run else ((480, 854), eval_davis.FRAMES)
    case = eval_davis.propagation_case(device, frames, *size)
    for provider, factory in case.providers.items():
        if budget.exhausted():
            rec.add(Row("d", case.kernel, case.shape, case.mode, provider, note="skipped: phase budget spent"))
            continue
        run = factory()
        t0 = time.perf_counter()
        run()
        seconds = time.perf_counter() - t0
        rec.add(
            Row(
                "d",
                case.kernel,
                case.shape,
                case.mode,
                provider,
                ms=1e3 * seconds,
                note=f"{frames / seconds:.2f} frames/s",
            )
        )


# ---------------------------------------------------------------------------------------------


def markdown(rows: list[Row], env: dict[str, str]) -> str:
    head = f"GPU check on {env['device']} (torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, git {env['git']}, {env['date']})\n\n"
    lines = [
        "| phase | what | shape | mode | provider | ms | peak MiB | % of limit | steps/s | images/s | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.phase} | {r.name} | {r.shape} | {r.mode} | {r.provider} | {_fmt(r.ms)} | {_fmt(r.peak_mib)} | "
            f"{_fmt(r.limit_pct, 2)} | {_fmt(r.steps_per_s)} | {_fmt(r.images_per_s)} | {r.note} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.csv / .jsonl / .md")
    parser.add_argument("--dry-run", action="store_true", help="every phase on the CPU at tiny shapes (seconds)")
    parser.add_argument("--phases", default="abcd", help="which phases, in order (default abcd)")
    args = parser.parse_args(argv)
    phases = [p for p in args.phases if p in PHASES]
    if not phases:
        parser.error(f"--phases must name some of {''.join(PHASES)}")

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run to exercise the phases on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    env = environment(device)
    rec = Recorder(args.out, env)
    print(f"GPU check on {env['device']}; rows go to {rec.csv} as they are measured", flush=True)
    for phase in phases:
        seconds = None if args.dry_run else BUDGET_S[phase]
        if phase == "a":
            phase_a(rec, args.dry_run, seconds)
        elif phase == "b":
            phase_b(rec, device, args.dry_run, Budget(seconds))
        elif phase == "c":
            phase_c(rec, device, args.dry_run, Budget(seconds))
        else:
            phase_d(rec, device, args.dry_run, Budget(seconds))
    table = markdown(rec.rows, env)
    (args.out / "gpu_check.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

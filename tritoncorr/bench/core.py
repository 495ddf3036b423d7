"""Benchmark machinery shared by every kernel: cases, timing, peak memory, roofline, result files.

A kernel family contributes a module ``tritoncorr/bench/<family>.py`` with

    def cases(device: torch.device, quick: bool) -> list[BenchCase]

Each :class:`BenchCase` is one (kernel, shape, mode) and maps provider names ("triton", "torch",
"dense", "eager", "compiled", ...) to *factories*: a factory builds its inputs on the device and
returns the zero-argument function to time. Inputs are built per provider so that peak memory of
one provider does not include another's buffers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

Factory = Callable[[], Callable[[], Any]]


@dataclasses.dataclass
class BenchCase:
    """One benchmarked configuration.

    ``flops``: useful floating-point operations of one call (for TFLOP/s), or None.
    ``bytes``: minimal bytes one call must move (for GB/s), or None.
    ``providers``: provider name -> factory (see the module docstring). A factory may raise
    ``SkipProvider`` (e.g. the dense reference would not fit in memory).
    """

    kernel: str
    shape: str
    mode: str
    providers: dict[str, Factory]
    flops: float | None = None
    bytes: float | None = None


class SkipProvider(Exception):
    """Raised by a factory that cannot run here; the message is shown in the table."""


@dataclasses.dataclass
class BenchResult:
    kernel: str
    shape: str
    mode: str
    provider: str
    device: str
    p50_ms: float
    p20_ms: float
    p80_ms: float
    peak_mb: float
    tflops: float | None
    gbps: float | None
    roofline_pct: float | None
    note: str = ""


def run_for_mode(fn: Callable[[], torch.Tensor], inputs: list[torch.Tensor], mode: str) -> Callable[[], object]:
    """The zero-argument call to time for ``mode``: ``"fwd"`` (``fn()`` without autograd), ``"bwd"`` (the
    gradients w.r.t. ``inputs`` of one graph of ``fn()`` built here, for a fixed random output gradient,
    repeated with ``retain_graph``) or ``"fwd+bwd"`` (``fn()`` and its gradients for an output gradient of
    ones). Called once here as a warm-up (compiles Triton / ``torch.compile`` outside the timed calls)."""
    if mode == "fwd":

        def run():
            with torch.no_grad():
                return fn()
    elif mode == "bwd":
        out = fn()
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)

        def run():
            return torch.autograd.grad(out, inputs, grad, retain_graph=True)
    else:

        def run():
            out = fn()
            return torch.autograd.grad(out, inputs, torch.ones_like(out))

    run()
    return run


@contextlib.contextmanager
def _quiet_native_output():
    """Send the process's native stdout/stderr (file descriptors 1 and 2) to /dev/null: the profiler's
    C++ side prints lines such as ``USDT: ... profiler_start`` on every start. Python's own streams
    are flushed first; an exception still propagates."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated through torch's CPU allocator during one call of ``fn``.

    torch has no CPU allocator statistics, so this replays the profiler's memory events (every
    allocation and free of the CPU allocator, including those inside opaque custom ops) in time
    order and takes the maximum of the running sum. Memory alive before the call is not counted.
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_output(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
        del result
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak extra memory of one call of ``fn`` (CUDA: allocator statistics; CPU: profiler memory events)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del result
        return peak
    return _cpu_peak_bytes(fn)


def time_fn(fn: Callable[[], Any], device: torch.device, *, quick: bool) -> tuple[float, float, float]:
    """(p50, p20, p80) milliseconds. CUDA: ``triton.testing.do_bench``; CPU: wall clock after a warm-up."""
    if device.type == "cuda":
        import triton.testing

        q = triton.testing.do_bench(
            fn, warmup=25 if quick else 100, rep=100 if quick else 500, quantiles=[0.5, 0.2, 0.8]
        )
        return float(q[0]), float(q[1]), float(q[2])
    fn()  # warm-up
    reps = 3 if quick else 7
    budget_s = 2.0 if quick else 10.0
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < reps:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start_all > budget_s and len(times) >= 2:
            break
    times.sort()

    def q(p: float) -> float:
        return times[min(len(times) - 1, int(round(p * (len(times) - 1))))]

    return statistics.median(times), q(0.2), q(0.8)

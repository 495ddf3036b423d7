"""Benchmark cases for kNN-softmax label propagation (one target frame, a 21-frame context).

Shapes follow the evaluation protocols at stride 8: DAVIS-2017 480p (60 x 107, C = 256 as CRW's
layer3, 512 as DUL's layer4, L = 1 and 10), VIP 560 x 560 (70 x 70, L = 20), JHMDB 320 x 320
(40 x 40, L = 15 heatmaps); radius 12 disc with frame 0 unrestricted, top-10, tau 0.05.

Providers: "triton" (the Triton kernel, CUDA only), "torch" (the windowed PyTorch path), "dense"
(the CRW-style dense affinity in chunks of 100 queries with the -1e10 mask).
``flops`` counts the useful multiply-adds (x2) of the windowed candidate scores plus the label sums.

Full-window mode (:func:`~tritoncorr.kernels.knn_propagate.window_propagate`, MAST/LIIR, kernel
``window_propagate``): DAVIS 480p padded to 856 at stride 4 (120 x 214, C = 64 as LIIR's/MAST's
feature, L = 7), the 5 MAST references, raw features; LIIR r = 14 with the compactness prior M = 2,
MAST r = 12 without. Providers "triton" and "torch" (the dense reference would need 11 GB).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tritoncorr.bench.core import BenchCase, SkipProvider
from tritoncorr.kernels.knn_propagate import KnnSearch, knn_propagate_dense, knn_propagate_windowed
from tritoncorr.kernels.window_propagate import WindowSearch, window_propagate_windowed

RADIUS, TOPK, TEMPERATURE, CONTEXT = 12, 10, 0.05, 21


def window_candidates(h: int, w: int, radius: int, window: str = "disc") -> int:
    """Sum over all query cells of the number of in-image window cells (exact, border-clipped)."""
    total = 0
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            inside = dy * dy + dx * dx < radius * radius if window == "disc" else True
            if inside:
                total += max(h - abs(dy), 0) * max(w - abs(dx), 0)
    return total


def useful_flops(c: int, h: int, w: int, n: int, lab: int, unrestricted: int = 1) -> float:
    hw = h * w
    cands = unrestricted * hw * hw + (n - unrestricted) * window_candidates(h, w, RADIUS)
    return 2.0 * c * cands + 2.0 * TOPK * lab * hw


def _inputs(device: torch.device, c: int, h: int, w: int, n: int, lab: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(c, h, w, generator=g), dim=0).to(device=device, dtype=dtype)
    k = F.normalize(torch.randn(n, c, h, w, generator=g), dim=1).to(device=device, dtype=dtype)
    v = torch.softmax(torch.randn(n, lab, h, w, generator=g), dim=1).to(device)
    return q, k, v


def _case(device: torch.device, name: str, c: int, h: int, w: int, lab: int, dtype: torch.dtype) -> BenchCase:
    n = CONTEXT
    search = KnnSearch(radius=RADIUS, topk=TOPK, temperature=TEMPERATURE, window="disc", unrestricted=1)

    def triton_factory():
        if device.type != "cuda":
            raise SkipProvider("Triton kernel needs a CUDA device")
        q, k, v = _inputs(device, c, h, w, n, lab, dtype)
        op = torch.ops.tritoncorr.knn_propagate
        return lambda: op(q, k, v, *search.op_args())

    def torch_factory():
        q, k, v = _inputs(device, c, h, w, n, lab, dtype)
        return lambda: knn_propagate_windowed(q, k, v, search)

    def dense_factory():
        q, k, v = _inputs(device, c, h, w, n, lab, dtype)
        return lambda: knn_propagate_dense(q, k, v, search)

    elem = torch.finfo(dtype).bits // 8
    hw = h * w
    nbytes = elem * c * hw * (n + 1) + 4 * lab * hw * (n + 1)
    dt = str(dtype).replace("torch.", "")
    return BenchCase(
        kernel="knn_propagate",
        shape=f"{name} {h}x{w} C={c} N={n} L={lab} r={RADIUS} k={TOPK} {dt}",
        mode="fwd",
        providers={"triton": triton_factory, "torch": torch_factory, "dense": dense_factory},
        flops=useful_flops(c, h, w, n, lab),
        bytes=float(nbytes),
    )


def _window_case(device: torch.device, name: str, radius: int, compact: int, dtype: torch.dtype) -> BenchCase:
    c, h, w, n, lab = 64, 120, 214, 5, 7
    search = WindowSearch(radius=radius, compact=compact)

    def inputs():
        g = torch.Generator().manual_seed(0)
        q = (torch.randn(c, h, w, generator=g) / 4).to(device=device, dtype=dtype)
        k = (torch.randn(n, c, h, w, generator=g) / 4).to(device=device, dtype=dtype)
        ids = torch.randint(0, lab, (n, h, w), generator=g)
        v = F.one_hot(ids, lab).permute(0, 3, 1, 2).float().to(device)
        return q, k, v

    def triton_factory():
        if device.type != "cuda":
            raise SkipProvider("Triton kernel needs a CUDA device")
        q, k, v = inputs()
        op = torch.ops.tritoncorr.window_propagate
        return lambda: op(q, k, v, *search.op_args())

    def torch_factory():
        q, k, v = inputs()
        return lambda: window_propagate_windowed(q, k, v, search)

    side = 2 * radius + 1
    hw = h * w
    elem = torch.finfo(dtype).bits // 8
    dt = str(dtype).replace("torch.", "")
    return BenchCase(
        kernel="window_propagate",
        shape=f"{name} {h}x{w} C={c} N={n} L={lab} r={radius} M={compact} {dt}",
        mode="fwd",
        providers={"triton": triton_factory, "torch": torch_factory},
        flops=2.0 * (c + lab) * n * side * side * hw,
        bytes=float(elem * c * hw * (n + 1) + 4 * lab * hw * (n + 1)),
    )


def cases(device: torch.device, quick: bool) -> list[BenchCase]:
    """JHMDB only when ``quick``; otherwise DAVIS (C 256/512, L 1/10), VIP and JHMDB (+ bf16 on CUDA),
    and the full-window DAVIS cases of LIIR and MAST."""
    jhmdb = _case(device, "jhmdb", 512, 40, 40, 15, torch.float32)
    if quick:
        return [jhmdb]
    out = [
        _case(device, "davis", 256, 60, 107, 10, torch.float32),
        _case(device, "davis", 256, 60, 107, 1, torch.float32),
        _case(device, "davis", 512, 60, 107, 10, torch.float32),
        _case(device, "vip", 512, 70, 70, 20, torch.float32),
        jhmdb,
    ]
    if device.type == "cuda":
        out.append(_case(device, "davis", 512, 60, 107, 10, torch.bfloat16))
    out += [
        _window_case(device, "davis-liir", 14, 2, torch.float32),
        _window_case(device, "davis-mast", 12, 0, torch.float32),
    ]
    return out

"""A roofline model of the hot kernels at the papers' shapes: the limit a GPU run is measured against.

For each kernel, shape and pass (``fwd`` / ``bwd``), :func:`paper_cases` gives the useful work
(FLOPs of the operation itself: the window cells, not the tile rectangles or padding the kernels
also compute), the minimum bytes any implementation must move (read the inputs once, write the
outputs once), their ratio (arithmetic intensity, FLOP/byte) and, per device, which of the two bounds
the time and the shortest time that bound allows::

    t_min = max(flops / peak_flops(dtype), bytes / bandwidth)

A measured time ``t`` is then ``100 * t_min / t`` percent of the limit (``benchmarks/gpu_check.py``
prints it). ``executed`` is the FLOPs the Triton kernels issue to the tensor cores (windowed kernels:
the whole ``(8 + 2r)^2`` rectangle of an 8 x 8 query tile, value channels padded to 16, scores
recomputed once per output-channel block in the backward), so ``executed / flops`` is the price of
the tiling.

Peaks are the vendors' dense (no sparsity) data-sheet figures. Shapes (``docs/methods/``):

* STT step 2 (R50, 256 x 256 crops, 16 clips of 2 frames per GPU): local attention at res3 (64 x 64,
  r 12, C 512) and res4 (32 x 32, r 6, C 1024), truncated border, one reconstructed channel; the
  res4 correlation (r 6, C 1024) of the local distillation;
* MAST / LIIR (64 x 64 stride-4 features, r 6, C 64, 3 Lab channels, 12 pairs), zero border;
* DUL's softmax over anchors: P 81,920 pixel features, A 1,024 anchors, K 128;
* DAVIS 480p kNN propagation (CRW/DUL protocol): stride-8 features 60 x 107, C 512, frame 0
  unrestricted + 20 frames in a disc of radius 12, top-10, 8 label channels.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["Device", "DEVICES", "ModelCase", "paper_cases", "limit", "device_for", "disc_cells"]


@dataclasses.dataclass(frozen=True)
class Device:
    """Dense peak throughputs (TFLOP/s) by input class and memory bandwidth (TB/s)."""

    name: str
    bf16_tflops: float
    tf32_tflops: float
    fp32_tflops: float
    tbps: float

    def peak_tflops(self, dtype: str) -> float:
        """``dtype``: "bf16"/"fp16" (tensor cores), "tf32" (fp32 inputs on tensor cores), "fp32" (FMA)."""
        return {"bf16": self.bf16_tflops, "fp16": self.bf16_tflops, "tf32": self.tf32_tflops}.get(
            dtype, self.fp32_tflops
        )


#: Vendors' data sheets (dense). H200: the H100 SXM's compute with HBM3e.
DEVICES: dict[str, Device] = {
    "H100 SXM": Device("H100 SXM", 989.4, 494.7, 66.9, 3.35),
    "H200": Device("H200", 989.4, 494.7, 66.9, 4.8),
    "H100 PCIe": Device("H100 PCIe", 756.0, 378.0, 51.2, 2.0),
    "A100": Device("A100", 312.0, 156.0, 19.5, 2.039),
}


def device_for(gpu_name: str) -> Device | None:
    """The :data:`DEVICES` entry whose name ``torch.cuda.get_device_name`` contains (longest match first)."""
    for key in sorted(DEVICES, key=len, reverse=True):
        tokens = key.split()
        if all(t in gpu_name for t in tokens):
            return DEVICES[key]
    if "H100" in gpu_name:
        return DEVICES["H100 SXM"]
    return None


@dataclasses.dataclass(frozen=True)
class ModelCase:
    """One kernel pass at one shape: useful FLOPs, minimum bytes, executed FLOPs (None: not modelled)."""

    kernel: str
    shape: str
    mode: str
    dtype: str
    flops: float
    bytes: float
    executed: float | None
    params: dict

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes


def limit(case: ModelCase, device: Device) -> tuple[str, float]:
    """``(bound, t_min_ms)``: "compute" or "memory", and the shortest time that bound allows."""
    t_compute = case.flops / (device.peak_tflops(case.dtype) * 1e12)
    t_memory = case.bytes / (device.tbps * 1e12)
    return ("compute" if t_compute >= t_memory else "memory"), 1e3 * max(t_compute, t_memory)


def disc_cells(radius: int) -> int:
    """Window cells of the propagation disc ``dy^2 + dx^2 < r^2``."""
    return sum(
        1
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if dy * dy + dx * dx < radius * radius
    )


_ELT = {"bf16": 2, "fp16": 2, "tf32": 4, "fp32": 4}
#: The local-attention kernels' tile side, value block, output-channel block and widest fused backward
#: (``kernels/local_corr/triton_kernels.py``; a test keeps them equal).
_TILE, _BLOCK_D, _BLOCK_CO, _FUSED_MAX_C = 8, 16, 64, 128


def _attention(label: str, B: int, C: int, D: int, H: int, W: int, r: int, dtype: str) -> list[ModelCase]:
    n, cells, rect = B * H * W, (2 * r + 1) ** 2, (_TILE + 2 * r) ** 2
    e = _ELT[dtype]
    bd, n_co = max(_BLOCK_D, D), math.ceil(C / _BLOCK_CO)
    params = dict(B=B, C=C, D=D, H=H, W=W, radius=r)
    fwd = ModelCase(
        "local_attention",
        label,
        "fwd",
        dtype,
        2 * n * cells * (C + D),
        n * ((2 * C + 2 * D) * e + 4),
        2 * n * rect * (C + bd),
        params,
    )
    # backward: scores recomputed, dP, dQ, dK, dV; reads q, k, v, dO, lse, delta; writes dq, dk, dv
    if C <= _FUSED_MAX_C:  # dQ and dK/dV kernels, scores recomputed once per output-channel block
        executed = 2 * n * rect * (n_co * (2 * C + 2 * bd) + 2 * C + bd)
    else:  # scores once, dS / P volumes, then dQ, dK, dV as correlation-backward tile GEMMs
        executed = 2 * n * rect * (C + bd + 2 * C + max(_BLOCK_D, D))
    bwd = ModelCase(
        "local_attention",
        label,
        "bwd",
        dtype,
        2 * n * cells * (3 * C + 2 * D),
        n * ((5 * C + 4 * D) * e + 8),
        executed,
        params,
    )
    return [fwd, bwd]


def _correlation(label: str, B: int, C: int, H: int, W: int, r: int, dtype: str) -> list[ModelCase]:
    n, cells, rect = B * H * W, (2 * r + 1) ** 2, (_TILE + 2 * r) ** 2
    e = _ELT[dtype]
    params = dict(B=B, C=C, H=H, W=W, radius=r)
    # the backward pass computes twice the forward's products (d query and d keys) and reads both gradients
    return [
        ModelCase(
            "local_correlation",
            label,
            direction,
            dtype,
            2 * m * n * cells * C,
            n * (2 * m * C + cells) * e,
            2 * m * n * rect * C,
            params,
        )
        for direction, m in (("fwd", 1), ("bwd", 2))
    ]


def _anchor(label: str, P: int, A: int, K: int, dtype: str) -> list[ModelCase]:
    e = _ELT[dtype]
    params = dict(P=P, A=A, K=K)
    return [
        ModelCase("anchor_nll", label, "fwd", dtype, 2 * P * A * K, (P + A) * K * e + 12 * P, None, params),
        # logits recomputed, dF = dL A, dA = dL^T F
        ModelCase("anchor_nll", label, "bwd", dtype, 6 * P * A * K, 2 * (P + A) * K * e + 12 * P, None, params),
    ]


def _knn(label: str, h: int, w: int, C: int, frames: int, r: int, labels: int, dtype: str) -> list[ModelCase]:
    e = _ELT[dtype]
    hw = h * w
    candidates = hw + (frames - 1) * disc_cells(r)  # frame 0 unrestricted, the others in the disc
    params = dict(h=h, w=w, C=C, frames=frames, radius=r, labels=labels)
    flops = 2 * hw * candidates * C + 2 * hw * 10 * labels
    nbytes = (frames + 1) * hw * C * e + frames * hw * labels * 4 + hw * labels * 4
    return [ModelCase("knn_propagate", label, "fwd", dtype, flops, nbytes, None, params)]


def paper_cases() -> list[ModelCase]:
    """The model's rows (see the module docstring for where each shape comes from)."""
    cases: list[ModelCase] = []
    for dtype in ("bf16", "tf32"):
        cases += _attention("STT res3 64x64 r12 C512 D1 B16", 16, 512, 1, 64, 64, 12, dtype)
        cases += _attention("STT res4 32x32 r6 C1024 D1 B16", 16, 1024, 1, 32, 32, 6, dtype)
        cases += _attention("MAST/LIIR 64x64 r6 C64 D3 B12", 12, 64, 3, 64, 64, 6, dtype)
    cases += _correlation("STT res4 32x32 r6 C1024 B16", 16, 1024, 32, 32, 6, "bf16")
    cases += _anchor("DUL P81920 A1024 K128", 81_920, 1_024, 128, "bf16")
    cases += _knn("DAVIS 480p 60x107 C512 21 frames r12", 60, 107, 512, 21, 12, 8, "bf16")
    return cases

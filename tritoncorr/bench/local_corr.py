"""Benchmark cases of the windowed-correlation family: fused local attention and local correlation.

Shapes (CUDA: batch 64 frames; CPU: a small batch, named in the shape label, so a case runs in seconds):
  STT res3   64x64, r=12 (625 cells), C=128 (R18) and C=512 (R50), D=1, truncated border, scale 1/sqrt(C);
  STT res4   32x32, r=6 (169 cells), C=1024 (R50), D=1, truncated border, scale 1/sqrt(C);
  MAST/LIIR  64x64, r=6 (169 cells), C=64, D=1 and D=3, zero border, scale 1;
  local_correlation at STT res4 (the entropy branch's zero-padded 13x13 correlation), C=1024.
``quick``: two of the training shapes (STT res4 C1024 and MAST C64 D1), fwd+bwd only (tiny shapes would
measure call overheads and contradict the full rows).

Providers:
  ``triton``  the fused Triton ops (CUDA only; SkipProvider elsewhere),
  ``torch``   our PyTorch op path (tiled GEMMs on chunks of query tiles, memory bounded by the chunk;
              no (2r+1)^2 volume, no padded copy of the maps),
  ``unfold``  what the original code does: the correlation volume (B, (2r+1)^2, H, W) from a
              sampler-style pad-and-shift correlation, softmax over the window, and ``F.unfold``
              aggregation of the values (MAST/LIIR's colorizer); autograd through all of it.
Modes: ``fwd`` (no grad), ``bwd`` (backward through a graph built in the factory), ``fwd+bwd``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tritoncorr.bench.core import BenchCase, SkipProvider, run_for_mode
from tritoncorr.kernels import local_corr as mod
from tritoncorr.kernels.local_corr.reference import window_valid

_CPU_VOLUME_LIMIT_BYTES = 2 * 2**30  # the unfold provider holds a few (B, P*P, H, W) fp32 volumes


def unfold_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, radius: int, scale: float, border: str
) -> torch.Tensor:
    """Sampler + softmax + unfold local attention, as MAST/LIIR's colorizer computes it.

    query, key ``(B, C, H, W)``, value ``(B, D, H, W)`` -> ``(B, D, H, W)``; materialises the volume.
    """
    B, _, H, W = query.shape
    D = value.shape[1]
    P = 2 * radius + 1
    logits = mod._corr_cpu(query, key, radius, 1).float() * scale  # sampler-style (B, P*P, H, W)
    if border == "truncate":
        valid = window_valid(H, W, radius, 1, query.device)
        logits = logits.masked_fill(~valid.unsqueeze(0), float("-inf"))
    prob = torch.softmax(logits, dim=1)
    vcols = F.unfold(value.float(), kernel_size=P, padding=radius).view(B, D, P * P, H, W)
    return (prob.unsqueeze(1) * vcols).sum(2).to(value.dtype)


def _attention_fns(device: torch.device) -> dict[str, Callable[[], Callable]]:
    def triton_fn():
        if device.type != "cuda":
            raise SkipProvider("Triton kernels need a CUDA device")
        return lambda q, k, v, r, s, b: mod._kernels().attn_op(q, k, v, r, s, b, "tf32")[
            0
        ]  # bf16 rows: tensor cores as they come

    def torch_fn():
        return lambda q, k, v, r, s, b: mod._attn_cpu(q, k, v, r, s, b)[0]

    def unfold_fn():
        return unfold_attention

    return {"triton": triton_fn, "torch": torch_fn, "unfold": unfold_fn}


def _inputs(B, C, D, H, W, dtype, device, requires_grad):
    g = torch.Generator(device="cpu").manual_seed(0)
    tensors = [torch.randn(B, n, H, W, generator=g).to(device=device, dtype=dtype) for n in (C, C, D)]
    if requires_grad:
        for t in tensors:
            t.requires_grad_()
    return tensors


def _attn_factory(provider: str, build, B, C, D, H, W, radius, scale, border, dtype, device, mode):
    def factory():
        P2 = (2 * radius + 1) ** 2
        if (
            provider == "unfold"
            and device.type == "cpu"
            and 4 * B * P2 * H * W * max(D, 2) * 4 > _CPU_VOLUME_LIMIT_BYTES
        ):
            raise SkipProvider("the (B, P*P, H, W) volumes are too large for CPU")
        fn = build()
        q, k, v = _inputs(B, C, D, H, W, dtype, device, requires_grad=(mode != "fwd"))
        return run_for_mode(lambda: fn(q, k, v, radius, scale, border), [q, k, v], mode)

    return factory


def _corr_factory(provider: str, B, C, H, W, radius, dtype, device, mode):
    def factory():
        if provider == "triton":
            if device.type != "cuda":
                raise SkipProvider("Triton kernels need a CUDA device")
            op = lambda q, k, r, d: mod._kernels().corr_op(q, k, r, d, "tf32")  # noqa: E731
        elif provider == "torch":
            op = mod._corr_cpu
        else:
            need = 3 * B * C * (2 * radius + 1) ** 2 * H * W * 4
            limit = _CPU_VOLUME_LIMIT_BYTES if device.type == "cpu" else 20 * 2**30
            if need > limit:
                raise SkipProvider(f"the unfolded key (B, C*P*P, H*W) needs ~{need / 2**30:.1f} GB")
            op = lambda q, k, r, d: mod.local_correlation_reference(q, k, r, dilation=d)  # noqa: E731
        q, k, _ = _inputs(B, C, 1, H, W, dtype, device, requires_grad=(mode != "fwd"))
        return run_for_mode(lambda: op(q, k, radius, 1), [q, k], mode)

    return factory


def cases(device: torch.device, quick: bool, *, tiny: bool = False) -> list[BenchCase]:
    """Benchmark cases of local attention / local correlation on ``device`` (see the module docstring).

    ``tiny``: one tiny shape per op, every mode (not a benchmark: the tests check that the providers agree).
    """
    cuda = device.type == "cuda"
    # (label, B_cuda, B_cpu, C, D, H, W, radius, border, scale)
    if tiny:
        attn_shapes = [("tiny 24x24 r3 C16 D3 zero", 2, 1, 16, 3, 24, 24, 3, "zero", 1.0)]
        corr_shapes = [("tiny 24x24 r3 C16", 2, 1, 16, 24, 24, 3)]
        quick = False
    elif quick:  # two of the training shapes below, fwd+bwd only: the same ratios as the full rows, in seconds
        attn_shapes = [
            ("STT res4 32x32 r6 C1024", 64, 2, 1024, 1, 32, 32, 6, "truncate", 1 / math.sqrt(1024)),
            ("MAST 64x64 r6 C64 D1", 64, 4, 64, 1, 64, 64, 6, "zero", 1.0),
        ]
        corr_shapes = []
    else:
        attn_shapes = [
            ("STT res3 64x64 r12 C128", 64, 2, 128, 1, 64, 64, 12, "truncate", 1 / math.sqrt(128)),
            ("STT res3 64x64 r12 C512", 64, 1, 512, 1, 64, 64, 12, "truncate", 1 / math.sqrt(512)),
            ("STT res4 32x32 r6 C1024", 64, 2, 1024, 1, 32, 32, 6, "truncate", 1 / math.sqrt(1024)),
            ("MAST 64x64 r6 C64 D1", 64, 4, 64, 1, 64, 64, 6, "zero", 1.0),
            ("MAST 64x64 r6 C64 D3", 64, 4, 64, 3, 64, 64, 6, "zero", 1.0),
        ]
        corr_shapes = [("STT res4 entropy 32x32 r6 C1024", 64, 2, 1024, 32, 32, 6)]
    dtypes = [torch.float32, torch.bfloat16] if cuda else [torch.float32]
    out: list[BenchCase] = []
    for dtype in dtypes:
        elt = torch.tensor([], dtype=dtype).element_size()
        dname = str(dtype).replace("torch.", "")
        for label, b_cuda, b_cpu, C, D, H, W, r, border, scale in attn_shapes:
            B = b_cuda if cuda else b_cpu
            shape = f"{label} B{B}{'' if cuda else ' (cpu batch)'} {dname}"
            n = B * H * W * (2 * r + 1) ** 2
            io_fwd = B * H * W * ((2 * C + 2 * D) * elt + 4)
            io_bwd = B * H * W * ((4 * C + 4 * D) * elt + 8)
            for mode, flops, nbytes in (
                ("fwd", n * (2 * C + 2 * D), io_fwd),
                ("bwd", n * (8 * C + 6 * D), io_bwd),
                ("fwd+bwd", n * (10 * C + 8 * D), io_fwd + io_bwd),
            ):
                if quick and mode != "fwd+bwd":
                    continue
                providers = {
                    name: _attn_factory(name, build, B, C, D, H, W, r, scale, border, dtype, device, mode)
                    for name, build in _attention_fns(device).items()
                }
                out.append(
                    BenchCase("local_attention", shape, mode, providers, flops=float(flops), bytes=float(nbytes))
                )
        for label, b_cuda, b_cpu, C, H, W, r in corr_shapes:
            B = b_cuda if cuda else b_cpu
            shape = f"{label} B{B}{'' if cuda else ' (cpu batch)'} {dname}"
            n = B * H * W * (2 * r + 1) ** 2
            for mode, flops, nbytes in (
                ("fwd", 2 * n * C, B * H * W * 2 * C * elt + n * elt),
                ("bwd", 4 * n * C, B * H * W * 4 * C * elt + 2 * n * elt),
                ("fwd+bwd", 6 * n * C, B * H * W * 6 * C * elt + 3 * n * elt),
            ):
                if quick and mode != "fwd+bwd":
                    continue
                providers = {
                    p: _corr_factory(p, B, C, H, W, r, dtype, device, mode) for p in ("triton", "torch", "unfold")
                }
                out.append(
                    BenchCase("local_correlation", shape, mode, providers, flops=float(flops), bytes=float(nbytes))
                )
    return out

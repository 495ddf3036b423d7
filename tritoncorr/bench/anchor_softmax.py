"""Benchmark cases of the anchor-softmax family (DUL L_ST): fused NLL forward/backward and the group argmax.

Shapes: DUL default P = B*T*h*w = 16*5*32*32 = 81,920 rows, A = 16*8*8 = 1,024 anchors, K = 128;
and P = 16*5*64*64 = 327,680 (64x64 feature maps). ``quick``: the first shape only.
``anchor_lse`` at LIIR's inter-video bank shape (one call per sample, as ``points_bank_lse`` makes
it): P = 64*64 = 4,096 stride-4 pixels of a 256 x 256 frame, A = 1,440 frames x 4 points = 5,760
bank points (all of other videos), K = 64, tau 1, gradient to the features only (the bank is
detached). ``quick``: fwd+bwd rows only, no argmax, no ``compiled`` provider.

Providers:
  ``triton``   the fused Triton ops (CUDA only),
  ``eager``    the reference with explicit (P, A) logits (``F.cross_entropy``),
  ``compiled`` ``torch.compile`` of the reference (compiled and warmed up in the factory),
  ``torch``    our chunked PyTorch path (never holds P x A; called directly, see :class:`_Chunked`).
Modes (:func:`~tritoncorr.bench.core.run_for_mode`): ``fwd``, ``bwd`` (backward through a graph built in the
factory) and ``fwd+bwd``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch._functorch.config  # not imported by `import torch`; the providers patch it (see _loss_factory)

from tritoncorr.bench.core import BenchCase, SkipProvider, run_for_mode
from tritoncorr.kernels import anchor_softmax as mod

TEMPERATURE = 0.07
_CPU_DENSE_LIMIT_BYTES = 3 * 2**30  # the eager/compiled references hold ~3 (P, A) fp32 matrices in fwd+bwd


def _make_inputs(P: int, A: int, K: int, dtype: torch.dtype, device: torch.device, requires_grad: bool):
    g = torch.Generator(device="cpu").manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(P, K, generator=g), dim=1).to(device=device, dtype=dtype)
    q = torch.nn.functional.normalize(torch.randn(A, K, generator=g), dim=1).to(device=device, dtype=dtype)
    labels = torch.randint(0, A, (P,), generator=g).to(device)
    if requires_grad:
        f.requires_grad_()
        q.requires_grad_()
    return f, q, labels


class _Chunked(torch.autograd.Function):
    """The chunked PyTorch path (the implementation behind ``tritoncorr::anchor_nll`` / ``anchor_lse``):
    ``(loss, lse)``, each (P,), called without the op wrapper: an opaque custom op hides its internal
    allocations from the CPU peak-memory tracker (a ``TorchDispatchMode`` only sees the op's outputs), so
    the benchmark calls the same functions directly. ``anchor_lse`` is this with every label -1."""

    @staticmethod
    def forward(ctx, f, q, lab, temperature):
        loss, lse = mod._torch_fwd(f, q, lab, temperature)
        ctx.save_for_backward(f, q, lab, lse)
        ctx.temperature = temperature
        return loss, lse

    @staticmethod
    def backward(ctx, grad_loss, grad_lse):
        f, q, lab, lse = ctx.saved_tensors
        df, dq = mod._torch_bwd(f, q, lab, lse, grad_loss, grad_lse, ctx.temperature)
        return df, dq, None, None


def _chunked_lse(f, q, temperature):
    lab = torch.full((f.shape[0],), -1, dtype=torch.int64, device=f.device)
    return _Chunked.apply(f, q, lab, temperature)[1]


def _lse_fns(device: torch.device) -> dict[str, Callable[[], Callable]]:
    """provider -> builder of ``lse(features, bank, tau) -> (P,)``."""

    def triton_fn():
        if device.type != "cuda":
            raise SkipProvider("Triton kernels need a CUDA device")
        return mod.anchor_lse

    def eager_fn():
        return mod.anchor_lse_reference

    def compiled_fn():
        return torch.compile(mod.anchor_lse_reference)

    def torch_fn():
        return _chunked_lse

    return {"triton": triton_fn, "eager": eager_fn, "compiled": compiled_fn, "torch": torch_fn}


def _loss_fns(device: torch.device) -> dict[str, Callable[[], Callable]]:
    """provider -> builder of ``loss(features, anchors, labels) -> (P,)``."""

    def triton_fn():
        if device.type != "cuda":
            raise SkipProvider("Triton kernels need a CUDA device")
        return lambda f, q, lab: mod._anchor_nll_triton_op(f, q, lab, TEMPERATURE)[0]

    def eager_fn():
        return lambda f, q, lab: mod.anchor_nll_reference(f, q, lab, TEMPERATURE)

    def compiled_fn():
        return torch.compile(lambda f, q, lab: mod.anchor_nll_reference(f, q, lab, TEMPERATURE))

    def torch_fn():
        return lambda f, q, lab: _Chunked.apply(f, q, lab, TEMPERATURE)[0]

    return {"triton": triton_fn, "eager": eager_fn, "compiled": compiled_fn, "torch": torch_fn}


def _loss_factory(
    op: str, build: Callable[[], Callable], dense: bool, P: int, A: int, K: int, dtype, device, mode: str
) -> Callable[[], Callable[[], object]]:
    """A provider of the ``op`` rows (``"anchor_nll"`` or ``"anchor_lse"``): ``build()`` gives the function,
    called on :func:`_make_inputs` as ``fn(features, anchors, labels)`` (nll: gradients to both) or
    ``fn(features, bank, 1.0)`` (lse, LIIR's bank: detached, gradients to the features only)."""

    def factory():
        # "bwd" times repeated backward passes of one graph (retain_graph=True); torch.compile's
        # donated buffers forbid that, so they are switched off while the provider is built.
        with torch._functorch.config.patch(donated_buffer=False):
            return _build()

    def _build():
        if dense and device.type == "cpu" and 3 * P * A * 4 > _CPU_DENSE_LIMIT_BYTES:
            raise SkipProvider(f"dense (P, A) logits need ~{3 * P * A * 4 / 2**30:.1f} GB on CPU")
        fn = build()
        f, q, labels = _make_inputs(P, A, K, dtype, device, requires_grad=(mode != "fwd"))
        if op == "anchor_lse":
            q.requires_grad_(False)
            return run_for_mode(lambda: fn(f, q, 1.0), [f], mode)
        return run_for_mode(lambda: fn(f, q, labels), [f, q], mode)

    return factory


def _loss_providers(op: str, P: int, A: int, K: int, dtype, device, mode: str, skip: set[str]) -> dict:
    """``{provider: factory}`` of one ``anchor_nll`` / ``anchor_lse`` row (:func:`_loss_factory`), without ``skip``;
    the eager and compiled providers build the dense (P, A) logits."""
    builders = _loss_fns(device) if op == "anchor_nll" else _lse_fns(device)
    return {
        name: _loss_factory(op, build, name in ("eager", "compiled"), P, A, K, dtype, device, mode)
        for name, build in builders.items()
        if name not in skip
    }


def _argmax_factory(provider: str, P: int, A: int, K: int, dtype: torch.dtype, device: torch.device):
    def factory():
        if provider == "triton" and device.type != "cuda":
            raise SkipProvider("Triton kernels need a CUDA device")
        if provider in ("eager", "compiled") and device.type == "cpu" and 2 * P * A * 4 > _CPU_DENSE_LIMIT_BYTES:
            raise SkipProvider("dense (P, A) scores too large for CPU")
        f, q, _ = _make_inputs(P, A, K, dtype, device, requires_grad=False)
        per_video = P // 16
        feature_group = torch.arange(P, device=device) // max(per_video, 1)
        anchor_group = torch.arange(A, device=device) // max(A // 16, 1)
        if provider == "triton":
            fn = mod._anchor_argmax_triton_op
        elif provider == "torch":
            fn = mod._torch_argmax  # the op's implementation, called directly (see _Chunked)
        elif provider == "eager":
            fn = mod.anchor_argmax_reference
        else:
            fn = torch.compile(mod.anchor_argmax_reference)

        def run():
            return fn(f, q, feature_group, anchor_group)

        run()
        return run

    return factory


def cases(device: torch.device, quick: bool, *, tiny: bool = False) -> list[BenchCase]:
    """Benchmark cases of the anchor-softmax kernels on ``device`` (see the module docstring).

    ``tiny``: small shapes (P 5,120 and a 1,024 x 1,440 bank), every case and mode (not a benchmark: the
    tests check that the providers agree).
    """
    A, K = 1024, 128
    if tiny:
        return _cases(device, [("B16xT5x8x8", 16 * 5 * 8 * 8)], (1024, 1440, 64), quick=False, A=A, K=K)
    # quick: DUL's training shape and LIIR's bank, fwd+bwd only, without torch.compile (its compile time
    # alone exceeds the quick budget): the same ratios as the full rows
    shapes = (
        [("B16xT5x32x32", 16 * 5 * 32 * 32)]
        if quick
        else [("B16xT5x32x32", 16 * 5 * 32 * 32), ("B16xT5x64x64", 16 * 5 * 64 * 64)]
    )
    return _cases(device, shapes, (4096, 1440 * 4, 64), quick=quick, A=A, K=K)


def _cases(device: torch.device, shapes, bank: tuple[int, int, int], *, quick: bool, A: int, K: int) -> list[BenchCase]:
    """The cases for the DUL ``shapes`` ((name, P) with A anchors of K dims) and LIIR's ``bank`` (P, A, K)."""
    skip = {"compiled"} if quick else set()
    dtypes = [torch.float32] if device.type == "cpu" else [torch.float32, torch.bfloat16]
    out: list[BenchCase] = []
    for dtype in dtypes:
        elt = torch.tensor([], dtype=dtype).element_size()
        dname = str(dtype).replace("torch.", "")
        for shape_name, P in shapes:
            shape = f"{shape_name} P={P} A={A} K={K} {dname}"
            io_fwd = (P * K + A * K) * elt + P * 8 + 2 * P * 4
            io_bwd = 2 * (P * K + A * K) * elt + P * 8 + 3 * P * 4
            for mode, flops, nbytes in (
                ("fwd", 2.0 * P * A * K, io_fwd),
                ("bwd", 4.0 * P * A * K, io_bwd),
                ("fwd+bwd", 6.0 * P * A * K, io_fwd + io_bwd),
            ):
                if quick and mode != "fwd+bwd":
                    continue
                providers = _loss_providers("anchor_nll", P, A, K, dtype, device, mode, skip)
                out.append(BenchCase("anchor_nll", shape, mode, providers, flops=flops, bytes=nbytes))
            if quick:
                continue
            out.append(
                BenchCase(
                    "anchor_argmax",
                    shape,
                    "fwd",
                    {p: _argmax_factory(p, P, A, K, dtype, device) for p in ("triton", "eager", "compiled", "torch")},
                    flops=2.0 * P * A * K,
                    bytes=(P * K + A * K) * elt + 3 * P * 8 + A * 8,
                )
            )
        # LIIR's inter-video bank (anchor_lse), see the module docstring
        P, A_bank, K_bank = bank
        shape = f"LIIR bank P={P} A={A_bank} K={K_bank} {dname}"
        for mode, flops in (
            ("fwd", 2.0 * P * A_bank * K_bank),
            ("bwd", 2.0 * P * A_bank * K_bank * 2),
            ("fwd+bwd", 2.0 * P * A_bank * K_bank * 3),
        ):
            if quick and mode != "fwd+bwd":
                continue
            providers = _loss_providers("anchor_lse", P, A_bank, K_bank, dtype, device, mode, skip)
            out.append(
                BenchCase(
                    "anchor_lse",
                    shape,
                    mode,
                    providers,
                    flops=flops,
                    bytes=(P * K_bank + A_bank * K_bank) * elt * (1 if mode == "fwd" else 2) + P * 8,
                )
            )
    return out

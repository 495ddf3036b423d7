"""Windowed (local) correlation and fused local attention: public ops, their registration and checks.

Two public functions, both differentiable (query, key and, for attention, value):

``local_correlation(query, key, radius, *, dilation=1, input_precision="tf32")``
    query, key ``(B, C, H, W)`` -> ``(B, P*P, H, W)`` with ``P = 2*radius + 1``::

        out[b, (dy+r)*P + (dx+r), y, x] = <query[b, :, y, x], key[b, :, y + dy*dil, x + dx*dil]>

    and 0 where ``(y + dy*dil, x + dx*dil)`` lies outside the image: exactly
    ``spatial_correlation_sampler`` with kernel size 1, patch size ``P``, ``dilation_patch=dil``
    (docs/methods/liir.md §4.1; the window index runs over dy outer, dx inner, like ``F.unfold``).

``local_attention(query, key, value, radius, *, scale=1.0, border="truncate", return_lse=False, input_precision="tf32")``
    query, key ``(B, C, H, W)``, value ``(B, D, H, W)`` -> out ``(B, D, H, W)``::

        out[b, :, i] = sum_{j in window(i)} softmax_j(scale * <q_i, k_j>) v_j

    ``border="truncate"``: out-of-image window cells take no part in the softmax (STT,
    docs/methods/stt.md §3.6). ``border="zero"``: they take part with logit 0 and value 0 (MAST/LIIR
    zero-padded sampler + ``unfold``, docs/methods/liir.md §4.1). ``return_lse=True`` also returns the
    per-pixel natural-log log-sum-exp of the scaled logits over the window, ``(B, H, W)`` float32 (it is
    differentiable).

Dtypes: float32, float16, bfloat16 (and float64 on the PyTorch path). Accumulation is float32
(float64 for float64 inputs); outputs and gradients have the input dtype, the lse is float32
(float64 for float64 inputs). ``input_precision`` says how the Triton kernels multiply float32
inputs on tensor cores: ``"tf32"`` (default, as ``torch.backends.cuda.matmul.allow_tf32``),
``"tf32x3"`` (three TF32 products, close to fp32) or ``"ieee"`` (exact fp32 FMAs, no tensor cores);
bf16/fp16 inputs always go to the tensor cores as they are, and the PyTorch path is exact fp32.

Paths (docs/KERNELS.md op pattern): CUDA tensors -> ``torch.library.triton_op`` ops launching the
tensor-core kernels of :mod:`.triton_kernels` through ``wrap_triton`` (that module, and with it
triton, is imported and its ops registered at the first launch); CPU tensors (or
``TRITONCORR_BACKEND=torch``) -> opaque ``torch.library.custom_op`` ops whose implementation is the
memory-bounded PyTorch path of :mod:`.torch_path`; under ``TRITONCORR_BACKEND=triton`` with CPU
tensors the Triton ops run eagerly in Triton's interpreter (tests). The plain references of
:mod:`.reference` (they materialise the whole volume) are the definition of correctness.
"""

from __future__ import annotations

import math

import torch

from .._utils import FLOAT_DTYPES, check_tensor, use_triton
from .reference import BORDERS, acc_dtype, local_attention_reference, local_correlation_reference
from .torch_path import torch_attn_bwd, torch_attn_fwd, torch_corr_bwd, torch_corr_fwd

__all__ = [
    "local_correlation",
    "local_attention",
    "local_correlation_reference",
    "local_attention_reference",
    "BORDERS",
    "MAX_RADIUS",
    "MAX_VALUE_CHANNELS_TRITON",
    "PRECISIONS",
]

MAX_RADIUS = 32
#: The most value channels D the Triton attention kernels take (split the value beyond that).
MAX_VALUE_CHANNELS_TRITON = 64
#: ``input_precision`` values (how float32 inputs are multiplied on tensor cores).
PRECISIONS = ("tf32", "tf32x3", "ieee")
_CPU_DTYPES = FLOAT_DTYPES + (torch.float64,)


# ---------------------------------------------------------------------------------------------
# PyTorch-path ops (CPU; any device under TRITONCORR_BACKEND=torch)
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("tritoncorr::local_correlation_cpu", mutates_args=())
def _corr_cpu(query: torch.Tensor, key: torch.Tensor, radius: int, dilation: int) -> torch.Tensor:
    return torch_corr_fwd(query, key, radius, dilation)


@torch.library.custom_op("tritoncorr::local_correlation_cpu_bwd", mutates_args=())
def _corr_cpu_bwd(
    grad: torch.Tensor, query: torch.Tensor, key: torch.Tensor, radius: int, dilation: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch_corr_bwd(grad, query, key, radius, dilation)


@_corr_cpu.register_fake
def _corr_fake(query, key, radius, dilation):
    B, _, H, W = query.shape
    P = 2 * radius + 1
    return query.new_empty((B, P * P, H, W))


@_corr_cpu_bwd.register_fake
def _corr_bwd_fake(grad, query, key, radius, dilation):
    return torch.empty_like(query), torch.empty_like(key)


def corr_setup(ctx, inputs, output):
    """Autograd context of both correlation ops (the Triton one has a fifth input, the precision)."""
    query, key, radius, dilation = inputs[:4]
    ctx.save_for_backward(query, key)
    ctx.radius, ctx.dilation = radius, dilation
    ctx.precision = inputs[4] if len(inputs) > 4 else None


def _corr_backward_cpu(ctx, grad):
    query, key = ctx.saved_tensors
    dq, dk = _corr_cpu_bwd(grad.contiguous(), query, key, ctx.radius, ctx.dilation)
    return dq, dk, None, None


_corr_cpu.register_autograd(_corr_backward_cpu, setup_context=corr_setup)


@torch.library.custom_op("tritoncorr::local_attention_cpu", mutates_args=())
def _attn_cpu(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, radius: int, scale: float, border: str
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch_attn_fwd(query, key, value, radius, scale, border)


@torch.library.custom_op("tritoncorr::local_attention_cpu_bwd", mutates_args=())
def _attn_cpu_bwd(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
    dlse: torch.Tensor,
    radius: int,
    scale: float,
    border: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch_attn_bwd(query, key, value, out, lse, dout, dlse, radius, scale, border)


@_attn_cpu.register_fake
def _attn_fake(query, key, value, radius, scale, border):
    B, _, H, W = query.shape
    return torch.empty_like(value), query.new_empty((B, H, W), dtype=acc_dtype(query.dtype))


@_attn_cpu_bwd.register_fake
def _attn_bwd_fake(query, key, value, out, lse, dout, dlse, radius, scale, border):
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


def attn_setup(ctx, inputs, output):
    """Autograd context of both attention ops (the Triton one has a seventh input, the precision)."""
    query, key, value, radius, scale, border = inputs[:6]
    out, lse = output
    ctx.save_for_backward(query, key, value, out, lse)
    ctx.radius, ctx.scale, ctx.border = radius, scale, border
    ctx.precision = inputs[6] if len(inputs) > 6 else None


def attn_grads(ctx, dout, dlse):
    """The backward's inputs: the saved tensors and the output gradients (zeros for an unused output)."""
    query, key, value, out, lse = ctx.saved_tensors
    dout = torch.zeros_like(out) if dout is None else dout.contiguous()
    dlse = torch.zeros_like(lse) if dlse is None else dlse.contiguous()
    return query, key, value, out, lse, dout, dlse


def _attn_backward_cpu(ctx, dout, dlse):
    dq, dk, dv = _attn_cpu_bwd(*attn_grads(ctx, dout, dlse), ctx.radius, ctx.scale, ctx.border)
    return dq, dk, dv, None, None, None


_attn_cpu.register_autograd(_attn_backward_cpu, setup_context=attn_setup)


def _kernels():
    """The ``triton_kernels`` module: imports Triton and registers the family's ``triton_op`` s on first
    use (an import statement, which ``torch.compile`` traces)."""
    from . import triton_kernels

    return triton_kernels


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _check_radius(radius) -> int:
    if isinstance(radius, bool) or not isinstance(radius, int):
        raise TypeError(f"radius must be an int, got {type(radius).__name__}")
    if not 0 <= radius <= MAX_RADIUS:
        raise ValueError(f"radius must be in [0, {MAX_RADIUS}], got {radius}")
    return radius


def _check_features(query: torch.Tensor, key: torch.Tensor) -> None:
    check_tensor("query", query, ndim=4, dtypes=_CPU_DTYPES)
    check_tensor("key", key, ndim=4, dtypes=_CPU_DTYPES, device=query.device)
    if key.shape != query.shape:
        raise ValueError(
            f"key must have the shape of query (B, C, H, W) = {tuple(query.shape)}, got {tuple(key.shape)}"
        )
    if key.dtype != query.dtype:
        raise TypeError(f"query and key must share a dtype, got {query.dtype} and {key.dtype}")


def _check_precision(input_precision) -> str:
    if input_precision not in PRECISIONS:
        raise ValueError(f"input_precision must be one of {PRECISIONS}, got {input_precision!r}")
    return input_precision


def _triton_dtype_ok(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"the Triton path supports float32/float16/bfloat16, got {t.dtype}; use TRITONCORR_BACKEND=torch for float64"
            )


def local_correlation(
    query: torch.Tensor, key: torch.Tensor, radius: int, *, dilation: int = 1, input_precision: str = "tf32"
) -> torch.Tensor:
    """Windowed dot products, ``spatial_correlation_sampler`` semantics (kernel 1, patch 2r+1).

    Args:
        query, key: ``(B, C, H, W)``, same dtype (float32/float16/bfloat16; float64 on the PyTorch path).
        radius: window radius r (0..32); the window is ``(2r+1) x (2r+1)`` cells.
        dilation: spacing between window cells (``dilation_patch``), >= 1.
        input_precision: how the Triton kernels multiply float32 inputs (:data:`PRECISIONS`; see the
            module docstring); the PyTorch path is exact whatever it says.

    Returns:
        ``(B, (2r+1)^2, H, W)`` in the input dtype (float32 accumulation); index
        ``(dy + r) * (2r+1) + (dx + r)``; 0 where ``(y + dy*dilation, x + dx*dilation)`` is outside the image.
        Differentiable w.r.t. query and key.
    """
    _check_features(query, key)
    radius = _check_radius(radius)
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an int >= 1, got {dilation!r}")
    _check_precision(input_precision)
    if use_triton(query, key):
        _triton_dtype_ok(query, key)
        return _kernels().corr_op(query, key, radius, dilation, input_precision)
    return _corr_cpu(query, key, radius, dilation)


def local_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    radius: int,
    *,
    scale: float = 1.0,
    border: str = "truncate",
    return_lse: bool = False,
    input_precision: str = "tf32",
):
    """Fused windowed attention: ``out(i) = sum_{j in window(i)} softmax_j(scale * <q_i, k_j>) v_j``.

    Args:
        query, key: ``(B, C, H, W)``; value: ``(B, D, H, W)`` (D <= 64 on the Triton path); one dtype
            for all three (float32/float16/bfloat16; float64 on the PyTorch path).
        radius: window radius r (0..32), square ``(2r+1) x (2r+1)`` window centred on i.
        scale: logit multiplier (STT uses ``1/sqrt(C)``, MAST/LIIR 1).
        border: ``"truncate"`` (out-of-image cells leave the softmax, STT) or ``"zero"`` (they
            count with logit 0 and value 0, MAST/LIIR's zero-padded sampler + unfold).
        return_lse: also return the log-sum-exp of the scaled logits over the window.
        input_precision: how the Triton kernels multiply float32 inputs (:data:`PRECISIONS`).

    Returns:
        out ``(B, D, H, W)`` in the input dtype; with ``return_lse`` also lse ``(B, H, W)`` in float32
        (float64 for float64 inputs). Both are differentiable w.r.t. query, key and value.
    """
    _check_features(query, key)
    check_tensor("value", value, ndim=4, dtypes=_CPU_DTYPES, device=query.device)
    if value.dtype != query.dtype:
        raise TypeError(f"value must have the dtype of query ({query.dtype}), got {value.dtype}")
    if value.shape[0] != query.shape[0] or value.shape[2:] != query.shape[2:]:
        raise ValueError(
            f"value must be (B, D, H, W) with B, H, W of query {tuple(query.shape)}, got {tuple(value.shape)}"
        )
    radius = _check_radius(radius)
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    _check_precision(input_precision)
    if use_triton(query, key, value):
        _triton_dtype_ok(query, key, value)
        if value.shape[1] > MAX_VALUE_CHANNELS_TRITON:
            raise ValueError(
                f"value has D={value.shape[1]} channels; the Triton kernel supports D <= {MAX_VALUE_CHANNELS_TRITON} "
                "(split value along channels and call once per chunk)"
            )
        out, lse = _kernels().attn_op(query, key, value, radius, scale, border, input_precision)
    else:
        out, lse = _attn_cpu(query, key, value, radius, scale, border)
    return (out, lse) if return_lse else out

"""Softmax over anchors (DUL): fused per-row NLL with forward and backward, and the group-restricted argmax.

Shapes (P rows of features, A anchors, K channels):

* ``features`` (P, K), ``anchors`` (A, K): fp32, bf16 or fp16 (both the same dtype); the PyTorch
  path also takes fp64 (used by ``gradcheck``).
* ``labels`` (P,) int64 in ``[0, A)`` or ``-1`` (row ignored).
* logits ``z = features @ anchors.T / temperature`` (P, A) are **never materialised**: the Triton
  kernels stream anchor tiles with an online log-sum-exp (like a fused linear cross-entropy) and the
  PyTorch path works on chunks of at most :data:`CHUNK_ROWS` rows.

Public functions
----------------
:func:`anchor_nll`            (P,) ``lse_a z[p, a] - z[p, labels[p]]`` (0 where ignored); grads to features and anchors.
:func:`anchor_lse`            (P,) ``lse_a z[p, a]``; grads to features and anchors.
:func:`anchor_argmax`         (P,) int64 best anchor among those with ``anchor_group == feature_group[p]``
                              (lowest index on ties, -1 when the row's group has no anchor); no gradient.
:func:`anchor_soft_assignment` (R, A) softmax over anchors for a small set of R rows (visualisation).

References (the definition of correctness): :func:`anchor_nll_reference`, :func:`anchor_lse_reference`,
:func:`anchor_argmax_reference` (explicit P x A logits).

Backward (recomputed from the saved per-row ``lse``): with ``g`` the incoming gradient of the loss,
``h`` that of the lse, ``s = softmax(z)`` and ``e`` the one-hot label,
``dz = s * (g + h) - e * g``; ``dF = dz @ anchors / tau``, ``dA = dz.T @ features / tau``.
On Triton, ``dF`` is one kernel tiled over rows (and BLOCK_D output columns) that loops over anchor
tiles; ``dA`` is a second kernel tiled over anchors (and BLOCK_D columns) that loops over row blocks,
split over P into a few deterministic partial sums (no atomics; an fp32 (splits, A, K) buffer summed
in a fixed order). Each backward kernel recomputes the logits (in BLOCK_K = 32 chunks of K) once per
output column block: once at K = 128 for 16-bit inputs, twice for fp32 (BLOCK_D = 64, see _CONFIGS).

Files: ``reference.py`` (the references), ``torch_path.py`` (the chunked PyTorch path),
``triton_kernels.py`` (every Triton kernel, launcher and ``triton_op``; imported only when a kernel is
launched or compiled, so this package works without Triton).

Op pattern (docs/KERNELS.md): the public functions choose the path in Python before calling an op.
CUDA tensors (or ``TRITONCORR_BACKEND=triton`` with the interpreter) -> ``torch.library.triton_op``
``tritoncorr::anchor_nll_triton`` / ``anchor_nll_backward_triton`` / ``anchor_argmax_triton``
(registered when ``triton_kernels`` is first imported);
otherwise the opaque ``custom_op`` ``tritoncorr::anchor_nll`` / ``anchor_nll_backward`` /
``anchor_argmax`` whose implementation is the chunked PyTorch path.

Environment: ``TRITONCORR_BACKEND``, ``TRITONCORR_AUTOTUNE`` (see ``_utils.py``). bf16/fp16 inputs run
on tensor cores (``wgmma`` on sm_90); fp32 inputs use IEEE fp32 dot products on GPU unless
``torch.backends.cuda.matmul.allow_tf32`` is set (then TF32 tensor cores).
"""

from __future__ import annotations

import torch

from .._utils import FLOAT_DTYPES, check_temperature, check_tensor, use_triton
from .reference import anchor_argmax_reference, anchor_lse_reference, anchor_nll_reference, compute_dtype
from .torch_path import CHUNK_ROWS, group_argmax, nll_backward, nll_forward

__all__ = [
    "anchor_nll",
    "anchor_lse",
    "anchor_argmax",
    "anchor_soft_assignment",
    "anchor_nll_reference",
    "anchor_lse_reference",
    "anchor_argmax_reference",
    "CHUNK_ROWS",
]

# ---------------------------------------------------------------------------------------------
# torch.library ops of the PyTorch path (the Triton ones live in triton_kernels.py)
# ---------------------------------------------------------------------------------------------


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("tritoncorr::anchor_nll", mutates_args=())
def _anchor_nll_op(
    features: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, lse), each (P,), by the chunked PyTorch path."""
    return nll_forward(features, anchors, labels, temperature)


@_anchor_nll_op.register_fake
def _(features, anchors, labels, temperature):
    P = features.shape[0]
    dt = _out_dtype(features.dtype)
    return features.new_empty((P,), dtype=dt), features.new_empty((P,), dtype=dt)


@torch.library.custom_op("tritoncorr::anchor_nll_backward", mutates_args=())
def _anchor_nll_backward_op(
    features: torch.Tensor,
    anchors: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    grad_loss: torch.Tensor,
    grad_lse: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_features (P, K), grad_anchors (A, K)) by the chunked PyTorch path (logits recomputed per chunk)."""
    return nll_backward(features, anchors, labels, lse, grad_loss, grad_lse, temperature)


@_anchor_nll_backward_op.register_fake
def _(features, anchors, labels, lse, grad_loss, grad_lse, temperature):
    return (
        torch.empty_like(features, memory_format=torch.contiguous_format),
        torch.empty_like(anchors, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output):
    features, anchors, labels, temperature = inputs
    ctx.save_for_backward(features, anchors, labels, output[1])
    ctx.temperature = temperature


def _backward_with(backward_op):
    """The autograd backward of an (loss, lse) op whose gradients ``backward_op`` computes (the PyTorch or
    the Triton one): missing output gradients are zeros; no gradient for labels and temperature."""

    def backward(ctx, grad_loss, grad_lse):
        features, anchors, labels, lse = ctx.saved_tensors
        grad_loss = torch.zeros_like(lse) if grad_loss is None else grad_loss
        grad_lse = torch.zeros_like(lse) if grad_lse is None else grad_lse
        df, da = backward_op(features, anchors, labels, lse, grad_loss, grad_lse, ctx.temperature)
        return df, da, None, None

    return backward


_anchor_nll_op.register_autograd(_backward_with(_anchor_nll_backward_op), setup_context=_setup_context)


@torch.library.custom_op("tritoncorr::anchor_argmax", mutates_args=())
def _anchor_argmax_op(
    features: torch.Tensor, anchors: torch.Tensor, feature_group: torch.Tensor, anchor_group: torch.Tensor
) -> torch.Tensor:
    """(P,) int64 group-restricted argmax by the chunked PyTorch path."""
    return group_argmax(features, anchors, feature_group, anchor_group)


@_anchor_argmax_op.register_fake
def _(features, anchors, feature_group, anchor_group):
    return features.new_empty((features.shape[0],), dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

_INT_DTYPES = (torch.int64, torch.int32)


def _check_pair(features: torch.Tensor, anchors: torch.Tensor) -> None:
    allowed = FLOAT_DTYPES + (torch.float64,)
    check_tensor("features", features, ndim=2, dtypes=allowed)
    check_tensor("anchors", anchors, ndim=2, dtypes=allowed, device=features.device)
    if anchors.dtype != features.dtype:
        raise TypeError(f"anchors dtype {anchors.dtype} differs from features dtype {features.dtype}")
    if anchors.shape[1] != features.shape[1]:
        raise ValueError(
            f"features (P, K) = {tuple(features.shape)} and anchors (A, K) = {tuple(anchors.shape)} disagree on K"
        )
    if features.shape[1] == 0:
        raise ValueError("features and anchors need K >= 1 channels")
    if anchors.shape[0] == 0:
        raise ValueError("anchors is empty (A = 0): the softmax over anchors is undefined")


def _triton_path(*tensors: torch.Tensor) -> bool:
    if not use_triton(*tensors):
        return False
    if tensors[0].dtype == torch.float64:
        raise TypeError(
            "the Triton anchor-softmax kernels take fp32/bf16/fp16 inputs, not fp64 "
            "(use TRITONCORR_BACKEND=torch for fp64)"
        )
    return True


def _nll_and_lse(features, anchors, labels, temperature):
    if _triton_path(features, anchors, labels):
        return _kernels().nll_op(features, anchors, labels, temperature)
    return _anchor_nll_op(features, anchors, labels, temperature)


def anchor_nll(features: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row NLL of the softmax over anchors, without materialising the (P, A) logits.

    Args:
        features: (P, K) fp32/bf16/fp16 (fp64 on the PyTorch path).
        anchors: (A, K), same dtype and device, A >= 1.
        labels: (P,) int64 in [0, A), or -1 for rows to ignore.
        temperature: tau > 0; logits are ``features @ anchors.T / tau``.

    Returns:
        (P,) fp32 (fp64 for fp64 inputs): ``logsumexp_a z[p, a] - z[p, labels[p]]``, 0 where labels is -1.
        Differentiable w.r.t. features and anchors.
    """
    _check_pair(features, anchors)
    temperature = check_temperature(temperature)
    check_tensor("labels", labels, ndim=1, dtypes=(torch.int64,), device=features.device)
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} rows but features has {features.shape[0]}")
    if not torch.compiler.is_compiling() and labels.numel() > 0:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < -1 or hi >= anchors.shape[0]:
            raise ValueError(f"labels must be in [0, {anchors.shape[0]}) or -1 (ignored); got range [{lo}, {hi}]")
    return _nll_and_lse(features, anchors, labels, temperature)[0]


def anchor_lse(features: torch.Tensor, anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    """(P,) fp32 ``logsumexp_a (features @ anchors.T / tau)[p, a]`` (streamed; differentiable).

    Shapes as in :func:`anchor_nll`.
    """
    _check_pair(features, anchors)
    temperature = check_temperature(temperature)
    labels = torch.full((features.shape[0],), -1, dtype=torch.int64, device=features.device)
    return _nll_and_lse(features, anchors, labels, temperature)[1]


def anchor_argmax(
    features: torch.Tensor, anchors: torch.Tensor, feature_group: torch.Tensor, anchor_group: torch.Tensor
) -> torch.Tensor:
    """Group-restricted argmax over anchors (DUL pseudo labels); no gradient.

    Args:
        features: (P, K); anchors: (A, K), same dtype and device.
        feature_group: (P,) int64/int32 group id of each row (e.g. its video index).
        anchor_group: (A,) int64/int32 group id of each anchor.

    Returns:
        (P,) int64: index of the anchor maximising ``<features[p], anchors[a]>`` among the anchors with
        ``anchor_group[a] == feature_group[p]``; the lowest such index on ties; -1 when the row's
        group has no anchor. (A positive temperature does not change the argmax.)
    """
    _check_pair(features, anchors)
    check_tensor("feature_group", feature_group, ndim=1, dtypes=_INT_DTYPES, device=features.device)
    check_tensor("anchor_group", anchor_group, ndim=1, dtypes=_INT_DTYPES, device=features.device)
    if feature_group.shape[0] != features.shape[0]:
        raise ValueError(f"feature_group has {feature_group.shape[0]} rows but features has {features.shape[0]}")
    if anchor_group.shape[0] != anchors.shape[0]:
        raise ValueError(f"anchor_group has {anchor_group.shape[0]} entries but anchors has {anchors.shape[0]}")
    features, anchors = features.detach(), anchors.detach()
    if _triton_path(features, anchors, feature_group, anchor_group):
        return _kernels().argmax_op(features, anchors, feature_group, anchor_group)
    return _anchor_argmax_op(features, anchors, feature_group, anchor_group)


def anchor_soft_assignment(features_rows: torch.Tensor, anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    """(R, A) fp32 softmax over anchors of ``features_rows @ anchors.T / tau`` for a small set of R rows.

    Meant for visualisation (R x A is materialised); differentiable. Shapes: features_rows (R, K), anchors (A, K).
    """
    _check_pair(features_rows, anchors)
    temperature = check_temperature(temperature)
    cdt = compute_dtype(features_rows.dtype)
    return torch.softmax(features_rows.to(cdt) @ anchors.to(cdt).T / temperature, dim=1)


# names used by tritoncorr.bench.anchor_softmax (the Triton ones import Triton on first access)
_torch_fwd, _torch_bwd, _torch_argmax = nll_forward, nll_backward, group_argmax
_LAZY = {"_anchor_nll_triton_op": "nll_op", "_anchor_argmax_triton_op": "argmax_op"}


def _kernels():
    """The ``triton_kernels`` module: imports Triton and registers the family's ``triton_op`` on first
    use (an import statement, which ``torch.compile`` can trace, unlike ``importlib``)."""
    from . import triton_kernels

    return triton_kernels


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(_kernels(), _LAZY[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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

Op pattern (docs/KERNELS.md): the public functions choose the path in Python before calling an op.
CUDA tensors (or ``TRITONCORR_BACKEND=triton`` with the interpreter) -> ``torch.library.triton_op``
``tritoncorr::anchor_nll_triton`` / ``anchor_nll_backward_triton`` / ``anchor_argmax_triton``;
otherwise the opaque ``custom_op`` ``tritoncorr::anchor_nll`` / ``anchor_nll_backward`` /
``anchor_argmax`` whose implementation is the chunked PyTorch path.

Environment: ``TRITONCORR_BACKEND``, ``TRITONCORR_AUTOTUNE`` (see ``_utils.py``). fp32 inputs use
IEEE fp32 dot products on GPU unless ``torch.backends.cuda.matmul.allow_tf32`` is set (then TF32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import (
    FLOAT_DTYPES,
    alloc_output,
    autotune_enabled,
    cdiv,
    check_tensor,
    interpreting,
    next_power_of_2,
    use_triton,
)
from .aot import AotSpec

__all__ = [
    "anchor_nll",
    "anchor_lse",
    "anchor_argmax",
    "anchor_soft_assignment",
    "anchor_nll_reference",
    "anchor_lse_reference",
    "anchor_argmax_reference",
    "AOT_SPECS",
    "CHUNK_ROWS",
]

#: Rows per chunk of the PyTorch path (a chunk holds a few CHUNK_ROWS x A fp32 matrices).
CHUNK_ROWS = 4096
_CHUNK_ELEMENTS = 1 << 22  # at most ~16 MB of fp32 logits per chunk, whatever A is

# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _mma(a, b, acc, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` with fp32 accumulation. UPCAST (interpreter + bf16 only): Triton 3.9's interpreter
    multiplies the raw uint16 storage of bf16 operands, so they are widened first (values are unchanged)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _logits_tile(
    f_ptr, q_ptr, rows, cols, P, A, K,
    stride_fp, stride_fk, stride_qa, stride_qk,
    BLOCK_P: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """fp32 (BLOCK_P, BLOCK_A) tile of ``features[rows] @ anchors[cols].T`` (zeros outside)."""
    acc = tl.zeros((BLOCK_P, BLOCK_A), dtype=tl.float32)
    row_ok = rows < P
    col_ok = cols < A
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        f = tl.load(f_ptr + rows[:, None] * stride_fp + ks[None, :] * stride_fk,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        q = tl.load(q_ptr + cols[:, None] * stride_qa + ks[None, :] * stride_qk,
                    mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc = _mma(f, tl.trans(q), acc, DOT_PRECISION, UPCAST)
    return acc


@triton.jit(do_not_specialize=["P"])
def _nll_fwd_kernel(
    f_ptr, q_ptr, lab_ptr, loss_ptr, lse_ptr,
    P, A, K,
    stride_fp, stride_fk, stride_qa, stride_qk, stride_lab,
    scale,
    BLOCK_P: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One program = BLOCK_P rows; streams anchor tiles with an online log-sum-exp."""
    scale = tl.cast(scale, tl.float32)
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    row_ok = rows < P
    labels = tl.load(lab_ptr + rows * stride_lab, mask=row_ok, other=-1).to(tl.int32)
    m = tl.full((BLOCK_P,), float("-inf"), dtype=tl.float32)
    s_sum = tl.zeros((BLOCK_P,), dtype=tl.float32)
    z_label = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for a0 in range(0, A, BLOCK_A):
        cols = a0 + tl.arange(0, BLOCK_A)
        z = _logits_tile(f_ptr, q_ptr, rows, cols, P, A, K, stride_fp, stride_fk, stride_qa, stride_qk,
                         BLOCK_P, BLOCK_A, BLOCK_K, DOT_PRECISION, UPCAST) * scale
        z = tl.where((cols < A)[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        s_sum = s_sum * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m = m_new
        z_label += tl.sum(tl.where(cols[None, :] == labels[:, None], z, 0.0), axis=1)
    lse = m + tl.log(s_sum)
    loss = tl.where(labels >= 0, lse - z_label, 0.0)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(loss_ptr + rows, loss, mask=row_ok)


@triton.jit
def _row_grads(lab_ptr, lse_ptr, gl_ptr, gs_ptr, rows, row_ok):
    """Per-row inputs of the backward: labels (int32, -1 = ignored), saved lse, the loss gradient
    ``g_loss`` (zero for ignored rows) and ``g_tot = g_loss + g_lse`` (fp32), all shaped (BLOCK_P,)."""
    labels = tl.load(lab_ptr + rows, mask=row_ok, other=-1).to(tl.int32)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g_loss = tl.load(gl_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    g_loss = tl.where(labels >= 0, g_loss, 0.0)
    g_tot = g_loss + tl.load(gs_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    return labels, lse, g_loss, g_tot


@triton.jit
def _dlogits(z, cols, col_ok, labels, lse, g_loss, g_tot, scale):
    """Gradient w.r.t. the unscaled dot products of a (BLOCK_P, BLOCK_A) tile of scaled logits ``z``:
    ``(softmax(z) * g_tot - onehot(labels) * g_loss) * scale`` (columns past A contribute nothing)."""
    z = tl.where(col_ok[None, :], z, float("-inf"))
    prob = tl.exp(z - lse[:, None])
    dz = prob * g_tot[:, None] - tl.where(cols[None, :] == labels[:, None], g_loss[:, None], 0.0)
    return dz * scale


@triton.jit(do_not_specialize=["P"])
def _nll_bwd_features_kernel(
    f_ptr, q_ptr, lab_ptr, lse_ptr, gl_ptr, gs_ptr, df_ptr,
    P, A, K,
    stride_fp, stride_fk, stride_qa, stride_qk, stride_dfp, stride_dfk,
    scale,
    BLOCK_P: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """dF[rows, kcols] = sum over anchor tiles of dz @ anchors[:, kcols] * scale.

    Grid: (row blocks, K / BLOCK_D output column blocks); logits are recomputed with BLOCK_K chunks.
    """
    scale = tl.cast(scale, tl.float32)
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    kd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < P
    kd_ok = kd < K
    labels, lse, g_loss, g_tot = _row_grads(lab_ptr, lse_ptr, gl_ptr, gs_ptr, rows, row_ok)
    acc = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    for a0 in range(0, A, BLOCK_A):
        cols = a0 + tl.arange(0, BLOCK_A)
        col_ok = cols < A
        z = _logits_tile(f_ptr, q_ptr, rows, cols, P, A, K, stride_fp, stride_fk, stride_qa, stride_qk,
                         BLOCK_P, BLOCK_A, BLOCK_K, DOT_PRECISION, UPCAST) * scale
        dz = _dlogits(z, cols, col_ok, labels, lse, g_loss, g_tot, scale)
        q = tl.load(q_ptr + cols[:, None] * stride_qa + kd[None, :] * stride_qk,
                    mask=col_ok[:, None] & kd_ok[None, :], other=0.0)
        acc = _mma(dz.to(q.dtype), q, acc, DOT_PRECISION, UPCAST)
    tl.store(df_ptr + rows[:, None] * stride_dfp + kd[None, :] * stride_dfk,
             acc.to(df_ptr.dtype.element_ty), mask=row_ok[:, None] & kd_ok[None, :])


@triton.jit(do_not_specialize=["P", "rows_per_split"])
def _nll_bwd_anchors_kernel(
    f_ptr, q_ptr, lab_ptr, lse_ptr, gl_ptr, gs_ptr, part_ptr,
    P, A, K, rows_per_split,
    stride_fp, stride_fk, stride_qa, stride_qk,
    scale,
    BLOCK_P: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Partial dA for one P split: part[split, cols, kcols] = sum over its row blocks of dz.T @ F[:, kcols] * scale.

    Grid: (anchor blocks, K / BLOCK_D column blocks, P splits); ``part`` is a contiguous fp32 (splits, A, K) buffer.
    """
    scale = tl.cast(scale, tl.float32)
    pid_s = tl.program_id(2).to(tl.int64)
    cols = tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A)
    kd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < A
    kd_ok = kd < K
    p_start = pid_s * rows_per_split
    p_end = tl.minimum(p_start + rows_per_split, P)
    acc = tl.zeros((BLOCK_A, BLOCK_D), dtype=tl.float32)
    for p0 in range(p_start, p_end, BLOCK_P):
        rows = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
        row_ok = rows < p_end
        labels, lse, g_loss, g_tot = _row_grads(lab_ptr, lse_ptr, gl_ptr, gs_ptr, rows, row_ok)
        z = _logits_tile(f_ptr, q_ptr, rows, cols, P, A, K, stride_fp, stride_fk, stride_qa, stride_qk,
                         BLOCK_P, BLOCK_A, BLOCK_K, DOT_PRECISION, UPCAST) * scale
        dz = _dlogits(z, cols, col_ok, labels, lse, g_loss, g_tot, scale)
        f = tl.load(f_ptr + rows[:, None] * stride_fp + kd[None, :] * stride_fk,
                    mask=row_ok[:, None] & kd_ok[None, :], other=0.0)
        acc = _mma(tl.trans(dz.to(f.dtype)), f, acc, DOT_PRECISION, UPCAST)
    tl.store(part_ptr + pid_s * A * K + (cols[:, None] * K + kd[None, :]), acc,
             mask=col_ok[:, None] & kd_ok[None, :])


@triton.jit(do_not_specialize=["P"])
def _argmax_kernel(
    f_ptr, q_ptr, fg_ptr, ag_ptr, out_ptr,
    P, A, K,
    stride_fp, stride_fk, stride_qa, stride_qk,
    BLOCK_P: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """out[p] = argmax over anchors a with ag[a] == fg[p] of <f_p, q_a> (lowest index on ties, -1 if none)."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    row_ok = rows < P
    fg = tl.load(fg_ptr + rows, mask=row_ok, other=0)
    best = tl.full((BLOCK_P,), float("-inf"), dtype=tl.float32)
    best_idx = tl.full((BLOCK_P,), -1, dtype=tl.int32)
    for a0 in range(0, A, BLOCK_A):
        cols = a0 + tl.arange(0, BLOCK_A)
        col_ok = cols < A
        ag = tl.load(ag_ptr + cols, mask=col_ok, other=0)
        z = _logits_tile(f_ptr, q_ptr, rows, cols, P, A, K, stride_fp, stride_fk, stride_qa, stride_qk,
                         BLOCK_P, BLOCK_A, BLOCK_K, DOT_PRECISION, UPCAST)
        valid = col_ok[None, :] & (ag[None, :] == fg[:, None])
        z = tl.where(valid, z, float("-inf"))
        tile_max = tl.max(z, axis=1)
        # lowest index among the tile's maxima (explicit, so it does not depend on argmax tie rules)
        tile_idx = tl.min(tl.where(z == tile_max[:, None], cols[None, :], A), axis=1)
        better = tile_max > best  # strict: an earlier tile keeps ties
        best = tl.where(better, tile_max, best)
        best_idx = tl.where(better, tile_idx, best_idx)
    tl.store(out_ptr + rows, best_idx.to(tl.int64), mask=row_ok)


# ---------------------------------------------------------------------------------------------
# Launch configuration (every decision is made here, in Python)
# ---------------------------------------------------------------------------------------------

# (BLOCK_P, BLOCK_A, num_warps, num_stages) per kernel and input class ("fp32" / "16" for bf16, fp16); the
# first entry is the fixed config used when autotuning is off. Every entry compiles without spills for
# sm_80 and sm_90 (AOT_SPECS / test_aot_*). fp32 uses IEEE FMA dots, whose operands live in registers,
# hence smaller tiles. BLOCK_K and BLOCK_D are derived from K (and the dtype).
_INTERPRET_CONFIG = (16, 16, 1, 1)
_CONFIGS: dict[tuple[str, str], list[tuple[int, int, int, int]]] = {
    ("fwd", "fp32"): [(64, 64, 8, 2), (32, 64, 4, 2)],
    ("argmax", "fp32"): [(64, 64, 8, 2)],
    ("bwd_features", "fp32"): [(32, 64, 8, 1), (32, 32, 4, 2)],
    ("bwd_anchors", "fp32"): [(32, 64, 8, 1)],
    ("fwd", "16"): [(64, 64, 4, 2), (128, 64, 8, 2)],
    ("argmax", "16"): [(64, 64, 4, 2), (128, 64, 8, 2)],
    ("bwd_features", "16"): [(64, 64, 8, 2), (128, 32, 8, 2)],
    ("bwd_anchors", "16"): [(64, 64, 8, 2), (32, 128, 8, 2)],
}
_MAX_BLOCK_K = 32  # reduction chunk of the logits (larger chunks spill: 2D pointer/operand tiles)
# output column block of the backward kernels: 128 for 16-bit inputs (K = 128 -> logits recomputed once per
# kernel); 64 for fp32, whose FMA dot keeps operands in registers (128 spills on sm_80)
_MAX_BLOCK_D = {torch.float32: 64, torch.bfloat16: 128, torch.float16: 128}


def _block_k(K: int) -> int:
    return min(max(next_power_of_2(K), 16), _MAX_BLOCK_K)


def _block_d(K: int, dtype: torch.dtype) -> int:
    return min(max(next_power_of_2(K), 16), _MAX_BLOCK_D[dtype])


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not interpreting() and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _upcast(dtype: torch.dtype) -> bool:
    return interpreting() and dtype == torch.bfloat16


def _dtype_class(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16"


_KERNELS = {
    "fwd": _nll_fwd_kernel,
    "argmax": _argmax_kernel,
    "bwd_features": _nll_bwd_features_kernel,
    "bwd_anchors": _nll_bwd_anchors_kernel,
}
_TUNED: dict[tuple[str, str], object] = {}


def _tuned(name: str, dclass: str):
    key = (name, dclass)
    if key not in _TUNED:
        configs = [triton.Config({"BLOCK_P": bp, "BLOCK_A": ba}, num_warps=w, num_stages=st)
                   for bp, ba, w, st in _CONFIGS[key]]
        _TUNED[key] = triton.autotune(configs=configs, key=["A", "K", "BLOCK_K", "DOT_PRECISION", "UPCAST"])(
            _KERNELS[name])
    return _TUNED[key]


def _kernel_and_meta(name: str, dtype: torch.dtype) -> tuple[object, dict]:
    """The kernel to launch (autotuned or plain) and the launch keywords the plain one needs."""
    dclass = _dtype_class(dtype)
    if autotune_enabled() and len(_CONFIGS[(name, dclass)]) > 1:
        return _tuned(name, dclass), {}
    bp, ba, w, st = _INTERPRET_CONFIG if interpreting() else _CONFIGS[(name, dclass)][0]
    return _KERNELS[name], {"BLOCK_P": bp, "BLOCK_A": ba, "num_warps": w, "num_stages": st}


def _split_align(dtype: torch.dtype) -> int:
    """Rows per dA split are a multiple of every BLOCK_P the launcher may use."""
    if interpreting():
        return _INTERPRET_CONFIG[0]
    return max(cfg[0] for cfg in _CONFIGS[("bwd_anchors", _dtype_class(dtype))])


def _default_splits(P: int, A: int, K: int, device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    base = cdiv(A, 64) * cdiv(K, _block_d(K, torch.float32))
    return max(1, min(cdiv(2 * sms, base), cdiv(P, 256)))


# ---------------------------------------------------------------------------------------------
# Triton launchers
# ---------------------------------------------------------------------------------------------


def _int32_addressable(features: torch.Tensor, anchors: torch.Tensor):
    """Kernels index rows in 64 bits but anchors and the K axis in 32 bits: make odd huge-stride views contiguous."""
    limit = 2**31 - 1
    if (features.shape[1] - 1) * abs(features.stride(1)) > limit:
        features = features.contiguous()
    if (anchors.shape[0] - 1) * abs(anchors.stride(0)) + (anchors.shape[1] - 1) * abs(anchors.stride(1)) > limit:
        anchors = anchors.contiguous()
    return features, anchors


def _launch_fwd(wrap, features, anchors, labels, temperature):
    features, anchors = _int32_addressable(features, anchors)
    P, K = features.shape
    A = anchors.shape[0]
    loss = alloc_output((P,), dtype=torch.float32, device=features.device)
    lse = alloc_output((P,), dtype=torch.float32, device=features.device)
    if P == 0:
        return loss, lse
    kernel, meta = _kernel_and_meta("fwd", features.dtype)
    grid = lambda m: (cdiv(P, m["BLOCK_P"]),)  # noqa: E731
    wrap(kernel)[grid](
        features, anchors, labels, loss, lse,
        P, A, K,
        features.stride(0), features.stride(1), anchors.stride(0), anchors.stride(1), labels.stride(0),
        1.0 / float(temperature),
        BLOCK_K=_block_k(K), DOT_PRECISION=_dot_precision(features.dtype), UPCAST=_upcast(features.dtype), **meta,
    )
    return loss, lse


def _launch_bwd(wrap, features, anchors, labels, lse, grad_loss, grad_lse, temperature, p_splits=None):
    features, anchors = _int32_addressable(features, anchors)
    P, K = features.shape
    A = anchors.shape[0]
    device = features.device
    labels = labels.contiguous()
    lse = lse.contiguous()
    grad_loss = grad_loss.contiguous()
    grad_lse = grad_lse.contiguous()
    grad_features = alloc_output((P, K), dtype=features.dtype, device=device)
    if P == 0:
        return grad_features, torch.zeros_like(anchors, memory_format=torch.contiguous_format)
    block_k = _block_k(K)
    block_d = _block_d(K, features.dtype)
    precision = _dot_precision(features.dtype)
    scale = 1.0 / float(temperature)

    kernel, meta = _kernel_and_meta("bwd_features", features.dtype)
    grid = lambda m: (cdiv(P, m["BLOCK_P"]), cdiv(K, block_d))  # noqa: E731
    wrap(kernel)[grid](
        features, anchors, labels, lse, grad_loss, grad_lse, grad_features,
        P, A, K,
        features.stride(0), features.stride(1), anchors.stride(0), anchors.stride(1),
        grad_features.stride(0), grad_features.stride(1),
        scale,
        BLOCK_K=block_k, BLOCK_D=block_d, DOT_PRECISION=precision, UPCAST=_upcast(features.dtype), **meta,
    )

    align = _split_align(features.dtype)
    splits = _default_splits(P, A, K, device) if p_splits is None else max(1, int(p_splits))
    rows_per_split = cdiv(cdiv(P, splits), align) * align
    splits = cdiv(P, rows_per_split)
    partial = alloc_output((splits, A, K), dtype=torch.float32, device=device)
    kernel, meta = _kernel_and_meta("bwd_anchors", features.dtype)
    grid = lambda m: (cdiv(A, m["BLOCK_A"]), cdiv(K, block_d), splits)  # noqa: E731
    wrap(kernel)[grid](
        features, anchors, labels, lse, grad_loss, grad_lse, partial,
        P, A, K, rows_per_split,
        features.stride(0), features.stride(1), anchors.stride(0), anchors.stride(1),
        scale,
        BLOCK_K=block_k, BLOCK_D=block_d, DOT_PRECISION=precision, UPCAST=_upcast(features.dtype), **meta,
    )
    grad_anchors = partial[0] if splits == 1 else partial.sum(dim=0)  # fixed order: deterministic
    return grad_features, grad_anchors.to(anchors.dtype).clone(memory_format=torch.contiguous_format)


def _launch_argmax(wrap, features, anchors, feature_group, anchor_group):
    features, anchors = _int32_addressable(features, anchors)
    P, K = features.shape
    A = anchors.shape[0]
    out = alloc_output((P,), dtype=torch.int64, device=features.device)
    if P == 0:
        return out
    feature_group = feature_group.to(torch.int64).contiguous()
    anchor_group = anchor_group.to(torch.int64).contiguous()
    kernel, meta = _kernel_and_meta("argmax", features.dtype)
    grid = lambda m: (cdiv(P, m["BLOCK_P"]),)  # noqa: E731
    wrap(kernel)[grid](
        features, anchors, feature_group, anchor_group, out,
        P, A, K,
        features.stride(0), features.stride(1), anchors.stride(0), anchors.stride(1),
        BLOCK_K=_block_k(K), DOT_PRECISION=_dot_precision(features.dtype), UPCAST=_upcast(features.dtype), **meta,
    )
    return out


def _no_wrap(kernel):
    return kernel


# ---------------------------------------------------------------------------------------------
# PyTorch path (chunked over rows: never holds P x A) and references (explicit logits)
# ---------------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_rows(A: int) -> int:
    return max(1, min(CHUNK_ROWS, _CHUNK_ELEMENTS // max(A, 1)))


def _torch_fwd(features, anchors, labels, temperature):
    P = features.shape[0]
    cdt = _compute_dtype(features.dtype)
    loss = torch.empty(P, dtype=cdt, device=features.device)
    lse = torch.empty(P, dtype=cdt, device=features.device)
    q_scaled = anchors.to(cdt) * (1.0 / float(temperature))  # (A, K): fold 1/tau into the anchors
    rows = _chunk_rows(anchors.shape[0])
    for s in range(0, P, rows):
        e = min(P, s + rows)
        z = features[s:e].to(cdt) @ q_scaled.T  # (chunk, A) logits
        lab = labels[s:e]
        z_lab = z.gather(1, lab.clamp(min=0)[:, None])[:, 0]
        z_max = z.amax(dim=1)
        # log-sum-exp in place (torch.logsumexp is several times slower on CPU)
        lse_c = z.sub_(z_max[:, None]).exp_().sum(dim=1).log_().add_(z_max)
        lse[s:e] = lse_c
        loss[s:e] = torch.where(lab >= 0, lse_c - z_lab, torch.zeros((), dtype=cdt, device=z.device))
        del z  # freed before the next chunk's logits exist: one (chunk, A) matrix at a time
    return loss, lse


def _torch_bwd(features, anchors, labels, lse, grad_loss, grad_lse, temperature):
    P = features.shape[0]
    cdt = _compute_dtype(features.dtype)
    scale = 1.0 / float(temperature)
    q = anchors.to(cdt)
    q_scaled = q * scale
    grad_features = torch.empty_like(features, memory_format=torch.contiguous_format)
    grad_anchors = torch.zeros(anchors.shape, dtype=cdt, device=anchors.device)
    rows = _chunk_rows(anchors.shape[0])
    for s in range(0, P, rows):
        e = min(P, s + rows)
        f = features[s:e].to(cdt)
        z = f @ q_scaled.T
        lab = labels[s:e]
        g_loss = torch.where(lab >= 0, grad_loss[s:e].to(cdt), torch.zeros((), dtype=cdt, device=f.device))
        g_tot = g_loss + grad_lse[s:e].to(cdt)
        dz = z.sub_(lse[s:e].to(cdt)[:, None]).exp_().mul_(g_tot[:, None])  # softmax * (g + h), in place
        dz.scatter_add_(1, lab.clamp(min=0)[:, None], -g_loss[:, None])  # - onehot * g
        grad_features[s:e] = (dz @ q_scaled).to(features.dtype)
        grad_anchors.addmm_(dz.T, f, alpha=scale)
        del z, dz, f  # one (chunk, A) matrix at a time
    return grad_features, grad_anchors.to(anchors.dtype)


def _torch_argmax(features, anchors, feature_group, anchor_group):
    P = features.shape[0]
    cdt = _compute_dtype(features.dtype)
    out = torch.empty(P, dtype=torch.int64, device=features.device)
    q = anchors.to(cdt)
    ag = anchor_group.to(torch.int64)
    rows = _chunk_rows(anchors.shape[0])
    for s in range(0, P, rows):
        e = min(P, s + rows)
        z = features[s:e].to(cdt) @ q.T
        valid = feature_group[s:e].to(torch.int64)[:, None] == ag[None, :]
        z.masked_fill_(~valid, float("-inf"))
        idx = z.argmax(dim=1) if anchors.shape[0] > 0 else torch.zeros(e - s, dtype=torch.int64, device=z.device)
        out[s:e] = torch.where(valid.any(dim=1), idx, torch.full_like(idx, -1))
        del z, valid  # one (chunk, A) matrix at a time
    return out


def anchor_nll_reference(features: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """(P,) ``F.cross_entropy(features @ anchors.T / temperature, labels, ignore_index=-1, reduction="none")``.

    Explicit (P, A) logits, computed in the inputs' dtype (upcast the inputs for an fp32/fp64 reference).
    """
    logits = features @ anchors.T / temperature
    return torch.nn.functional.cross_entropy(logits, labels, ignore_index=-1, reduction="none")


def anchor_lse_reference(features: torch.Tensor, anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    """(P,) ``logsumexp(features @ anchors.T / temperature, dim=1)`` on explicit logits."""
    return torch.logsumexp(features @ anchors.T / temperature, dim=1)


def anchor_argmax_reference(features: torch.Tensor, anchors: torch.Tensor, feature_group: torch.Tensor,
                            anchor_group: torch.Tensor) -> torch.Tensor:
    """(P,) int64: argmax over anchors of the same group of ``features @ anchors.T`` (explicit logits, fp32 or
    wider); first index on ties; -1 where the row's group has no anchor."""
    scores = features.to(_compute_dtype(features.dtype)) @ anchors.to(_compute_dtype(features.dtype)).T
    valid = feature_group[:, None].to(torch.int64) == anchor_group[None, :].to(torch.int64)
    scores = scores.masked_fill(~valid, float("-inf"))
    idx = scores.argmax(dim=1)
    return torch.where(valid.any(dim=1), idx, torch.full_like(idx, -1))


# ---------------------------------------------------------------------------------------------
# torch.library ops
# ---------------------------------------------------------------------------------------------


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("tritoncorr::anchor_nll", mutates_args=())
def _anchor_nll_op(features: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor,
                   temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, lse), each (P,), by the chunked PyTorch path."""
    return _torch_fwd(features, anchors, labels, temperature)


@_anchor_nll_op.register_fake
def _(features, anchors, labels, temperature):
    P = features.shape[0]
    dt = _out_dtype(features.dtype)
    return features.new_empty((P,), dtype=dt), features.new_empty((P,), dtype=dt)


@torch.library.custom_op("tritoncorr::anchor_nll_backward", mutates_args=())
def _anchor_nll_backward_op(features: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor,
                            lse: torch.Tensor, grad_loss: torch.Tensor, grad_lse: torch.Tensor,
                            temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_features (P, K), grad_anchors (A, K)) by the chunked PyTorch path (logits recomputed per chunk)."""
    return _torch_bwd(features, anchors, labels, lse, grad_loss, grad_lse, temperature)


@_anchor_nll_backward_op.register_fake
def _(features, anchors, labels, lse, grad_loss, grad_lse, temperature):
    return (torch.empty_like(features, memory_format=torch.contiguous_format),
            torch.empty_like(anchors, memory_format=torch.contiguous_format))


@torch.library.triton_op("tritoncorr::anchor_nll_triton", mutates_args=())
def _anchor_nll_triton_op(features: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor,
                          temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, lse), each (P,) fp32, by the fused Triton forward kernel."""
    return _launch_fwd(torch.library.wrap_triton, features, anchors, labels, temperature)


@torch.library.triton_op("tritoncorr::anchor_nll_backward_triton", mutates_args=())
def _anchor_nll_backward_triton_op(features: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor,
                                   lse: torch.Tensor, grad_loss: torch.Tensor, grad_lse: torch.Tensor,
                                   temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_features, grad_anchors) by the two fused Triton backward kernels."""
    return _launch_bwd(torch.library.wrap_triton, features, anchors, labels, lse, grad_loss, grad_lse, temperature)


def _setup_context(ctx, inputs, output):
    features, anchors, labels, temperature = inputs
    ctx.save_for_backward(features, anchors, labels, output[1])
    ctx.temperature = temperature


def _grads_or_zeros(lse, grad_loss, grad_lse):
    if grad_loss is None:
        grad_loss = torch.zeros_like(lse)
    if grad_lse is None:
        grad_lse = torch.zeros_like(lse)
    return grad_loss, grad_lse


def _backward_torch(ctx, grad_loss, grad_lse):
    features, anchors, labels, lse = ctx.saved_tensors
    grad_loss, grad_lse = _grads_or_zeros(lse, grad_loss, grad_lse)
    df, da = _anchor_nll_backward_op(features, anchors, labels, lse, grad_loss, grad_lse, ctx.temperature)
    return df, da, None, None


def _backward_triton(ctx, grad_loss, grad_lse):
    features, anchors, labels, lse = ctx.saved_tensors
    grad_loss, grad_lse = _grads_or_zeros(lse, grad_loss, grad_lse)
    df, da = _anchor_nll_backward_triton_op(features, anchors, labels, lse, grad_loss, grad_lse, ctx.temperature)
    return df, da, None, None


_anchor_nll_op.register_autograd(_backward_torch, setup_context=_setup_context)
_anchor_nll_triton_op.register_autograd(_backward_triton, setup_context=_setup_context)


@torch.library.custom_op("tritoncorr::anchor_argmax", mutates_args=())
def _anchor_argmax_op(features: torch.Tensor, anchors: torch.Tensor, feature_group: torch.Tensor,
                      anchor_group: torch.Tensor) -> torch.Tensor:
    """(P,) int64 group-restricted argmax by the chunked PyTorch path."""
    return _torch_argmax(features, anchors, feature_group, anchor_group)


@_anchor_argmax_op.register_fake
def _(features, anchors, feature_group, anchor_group):
    return features.new_empty((features.shape[0],), dtype=torch.int64)


@torch.library.triton_op("tritoncorr::anchor_argmax_triton", mutates_args=())
def _anchor_argmax_triton_op(features: torch.Tensor, anchors: torch.Tensor, feature_group: torch.Tensor,
                             anchor_group: torch.Tensor) -> torch.Tensor:
    """(P,) int64 group-restricted argmax by the fused Triton kernel."""
    return _launch_argmax(torch.library.wrap_triton, features, anchors, feature_group, anchor_group)


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
            f"features (P, K) = {tuple(features.shape)} and anchors (A, K) = {tuple(anchors.shape)} disagree on K")
    if features.shape[1] == 0:
        raise ValueError("features and anchors need K >= 1 channels")
    if anchors.shape[0] == 0:
        raise ValueError("anchors is empty (A = 0): the softmax over anchors is undefined")


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not temperature > 0.0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite positive number, got {temperature}")
    return temperature


def _triton_path(*tensors: torch.Tensor) -> bool:
    if not use_triton(*tensors):
        return False
    if tensors[0].dtype == torch.float64:
        raise TypeError("the Triton anchor-softmax kernels take fp32/bf16/fp16 inputs, not fp64 "
                        "(use TRITONCORR_BACKEND=torch for fp64)")
    return True


def _nll_and_lse(features, anchors, labels, temperature):
    if _triton_path(features, anchors, labels):
        return _anchor_nll_triton_op(features, anchors, labels, temperature)
    return _anchor_nll_op(features, anchors, labels, temperature)


def anchor_nll(features: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor,
               temperature: float) -> torch.Tensor:
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
    temperature = _check_temperature(temperature)
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
    temperature = _check_temperature(temperature)
    labels = torch.full((features.shape[0],), -1, dtype=torch.int64, device=features.device)
    return _nll_and_lse(features, anchors, labels, temperature)[1]


def anchor_argmax(features: torch.Tensor, anchors: torch.Tensor, feature_group: torch.Tensor,
                  anchor_group: torch.Tensor) -> torch.Tensor:
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
        return _anchor_argmax_triton_op(features, anchors, feature_group, anchor_group)
    return _anchor_argmax_op(features, anchors, feature_group, anchor_group)


def anchor_soft_assignment(features_rows: torch.Tensor, anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    """(R, A) fp32 softmax over anchors of ``features_rows @ anchors.T / tau`` for a small set of R rows.

    Meant for visualisation (R x A is materialised); differentiable. Shapes: features_rows (R, K), anchors (A, K).
    """
    _check_pair(features_rows, anchors)
    temperature = _check_temperature(temperature)
    cdt = _compute_dtype(features_rows.dtype)
    return torch.softmax(features_rows.to(cdt) @ anchors.to(cdt).T / temperature, dim=1)


# ---------------------------------------------------------------------------------------------
# Ahead-of-time compile specs: every kernel, in every configuration the launchers use
# ---------------------------------------------------------------------------------------------


_AOT_POINTERS = {
    "f_ptr": "{dt}", "q_ptr": "{dt}", "df_ptr": "{dt}", "lab_ptr": "i64", "fg_ptr": "i64", "ag_ptr": "i64",
    "out_ptr": "i64", "loss_ptr": "fp32", "lse_ptr": "fp32", "gl_ptr": "fp32", "gs_ptr": "fp32", "part_ptr": "fp32",
}


def _aot_spec(name: str, dt: str, K: int, config: tuple[int, int, int, int]) -> AotSpec:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dt]
    fn = _KERNELS[name]
    bp, ba, w, st = config
    constexprs = {"BLOCK_P": bp, "BLOCK_A": ba, "BLOCK_K": _block_k(K), "DOT_PRECISION": "ieee", "UPCAST": False}
    if "BLOCK_D" in fn.arg_names:
        constexprs["BLOCK_D"] = _block_d(K, dtype)
    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in _AOT_POINTERS:
            signature[arg] = "*" + _AOT_POINTERS[arg].format(dt=dt)
        elif arg == "scale":
            signature[arg] = "fp32"
        else:
            signature[arg] = "i32"
    label = ",".join(f"{k}={v}" for k, v in constexprs.items() if k.startswith("BLOCK"))
    return AotSpec(name=f"anchor_softmax.{name}[{dt},{label},w={w},s={st}]", fn=fn, signature=signature,
                   constexprs=constexprs, num_warps=w, num_stages=st)


def _aot_specs() -> list[AotSpec]:
    """Every kernel x (fp32, bf16) x every config the launcher may use, at K = 128 (the DUL default; its
    BLOCK_K / BLOCK_D are also the largest the launcher uses, so larger K only adds loop iterations)."""
    specs = []
    for dt in ("fp32", "bf16"):
        for name in _KERNELS:
            specs.extend(_aot_spec(name, dt, 128, cfg) for cfg in _CONFIGS[(name, "fp32" if dt == "fp32" else "16")])
    return specs


AOT_SPECS: list[AotSpec] = _aot_specs()

"""Triton kernels of the softmax over anchors, their launchers, the ``triton_op`` ops and AOT specs.

Imported only when a kernel is launched (CUDA tensors, or ``TRITONCORR_BACKEND=triton`` under
``TRITON_INTERPRET=1``) or compiled ahead of time; importing it registers
``tritoncorr::anchor_nll_triton`` / ``anchor_nll_backward_triton`` / ``anchor_argmax_triton``.

Every kernel computes its logits tiles with ``tl.dot`` (fp32 accumulation): bf16/fp16 inputs on
tensor cores (``wgmma`` on sm_90 for tiles of 64+ rows and 4+ warps, ``mma.sync`` on sm_80); fp32
inputs with IEEE FMA dots (exact), or TF32 when ``torch.backends.cuda.matmul.allow_tf32`` is set.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_utils import aot_spec, dot_acc
from .._utils import alloc_output, autotune_enabled, cdiv, interpreting, next_power_of_2, upcast_bf16_dot
from . import _backward_with, _setup_context

__all__ = ["launch_fwd", "launch_bwd", "launch_argmax", "aot_specs"]


@triton.jit
def _logits_tile(
    f_rows,
    row_ok,
    q_cols,
    col_ok,
    K,
    stride_fk,
    stride_qk,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """fp32 (BLOCK_P, BLOCK_A) tile of ``features[rows] @ anchors[cols].T`` (zeros outside): ``f_rows``
    (BLOCK_P,) and ``q_cols`` (BLOCK_A,) point at channel 0 of those rows and anchors
    (``f_ptr + rows * stride_fp``, ``q_ptr + cols * stride_qa``)."""
    acc = tl.zeros((f_rows.shape[0], q_cols.shape[0]), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        f = tl.load(f_rows[:, None] + ks[None, :] * stride_fk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        q = tl.load(q_cols[:, None] + ks[None, :] * stride_qk, mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc = dot_acc(f, tl.trans(q), acc, INPUT_PRECISION, UPCAST)
    return acc


@triton.jit(do_not_specialize=["P"])
def _nll_fwd_kernel(
    f_ptr,
    q_ptr,
    lab_ptr,
    loss_ptr,
    lse_ptr,
    P,
    A,
    K,
    stride_fp,
    stride_fk,
    stride_qa,
    stride_qk,
    stride_lab,
    scale,
    BLOCK_P: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
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
    f_rows = f_ptr + rows * stride_fp
    for a0 in range(0, A, BLOCK_A):
        cols = a0 + tl.arange(0, BLOCK_A)
        col_ok = cols < A
        q_cols = q_ptr + cols * stride_qa
        z = _logits_tile(f_rows, row_ok, q_cols, col_ok, K, stride_fk, stride_qk, BLOCK_K, INPUT_PRECISION, UPCAST)
        z = tl.where(col_ok[None, :], z * scale, float("-inf"))
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
    f_ptr,
    q_ptr,
    lab_ptr,
    lse_ptr,
    gl_ptr,
    gs_ptr,
    df_ptr,
    P,
    A,
    K,
    stride_fp,
    stride_fk,
    stride_qa,
    stride_qk,
    stride_dfp,
    stride_dfk,
    scale,
    BLOCK_P: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
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
    f_rows = f_ptr + rows * stride_fp
    for a0 in range(0, A, BLOCK_A):
        cols = a0 + tl.arange(0, BLOCK_A)
        col_ok = cols < A
        q_cols = q_ptr + cols * stride_qa
        z = _logits_tile(f_rows, row_ok, q_cols, col_ok, K, stride_fk, stride_qk, BLOCK_K, INPUT_PRECISION, UPCAST)
        dz = _dlogits(z * scale, cols, col_ok, labels, lse, g_loss, g_tot, scale)
        # the address is recomputed here, not taken from q_cols: sharing q_cols with _logits_tile keeps
        # its pointers live across the logits loop (measured: up to +40 registers, spills on sm_80)
        q = tl.load(
            q_ptr + cols[:, None] * stride_qa + kd[None, :] * stride_qk,
            mask=col_ok[:, None] & kd_ok[None, :],
            other=0.0,
        )
        acc = dot_acc(dz.to(q.dtype), q, acc, INPUT_PRECISION, UPCAST)
    tl.store(
        df_ptr + rows[:, None] * stride_dfp + kd[None, :] * stride_dfk,
        acc.to(df_ptr.dtype.element_ty),
        mask=row_ok[:, None] & kd_ok[None, :],
    )


@triton.jit(do_not_specialize=["P", "rows_per_split"])
def _nll_bwd_anchors_kernel(
    f_ptr,
    q_ptr,
    lab_ptr,
    lse_ptr,
    gl_ptr,
    gs_ptr,
    part_ptr,
    P,
    A,
    K,
    rows_per_split,
    stride_fp,
    stride_fk,
    stride_qa,
    stride_qk,
    scale,
    BLOCK_P: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
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
    q_cols = q_ptr + cols * stride_qa
    for p0 in range(p_start, p_end, BLOCK_P):
        rows = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
        row_ok = rows < p_end
        labels, lse, g_loss, g_tot = _row_grads(lab_ptr, lse_ptr, gl_ptr, gs_ptr, rows, row_ok)
        f_rows = f_ptr + rows * stride_fp
        # rows < P, not row_ok: the same rows (a split is whole row blocks), 3-6 fewer registers on sm_90
        z = _logits_tile(f_rows, rows < P, q_cols, col_ok, K, stride_fk, stride_qk, BLOCK_K, INPUT_PRECISION, UPCAST)
        dz = _dlogits(z * scale, cols, col_ok, labels, lse, g_loss, g_tot, scale)
        # recomputed, not from f_rows: see the dF kernel (sharing it spills on sm_80)
        f = tl.load(
            f_ptr + rows[:, None] * stride_fp + kd[None, :] * stride_fk,
            mask=row_ok[:, None] & kd_ok[None, :],
            other=0.0,
        )
        acc = dot_acc(tl.trans(dz.to(f.dtype)), f, acc, INPUT_PRECISION, UPCAST)
    tl.store(part_ptr + pid_s * A * K + (cols[:, None] * K + kd[None, :]), acc, mask=col_ok[:, None] & kd_ok[None, :])


@triton.jit(do_not_specialize=["P"])
def _argmax_kernel(
    f_ptr,
    q_ptr,
    fg_ptr,
    ag_ptr,
    out_ptr,
    P,
    A,
    K,
    stride_fp,
    stride_fk,
    stride_qa,
    stride_qk,
    BLOCK_P: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """out[p] = argmax over anchors a with ag[a] == fg[p] of <f_p, q_a> (lowest index on ties, -1 if none)."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    row_ok = rows < P
    fg = tl.load(fg_ptr + rows, mask=row_ok, other=0)
    best = tl.full((BLOCK_P,), float("-inf"), dtype=tl.float32)
    best_idx = tl.full((BLOCK_P,), -1, dtype=tl.int32)
    f_rows = f_ptr + rows * stride_fp
    for a0 in range(0, A, BLOCK_A):
        cols = a0 + tl.arange(0, BLOCK_A)
        col_ok = cols < A
        q_cols = q_ptr + cols * stride_qa
        ag = tl.load(ag_ptr + cols, mask=col_ok, other=0)
        z = _logits_tile(f_rows, row_ok, q_cols, col_ok, K, stride_fk, stride_qk, BLOCK_K, INPUT_PRECISION, UPCAST)
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
# sm_80 and sm_90 (aot_specs() / test_aot_*). fp32 uses IEEE FMA dots, whose operands live in registers,
# hence smaller tiles. BLOCK_K and BLOCK_D are derived from K (and the dtype).
_INTERPRET_CONFIG = (16, 16, 1, 1)
CONFIGS: dict[tuple[str, str], list[tuple[int, int, int, int]]] = {
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


def _input_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not interpreting() and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _dtype_class(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16"


KERNELS = {
    "fwd": _nll_fwd_kernel,
    "argmax": _argmax_kernel,
    "bwd_features": _nll_bwd_features_kernel,
    "bwd_anchors": _nll_bwd_anchors_kernel,
}
_TUNED: dict[tuple[str, str], object] = {}


def _tuned(name: str, dclass: str):
    key = (name, dclass)
    if key not in _TUNED:
        configs = [
            triton.Config({"BLOCK_P": bp, "BLOCK_A": ba}, num_warps=w, num_stages=st) for bp, ba, w, st in CONFIGS[key]
        ]
        _TUNED[key] = triton.autotune(configs=configs, key=["A", "K", "BLOCK_K", "INPUT_PRECISION", "UPCAST"])(
            KERNELS[name]
        )
    return _TUNED[key]


def _kernel_and_meta(name: str, dtype: torch.dtype, K: int) -> tuple[object, dict]:
    """The kernel to launch (autotuned or plain) and its launch keywords: the blocks derived from K, the dot
    precision and, for the plain kernel, its fixed config."""
    meta = {"BLOCK_K": _block_k(K), "INPUT_PRECISION": _input_precision(dtype), "UPCAST": upcast_bf16_dot(dtype)}
    if "BLOCK_D" in KERNELS[name].arg_names:
        meta["BLOCK_D"] = _block_d(K, dtype)
    dclass = _dtype_class(dtype)
    if autotune_enabled() and len(CONFIGS[(name, dclass)]) > 1:
        return _tuned(name, dclass), meta
    bp, ba, w, st = _INTERPRET_CONFIG if interpreting() else CONFIGS[(name, dclass)][0]
    return KERNELS[name], {**meta, "BLOCK_P": bp, "BLOCK_A": ba, "num_warps": w, "num_stages": st}


def _split_align(dtype: torch.dtype) -> int:
    """Rows per dA split are a multiple of every BLOCK_P the launcher may use."""
    if interpreting():
        return _INTERPRET_CONFIG[0]
    return max(cfg[0] for cfg in CONFIGS[("bwd_anchors", _dtype_class(dtype))])


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


def launch_fwd(wrap, features, anchors, labels, temperature):
    features, anchors = _int32_addressable(features, anchors)
    P, K = features.shape
    A = anchors.shape[0]
    loss = alloc_output((P,), dtype=torch.float32, device=features.device)
    lse = alloc_output((P,), dtype=torch.float32, device=features.device)
    if P == 0:
        return loss, lse
    kernel, meta = _kernel_and_meta("fwd", features.dtype, K)
    grid = lambda m: (cdiv(P, m["BLOCK_P"]),)  # noqa: E731
    wrap(kernel)[grid](
        features,
        anchors,
        labels,
        loss,
        lse,
        P,
        A,
        K,
        *features.stride(),
        *anchors.stride(),
        labels.stride(0),
        1.0 / float(temperature),
        **meta,
    )
    return loss, lse


def launch_bwd(wrap, features, anchors, labels, lse, grad_loss, grad_lse, temperature, p_splits=None):
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
    block_d = _block_d(K, features.dtype)
    scale = 1.0 / float(temperature)

    kernel, meta = _kernel_and_meta("bwd_features", features.dtype, K)
    grid = lambda m: (cdiv(P, m["BLOCK_P"]), cdiv(K, block_d))  # noqa: E731
    wrap(kernel)[grid](
        features,
        anchors,
        labels,
        lse,
        grad_loss,
        grad_lse,
        grad_features,
        P,
        A,
        K,
        *features.stride(),
        *anchors.stride(),
        *grad_features.stride(),
        scale,
        **meta,
    )

    align = _split_align(features.dtype)
    splits = _default_splits(P, A, K, device) if p_splits is None else max(1, int(p_splits))
    rows_per_split = cdiv(cdiv(P, splits), align) * align
    splits = cdiv(P, rows_per_split)
    partial = alloc_output((splits, A, K), dtype=torch.float32, device=device)
    kernel, meta = _kernel_and_meta("bwd_anchors", features.dtype, K)
    grid = lambda m: (cdiv(A, m["BLOCK_A"]), cdiv(K, block_d), splits)  # noqa: E731
    wrap(kernel)[grid](
        features,
        anchors,
        labels,
        lse,
        grad_loss,
        grad_lse,
        partial,
        P,
        A,
        K,
        rows_per_split,
        *features.stride(),
        *anchors.stride(),
        scale,
        **meta,
    )
    grad_anchors = partial[0] if splits == 1 else partial.sum(dim=0)  # fixed order: deterministic
    return grad_features, grad_anchors.to(anchors.dtype).clone(memory_format=torch.contiguous_format)


def launch_argmax(wrap, features, anchors, feature_group, anchor_group):
    features, anchors = _int32_addressable(features, anchors)
    P, K = features.shape
    A = anchors.shape[0]
    out = alloc_output((P,), dtype=torch.int64, device=features.device)
    if P == 0:
        return out
    feature_group = feature_group.to(torch.int64).contiguous()
    anchor_group = anchor_group.to(torch.int64).contiguous()
    kernel, meta = _kernel_and_meta("argmax", features.dtype, K)
    grid = lambda m: (cdiv(P, m["BLOCK_P"]),)  # noqa: E731
    wrap(kernel)[grid](
        features,
        anchors,
        feature_group,
        anchor_group,
        out,
        P,
        A,
        K,
        *features.stride(),
        *anchors.stride(),
        **meta,
    )
    return out


def no_wrap(kernel):
    """The ``wrap`` of a direct launch (outside a ``triton_op``)."""
    return kernel


@torch.library.triton_op("tritoncorr::anchor_nll_triton", mutates_args=())
def _anchor_nll_triton_op(
    features: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, lse), each (P,) fp32, by the fused Triton forward kernel."""
    return launch_fwd(torch.library.wrap_triton, features, anchors, labels, temperature)


@torch.library.triton_op("tritoncorr::anchor_nll_backward_triton", mutates_args=())
def _anchor_nll_backward_triton_op(
    features: torch.Tensor,
    anchors: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    grad_loss: torch.Tensor,
    grad_lse: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_features, grad_anchors) by the two fused Triton backward kernels."""
    return launch_bwd(torch.library.wrap_triton, features, anchors, labels, lse, grad_loss, grad_lse, temperature)


_anchor_nll_triton_op.register_autograd(_backward_with(_anchor_nll_backward_triton_op), setup_context=_setup_context)


@torch.library.triton_op("tritoncorr::anchor_argmax_triton", mutates_args=())
def _anchor_argmax_triton_op(
    features: torch.Tensor, anchors: torch.Tensor, feature_group: torch.Tensor, anchor_group: torch.Tensor
) -> torch.Tensor:
    """(P,) int64 group-restricted argmax by the fused Triton kernel."""
    return launch_argmax(torch.library.wrap_triton, features, anchors, feature_group, anchor_group)


#: public names of the ops (the public functions of the package call these)
nll_op = _anchor_nll_triton_op
argmax_op = _anchor_argmax_triton_op


# ---------------------------------------------------------------------------------------------
# Ahead-of-time compile specs: every kernel, in every configuration the launchers use
# ---------------------------------------------------------------------------------------------

_AOT_POINTERS = {
    "f_ptr": "{dt}",
    "q_ptr": "{dt}",
    "df_ptr": "{dt}",
    "lab_ptr": "i64",
    "fg_ptr": "i64",
    "ag_ptr": "i64",
    "out_ptr": "i64",
    "loss_ptr": "fp32",
    "lse_ptr": "fp32",
    "gl_ptr": "fp32",
    "gs_ptr": "fp32",
    "part_ptr": "fp32",
}


def kernel_spec(name: str, dt: str, K: int, config: tuple[int, int, int, int]):
    """The AotSpec of kernel ``name`` ("fwd", "argmax", "bwd_features", "bwd_anchors") for inputs of Triton
    type ``dt`` ("fp32", "bf16") at K channels in one (BLOCK_P, BLOCK_A, num_warps, num_stages) config."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dt]
    fn = KERNELS[name]
    bp, ba, w, st = config
    constexprs = {"BLOCK_P": bp, "BLOCK_A": ba, "BLOCK_K": _block_k(K), "INPUT_PRECISION": "ieee", "UPCAST": False}
    if "BLOCK_D" in fn.arg_names:
        constexprs["BLOCK_D"] = _block_d(K, dtype)
    pointers = {arg: kind.format(dt=dt) for arg, kind in _AOT_POINTERS.items()}
    label = ",".join(f"{k}={v}" for k, v in constexprs.items() if k.startswith("BLOCK"))
    return aot_spec(
        f"anchor_softmax.{name}[{dt},{label},w={w},s={st}]",
        fn,
        constexprs,
        pointers,
        floats=("scale",),
        num_warps=w,
        num_stages=st,
    )


def aot_specs(fixed_only: bool = False) -> list:
    """Every kernel x (fp32, bf16) x every config the launcher may use (``fixed_only``: the first, used when
    autotuning is off), at K = 128 (the DUL default; its BLOCK_K / BLOCK_D are also the largest the launcher
    uses, so larger K only adds loop iterations)."""
    specs = []
    for dt in ("fp32", "bf16"):
        for name in KERNELS:
            configs = CONFIGS[(name, "fp32" if dt == "fp32" else "16")]
            specs.extend(kernel_spec(name, dt, 128, cfg) for cfg in (configs[:1] if fixed_only else configs))
    return specs

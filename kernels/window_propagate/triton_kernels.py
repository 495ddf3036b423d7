"""Triton kernel of full-window propagation, its launcher, the ``tritoncorr::window_propagate`` op and AOT specs.

Imported only when the kernel is launched (CUDA tensors, or ``TRITONCORR_BACKEND=triton`` under
``TRITON_INTERPRET=1``) or compiled ahead of time; importing it registers the ``triton_op``.

Kernel: per program an 8 x 8 tile of query pixels for 16-bit features (64 rows: the M of a Hopper
``wgmma``; 4 x 8 for fp32 features) streams
the tile's unclipped window rectangle of every reference: ``tl.dot`` scores (bf16/fp16 features as
they come, fp32 through 3xTF32), an online softmax, and the probabilities times the values as a
second ``tl.dot`` (fp32 probabilities and labels through 3xTF32). With the compactness prior: a
first pass for the joint log-sum-exp, then per reference the soft sum, a running top-M and the
Gaussian stamps.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_utils import (
    PROPAGATION_TILE,
    aot_spec,
    feature_block_c,
    feature_precision,
    merge_topk,
    pixel_ptrs,
    propagation_args,
    propagation_grid,
    query_tile,
    tile_scores,
)
from .._utils import alloc_output, next_power_of_2, upcast_bf16_dot
from .reference import WindowSearch

__all__ = ["aot_specs", "launch", "run", "COMPACT_STAMP"]

#: Gaussian stamp radius (cells) of the compactness template: cells further than 3 from a centre
#: (|u - c|^2 >= 16) have weight 2^-64 = 5e-20 and are left out.
COMPACT_STAMP = 3
TILE_W = PROPAGATION_TILE[1]


@triton.jit
def _rect_cells(k_frame, j, ry0, rx0, RW, RN, H, W, s_ky, s_kx):
    """Cells ``j`` (BLOCK_K,) of the tile's window rectangle (RN cells, RW a row, origin ``ry0, rx0``) of
    the reference whose channel 0 is at ``k_frame``: their coordinates ``ky, kx``, which cells exist
    (``j < RN``), which lie in the image, their coordinates clamped to the image (for the value loads)
    and their pointers (:func:`pixel_ptrs`). Out-of-image cells load zeros: the zero border."""
    jv = j < RN
    ky = ry0 + j // RW
    kx = rx0 + j % RW
    kin = jv & (ky >= 0) & (ky < H) & (kx >= 0) & (kx < W)
    kyc = tl.minimum(tl.maximum(ky, 0), H - 1)
    kxc = tl.minimum(tl.maximum(kx, 0), W - 1)
    return ky, kx, jv, kin, kyc, kxc, pixel_ptrs(k_frame, kyc, kxc, s_ky, s_kx)


@triton.jit
def _in_window(qy, qx, qvalid, ky, kx, jv, RADIUS):
    """(BLOCK_Q, BLOCK_K) bool: rectangle cell (ky, kx) exists and lies in the window of query (qy, qx)."""
    dy = ky[None, :] - qy[:, None]
    dx = kx[None, :] - qx[:, None]
    return (tl.abs(dy) <= RADIUS) & (tl.abs(dx) <= RADIUS) & jv[None, :] & qvalid[:, None]


@triton.jit
def _value_rows(v_ptr, fr, y, x, ok, offs_l, lmask, s_vn, s_vl, s_vy, s_vx):
    """fp32 (n, BLOCK_L) labels of reference ``fr`` at the in-image cells (y, x) (n,); 0 where not ``ok``."""
    v_off = fr * s_vn + y.to(tl.int64) * s_vy + x.to(tl.int64) * s_vx
    return tl.load(
        v_ptr + v_off[:, None] + offs_l[None, :].to(tl.int64) * s_vl, mask=ok[:, None] & lmask[None, :], other=0.0
    ).to(tl.float32)


@triton.jit
def _window_propagate_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    H,
    W,
    C,
    L,
    N,
    RADIUS,
    inv_t,
    threshold,
    s_qc,
    s_qy,
    s_qx,
    s_kn,
    s_kc,
    s_ky,
    s_kx,
    s_vn,
    s_vl,
    s_vy,
    s_vx,
    s_ol,
    s_oy,
    s_ox,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
    COMPACT: tl.constexpr,
    MP: tl.constexpr,
    STAMP: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One program = one TILE_H x TILE_W tile of query pixels; writes out[:, tile] (L, TILE_H, TILE_W).

    The candidates of the tile are the (TILE_H + 2r) x (TILE_W + 2r) rectangle around it, NOT
    clipped to the image: out-of-image cells load zero features and zero values (logit 0, value 0),
    which is the zero-border semantics. COMPACT == 0: one pass with an online softmax. COMPACT = M:
    pass 1 the joint log-sum-exp over all references; pass 2 per reference the soft window sum,
    a running top-M (visited in window-index order, lower index on ties) and, where its largest
    probability exceeds ``threshold``, the Gaussian stamps replace the soft window sum.
    """
    BLOCK_Q: tl.constexpr = TILE_H * TILE_W
    SS: tl.constexpr = 2 * STAMP + 1
    ty0, tx0, qy, qx, qvalid = query_tile(H, W, TILE_H, TILE_W)
    inv_t = tl.cast(inv_t, tl.float32)
    q_base = pixel_ptrs(q_ptr, qy, qx, s_qy, s_qx)

    offs_k = tl.arange(0, BLOCK_K)
    offs_l = tl.arange(0, BLOCK_L)
    lmask = offs_l < L

    RW = TILE_W + 2 * RADIUS
    RN = (TILE_H + 2 * RADIUS) * RW
    ry0 = ty0 - RADIUS
    rx0 = tx0 - RADIUS

    m_i = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_Q,), tl.float32)
    acc = tl.zeros((BLOCK_Q, BLOCK_L), tl.float32)
    # pass 1 (COMPACT == 0: the only pass, with the values)
    for fr in range(0, N):
        k_frame = k_ptr + tl.cast(fr, tl.int64) * s_kn  # reference fr's channel 0
        for j0 in range(0, RN, BLOCK_K):
            ky, kx, jv, kin, kyc, kxc, k_base = _rect_cells(k_frame, j0 + offs_k, ry0, rx0, RW, RN, H, W, s_ky, s_kx)
            s = tile_scores(q_base, qvalid, k_base, kin, C, s_qc, s_kc, inv_t, BLOCK_C, INPUT_PRECISION, UPCAST)
            s = tl.where(_in_window(qy, qx, qvalid, ky, kx, jv, RADIUS), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            pr = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(pr, 1)
            if COMPACT == 0:
                vb = _value_rows(v_ptr, fr, kyc, kxc, kin, offs_l, lmask, s_vn, s_vl, s_vy, s_vx)
                acc = tl.dot(pr, vb, acc * alpha[:, None], input_precision="tf32x3")
            m_i = m_new

    if COMPACT == 0:
        res = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    else:
        lse = tl.where(qvalid & (l_i > 0), m_i + tl.log(tl.where(l_i > 0, l_i, 1.0)), 0.0)
        slot = tl.arange(0, MP)
        used = (slot < COMPACT)[None, :]
        res = tl.zeros((BLOCK_Q, BLOCK_L), tl.float32)
        for fr in range(0, N):
            k_frame = k_ptr + tl.cast(fr, tl.int64) * s_kn  # reference fr's channel 0
            tv = tl.where(slot < COMPACT, float("-inf"), float("inf"))[None, :] + tl.zeros((BLOCK_Q, MP), tl.float32)
            ti = (-1 - slot)[None, :] + tl.zeros((BLOCK_Q, MP), tl.int32)
            soft = tl.zeros((BLOCK_Q, BLOCK_L), tl.float32)
            for j0 in range(0, RN, BLOCK_K):
                j = j0 + offs_k
                ky, kx, jv, kin, kyc, kxc, k_base = _rect_cells(k_frame, j, ry0, rx0, RW, RN, H, W, s_ky, s_kx)
                s = tile_scores(q_base, qvalid, k_base, kin, C, s_qc, s_kc, inv_t, BLOCK_C, INPUT_PRECISION, UPCAST)
                s = tl.where(_in_window(qy, qx, qvalid, ky, kx, jv, RADIUS), s, float("-inf"))
                pr = tl.exp(s - lse[:, None])
                vb = _value_rows(v_ptr, fr, kyc, kxc, kin, offs_l, lmask, s_vn, s_vl, s_vy, s_vx)
                soft = tl.dot(pr, vb, soft, input_precision="tf32x3")
                cand = j[None, :] + tl.zeros((BLOCK_Q, BLOCK_K), tl.int32)
                tv, ti = merge_topk(s, cand, tv, ti)
            # the reference's decision: largest probability of its slice of the joint softmax
            tp = tl.where(used, tl.exp(tv - lse[:, None]), float("-inf"))
            pmax = tl.max(tp, 1)
            conf = (pmax > threshold) & qvalid
            e = tl.where(used, tl.exp(tp - pmax[:, None]), 0.0)
            wgt = e / tl.sum(e, 1)[:, None]
            stamp = tl.zeros((BLOCK_Q, BLOCK_L), tl.float32)
            for mm in tl.static_range(COMPACT):
                pick = (slot == mm)[None, :]
                w_m = tl.sum(tl.where(pick, wgt, 0.0), 1)
                j_m = tl.sum(tl.where(pick, ti, 0), 1)
                cy = ry0 + j_m // RW
                cx = rx0 + j_m % RW
                for st in range(0, SS * SS):
                    ey = st // SS - STAMP
                    ex = st % SS - STAMP
                    yy = cy + ey
                    xx = cx + ex
                    g = tl.exp2(-4.0 * (ey * ey + ex * ex).to(tl.float32))
                    ok = (
                        conf
                        & (tl.abs(yy - qy) <= RADIUS)
                        & (tl.abs(xx - qx) <= RADIUS)
                        & (yy >= 0)
                        & (yy < H)
                        & (xx >= 0)
                        & (xx < W)
                    )
                    yc = tl.minimum(tl.maximum(yy, 0), H - 1)
                    xc = tl.minimum(tl.maximum(xx, 0), W - 1)
                    vals = _value_rows(v_ptr, fr, yc, xc, ok, offs_l, lmask, s_vn, s_vl, s_vy, s_vx)
                    stamp += (w_m * g)[:, None] * vals
            res += tl.where(conf[:, None], stamp, soft)

    o_off = qy.to(tl.int64) * s_oy + qx.to(tl.int64) * s_ox
    tl.store(o_ptr + o_off[:, None] + offs_l[None, :].to(tl.int64) * s_ol, res, mask=qvalid[:, None] & lmask[None, :])


# (TILE_H, BLOCK_K, num_warps, num_stages) per feature precision (fixed; no autotuning for this mode
# yet), TILE_W = 8. 16-bit features: 8 x 8 = 64 query pixels, the M of a Hopper wgmma; fp32 features:
# 4 x 8 (the 3xTF32 operand splits of a 64-pixel tile need more registers). compile_report(): 0 spills
# on sm_80/sm_90 for M = 0, 2, 3.
_CONFIGS = {"fp32": (4, 32, 8, 2), "16bit": (PROPAGATION_TILE[0], 64, 8, 2)}


def _config(dtype: torch.dtype) -> tuple[int, int, int, int]:
    return _CONFIGS["fp32" if dtype == torch.float32 else "16bit"]


def _block_l(lab: int) -> int:
    return max(16, next_power_of_2(lab))


def launch(query, keys, values, search: WindowSearch, *, wrap=None) -> torch.Tensor:
    """Run the kernel: query (C, h, w), keys (N, C, h, w), values (N, L, h, w) -> (L, h, w) fp32.
    ``wrap`` is ``torch.library.wrap_triton`` inside the op."""
    c, h, w = query.shape
    lab = values.shape[1]
    values = values.float()
    out = alloc_output((lab, h, w), dtype=torch.float32, device=query.device)
    tile_h, bk, nw, ns = _config(query.dtype)
    grid = propagation_grid(h, w, tile_h)
    inv_t = 1.0 / search.temperature
    args = propagation_args(query, keys, values, out, search.radius, inv_t, search.compact_threshold)
    kernel = _window_propagate_kernel
    (wrap(kernel) if wrap else kernel)[grid](
        *args,
        TILE_H=tile_h,
        TILE_W=TILE_W,
        BLOCK_K=bk,
        BLOCK_C=feature_block_c(c, query.dtype),
        BLOCK_L=_block_l(lab),
        COMPACT=search.compact,
        MP=max(2, next_power_of_2(search.compact)),
        STAMP=COMPACT_STAMP,
        INPUT_PRECISION=feature_precision(query.dtype),
        UPCAST=upcast_bf16_dot(query.dtype),
        num_warps=nw,
        num_stages=ns,
    )
    return out


# triton_op infers the schema from the annotations (torch 2.13 does not use its ``schema=``): the
# settings arguments are those of reference.OP_SETTINGS, WindowSearch's fields in order.
@torch.library.triton_op("tritoncorr::window_propagate", mutates_args=())
def _window_propagate_triton_op(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    radius: int,
    temperature: float,
    compact: int,
    compact_threshold: float,
) -> torch.Tensor:
    search = WindowSearch(radius, temperature, compact, compact_threshold)
    return launch(query, keys, values, search, wrap=torch.library.wrap_triton)


def run(query, keys, values, search: WindowSearch) -> torch.Tensor:
    """The Triton path of ``window_propagate`` (inputs checked): CUDA tensors through the ``triton_op``
    (which ``torch.compile`` sees), CPU tensors under the interpreter straight to :func:`launch`."""
    if query.is_cuda:
        return torch.ops.tritoncorr.window_propagate(query, keys, values, *search.op_args())
    return launch(query, keys, values, search)


def aot_specs(fixed_only: bool = False) -> list:
    """LIIR/MAST DAVIS configuration (C = 64, L <= 16 -> BLOCK_L 16): fp32 and bf16 features, the
    compactness prior off (MAST) and with M = 2 (LIIR) and M = 3 (one fixed config each, so
    ``fixed_only`` changes nothing)."""
    specs = []
    for dtype in ("fp32", "bf16"):
        torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
        tile_h, bk, nw, ns = _config(torch_dtype)
        for compact in (0, 2, 3):
            constexprs = dict(
                TILE_H=tile_h,
                TILE_W=TILE_W,
                BLOCK_K=bk,
                BLOCK_C=feature_block_c(64, torch_dtype),
                BLOCK_L=16,
                COMPACT=compact,
                MP=max(2, next_power_of_2(compact)),
                STAMP=COMPACT_STAMP,
                INPUT_PRECISION=feature_precision(torch_dtype),
                UPCAST=False,
            )
            specs.append(
                aot_spec(
                    f"window_propagate[{dtype},M{compact},BK{bk},w{nw},s{ns}]",
                    _window_propagate_kernel,
                    constexprs,
                    {"q_ptr": dtype, "k_ptr": dtype, "v_ptr": "fp32", "o_ptr": "fp32"},
                    floats=("inv_t", "threshold"),
                    num_warps=nw,
                    num_stages=ns,
                )
            )
    return specs

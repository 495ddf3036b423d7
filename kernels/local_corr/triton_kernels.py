"""Triton kernels of the windowed-correlation family, built for tensor cores, and their launchers.

Imported only where a Triton kernel is launched (CUDA tensors, or ``TRITONCORR_BACKEND=triton``
under ``TRITON_INTERPRET=1``) or compiled ahead of time: ``import tritoncorr.kernels`` never imports
triton.

Layout (the idea of NATTEN's fused neighborhood attention and of flash-attention, written for a
square window): one program owns a tile of ``TILE_H x TILE_W`` query pixels of one image
(``BLOCK_M = TILE_H * TILE_W`` rows, 64 by default: one wgmma M-tile on sm_90). All their windows
lie in the ``(TILE_H + 2r) x (TILE_W + 2r)`` rectangle of key pixels around the tile; the program
walks that rectangle, flattened row-major, in blocks of ``BLOCK_N`` key pixels, and does every dot
product with ``tl.dot`` on tiles:

* scores ``S = Q K^T`` (BLOCK_M x BLOCK_N), reduced over the channels in blocks of ``BLOCK_C``;
* the window mask (``0 <= ry - iy <= 2r`` and ``0 <= rx - ix <= 2r`` between a query's place in the
  tile and a key's place in the rectangle) and, for ``border="truncate"``, the image mask are
  applied inside the block; for ``border="zero"`` out-of-image cells keep logit 0 and value 0
  (their loads read zeros), exactly MAST/LIIR's zero-padded sampler;
* attention forward: an online softmax over the blocks (running max and sum in log2 units) and
  ``O += P V``; the natural-log log-sum-exp is stored for the backward;
* attention backward (scores recomputed from q, k and the lse): ``dQ`` in one kernel (per query
  tile: ``dS = P * (dO V^T - delta)``, ``dQ += dS K``), ``dK`` and ``dV`` in another (per key tile,
  over the rectangle of the queries whose windows hold the tile: ``dK += dS^T Q``,
  ``dV += P^T dO``); no atomics, every output element has one owner program. The output channels
  of dQ / dK are split over a third grid axis in blocks of ``BLOCK_CO`` (the scores are then
  recomputed once per block: the price of keeping the accumulator in registers);
* correlation (``local_correlation``): the same scores, scattered to the window index
  ``n = (ry - iy) * P + (rx - ix)``; its backward gathers the incoming gradient into tiles
  (``G``, ``G^T``) and multiplies them with the key / query rectangles. Dilation ``d`` is handled
  by tiling each of the ``d x d`` sub-lattices of pixels separately: a tile of lattice pixels
  ``(y0 + i d, x0 + j d)`` sees the lattice rectangle ``(y0 + (i' - r) d, x0 + (j' - r) d)``.

Precision: bf16 / fp16 inputs go to the tensor cores as they are; fp32 inputs use
``input_precision`` (``"tf32"`` by default, ``"tf32x3"``, or ``"ieee"`` for exact fp32 FMAs);
accumulation is always fp32. Under Triton's interpreter bf16 operands are widened to fp32 first
(``UPCAST``, :func:`tritoncorr.kernels._utils.upcast_bf16_dot`; values unchanged).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._triton_utils import aot_spec, dot_acc
from .._utils import alloc_output, interpreting, next_power_of_2, upcast_bf16_dot
from . import attn_grads, attn_setup, corr_setup

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)

#: Query tile (rows x columns of pixels): 8 x 8 = 64 rows, one wgmma M-tile (the CPU path's tile too).
TILE_H, TILE_W = 8, 8
#: Key pixels per block of the rectangle: forward and correlation kernels / attention backward (which
#: holds four (BLOCK_M, BLOCK_N) fp32 tiles: S, P, dP, dS; half that again with more than 16 value
#: channels, whose dV accumulator takes the registers).
BLOCK_N, BLOCK_N_BWD, BLOCK_N_BWD_WIDE_V = 64, 32, 16
#: Channel block of the score reduction (fp32 / 16-bit inputs), and the output channels (dQ / dK) one
#: program accumulates.
BLOCK_C_FP32, BLOCK_C_16BIT = 32, 64
BLOCK_CO = 64
#: Widest features the attention backward handles with score recomputation per output-channel block;
#: wider ones go through dS / P window volumes (see :func:`launch_attn_bwd`).
FUSED_MAX_C = 2 * BLOCK_CO
#: Warps per program: two warpgroups (the wgmma M-tile of 64 rows, N split over the two); one for
#: narrow features (C <= 32), where ptxas caps 8-warp programs at 128 registers and the backward spilled.
NUM_WARPS, NUM_WARPS_NARROW = 8, 4


# ---------------------------------------------------------------------------------------------
# Shared pieces of the kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _tile(pid, H, W, dil, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Program ``pid``'s tile: origin ``(y0, x0)``, each row's place ``(iy, ix)`` in the tile, its pixel
    ``(y, x)`` and whether that pixel is in the image.

    Programs run over ``dil * dil`` sub-lattices, each cut into ``n_ty x n_tx`` tiles of lattice pixels
    (the count of the largest sub-lattice; tiles past a smaller one's edge hold no pixel); tile place
    ``(iy, ix)`` is pixel ``(y0 + iy * dil, x0 + ix * dil)``."""
    n_ty = tl.cdiv(tl.cdiv(H, dil), TILE_H)
    n_tx = tl.cdiv(tl.cdiv(W, dil), TILE_W)
    phase = pid // (n_tx * n_ty)
    y0 = phase // dil + (pid // n_tx) % n_ty * TILE_H * dil
    x0 = phase % dil + pid % n_tx * TILE_W * dil
    m = tl.arange(0, TILE_H * TILE_W)
    iy = m // TILE_W
    ix = m % TILE_W
    y = y0 + iy * dil
    x = x0 + ix * dil
    return y0, x0, iy, ix, y, x, (y < H) & (x < W)


@triton.jit
def _rect_block(n0, y0, x0, H, W, radius, dil, BLOCK_N: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """One block of the tile's rectangle: place (ry, rx) in it, image pixel (ky, kx), cell exists, in image."""
    RW = TILE_W + 2 * radius
    RN = (TILE_H + 2 * radius) * RW
    n = n0 + tl.arange(0, BLOCK_N)
    ry = n // RW
    rx = n % RW
    ky = y0 + (ry - radius) * dil
    kx = x0 + (rx - radius) * dil
    exists = n < RN
    inside = exists & (ky >= 0) & (ky < H) & (kx >= 0) & (kx < W)
    return ry, rx, ky, kx, exists, inside


@triton.jit
def _window(iy, ix, ry, rx, exists, radius):
    """(BLOCK_M, BLOCK_N) bool: rectangle cell (ry, rx) lies in the window of tile place (iy, ix)."""
    dy = ry[None, :] - iy[:, None]
    dx = rx[None, :] - ix[:, None]
    return (dy >= 0) & (dy <= 2 * radius) & (dx >= 0) & (dx <= 2 * radius) & exists[None, :]


@triton.jit
def _scores(
    A,
    sac,
    a_off,
    a_ok,
    B,
    sbc,
    b_off,
    b_ok,
    C,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """``(BLOCK_M, BLOCK_N)`` fp32 dot products between the pixels ``a_off`` (BLOCK_M,) of map A and
    ``b_off`` (BLOCK_N,) of map B (pixel offsets into one image, channel strides ``sac`` / ``sbc``; masked
    pixels read zeros)."""
    s = tl.zeros([a_off.shape[0], b_off.shape[0]], dtype=tl.float32)
    cs = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        ch = c0 + cs
        c_ok = ch < C
        a = tl.load(A + a_off[:, None] + ch[None, :] * sac, mask=a_ok[:, None] & c_ok[None, :], other=0.0)
        b = tl.load(B + ch[:, None] * sbc + b_off[None, :], mask=c_ok[:, None] & b_ok[None, :], other=0.0)
        s = dot_acc(a, b, s, PRECISION, UPCAST)
    return s


# ---------------------------------------------------------------------------------------------
# Local correlation. Grid: (dil * dil * n_ty * n_tx, B[, cdiv(C, BLOCK_CO)])
# ---------------------------------------------------------------------------------------------


@triton.jit
def _corr_fwd_kernel(
    Q,
    K,
    Out,
    C,
    H,
    W,
    radius,
    dil,
    sqb,
    sqc,
    sqh,
    sqw,
    skb,
    skc,
    skh,
    skw,
    sob,
    son,
    soh,
    sow,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """out[b, n(q, k), q] = <q, k> for every query pixel q of the tile and key k of its window."""
    b = tl.program_id(1).to(tl.int64)
    y0, x0, iy, ix, qy, qx, q_ok = _tile(tl.program_id(0), H, W, dil, TILE_H, TILE_W)
    P = 2 * radius + 1
    RN = (TILE_H + 2 * radius) * (TILE_W + 2 * radius)
    q_pix = qy * sqh + qx * sqw
    for n0 in range(0, RN, BLOCK_N):
        ry, rx, ky, kx, exists, inside = _rect_block(n0, y0, x0, H, W, radius, dil, BLOCK_N, TILE_H, TILE_W)
        k_pix = ky * skh + kx * skw
        s = _scores(Q + b * sqb, sqc, q_pix, q_ok, K + b * skb, skc, k_pix, inside, C, BLOCK_C, PRECISION, UPCAST)
        cell = (ry[None, :] - iy[:, None]) * P + (rx[None, :] - ix[:, None])
        ok = _window(iy, ix, ry, rx, exists, radius) & q_ok[:, None]
        tl.store(Out + b * sob + cell * son + (qy * soh + qx * sow)[:, None], s.to(Out.dtype.element_ty), mask=ok)


@triton.jit
def _corr_bwd_kernel(
    G,
    Src,
    Dst,
    C,
    H,
    W,
    radius,
    dil,
    sgb,
    sgn,
    sgh,
    sgw,
    ssb,
    ssc,
    ssh,
    ssw,
    sdb,
    sdc,
    sdh,
    sdw,
    FOR_KEY: tl.constexpr,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """FOR_KEY=False: dq[tile] = G[tile, rect] @ k[rect] (Src = key). FOR_KEY=True: the tile holds key
    pixels and the rectangle query pixels: dk[tile] = G^T[tile, rect] @ q[rect] (Src = query).

    ``G[i, j]`` is the incoming gradient of the (query i, key j) cell, 0 outside the window."""
    BLOCK_M: tl.constexpr = TILE_H * TILE_W
    b = tl.program_id(1).to(tl.int64)
    y0, x0, iy, ix, ty, tx, t_ok = _tile(tl.program_id(0), H, W, dil, TILE_H, TILE_W)
    co = tl.program_id(2) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < C
    P = 2 * radius + 1
    RN = (TILE_H + 2 * radius) * (TILE_W + 2 * radius)
    acc = tl.zeros([BLOCK_M, BLOCK_CO], dtype=tl.float32)
    for n0 in range(0, RN, BLOCK_N):
        ry, rx, ry_img, rx_img, exists, inside = _rect_block(n0, y0, x0, H, W, radius, dil, BLOCK_N, TILE_H, TILE_W)
        ok = _window(iy, ix, ry, rx, exists, radius) & t_ok[:, None] & inside[None, :]
        if FOR_KEY:  # tile = keys, rectangle = queries: the key sits at offset (iy - ry + r, ix - rx + r) of the query
            cell = (iy[:, None] - ry[None, :] + 2 * radius) * P + (ix[:, None] - rx[None, :] + 2 * radius)
            g_pix = (ry_img * sgh + rx_img * sgw)[None, :]
        else:
            cell = (ry[None, :] - iy[:, None]) * P + (rx[None, :] - ix[:, None])
            g_pix = (ty * sgh + tx * sgw)[:, None]
        g = tl.load(G + b * sgb + cell * sgn + g_pix, mask=ok, other=0.0)
        src = tl.load(
            Src + b * ssb + co[None, :] * ssc + (ry_img * ssh + rx_img * ssw)[:, None],
            mask=inside[:, None] & co_ok[None, :],
            other=0.0,
        )
        acc = dot_acc(g.to(Src.dtype.element_ty), src, acc, PRECISION, UPCAST)
    tl.store(
        Dst + b * sdb + co[None, :] * sdc + (ty * sdh + tx * sdw)[:, None],
        acc.to(Dst.dtype.element_ty),
        mask=t_ok[:, None] & co_ok[None, :],
    )


# ---------------------------------------------------------------------------------------------
# Local attention. Grid: (n_ty * n_tx, B[, cdiv(C, BLOCK_CO)])
# ---------------------------------------------------------------------------------------------


@triton.jit
def _attn_fwd_kernel(
    Q,
    K,
    V,
    Out,
    Lse,
    scale,
    C,
    D,
    H,
    W,
    radius,
    sqb,
    sqc,
    sqh,
    sqw,
    skb,
    skc,
    skh,
    skw,
    svb,
    svc,
    svh,
    svw,
    sob,
    soc,
    soh,
    sow,
    slb,
    slh,
    slw,
    ZERO_BORDER: tl.constexpr,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    BLOCK_M: tl.constexpr = TILE_H * TILE_W
    b = tl.program_id(1).to(tl.int64)
    y0, x0, iy, ix, qy, qx, q_ok = _tile(tl.program_id(0), H, W, 1, TILE_H, TILE_W)
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < D
    scale2 = tl.cast(scale, tl.float32) * LOG2E  # logits in log2 units
    RN = (TILE_H + 2 * radius) * (TILE_W + 2 * radius)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    q_pix = qy * sqh + qx * sqw
    for n0 in range(0, RN, BLOCK_N):
        ry, rx, ky, kx, exists, inside = _rect_block(n0, y0, x0, H, W, radius, 1, BLOCK_N, TILE_H, TILE_W)
        k_pix = ky * skh + kx * skw
        s = _scores(Q + b * sqb, sqc, q_pix, q_ok, K + b * skb, skc, k_pix, inside, C, BLOCK_C, PRECISION, UPCAST)
        ok = _window(iy, ix, ry, rx, exists, radius)
        if not ZERO_BORDER:  # truncated window: out-of-image cells leave the softmax
            ok = ok & inside[None, :]
        s = tl.where(ok, s * scale2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            V + b * svb + dd[None, :] * svc + (ky * svh + kx * svw)[:, None],
            mask=inside[:, None] & d_ok[None, :],
            other=0.0,
        )
        acc = dot_acc(p.to(V.dtype.element_ty), v, acc * alpha[:, None], PRECISION, UPCAST)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(
        Out + b * sob + dd[None, :] * soc + (qy * soh + qx * sow)[:, None],
        out.to(Out.dtype.element_ty),
        mask=q_ok[:, None] & d_ok[None, :],
    )
    tl.store(Lse + b * slb + qy * slh + qx * slw, (m_i + tl.log2(l_safe)) * LN2, mask=q_ok)


@triton.jit
def _attn_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    Lse,
    Delta,
    DQ,
    DS,
    PV,
    scale,
    C,
    D,
    H,
    W,
    radius,
    sqb,
    sqc,
    sqh,
    sqw,
    skb,
    skc,
    skh,
    skw,
    svb,
    svc,
    svh,
    svw,
    sdob,
    sdoc,
    sdoh,
    sdow,
    slb,
    slh,
    slw,
    sdqb,
    sdqc,
    sdqh,
    sdqw,
    svolb,
    svoln,
    svolh,
    svolw,
    ZERO_BORDER: tl.constexpr,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    BLOCK_D: tl.constexpr,
    STORE_VOLUMES: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """dq[i] = scale * sum_j P_ij (dP_ij - delta_i) k_j over the window of query i, for the output
    channels of this program's block (``program_id(2)``).

    STORE_VOLUMES (wide features): instead of dq, write ``dS_ij = scale P_ij (dP_ij - delta_i)`` and
    ``P_ij`` as window volumes ``(B, (2r+1)^2, H, W)`` (DS, PV; DQ unused), computed once; dQ, dK and
    dV are then the correlation backward's products of those volumes (see :func:`launch_attn_bwd`)."""
    BLOCK_M: tl.constexpr = TILE_H * TILE_W
    b = tl.program_id(1).to(tl.int64)
    y0, x0, iy, ix, qy, qx, q_ok = _tile(tl.program_id(0), H, W, 1, TILE_H, TILE_W)
    co = tl.program_id(2) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < C
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < D
    scale_f = tl.cast(scale, tl.float32)
    scale2 = scale_f * LOG2E
    q_pix = qy * sqh + qx * sqw
    lse2 = tl.load(Lse + b * slb + qy * slh + qx * slw, mask=q_ok, other=0.0) * LOG2E
    delta = tl.load(Delta + b * slb + qy * slh + qx * slw, mask=q_ok, other=0.0)
    do = tl.load(
        DO + b * sdob + dd[None, :] * sdoc + (qy * sdoh + qx * sdow)[:, None],
        mask=q_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    RN = (TILE_H + 2 * radius) * (TILE_W + 2 * radius)
    acc = tl.zeros([BLOCK_M, BLOCK_CO], dtype=tl.float32)
    for n0 in range(0, RN, BLOCK_N):
        ry, rx, ky, kx, exists, inside = _rect_block(n0, y0, x0, H, W, radius, 1, BLOCK_N, TILE_H, TILE_W)
        k_pix = ky * skh + kx * skw
        s = _scores(Q + b * sqb, sqc, q_pix, q_ok, K + b * skb, skc, k_pix, inside, C, BLOCK_C, PRECISION, UPCAST)
        ok = _window(iy, ix, ry, rx, exists, radius) & q_ok[:, None]
        if not ZERO_BORDER:
            ok = ok & inside[None, :]
        p = tl.where(ok, tl.exp2(s * scale2 - lse2[:, None]), 0.0)
        vt = tl.load(
            V + b * svb + dd[:, None] * svc + (ky * svh + kx * svw)[None, :],
            mask=d_ok[:, None] & inside[None, :],
            other=0.0,
        )
        dp = dot_acc(do, vt, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), PRECISION, UPCAST)
        ds = p * (dp - delta[:, None]) * scale_f
        if STORE_VOLUMES:
            P = 2 * radius + 1
            vol = (
                svolb * b
                + ((ry[None, :] - iy[:, None]) * P + (rx[None, :] - ix[:, None])) * svoln
                + (qy * svolh + qx * svolw)[:, None]
            )
            in_window = _window(iy, ix, ry, rx, exists, radius) & q_ok[:, None]
            tl.store(DS + vol, ds.to(DS.dtype.element_ty), mask=in_window)
            tl.store(PV + vol, p.to(PV.dtype.element_ty), mask=in_window)
        else:
            kb = tl.load(
                K + b * skb + co[None, :] * skc + k_pix[:, None], mask=inside[:, None] & co_ok[None, :], other=0.0
            )
            acc = dot_acc(ds.to(K.dtype.element_ty), kb, acc, PRECISION, UPCAST)
    if not STORE_VOLUMES:
        tl.store(
            DQ + b * sdqb + co[None, :] * sdqc + (qy * sdqh + qx * sdqw)[:, None],
            acc.to(DQ.dtype.element_ty),
            mask=q_ok[:, None] & co_ok[None, :],
        )


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    Lse,
    Delta,
    DK,
    DV,
    scale,
    C,
    D,
    H,
    W,
    radius,
    sqb,
    sqc,
    sqh,
    sqw,
    skb,
    skc,
    skh,
    skw,
    svb,
    svc,
    svh,
    svw,
    sdob,
    sdoc,
    sdoh,
    sdow,
    slb,
    slh,
    slw,
    sdkb,
    sdkc,
    sdkh,
    sdkw,
    sdvb,
    sdvc,
    sdvh,
    sdvw,
    ZERO_BORDER: tl.constexpr,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """For key pixel j of the tile: dk[j] = scale * sum_i P_ij (dP_ij - delta_i) q_i and
    dv[j] = sum_i P_ij dO_i over the queries i of the rectangle whose window holds j. dK for this
    program's output-channel block; dV written by the programs of block 0 only."""
    BLOCK_M: tl.constexpr = TILE_H * TILE_W
    b = tl.program_id(1).to(tl.int64)
    y0, x0, iy, ix, ky, kx, k_ok = _tile(tl.program_id(0), H, W, 1, TILE_H, TILE_W)
    pid_c = tl.program_id(2)
    co = pid_c * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < C
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < D
    scale_f = tl.cast(scale, tl.float32)
    scale2 = scale_f * LOG2E
    k_pix = ky * skh + kx * skw
    v = tl.load(
        V + b * svb + dd[None, :] * svc + (ky * svh + kx * svw)[:, None], mask=k_ok[:, None] & d_ok[None, :], other=0.0
    )
    RN = (TILE_H + 2 * radius) * (TILE_W + 2 * radius)
    acc_k = tl.zeros([BLOCK_M, BLOCK_CO], dtype=tl.float32)
    acc_v = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for n0 in range(0, RN, BLOCK_N):
        # the rectangle holds query pixels here; key (iy, ix) is in the window of query (ry, rx)
        # exactly when query (ry, rx) would be in the window of (iy, ix): the same mask
        ry, rx, qy, qx, exists, q_in = _rect_block(n0, y0, x0, H, W, radius, 1, BLOCK_N, TILE_H, TILE_W)
        q_pix = qy * sqh + qx * sqw
        st = _scores(K + b * skb, skc, k_pix, k_ok, Q + b * sqb, sqc, q_pix, q_in, C, BLOCK_C, PRECISION, UPCAST)
        lse2 = tl.load(Lse + b * slb + qy * slh + qx * slw, mask=q_in, other=0.0) * LOG2E
        delta = tl.load(Delta + b * slb + qy * slh + qx * slw, mask=q_in, other=0.0)
        ok = _window(iy, ix, ry, rx, exists, radius) & q_in[None, :] & k_ok[:, None]
        pt = tl.where(ok, tl.exp2(st * scale2 - lse2[None, :]), 0.0)
        do = tl.load(
            DO + b * sdob + dd[None, :] * sdoc + (qy * sdoh + qx * sdow)[:, None],
            mask=q_in[:, None] & d_ok[None, :],
            other=0.0,
        )  # (BLOCK_N, BLOCK_D)
        dpt = dot_acc(v, tl.trans(do), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), PRECISION, UPCAST)
        dst = pt * (dpt - delta[None, :]) * scale_f
        qb = tl.load(Q + b * sqb + co[None, :] * sqc + q_pix[:, None], mask=q_in[:, None] & co_ok[None, :], other=0.0)
        acc_k = dot_acc(dst.to(Q.dtype.element_ty), qb, acc_k, PRECISION, UPCAST)
        acc_v = dot_acc(pt.to(DO.dtype.element_ty), do, acc_v, PRECISION, UPCAST)
    tl.store(
        DK + b * sdkb + co[None, :] * sdkc + (ky * sdkh + kx * sdkw)[:, None],
        acc_k.to(DK.dtype.element_ty),
        mask=k_ok[:, None] & co_ok[None, :],
    )
    if pid_c == 0:
        tl.store(
            DV + b * sdvb + dd[None, :] * sdvc + (ky * sdvh + kx * sdvw)[:, None],
            acc_v.to(DV.dtype.element_ty),
            mask=k_ok[:, None] & d_ok[None, :],
        )


# ---------------------------------------------------------------------------------------------
# Launch configuration (every decision made here, in Python)
# ---------------------------------------------------------------------------------------------


def launch_config(C: int, D: int, dtype: torch.dtype, *, interpret: bool | None = None) -> dict:
    """Tile, block sizes and warps for C feature channels and D value channels of ``dtype``.

    ``BLOCK_C`` is the channel block of the score reduction, ``BLOCK_CO`` the output-channel block of
    dQ / dK (a third grid axis), ``BLOCK_D`` the value channels (``tl.dot`` needs >= 16 on every side),
    ``BLOCK_N`` / ``BLOCK_N_BWD`` the key block of the forward / correlation kernels and of the
    attention backward. Chosen from the AOT report (``tritoncorr bench --aot``): 0 spills on sm_80 and
    sm_90 at every configuration of :data:`AOT_SHAPES`, with wgmma on sm_90 and mma.sync on sm_80.
    """
    interpret = interpreting() if interpret is None else interpret
    cap = BLOCK_C_FP32 if dtype == torch.float32 else BLOCK_C_16BIT
    block_d = max(16, next_power_of_2(max(D, 1)))
    return {
        "TILE_H": TILE_H,
        "TILE_W": TILE_W,
        "BLOCK_N": BLOCK_N,
        "BLOCK_N_BWD": BLOCK_N_BWD if block_d <= 16 else BLOCK_N_BWD_WIDE_V,
        "BLOCK_C": max(16, min(cap, next_power_of_2(C))),
        "BLOCK_CO": max(16, min(BLOCK_CO, next_power_of_2(C))),
        "BLOCK_D": block_d,
        "UPCAST": interpret and upcast_bf16_dot(dtype),
        "num_warps": NUM_WARPS_NARROW if C <= 32 else NUM_WARPS,
        "num_stages": 1 if interpret else 2,
    }


def _grid_tiles(H: int, W: int, dil: int = 1) -> int:
    """Programs along grid axis 0: ``dil * dil`` sub-lattices x the tiles of the largest one."""
    return dil * dil * triton.cdiv(triton.cdiv(H, dil), TILE_H) * triton.cdiv(triton.cdiv(W, dil), TILE_W)


def _s(t: torch.Tensor) -> list[int]:
    return list(t.stride())


_INT32_MAX = 2**31 - 1


def _check_offsets(*tensors: torch.Tensor) -> None:
    """Kernels index inside one image (dims 1..) with 32-bit offsets and across the batch with 64-bit ones."""
    for t in tensors:
        span = sum((n - 1) * abs(st) for n, st in zip(t.shape[1:], t.stride()[1:]) if n > 0)
        if span > _INT32_MAX:
            raise ValueError(
                f"one image of a tensor of shape {tuple(t.shape)} spans {span} elements; the Triton kernels need "
                "< 2^31 per image (split the channels or the image)"
            )


def _meta(cfg: dict, *names: str) -> dict:
    return {n: cfg[n] for n in names}


def launch_corr_fwd(query, key, radius: int, dilation: int, precision: str):
    B, C, H, W = query.shape
    P = 2 * radius + 1
    out = alloc_output((B, P * P, H, W), dtype=query.dtype, device=query.device)
    if out.numel() == 0 or C == 0:
        return out.zero_()
    _check_offsets(query, key, out)
    cfg = launch_config(C, 1, query.dtype)
    wrap_triton(_corr_fwd_kernel)[(_grid_tiles(H, W, dilation), B)](
        query,
        key,
        out,
        C,
        H,
        W,
        radius,
        dilation,
        *_s(query),
        *_s(key),
        *_s(out),
        PRECISION=precision,
        **_meta(cfg, "TILE_H", "TILE_W", "BLOCK_N", "BLOCK_C", "UPCAST", "num_warps", "num_stages"),
    )
    return out


def launch_corr_bwd(grad, query, key, radius: int, dilation: int, precision: str):
    B, C, H, W = query.shape
    dq = alloc_output((B, C, H, W), dtype=query.dtype, device=query.device)
    dk = alloc_output((B, C, H, W), dtype=key.dtype, device=key.device)
    if dq.numel() == 0:
        return dq.zero_(), dk.zero_()
    _check_offsets(grad, query, key)
    cfg = launch_config(C, 1, query.dtype)
    grid = (_grid_tiles(H, W, dilation), B, triton.cdiv(C, cfg["BLOCK_CO"]))
    for src, dst, for_key in ((key, dq, False), (query, dk, True)):
        wrap_triton(_corr_bwd_kernel)[grid](
            grad,
            src,
            dst,
            C,
            H,
            W,
            radius,
            dilation,
            *_s(grad),
            *_s(src),
            *_s(dst),
            FOR_KEY=for_key,
            PRECISION=precision,
            **_meta(cfg, "TILE_H", "TILE_W", "BLOCK_N", "BLOCK_CO", "UPCAST", "num_warps", "num_stages"),
        )
    return dq, dk


def launch_attn_fwd(query, key, value, radius: int, scale: float, border: str, precision: str):
    B, C, H, W = query.shape
    D = value.shape[1]
    out = alloc_output((B, D, H, W), dtype=value.dtype, device=value.device)
    lse = alloc_output((B, H, W), dtype=torch.float32, device=value.device)
    if lse.numel() == 0:
        return out.zero_(), lse.zero_()
    _check_offsets(query, key, value)
    cfg = launch_config(C, D, query.dtype)
    wrap_triton(_attn_fwd_kernel)[(_grid_tiles(H, W), B)](
        query,
        key,
        value,
        out,
        lse,
        float(scale),
        C,
        D,
        H,
        W,
        radius,
        *_s(query),
        *_s(key),
        *_s(value),
        *_s(out),
        *_s(lse),
        ZERO_BORDER=border == "zero",
        PRECISION=precision,
        **_meta(cfg, "TILE_H", "TILE_W", "BLOCK_N", "BLOCK_C", "BLOCK_D", "UPCAST", "num_warps", "num_stages"),
    )
    return out, lse


def launch_attn_bwd(query, key, value, out, lse, dout, dlse, radius: int, scale: float, border: str, precision: str):
    """Two ways, by feature width (the choice is the one :mod:`tritoncorr.bench.model` measures on paper):

    * ``C <= FUSED_MAX_C``: dQ and dK/dV kernels that recompute the scores from q, k and the lse, one
      program per tile and output-channel block (at most 2 blocks: the scores are recomputed per block);
    * wider features (STT: C 512, 1024): one kernel recomputes the scores once per tile and writes
      ``dS`` and ``P`` as window volumes ``(B, (2r+1)^2, H, W)`` in the input dtype, then
      ``dQ = dS K``, ``dK = dS^T Q`` and ``dV = P^T dO`` are the correlation backward's tile GEMMs
      (no score recomputation; the volumes cost ``2 (2r+1)^2`` values per pixel, still far less than
      the unfolded ``C (2r+1)^2`` of the reference).
    """
    B, C, H, W = query.shape
    D = value.shape[1]
    if B * H * W == 0:
        return torch.zeros_like(query), torch.zeros_like(key), torch.zeros_like(value)
    _check_offsets(query, key, value, dout)
    cfg = launch_config(C, D, query.dtype)
    delta = ((dout.float() * out.float()).sum(1) - dlse.float()).contiguous()
    lse = lse.float().contiguous()
    dq = alloc_output((B, C, H, W), dtype=query.dtype, device=query.device)
    dk = alloc_output((B, C, H, W), dtype=key.dtype, device=key.device)
    dv = alloc_output((B, D, H, W), dtype=value.dtype, device=value.device)
    volumes = C > FUSED_MAX_C
    P = 2 * radius + 1
    ds = alloc_output((B, P * P, H, W), dtype=query.dtype, device=query.device) if volumes else dq
    pv = alloc_output((B, P * P, H, W), dtype=query.dtype, device=query.device) if volumes else dq
    grid = (_grid_tiles(H, W), B, 1 if volumes else triton.cdiv(C, cfg["BLOCK_CO"]))
    meta = dict(
        ZERO_BORDER=border == "zero",
        PRECISION=precision,
        BLOCK_N=cfg["BLOCK_N_BWD"],
        **_meta(cfg, "TILE_H", "TILE_W", "BLOCK_C", "BLOCK_CO", "BLOCK_D", "UPCAST", "num_warps", "num_stages"),
    )
    # the arguments both backward kernels take first: inputs, sizes, input strides (Delta shares Lse's)
    inputs = (query, key, value, dout, lse, delta)
    sizes = (float(scale), C, D, H, W, radius)
    in_strides = (*_s(query), *_s(key), *_s(value), *_s(dout), *_s(lse))
    wrap_triton(_attn_bwd_dq_kernel)[grid](
        *inputs, dq, ds, pv, *sizes, *in_strides, *_s(dq), *_s(ds), STORE_VOLUMES=volumes, **meta
    )
    if volumes:
        corr_meta = dict(
            PRECISION=precision, **_meta(cfg, "TILE_H", "TILE_W", "BLOCK_N", "UPCAST", "num_warps", "num_stages")
        )
        for vol, src, dst, for_key in ((ds, key, dq, False), (ds, query, dk, True), (pv, dout, dv, True)):
            channels = src.shape[1]
            block_co = launch_config(channels, 1, query.dtype)["BLOCK_CO"]
            wrap_triton(_corr_bwd_kernel)[(_grid_tiles(H, W), B, triton.cdiv(channels, block_co))](
                vol,
                src,
                dst,
                channels,
                H,
                W,
                radius,
                1,
                *_s(vol),
                *_s(src),
                *_s(dst),
                FOR_KEY=for_key,
                BLOCK_CO=block_co,
                **corr_meta,
            )
        return dq, dk, dv
    wrap_triton(_attn_bwd_dkdv_kernel)[grid](*inputs, dk, dv, *sizes, *in_strides, *_s(dk), *_s(dv), **meta)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------
# The triton_op ops (registered when this module is first imported) and their autograd
# ---------------------------------------------------------------------------------------------


@triton_op("tritoncorr::local_correlation_triton", mutates_args=())
def _corr_op(query: torch.Tensor, key: torch.Tensor, radius: int, dilation: int, precision: str) -> torch.Tensor:
    return launch_corr_fwd(query, key, radius, dilation, precision)


@triton_op("tritoncorr::local_correlation_triton_bwd", mutates_args=())
def _corr_bwd_op(
    grad: torch.Tensor, query: torch.Tensor, key: torch.Tensor, radius: int, dilation: int, precision: str
) -> tuple[torch.Tensor, torch.Tensor]:
    return launch_corr_bwd(grad, query, key, radius, dilation, precision)


@triton_op("tritoncorr::local_attention_triton", mutates_args=())
def _attn_op(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, radius: int, scale: float, border: str, precision: str
) -> tuple[torch.Tensor, torch.Tensor]:
    return launch_attn_fwd(query, key, value, radius, scale, border, precision)


@triton_op("tritoncorr::local_attention_triton_bwd", mutates_args=())
def _attn_bwd_op(
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
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return launch_attn_bwd(query, key, value, out, lse, dout, dlse, radius, scale, border, precision)


def _corr_backward(ctx, grad):
    query, key = ctx.saved_tensors
    dq, dk = _corr_bwd_op(grad.contiguous(), query, key, ctx.radius, ctx.dilation, ctx.precision)
    return dq, dk, None, None, None


def _attn_backward(ctx, dout, dlse):
    dq, dk, dv = _attn_bwd_op(*attn_grads(ctx, dout, dlse), ctx.radius, ctx.scale, ctx.border, ctx.precision)
    return dq, dk, dv, None, None, None, None


_corr_op.register_autograd(_corr_backward, setup_context=corr_setup)
_attn_op.register_autograd(_attn_backward, setup_context=attn_setup)
#: The forward ops the public functions call (``local_correlation`` / ``local_attention`` on CUDA).
corr_op, attn_op = _corr_op, _attn_op


# ---------------------------------------------------------------------------------------------
# Ahead-of-time compile specs: every kernel in the configurations the launchers use
# ---------------------------------------------------------------------------------------------

#: (label, C, D): the distinct launch configurations. Every C >= 64 launches the same blocks (MAST/LIIR
#: C 64, STT C 128-1024), every D <= 16 the same value block (the papers reconstruct 1-3 channels), and
#: C > FUSED_MAX_C (STT's R50 C 512 / 1024) the volume backward; C 16 (small test shapes) and D 64 (the
#: most value channels) are the others.
AOT_SHAPES = (("c16_d1", 16, 1), ("c64_d3", 64, 3), ("c64_d64", 64, 64), ("c512_d1", 512, 1))


def aot_specs() -> list:
    """Every kernel x (fp32 through tf32, bf16) x :data:`AOT_SHAPES` (+ both borders for attention)."""
    specs = []
    corr_channels = sorted({C for _, C, _ in AOT_SHAPES})  # correlation has no value: one spec per C
    for dtype, tp in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        for label, C, D in AOT_SHAPES:
            cfg = launch_config(C, D, dtype, interpret=False)
            opts = dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
            const = dict(
                PRECISION="tf32", UPCAST=False, TILE_H=cfg["TILE_H"], TILE_W=cfg["TILE_W"], BLOCK_N=cfg["BLOCK_N"]
            )
            if C in corr_channels and D == min(d for _, c, d in AOT_SHAPES if c == C):
                pointers = dict.fromkeys(("Q", "K", "Out"), tp)
                specs.append(
                    aot_spec(
                        f"corr_fwd_{tp}_c{C}", _corr_fwd_kernel, dict(const, BLOCK_C=cfg["BLOCK_C"]), pointers, **opts
                    )
                )
                for for_key in (False, True):
                    c = dict(const, FOR_KEY=for_key, BLOCK_CO=cfg["BLOCK_CO"])
                    specs.append(
                        aot_spec(
                            f"corr_bwd_{'dk' if for_key else 'dq'}_{tp}_c{C}",
                            _corr_bwd_kernel,
                            c,
                            dict.fromkeys(("G", "Src", "Dst"), tp),
                            **opts,
                        )
                    )
            volumes = C > FUSED_MAX_C
            for zero in (False, True):
                border = "zero" if zero else "trunc"
                c = dict(const, ZERO_BORDER=zero, BLOCK_C=cfg["BLOCK_C"], BLOCK_D=cfg["BLOCK_D"])
                specs.append(
                    aot_spec(
                        f"attn_fwd_{border}_{tp}_{label}",
                        _attn_fwd_kernel,
                        c,
                        {**dict.fromkeys(("Q", "K", "V", "Out"), tp), "Lse": "fp32"},
                        floats=("scale",),
                        **opts,
                    )
                )
                c = dict(c, BLOCK_CO=cfg["BLOCK_CO"], BLOCK_N=cfg["BLOCK_N_BWD"])
                pointers = {
                    **dict.fromkeys(("Q", "K", "V", "DO", "DQ", "DS", "PV", "DK", "DV"), tp),
                    "Lse": "fp32",
                    "Delta": "fp32",
                }
                specs.append(
                    aot_spec(
                        f"attn_bwd_{'volumes' if volumes else 'dq'}_{border}_{tp}_{label}",
                        _attn_bwd_dq_kernel,
                        dict(c, STORE_VOLUMES=volumes),
                        pointers,
                        floats=("scale",),
                        **opts,
                    )
                )
                if not volumes:  # wide features take dQ, dK, dV from the correlation backward (specs above)
                    specs.append(
                        aot_spec(
                            f"attn_bwd_dkdv_{border}_{tp}_{label}",
                            _attn_bwd_dkdv_kernel,
                            c,
                            pointers,
                            floats=("scale",),
                            **opts,
                        )
                    )
    return specs

"""Windowed (local) correlation and fused local attention: Triton kernels, PyTorch paths, references, ops.

Two public functions, both differentiable (query, key and, for attention, value):

``local_correlation(query, key, radius, *, dilation=1)``
    query, key ``(B, C, H, W)`` -> ``(B, P*P, H, W)`` with ``P = 2*radius + 1``::

        out[b, (dy+r)*P + (dx+r), y, x] = <query[b, :, y, x], key[b, :, y + dy*dil, x + dx*dil]>

    and 0 where ``(y + dy*dil, x + dx*dil)`` lies outside the image: exactly
    ``spatial_correlation_sampler`` with kernel size 1, patch size ``P``, ``dilation_patch=dil``
    (LIIR spec section 4.1; the window index runs over dy outer, dx inner, like ``F.unfold``).

``local_attention(query, key, value, radius, *, scale=1.0, border="truncate", return_lse=False)``
    query, key ``(B, C, H, W)``, value ``(B, D, H, W)`` -> out ``(B, D, H, W)``::

        out[b, :, i] = sum_{j in window(i)} softmax_j(scale * <q_i, k_j>) v_j

    ``border="truncate"``: out-of-image window cells take no part in the softmax (STT, spec 3.6).
    ``border="zero"``: they take part with logit 0 and value 0 (MAST/LIIR zero-padded sampler +
    ``unfold``, LIIR spec 4.1). ``return_lse=True`` also returns the per-pixel natural-log
    log-sum-exp of the scaled logits over the window, ``(B, H, W)`` float32 (it is differentiable).

Dtypes: float32, float16, bfloat16 (and float64 on the PyTorch path). Accumulation is float32
(float64 for float64 inputs); outputs and gradients have the input dtype, the lse is float32
(float64 for float64 inputs).

Paths (ARCHITECTURE.md op pattern): CUDA tensors -> ``torch.library.triton_op`` ops launching the
Triton kernels through ``wrap_triton``; CPU tensors (or ``TRITONCORR_BACKEND=torch``) -> opaque
``torch.library.custom_op`` ops whose implementation is the memory-bounded PyTorch path below;
under ``TRITONCORR_BACKEND=triton`` with CPU tensors the Triton ops run eagerly in Triton's
interpreter (tests).

The PyTorch path of local attention works on tiles: the queries of a ``T x T`` tile share the
``(T + 2r) x (T + 2r)`` rectangle that holds all their windows, so one batched GEMM gives their logits
against the rectangle, the cells outside each query's window (and, for ``"truncate"``, outside the
image) are masked, and the softmax, the value GEMM and, in the backward, ``dS``, ``dQ = dS K``,
``dK = Q^T dS``, ``dV = dO^T P`` are GEMMs on the same tiles. Tiles are taken in chunks of a few
tiles of one row of one image, sized so that a chunk's working set stays within
:data:`ATTN_CHUNK_BYTES`; the rectangles are read from the unpadded maps with zeros outside the
image (exactly the ``"zero"`` border without masking), so no padded copy of a whole map and no
``(2r+1)^2`` volume is ever held: peak memory is the outputs plus one chunk. (``local_correlation``'s
PyTorch path loops over window offsets: its output is the volume.) The backward of local attention
recomputes the scores from q, k and the saved lse (flash-attention style: ``delta_i = <dO_i, O_i>``,
``dS = P * (dP - delta)``).

Triton kernel layout: one program per (batch, block of ``BLOCK_P`` consecutive pixels of the
flattened ``H*W`` image); it loops over the window offsets (dy outer, dx inner) and over channels in blocks of ``BLOCK_C``. When
all channels fit in one block (``SINGLE_C``), the program's own feature tile and its gradient stay in
registers; otherwise attention backward accumulates the channel gradient in a float32 scratch buffer
that only this program touches (read-modify-write, no atomics). Backward passes are gathers: the
gradient of key pixel ``j`` sums over the queries ``i = j - offset`` whose window holds ``j``.

The references ``local_correlation_reference`` / ``local_attention_reference`` (``F.unfold``-based,
they materialise the whole volume) are the definition of correctness; use them on small inputs only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._tiles import (add_chunk_regions, attention_tile, block_geometry, chunk_queries, chunk_regions,
                     chunk_regions_in_image, window_in_region)
from ._utils import FLOAT_DTYPES, alloc_output, check_tensor, interpreting, next_power_of_2, use_triton

__all__ = [
    "local_correlation",
    "local_attention",
    "local_correlation_reference",
    "local_attention_reference",
    "launch_config",
    "AOT_SPECS",
    "MAX_RADIUS",
    "MAX_VALUE_CHANNELS_TRITON",
    "MAX_BLOCK_C",
]

MAX_RADIUS = 32
MAX_VALUE_CHANNELS_TRITON = 64
BORDERS = ("truncate", "zero")
_LOG2E = 1.4426950408889634
_CPU_DTYPES = FLOAT_DTYPES + (torch.float64,)


# ---------------------------------------------------------------------------------------------
# References (definition of correctness; materialise the (2r+1)^2 volume through F.unfold)
# ---------------------------------------------------------------------------------------------


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def local_correlation_reference(query: torch.Tensor, key: torch.Tensor, radius: int, *, dilation: int = 1) -> torch.Tensor:
    """``(B, C, H, W), (B, C, H, W) -> (B, (2r+1)^2, H, W)`` via ``F.unfold`` with zero padding.

    Computed in float32 (float64 for float64 inputs); returned in that accumulation dtype.
    """
    B, C, H, W = query.shape
    P = 2 * radius + 1
    acc = _acc_dtype(query.dtype)
    cols = F.unfold(key.to(acc), kernel_size=P, dilation=dilation, padding=radius * dilation)  # (B, C*P*P, H*W)
    cols = cols.view(B, C, P * P, H, W)
    return (query.to(acc).unsqueeze(2) * cols).sum(1)


def _window_valid(H: int, W: int, radius: int, dilation: int, device) -> torch.Tensor:
    """``(P*P, H, W)`` bool: True where the window cell lies inside the image."""
    P = 2 * radius + 1
    ones = torch.ones(1, 1, H, W, device=device)
    cols = F.unfold(ones, kernel_size=P, dilation=dilation, padding=radius * dilation)
    return cols.view(P * P, H, W) > 0.5


def local_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    radius: int,
    *,
    scale: float = 1.0,
    border: str = "truncate",
    return_lse: bool = False,
):
    """Volume + softmax + ``unfold`` aggregation. Returns out ``(B, D, H, W)`` (and lse ``(B, H, W)``).

    Computed and returned in float32 (float64 for float64 inputs).
    """
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    B, C, H, W = query.shape
    D = value.shape[1]
    P = 2 * radius + 1
    acc = _acc_dtype(query.dtype)
    logits = local_correlation_reference(query, key, radius) * scale  # (B, P*P, H, W)
    if border == "truncate":
        valid = _window_valid(H, W, radius, 1, query.device)
        logits = logits.masked_fill(~valid.unsqueeze(0), float("-inf"))
    lse = torch.logsumexp(logits, dim=1)
    prob = torch.exp(logits - lse.unsqueeze(1))
    vcols = F.unfold(value.to(acc), kernel_size=P, padding=radius).view(B, D, P * P, H, W)
    out = (prob.unsqueeze(1) * vcols).sum(2)
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------------------------------------
# PyTorch path (CPU op implementation): loop over offsets, never the whole volume
# ---------------------------------------------------------------------------------------------


def _offsets(radius: int, dilation: int):
    """(n, dy, dx) for every window cell, n = (dy/dil + r) * P + (dx/dil + r)."""
    P = 2 * radius + 1
    for a in range(P):
        for c in range(P):
            yield a * P + c, (a - radius) * dilation, (c - radius) * dilation


def _shifted(xpad: torch.Tensor, pad: int, dy: int, dx: int, H: int, W: int) -> torch.Tensor:
    """View of the zero-padded map at ``(y + dy, x + dx)`` for every ``(y, x)`` of the image."""
    return xpad[:, :, pad + dy : pad + dy + H, pad + dx : pad + dx + W]


def _torch_corr_fwd(query, key, radius, dilation):
    B, C, H, W = query.shape
    P = 2 * radius + 1
    acc = _acc_dtype(query.dtype)
    q = query.to(acc)
    pad = radius * dilation
    kpad = F.pad(key.to(acc), (pad, pad, pad, pad))
    out = torch.empty((B, P * P, H, W), dtype=acc, device=query.device)
    for n, dy, dx in _offsets(radius, dilation):
        out[:, n] = (q * _shifted(kpad, pad, dy, dx, H, W)).sum(1)
    return out.to(query.dtype)


def _torch_corr_bwd(grad, query, key, radius, dilation):
    B, C, H, W = query.shape
    acc = _acc_dtype(query.dtype)
    q = query.to(acc)
    g = grad.to(acc)
    pad = radius * dilation
    kpad = F.pad(key.to(acc), (pad, pad, pad, pad))
    dq = torch.zeros((B, C, H, W), dtype=acc, device=query.device)
    dkpad = torch.zeros_like(kpad)
    for n, dy, dx in _offsets(radius, dilation):
        gn = g[:, n].unsqueeze(1)
        dq += gn * _shifted(kpad, pad, dy, dx, H, W)
        _shifted(dkpad, pad, dy, dx, H, W).add_(gn * q)
    dk = dkpad[:, :, pad : pad + H, pad : pad + W].contiguous()  # a fresh tensor, not a view of the padding
    return dq.to(query.dtype), dk.to(key.dtype)


#: Working-set budget of one chunk of tiles of the PyTorch local-attention path (scores and their
#: temporaries, the chunk's rectangles and their gradients); a chunk holds at least one tile.
ATTN_CHUNK_BYTES = 8 * 2**20


def _attn_chunk_tiles(T: int, R: int, C: int, D: int, nbx: int, elt: int, backward: bool) -> int:
    """Tiles per chunk so that one chunk's working set stays within :data:`ATTN_CHUNK_BYTES`."""
    if backward:  # s/p, dp/ds; q, dO, dQ; k (or dK), v, dV rectangles (+ the band copies)
        per_tile = 2 * T * T * R * R + T * T * (2 * C + D) + 2 * (C + D) * R * R
    else:  # s/p; q; k, v rectangles (+ the band copies)
        per_tile = T * T * R * R + T * T * C + 2 * (C + D) * R * R
    return max(1, min(nbx, ATTN_CHUNK_BYTES // (per_tile * elt)))


def _attn_mask(win, border, H, W, y0, x0, T, radius, n, device):
    if border == "truncate":
        return win & chunk_regions_in_image(H, W, y0, x0, T, radius, n, device)
    return win


def _write_tiles(dst, blk, b, y0, x0, T, n):
    """Write tile results blk (n, T*T, X) into dst (B, X, H, W) at rows y0.., columns x0.. (cropped)."""
    X, H, W = dst.shape[1:]
    y1, x1 = min(y0 + T, H), min(x0 + n * T, W)
    img = blk.reshape(n, T, T, X).permute(3, 1, 0, 2).reshape(X, T, n * T)
    dst[b, :, y0:y1, x0:x1] = img[:, :y1 - y0, :x1 - x0]


def _torch_attn_fwd(query, key, value, radius, scale, border, tile=None):
    """Tiled forward: chunks of tiles of one row of one image at a time (see the module docstring)."""
    B, C, H, W = query.shape
    D = value.shape[1]
    acc = _acc_dtype(query.dtype)
    T, R, _, nbx = block_geometry(H, W, radius, tile or attention_tile(radius))
    n_chunk = _attn_chunk_tiles(T, R, C, D, nbx, torch.tensor([], dtype=acc).element_size(), backward=False)
    win = window_in_region(T, R, radius, query.device)                   # (T2, R2)
    out = torch.empty((B, D, H, W), dtype=value.dtype, device=query.device)
    lse = torch.empty((B, 1, H, W), dtype=acc, device=query.device)
    for b in range(B):
        for y0 in range(0, H, T):
            for j0 in range(0, nbx, n_chunk):
                n, x0 = min(n_chunk, nbx - j0), j0 * T
                q = chunk_queries(query, b, y0, x0, T, n, acc)               # (n, T2, C)
                k = chunk_regions(key, b, y0, x0, T, radius, n, acc)         # (n, C, R2)
                s = torch.matmul(q, k).mul_(scale)                           # (n, T2, R2)
                del q, k
                s.masked_fill_(~_attn_mask(win, border, H, W, y0, x0, T, radius, n, query.device), float("-inf"))
                l = torch.logsumexp(s, dim=-1, keepdim=True)                 # (n, T2, 1)
                p = s.sub_(l).exp_()
                v = chunk_regions(value, b, y0, x0, T, radius, n, acc)       # (n, D, R2)
                o = torch.matmul(p, v.transpose(-1, -2))                     # (n, T2, D)
                del p, v
                _write_tiles(out, o, b, y0, x0, T, n)
                _write_tiles(lse, l, b, y0, x0, T, n)
    return out, lse[:, 0]


def _torch_attn_bwd(query, key, value, out, lse, dout, dlse, radius, scale, border, tile=None):
    """Tiled backward (flash-attention style, scores recomputed from q, k and the saved lse):
    ``delta_i = <dO_i, O_i> - dlse_i``, ``dS = P * (dP - delta) * scale``."""
    B, C, H, W = query.shape
    D = value.shape[1]
    acc = _acc_dtype(query.dtype)
    T, R, _, nbx = block_geometry(H, W, radius, tile or attention_tile(radius))
    n_chunk = _attn_chunk_tiles(T, R, C, D, nbx, torch.tensor([], dtype=acc).element_size(), backward=True)
    win = window_in_region(T, R, radius, query.device)
    # per-pixel scalars as (B, 1, H, W) maps, read per chunk like the features
    lse_map = lse.to(acc).unsqueeze(1)
    delta = ((dout.to(acc) * out.to(acc)).sum(1) - dlse.to(acc)).unsqueeze(1)
    dq = torch.empty((B, C, H, W), dtype=query.dtype, device=query.device)
    dk = torch.zeros((B, C, H, W), dtype=acc, device=query.device)
    dv = torch.zeros((B, D, H, W), dtype=acc, device=query.device)
    for b in range(B):
        for y0 in range(0, H, T):
            for j0 in range(0, nbx, n_chunk):
                n, x0 = min(n_chunk, nbx - j0), j0 * T
                q = chunk_queries(query, b, y0, x0, T, n, acc)               # (n, T2, C)
                do = chunk_queries(dout, b, y0, x0, T, n, acc)               # (n, T2, D)
                l = chunk_queries(lse_map, b, y0, x0, T, n, acc)             # (n, T2, 1)
                dl = chunk_queries(delta, b, y0, x0, T, n, acc)              # (n, T2, 1)
                k = chunk_regions(key, b, y0, x0, T, radius, n, acc)         # (n, C, R2)
                v = chunk_regions(value, b, y0, x0, T, radius, n, acc)       # (n, D, R2)
                p = torch.matmul(q, k).mul_(scale).sub_(l).exp_()            # (n, T2, R2); beyond-image queries: q = 0
                p.masked_fill_(~_attn_mask(win, border, H, W, y0, x0, T, radius, n, query.device), 0.0)
                ds = torch.matmul(do, v).sub_(dl).mul_(p).mul_(scale)        # (n, T2, R2)
                del v
                _write_tiles(dq, torch.matmul(ds, k.transpose(-1, -2)), b, y0, x0, T, n)
                del k  # before dK's rectangles exist: one (n, C, R2) block alive at a time
                add_chunk_regions(dk, torch.matmul(q.transpose(-1, -2), ds), b, y0, x0, T, radius)
                add_chunk_regions(dv, torch.matmul(do.transpose(-1, -2), p), b, y0, x0, T, radius)
                del q, do, p, ds
    return dq, dk.to(key.dtype), dv.to(value.dtype)


# ---------------------------------------------------------------------------------------------
# Triton kernels. Grid: (cdiv(H*W, BLOCK_P), B); a program owns BLOCK_P consecutive pixels
# (flattened y*W + x) of one image and loops over the window offsets (dy outer, dx inner).
# ---------------------------------------------------------------------------------------------


@triton.jit
def _dot_over_channels(a_ptr, sa, a_ok, b_ptr, sb, b_ok, C, cs, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per-pixel dot products (BLOCK_P,) fp32 of two (C, BLOCK_P) gathers, C read in blocks of BLOCK_C.

    ``a_ptr``/``b_ptr`` point at channel 0 of each pixel (shape (1, BLOCK_P)), ``sa``/``sb`` are the channel
    strides and ``a_ok``/``b_ok`` the pixel masks (masked pixels read 0)."""
    s = tl.zeros([BLOCK_P], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        ch = c0 + cs
        ac = tl.load(a_ptr + ch[:, None] * sa, mask=(ch[:, None] < C) & a_ok[None, :], other=0.0).to(tl.float32)
        bc = tl.load(b_ptr + ch[:, None] * sb, mask=(ch[:, None] < C) & b_ok[None, :], other=0.0).to(tl.float32)
        s += tl.sum(ac * bc, axis=0)
    return s


@triton.jit
def _corr_fwd_kernel(
    Q, K, Out,
    C, H, W, radius, dilation,
    sqb, sqc, sqh, sqw,
    skb, skc, skh, skw,
    sob, son, soh, sow,
    SINGLE_C: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # int32 inside one image (launcher checks size)
    p_ok = pix < H * W
    y = pix // W
    x = pix % W
    cs = tl.arange(0, BLOCK_C)
    q_ptr = Q + b * sqb + (y * sqh + x * sqw)[None, :]
    k_base = K + b * skb
    o_ptr = Out + b * sob + y * soh + x * sow
    P = 2 * radius + 1
    if SINGLE_C:
        q_tile = tl.load(q_ptr + cs[:, None] * sqc, mask=(cs[:, None] < C) & p_ok[None, :], other=0.0).to(tl.float32)
    for a in range(0, P):
        yk = y + (a - radius) * dilation
        row_ok = p_ok & (yk >= 0) & (yk < H)
        for c in range(0, P):
            xk = x + (c - radius) * dilation
            k_ok = row_ok & (xk >= 0) & (xk < W)
            k_ptr = k_base + (yk * skh + xk * skw)[None, :]
            if SINGLE_C:
                k_tile = tl.load(k_ptr + cs[:, None] * skc, mask=(cs[:, None] < C) & k_ok[None, :], other=0.0).to(tl.float32)
                s = tl.sum(q_tile * k_tile, axis=0)
            else:
                s = _dot_over_channels(q_ptr, sqc, p_ok, k_ptr, skc, k_ok, C, cs, BLOCK_P, BLOCK_C)
            tl.store(o_ptr + (a * P + c) * son, s.to(Out.dtype.element_ty), mask=p_ok)


@triton.jit
def _corr_bwd_kernel(
    G, Src, Dst,
    C, H, W, radius, dilation,
    sgb, sgn, sgh, sgw,
    ssb, ssc, ssh, ssw,
    sdb, sdc, sdh, sdw,
    FOR_KEY: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """FOR_KEY=False: dq(i) = sum_n g[n, i] k(i + off_n). FOR_KEY=True: dk(j) = sum_n g[n, j - off_n] q(j - off_n).

    Grid (cdiv(H*W, BLOCK_P), B, cdiv(C, BLOCK_C))."""
    b = tl.program_id(1).to(tl.int64)
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # int32 inside one image (launcher checks size)
    p_ok = pix < H * W
    y = pix // W
    x = pix % W
    ch = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = ch < C
    P = 2 * radius + 1
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for a in range(0, P):
        if FOR_KEY:
            ys = y - (a - radius) * dilation
        else:
            ys = y + (a - radius) * dilation
        row_ok = p_ok & (ys >= 0) & (ys < H)
        for c in range(0, P):
            if FOR_KEY:
                xsrc = x - (c - radius) * dilation
            else:
                xsrc = x + (c - radius) * dilation
            ok = row_ok & (xsrc >= 0) & (xsrc < W)
            n = a * P + c
            if FOR_KEY:
                g = tl.load(G + b * sgb + n * sgn + ys * sgh + xsrc * sgw, mask=ok, other=0.0).to(tl.float32)
            else:
                g = tl.load(G + b * sgb + n * sgn + y * sgh + x * sgw, mask=ok, other=0.0).to(tl.float32)
            src = tl.load(Src + b * ssb + ch[:, None] * ssc + (ys * ssh + xsrc * ssw)[None, :],
                          mask=c_ok[:, None] & ok[None, :], other=0.0).to(tl.float32)
            acc += g[None, :] * src
    tl.store(Dst + b * sdb + ch[:, None] * sdc + (y * sdh + x * sdw)[None, :],
             acc.to(Dst.dtype.element_ty), mask=c_ok[:, None] & p_ok[None, :])


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, Out, Lse,
    scale, C, D, H, W, radius,
    sqb, sqc, sqh, sqw,
    skb, skc, skh, skw,
    svb, svc, svh, svw,
    sob, soc, soh, sow,
    slb, slh, slw,
    ZERO_BORDER: tl.constexpr, SINGLE_C: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # int32 inside one image (launcher checks size)
    p_ok = pix < H * W
    y = pix // W
    x = pix % W
    cs = tl.arange(0, BLOCK_C)
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < D
    scale2 = tl.cast(scale, tl.float32) * 1.4426950408889634  # logits in log2 units
    q_ptr = Q + b * sqb + (y * sqh + x * sqw)[None, :]
    k_base = K + b * skb
    v_base = V + b * svb
    P = 2 * radius + 1
    if SINGLE_C:
        q_tile = tl.load(q_ptr + cs[:, None] * sqc, mask=(cs[:, None] < C) & p_ok[None, :], other=0.0).to(tl.float32)
    m_i = tl.full([BLOCK_P], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_P], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D, BLOCK_P], dtype=tl.float32)
    for a in range(0, P):
        yk = y + (a - radius)
        row_ok = p_ok & (yk >= 0) & (yk < H)
        for c in range(0, P):
            xk = x + (c - radius)
            k_ok = row_ok & (xk >= 0) & (xk < W)
            k_ptr = k_base + (yk * skh + xk * skw)[None, :]
            if SINGLE_C:
                k_tile = tl.load(k_ptr + cs[:, None] * skc, mask=(cs[:, None] < C) & k_ok[None, :], other=0.0).to(tl.float32)
                s = tl.sum(q_tile * k_tile, axis=0)
            else:
                s = _dot_over_channels(q_ptr, sqc, p_ok, k_ptr, skc, k_ok, C, cs, BLOCK_P, BLOCK_C)
            s = s * scale2
            if not ZERO_BORDER:  # truncated window: out-of-image cells leave the softmax
                s = tl.where(k_ok, s, float("-inf"))
            # ZERO_BORDER: out-of-image cells keep s = 0 (zero-padded key) and load v = 0
            m_new = tl.maximum(m_i, s)
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new)
            l_i = l_i * alpha + p
            v_tile = tl.load(v_base + dd[:, None] * svc + (yk * svh + xk * svw)[None, :],
                             mask=d_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            acc = acc * alpha[None, :] + p[None, :] * v_tile
            m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[None, :]
    tl.store(Out + b * sob + dd[:, None] * soc + (y * soh + x * sow)[None, :],
             out.to(Out.dtype.element_ty), mask=d_ok[:, None] & p_ok[None, :])
    lse = (m_i + tl.log2(l_safe)) * 0.6931471805599453
    tl.store(Lse + b * slb + y * slh + x * slw, lse, mask=p_ok)


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, Lse, Delta, DQ,
    scale, C, D, H, W, radius,
    sqb, sqc, sqh, sqw,
    skb, skc, skh, skw,
    svb, svc, svh, svw,
    sdob, sdoc, sdoh, sdow,
    slb, slh, slw,
    sdqb, sdqc, sdqh, sdqw,
    SINGLE_C: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """dq(i) = scale * sum_j P_ij (dP_ij - delta_i) k_j over the window of query pixel i.

    Without SINGLE_C, DQ must be a zero-filled float32 buffer (accumulated in place by its owner program)."""
    b = tl.program_id(1).to(tl.int64)
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # int32 inside one image (launcher checks size)
    p_ok = pix < H * W
    y = pix // W
    x = pix % W
    cs = tl.arange(0, BLOCK_C)
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < D
    scale_f = tl.cast(scale, tl.float32)
    scale2 = scale_f * 1.4426950408889634
    q_ptr = Q + b * sqb + (y * sqh + x * sqw)[None, :]
    dq_ptr = DQ + b * sdqb + (y * sdqh + x * sdqw)[None, :]
    k_base = K + b * skb
    v_base = V + b * svb
    lse2 = tl.load(Lse + b * slb + y * slh + x * slw, mask=p_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(Delta + b * slb + y * slh + x * slw, mask=p_ok, other=0.0)
    do_tile = tl.load(DO + b * sdob + dd[:, None] * sdoc + (y * sdoh + x * sdow)[None, :],
                      mask=d_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)
    P = 2 * radius + 1
    if SINGLE_C:
        c_ok = cs < C
        q_tile = tl.load(q_ptr + cs[:, None] * sqc, mask=c_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)
        dq = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for a in range(0, P):
        yk = y + (a - radius)
        row_ok = p_ok & (yk >= 0) & (yk < H)
        for c in range(0, P):
            xk = x + (c - radius)
            k_ok = row_ok & (xk >= 0) & (xk < W)
            k_ptr = k_base + (yk * skh + xk * skw)[None, :]
            if SINGLE_C:
                k_tile = tl.load(k_ptr + cs[:, None] * skc, mask=c_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
                s = tl.sum(q_tile * k_tile, axis=0)
            else:
                s = _dot_over_channels(q_ptr, sqc, p_ok, k_ptr, skc, k_ok, C, cs, BLOCK_P, BLOCK_C)
            p = tl.where(k_ok, tl.exp2(s * scale2 - lse2), 0.0)
            v_tile = tl.load(v_base + dd[:, None] * svc + (yk * svh + xk * svw)[None, :],
                             mask=d_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            dp = tl.sum(do_tile * v_tile, axis=0)
            dsc = p * (dp - delta) * scale_f
            if SINGLE_C:
                dq += dsc[None, :] * k_tile
            else:
                for c0 in range(0, C, BLOCK_C):
                    ch = c0 + cs
                    m_own = (ch[:, None] < C) & p_ok[None, :]
                    kc = tl.load(k_ptr + ch[:, None] * skc, mask=(ch[:, None] < C) & k_ok[None, :], other=0.0).to(tl.float32)
                    cur = tl.load(dq_ptr + ch[:, None] * sdqc, mask=m_own, other=0.0)
                    tl.store(dq_ptr + ch[:, None] * sdqc, cur + dsc[None, :] * kc, mask=m_own)
    if SINGLE_C:
        tl.store(dq_ptr + cs[:, None] * sdqc, dq.to(DQ.dtype.element_ty), mask=c_ok[:, None] & p_ok[None, :])


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, Lse, Delta, DK, DV,
    scale, C, D, H, W, radius,
    sqb, sqc, sqh, sqw,
    skb, skc, skh, skw,
    svb, svc, svh, svw,
    sdob, sdoc, sdoh, sdow,
    slb, slh, slw,
    sdkb, sdkc, sdkh, sdkw,
    sdvb, sdvc, sdvh, sdvw,
    SINGLE_C: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """For key pixel j: dv(j) = sum_i P_ij dO_i and dk(j) = scale * sum_i P_ij (dP_ij - delta_i) q_i over
    the queries i = j - offset whose window holds j.

    Without SINGLE_C, DK must be a zero-filled float32 buffer (accumulated in place by its owner program)."""
    b = tl.program_id(1).to(tl.int64)
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # int32 inside one image (launcher checks size)
    p_ok = pix < H * W
    y = pix // W
    x = pix % W
    cs = tl.arange(0, BLOCK_C)
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < D
    scale_f = tl.cast(scale, tl.float32)
    scale2 = scale_f * 1.4426950408889634
    q_base = Q + b * sqb
    k_ptr = K + b * skb + (y * skh + x * skw)[None, :]
    dk_ptr = DK + b * sdkb + (y * sdkh + x * sdkw)[None, :]
    v_tile = tl.load(V + b * svb + dd[:, None] * svc + (y * svh + x * svw)[None, :],
                     mask=d_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)
    dv = tl.zeros([BLOCK_D, BLOCK_P], dtype=tl.float32)
    P = 2 * radius + 1
    if SINGLE_C:
        c_ok = cs < C
        k_tile = tl.load(k_ptr + cs[:, None] * skc, mask=c_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)
        dk = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for a in range(0, P):
        yq = y - (a - radius)
        row_ok = p_ok & (yq >= 0) & (yq < H)
        for c in range(0, P):
            xq = x - (c - radius)
            i_ok = row_ok & (xq >= 0) & (xq < W)
            q_ptr = q_base + (yq * sqh + xq * sqw)[None, :]
            if SINGLE_C:
                q_tile = tl.load(q_ptr + cs[:, None] * sqc, mask=c_ok[:, None] & i_ok[None, :], other=0.0).to(tl.float32)
                s = tl.sum(q_tile * k_tile, axis=0)
            else:
                s = _dot_over_channels(q_ptr, sqc, i_ok, k_ptr, skc, p_ok, C, cs, BLOCK_P, BLOCK_C)
            lse2 = tl.load(Lse + b * slb + yq * slh + xq * slw, mask=i_ok, other=0.0) * 1.4426950408889634
            delta = tl.load(Delta + b * slb + yq * slh + xq * slw, mask=i_ok, other=0.0)
            p = tl.where(i_ok, tl.exp2(s * scale2 - lse2), 0.0)
            do_tile = tl.load(DO + b * sdob + dd[:, None] * sdoc + (yq * sdoh + xq * sdow)[None, :],
                              mask=d_ok[:, None] & i_ok[None, :], other=0.0).to(tl.float32)
            dp = tl.sum(do_tile * v_tile, axis=0)
            dsc = p * (dp - delta) * scale_f
            dv += p[None, :] * do_tile
            if SINGLE_C:
                dk += dsc[None, :] * q_tile
            else:
                for c0 in range(0, C, BLOCK_C):
                    ch = c0 + cs
                    m_own = (ch[:, None] < C) & p_ok[None, :]
                    qc = tl.load(q_ptr + ch[:, None] * sqc, mask=(ch[:, None] < C) & i_ok[None, :], other=0.0).to(tl.float32)
                    cur = tl.load(dk_ptr + ch[:, None] * sdkc, mask=m_own, other=0.0)
                    tl.store(dk_ptr + ch[:, None] * sdkc, cur + dsc[None, :] * qc, mask=m_own)
    tl.store(DV + b * sdvb + dd[:, None] * sdvc + (y * sdvh + x * sdvw)[None, :], dv.to(DV.dtype.element_ty),
             mask=d_ok[:, None] & p_ok[None, :])
    if SINGLE_C:
        tl.store(dk_ptr + cs[:, None] * sdkc, dk.to(DK.dtype.element_ty), mask=c_ok[:, None] & p_ok[None, :])


# ---------------------------------------------------------------------------------------------
# Launch configuration (every decision made here, in Python)
# ---------------------------------------------------------------------------------------------

MAX_BLOCK_C = 64  # C <= MAX_BLOCK_C keeps a pixel's whole feature vector in registers (SINGLE_C)
CHUNK_C = 32  # channel block when C > MAX_BLOCK_C


def launch_config(C: int, D: int, HW: int, *, interpret: bool | None = None) -> dict:
    """Block sizes and warps the launchers use for C feature channels, D value channels, HW pixels.

    ``num_warps`` is for the forward and correlation-backward kernels, ``num_warps_bwd`` for the two
    attention-backward kernels (more live tiles). Under the interpreter (``interpret`` defaults to
    :func:`interpreting`) pixel blocks are larger: its cost is per program, so fewer programs run faster.
    """
    interpret = interpreting() if interpret is None else interpret
    block_p = min(128, max(16, next_power_of_2(HW))) if interpret else 32
    single = C <= MAX_BLOCK_C
    block_c = max(16, next_power_of_2(C)) if single else min(CHUNK_C, MAX_BLOCK_C)
    return {
        "BLOCK_P": block_p,
        "BLOCK_C": block_c,
        "SINGLE_C": single,
        "BLOCK_D": next_power_of_2(max(D, 1)),
        "num_warps": 4,
        "num_warps_bwd": 8 if block_c * block_p >= 2048 else 4,
    }


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


def _launch_corr_fwd(query, key, radius, dilation):
    B, C, H, W = query.shape
    P = 2 * radius + 1
    out = alloc_output((B, P * P, H, W), dtype=query.dtype, device=query.device)
    if out.numel() == 0 or C == 0:
        return out.zero_()
    _check_offsets(query, key, out)
    cfg = launch_config(C, 1, H * W)
    grid = (triton.cdiv(H * W, cfg["BLOCK_P"]), B)
    wrap_triton(_corr_fwd_kernel)[grid](
        query, key, out, C, H, W, radius, dilation,
        *_s(query), *_s(key), *_s(out),
        SINGLE_C=cfg["SINGLE_C"], BLOCK_C=cfg["BLOCK_C"], BLOCK_P=cfg["BLOCK_P"], num_warps=cfg["num_warps"],
    )
    return out


def _launch_corr_bwd(grad, query, key, radius, dilation):
    B, C, H, W = query.shape
    dq = alloc_output((B, C, H, W), dtype=query.dtype, device=query.device)
    dk = alloc_output((B, C, H, W), dtype=key.dtype, device=key.device)
    if dq.numel() == 0:
        return dq.zero_(), dk.zero_()
    _check_offsets(grad, query, key)
    cfg = launch_config(C, 1, H * W)
    grid = (triton.cdiv(H * W, cfg["BLOCK_P"]), B, triton.cdiv(C, cfg["BLOCK_C"]))
    for src, dst, for_key in ((key, dq, False), (query, dk, True)):
        wrap_triton(_corr_bwd_kernel)[grid](
            grad, src, dst, C, H, W, radius, dilation,
            *_s(grad), *_s(src), *_s(dst),
            FOR_KEY=for_key, BLOCK_C=cfg["BLOCK_C"], BLOCK_P=cfg["BLOCK_P"], num_warps=cfg["num_warps"],
        )
    return dq, dk


def _launch_attn_fwd(query, key, value, radius, scale, border):
    B, C, H, W = query.shape
    D = value.shape[1]
    out = alloc_output((B, D, H, W), dtype=value.dtype, device=value.device)
    lse = alloc_output((B, H, W), dtype=torch.float32, device=value.device)
    if lse.numel() == 0:
        return out.zero_(), lse.zero_()
    _check_offsets(query, key, value)
    cfg = launch_config(C, D, H * W)
    grid = (triton.cdiv(H * W, cfg["BLOCK_P"]), B)
    wrap_triton(_attn_fwd_kernel)[grid](
        query, key, value, out, lse,
        float(scale), C, D, H, W, radius,
        *_s(query), *_s(key), *_s(value), *_s(out), *_s(lse),
        ZERO_BORDER=border == "zero", SINGLE_C=cfg["SINGLE_C"],
        BLOCK_C=cfg["BLOCK_C"], BLOCK_D=cfg["BLOCK_D"], BLOCK_P=cfg["BLOCK_P"], num_warps=cfg["num_warps"],
    )
    return out, lse


def _launch_attn_bwd(query, key, value, out, lse, dout, dlse, radius, scale):
    B, C, H, W = query.shape
    D = value.shape[1]
    if B * H * W == 0:
        return torch.zeros_like(query), torch.zeros_like(key), torch.zeros_like(value)
    _check_offsets(query, key, value, dout)
    cfg = launch_config(C, D, H * W)
    delta = ((dout.float() * out.float()).sum(1) - dlse.float()).contiguous()
    lse = lse.float().contiguous()
    if cfg["SINGLE_C"]:
        dq = alloc_output((B, C, H, W), dtype=query.dtype, device=query.device)
        dk = alloc_output((B, C, H, W), dtype=key.dtype, device=key.device)
    else:  # float32 scratch, accumulated in place over the window offsets
        dq = torch.zeros((B, C, H, W), dtype=torch.float32, device=query.device)
        dk = torch.zeros((B, C, H, W), dtype=torch.float32, device=key.device)
    dv = alloc_output((B, D, H, W), dtype=value.dtype, device=value.device)
    grid = (triton.cdiv(H * W, cfg["BLOCK_P"]), B)
    common = dict(SINGLE_C=cfg["SINGLE_C"], BLOCK_C=cfg["BLOCK_C"], BLOCK_D=cfg["BLOCK_D"],
                  BLOCK_P=cfg["BLOCK_P"], num_warps=cfg["num_warps_bwd"])
    wrap_triton(_attn_bwd_dq_kernel)[grid](
        query, key, value, dout, lse, delta, dq,
        float(scale), C, D, H, W, radius,
        *_s(query), *_s(key), *_s(value), *_s(dout), *_s(lse), *_s(dq),
        **common,
    )
    wrap_triton(_attn_bwd_dkdv_kernel)[grid](
        query, key, value, dout, lse, delta, dk, dv,
        float(scale), C, D, H, W, radius,
        *_s(query), *_s(key), *_s(value), *_s(dout), *_s(lse), *_s(dk), *_s(dv),
        **common,
    )
    return dq.to(query.dtype), dk.to(key.dtype), dv


# ---------------------------------------------------------------------------------------------
# Ops: triton_op (CUDA, and eager interpreter runs) and custom_op (PyTorch path)
# ---------------------------------------------------------------------------------------------


@triton_op("tritoncorr::local_correlation_triton", mutates_args=())
def _corr_triton(query: torch.Tensor, key: torch.Tensor, radius: int, dilation: int) -> torch.Tensor:
    return _launch_corr_fwd(query, key, radius, dilation)


@triton_op("tritoncorr::local_correlation_triton_bwd", mutates_args=())
def _corr_triton_bwd(grad: torch.Tensor, query: torch.Tensor, key: torch.Tensor, radius: int, dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_corr_bwd(grad, query, key, radius, dilation)


@torch.library.custom_op("tritoncorr::local_correlation_cpu", mutates_args=())
def _corr_cpu(query: torch.Tensor, key: torch.Tensor, radius: int, dilation: int) -> torch.Tensor:
    return _torch_corr_fwd(query, key, radius, dilation)


@torch.library.custom_op("tritoncorr::local_correlation_cpu_bwd", mutates_args=())
def _corr_cpu_bwd(grad: torch.Tensor, query: torch.Tensor, key: torch.Tensor, radius: int, dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _torch_corr_bwd(grad, query, key, radius, dilation)


def _corr_fake(query, key, radius, dilation):
    B, _, H, W = query.shape
    P = 2 * radius + 1
    return query.new_empty((B, P * P, H, W))


def _corr_bwd_fake(grad, query, key, radius, dilation):
    return torch.empty_like(query), torch.empty_like(key)


_corr_cpu.register_fake(_corr_fake)
_corr_cpu_bwd.register_fake(_corr_bwd_fake)


def _corr_setup(ctx, inputs, output):
    query, key, radius, dilation = inputs
    ctx.save_for_backward(query, key)
    ctx.radius, ctx.dilation = radius, dilation


def _corr_backward_cpu(ctx, grad):
    query, key = ctx.saved_tensors
    dq, dk = _corr_cpu_bwd(grad.contiguous(), query, key, ctx.radius, ctx.dilation)
    return dq, dk, None, None


def _corr_backward_triton(ctx, grad):
    query, key = ctx.saved_tensors
    dq, dk = _corr_triton_bwd(grad.contiguous(), query, key, ctx.radius, ctx.dilation)
    return dq, dk, None, None


_corr_cpu.register_autograd(_corr_backward_cpu, setup_context=_corr_setup)
_corr_triton.register_autograd(_corr_backward_triton, setup_context=_corr_setup)


@triton_op("tritoncorr::local_attention_triton", mutates_args=())
def _attn_triton(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, radius: int, scale: float, border: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_attn_fwd(query, key, value, radius, scale, border)


@triton_op("tritoncorr::local_attention_triton_bwd", mutates_args=())
def _attn_triton_bwd(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    dout: torch.Tensor, dlse: torch.Tensor, radius: int, scale: float, border: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch_attn_bwd(query, key, value, out, lse, dout, dlse, radius, scale)


@torch.library.custom_op("tritoncorr::local_attention_cpu", mutates_args=())
def _attn_cpu(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, radius: int, scale: float, border: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _torch_attn_fwd(query, key, value, radius, scale, border)


@torch.library.custom_op("tritoncorr::local_attention_cpu_bwd", mutates_args=())
def _attn_cpu_bwd(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    dout: torch.Tensor, dlse: torch.Tensor, radius: int, scale: float, border: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _torch_attn_bwd(query, key, value, out, lse, dout, dlse, radius, scale, border)


def _attn_fake(query, key, value, radius, scale, border):
    B, _, H, W = query.shape
    return torch.empty_like(value), query.new_empty((B, H, W), dtype=_acc_dtype(query.dtype))


def _attn_bwd_fake(query, key, value, out, lse, dout, dlse, radius, scale, border):
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


_attn_cpu.register_fake(_attn_fake)
_attn_cpu_bwd.register_fake(_attn_bwd_fake)


def _attn_setup(ctx, inputs, output):
    query, key, value, radius, scale, border = inputs
    out, lse = output
    ctx.save_for_backward(query, key, value, out, lse)
    ctx.radius, ctx.scale, ctx.border = radius, scale, border


def _attn_grads(ctx, dout, dlse):
    query, key, value, out, lse = ctx.saved_tensors
    dout = torch.zeros_like(out) if dout is None else dout.contiguous()
    dlse = torch.zeros_like(lse) if dlse is None else dlse.contiguous()
    return query, key, value, out, lse, dout, dlse


def _attn_backward_cpu(ctx, dout, dlse):
    args = _attn_grads(ctx, dout, dlse)
    dq, dk, dv = _attn_cpu_bwd(*args, ctx.radius, ctx.scale, ctx.border)
    return dq, dk, dv, None, None, None


def _attn_backward_triton(ctx, dout, dlse):
    args = _attn_grads(ctx, dout, dlse)
    dq, dk, dv = _attn_triton_bwd(*args, ctx.radius, ctx.scale, ctx.border)
    return dq, dk, dv, None, None, None


_attn_cpu.register_autograd(_attn_backward_cpu, setup_context=_attn_setup)
_attn_triton.register_autograd(_attn_backward_triton, setup_context=_attn_setup)


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
        raise ValueError(f"key must have the shape of query (B, C, H, W) = {tuple(query.shape)}, got {tuple(key.shape)}")
    if key.dtype != query.dtype:
        raise TypeError(f"query and key must share a dtype, got {query.dtype} and {key.dtype}")


def _triton_dtype_ok(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"the Triton path supports float32/float16/bfloat16, got {t.dtype}; use TRITONCORR_BACKEND=torch for float64")


def local_correlation(query: torch.Tensor, key: torch.Tensor, radius: int, *, dilation: int = 1) -> torch.Tensor:
    """Windowed dot products, ``spatial_correlation_sampler`` semantics (kernel 1, patch 2r+1).

    Args:
        query, key: ``(B, C, H, W)``, same dtype (float32/float16/bfloat16; float64 on the PyTorch path).
        radius: window radius r (0..32); the window is ``(2r+1) x (2r+1)`` cells.
        dilation: spacing between window cells (``dilation_patch``), >= 1.

    Returns:
        ``(B, (2r+1)^2, H, W)`` in the input dtype (float32 accumulation); index
        ``(dy + r) * (2r+1) + (dx + r)``; 0 where ``(y + dy*dilation, x + dx*dilation)`` is outside the image.
        Differentiable w.r.t. query and key.
    """
    _check_features(query, key)
    radius = _check_radius(radius)
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an int >= 1, got {dilation!r}")
    if use_triton(query, key):
        _triton_dtype_ok(query, key)
        return _corr_triton(query, key, radius, dilation)
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
    if use_triton(query, key, value):
        _triton_dtype_ok(query, key, value)
        if value.shape[1] > MAX_VALUE_CHANNELS_TRITON:
            raise ValueError(
                f"value has D={value.shape[1]} channels; the Triton kernel supports D <= {MAX_VALUE_CHANNELS_TRITON} "
                "(split value along channels and call once per chunk)"
            )
        out, lse = _attn_triton(query, key, value, radius, scale, border)
    else:
        out, lse = _attn_cpu(query, key, value, radius, scale, border)
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------------------------------------
# Ahead-of-time compile specs: every kernel in the configurations the launchers use
# ---------------------------------------------------------------------------------------------


def _aot_specs():
    from .aot import AotSpec

    specs = []
    ptr = {torch.float32: "*fp32", torch.bfloat16: "*bf16"}
    # (label, C, D, H*W): the bench shapes' configurations (MAST C=64 D<=3; STT C=128 and C=512).
    shapes = [("c64_d1", 64, 1, 4096), ("c64_d3", 64, 3, 4096), ("c128_d1", 128, 1, 4096), ("c512_d1", 512, 1, 1024)]
    for dtype, tp in ptr.items():
        dname = "fp32" if dtype == torch.float32 else "bf16"
        for label, C, D, HW in shapes:
            cfg = launch_config(C, D, HW, interpret=False)
            tag = f"{dname}_{label}"
            i32 = lambda names: {n: "i32" for n in names}  # noqa: E731
            strides4 = lambda p: [f"{p}{s}" for s in ("b", "c", "h", "w")]  # noqa: E731
            # correlation forward
            sig = {"Q": tp, "K": tp, "Out": tp}
            sig |= i32(["C", "H", "W", "radius", "dilation"])
            sig |= i32(["sqb", "sqc", "sqh", "sqw", "skb", "skc", "skh", "skw", "sob", "son", "soh", "sow"])
            sig |= {"SINGLE_C": "constexpr", "BLOCK_C": "constexpr", "BLOCK_P": "constexpr"}
            specs.append(AotSpec(f"corr_fwd_{tag}", _corr_fwd_kernel, sig,
                                 {"SINGLE_C": cfg["SINGLE_C"], "BLOCK_C": cfg["BLOCK_C"], "BLOCK_P": cfg["BLOCK_P"]},
                                 num_warps=cfg["num_warps"]))
            # correlation backward (dq and dk)
            for for_key in (False, True):
                sig = {"G": tp, "Src": tp, "Dst": tp}
                sig |= i32(["C", "H", "W", "radius", "dilation"])
                sig |= i32(["sgb", "sgn", "sgh", "sgw", "ssb", "ssc", "ssh", "ssw", "sdb", "sdc", "sdh", "sdw"])
                sig |= {"FOR_KEY": "constexpr", "BLOCK_C": "constexpr", "BLOCK_P": "constexpr"}
                specs.append(AotSpec(f"corr_bwd_{'dk' if for_key else 'dq'}_{tag}", _corr_bwd_kernel, sig,
                                     {"FOR_KEY": for_key, "BLOCK_C": cfg["BLOCK_C"], "BLOCK_P": cfg["BLOCK_P"]},
                                     num_warps=cfg["num_warps"]))
            blocks = {"SINGLE_C": cfg["SINGLE_C"], "BLOCK_C": cfg["BLOCK_C"], "BLOCK_D": cfg["BLOCK_D"], "BLOCK_P": cfg["BLOCK_P"]}
            # attention forward (both border modes)
            for zero in (False, True):
                sig = {"Q": tp, "K": tp, "V": tp, "Out": tp, "Lse": "*fp32", "scale": "fp32"}
                sig |= i32(["C", "D", "H", "W", "radius"])
                sig |= i32(strides4("sq") + strides4("sk") + strides4("sv") + strides4("so") + ["slb", "slh", "slw"])
                sig |= {k: "constexpr" for k in ("ZERO_BORDER", "SINGLE_C", "BLOCK_C", "BLOCK_D", "BLOCK_P")}
                specs.append(AotSpec(f"attn_fwd_{'zero' if zero else 'trunc'}_{tag}", _attn_fwd_kernel, sig,
                                     {"ZERO_BORDER": zero, **blocks}, num_warps=cfg["num_warps"]))
            # attention backward: dq, then dk/dv (float32 scratch for dq/dk unless SINGLE_C)
            acc_tp = tp if cfg["SINGLE_C"] else "*fp32"
            sig = {"Q": tp, "K": tp, "V": tp, "DO": tp, "Lse": "*fp32", "Delta": "*fp32", "DQ": acc_tp, "scale": "fp32"}
            sig |= i32(["C", "D", "H", "W", "radius"])
            sig |= i32(strides4("sq") + strides4("sk") + strides4("sv") + strides4("sdo") + ["slb", "slh", "slw"] + strides4("sdq"))
            sig |= {k: "constexpr" for k in ("SINGLE_C", "BLOCK_C", "BLOCK_D", "BLOCK_P")}
            specs.append(AotSpec(f"attn_bwd_dq_{tag}", _attn_bwd_dq_kernel, sig, dict(blocks), num_warps=cfg["num_warps_bwd"]))
            sig = {"Q": tp, "K": tp, "V": tp, "DO": tp, "Lse": "*fp32", "Delta": "*fp32", "DK": acc_tp, "DV": tp, "scale": "fp32"}
            sig |= i32(["C", "D", "H", "W", "radius"])
            sig |= i32(strides4("sq") + strides4("sk") + strides4("sv") + strides4("sdo") + ["slb", "slh", "slw"]
                       + strides4("sdk") + strides4("sdv"))
            sig |= {k: "constexpr" for k in ("SINGLE_C", "BLOCK_C", "BLOCK_D", "BLOCK_P")}
            specs.append(AotSpec(f"attn_bwd_dkdv_{tag}", _attn_bwd_dkdv_kernel, sig, dict(blocks), num_warps=cfg["num_warps_bwd"]))
    return specs


AOT_SPECS = _aot_specs()

"""The PyTorch path of the windowed-correlation family (the CPU op implementation).

``local_correlation`` loops over the window offsets (its output is the volume). ``local_attention``
works on tiles: the queries of a ``T x T`` tile share the ``(T + 2r) x (T + 2r)`` rectangle that holds
all their windows, so one batched GEMM gives their logits against the rectangle; cells outside each
query's window (and, for ``"truncate"``, outside the image) are masked; the softmax, the value GEMM
and, in the backward, ``dS``, ``dQ = dS K``, ``dK = Q^T dS``, ``dV = dO^T P`` are GEMMs on the same
tiles. Tiles are taken in chunks of a few tiles of one row of one image, sized so that a chunk's
working set stays within :data:`ATTN_CHUNK_BYTES`; rectangles are read from the unpadded maps with
zeros outside the image, so no padded copy and no ``(2r+1)^2`` volume is ever held: peak memory is
the outputs plus one chunk. The backward recomputes the scores from q, k and the saved lse
(flash-attention style: ``delta_i = <dO_i, O_i> - dlse_i``, ``dS = P * (dP - delta)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._tiles import (
    add_chunk_regions,
    attention_tile,
    block_geometry,
    chunk_queries,
    chunk_regions,
    chunk_regions_in_image,
    window_in_region,
)
from .reference import acc_dtype

__all__ = [
    "ATTN_CHUNK_BYTES",
    "attn_chunk_tiles",
    "torch_corr_fwd",
    "torch_corr_bwd",
    "torch_attn_fwd",
    "torch_attn_bwd",
]


def _offsets(radius: int, dilation: int):
    """(n, dy, dx) for every window cell, n = (dy/dil + r) * P + (dx/dil + r)."""
    P = 2 * radius + 1
    for a in range(P):
        for c in range(P):
            yield a * P + c, (a - radius) * dilation, (c - radius) * dilation


def _shifted(xpad: torch.Tensor, pad: int, dy: int, dx: int, H: int, W: int) -> torch.Tensor:
    """View of the zero-padded map at ``(y + dy, x + dx)`` for every ``(y, x)`` of the image."""
    return xpad[:, :, pad + dy : pad + dy + H, pad + dx : pad + dx + W]


def torch_corr_fwd(query, key, radius, dilation):
    B, C, H, W = query.shape
    P = 2 * radius + 1
    acc = acc_dtype(query.dtype)
    q = query.to(acc)
    pad = radius * dilation
    kpad = F.pad(key.to(acc), (pad, pad, pad, pad))
    out = torch.empty((B, P * P, H, W), dtype=acc, device=query.device)
    for n, dy, dx in _offsets(radius, dilation):
        out[:, n] = (q * _shifted(kpad, pad, dy, dx, H, W)).sum(1)
    return out.to(query.dtype)


def torch_corr_bwd(grad, query, key, radius, dilation):
    B, C, H, W = query.shape
    acc = acc_dtype(query.dtype)
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


def attn_chunk_tiles(T: int, R: int, C: int, D: int, nbx: int, elt: int, backward: bool) -> int:
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
    dst[b, :, y0:y1, x0:x1] = img[:, : y1 - y0, : x1 - x0]


def torch_attn_fwd(query, key, value, radius, scale, border, tile=None):
    """Tiled forward: chunks of tiles of one row of one image at a time (see the module docstring)."""
    B, C, H, W = query.shape
    D = value.shape[1]
    acc = acc_dtype(query.dtype)
    T, R, _, nbx = block_geometry(H, W, radius, tile or attention_tile(radius))
    n_chunk = attn_chunk_tiles(T, R, C, D, nbx, torch.tensor([], dtype=acc).element_size(), backward=False)
    win = window_in_region(T, R, radius, query.device)  # (T2, R2)
    out = torch.empty((B, D, H, W), dtype=value.dtype, device=query.device)
    lse = torch.empty((B, 1, H, W), dtype=acc, device=query.device)
    for b in range(B):
        for y0 in range(0, H, T):
            for j0 in range(0, nbx, n_chunk):
                n, x0 = min(n_chunk, nbx - j0), j0 * T
                q = chunk_queries(query, b, y0, x0, T, n, acc)  # (n, T2, C)
                k = chunk_regions(key, b, y0, x0, T, radius, n, acc)  # (n, C, R2)
                s = torch.matmul(q, k).mul_(scale)  # (n, T2, R2)
                del q, k
                s.masked_fill_(~_attn_mask(win, border, H, W, y0, x0, T, radius, n, query.device), float("-inf"))
                l = torch.logsumexp(s, dim=-1, keepdim=True)  # (n, T2, 1)
                p = s.sub_(l).exp_()
                v = chunk_regions(value, b, y0, x0, T, radius, n, acc)  # (n, D, R2)
                o = torch.matmul(p, v.transpose(-1, -2))  # (n, T2, D)
                del p, v
                _write_tiles(out, o, b, y0, x0, T, n)
                _write_tiles(lse, l, b, y0, x0, T, n)
    return out, lse[:, 0]


def torch_attn_bwd(query, key, value, out, lse, dout, dlse, radius, scale, border, tile=None):
    """Tiled backward (flash-attention style, scores recomputed from q, k and the saved lse):
    ``delta_i = <dO_i, O_i> - dlse_i``, ``dS = P * (dP - delta) * scale``."""
    B, C, H, W = query.shape
    D = value.shape[1]
    acc = acc_dtype(query.dtype)
    T, R, _, nbx = block_geometry(H, W, radius, tile or attention_tile(radius))
    n_chunk = attn_chunk_tiles(T, R, C, D, nbx, torch.tensor([], dtype=acc).element_size(), backward=True)
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
                q = chunk_queries(query, b, y0, x0, T, n, acc)  # (n, T2, C)
                do = chunk_queries(dout, b, y0, x0, T, n, acc)  # (n, T2, D)
                l = chunk_queries(lse_map, b, y0, x0, T, n, acc)  # (n, T2, 1)
                dl = chunk_queries(delta, b, y0, x0, T, n, acc)  # (n, T2, 1)
                k = chunk_regions(key, b, y0, x0, T, radius, n, acc)  # (n, C, R2)
                v = chunk_regions(value, b, y0, x0, T, radius, n, acc)  # (n, D, R2)
                p = torch.matmul(q, k).mul_(scale).sub_(l).exp_()  # (n, T2, R2); beyond-image queries: q = 0
                p.masked_fill_(~_attn_mask(win, border, H, W, y0, x0, T, radius, n, query.device), 0.0)
                ds = torch.matmul(do, v).sub_(dl).mul_(p).mul_(scale)  # (n, T2, R2)
                del v
                _write_tiles(dq, torch.matmul(ds, k.transpose(-1, -2)), b, y0, x0, T, n)
                del k  # before dK's rectangles exist: one (n, C, R2) block alive at a time
                add_chunk_regions(dk, torch.matmul(q.transpose(-1, -2), ds), b, y0, x0, T, radius)
                add_chunk_regions(dv, torch.matmul(do.transpose(-1, -2), p), b, y0, x0, T, radius)
                del q, do, p, ds
    return dq, dk.to(key.dtype), dv.to(value.dtype)

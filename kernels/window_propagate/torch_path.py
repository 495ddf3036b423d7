"""Full-window propagation, the memory-bounded PyTorch path (default for CPU tensors).

:func:`window_propagate_windowed`: query (C, h, w), keys (N, C, h, w), values (N, L, h, w), settings
:class:`~.reference.WindowSearch` -> (L, h, w) float32, by GEMMs on query tiles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._tiles import block_geometry, query_blocks, regions, window_in_region
from .._utils import topk_lowest_index
from .reference import WindowSearch

__all__ = ["window_propagate_windowed"]


def window_propagate_windowed(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, search: WindowSearch, *, tile: int = 8
) -> torch.Tensor:
    """Memory-bounded PyTorch path of the full-window mode. Shapes as :func:`window_propagate`.

    GEMMs on query tiles (:mod:`tritoncorr.kernels._tiles`): one row of ``tile x tile`` query tiles
    at a time, every reference at once, scores against each tile's ``(tile + 2r)^2`` rectangle
    (zero-padded maps: out-of-image cells have logit 0 and value 0), the window mask, the joint
    log-sum-exp over all references, the soft window sums as a GEMM with the rectangle's values and,
    with the compactness prior, the per-reference top-M, the replace test and the template (Gaussians
    on the rectangle, masked to the window) as a second GEMM. Peak extra memory
    O(N * (W / tile) * tile^2 * (tile + 2r)^2) floats for one row of tiles: neither the dense affinity
    nor the full (N*P^2, h*w) volume exists.
    """
    search.check(query, keys, values)
    c, h, w = query.shape
    n, lab = keys.shape[0], values.shape[1]
    r, compact = search.radius, search.compact
    dev = query.device
    T, R, nby, nbx = block_geometry(h, w, r, tile)
    hq, wq = nby * T, nbx * T
    qp = F.pad(query.float() / search.temperature, (0, wq - w, 0, hq - h))[None]  # (1, C, hq, wq)
    kp = F.pad(keys.float(), (r, r + wq - w, r, r + hq - h))  # (N, C, hq+2r, wq+2r)
    vp = F.pad(values.float(), (r, r + wq - w, r, r + hq - h))  # (N, L, ...)
    win = window_in_region(T, R, r, dev)  # (T2, R2)
    out = torch.empty(lab, hq, wq, dtype=torch.float32, device=dev)
    if compact:
        ry = torch.arange(R, device=dev, dtype=torch.float32)
    for by in range(nby):
        y0 = by * T
        q = query_blocks(qp, y0, T, nbx)  # (1, nbx, T2, C)
        k = regions(kp, y0, R, T, nbx)  # (N, nbx, C, R2)
        v = regions(vp, y0, R, T, nbx).transpose(-1, -2)  # (N, nbx, R2, L)
        s = torch.matmul(q, k).masked_fill_(~win, float("-inf"))  # (N, nbx, T2, R2)
        lse = torch.logsumexp(torch.logsumexp(s, dim=-1), dim=0)  # (nbx, T2) joint over references
        if compact:
            top_s, top_i = topk_lowest_index(s.reshape(-1, R * R), compact)
            top_s = top_s.view(n, nbx, T * T, compact)
            top_i = top_i.view(n, nbx, T * T, compact)
        p = torch.exp(s - lse[..., None])  # joint softmax probabilities (0 off-window)
        del s
        res = torch.matmul(p, v)  # (N, nbx, T2, L) soft window sums
        if compact:
            top_p = torch.exp(top_s - lse[..., None])  # (N, nbx, T2, M)
            conf = top_p.amax(dim=-1) > search.compact_threshold
            wgt = torch.softmax(top_p, dim=-1)
            cy = (top_i // R).float()[..., None]  # rectangle coordinates of the centres
            cx = (top_i % R).float()[..., None]
            gy = torch.exp2(-4.0 * (ry - cy) ** 2) * wgt[..., None]  # (N, nbx, T2, M, R), exp(-4 ln2 d^2)
            gx = torch.exp2(-4.0 * (ry - cx) ** 2)
            tmpl = torch.matmul(gy.transpose(-1, -2), gx)  # (N, nbx, T2, R, R): sum_m w_m G_m(y) G_m(x)
            tmpl = tmpl.reshape(p.shape).mul_(win)
            res = torch.where(conf[..., None], torch.matmul(tmpl, v), res)
        o = res.sum(0)  # (nbx, T2, L)
        out[:, y0 : y0 + T] = o.reshape(nbx, T, T, lab).permute(3, 1, 0, 2).reshape(lab, T, wq)
    return out[:, :h, :w].contiguous()

"""kNN-softmax propagation, the memory-bounded PyTorch path (default for CPU tensors).

:func:`knn_propagate_windowed`: query tiles against the union of their windows (one GEMM per tile
and frame chunk), plus the unrestricted frames searched globally; never the full affinity.
query (C, h, w), keys (N, C, h, w), values (N, L, h, w), settings :class:`~.reference.KnnSearch`
-> (L, h, w) float32.
"""

from __future__ import annotations

import torch

from .._utils import topk_lowest_index
from .reference import KnnSearch, check_counts, window_mask

__all__ = ["knn_propagate_windowed"]


def knn_propagate_windowed(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    search: KnnSearch,
    *,
    counts: list[int] | None = None,
    tile: int = 12,
    frame_chunk: int = 10,
) -> torch.Tensor:
    """Memory-bounded PyTorch path. Shapes as :func:`knn_propagate`, settings ``search``; -> (L, h, w) fp32.

    ``counts`` (see :func:`knn_propagate`): frame ``i`` occupies ``counts[i]`` consecutive context
    slots; its top-k candidates are computed once and repeated once per slot (a candidate repeated
    m times can fill m of the k places, exactly as the repeated frames would), so the cost is that
    of the distinct frames.

    Query pixels are processed in ``tile`` x ``tile`` tiles (12 x 12 with 10 frames per GEMM measured
    fastest at DAVIS 480p, C 512, radius 12, on a 2-core AVX-512 CPU). For a tile: one GEMM against every
    position of each unrestricted frame, and one GEMM per ``frame_chunk`` restricted frames against
    the rectangle covering the windows of all the tile's queries (keys channels-last, so the rectangle
    is a few contiguous runs); each query's own window cells are then gathered from its row of scores
    (row-major, so in candidate-index order; out-of-image cells masked), and only those enter the top-k.
    Each part gives its own top-k (lowest index on ties); the parts' candidates are merged in global index
    order and the joint top-k is taken again. Peak extra memory is
    O(tile^2 * h*w + (tile^2 + C) * frame_chunk * (tile + 2r)^2) floats (plus a float32 channels-last copy of
    ``keys`` unless they are float32 channels-last already); the (h*w, N*h*w) affinity never exists.
    """
    search.check(query, keys, values)
    c, h, w = query.shape
    n, lab = keys.shape[0], values.shape[1]
    counts = check_counts(counts, n)
    hw = h * w
    topk = search.topk
    nu, nw = search.unrestricted, n - search.unrestricted
    reach = search.reach
    dev = query.device
    out = torch.empty(lab, h, w, dtype=torch.float32, device=dev)
    vals_cl = values.permute(0, 2, 3, 1)  # (N, h, w, L) view, gathered per tile
    inv_t = 1.0 / search.temperature
    # keys channels-last (N, h, w, C), float32, once: a window rectangle is then a few contiguous runs
    # of rw*C values (a cheap copy) and an unrestricted frame a (h*w, C) view (no copy for
    # channels-last float32 keys, as the streaming propagator passes them on CPU)
    kcl = keys.permute(0, 2, 3, 1).float()
    if not kcl.is_contiguous():
        kcl = kcl.contiguous()
    k_unres = [kcl[u].view(hw, c) for u in range(nu)]
    repeat = None
    if counts is not None:  # each frame's number of slots, the slot of its first copy, and its copies
        count_t = torch.tensor(counts, device=dev)
        repeat = (count_t, torch.cumsum(count_t, 0) - count_t, torch.arange(max(counts), device=dev))
    off_y, off_x = _window_offsets(search, dev)
    n_off = off_y.shape[1]
    for ty0 in range(0, h, tile):
        ty1 = min(ty0 + tile, h)
        ry0, ry1 = max(ty0 - reach, 0), min(ty1 - 1 + reach, h - 1) + 1
        for tx0 in range(0, w, tile):
            tx1 = min(tx0 + tile, w)
            rx0, rx1 = max(tx0 - reach, 0), min(tx1 - 1 + reach, w - 1) + 1
            th, tw, rh, rw = ty1 - ty0, tx1 - tx0, ry1 - ry0, rx1 - rx0
            nq, p = th * tw, rh * rw
            # queries pre-scaled by 1/temperature: scores = <q, k> / temperature
            qt = query[:, ty0:ty1, tx0:tx1].reshape(c, nq).T.float() * inv_t  # (nq, C)
            cands = _Candidates(repeat)
            for u in range(nu):
                su = qt @ k_unres[u].T  # (nq, h*w)
                v_u, i_u = topk_lowest_index(su, topk)
                del su
                cands.add(v_u, torch.full_like(i_u, u), i_u // w, i_u % w)
            if nw:
                # each query's window cells (row-major offsets, so increasing candidate index) as
                # indices into the tile's rectangle; cells outside the image are clamped and masked
                qy = torch.arange(ty0, ty1, device=dev).repeat_interleave(tw)[:, None]
                qx = torch.arange(tx0, tx1, device=dev).repeat(th)[:, None]
                ky, kx = qy + off_y, qx + off_x  # (nq, D)
                inside = (ky >= 0) & (ky < h) & (kx >= 0) & (kx < w)
                cell = (ky.clamp(ry0, ry1 - 1) - ry0) * rw + (kx.clamp(rx0, rx1 - 1) - rx0)  # (nq, D)
                all_inside = bool(inside.all())
            for f0 in range(nu, n, frame_chunk):  # restricted frames, a few at a time (bounded memory)
                f1 = min(f0 + frame_chunk, n)
                nf = f1 - f0
                rect = kcl[f0:f1, ry0:ry1, rx0:rx1].reshape(nf * p, c)  # (nf * p, C)
                sw = (qt @ rect.T).view(nq, nf, p)
                del rect
                sw = sw.gather(2, cell[:, None, :].expand(nq, nf, n_off))  # (nq, nf, D): window cells only
                if not all_inside:
                    sw.masked_fill_(~inside[:, None, :], float("-inf"))
                v_w, i_w = topk_lowest_index(sw.view(nq, nf * n_off), topk)
                del sw
                r = cell.gather(1, i_w % n_off)
                cands.add(v_w, f0 + i_w // n_off, ry0 + r // rw, rx0 + r % rw)
            top_v, fr, cy, cx = cands.top(topk, h, w)
            weights = torch.softmax(top_v, dim=1)  # (nq, k); -inf entries weigh 0
            gathered = vals_cl[fr, cy, cx].float()  # (nq, k, L)
            res = torch.einsum("qk,qkl->ql", weights, gathered)
            out[:, ty0:ty1, tx0:tx1] = res.T.reshape(lab, th, tw)
    return out


def _window_offsets(search: KnnSearch, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The window's cell offsets ``(dy, dx)`` in row-major order, each ``(1, D)``."""
    reach = search.reach
    span = torch.arange(-reach, reach + 1, device=device)
    oy, ox = torch.meshgrid(span, span, indexing="ij")
    oy, ox = oy.reshape(-1), ox.reshape(-1)
    origin = torch.zeros(1, dtype=torch.long, device=device)
    in_window = window_mask(origin, origin, oy, ox, search.radius, search.window)[0]
    return oy[in_window][None, :], ox[in_window][None, :]


class _Candidates:
    """The top-k candidates of one query tile from each part (an unrestricted frame, a chunk of restricted
    frames): scores and (frame, y, x), each ``(Q, k)``; :meth:`top` merges them into the joint top-k.

    ``repeat = (counts, first_slot, copies)`` (repeated context frames, see ``knn_propagate_windowed``):
    each candidate becomes one entry per context slot of its frame (frames are then named by slot; unused
    copies score -inf and weigh 0), so the joint top-k sees what the repeated frames would give.
    """

    def __init__(self, repeat: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> None:
        self.repeat = repeat
        self.v: list[torch.Tensor] = []
        self.f: list[torch.Tensor] = []
        self.y: list[torch.Tensor] = []
        self.x: list[torch.Tensor] = []

    def add(self, v: torch.Tensor, f: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> None:
        """One part's candidates (Q, k): scores ``v``, distinct frame ``f``, cell ``y, x``."""
        if self.repeat is not None:
            count_t, first_slot, copies = self.repeat
            q, k = v.shape
            m = copies.numel()
            used = copies[None, None, :] < count_t[f][:, :, None]  # (Q, k, m)
            v = v[:, :, None].expand(q, k, m).masked_fill(~used, float("-inf")).reshape(q, k * m)
            f = (first_slot[f][:, :, None] + copies).reshape(q, k * m)
            y = y[:, :, None].expand(q, k, m).reshape(q, k * m)
            x = x[:, :, None].expand(q, k, m).reshape(q, k * m)
        self.v.append(v)
        self.f.append(f)
        self.y.append(y)
        self.x.append(x)

    def top(self, topk: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The joint top-k ``(scores, frame, y, x)``, each (Q, <= k): candidates ordered by global index
        ``(frame * h + y) * w + x``, then a stable sort by score (the lowest index wins ties)."""
        if len(self.v) == 1 and self.repeat is None:
            return self.v[0], self.f[0], self.y[0], self.x[0]
        allv, allf, ally, allx = (torch.cat(t, dim=1) for t in (self.v, self.f, self.y, self.x))
        gid = (allf * h + ally) * w + allx
        o1 = torch.argsort(gid, dim=1)
        allv = allv.gather(1, o1)
        o2 = torch.sort(allv, dim=1, descending=True, stable=True).indices[:, :topk]
        sel = o1.gather(1, o2)
        fr, cy, cx = allf.gather(1, sel), ally.gather(1, sel), allx.gather(1, sel)
        if self.repeat is not None:  # context slot -> the distinct frame that fills it
            fr = torch.searchsorted(self.repeat[1], fr, right=True) - 1
        return allv.gather(1, o2), fr, cy, cx

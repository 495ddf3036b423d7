"""kNN-softmax label propagation (inference): windowed affinity, joint top-k, softmax, label sum.

For every query pixel ``p`` of a target frame (features ``query`` (C, h, w)) and a context of ``N``
frames (features ``keys`` (N, C, h, w), labels ``values`` (N, L, h, w)):

1. candidates: every position of the first ``unrestricted`` context frames (searched globally), and
   the positions inside the spatial window around ``p`` in the other frames;
2. scores ``s = <query(p), keys(n, p')> / temperature`` over all candidates of all frames
   (**one joint pool**, not a top-k per frame);
3. the ``topk`` best scores, softmax over them, and the weighted sum of the candidates' label
   vectors -> ``out[:, p]`` (L,) in float32.

Windows (``radius`` in feature cells):

* ``"disc"`` (CRW / DUL): Euclidean distance strictly below ``radius``: ``dy^2 + dx^2 < radius^2``
  (radius 12 -> 437 cells). CRW adds ``-1e10`` to the other scores, which gives them weight 0.
* ``"square"`` (STT / VFS tracker, ``mode='square'``): ``|dy| <= radius`` and ``|dx| <= radius``,
  truncated at the image border. STT's config value ``neighbor_range = nr`` means
  ``radius = nr // 2`` (DAVIS d8: nr 24 -> radius 12, a 25 x 25 window); pass the radius, not nr.

Conventions shared by every path (reference, windowed PyTorch, Triton):

* ``topk`` larger than the number of candidates of a query -> all its candidates are used.
* Ties: among equal scores the lower candidate index wins, the index being
  ``frame * h * w + y * w + x`` (frame first, then row-major position). With duplicated context
  frames (CRW/DUL at ``t < 20``) the same best match then fills several of the top-k slots.
* Repeated frames: ``counts[i]`` says that ``keys[i]`` / ``values[i]`` stand for ``counts[i]``
  consecutive context slots (CRW/DUL fill the context with copies of frame 0 early in a video).
  The result equals passing the frames repeated (``repeat_interleave(counts)``), ties included; the
  CPU path scores each distinct frame once and repeats its candidates, the other paths expand.
* Features may be float32, bfloat16 or float16 (query and keys of one dtype); scores, softmax and
  the label sum are accumulated in float32. Labels may be any float dtype. Output: float32.

Paths:

* :func:`knn_propagate_reference` - the definition of correctness (float64, stable sort); builds
  the full (h*w, N*h*w) score matrix: small inputs only.
* :func:`knn_propagate_dense` - the CRW-style computation (dense affinity to all N*h*w candidates in
  chunks of 100 queries, additive -1e10 mask, ``torch.topk``); the benchmark baseline.
* the windowed PyTorch path (default for CPU tensors): query tiles against the union of their
  windows (one GEMM per tile), plus the unrestricted frames; never the full affinity.
* the Triton kernel (default for CUDA tensors): per program a tile of query pixels, ``tl.dot`` over
  channel blocks against blocks of window candidates, a running top-k in registers, then the softmax
  and the label gather; the affinity is never written to memory.

Ops: ``tritoncorr::knn_propagate`` (``triton_op``, CUDA) and ``tritoncorr::knn_propagate_windowed``
(``custom_op`` running the windowed PyTorch path, with a fake implementation). Forward only.

Full-window mode ("k = all", MAST / LIIR; :func:`window_propagate`, section at the end of the file):
no top-k; every cell of a square window around ``p`` in every reference, with zero-border semantics
(out-of-image cells take part with logit 0 and value 0, like MAST's zero-padded correlation sampler
and ``unfold``; LIIR spec §4.1, §8), raw dot products / temperature, ONE softmax over all
references' windows together, and optionally LIIR's compactness prior at inference (spec §6.6:
per reference, where its largest probability exceeds a threshold, its window affinity is
replaced by M peak-1 Gaussians at its top-M cells). Paths: :func:`window_propagate_reference`
(dense float64, MAST's code structure), :func:`window_propagate_windowed` (tiled PyTorch, CPU
default) and a Triton kernel (CUDA default) that streams the tile's unclipped window rectangle per
reference with an online softmax (two passes when the prior is on: the joint log-sum-exp, then per
reference the soft sum, a running top-M and the Gaussian stamps). Ops
``tritoncorr::window_propagate`` / ``tritoncorr::window_propagate_windowed``. Forward only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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
    "knn_propagate",
    "knn_propagate_reference",
    "knn_propagate_dense",
    "knn_propagate_windowed",
    "window_mask",
    "window_propagate",
    "window_propagate_reference",
    "window_propagate_windowed",
    "WINDOWS",
    "MAX_TOPK",
    "MAX_LABELS",
    "MAX_RADIUS",
    "MAX_COMPACT",
    "MAX_WINDOW_LABELS",
]

WINDOWS = ("disc", "square")
MAX_TOPK = 32
MAX_LABELS = 128
MAX_RADIUS = 32
CRW_MASK = -1e10  # CRW's additive mask value (added before the division by the temperature)


# ----------------------------------------------------------------------------------------------
# validation and shared helpers
# ----------------------------------------------------------------------------------------------


def _validate_frames(query, keys, values, max_labels: int) -> None:
    """Shapes, dtypes and devices of (query (C, h, w), keys (N, C, h, w), values (N, L, h, w))."""
    check_tensor("query", query, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("keys", keys, ndim=4, dtypes=FLOAT_DTYPES, device=query.device)
    check_tensor("values", values, ndim=4, dtypes=FLOAT_DTYPES + (torch.float64,), device=query.device)
    if keys.dtype != query.dtype:
        raise TypeError(f"keys dtype {keys.dtype} differs from query dtype {query.dtype}; cast one of them")
    c, h, w = query.shape
    n = keys.shape[0]
    if min(c, h, w) < 1:
        raise ValueError(f"query must have C, h, w >= 1, got shape {tuple(query.shape)}")
    if n < 1:
        raise ValueError("keys must hold at least one context frame (N >= 1)")
    if tuple(keys.shape[1:]) != (c, h, w):
        raise ValueError(f"keys shape {tuple(keys.shape)} must be (N, C, h, w) = (N, {c}, {h}, {w}) to match query")
    if values.shape[0] != n or tuple(values.shape[2:]) != (h, w):
        raise ValueError(f"values shape {tuple(values.shape)} must be (N, L, h, w) = ({n}, L, {h}, {w})")
    if not 1 <= values.shape[1] <= max_labels:
        raise ValueError(f"number of label channels L={values.shape[1]} must be in 1..{max_labels}")


def _check_temperature(temperature) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature={temperature!r} must be a finite number > 0")


def _check_counts(counts, n: int) -> list[int] | None:
    """``counts`` (N ints >= 1, or None) -> a list of ints (or None when every count is 1)."""
    if counts is None:
        return None
    counts = [int(c) for c in counts]
    if len(counts) != n or min(counts) < 1:
        raise ValueError(f"counts={counts} must hold N={n} ints >= 1 (one per context frame)")
    return None if max(counts) == 1 else counts


def _validate(query, keys, values, radius, topk, temperature, window, unrestricted) -> None:
    _validate_frames(query, keys, values, MAX_LABELS)
    n = keys.shape[0]
    if window not in WINDOWS:
        raise ValueError(f"window={window!r} must be one of {WINDOWS}")
    if isinstance(radius, bool) or not isinstance(radius, int):
        raise TypeError(f"radius must be an int, got {type(radius).__name__}")
    lo = 1 if window == "disc" else 0
    if not lo <= radius <= MAX_RADIUS:
        raise ValueError(f"radius={radius} must be in {lo}..{MAX_RADIUS} for window={window!r}")
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= MAX_TOPK:
        raise ValueError(f"topk={topk!r} must be an int in 1..{MAX_TOPK}")
    if isinstance(unrestricted, bool) or not isinstance(unrestricted, int) or not 0 <= unrestricted <= n:
        raise ValueError(f"unrestricted={unrestricted!r} must be an int in 0..N={n}")
    _check_temperature(temperature)


def _reach(radius: int, window: str) -> int:
    """Largest |dy| (or |dx|) inside the window: disc ``d < r`` -> r - 1; square -> r."""
    return radius - 1 if window == "disc" else radius


def window_mask(qy: torch.Tensor, qx: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor, radius: int, window: str) -> torch.Tensor:
    """Bool (Q, K): key cell (ky, kx) lies in the window of query cell (qy, qx). Inputs (Q,) and (K,)."""
    dy = ky[None, :] - qy[:, None]
    dx = kx[None, :] - qx[:, None]
    if window == "disc":
        return dy * dy + dx * dx < radius * radius
    return (dy.abs() <= radius) & (dx.abs() <= radius)


def _grid(h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(h, device=device).repeat_interleave(w)
    xs = torch.arange(w, device=device).repeat(h)
    return ys, xs


# ----------------------------------------------------------------------------------------------
# reference (definition of correctness) and the CRW-style dense baseline
# ----------------------------------------------------------------------------------------------


def knn_propagate_reference(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    radius: int,
    topk: int,
    temperature: float,
    window: str = "disc",
    unrestricted: int = 1,
) -> torch.Tensor:
    """Plain float64 reference. query (C, h, w), keys (N, C, h, w), values (N, L, h, w) -> (L, h, w) fp32.

    Builds the full (h*w, N*h*w) score matrix (small inputs only). Candidates outside the window get
    ``-inf``; a stable descending sort gives the lower index on ties; only finite candidates enter
    the top-k (so ``topk`` larger than the candidate count uses all of them).
    """
    _validate(query, keys, values, radius, topk, temperature, window, unrestricted)
    c, h, w = query.shape
    n, lab = keys.shape[0], values.shape[1]
    hw = h * w
    q = query.double().reshape(c, hw).T  # (hw, C)
    k = keys.double().reshape(n, c, hw)
    scores = torch.einsum("qc,nck->qnk", q, k) / float(temperature)  # (hw, N, hw)
    ys, xs = _grid(h, w, query.device)
    inside = window_mask(ys, xs, ys, xs, radius, window)  # (hw, hw)
    allowed = torch.ones(n, dtype=torch.bool, device=query.device)
    allowed[:unrestricted] = False  # True: this frame is window-restricted
    restricted = allowed[None, :, None] & ~inside[:, None, :]
    scores = scores.masked_fill(restricted, float("-inf")).reshape(hw, n * hw)
    order = torch.sort(scores, dim=1, descending=True, stable=True)
    kk = min(topk, n * hw)
    top_v, top_i = order.values[:, :kk], order.indices[:, :kk]
    weights = torch.softmax(top_v, dim=1)  # -inf entries (fewer candidates than topk) get weight 0
    vals = values.double().permute(0, 2, 3, 1).reshape(n * hw, lab)
    out = torch.einsum("qk,qkl->ql", weights, vals[top_i])
    return out.T.reshape(lab, h, w).float()


def knn_propagate_dense(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    radius: int,
    topk: int,
    temperature: float,
    window: str = "disc",
    unrestricted: int = 1,
    chunk: int = 100,
) -> torch.Tensor:
    """CRW-style dense propagation (benchmark baseline). Shapes as :func:`knn_propagate`; -> (L, h, w) fp32.

    For chunks of ``chunk`` query positions: the dense affinity to all N*h*w candidates, an additive
    ``-1e10`` mask on the restricted frames (before the division by the temperature, as CRW),
    ``torch.topk`` (ties broken by torch, not by index), softmax, weighted label sum.
    """
    _validate(query, keys, values, radius, topk, temperature, window, unrestricted)
    c, h, w = query.shape
    n, lab = keys.shape[0], values.shape[1]
    hw = h * w
    q = query.float().reshape(c, hw).T
    k = keys.float().reshape(n, c, hw)
    vals = values.float().permute(0, 2, 3, 1).reshape(n * hw, lab)
    ys, xs = _grid(h, w, query.device)
    kk = min(topk, n * hw)
    out = torch.empty(hw, lab, dtype=torch.float32, device=query.device)
    for s in range(0, hw, chunk):
        e = min(s + chunk, hw)
        aff = torch.matmul(q[s:e], k).transpose(0, 1)  # (chunk, N, hw)
        mask = torch.where(window_mask(ys[s:e], xs[s:e], ys, xs, radius, window), 0.0, CRW_MASK)
        aff[:, unrestricted:] += mask[:, None, :]
        aff = aff.reshape(e - s, n * hw).div_(temperature)
        top_v, top_i = torch.topk(aff, kk, dim=1)
        out[s:e] = torch.einsum("qk,qkl->ql", torch.softmax(top_v, dim=1), vals[top_i])
    return out.T.reshape(lab, h, w).contiguous()


# ----------------------------------------------------------------------------------------------
# windowed PyTorch path (memory bounded): query tiles against the union of their windows
# ----------------------------------------------------------------------------------------------


def _topk_lowest_index(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row, ties broken towards the lower column. scores (Q, M) -> values, indices (Q, min(k, M)).

    ``torch.topk`` picks an arbitrary member among equal scores. Asking for k + 1 shows whether the
    k-th value is tied with a left-out one; only those rows (rare for real features, common with
    duplicated frames) are redone with a stable sort. A tie at -inf (fewer candidates than k) needs
    no fix: those entries get weight 0.
    """
    m = scores.shape[1]
    if k >= m:
        srt = torch.sort(scores, dim=1, descending=True, stable=True)
        return srt.values, srt.indices
    top_v, top_i = torch.topk(scores, k + 1, dim=1)
    fix = (top_v[:, k] == top_v[:, k - 1]) & torch.isfinite(top_v[:, k])
    top_v, top_i = top_v[:, :k], top_i[:, :k]
    if bool(fix.any()):
        rows = fix.nonzero()[:, 0]
        srt = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        top_v[rows] = srt.values[:, :k]
        top_i[rows] = srt.indices[:, :k]
    return top_v, top_i


def knn_propagate_windowed(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    radius: int,
    topk: int,
    temperature: float,
    window: str = "disc",
    unrestricted: int = 1,
    counts: list[int] | None = None,
    tile: int = 12,
    frame_chunk: int = 10,
) -> torch.Tensor:
    """Memory-bounded PyTorch path. Shapes as :func:`knn_propagate`; -> (L, h, w) fp32.

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
    _validate(query, keys, values, radius, topk, temperature, window, unrestricted)
    c, h, w = query.shape
    n, lab = keys.shape[0], values.shape[1]
    counts = _check_counts(counts, n)
    hw = h * w
    nu, nw = unrestricted, n - unrestricted
    reach = _reach(radius, window)
    dev = query.device
    out = torch.empty(lab, h, w, dtype=torch.float32, device=dev)
    vals_cl = values.permute(0, 2, 3, 1)  # (N, h, w, L) view, gathered per tile
    inv_t = 1.0 / float(temperature)
    # keys channels-last (N, h, w, C), float32, once: a window rectangle is then a few contiguous runs
    # of rw*C values (a cheap copy) and an unrestricted frame a (h*w, C) view (no copy for
    # channels-last float32 keys, as the streaming propagator passes them on CPU)
    kcl = keys.permute(0, 2, 3, 1).float()
    if not kcl.is_contiguous():
        kcl = kcl.contiguous()
    k_unres = [kcl[u].view(hw, c) for u in range(nu)]
    if counts is not None:  # slot of the first copy of each frame, and each frame's copies
        count_t = torch.tensor(counts, device=dev)
        first_slot = torch.cumsum(count_t, 0) - count_t
        copies = torch.arange(max(counts), device=dev)
    # window offsets (dy, dx) in row-major order, (1, D) each
    oy, ox = torch.meshgrid(torch.arange(-reach, reach + 1, device=dev), torch.arange(-reach, reach + 1, device=dev),
                            indexing="ij")
    in_window = window_mask(torch.zeros(1, dtype=torch.long, device=dev), torch.zeros(1, dtype=torch.long, device=dev),
                            oy.reshape(-1), ox.reshape(-1), radius, window)[0]
    off_y, off_x = oy.reshape(-1)[in_window][None, :], ox.reshape(-1)[in_window][None, :]
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
            cand_v, cand_f, cand_y, cand_x = [], [], [], []
            for u in range(nu):
                su = qt @ k_unres[u].T  # (nq, h*w)
                v_u, i_u = _topk_lowest_index(su, topk)
                del su
                _add_candidates(cand_v, cand_f, cand_y, cand_x, v_u, torch.full_like(i_u, u), i_u // w, i_u % w,
                                None if counts is None else (count_t, first_slot, copies))
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
                v_w, i_w = _topk_lowest_index(sw.view(nq, nf * n_off), topk)
                del sw
                r = cell.gather(1, i_w % n_off)
                _add_candidates(cand_v, cand_f, cand_y, cand_x, v_w, f0 + i_w // n_off, ry0 + r // rw, rx0 + r % rw,
                                None if counts is None else (count_t, first_slot, copies))
            if len(cand_v) == 1 and counts is None:
                top_v, fr, cy, cx = cand_v[0], cand_f[0], cand_y[0], cand_x[0]
            else:
                # joint top-k of the parts: order by global index, then a stable sort by score
                allv, allf, ally, allx = (torch.cat(t, dim=1) for t in (cand_v, cand_f, cand_y, cand_x))
                gid = (allf * h + ally) * w + allx
                o1 = torch.argsort(gid, dim=1)
                allv = allv.gather(1, o1)
                o2 = torch.sort(allv, dim=1, descending=True, stable=True).indices[:, :topk]
                sel = o1.gather(1, o2)
                top_v = allv.gather(1, o2)
                fr, cy, cx = allf.gather(1, sel), ally.gather(1, sel), allx.gather(1, sel)
                if counts is not None:  # context slot -> the distinct frame that fills it
                    fr = torch.searchsorted(first_slot, fr, right=True) - 1
            weights = torch.softmax(top_v, dim=1)  # (nq, k); -inf entries weigh 0
            gathered = vals_cl[fr, cy, cx].float()  # (nq, k, L)
            res = torch.einsum("qk,qkl->ql", weights, gathered)
            out[:, ty0:ty1, tx0:tx1] = res.T.reshape(lab, th, tw)
    return out


def _add_candidates(cand_v, cand_f, cand_y, cand_x, v, f, y, x, repeat) -> None:
    """Append one part's candidates (Q, k) -- scores ``v``, distinct frame ``f``, cell ``y, x`` --
    to the lists. With ``repeat = (counts, first_slot, copies)`` each candidate becomes one entry
    per context slot of its frame (frames are then named by slot; unused copies score -inf and
    weigh 0), so the joint top-k sees what the repeated frames would give."""
    if repeat is None:
        cand_v.append(v)
        cand_f.append(f)
        cand_y.append(y)
        cand_x.append(x)
        return
    count_t, first_slot, copies = repeat
    q, k = v.shape
    m = copies.numel()
    used = copies[None, None, :] < count_t[f][:, :, None]  # (Q, k, m)
    cand_v.append(v[:, :, None].expand(q, k, m).masked_fill(~used, float("-inf")).reshape(q, k * m))
    cand_f.append((first_slot[f][:, :, None] + copies).reshape(q, k * m))
    cand_y.append(y[:, :, None].expand(q, k, m).reshape(q, k * m))
    cand_x.append(x[:, :, None].expand(q, k, m).reshape(q, k * m))


# ----------------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------------


@triton.jit
def _merge_topk(s, cand, tv, ti):
    """Merge a block of scores ``s`` (BQ, BK) with candidate ids ``cand`` into the running top-k.

    ``tv``/``ti`` (BQ, KP): kept scores and ids. Every id in the block is larger than every kept id
    (candidates are visited in increasing id order), so a block score replaces the worst kept entry
    only when strictly larger; the worst kept entry is the lowest score, the highest id among ties.
    Rounds extract the block maximum (lowest id among ties) while some row can still improve.
    """
    worst = tl.min(tv, 1)
    need = tl.sum(tl.sum((s > worst[:, None]).to(tl.int32), 1), 0)
    while need > 0:
        m = tl.max(s, 1)
        sel = tl.min(tl.where(s == m[:, None], cand, 2147483647), 1)
        wid = tl.max(tl.where(tv == worst[:, None], ti, -2147483647), 1)
        rep = (ti == wid[:, None]) & (m > worst)[:, None]
        tv = tl.where(rep, m[:, None], tv)
        ti = tl.where(rep, sel[:, None], ti)
        s = tl.where(cand == sel[:, None], float("-inf"), s)
        worst = tl.min(tv, 1)
        need = tl.sum(tl.sum((s > worst[:, None]).to(tl.int32), 1), 0)
    return tv, ti


@triton.jit
def _block_scores(q_ptr, k_ptr, qy, qx, qvalid, ky, kx, kvalid, fr, C,
                  s_qc, s_qy, s_qx, s_kn, s_kc, s_ky, s_kx, inv_t,
                  BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
                  DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """Scores (BLOCK_Q, BLOCK_K) fp32 of the query tile against one block of candidates of frame ``fr``."""
    offs_c = tl.arange(0, BLOCK_C)
    q_base = q_ptr + qy.to(tl.int64) * s_qy + qx.to(tl.int64) * s_qx  # (BQ,)
    k_base = k_ptr + fr * s_kn + ky.to(tl.int64) * s_ky + kx.to(tl.int64) * s_kx  # (BK,)
    acc = tl.zeros((BLOCK_Q, BLOCK_K), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + offs_c
        cmask = cc < C
        qb = tl.load(q_base[:, None] + cc[None, :].to(tl.int64) * s_qc,
                     mask=qvalid[:, None] & cmask[None, :], other=0.0)
        kb = tl.load(k_base[None, :] + cc[:, None].to(tl.int64) * s_kc,
                     mask=cmask[:, None] & kvalid[None, :], other=0.0)
        if UPCAST_DOT:  # Triton's interpreter mis-computes bf16 tl.dot; bf16 products are exact in fp32
            qb = qb.to(tl.float32)
            kb = kb.to(tl.float32)
        acc = tl.dot(qb, kb, acc, input_precision=DOT_PRECISION)
    return acc * inv_t


@triton.jit
def _knn_propagate_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,
    H, W, C, L, N, NU, RADIUS, REACH, inv_t,
    s_qc, s_qy, s_qx,
    s_kn, s_kc, s_ky, s_kx,
    s_vn, s_vl, s_vy, s_vx,
    s_ol, s_oy, s_ox,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr, KP: tl.constexpr, TOPK: tl.constexpr, SQUARE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    """One program = one TILE_H x TILE_W tile of query pixels; writes out[:, tile] (L, TILE_H, TILE_W)."""
    BLOCK_Q: tl.constexpr = TILE_H * TILE_W
    pid = tl.program_id(0).to(tl.int64)
    tiles_w = tl.cdiv(W, TILE_W)
    ty0 = (pid // tiles_w).to(tl.int32) * TILE_H
    tx0 = (pid % tiles_w).to(tl.int32) * TILE_W
    inv_t = tl.cast(inv_t, tl.float32)
    HW = H * W

    offs_q = tl.arange(0, BLOCK_Q)
    qy = ty0 + offs_q // TILE_W
    qx = tx0 + offs_q % TILE_W
    qvalid = (qy < H) & (qx < W)
    offs_k = tl.arange(0, BLOCK_K)

    slot = tl.arange(0, KP)
    # running top-k: empty slots are -inf with distinct negative ids; padding slots (>= TOPK) are +inf
    tv = tl.where(slot < TOPK, float("-inf"), float("inf"))[None, :] + tl.zeros((BLOCK_Q, KP), tl.float32)
    ti = (-1 - slot)[None, :] + tl.zeros((BLOCK_Q, KP), tl.int32)

    # unrestricted frames: every position
    for fr in range(0, NU):
        for p0 in range(0, HW, BLOCK_K):
            kp = p0 + offs_k
            kvalid = kp < HW
            ky = kp // W
            kx = kp % W
            s = _block_scores(q_ptr, k_ptr, qy, qx, qvalid, ky, kx, kvalid, tl.cast(fr, tl.int64), C,
                              s_qc, s_qy, s_qx, s_kn, s_kc, s_ky, s_kx, inv_t,
                              BLOCK_Q, BLOCK_K, BLOCK_C, DOT_PRECISION, UPCAST_DOT)
            ok = qvalid[:, None] & kvalid[None, :]
            s = tl.where(ok, s, float("-inf"))
            cand = (fr * HW + kp)[None, :]
            tv, ti = _merge_topk(s, cand, tv, ti)

    # restricted frames: the rectangle covering the windows of the whole tile
    ry0 = tl.maximum(ty0 - REACH, 0)
    ry1 = tl.minimum(ty0 + TILE_H - 1 + REACH, H - 1)
    rx0 = tl.maximum(tx0 - REACH, 0)
    rx1 = tl.minimum(tx0 + TILE_W - 1 + REACH, W - 1)
    RW = rx1 - rx0 + 1
    RN = (ry1 - ry0 + 1) * RW
    for fr in range(NU, N):
        for j0 in range(0, RN, BLOCK_K):
            j = j0 + offs_k
            kvalid = j < RN
            ky = ry0 + j // RW
            kx = rx0 + j % RW
            s = _block_scores(q_ptr, k_ptr, qy, qx, qvalid, ky, kx, kvalid, tl.cast(fr, tl.int64), C,
                              s_qc, s_qy, s_qx, s_kn, s_kc, s_ky, s_kx, inv_t,
                              BLOCK_Q, BLOCK_K, BLOCK_C, DOT_PRECISION, UPCAST_DOT)
            dy = ky[None, :] - qy[:, None]
            dx = kx[None, :] - qx[:, None]
            if SQUARE:
                inside = (tl.abs(dy) <= RADIUS) & (tl.abs(dx) <= RADIUS)
            else:
                inside = dy * dy + dx * dx < RADIUS * RADIUS
            ok = inside & qvalid[:, None] & kvalid[None, :]
            s = tl.where(ok, s, float("-inf"))
            cand = (fr * HW + ky * W + kx)[None, :]
            tv, ti = _merge_topk(s, cand, tv, ti)

    # softmax over the kept scores, weighted sum of the candidates' labels
    used = (slot < TOPK)[None, :] & (tv > float("-inf")) & qvalid[:, None]
    mx = tl.max(tl.where(used, tv, float("-inf")), 1)
    mx = tl.where(qvalid, mx, 0.0)
    e = tl.where(used, tl.exp(tv - mx[:, None]), 0.0)
    den = tl.sum(e, 1)
    wgt = e / tl.where(den > 0, den, 1.0)[:, None]
    tid = tl.where(used, ti, 0)
    o_off = qy.to(tl.int64) * s_oy + qx.to(tl.int64) * s_ox
    offs_l = tl.arange(0, BLOCK_L)
    for l0 in range(0, L, BLOCK_L):
        ll = l0 + offs_l
        lmask = ll < L
        res = tl.zeros((BLOCK_Q, BLOCK_L), tl.float32)
        for t in tl.static_range(TOPK):
            pick = (slot == t)[None, :]
            w_t = tl.sum(tl.where(pick, wgt, 0.0), 1)  # (BQ,)
            id_t = tl.sum(tl.where(pick, tid, 0), 1)
            u_t = tl.sum(tl.where(pick & used, 1, 0), 1) > 0
            pos = id_t % HW
            v_off = (id_t // HW).to(tl.int64) * s_vn + (pos // W).to(tl.int64) * s_vy + (pos % W).to(tl.int64) * s_vx
            vals = tl.load(v_ptr + v_off[:, None] + ll[None, :].to(tl.int64) * s_vl,
                           mask=u_t[:, None] & lmask[None, :], other=0.0).to(tl.float32)
            res += w_t[:, None] * vals
        tl.store(o_ptr + o_off[:, None] + ll[None, :].to(tl.int64) * s_ol, res,
                 mask=qvalid[:, None] & lmask[None, :])


# Launch configurations (BLOCK_K, num_warps, num_stages) per feature precision; the first one is
# the fixed configuration (interpreter, TRITONCORR_AUTOTUNE=0). Checked with compile_report(): 0
# spills on sm_80/sm_90 (fp32 needs BLOCK_C=32 with 3xTF32, 16-bit features take BLOCK_C=64).
_CONFIGS = {
    "fp32": ((64, 8, 2), (128, 8, 1)),
    "16bit": ((64, 4, 2), (128, 8, 2)),
}
_TILE_H, _TILE_W = 4, 8
_BLOCK_L = 16
_AUTOTUNE_KEY = ["C", "L", "N", "NU", "REACH", "TOPK", "SQUARE", "DOT_PRECISION", "UPCAST_DOT"]
_AUTOTUNED = {
    fam: triton.autotune(
        configs=[triton.Config({"BLOCK_K": bk}, num_warps=nw, num_stages=ns) for bk, nw, ns in cfgs],
        key=_AUTOTUNE_KEY,
    )(_knn_propagate_kernel)
    for fam, cfgs in _CONFIGS.items()
}


def _family(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16bit"


def _block_c(c: int, dtype: torch.dtype) -> int:
    cap = 32 if dtype == torch.float32 else 64
    return max(16, min(cap, next_power_of_2(c)))


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 features: 3xTF32 keeps the scores close to fp32 (plain TF32 would perturb the top-k)
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _launch(query, keys, values, radius, topk, temperature, window, unrestricted, *, wrap) -> torch.Tensor:
    c, h, w = query.shape
    n, lab = keys.shape[0], values.shape[1]
    if n * h * w >= 2**31 - 1:
        raise ValueError(f"N*h*w = {n * h * w} candidates exceed the kernel's int32 candidate ids")
    out = alloc_output((lab, h, w), dtype=torch.float32, device=query.device)
    grid = (cdiv(h, _TILE_H) * cdiv(w, _TILE_W),)
    args = (
        query, keys, values, out,
        h, w, c, lab, n, unrestricted, radius, _reach(radius, window), 1.0 / float(temperature),
        *query.stride(), *keys.stride(), *values.stride(), *out.stride(),
    )
    common = dict(
        TILE_H=_TILE_H, TILE_W=_TILE_W, BLOCK_C=_block_c(c, query.dtype), BLOCK_L=_BLOCK_L,
        KP=max(2, next_power_of_2(topk)), TOPK=topk, SQUARE=window == "square",
        DOT_PRECISION=_dot_precision(query.dtype),
        UPCAST_DOT=interpreting() and query.dtype == torch.bfloat16,
    )
    fam = _family(query.dtype)
    if autotune_enabled():
        kernel = _AUTOTUNED[fam]
        (wrap(kernel) if wrap else kernel)[grid](*args, **common)
    else:
        bk, nw, ns = _CONFIGS[fam][0]
        kernel = _knn_propagate_kernel
        (wrap(kernel) if wrap else kernel)[grid](*args, **common, BLOCK_K=bk, num_warps=nw, num_stages=ns)
    return out


# ----------------------------------------------------------------------------------------------
# ops and the public function
# ----------------------------------------------------------------------------------------------


@torch.library.triton_op("tritoncorr::knn_propagate", mutates_args=())
def _knn_propagate_triton_op(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
    radius: int, topk: int, temperature: float, window: str, unrestricted: int,
) -> torch.Tensor:
    return _launch(query, keys, values, radius, topk, temperature, window, unrestricted,
                   wrap=torch.library.wrap_triton)


@torch.library.custom_op("tritoncorr::knn_propagate_windowed", mutates_args=())
def _knn_propagate_windowed_op(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
    radius: int, topk: int, temperature: float, window: str, unrestricted: int, counts: list[int] | None = None,
) -> torch.Tensor:
    return knn_propagate_windowed(query, keys, values, radius=radius, topk=topk, temperature=temperature,
                                  window=window, unrestricted=unrestricted, counts=counts)


@_knn_propagate_windowed_op.register_fake
def _(query, keys, values, radius, topk, temperature, window, unrestricted, counts=None):
    return query.new_empty((values.shape[1], query.shape[1], query.shape[2]), dtype=torch.float32)


def knn_propagate(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    radius: int,
    topk: int,
    temperature: float,
    window: str = "disc",
    unrestricted: int = 1,
    counts: list[int] | None = None,
) -> torch.Tensor:
    """kNN-softmax label propagation for one target frame (see the module docstring).

    Args:
        query: (C, h, w) features of the target frame (float32/bfloat16/float16).
        keys: (N, C, h, w) context features, same dtype as ``query``.
        values: (N, L, h, w) context labels (soft or one-hot), any float dtype, L <= 128.
        radius: window radius in feature cells (disc: 1..32, ``d < radius``; square: 0..32, ``|d| <= radius``).
        topk: 1..32 neighbours (all candidates when a query has fewer).
        temperature: scores are ``<q, k> / temperature``.
        window: ``"disc"`` (CRW/DUL) or ``"square"`` (STT).
        unrestricted: the first ``unrestricted`` context frames are searched over the whole image.
        counts: optional N ints >= 1: frame ``i`` stands for ``counts[i]`` consecutive context slots
            (the result equals passing ``keys.repeat_interleave(counts, 0)`` and the same for
            ``values``, with ``unrestricted`` counting distinct frames); the CPU path then scores each
            distinct frame once.

    Returns:
        (L, h, w) float32 propagated labels. CUDA tensors run the Triton kernel, CPU tensors the
        windowed PyTorch path (``TRITONCORR_BACKEND`` overrides; see ``kernels/_utils.py``).
    """
    _validate(query, keys, values, radius, topk, temperature, window, unrestricted)
    temperature = float(temperature)
    counts = _check_counts(counts, keys.shape[0])
    if counts is not None and use_triton(query, keys, values):  # the kernel takes the slots as they are
        reps = torch.tensor(counts, device=keys.device)
        unrestricted = sum(counts[:unrestricted])
        keys, values = keys.repeat_interleave(reps, 0), values.repeat_interleave(reps, 0)
        counts = None
    if use_triton(query, keys, values):
        if query.is_cuda:
            return torch.ops.tritoncorr.knn_propagate(query, keys, values, radius, topk, temperature, window, unrestricted)
        return _launch(query, keys, values, radius, topk, temperature, window, unrestricted, wrap=None)
    return torch.ops.tritoncorr.knn_propagate_windowed(query, keys, values, radius, topk, temperature, window,
                                                       unrestricted, counts)


# ----------------------------------------------------------------------------------------------
# ahead-of-time compile specs (the launch configurations the launcher uses)
# ----------------------------------------------------------------------------------------------


def _aot_signature(dtype: str) -> dict[str, str]:
    sig = {"q_ptr": f"*{dtype}", "k_ptr": f"*{dtype}", "v_ptr": "*fp32", "o_ptr": "*fp32"}
    for name in ("H", "W", "C", "L", "N", "NU", "RADIUS", "REACH"):
        sig[name] = "i32"
    sig["inv_t"] = "fp32"
    for name in ("s_qc", "s_qy", "s_qx", "s_kn", "s_kc", "s_ky", "s_kx",
                 "s_vn", "s_vl", "s_vy", "s_vx", "s_ol", "s_oy", "s_ox"):
        sig[name] = "i32"
    for name in ("TILE_H", "TILE_W", "BLOCK_K", "BLOCK_C", "BLOCK_L", "KP", "TOPK", "SQUARE", "DOT_PRECISION", "UPCAST_DOT"):
        sig[name] = "constexpr"
    return sig


def _aot_specs() -> list[AotSpec]:
    """DAVIS configuration (C = 256/512, L <= 16 -> one label block, topk 10): every autotune config
    of fp32 and bf16 features with the disc window, plus bf16 with the square window (STT)."""
    specs = []
    variants = [("fp32", False, 0), ("fp32", False, 1), ("bf16", False, 0), ("bf16", False, 1), ("bf16", True, 0)]
    for dtype, square, cfg in variants:
        fam = "fp32" if dtype == "fp32" else "16bit"
        bk, nw, ns = _CONFIGS[fam][cfg]
        specs.append(AotSpec(
            name=f"knn_propagate[{dtype},{'square' if square else 'disc'},BK{bk},w{nw},s{ns}]",
            fn=_knn_propagate_kernel,
            signature=_aot_signature(dtype),
            constexprs=dict(TILE_H=_TILE_H, TILE_W=_TILE_W, BLOCK_K=bk, BLOCK_C=32 if dtype == "fp32" else 64,
                            BLOCK_L=_BLOCK_L, KP=16, TOPK=10, SQUARE=square,
                            DOT_PRECISION=_dot_precision(torch.float32 if dtype == "fp32" else torch.bfloat16),
                            UPCAST_DOT=False),
            num_warps=nw, num_stages=ns,
        ))
    return specs


AOT_SPECS: list[AotSpec] = _aot_specs()


# ==============================================================================================
# full-window mode ("k = all"): MAST / LIIR propagation with a zero-border square window
# ==============================================================================================
#
# For every query pixel p of the target frame and every reference n, the window cells
# p + d, d in [-r, r]^2 (dy outer, dx inner: window index i = (dy + r) * P + (dx + r), P = 2r + 1):
#
#   logit_n(p, d) = <query(p), keys(n, p + d)> / temperature      (0 where p + d is outside the image)
#   a_n(p, d)     = softmax over ALL references' windows together (N * P^2 entries per pixel)
#   out(p)        = sum_n sum_d a'_n(p, d) * values(n, p + d)      (value 0 outside the image)
#
# Out-of-image window cells take part with logit 0 and value 0, exactly like MAST's
# ``SpatialCorrelationSampler(patch_size=P)`` (0 outside the grid) followed by a zero-padded
# ``F.unfold(values, P, padding=r)`` (LIIR spec §4.1, §8). ``a'`` is ``a`` unless the compactness
# prior is on (``compact = M`` in 1..3, LIIR spec §6.6): per reference, on its slice of the joint
# softmax, when the largest probability exceeds ``compact_threshold`` the slice is REPLACED by the
# template ``T = sum_m w_m G_{c_m}`` (top-M cells c_m, w = softmax of their M probabilities,
# G_c(u) = exp(-4 ln2 |u - c|^2) = 2^(-4 |u - c|^2), peak 1, truncated to the window, not
# renormalised; :func:`tritoncorr.methods.common.compactness_template`). Ties among equal
# probabilities (e.g. the logit-0 out-of-image cells) go to the lower window index.


MAX_COMPACT = 3
MAX_WINDOW_LABELS = 64
#: Gaussian stamp radius (cells) of the compactness template in the Triton kernel: cells further
#: than 3 from a centre (|u - c|^2 >= 16) have weight 2^-64 = 5e-20 and are left out.
COMPACT_STAMP = 3
_FOUR_LN2 = 4.0 * math.log(2.0)


def _validate_window(query, keys, values, radius, temperature, compact, compact_threshold) -> None:
    _validate_frames(query, keys, values, MAX_WINDOW_LABELS)
    if isinstance(radius, bool) or not isinstance(radius, int):
        raise TypeError(f"radius must be an int, got {type(radius).__name__}")
    if not 0 <= radius <= MAX_RADIUS:
        raise ValueError(f"radius={radius} must be in 0..{MAX_RADIUS}")
    if isinstance(compact, bool) or not isinstance(compact, int) or not 0 <= compact <= MAX_COMPACT:
        raise ValueError(f"compact={compact!r} (number of Gaussians M) must be an int in 0..{MAX_COMPACT}")
    if compact > (2 * radius + 1) ** 2:
        raise ValueError(f"compact={compact} Gaussians need at least as many window cells, radius={radius} has {(2 * radius + 1) ** 2}")
    _check_temperature(temperature)
    if not (isinstance(compact_threshold, (int, float)) and math.isfinite(compact_threshold)):
        raise ValueError(f"compact_threshold={compact_threshold!r} must be a finite number")


def window_propagate_reference(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    radius: int,
    temperature: float = 1.0,
    compact: int = 0,
    compact_threshold: float = 0.1,
) -> torch.Tensor:
    """Dense float64 reference of the full-window mode, written like MAST/LIIR's code.

    query (C, h, w), keys (N, C, h, w), values (N, L, h, w) -> (L, h, w) float32.

    Per reference: zero-padded ``F.unfold`` of the keys (the correlation sampler's 0 outside the
    grid), raw dot products / temperature -> (P*P, h*w); one softmax over the concatenation of all
    references (N*P*P, h*w); with ``compact = M > 0`` each reference's slice is replaced by
    :func:`tritoncorr.methods.common.compactness_template` where
    :func:`~tritoncorr.methods.common.compactness_mask` (max > threshold) holds; values gathered by
    zero-padded ``F.unfold``. Materialises (N*C*P*P, h*w): small inputs only. Exact ties in the
    top-M selection go to the lower window index (a 1e-12 / P^2-per-index nudge of the selection
    input; ``torch.topk`` alone leaves the choice among ties unspecified).
    """
    _validate_window(query, keys, values, radius, temperature, compact, compact_threshold)
    c, h, w = query.shape
    n, lab = keys.shape[0], values.shape[1]
    side, hw = 2 * radius + 1, h * w
    q = query.double().reshape(c, 1, hw)
    logits = []
    for i in range(n):
        kcol = F.unfold(keys[i : i + 1].double(), side, padding=radius).reshape(c, side * side, hw)
        logits.append((q * kcol).sum(0) / float(temperature))  # (P*P, hw); exactly 0 outside the image
    a = torch.softmax(torch.cat(logits, 0), dim=0).reshape(n, side * side, hw)
    if compact:
        from tritoncorr.methods.common import compactness_mask, compactness_template

        nudge = torch.arange(side * side, dtype=torch.float64, device=a.device).view(1, -1, 1) * (1e-12 / (side * side))
        tmpl = compactness_template(a - nudge, side, compact, dim=1)
        a = torch.where(compactness_mask(a, compact_threshold, dim=1), tmpl, a)
    vcol = F.unfold(values.double(), side, padding=radius).reshape(n, lab, side * side, hw)
    out = torch.einsum("npq,nlpq->lq", a, vcol)
    return out.reshape(lab, h, w).float()


def window_propagate_windowed(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    radius: int,
    temperature: float = 1.0,
    compact: int = 0,
    compact_threshold: float = 0.1,
    tile: int = 8,
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
    import torch.nn.functional as F

    from ._tiles import block_geometry, query_blocks, regions, window_in_region

    _validate_window(query, keys, values, radius, temperature, compact, compact_threshold)
    c, h, w = query.shape
    n, lab = keys.shape[0], values.shape[1]
    r = radius
    dev = query.device
    T, R, nby, nbx = block_geometry(h, w, r, tile)
    hq, wq = nby * T, nbx * T
    qp = F.pad(query.float() / float(temperature), (0, wq - w, 0, hq - h))[None]   # (1, C, hq, wq)
    kp = F.pad(keys.float(), (r, r + wq - w, r, r + hq - h))                         # (N, C, hq+2r, wq+2r)
    vp = F.pad(values.float(), (r, r + wq - w, r, r + hq - h))                       # (N, L, ...)
    win = window_in_region(T, R, r, dev)                                             # (T2, R2)
    out = torch.empty(lab, hq, wq, dtype=torch.float32, device=dev)
    if compact:
        ry = torch.arange(R, device=dev, dtype=torch.float32)
    for by in range(nby):
        y0 = by * T
        q = query_blocks(qp, y0, T, nbx)                      # (1, nbx, T2, C)
        k = regions(kp, y0, R, T, nbx)                        # (N, nbx, C, R2)
        v = regions(vp, y0, R, T, nbx).transpose(-1, -2)      # (N, nbx, R2, L)
        s = torch.matmul(q, k).masked_fill_(~win, float("-inf"))  # (N, nbx, T2, R2)
        lse = torch.logsumexp(torch.logsumexp(s, dim=-1), dim=0)   # (nbx, T2) joint over references
        if compact:
            top_s, top_i = _topk_lowest_index(s.reshape(-1, R * R), compact)
            top_s = top_s.view(n, nbx, T * T, compact)
            top_i = top_i.view(n, nbx, T * T, compact)
        p = torch.exp(s - lse[..., None])                     # joint softmax probabilities (0 off-window)
        del s
        res = torch.matmul(p, v)                              # (N, nbx, T2, L) soft window sums
        if compact:
            top_p = torch.exp(top_s - lse[..., None])         # (N, nbx, T2, M)
            conf = top_p.amax(dim=-1) > float(compact_threshold)
            wgt = torch.softmax(top_p, dim=-1)
            cy = (top_i // R).float()[..., None]              # rectangle coordinates of the centres
            cx = (top_i % R).float()[..., None]
            gy = torch.exp2(-4.0 * (ry - cy) ** 2) * wgt[..., None]   # (N, nbx, T2, M, R), exp(-4 ln2 d^2)
            gx = torch.exp2(-4.0 * (ry - cx) ** 2)
            tmpl = torch.matmul(gy.transpose(-1, -2), gx)     # (N, nbx, T2, R, R): sum_m w_m G_m(y) G_m(x)
            tmpl = tmpl.reshape(p.shape).mul_(win)
            res = torch.where(conf[..., None], torch.matmul(tmpl, v), res)
        o = res.sum(0)                                        # (nbx, T2, L)
        out[:, y0:y0 + T] = o.reshape(nbx, T, T, lab).permute(3, 1, 0, 2).reshape(lab, T, wq)
    return out[:, :h, :w].contiguous()


@triton.jit
def _window_block_scores(q_ptr, k_ptr, qy, qx, qvalid, j, RN, RW, ry0, rx0, H, W, RADIUS, fr, C,
                         s_qc, s_qy, s_qx, s_kn, s_kc, s_ky, s_kx, inv_t,
                         BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
                         DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """Scores of the tile's queries against rectangle cells ``j`` of reference ``fr``, -inf outside
    each query's window; also which cells are in the image and their clamped coordinates (for the
    value loads; out-of-image cells load zeros, the zero border)."""
    jv = j < RN
    ky = ry0 + j // RW
    kx = rx0 + j % RW
    kin = jv & (ky >= 0) & (ky < H) & (kx >= 0) & (kx < W)
    kyc = tl.minimum(tl.maximum(ky, 0), H - 1)
    kxc = tl.minimum(tl.maximum(kx, 0), W - 1)
    s = _block_scores(q_ptr, k_ptr, qy, qx, qvalid, kyc, kxc, kin, tl.cast(fr, tl.int64), C,
                      s_qc, s_qy, s_qx, s_kn, s_kc, s_ky, s_kx, inv_t,
                      BLOCK_Q, BLOCK_K, BLOCK_C, DOT_PRECISION, UPCAST_DOT)
    dy = ky[None, :] - qy[:, None]
    dx = kx[None, :] - qx[:, None]
    ok = (tl.abs(dy) <= RADIUS) & (tl.abs(dx) <= RADIUS) & jv[None, :] & qvalid[:, None]
    return tl.where(ok, s, float("-inf")), kin, kyc, kxc


@triton.jit
def _window_propagate_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,
    H, W, C, L, N, RADIUS, inv_t, threshold,
    s_qc, s_qy, s_qx,
    s_kn, s_kc, s_ky, s_kx,
    s_vn, s_vl, s_vy, s_vx,
    s_ol, s_oy, s_ox,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr, COMPACT: tl.constexpr, MP: tl.constexpr, STAMP: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
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
    pid = tl.program_id(0).to(tl.int64)
    tiles_w = tl.cdiv(W, TILE_W)
    ty0 = (pid // tiles_w).to(tl.int32) * TILE_H
    tx0 = (pid % tiles_w).to(tl.int32) * TILE_W
    inv_t = tl.cast(inv_t, tl.float32)

    offs_q = tl.arange(0, BLOCK_Q)
    qy = ty0 + offs_q // TILE_W
    qx = tx0 + offs_q % TILE_W
    qvalid = (qy < H) & (qx < W)
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
        for j0 in range(0, RN, BLOCK_K):
            s, kin, kyc, kxc = _window_block_scores(
                q_ptr, k_ptr, qy, qx, qvalid, j0 + offs_k, RN, RW, ry0, rx0, H, W, RADIUS, fr, C,
                s_qc, s_qy, s_qx, s_kn, s_kc, s_ky, s_kx, inv_t, BLOCK_Q, BLOCK_K, BLOCK_C, DOT_PRECISION, UPCAST_DOT)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            pr = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(pr, 1)
            if COMPACT == 0:
                v_off = fr * s_vn + kyc.to(tl.int64) * s_vy + kxc.to(tl.int64) * s_vx
                vb = tl.load(v_ptr + v_off[:, None] + offs_l[None, :].to(tl.int64) * s_vl,
                             mask=kin[:, None] & lmask[None, :], other=0.0).to(tl.float32)
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
            tv = tl.where(slot < COMPACT, float("-inf"), float("inf"))[None, :] + tl.zeros((BLOCK_Q, MP), tl.float32)
            ti = (-1 - slot)[None, :] + tl.zeros((BLOCK_Q, MP), tl.int32)
            soft = tl.zeros((BLOCK_Q, BLOCK_L), tl.float32)
            for j0 in range(0, RN, BLOCK_K):
                j = j0 + offs_k
                s, kin, kyc, kxc = _window_block_scores(
                    q_ptr, k_ptr, qy, qx, qvalid, j, RN, RW, ry0, rx0, H, W, RADIUS, fr, C,
                    s_qc, s_qy, s_qx, s_kn, s_kc, s_ky, s_kx, inv_t, BLOCK_Q, BLOCK_K, BLOCK_C, DOT_PRECISION, UPCAST_DOT)
                pr = tl.exp(s - lse[:, None])
                v_off = fr * s_vn + kyc.to(tl.int64) * s_vy + kxc.to(tl.int64) * s_vx
                vb = tl.load(v_ptr + v_off[:, None] + offs_l[None, :].to(tl.int64) * s_vl,
                             mask=kin[:, None] & lmask[None, :], other=0.0).to(tl.float32)
                soft = tl.dot(pr, vb, soft, input_precision="tf32x3")
                cand = j[None, :] + tl.zeros((BLOCK_Q, BLOCK_K), tl.int32)
                tv, ti = _merge_topk(s, cand, tv, ti)
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
                    ok = (conf & (tl.abs(yy - qy) <= RADIUS) & (tl.abs(xx - qx) <= RADIUS)
                          & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W))
                    yc = tl.minimum(tl.maximum(yy, 0), H - 1)
                    xc = tl.minimum(tl.maximum(xx, 0), W - 1)
                    v_off = fr * s_vn + yc.to(tl.int64) * s_vy + xc.to(tl.int64) * s_vx
                    vals = tl.load(v_ptr + v_off[:, None] + offs_l[None, :].to(tl.int64) * s_vl,
                                   mask=ok[:, None] & lmask[None, :], other=0.0).to(tl.float32)
                    stamp += (w_m * g)[:, None] * vals
            res += tl.where(conf[:, None], stamp, soft)

    o_off = qy.to(tl.int64) * s_oy + qx.to(tl.int64) * s_ox
    tl.store(o_ptr + o_off[:, None] + offs_l[None, :].to(tl.int64) * s_ol, res,
             mask=qvalid[:, None] & lmask[None, :])


# (BLOCK_K, num_warps, num_stages) per feature precision (fixed; no autotuning for this mode yet).
# compile_report(): 0 spills on sm_80/sm_90 for M = 0, 2, 3 (fp32 with BLOCK_K 64 or 4 warps spills
# in the compact pass; 16-bit with 4 warps spills at M = 3 on sm_80).
_WINDOW_CONFIGS = {"fp32": (32, 8, 2), "16bit": (64, 8, 2)}


def _window_block_l(lab: int) -> int:
    return max(16, next_power_of_2(lab))


def _window_launch(query, keys, values, radius, temperature, compact, compact_threshold, *, wrap) -> torch.Tensor:
    c, h, w = query.shape
    n, lab = keys.shape[0], values.shape[1]
    values = values.float()
    out = alloc_output((lab, h, w), dtype=torch.float32, device=query.device)
    grid = (cdiv(h, _TILE_H) * cdiv(w, _TILE_W),)
    bk, nw, ns = _WINDOW_CONFIGS[_family(query.dtype)]
    args = (
        query, keys, values, out,
        h, w, c, lab, n, radius, 1.0 / float(temperature), float(compact_threshold),
        *query.stride(), *keys.stride(), *values.stride(), *out.stride(),
    )
    kernel = _window_propagate_kernel
    (wrap(kernel) if wrap else kernel)[grid](
        *args, TILE_H=_TILE_H, TILE_W=_TILE_W, BLOCK_K=bk, BLOCK_C=_block_c(c, query.dtype),
        BLOCK_L=_window_block_l(lab), COMPACT=compact, MP=max(2, next_power_of_2(compact)), STAMP=COMPACT_STAMP,
        DOT_PRECISION=_dot_precision(query.dtype), UPCAST_DOT=interpreting() and query.dtype == torch.bfloat16,
        num_warps=nw, num_stages=ns,
    )
    return out


@torch.library.triton_op("tritoncorr::window_propagate", mutates_args=())
def _window_propagate_triton_op(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
    radius: int, temperature: float, compact: int, compact_threshold: float,
) -> torch.Tensor:
    return _window_launch(query, keys, values, radius, temperature, compact, compact_threshold,
                          wrap=torch.library.wrap_triton)


@torch.library.custom_op("tritoncorr::window_propagate_windowed", mutates_args=())
def _window_propagate_windowed_op(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
    radius: int, temperature: float, compact: int, compact_threshold: float,
) -> torch.Tensor:
    return window_propagate_windowed(query, keys, values, radius=radius, temperature=temperature,
                                     compact=compact, compact_threshold=compact_threshold)


@_window_propagate_windowed_op.register_fake
def _(query, keys, values, radius, temperature, compact, compact_threshold):
    return query.new_empty((values.shape[1], query.shape[1], query.shape[2]), dtype=torch.float32)


def window_propagate(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    radius: int,
    temperature: float = 1.0,
    compact: int = 0,
    compact_threshold: float = 0.1,
) -> torch.Tensor:
    """Full-window ("k = all") propagation for one target frame, MAST/LIIR semantics (see above).

    Args:
        query: (C, h, w) target features (float32/bfloat16/float16; MAST/LIIR: raw, not normalised).
        keys: (N, C, h, w) reference features, same dtype as ``query``.
        values: (N, L, h, w) reference labels (one-hot or soft), any float dtype, L <= 64.
        radius: square window radius r (P = 2r + 1; LIIR unofficial 14, MAST 12), 0..32.
        temperature: logits are ``<q, k> / temperature`` (MAST/LIIR: 1).
        compact: number M of Gaussians of the compactness prior (0 = off; LIIR 2), at most 3.
        compact_threshold: a reference's slice is replaced where its max probability exceeds this (0.1).

    Returns:
        (L, h, w) float32. CUDA tensors run the Triton kernel, CPU tensors the tiled PyTorch path
        (``TRITONCORR_BACKEND`` overrides).
    """
    _validate_window(query, keys, values, radius, temperature, compact, compact_threshold)
    temperature, compact_threshold = float(temperature), float(compact_threshold)
    if use_triton(query, keys, values):
        if query.is_cuda:
            return torch.ops.tritoncorr.window_propagate(query, keys, values, radius, temperature, compact, compact_threshold)
        return _window_launch(query, keys, values, radius, temperature, compact, compact_threshold, wrap=None)
    return torch.ops.tritoncorr.window_propagate_windowed(query, keys, values, radius, temperature, compact, compact_threshold)


def _window_aot_signature(dtype: str) -> dict[str, str]:
    sig = {"q_ptr": f"*{dtype}", "k_ptr": f"*{dtype}", "v_ptr": "*fp32", "o_ptr": "*fp32"}
    for name in ("H", "W", "C", "L", "N", "RADIUS"):
        sig[name] = "i32"
    sig["inv_t"] = "fp32"
    sig["threshold"] = "fp32"
    for name in ("s_qc", "s_qy", "s_qx", "s_kn", "s_kc", "s_ky", "s_kx",
                 "s_vn", "s_vl", "s_vy", "s_vx", "s_ol", "s_oy", "s_ox"):
        sig[name] = "i32"
    for name in ("TILE_H", "TILE_W", "BLOCK_K", "BLOCK_C", "BLOCK_L", "COMPACT", "MP", "STAMP", "DOT_PRECISION", "UPCAST_DOT"):
        sig[name] = "constexpr"
    return sig


def _window_aot_specs() -> list[AotSpec]:
    """LIIR/MAST DAVIS configuration (C = 64, L <= 16 -> BLOCK_L 16): fp32 and bf16 features, the
    compactness prior off (MAST) and with M = 2 (LIIR) and M = 3."""
    specs = []
    for dtype in ("fp32", "bf16"):
        bk, nw, ns = _WINDOW_CONFIGS["fp32" if dtype == "fp32" else "16bit"]
        for compact in (0, 2, 3):
            specs.append(AotSpec(
                name=f"window_propagate[{dtype},M{compact},BK{bk},w{nw},s{ns}]",
                fn=_window_propagate_kernel,
                signature=_window_aot_signature(dtype),
                constexprs=dict(TILE_H=_TILE_H, TILE_W=_TILE_W, BLOCK_K=bk, BLOCK_C=32 if dtype == "fp32" else 64,
                                BLOCK_L=16, COMPACT=compact, MP=max(2, next_power_of_2(compact)), STAMP=COMPACT_STAMP,
                                DOT_PRECISION=_dot_precision(torch.float32 if dtype == "fp32" else torch.bfloat16),
                                UPCAST_DOT=False),
                num_warps=nw, num_stages=ns,
            ))
    return specs


AOT_SPECS += _window_aot_specs()

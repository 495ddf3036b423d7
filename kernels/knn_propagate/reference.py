"""kNN-softmax propagation: the contract (argument checks) and the plain PyTorch definition of correctness.

* :func:`knn_propagate_reference` - float64, stable sort; builds the full (h*w, N*h*w) score
  matrix: small inputs only. Every other path is tested against it.
* :func:`knn_propagate_dense` - the CRW-style computation (dense affinity to all N*h*w candidates
  in chunks of 100 queries, additive -1e10 mask, ``torch.topk``); the benchmark baseline.
* :class:`KnnSearch`: the settings (radius, topk, temperature, window, unrestricted) every path
  takes, checked once where they are built; :data:`OP_SETTINGS`: the same settings in the ops' schemas.
* :func:`window_mask`, :func:`check_counts`: the window geometry and the repeated-frames check every
  path shares.

Shapes: query (C, h, w), keys (N, C, h, w), values (N, L, h, w) -> (L, h, w) float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._utils import MAX_RADIUS, check_frames, check_int, check_temperature

__all__ = [
    "KnnSearch",
    "OP_SETTINGS",
    "knn_propagate_reference",
    "knn_propagate_dense",
    "window_mask",
    "check_counts",
    "WINDOWS",
    "MAX_TOPK",
    "MAX_LABELS",
    "MAX_RADIUS",
    "CRW_MASK",
]

WINDOWS = ("disc", "square")
MAX_TOPK = 32
MAX_LABELS = 128
CRW_MASK = -1e10  # CRW's additive mask value (added before the division by the temperature)


@dataclass(frozen=True)
class KnnSearch:
    """The settings of one kNN propagation; every path (reference, dense, windowed, Triton) takes one.

    Construction checks the values (``ValueError``/``TypeError`` naming the field); :meth:`check` adds
    the checks that need the tensors. The fields are the public
    :func:`~tritoncorr.kernels.knn_propagate.knn_propagate`'s keyword arguments, in the order of the
    ops' settings arguments (:data:`OP_SETTINGS`, :meth:`op_args`).

    Attributes:
        radius: window radius in feature cells (disc: 1..32, ``d < radius``; square: 0..32, ``|d| <= radius``).
        topk: 1..32 neighbours (all candidates when a query has fewer).
        temperature: scores are ``<q, k> / temperature``; finite, > 0, stored as a float.
        window: ``"disc"`` (CRW/DUL) or ``"square"`` (STT).
        unrestricted: the first ``unrestricted`` context frames are searched over the whole image
            (>= 0; at most N, the number of context frames, checked by :meth:`check`).
    """

    radius: int
    topk: int
    temperature: float
    window: str = "disc"
    unrestricted: int = 1

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ValueError(f"window={self.window!r} must be one of {WINDOWS}")
        lowest_radius = 1 if self.window == "disc" else 0
        check_int("radius", self.radius, lowest_radius, MAX_RADIUS, what=f" for window={self.window!r}")
        check_int("topk", self.topk, 1, MAX_TOPK)
        check_int("unrestricted", self.unrestricted, 0, None, what=" (the number of context frames searched globally)")
        object.__setattr__(self, "temperature", check_temperature(self.temperature))

    def check(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """The checks that need the tensors: query (C, h, w), keys (N, C, h, w) of one float dtype,
        values (N, L, h, w) with L <= :data:`MAX_LABELS`, all on one device; ``unrestricted <= N``."""
        check_frames(query, keys, values, MAX_LABELS)
        n = keys.shape[0]
        check_int("unrestricted", self.unrestricted, 0, n, what=" (N, the number of context frames)")

    @property
    def reach(self) -> int:
        """Largest |dy| (or |dx|) inside the window: disc ``d < r`` -> r - 1; square -> r."""
        return self.radius - 1 if self.window == "disc" else self.radius

    def op_args(self) -> tuple[int, int, float, str, int]:
        """The settings as the ops take them, after the three tensors (see :data:`OP_SETTINGS`)."""
        return (self.radius, self.topk, self.temperature, self.window, self.unrestricted)


#: The settings arguments of the ops ``tritoncorr::knn_propagate`` and
#: ``tritoncorr::knn_propagate_windowed`` (schema syntax; ``int`` is ``SymInt`` as torch.library infers
#: it): :class:`KnnSearch`'s fields in order, as :meth:`KnnSearch.op_args` gives them. torch.library
#: ops take primitives, not the dataclass.
OP_SETTINGS = "SymInt radius, SymInt topk, float temperature, str window, SymInt unrestricted"


def check_counts(counts, n: int) -> list[int] | None:
    """``counts`` (N ints >= 1, or None) -> a list of ints (or None when every count is 1)."""
    if counts is None:
        return None
    counts = [int(c) for c in counts]
    if len(counts) != n or min(counts) < 1:
        raise ValueError(f"counts={counts} must hold N={n} ints >= 1 (one per context frame)")
    return None if max(counts) == 1 else counts


def window_mask(
    qy: torch.Tensor, qx: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor, radius: int, window: str
) -> torch.Tensor:
    """Bool (Q, K): key cell (ky, kx) lies in the window of query cell (qy, qx). Inputs (Q,) and (K,)."""
    dy = ky[None, :] - qy[:, None]
    dx = kx[None, :] - qx[:, None]
    if window == "disc":
        return dy * dy + dx * dx < radius * radius
    return (dy.abs() <= radius) & (dx.abs() <= radius)


def grid(h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-major cell coordinates (ys, xs), each (h*w,)."""
    ys = torch.arange(h, device=device).repeat_interleave(w)
    xs = torch.arange(w, device=device).repeat(h)
    return ys, xs


def knn_propagate_reference(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, search: KnnSearch
) -> torch.Tensor:
    """Plain float64 reference. query (C, h, w), keys (N, C, h, w), values (N, L, h, w) -> (L, h, w) fp32.

    Builds the full (h*w, N*h*w) score matrix (small inputs only). Candidates outside the window get
    ``-inf``; a stable descending sort gives the lower index on ties; only finite candidates enter
    the top-k (so ``topk`` larger than the candidate count uses all of them).
    """
    search.check(query, keys, values)
    c, h, w = query.shape
    n, lab = keys.shape[0], values.shape[1]
    hw = h * w
    q = query.double().reshape(c, hw).T  # (hw, C)
    k = keys.double().reshape(n, c, hw)
    scores = torch.einsum("qc,nck->qnk", q, k) / search.temperature  # (hw, N, hw)
    ys, xs = grid(h, w, query.device)
    inside = window_mask(ys, xs, ys, xs, search.radius, search.window)  # (hw, hw)
    allowed = torch.ones(n, dtype=torch.bool, device=query.device)
    allowed[: search.unrestricted] = False  # True: this frame is window-restricted
    restricted = allowed[None, :, None] & ~inside[:, None, :]
    scores = scores.masked_fill(restricted, float("-inf")).reshape(hw, n * hw)
    order = torch.sort(scores, dim=1, descending=True, stable=True)
    kk = min(search.topk, n * hw)
    top_v, top_i = order.values[:, :kk], order.indices[:, :kk]
    weights = torch.softmax(top_v, dim=1)  # -inf entries (fewer candidates than topk) get weight 0
    vals = values.double().permute(0, 2, 3, 1).reshape(n * hw, lab)
    out = torch.einsum("qk,qkl->ql", weights, vals[top_i])
    return out.T.reshape(lab, h, w).float()


def knn_propagate_dense(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, search: KnnSearch, *, chunk: int = 100
) -> torch.Tensor:
    """CRW-style dense propagation (benchmark baseline). Shapes as :func:`knn_propagate`; -> (L, h, w) fp32.

    For chunks of ``chunk`` query positions: the dense affinity to all N*h*w candidates, an additive
    ``-1e10`` mask on the restricted frames (before the division by the temperature, as CRW),
    ``torch.topk`` (ties broken by torch, not by index), softmax, weighted label sum.
    """
    search.check(query, keys, values)
    c, h, w = query.shape
    n, lab = keys.shape[0], values.shape[1]
    hw = h * w
    q = query.float().reshape(c, hw).T
    k = keys.float().reshape(n, c, hw)
    vals = values.float().permute(0, 2, 3, 1).reshape(n * hw, lab)
    ys, xs = grid(h, w, query.device)
    kk = min(search.topk, n * hw)
    out = torch.empty(hw, lab, dtype=torch.float32, device=query.device)
    for s in range(0, hw, chunk):
        e = min(s + chunk, hw)
        aff = torch.matmul(q[s:e], k).transpose(0, 1)  # (chunk, N, hw)
        mask = torch.where(window_mask(ys[s:e], xs[s:e], ys, xs, search.radius, search.window), 0.0, CRW_MASK)
        aff[:, search.unrestricted :] += mask[:, None, :]
        aff = aff.reshape(e - s, n * hw).div_(search.temperature)
        top_v, top_i = torch.topk(aff, kk, dim=1)
        out[s:e] = torch.einsum("qk,qkl->ql", torch.softmax(top_v, dim=1), vals[top_i])
    return out.T.reshape(lab, h, w).contiguous()

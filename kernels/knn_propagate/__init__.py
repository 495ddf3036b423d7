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

Settings: :class:`KnnSearch` (``radius, topk, temperature, window, unrestricted``, checked when it is
built) is what every internal path takes; :func:`knn_propagate` builds it from its keyword arguments.

Paths:

* :func:`knn_propagate_reference` - the definition of correctness (float64, stable sort); builds
  the full (h*w, N*h*w) score matrix: small inputs only.
* :func:`knn_propagate_dense` - the CRW-style computation (dense affinity to all N*h*w candidates in
  chunks of 100 queries, additive -1e10 mask, ``torch.topk``); the benchmark baseline.
* :func:`knn_propagate_windowed` (``torch_path.py``, default for CPU tensors): query tiles
  against the union of their windows (one GEMM per tile), plus the unrestricted frames; never the
  full affinity.
* the Triton kernel (``triton_kernels.py``, default for CUDA tensors): per program an 8 x 8 tile of
  query pixels, ``tl.dot`` over channel blocks against blocks of window candidates, a running top-k
  in registers, then the softmax and the label gather; the affinity is never written to memory.

Ops: ``tritoncorr::knn_propagate`` (``triton_op``, CUDA) and ``tritoncorr::knn_propagate_windowed``
(``custom_op`` running the windowed PyTorch path, with a fake implementation). Forward only. Ops take
primitives: the settings travel as ``KnnSearch.op_args()``, the fields in order (the windowed op's
schema spells them as :data:`~.reference.OP_SETTINGS`, the ``triton_op`` infers its own from its
annotated signature).
The ``triton_op`` is registered when ``triton_kernels`` is first imported (first Triton launch):
importing this package and the PyTorch paths never import Triton.

Full-window propagation ("k = all", MAST / LIIR) is the sibling family
:mod:`tritoncorr.kernels.window_propagate`; its public functions are re-exported here.
"""

from __future__ import annotations

import torch

from .._utils import use_triton
from ..window_propagate import window_propagate, window_propagate_reference, window_propagate_windowed
from .reference import (
    CRW_MASK,
    MAX_LABELS,
    MAX_RADIUS,
    MAX_TOPK,
    OP_SETTINGS,
    WINDOWS,
    KnnSearch,
    check_counts,
    knn_propagate_dense,
    knn_propagate_reference,
    window_mask,
)
from .torch_path import knn_propagate_windowed

__all__ = [
    "knn_propagate",
    "KnnSearch",
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
    "CRW_MASK",
]


@torch.library.custom_op(
    "tritoncorr::knn_propagate_windowed",
    mutates_args=(),
    schema=f"(Tensor query, Tensor keys, Tensor values, {OP_SETTINGS}, SymInt[]? counts=None) -> Tensor",
)
def _knn_propagate_windowed_op(query, keys, values, radius, topk, temperature, window, unrestricted, counts=None):
    search = KnnSearch(radius, topk, temperature, window, unrestricted)
    return knn_propagate_windowed(query, keys, values, search, counts=counts)


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
    search = KnnSearch(radius, topk, temperature, window, unrestricted)
    search.check(query, keys, values)
    counts = check_counts(counts, keys.shape[0])
    if use_triton(query, keys, values):
        return _kernels().run(query, keys, values, search, counts)
    return torch.ops.tritoncorr.knn_propagate_windowed(query, keys, values, *search.op_args(), counts)


def _kernels():
    """The ``triton_kernels`` module: imports Triton and registers the family's ``triton_op`` on first
    use (an import statement, which ``torch.compile`` can trace, unlike ``importlib``)."""
    from . import triton_kernels

    return triton_kernels

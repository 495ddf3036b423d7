"""Full-window ("k = all") label propagation, MAST / LIIR semantics, with LIIR's compactness prior.

A zero-border square window. For every query pixel p of the target frame and every reference n, the window cells
p + d, d in [-r, r]^2 (dy outer, dx inner: window index i = (dy + r) * P + (dx + r), P = 2r + 1):

  logit_n(p, d) = <query(p), keys(n, p + d)> / temperature      (0 where p + d is outside the image)
  a_n(p, d)     = softmax over ALL references' windows together (N * P^2 entries per pixel)
  out(p)        = sum_n sum_d a'_n(p, d) * values(n, p + d)      (value 0 outside the image)

Out-of-image window cells take part with logit 0 and value 0, exactly like MAST's
``SpatialCorrelationSampler(patch_size=P)`` (0 outside the grid) followed by a zero-padded
``F.unfold(values, P, padding=r)`` (LIIR spec §4.1, §8). ``a'`` is ``a`` unless the compactness
prior is on (``compact = M`` in 1..3, LIIR spec §6.6): per reference, on its slice of the joint
softmax, when the largest probability exceeds ``compact_threshold`` the slice is REPLACED by the
template ``T = sum_m w_m G_{c_m}`` (top-M cells c_m, w = softmax of their M probabilities,
G_c(u) = exp(-4 ln2 |u - c|^2) = 2^(-4 |u - c|^2), peak 1, truncated to the window, not
renormalised; :func:`~tritoncorr.kernels.window_propagate.compactness.compactness_template`).
Ties among equal probabilities (e.g. the logit-0 out-of-image cells) go to the lower window index.

Settings: :class:`WindowSearch` (``radius, temperature, compact, compact_threshold``, checked when it
is built) is what every internal path takes; :func:`window_propagate` builds it from its keyword
arguments.

Paths (all tested against the reference):

* :func:`window_propagate_reference` (``reference.py``): dense float64, MAST's code structure.
* :func:`window_propagate_windowed` (``torch_path.py``, default for CPU tensors): tiled GEMMs, the
  (N*P^2, h*w) volume never exists.
* the Triton kernel (``triton_kernels.py``, default for CUDA tensors): per program an 8 x 8 tile
  of query pixels streams its unclipped window rectangle per reference with an online softmax (two
  passes when the prior is on: the joint log-sum-exp, then per reference the soft sum, a running
  top-M and the Gaussian stamps).

Ops ``tritoncorr::window_propagate`` (``triton_op``, registered when ``triton_kernels`` is first
imported) / ``tritoncorr::window_propagate_windowed`` (``custom_op``). Forward only. Ops take
primitives: the settings travel as ``WindowSearch.op_args()``, the fields in order (the windowed op's
schema spells them as :data:`~.reference.OP_SETTINGS`, the ``triton_op`` infers its own from its
annotated signature).
"""

from __future__ import annotations

import torch

from .._utils import use_triton
from .compactness import compactness_mask, compactness_template
from .reference import MAX_COMPACT, MAX_WINDOW_LABELS, OP_SETTINGS, WindowSearch, window_propagate_reference
from .torch_path import window_propagate_windowed

__all__ = [
    "window_propagate",
    "WindowSearch",
    "window_propagate_reference",
    "window_propagate_windowed",
    "compactness_template",
    "compactness_mask",
    "MAX_COMPACT",
    "MAX_WINDOW_LABELS",
]


@torch.library.custom_op(
    "tritoncorr::window_propagate_windowed",
    mutates_args=(),
    schema=f"(Tensor query, Tensor keys, Tensor values, {OP_SETTINGS}) -> Tensor",
)
def _window_propagate_windowed_op(query, keys, values, radius, temperature, compact, compact_threshold):
    search = WindowSearch(radius, temperature, compact, compact_threshold)
    return window_propagate_windowed(query, keys, values, search)


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
    search = WindowSearch(radius, temperature, compact, compact_threshold)
    search.check(query, keys, values)
    if use_triton(query, keys, values):
        return _kernels().run(query, keys, values, search)
    return torch.ops.tritoncorr.window_propagate_windowed(query, keys, values, *search.op_args())


def _kernels():
    """The ``triton_kernels`` module: imports Triton and registers the family's ``triton_op`` on first
    use (an import statement, which ``torch.compile`` can trace, unlike ``importlib``)."""
    from . import triton_kernels

    return triton_kernels

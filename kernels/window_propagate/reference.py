"""Full-window propagation: the contract (argument checks) and the plain PyTorch definition of correctness.

* :class:`WindowSearch`: the settings (radius, temperature, compact, compact_threshold) every path
  takes, checked once where they are built; :data:`OP_SETTINGS`: the same settings in the ops' schemas.
* :func:`window_propagate_reference`: dense float64, written like MAST/LIIR's code; every other
  path is tested against it.

Shapes: query (C, h, w), keys (N, C, h, w), values (N, L, h, w) -> (L, h, w) float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._utils import MAX_RADIUS, check_frames, check_int, check_temperature
from .compactness import compactness_mask, compactness_template

__all__ = ["WindowSearch", "OP_SETTINGS", "window_propagate_reference", "MAX_COMPACT", "MAX_WINDOW_LABELS"]

MAX_COMPACT = 3
MAX_WINDOW_LABELS = 64


@dataclass(frozen=True)
class WindowSearch:
    """The settings of one full-window propagation; every path (reference, windowed, Triton) takes one.

    Construction checks the values (``ValueError``/``TypeError`` naming the field); :meth:`check` adds
    the checks that need the tensors. The fields are the public
    :func:`~tritoncorr.kernels.window_propagate.window_propagate`'s keyword arguments, in the order of
    the ops' settings arguments (:data:`OP_SETTINGS`, :meth:`op_args`).

    Attributes:
        radius: square window radius r, 0..32 (:attr:`side` P = 2r + 1).
        temperature: logits are ``<q, k> / temperature``; finite, > 0, stored as a float.
        compact: the number M of Gaussians of the compactness prior, 0 (off) .. 3, at most P^2.
        compact_threshold: a reference's slice is replaced where its max probability exceeds this;
            finite, stored as a float.
    """

    radius: int
    temperature: float = 1.0
    compact: int = 0
    compact_threshold: float = 0.1

    def __post_init__(self) -> None:
        check_int("radius", self.radius, 0, MAX_RADIUS)
        check_int("compact", self.compact, 0, MAX_COMPACT, what=" (the number of Gaussians M)")
        cells = self.side**2
        if self.compact > cells:
            raise ValueError(
                f"compact={self.compact} Gaussians need at least as many window cells, radius={self.radius} has {cells}"
            )
        object.__setattr__(self, "temperature", check_temperature(self.temperature))
        threshold = self.compact_threshold
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
            raise ValueError(f"compact_threshold={threshold!r} must be a finite number")
        object.__setattr__(self, "compact_threshold", float(threshold))

    @property
    def side(self) -> int:
        """The window side P = 2r + 1."""
        return 2 * self.radius + 1

    def check(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """The checks that need the tensors: query (C, h, w), keys (N, C, h, w) of one float dtype,
        values (N, L, h, w) with L <= :data:`MAX_WINDOW_LABELS`, all on one device."""
        check_frames(query, keys, values, MAX_WINDOW_LABELS)

    def op_args(self) -> tuple[int, float, int, float]:
        """The settings as the ops take them, after the three tensors (see :data:`OP_SETTINGS`)."""
        return (self.radius, self.temperature, self.compact, self.compact_threshold)


#: The settings arguments of the ops ``tritoncorr::window_propagate`` and
#: ``tritoncorr::window_propagate_windowed`` (schema syntax; ``int`` is ``SymInt`` as torch.library
#: infers it): :class:`WindowSearch`'s fields in order, as :meth:`WindowSearch.op_args` gives them.
OP_SETTINGS = "SymInt radius, float temperature, SymInt compact, float compact_threshold"


def window_propagate_reference(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, search: WindowSearch
) -> torch.Tensor:
    """Dense float64 reference of the full-window mode, written like MAST/LIIR's code.

    query (C, h, w), keys (N, C, h, w), values (N, L, h, w) -> (L, h, w) float32.

    Per reference: zero-padded ``F.unfold`` of the keys (the correlation sampler's 0 outside the
    grid), raw dot products / temperature -> (P*P, h*w); one softmax over the concatenation of all
    references (N*P*P, h*w); with ``compact = M > 0`` each reference's slice is replaced by
    :func:`~.compactness.compactness_template` where
    :func:`~.compactness.compactness_mask` (max > threshold) holds; values gathered by
    zero-padded ``F.unfold``. Materialises (N*C*P*P, h*w): small inputs only. Exact ties in the
    top-M selection go to the lower window index (a 1e-12 / P^2-per-index nudge of the selection
    input; ``torch.topk`` alone leaves the choice among ties unspecified).
    """
    search.check(query, keys, values)
    c, h, w = query.shape
    n, lab = keys.shape[0], values.shape[1]
    radius, side, hw = search.radius, search.side, h * w
    q = query.double().reshape(c, 1, hw)
    logits = []
    for i in range(n):
        kcol = F.unfold(keys[i : i + 1].double(), side, padding=radius).reshape(c, side * side, hw)
        logits.append((q * kcol).sum(0) / search.temperature)  # (P*P, hw); exactly 0 outside the image
    a = torch.softmax(torch.cat(logits, 0), dim=0).reshape(n, side * side, hw)
    if search.compact:
        nudge = torch.arange(side * side, dtype=torch.float64, device=a.device).view(1, -1, 1) * (1e-12 / (side * side))
        tmpl = compactness_template(a - nudge, side, search.compact, dim=1)
        a = torch.where(compactness_mask(a, search.compact_threshold, dim=1), tmpl, a)
    vcol = F.unfold(values.double(), side, padding=radius).reshape(n, lab, side * side, hw)
    out = torch.einsum("npq,nlpq->lq", a, vcol)
    return out.reshape(lab, h, w).float()

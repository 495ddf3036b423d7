"""Full-window propagation: the contract (argument checks) and the plain PyTorch definition of correctness.

:func:`window_propagate_reference` is dense float64, written like MAST/LIIR's code; every other
path is tested against it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._utils import MAX_RADIUS, check_frames, check_int, check_temperature
from .compactness import compactness_mask, compactness_template

__all__ = ["window_propagate_reference", "validate", "MAX_COMPACT", "MAX_WINDOW_LABELS"]

MAX_COMPACT = 3
MAX_WINDOW_LABELS = 64


def validate(query, keys, values, radius, temperature, compact, compact_threshold) -> None:
    """Raise a clear error for any argument outside the op's domain (see :func:`window_propagate`)."""
    check_frames(query, keys, values, MAX_WINDOW_LABELS)
    check_int("radius", radius, 0, MAX_RADIUS)
    check_int("compact", compact, 0, MAX_COMPACT, what=" (the number of Gaussians M)")
    if compact > (2 * radius + 1) ** 2:
        raise ValueError(
            f"compact={compact} Gaussians need at least as many window cells, "
            f"radius={radius} has {(2 * radius + 1) ** 2}"
        )
    check_temperature(temperature)
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
    :func:`~.compactness.compactness_template` where
    :func:`~.compactness.compactness_mask` (max > threshold) holds; values gathered by
    zero-padded ``F.unfold``. Materialises (N*C*P*P, h*w): small inputs only. Exact ties in the
    top-M selection go to the lower window index (a 1e-12 / P^2-per-index nudge of the selection
    input; ``torch.topk`` alone leaves the choice among ties unspecified).
    """
    validate(query, keys, values, radius, temperature, compact, compact_threshold)
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
        nudge = torch.arange(side * side, dtype=torch.float64, device=a.device).view(1, -1, 1) * (1e-12 / (side * side))
        tmpl = compactness_template(a - nudge, side, compact, dim=1)
        a = torch.where(compactness_mask(a, compact_threshold, dim=1), tmpl, a)
    vcol = F.unfold(values.double(), side, padding=radius).reshape(n, lab, side * side, hw)
    out = torch.einsum("npq,nlpq->lq", a, vcol)
    return out.reshape(lab, h, w).float()

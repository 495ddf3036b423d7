"""LIIR's spatial compactness prior, in plain PyTorch (used by LIIR training and the window-propagation reference).

* :func:`compactness_template`: M peak-1 Gaussians at the top-M window cells, mixture weights the
  softmax of their probabilities.
* :func:`compactness_mask`: the confident query pixels (max probability above a threshold).
"""

from __future__ import annotations

import math

import torch

__all__ = ["compactness_template", "compactness_mask"]


#: ``4 ln 2``: a Gaussian ``exp(-4 ln2 d^2 / sigma^2)`` has full width at half maximum ``sigma``.
_FOUR_LN2 = 4.0 * math.log(2.0)


def compactness_template(
    prob: torch.Tensor,
    window_side: int,
    m: int = 2,
    *,
    sigma: float = 1.0,
    dim: int = 1,
) -> torch.Tensor:
    """LIIR's spatial compactness template: M peak-1 Gaussians at the M strongest window cells.

    For every query pixel, with ``a`` its window probabilities (``P*P`` cells, ``P = window_side``)
    (LIIR spec §6, unofficial code ``colorizer_momen.py`` ``make_gaussian`` + compact branch):

    1. ``v_1..v_M, n_1..n_M`` = top-M values of ``stop_grad(a)`` and their window indices;
    2. mixture weights ``w = softmax(v_1..v_M)`` (a softmax OF the probabilities, not ``v / sum v``);
    3. centres ``c_j = (x_j, y_j) = (n_j mod P, n_j div P)`` (integer window cells, no soft-argmax);
    4. ``T(n) = sum_j w_j exp(-4 ln2 ((x_n - x_j)^2 + (y_n - y_j)^2) / sigma^2)`` with
       ``(x_n, y_n) = (n mod P, n div P)``; peak 1 at each centre, not sum-normalised.

    Window index order: ``n = y * P + x`` with ``y = dy + r`` the row (outer) and ``x = dx + r`` the
    column (inner), i.e. dy outer, dx inner, the order of ``F.unfold`` and of
    :func:`tritoncorr.kernels.local_correlation`.

    Args:
        prob: ``(N, P*P, ...)`` window probabilities (any trailing dims, e.g. ``(B, P*P, h, w)`` or
            ``(B, P*P, h*w)``); the window axis is ``dim`` (default 1). Treated as detached.
        window_side: ``P = 2r + 1``.
        m: number of Gaussians M (1 <= M <= P*P; M = 2 is LIIR's setting).
        sigma: full width at half maximum in window cells (1 in LIIR).
        dim: the window axis of ``prob``.

    Returns:
        the template, same shape and dtype as ``prob``, no gradient.
    """
    side = int(window_side)
    dim = dim % prob.dim()
    if prob.shape[dim] != side * side:
        raise ValueError(f"prob has {prob.shape[dim]} window cells on dim {dim}, expected P*P = {side * side}")
    m = int(m)
    if not 1 <= m <= side * side:
        raise ValueError(f"m (number of Gaussians) must be in [1, {side * side}], got {m}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    with torch.no_grad():
        a = prob.detach().movedim(dim, -1)  # (..., P*P)
        values, index = torch.topk(a, m, dim=-1, largest=True, sorted=False)  # (..., M)
        weights = torch.softmax(values, dim=-1)
        cells = torch.arange(side * side, device=prob.device)
        yn = (cells // side).to(a.dtype)
        xn = (cells % side).to(a.dtype)
        template = torch.zeros_like(a)
        for j in range(m):
            cy = (index[..., j : j + 1] // side).to(a.dtype)
            cx = (index[..., j : j + 1] % side).to(a.dtype)
            d2 = (xn - cx) ** 2 + (yn - cy) ** 2
            template += weights[..., j : j + 1] * torch.exp(-_FOUR_LN2 * d2 / (sigma * sigma))
        return template.movedim(-1, dim)


def compactness_mask(prob: torch.Tensor, threshold: float, *, dim: int = 1) -> torch.Tensor:
    """Confident query pixels of the compactness prior: ``max_n stop_grad(a)(n) > threshold``.

    Args:
        prob: ``(N, P*P, ...)`` window probabilities, window axis ``dim``.
        threshold: 0.5 in LIIR training, 0.1 at inference (liir.md §6).

    Returns:
        bool, ``prob``'s shape with the window axis kept as size 1 (broadcasts against ``prob``).
    """
    return prob.detach().amax(dim=dim, keepdim=True) > float(threshold)

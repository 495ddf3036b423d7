"""Plain-PyTorch definitions of windowed correlation and local attention (the definition of correctness).

Both materialise the whole ``(B, (2r+1)^2, H, W)`` volume through ``F.unfold``: use them on small
inputs only (tests, benchmarks). Window index ``n = (dy + r) * (2r + 1) + (dx + r)`` (dy outer, dx
inner, like ``F.unfold``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BORDERS = ("truncate", "zero")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def local_correlation_reference(
    query: torch.Tensor, key: torch.Tensor, radius: int, *, dilation: int = 1
) -> torch.Tensor:
    """``(B, C, H, W), (B, C, H, W) -> (B, (2r+1)^2, H, W)`` via ``F.unfold`` with zero padding.

    Computed in float32 (float64 for float64 inputs); returned in that accumulation dtype.
    """
    B, C, H, W = query.shape
    P = 2 * radius + 1
    acc = acc_dtype(query.dtype)
    cols = F.unfold(key.to(acc), kernel_size=P, dilation=dilation, padding=radius * dilation)  # (B, C*P*P, H*W)
    cols = cols.view(B, C, P * P, H, W)
    return (query.to(acc).unsqueeze(2) * cols).sum(1)


def window_valid(H: int, W: int, radius: int, dilation: int, device) -> torch.Tensor:
    """``(P*P, H, W)`` bool: True where the window cell lies inside the image."""
    P = 2 * radius + 1
    ones = torch.ones(1, 1, H, W, device=device)
    cols = F.unfold(ones, kernel_size=P, dilation=dilation, padding=radius * dilation)
    return cols.view(P * P, H, W) > 0.5


def local_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    radius: int,
    *,
    scale: float = 1.0,
    border: str = "truncate",
    return_lse: bool = False,
):
    """Volume + softmax + ``unfold`` aggregation. Returns out ``(B, D, H, W)`` (and lse ``(B, H, W)``).

    Computed and returned in float32 (float64 for float64 inputs).
    """
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    B, C, H, W = query.shape
    D = value.shape[1]
    P = 2 * radius + 1
    acc = acc_dtype(query.dtype)
    logits = local_correlation_reference(query, key, radius) * scale  # (B, P*P, H, W)
    if border == "truncate":
        valid = window_valid(H, W, radius, 1, query.device)
        logits = logits.masked_fill(~valid.unsqueeze(0), float("-inf"))
    lse = torch.logsumexp(logits, dim=1)
    prob = torch.exp(logits - lse.unsqueeze(1))
    vcols = F.unfold(value.to(acc), kernel_size=P, padding=radius).view(B, D, P * P, H, W)
    out = (prob.unsqueeze(1) * vcols).sum(2)
    return (out, lse) if return_lse else out

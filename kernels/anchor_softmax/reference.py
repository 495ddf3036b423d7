"""Softmax over anchors: the plain PyTorch definition of correctness (explicit P x A logits).

Every other path (the chunked PyTorch path, the Triton kernels) is tested against these.
"""

from __future__ import annotations

import torch

__all__ = ["anchor_nll_reference", "anchor_lse_reference", "anchor_argmax_reference", "compute_dtype"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 inputs are computed in fp64, every other dtype in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def anchor_nll_reference(
    features: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """(P,) ``F.cross_entropy(features @ anchors.T / temperature, labels, ignore_index=-1, reduction="none")``.

    Explicit (P, A) logits, computed in the inputs' dtype (upcast the inputs for an fp32/fp64 reference).
    """
    logits = features @ anchors.T / temperature
    return torch.nn.functional.cross_entropy(logits, labels, ignore_index=-1, reduction="none")


def anchor_lse_reference(features: torch.Tensor, anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    """(P,) ``logsumexp(features @ anchors.T / temperature, dim=1)`` on explicit logits."""
    return torch.logsumexp(features @ anchors.T / temperature, dim=1)


def anchor_argmax_reference(
    features: torch.Tensor, anchors: torch.Tensor, feature_group: torch.Tensor, anchor_group: torch.Tensor
) -> torch.Tensor:
    """(P,) int64: argmax over anchors of the same group of ``features @ anchors.T`` (explicit logits, fp32 or
    wider); first index on ties; -1 where the row's group has no anchor."""
    scores = features.to(compute_dtype(features.dtype)) @ anchors.to(compute_dtype(features.dtype)).T
    valid = feature_group[:, None].to(torch.int64) == anchor_group[None, :].to(torch.int64)
    scores = scores.masked_fill(~valid, float("-inf"))
    idx = scores.argmax(dim=1)
    return torch.where(valid.any(dim=1), idx, torch.full_like(idx, -1))

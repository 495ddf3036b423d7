"""Pieces shared by the reconstruction methods (MAST-style colour reconstruction: STT, LIIR).

One place for each idea the methods share; every method imports these instead of re-writing them.

* :func:`drop_chroma`: MAST/STT/LIIR "Lab with channel dropout" applied to a whole batch of clips:
  the network input (one chroma channel zeroed, all channels x1.5) and the reconstruction target
  (the dropped channel of the clean Lab).
* :func:`decimate` / :func:`frame_pyramid`: the frame pyramid by decimation at offset 0
  (``x[..., ::s, ::s]``, the top-left pixel of each ``s x s`` block; no blur, no averaging).
* The reconstruction itself (the dropped channel of the target rebuilt from a reference) is the fused
  windowed attention :func:`tritoncorr.kernels.local_attention` (no correlation volume is stored), with
  ``border="zero"`` for MAST/LIIR and ``"truncate"`` for STT.
* :func:`upsampled_huber`: the reconstruction loss of MAST/STT/LIIR: the low-resolution prediction
  is bilinearly upsampled (``align_corners=False``) to the target's size and compared with
  Smooth-L1 (beta 1) on values multiplied by ``scale`` (20), mean over all elements.
* :func:`compactness_template` / :func:`compactness_mask`: LIIR's spatial compactness prior (M
  peak-1 Gaussians at the top-M window cells, mixture weights softmax of their probabilities) and
  its confident-pixel mask (max probability above a threshold); used by LIIR training and inference.
  Defined in :mod:`tritoncorr.kernels.window_propagate.compactness` (the full-window propagation
  kernels use it too) and re-exported here.

The Lab conversion and the per-batch channel dropout themselves live in
:mod:`tritoncorr.data.transforms` (``rgb_uint8_to_lab``, ``lab_normalize``, ``channel_dropout``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tritoncorr.data.transforms import channel_dropout
from tritoncorr.kernels.window_propagate.compactness import compactness_mask, compactness_template

__all__ = [
    "drop_chroma",
    "decimate",
    "frame_pyramid",
    "upsampled_huber",
    "RECON_SCALE",
    "compactness_template",
    "compactness_mask",
]

#: MAST/STT/LIIR multiply prediction and target by 20 inside the Smooth-L1 (knee at 1/20 unit).
RECON_SCALE = 20.0


def drop_chroma(lab: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Channel dropout of a batch of normalised Lab frames, the same channel for every frame.

    Args:
        lab: ``(..., 3, H, W)`` normalised Lab (``(L-50)/50, a/127, b/127``), e.g. ``(B, T, 3, H, W)``.
        generator: CPU generator for the channel draw (``None``: the global torch RNG).

    Returns:
        ``(net_input, target, k)``: ``net_input`` ``(..., 3, H, W)`` with channel ``k`` zeroed and all
        channels x1.5; ``target`` ``(..., 1, H, W)`` the clean channel ``k``; ``k`` in {1 (a), 2 (b)}.
    """
    net_input, k = channel_dropout(lab, generator)
    target = lab.narrow(-3, k, 1)
    return net_input, target, k


def decimate(x: torch.Tensor, stride: int) -> torch.Tensor:
    """``(..., H, W) -> (..., ceil(H/s), ceil(W/s))``: every ``stride``-th pixel from offset 0."""
    stride = int(stride)
    if stride < 1:
        raise ValueError(f"decimation stride must be >= 1, got {stride}")
    return x[..., ::stride, ::stride]


def frame_pyramid(x: torch.Tensor, strides: Sequence[int]) -> list[torch.Tensor]:
    """One decimated copy of ``x`` ``(..., H, W)`` per stride (STT: ``(4, 8)``; LIIR: ``(4,)``)."""
    return [decimate(x, s) for s in strides]


def upsampled_huber(
    pred: torch.Tensor, target: torch.Tensor, *, scale: float = RECON_SCALE, beta: float = 1.0
) -> torch.Tensor:
    """Smooth-L1 between ``pred`` upsampled to ``target``'s size and ``target``, values x ``scale``.

    Args:
        pred: ``(N, D, h, w)`` low-resolution reconstruction.
        target: ``(N, D, H, W)`` full-resolution target (``H >= h``, ``W >= w``; equal sizes skip the resize).

    Returns:
        scalar (float32 or the inputs' float64): ``mean SmoothL1_beta(scale * up(pred) - scale * target)``.
    """
    if pred.dim() != 4 or target.dim() != 4 or pred.shape[:2] != target.shape[:2]:
        raise ValueError(
            f"pred (N, D, h, w) and target (N, D, H, W) must agree in N and D, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.shape[-2:] != target.shape[-2:]:
        pred = F.interpolate(pred, size=target.shape[-2:], mode="bilinear", align_corners=False)
    dtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    return F.smooth_l1_loss(scale * pred.to(dtype), scale * target.to(dtype), beta=beta, reduction="mean")

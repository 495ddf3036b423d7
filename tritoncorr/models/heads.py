"""Projection heads applied to backbone feature maps.

* :class:`MLPHead`: conv1x1 (bias) -> BatchNorm -> ReLU -> conv1x1 (bias), DUL's key head
  (512 -> 512 -> 128 on layer4).
* :class:`ConvHead`: one k x k convolution with bias, stride s, padding k // 2: LIIR/MAST's matching
  head (256 -> 64, 3x3, s1) and the stride-8 head (256 -> 128, 3x3, s2).

Both keep PyTorch's default Conv2d initialisation (as DUL/MAST, whose heads live outside the
ResNet and are not re-initialised) and map ``(N, C_in, h, w)`` to ``(N, C_out, h', w')`` with
``h' = floor((h + 2 * (k // 2) - k) / s) + 1`` (``h' = h`` for MLPHead).

* :func:`resize_embedding`: a learned position embedding brought to a feature map's size (LIIR).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLPHead(nn.Module):
    """``(N, in_channels, h, w) -> (N, out_channels, h, w)``; L2-normalised over channels when ``normalize``."""

    def __init__(
        self, in_channels: int = 512, hidden_channels: int = 512, out_channels: int = 128, normalize: bool = False
    ):
        super().__init__()
        if min(in_channels, hidden_channels, out_channels) < 1:
            raise ValueError(f"channel counts must be >= 1, got {in_channels}, {hidden_channels}, {out_channels}")
        self.fc1 = nn.Conv2d(in_channels, hidden_channels, 1, bias=True)
        self.bn = nn.BatchNorm2d(hidden_channels)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden_channels, out_channels, 1, bias=True)
        self.normalize = normalize
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"MLPHead expects (N, {self.in_channels}, h, w), got {tuple(x.shape)}")
        y = self.fc2(self.relu(self.bn(self.fc1(x))))
        return F.normalize(y, dim=1) if self.normalize else y


class ConvHead(nn.Module):
    """``(N, in_channels, h, w) -> (N, out_channels, h', w')``: one conv (kernel k, stride s, padding k // 2, bias)."""

    def __init__(
        self,
        in_channels: int = 256,
        out_channels: int = 64,
        kernel_size: int = 3,
        stride: int = 1,
        normalize: bool = False,
    ):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        if stride < 1 or min(in_channels, out_channels) < 1:
            raise ValueError(f"stride and channel counts must be >= 1, got {stride}, {in_channels}, {out_channels}")
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=True
        )
        self.normalize = normalize
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ConvHead expects (N, {self.in_channels}, h, w), got {tuple(x.shape)}")
        y = self.conv(x)
        return F.normalize(y, dim=1) if self.normalize else y


def resize_embedding(embedding: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(1, C, G, G) -> (1, C, h, w)`` bicubic (``align_corners=False``, as LIIR's unofficial code,
    liir.md §5); the identity (no resampling) when the size already matches."""
    if tuple(embedding.shape[-2:]) == tuple(size):
        return embedding
    return F.interpolate(embedding, size=tuple(size), mode="bicubic", align_corners=False)

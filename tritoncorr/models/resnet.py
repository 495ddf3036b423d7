"""ResNet-18/34/50 with per-stage strides, written here (no torchvision), in torchvision's key layout.

Parameter names follow torchvision (``conv1.weight``, ``bn1.*``, ``layerX.Y.convZ.weight``,
``layerX.Y.bnZ.*``, ``layerX.Y.downsample.0/1.*``) so torchvision-layout checkpoints (MoCo, CRW,
DUL, STT after prefix mapping) load with :func:`tritoncorr.models.load_backbone_state`.

Shapes: input ``(N, 3, H, W)``; stage ``layerK`` output ``(N, C_K, H / s_K, W / s_K)`` where
``C = (64, 128, 256, 512)`` for BasicBlock depths and ``4x`` that for Bottleneck (ResNet-50), and
``s_K`` is the cumulative stride (stem 2, optional max-pool 2, then the per-stage strides).

Configurations used by the methods:

=====================  =====================  ==========  ===========================
who                    ``strides``            ``pool``    output stride (layer4)
=====================  =====================  ==========  ===========================
torchvision default    (1, 2, 2, 2)           max         32
DUL / CRW              (1, 2, 1, 1)           max         8
STT student            (1, 2, 2, 4)           none        res3 4, res4 8, res5 32
MAST / LIIR            (1, 2, 1, 1)           none        4
=====================  =====================  ==========  ===========================
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

STAGES = ("layer1", "layer2", "layer3", "layer4")
DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


def _conv(cin: int, cout: int, k: int, stride: int, padding_mode: str) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False, padding_mode=padding_mode)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, padding_mode: str):
        super().__init__()
        self.conv1 = _conv(cin, planes, 3, stride, padding_mode)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, 1, padding_mode)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck: the stride sits in the 3x3 conv."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, padding_mode: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride, padding_mode)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet trunk returning the outputs of the requested stages (the feature pyramid).

    Args:
        depth: 18, 34 or 50.
        strides: stride of the first block of layer1..layer4.
        pool: stem pooling after conv1/bn1/relu: ``"max"`` (torchvision), ``"avg"`` (STT d4 test
            models; 3x3/2 pad 1, count_include_pad) or ``"none"``.
        padding_mode: ``"zeros"`` (torchvision, DUL) or ``"reflect"`` (CRW).
        out_stages: stage names to return, e.g. ``("layer4",)`` or ``("layer2", "layer3", "layer4")``.
            Stages after the last requested one are not built.
        widths: channels of layer1..layer4 (before expansion); LIIR uses (64, 128, 256, 256).
        zero_gamma: start the last BatchNorm of every residual block (``bn2`` of a BasicBlock, ``bn3``
            of a Bottleneck) with weight 0 ("bag of tricks"; the unofficial LIIR code). The conv init
            (Kaiming-normal fan_out, i.e. ``N(0, sqrt(2 / (k*k*C_out)))``) is the same either way.
    """

    def __init__(
        self,
        depth: int = 18,
        strides: Sequence[int] = (1, 2, 2, 2),
        pool: str = "max",
        padding_mode: str = "zeros",
        out_stages: Sequence[str] = ("layer4",),
        widths: Sequence[int] = (64, 128, 256, 512),
        zero_gamma: bool = False,
    ):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth}")
        if len(strides) != 4 or any(s < 1 for s in strides):
            raise ValueError(f"strides must be 4 positive integers, got {tuple(strides)}")
        if pool not in ("max", "avg", "none"):
            raise ValueError(f"pool must be 'max', 'avg' or 'none', got {pool!r}")
        if padding_mode not in ("zeros", "reflect"):
            raise ValueError(f"padding_mode must be 'zeros' or 'reflect', got {padding_mode!r}")
        unknown = [s for s in out_stages if s not in STAGES]
        if unknown or not out_stages:
            raise ValueError(f"out_stages must be a non-empty subset of {STAGES}, got {tuple(out_stages)}")
        kind, blocks = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth, self.strides, self.pool_kind = depth, tuple(strides), pool
        self.out_stages = tuple(s for s in STAGES if s in out_stages)
        last = STAGES.index(self.out_stages[-1])

        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False, padding_mode=padding_mode)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        if pool == "max":
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        elif pool == "avg":
            self.maxpool = nn.AvgPool2d(3, stride=2, padding=1)
        else:
            self.maxpool = nn.Identity()
        cin = 64
        self.channels: dict[str, int] = {}
        for i in range(last + 1):
            layers = []
            for j in range(blocks[i]):
                layers.append(block(cin, widths[i], strides[i] if j == 0 else 1, padding_mode))
                cin = widths[i] * block.expansion
            setattr(self, STAGES[i], nn.Sequential(*layers))
            self.channels[STAGES[i]] = cin
        self._init_weights()
        if zero_gamma:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)
                elif isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def _init_weights(self) -> None:
        # torchvision's default ResNet init: Kaiming-normal fan_out for convs, BN gamma 1, beta 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stride_of(self, stage: str) -> int:
        """Cumulative stride of ``stage`` relative to the input."""
        s = 2 * (1 if self.pool_kind == "none" else 2)
        for name, st in zip(STAGES, self.strides):
            s *= st
            if name == stage:
                return s
        raise ValueError(f"unknown stage {stage!r}")

    def forward(self, x: torch.Tensor, stem_hook=None) -> dict[str, torch.Tensor]:
        """``x`` (N, 3, H, W) -> {stage: (N, C_stage, H_stage, W_stage)} for ``out_stages``.

        ``stem_hook``: optional callable applied to the stem output ``(N, 64, H/2, W/2)`` (after
        conv1/bn1/relu, before the pooling), e.g. LIIR's learned position embedding ``x + E``.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNet input must be (N, 3, H, W), got {tuple(x.shape)}")
        x = self.relu(self.bn1(self.conv1(x)))
        if stem_hook is not None:
            x = stem_hook(x)
        x = self.maxpool(x)
        out: dict[str, torch.Tensor] = {}
        for name in STAGES:
            if not hasattr(self, name):
                break
            x = getattr(self, name)(x)
            if name in self.out_stages:
                out[name] = x
        return out


def resnet18(**kwargs) -> ResNet:
    return ResNet(depth=18, **kwargs)


def resnet34(**kwargs) -> ResNet:
    return ResNet(depth=34, **kwargs)


def resnet50(**kwargs) -> ResNet:
    return ResNet(depth=50, **kwargs)


def dul_backbone(**kwargs) -> ResNet:
    """ResNet-18 with layer3/layer4 strides removed (output stride 8), as DUL and CRW use."""
    kwargs.setdefault("out_stages", ("layer4",))
    return ResNet(depth=18, strides=(1, 2, 1, 1), pool="max", **kwargs)

"""Backbones, heads and weight loading."""

from tritoncorr.models.heads import ConvHead, MLPHead
from tritoncorr.models.resnet import ResNet, dul_backbone, resnet18, resnet34, resnet50

__all__ = ["ConvHead", "MLPHead", "ResNet", "dul_backbone", "resnet18", "resnet34", "resnet50"]

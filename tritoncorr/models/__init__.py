"""Backbones and heads."""

from tritoncorr.models.resnet import ResNet, dul_backbone, resnet18, resnet34, resnet50

__all__ = ["ResNet", "dul_backbone", "resnet18", "resnet34", "resnet50"]

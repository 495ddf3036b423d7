"""Training data: video sources, clip sampling, augmentation and the clip loader.

Entry points: :class:`DataConfig` and :func:`build_clip_loader` (batches of augmented clips);
:mod:`tritoncorr.data.transforms` (ImageNet/Lab normalisation, channel dropout, clip augmentations,
DUL's regularising view :func:`random_view_transform` and :func:`warp_to_view`).
"""

from tritoncorr.data.config import DataConfig
from tritoncorr.data.loader import ClipLoader, build_clip_loader
from tritoncorr.data.sources import SourceWarning
from tritoncorr.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    channel_dropout,
    imagenet_normalize,
    lab_normalize,
    random_view_transform,
    rgb_to_lab,
    warp_to_view,
)

__all__ = [
    "DataConfig",
    "ClipLoader",
    "build_clip_loader",
    "SourceWarning",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "channel_dropout",
    "imagenet_normalize",
    "lab_normalize",
    "random_view_transform",
    "rgb_to_lab",
    "warp_to_view",
]

"""One training clip as a tensor, and a batch of them (shared by the map-style and streaming loaders).

:mod:`tritoncorr.data.loader` (map-style, resumable) and :mod:`tritoncorr.data.streaming` (Hugging
Face streaming) both build samples with :func:`clip_to_tensor` and batches with :func:`collate_clips`;
neither loader module imports the other's internals.
"""

from __future__ import annotations

import numpy as np
import torch

from tritoncorr.data.config import DataConfig
from tritoncorr.data.transforms import augment_clip, imagenet_normalize, lab_normalize, rgb_uint8_to_lab

__all__ = ["clip_to_tensor", "collate_clips"]


def clip_to_tensor(frames: np.ndarray, cfg: DataConfig, generator: torch.Generator) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` RGB -> augmented, normalised float32 ``(T, 3, S, S)``."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    # augment in uint8 (PIL-like resize, as DUL's PIL pipeline), convert the small crop to float
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    x = augment_clip(
        x,
        crop_mode=cfg.crop,
        crop_size=cfg.crop_size,
        short_side=tuple(cfg.short_side),
        area_range=tuple(cfg.area_range),
        aspect_range=tuple(cfg.aspect_range),
        flip=cfg.hflip,
        generator=generator,
    )
    if cfg.color == "lab":
        return lab_normalize(rgb_uint8_to_lab(x)).contiguous()
    return imagenet_normalize(x.float().div_(255.0)).contiguous()


def collate_clips(samples: list[dict]) -> dict:
    """Stack samples into a batch; ``skipped`` becomes the concatenated list of skipped names."""
    return {
        "frames": torch.stack([s["frames"] for s in samples]),
        "video": torch.tensor([s["video"] for s in samples], dtype=torch.int64),
        "frame_index": torch.stack([s["frame_index"] for s in samples]),
        "skipped": [name for s in samples for name in s["skipped"]],
    }

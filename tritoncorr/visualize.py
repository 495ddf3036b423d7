"""Overlays of object masks on frames (PIL + numpy only), for looking at propagation results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tritoncorr.evals.davis import davis_palette


def palette_colors() -> np.ndarray:
    """The DAVIS palette as uint8 ``(256, 3)``."""
    return np.asarray(davis_palette(), dtype=np.uint8).reshape(256, 3)


def overlay_masks(frame: np.ndarray, ids: np.ndarray, *, alpha: float = 0.5, contour: bool = True) -> np.ndarray:
    """Blend coloured object masks onto a frame.

    Args:
        frame: uint8 ``(H, W, 3)`` RGB.
        ids: integer ``(H, W)`` object ids (0 = background, left untouched; 255 = void, drawn too).
        alpha: weight of the mask colour inside objects.
        contour: also draw a one-pixel object boundary in the full colour.

    Returns:
        uint8 ``(H, W, 3)``.
    """
    frame = np.asarray(frame)
    ids = np.asarray(ids)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    if ids.shape != frame.shape[:2]:
        raise ValueError(f"ids shape {ids.shape} does not match the frame {frame.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"ids must lie in 0..255, got range [{ids.min()}, {ids.max()}]")
    ids = ids.astype(np.uint8)
    colors = palette_colors()[ids].astype(np.float32)
    out = frame.astype(np.float32)
    fg = ids > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colors[fg]
    if contour:
        edge = np.zeros_like(fg)
        edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
        edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
        edge &= fg
        out[edge] = colors[edge]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def save_overlay(path: str | Path, frame: np.ndarray, ids: np.ndarray, *, alpha: float = 0.5, quality: int = 90) -> Path:
    """Write :func:`overlay_masks` of ``frame`` and ``ids`` as a JPEG (or PNG by suffix) at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(overlay_masks(frame, ids, alpha=alpha))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, quality=quality)
    else:
        img.save(path)
    return path


__all__ = ["overlay_masks", "palette_colors", "save_overlay"]

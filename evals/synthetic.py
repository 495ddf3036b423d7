"""A deterministic synthetic DAVIS-format set: textured objects moving and occluding over textured backgrounds.

For tests, fixtures and smoke runs when DAVIS itself is not available. Numbers measured on it are
NOT DAVIS numbers. Everything is generated with a seeded :class:`numpy.random.Generator`, so the same
arguments give the same pixels.

* :func:`synthetic_clip` returns one clip in memory: frames uint8 ``(T, H, W, 3)``, masks uint8
  ``(T, H, W)`` with object ids 1..n (0 = background), painted back to front (later objects occlude
  earlier ones).
* :func:`make_synthetic_davis` writes several clips in the official DAVIS-2017 layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SHAPES = ("ellipse", "rectangle", "diamond")


def _texture(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, n_waves: int, scale: float) -> np.ndarray:
    """A colour texture ``(..., 3)`` in [0, 1] from random gratings evaluated at coordinates ``u, v``."""
    base = rng.uniform(0.15, 0.85, size=3)
    out = np.broadcast_to(base, (*u.shape, 3)).copy()
    for _ in range(n_waves):
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(0.5, 2.0) * 2 * np.pi / scale
        phase = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.05, 0.2, size=3) * rng.choice([-1, 1], size=3)
        wave = np.sin(freq * (np.cos(theta) * u + np.sin(theta) * v) + phase)
        out += wave[..., None] * amp
    return np.clip(out, 0.0, 1.0)


def synthetic_clip(
    num_frames: int, height: int, width: int, seed: int, num_objects: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic clip.

    Args:
        num_frames: T >= 1.
        height, width: frame size (>= 16 each).
        seed: random seed (the clip is a pure function of the arguments).
        num_objects: 2 or 3 objects by default (drawn from the seed); 1..6 allowed.

    Returns:
        frames uint8 ``(T, H, W, 3)`` and masks uint8 ``(T, H, W)`` (0 background, 1..n objects; object
        ``k`` is drawn above objects ``< k``). Every object is visible in frame 0.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if height < 16 or width < 16:
        raise ValueError(f"height and width must be >= 16, got {height}x{width}")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 4)) if num_objects is None else int(num_objects)
    if not 1 <= n <= 6:
        raise ValueError(f"num_objects must be in 1..6, got {n}")
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    small = min(height, width)

    # Background: gratings + a coarse random blob field, panning slowly.
    pan = rng.uniform(-1.0, 1.0, size=2) * small * 0.01
    bg_state = rng.integers(0, 2**31)
    coarse = rng.uniform(-0.15, 0.15, size=(6, 9, 3))

    objects = []
    # Place objects in different horizontal bands of frame 0 so that all start visible.
    slots = rng.permutation(n)
    for k in range(n):
        shape = SHAPES[(k + int(slots[0])) % len(SHAPES)]  # different shapes within a clip
        a = rng.uniform(0.12, 0.22) * small
        b = rng.uniform(0.10, 0.20) * small
        cx0 = (slots[k] + 0.5) / n * width
        cy0 = rng.uniform(0.35, 0.65) * height
        vel = rng.uniform(-1.0, 1.0, size=2) * small * 0.02
        ang0 = rng.uniform(0, np.pi)
        spin = rng.uniform(-0.04, 0.04)
        tex_state = rng.integers(0, 2**31)
        objects.append((shape, a, b, cx0, cy0, vel, ang0, spin, tex_state))

    # Coarse field upsampled bilinearly (numpy) to the frame size with a margin for panning.
    cy = np.linspace(0, coarse.shape[0] - 1, height)
    cx = np.linspace(0, coarse.shape[1] - 1, width)
    y0 = np.floor(cy).astype(int).clip(0, coarse.shape[0] - 2)
    x0 = np.floor(cx).astype(int).clip(0, coarse.shape[1] - 2)
    fy = (cy - y0)[:, None, None]
    fx = (cx - x0)[None, :, None]
    c00 = coarse[y0][:, x0]
    c01 = coarse[y0][:, x0 + 1]
    c10 = coarse[y0 + 1][:, x0]
    c11 = coarse[y0 + 1][:, x0 + 1]
    blob = (1 - fy) * ((1 - fx) * c00 + fx * c01) + fy * ((1 - fx) * c10 + fx * c11)

    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    masks = np.zeros((num_frames, height, width), dtype=np.uint8)
    for t in range(num_frames):
        bg_rng = np.random.default_rng(bg_state)
        img = _texture(bg_rng, xx + pan[0] * t, yy + pan[1] * t, 5, max(small / 6, 16.0)) + blob
        mask = np.zeros((height, width), dtype=np.uint8)
        for k, (shape, a, b, cx0, cy0, vel, ang0, spin, tex_state) in enumerate(objects):
            # Constant velocity, bouncing off the frame borders (centre kept inside).
            cxk = _bounce(cx0 + vel[0] * t, width)
            cyk = _bounce(cy0 + vel[1] * t, height)
            ang = ang0 + spin * t
            du, dv = xx - cxk, yy - cyk
            u = np.cos(ang) * du + np.sin(ang) * dv
            v = -np.sin(ang) * du + np.cos(ang) * dv
            if shape == "ellipse":
                inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
            elif shape == "rectangle":
                inside = (np.abs(u) <= a) & (np.abs(v) <= b)
            else:
                inside = np.abs(u) / a + np.abs(v) / b <= 1.0
            tex = _texture(np.random.default_rng(tex_state), u[inside], v[inside], 3, max(small / 10, 10.0))
            img[inside] = tex
            mask[inside] = k + 1
        frames[t] = np.clip(np.round(np.clip(img, 0, 1) * 255), 0, 255).astype(np.uint8)
        masks[t] = mask
    return frames, masks


def _bounce(x: float, size: int) -> float:
    """Reflect a coordinate into [0, size - 1] (triangle wave)."""
    period = 2 * (size - 1)
    x = x % period
    return x if x <= size - 1 else period - x


def make_synthetic_davis(
    root: str | Path,
    *,
    num_sequences: int = 3,
    num_frames: int = 12,
    height: int = 240,
    width: int = 432,
    seed: int = 0,
    resolution: str = "480p",
    split: str = "val",
) -> Path:
    """Write a synthetic set in the DAVIS-2017 layout and return ``root``.

    Creates ``JPEGImages/<resolution>/synth-XXX/NNNNN.jpg`` (quality 95, 4:4:4),
    ``Annotations/<resolution>/synth-XXX/NNNNN.png`` (DAVIS palette, every frame annotated) and
    ``ImageSets/2017/<split>.txt``. Sequence ``i`` is ``synthetic_clip(num_frames, height, width,
    seed * 1000 + i)``.
    """
    from tritoncorr.evals.davis import write_palette_png

    if num_sequences < 1:
        raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
    root = Path(root).expanduser()
    names = [f"synth-{i:03d}" for i in range(num_sequences)]
    for i, name in enumerate(names):
        frames, masks = synthetic_clip(num_frames, height, width, seed * 1000 + i)
        img_dir = root / "JPEGImages" / resolution / name
        ann_dir = root / "Annotations" / resolution / name
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        for t in range(num_frames):
            Image.fromarray(frames[t]).save(img_dir / f"{t:05d}.jpg", quality=95, subsampling=0)
            write_palette_png(ann_dir / f"{t:05d}.png", masks[t])
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


__all__ = ["make_synthetic_davis", "synthetic_clip"]

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


def save_overlay(
    path: str | Path, frame: np.ndarray, ids: np.ndarray, *, alpha: float = 0.5, quality: int = 90
) -> Path:
    """Write :func:`overlay_masks` of ``frame`` and ``ids`` as a JPEG (or PNG by suffix) at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(overlay_masks(frame, ids, alpha=alpha))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, quality=quality)
    else:
        img.save(path)
    return path


def overlay_strip(frames, ids, *, height: int | None = None, gap: int = 4, alpha: float = 0.5) -> np.ndarray:
    """Several frames with their masks side by side: uint8 ``(h, N * w + (N - 1) * gap, 3)``, white gaps.

    Args:
        frames: N uint8 ``(H, W, 3)`` frames of one size.
        ids: N ``(H, W)`` id maps (:func:`overlay_masks`).
        height: resize each overlay to this height (aspect kept, bilinear); None: as they are.
    """
    frames, ids = list(frames), list(ids)
    if not frames or len(frames) != len(ids):
        raise ValueError(f"need as many id maps as frames (>= 1), got {len(frames)} frames and {len(ids)} id maps")
    tiles = []
    for f, m in zip(frames, ids):
        img = overlay_masks(f, m, alpha=alpha)
        if height is not None and img.shape[0] != height:
            w = max(1, round(img.shape[1] * height / img.shape[0]))
            img = np.asarray(Image.fromarray(img).resize((w, height), Image.BILINEAR))
        tiles.append(img)
    h = tiles[0].shape[0]
    if any(t.shape[0] != h for t in tiles):
        raise ValueError("frames of different heights: pass height=")
    width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
    out = np.full((h, width, 3), 255, dtype=np.uint8)
    x = 0
    for t in tiles:
        out[:, x : x + t.shape[1]] = t
        x += t.shape[1] + gap
    return out


class OverlayVideoWriter:
    """Write :func:`overlay_masks` of frames and their ids as a video (PyAV), one frame at a time.

    H.264 (``libx264``, yuv420p, CRF 20) when available, else MPEG-4 Part 2; odd frame sizes are
    padded by one pixel (yuv420p needs even sizes). ``path``'s suffix picks the container (.mp4).

    Args:
        path: output video file.
        fps: frames per second (a float or a fraction).
        size: ``(H, W)`` of the frames that will be written.
        alpha: mask colour weight inside objects.
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int], *, alpha: float = 0.5):
        from fractions import Fraction

        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.alpha = float(alpha)
        self.size = (int(size[0]), int(size[1]))
        self.frames = 0
        rate = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(24)
        self._container = av.open(str(self.path), mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self._stream = self._container.add_stream(codec, rate=rate)
        self._stream.width = self.size[1] + self.size[1] % 2
        self._stream.height = self.size[0] + self.size[0] % 2
        self._stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self._stream.options = {"crf": "20", "preset": "veryfast"}
        else:
            self._stream.bit_rate = 4_000_000

    def write(self, frame: np.ndarray, ids: np.ndarray) -> None:
        """Append one frame: uint8 ``(H, W, 3)`` RGB and its ``(H, W)`` ids."""
        import av

        if self._container is None:
            raise RuntimeError(f"{self.path} is closed")
        if tuple(frame.shape[:2]) != self.size:
            raise ValueError(f"frame is {frame.shape[:2]}, the video is {self.size}")
        img = overlay_masks(frame, ids, alpha=self.alpha)
        ph, pw = self._stream.height - self.size[0], self._stream.width - self.size[1]
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the file (idempotent)."""
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def draw_joints(
    frame: np.ndarray, joints: np.ndarray, *, parents=None, color=None, radius: int = 3, width: int = 2
) -> np.ndarray:
    """Draw keypoints (and their skeleton) on a copy of a frame.

    Args:
        frame: uint8 ``(H, W, 3)`` RGB.
        joints: ``(2, J)`` pixel x, y; joints with a negative coordinate are missing and not drawn.
        parents: parent index per joint (a bone joins a joint to its parent); default JHMDB's 15-joint
            skeleton when J == 15, none otherwise.
        color: one RGB colour for everything; default one palette colour per joint.
        radius: dot radius in pixels; width: bone width.

    Returns:
        uint8 ``(H, W, 3)``.
    """
    from PIL import ImageDraw

    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 2 or joints.shape[0] != 2:
        raise ValueError(f"joints must be (2, J), got {joints.shape}")
    n = joints.shape[1]
    if parents is None and n == 15:
        from tritoncorr.evals.jhmdb import SKELETON_PARENTS

        parents = SKELETON_PARENTS
    colors = palette_colors()
    img = Image.fromarray(frame.copy())
    draw = ImageDraw.Draw(img)
    ok = (joints >= 0).all(axis=0) & np.isfinite(joints).all(axis=0)

    def col(j: int):
        return tuple(int(c) for c in (color if color is not None else colors[1 + j % 255]))

    if parents is not None:
        bones = set()
        for j, p in enumerate(parents):
            if p != j and ok[j] and ok[p] and frozenset((j, p)) not in bones:  # each bone once (neck <-> belly)
                bones.add(frozenset((j, p)))
                draw.line([tuple(joints[:, j]), tuple(joints[:, p])], fill=col(j), width=width)
    for j in range(n):
        if ok[j]:
            x, y = joints[:, j]
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=col(j), outline=(255, 255, 255))
    return np.asarray(img)


def save_joints_overlay(
    path: str | Path, frame: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None, *, quality: int = 90
) -> Path:
    """Write ``frame`` with the true joints (white, when given) and the predicted ones (coloured) as a JPEG/PNG."""
    img = frame
    if gt is not None:
        img = draw_joints(img, gt, color=(255, 255, 255), radius=2, width=1)
    img = draw_joints(img, pred)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = Image.fromarray(img)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        out.save(path, quality=quality)
    else:
        out.save(path)
    return path


__all__ = [
    "OverlayVideoWriter",
    "draw_joints",
    "overlay_masks",
    "overlay_strip",
    "palette_colors",
    "save_joints_overlay",
    "save_overlay",
]

"""Propagate a user's masks through a user's video (``tritoncorr propagate``).

* :func:`open_frames`: a video file (.mp4 / .webm / .mov / .avi / .mkv / .gif, decoded with PyAV one
  frame at a time) or a folder of frames (.jpg / .png / ..., natural sort order), as a
  :class:`FrameSource` that yields uint8 RGB ``(H, W, 3)`` frames without holding the video.
* :func:`read_mask`: a palette PNG (indices = object ids, 255 = void -> background), a binary or
  greyscale PNG (0 / non-zero -> 0 / 1, or small integer ids), or an RGB mask (DAVIS colours ->
  their ids, other colours -> 1, 2, ... in order).
* :func:`propagate_video`: frames -> features (one frame at a time) -> :class:`StreamingPropagator`
  -> one palette PNG per frame and an overlay video; memory is bounded by the preset's reference
  window, not by the number of frames.

Masks. The first mask belongs to frame 0. Later masks (``--mask 120:later.png``) restart the objects
they contain from that frame on and add new ones: :func:`tritoncorr.predictor.track_objects`, the one
mechanism for objects added mid-video (also behind :class:`tritoncorr.VideoPredictor` and the
YouTube-VOS export), with the working resolution rule (``short_side``). A mask must have the video's
size; one with the same aspect ratio but another scale is resized (nearest) with a warning.
"""

from __future__ import annotations

import dataclasses
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = [
    "FrameSource",
    "PropagationResult",
    "VideoError",
    "fit_mask",
    "open_frames",
    "parse_mask_spec",
    "propagate_video",
    "read_mask",
    "resize_frame",
    "synthetic_video_frame",
    "working_size",
    "write_synthetic_video",
]

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".m4v", ".gif", ".mpg", ".mpeg")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VOID = 255


class VideoError(ValueError):
    """An input that cannot be used: unreadable or empty video, bad mask, mask/frame size mismatch."""


# ----------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


@dataclass
class FrameSource:
    """Frames of a video file or folder, decoded lazily.

    Attributes:
        path: the video file or folder.
        size: ``(H, W)`` of the frames (of the first frame; every frame must match).
        fps: frames per second (a folder: 24 unless given).
        num_frames: the frame count when the container states it (None otherwise).
        names: per-frame output names (folder: the file stems; video: zero-padded indices).
    """

    path: Path
    size: tuple[int, int]
    fps: float
    num_frames: int | None
    _iter: Callable[[], Iterator[np.ndarray]]
    _names: list[str] | None = None

    def frames(self) -> Iterator[np.ndarray]:
        """uint8 RGB ``(H, W, 3)`` frames in order (a new decoding pass each call)."""
        return self._iter()

    def name(self, t: int) -> str:
        if self._names is not None and t < len(self._names):
            return self._names[t]
        return f"{t:05d}"


def _image_rgb(path: Path) -> np.ndarray:
    from tritoncorr.evals.davis import load_image

    return np.array(load_image(path, VideoError, "frame", "RGB"))


def _open_folder(path: Path, fps: float | None) -> FrameSource:
    files = sorted(
        (p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: _natural_key(p.name),
    )
    if not files:
        raise VideoError(f"frame folder {path} has no images ({', '.join(IMAGE_SUFFIXES)})")
    first = _image_rgb(files[0])

    def frames():
        for f in files:
            img = _image_rgb(f)
            if img.shape != first.shape:
                raise VideoError(
                    f"frame {f.name} is {img.shape[1]}x{img.shape[0]}, the first frame "
                    f"{first.shape[1]}x{first.shape[0]}"
                )
            yield img

    return FrameSource(path, first.shape[:2], float(fps or 24.0), len(files), frames, [f.stem for f in files])


def _open_video(path: Path, fps: float | None) -> FrameSource:
    import av

    try:
        container = av.open(str(path))
    except Exception as err:  # av.error.* (InvalidDataError, FileNotFoundError, ...)
        raise VideoError(f"cannot read video {path}: {err}") from err
    try:
        if not container.streams.video:
            raise VideoError(f"{path} has no video stream")
        vs = container.streams.video[0]
        rate = vs.average_rate or vs.guessed_rate or 24
        n = int(vs.frames) if vs.frames else None
        try:
            first = next(container.decode(vs))
        except StopIteration:
            raise VideoError(f"video {path} has no frames") from None
        except Exception as err:
            raise VideoError(f"cannot decode video {path}: {err}") from err
        size = (first.height, first.width)
    finally:
        container.close()

    def frames():
        c = av.open(str(path))
        try:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            for fr in c.decode(s):
                yield fr.to_ndarray(format="rgb24")
        except VideoError:
            raise
        except Exception as err:
            raise VideoError(f"error while decoding {path}: {err}") from err
        finally:
            c.close()

    return FrameSource(path, size, float(fps or float(rate)), n, frames)


def open_frames(path: str | Path, fps: float | None = None) -> FrameSource:
    """A :class:`FrameSource` for a video file or a folder of frames.

    Raises:
        VideoError: missing, unreadable or empty.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise VideoError(f"{path} does not exist")
    if path.is_dir():
        return _open_folder(path, fps)
    return _open_video(path, fps)


def working_size(size: tuple[int, int], short_side: int | None) -> tuple[int, int]:
    """``(H, W)`` scaled so that the shorter side is ``short_side`` when it is larger (never upscaled)."""
    h, w = size
    if not short_side or min(h, w) <= short_side:
        return (h, w)
    s = short_side / min(h, w)
    return (max(1, round(h * s)), max(1, round(w * s)))


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> ``size`` (bilinear with PIL's antialiasing when downscaling)."""
    if frame.shape[:2] == tuple(size):
        return frame
    return np.array(Image.fromarray(frame).resize((size[1], size[0]), Image.BILINEAR))


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------


def parse_mask_spec(spec: str) -> tuple[int, Path]:
    """``"later.png"`` -> ``(0, later.png)``; ``"120:later.png"`` -> ``(120, later.png)``."""
    m = re.match(r"^(\d+):(.+)$", spec)
    if m and not Path(spec).exists():
        return int(m.group(1)), Path(m.group(2))
    return 0, Path(spec)


def read_mask(path: str | Path) -> np.ndarray:
    """Object ids ``(H, W)`` uint8 of a mask image (see the module docstring); 255 (void) -> 0.

    Raises:
        VideoError: unreadable, or no object in it.
    """
    from tritoncorr.evals.davis import load_image

    path = Path(path).expanduser()
    img = load_image(path, VideoError, "mask")
    if img.mode == "P" or img.mode == "1":
        ids = np.asarray(img).astype(np.uint8)
    elif img.mode in ("L", "I", "I;16", "F", "LA"):
        a = np.asarray(img.convert("I") if img.mode != "LA" else img.getchannel(0)).astype(np.int64)
        vals = np.unique(a)
        if vals.max() <= 50:
            ids = a.astype(np.uint8)  # small integer ids (0/1 binary included)
        elif len(vals) == 2 and vals[0] == 0:
            ids = (a > 0).astype(np.uint8)  # binary 0/255 (or 0/k)
        else:
            ids = (a > 127).astype(np.uint8)  # an anti-aliased binary mask
    else:  # RGB(A): DAVIS colours -> ids, other colours -> 1, 2, ...
        ids = _rgb_mask_ids(np.asarray(img.convert("RGB")), path)
    ids = np.where(ids == VOID, 0, ids).astype(np.uint8)
    if ids.ndim != 2:
        raise VideoError(f"mask {path} has shape {ids.shape}, expected (H, W)")
    if not ids.any():
        raise VideoError(f"mask {path} contains no object (every pixel is background 0 or void 255)")
    return ids


# RGB masks: colours within COLOUR_TOLERANCE (RGB distance) of a more frequent colour are the same
# label (JPEG noise); a group with fewer than MIN_INTERIOR_PIXELS pixels whose 8 neighbours all share
# it (the thin bands of blended colours along edges) joins the nearest other group. DAVIS palette
# colours are >= 64 apart.
COLOUR_TOLERANCE = 40.0
MIN_INTERIOR_PIXELS = 9
PALETTE_TOLERANCE = 12.0  # a group this close to a DAVIS palette colour is that colour (JPEG keeps flat colours)
MAX_MASK_COLOURS = 65536


def _interior(labels: np.ndarray) -> np.ndarray:
    """bool ``(H, W)``: pixels whose 8 neighbours (inside the image) have their label."""
    p = np.pad(labels, 1, mode="edge")
    h, w = labels.shape
    same = np.ones((h, w), bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= p[dy : dy + h, dx : dx + w] == labels
    return same


def _rgb_mask_ids(rgb: np.ndarray, path: Path) -> np.ndarray:
    """Object ids of an RGB mask ``(H, W, 3)`` uint8.

    Exact DAVIS palette colours -> their ids; other colours -> 1, 2, ... in colour order (black = 0).
    A lossy mask (an RGB JPEG) has hundreds of near-duplicate colours along the edges; they are
    grouped with the nearest frequent colour (within ``COLOUR_TOLERANCE``; groups that are only thin
    edge bands, under ``MIN_INTERIOR_PIXELS`` interior pixels, join the nearest other group) and a
    warning names the file, instead of each becoming an object. Groups near distinct palette colours take their ids.
    """
    from tritoncorr.evals.davis import davis_palette

    flat = rgb.reshape(-1, 3).astype(np.int64)
    code = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    colours, inverse, counts = np.unique(code, return_inverse=True, return_counts=True)
    if len(colours) > MAX_MASK_COLOURS:
        raise VideoError(f"mask {path} has {len(colours)} colours: not a mask (use a palette or binary PNG)")
    rgb_of = np.stack([(colours >> 16) & 255, (colours >> 8) & 255, colours & 255], 1).astype(np.float64)
    pal = np.asarray(davis_palette(), dtype=np.float64).reshape(256, 3)
    # group colours: most frequent first, each joins the nearest earlier centre within the tolerance
    centre_of = np.empty(len(colours), np.int64)
    centres: list[int] = []
    for i in np.argsort(-counts, kind="stable"):
        if centres:
            d = ((rgb_of[centres] - rgb_of[i]) ** 2).sum(1)
            j = int(d.argmin())
            if d[j] <= COLOUR_TOLERANCE**2:
                centre_of[i] = centres[j]
                continue
        if len(centres) > 1024:
            raise VideoError(
                f"mask {path} has over 1024 distinct colour groups: not a mask (a photo?); use a palette or binary PNG"
            )
        centres.append(int(i))
        centre_of[i] = i
    group = centre_of[inverse].reshape(rgb.shape[:2])
    interior = np.bincount(group[_interior(group)], minlength=len(colours))
    big = [c for c in centres if interior[c] >= MIN_INTERIOR_PIXELS] or centres[:1]
    for c in centres:
        if c not in big:
            d = ((rgb_of[big] - rgb_of[c]) ** 2).sum(1)
            centre_of[centre_of == c] = big[int(d.argmin())]
    if len(big) < len(colours):
        warnings.warn(
            f"mask {path} has {len(colours)} colours: treated as {len(big)} (near-duplicate and rare "
            f"colours, e.g. JPEG noise along the edges, joined the nearest frequent colour); save masks "
            "as PNG (palette or binary) to avoid this",
            stacklevel=3,
        )
    black = [c for c in big if (rgb_of[c] ** 2).sum() <= COLOUR_TOLERANCE**2]
    objects = sorted((c for c in big if c not in black), key=lambda c: colours[c])
    if len(objects) > 254:
        raise VideoError(f"mask {path} has {len(objects)} colours: not a mask (use a palette or binary PNG)")
    near = [int(((pal - rgb_of[c]) ** 2).sum(1).argmin()) for c in objects]
    on_palette = all(
        n != 0 and ((pal[n] - rgb_of[c]) ** 2).sum() <= PALETTE_TOLERANCE**2 for n, c in zip(near, objects)
    )
    lut = np.zeros(len(colours), np.uint8)
    for k, c in enumerate(objects):
        lut[c] = near[k] if on_palette and len(set(near)) == len(near) else k + 1
    return lut[centre_of[inverse]].reshape(rgb.shape[:2])


def _resize_ids(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if ids.shape == tuple(size):
        return ids
    return np.asarray(Image.fromarray(ids).resize((size[1], size[0]), Image.NEAREST))


def fit_mask(ids: np.ndarray, frame_size: tuple[int, int], name: str) -> np.ndarray:
    """The mask at the video's frame size: unchanged when equal, resized (nearest) with a warning when
    only the scale differs (same aspect ratio within 1%); otherwise a :class:`VideoError`."""
    h, w = ids.shape
    H, W = frame_size
    if (h, w) == (H, W):
        return ids
    if abs((w / h) / (W / H) - 1) <= 0.01:
        warnings.warn(f"mask {name} is {w}x{h} but the frames are {W}x{H}: resizing the mask (nearest)", stacklevel=2)
        return _resize_ids(ids, (H, W))
    raise VideoError(
        f"mask {name} is {w}x{h} but the video frames are {W}x{H} (another aspect ratio): "
        "draw the mask on a frame of this video"
    )


# ----------------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------------


@dataclass
class PropagationResult:
    """What :func:`propagate_video` wrote and measured."""

    num_frames: int
    seconds: float
    mask_dir: Path
    overlay: Path | None
    objects: list[int]
    size: tuple[int, int]
    work_size: tuple[int, int]
    feature_grid: tuple[int, int]
    unused_masks: list[int] = dataclasses.field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.num_frames / self.seconds if self.seconds > 0 else float("nan")


@torch.no_grad()
def propagate_video(
    source: FrameSource,
    masks: dict[int, np.ndarray],
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    config,
    out: str | Path,
    *,
    color: str = "rgb",
    short_side: int | None = 480,
    max_frames: int | None = None,
    device: torch.device | str = "cpu",
    overlay: bool = True,
    overlay_name: str = "overlay.mp4",
    alpha: float = 0.5,
    on_frame: Callable[[int], None] | None = None,
) -> PropagationResult:
    """Propagate ``masks`` (``{frame: uint8 ids at the video's size}``, frame 0 required) through ``source``.

    Args:
        features_fn: ``(1, 3, h, w)`` frame in ``color`` space on ``device`` -> ``(1, C, h', w')``.
        config: a :class:`~tritoncorr.propagation.PropagationConfig` (its ``normalize``, ``pad``,
            label encoding and decoding are applied here).
        out: output folder: ``masks/<name>.png`` (DAVIS palette) and ``overlay_name``.
        short_side, max_frames: working resolution and an optional frame limit.
        on_frame: called with ``t`` after frame ``t`` is written (progress).

    Returns:
        :class:`PropagationResult`.
    """
    from tritoncorr.evals.davis import write_palette_png
    from tritoncorr.predictor import track_objects

    if 0 not in masks:
        raise VideoError("a mask for frame 0 is required")
    out = Path(out)
    mask_dir = out / "masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    H0, W0 = source.size
    ids_all = sorted({int(i) for m in masks.values() for i in np.unique(m) if i != 0})
    writer = None
    if overlay:
        from tritoncorr.visualize import OverlayVideoWriter

        writer = OverlayVideoWriter(out / overlay_name, source.fps, (H0, W0), alpha=alpha)
    grid: list[int] = []

    def features(x: torch.Tensor) -> torch.Tensor:
        f = features_fn(x)
        grid[:] = f.shape[-2:]
        return f

    class _Frames:
        """The decoded frames, remembering the one handed out last (the frame being written)."""

        last = None

        def __iter__(self):
            for k, frame in enumerate(frames):
                if max_frames is not None and k >= max_frames:
                    return
                self.last = frame
                yield frame

    t = -1
    t0 = time.perf_counter()
    frames = source.frames()
    seen = _Frames()
    stream = track_objects(
        iter(seen), masks, features, config, color=color, short_side=short_side, device=device, start=0
    )
    try:
        for t, ids in stream:
            ids_out = ids.astype(np.uint8)
            write_palette_png(mask_dir / f"{source.name(t)}.png", ids_out)
            if writer is not None:
                writer.write(seen.last, ids_out)
            if on_frame is not None:
                on_frame(t)
    except ValueError as err:
        raise VideoError(str(err)) from err
    finally:
        stream.close()
        frames.close()
        if writer is not None:
            writer.close()
    n = t + 1
    if n == 0:
        raise VideoError(f"{source.path}: no frames were decoded")
    expected = source.num_frames if max_frames is None else min(source.num_frames or max_frames, max_frames)
    if source.num_frames and n < expected:
        warnings.warn(
            f"{source.path} declares {source.num_frames} frames but only {n} could be decoded (a cut or "
            f"damaged file?): the output holds {n} frames",
            stacklevel=2,
        )
    return PropagationResult(
        n,
        time.perf_counter() - t0,
        mask_dir,
        writer.path if writer is not None else None,
        ids_all,
        (H0, W0),
        working_size(source.size, short_side),
        tuple(grid),
        sorted(k for k in masks if k >= n),
    )


# ----------------------------------------------------------------------------------------------
# A generated test video (tests, benchmarks/propagate_memory.py)
# ----------------------------------------------------------------------------------------------


def synthetic_video_frame(t: int, size: tuple[int, int] = (96, 128), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``t`` of a generated clip and its true ids: a textured background (fixed noise) with a
    red disc (id 1) moving on a circle and a blue square (id 2) sliding left-right. uint8 ``(H, W, 3)``, ``(H, W)``."""
    h, w = size
    rng = np.random.default_rng(seed)
    bg = (rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)).repeat(8, 0).repeat(8, 1)[:h, :w]
    frame = (bg * 0.6 + 50).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    ids = np.zeros((h, w), np.uint8)
    a = 2 * np.pi * t / 60.0
    cy, cx, r = h / 2 + h / 5 * np.sin(a), w / 2 + w / 4 * np.cos(a), max(3, min(h, w) // 8)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    frame[disc] = (220, 40, 40)
    ids[disc] = 1
    s = max(3, min(h, w) // 5)
    x0 = int((w - s - 1) * (0.5 + 0.5 * np.sin(2 * np.pi * t / 90.0)))
    y0 = h - s - max(1, h // 16)
    frame[y0 : y0 + s, x0 : x0 + s] = (40, 60, 220)
    ids[y0 : y0 + s, x0 : x0 + s] = 2
    return frame, ids


def write_synthetic_video(
    path: str | Path, num_frames: int, size: tuple[int, int] = (96, 128), fps: float = 25, seed: int = 0
) -> Path:
    """Write :func:`synthetic_video_frame` 0..num_frames-1 as a video (H.264 / MPEG-4) or, when ``path``
    has no video suffix, as a folder of PNG frames. Returns ``path``."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        path.mkdir(parents=True, exist_ok=True)
        for t in range(num_frames):
            Image.fromarray(synthetic_video_frame(t, size, seed)[0]).save(path / f"{t:05d}.png")
        return path
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as c:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = size[1], size[0], "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "18", "preset": "veryfast"}
        for t in range(num_frames):
            vf = av.VideoFrame.from_ndarray(synthetic_video_frame(t, size, seed)[0], format="rgb24")
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path

"""Still images for contrastive pre-training (STT step 1, MoCo v2): sources, augmentations, loader.

Entry point: :class:`ImageDataConfig` (a ``RunConfig.data`` section); the engine calls its
``build_loader(seed=, rank=, world_size=)``. Each batch is::

    {"view1": float32 (B, 3, S, S), "view2": float32 (B, 3, S, S), "index": int64 (B,)}

two independently augmented views of the same B images (ImageNet-normalised RGB), ``index`` the
image's position in the source (``loader.names[index]``; for a streaming dataset, its position in
this rank's stream of the epoch).

Sources (``ImageDataConfig.source``):

* ``"folder"``: every ``.jpg/.jpeg/.png`` under ``root`` (recursive, sorted by path), e.g. ImageNet's
  ``train/`` (class folders are not used: instance discrimination needs no labels).
* ``"video"``: frames sampled from the video files under ``root`` (``.mp4/.webm/.avi/.mkv/.mov``,
  recursive, probed and decoded with PyAV through :mod:`tritoncorr.data.sources`): every
  ``frame_step``-th frame of each video (at most ``max_frames_per_video`` per video, evenly spread,
  0 = no cap) is one image. With ``cache_short_side > 0`` those frames are decoded once when the
  loader is built (one sequential pass per video), resized so that the shorter side is
  ``cache_short_side`` and kept in memory (random access into H.264 costs a seek plus a decode from
  the previous keyframe per image otherwise).
* ``"hf"``: a Hugging Face image dataset (``datasets``): a ``save_to_disk`` folder, a local
  ``load_dataset`` folder/script or a hub id, one image per row in the column ``hf_column`` (auto:
  ``image``, ``img``, ``jpg``, ``png``, ``webp``); a cell is an ``Image`` feature value, encoded
  bytes, ``{"bytes", "path"}`` or a path. ``hf_streaming=True`` reads it as a stream
  (:class:`StreamingImageLoader`).
* ``"synthetic"``: ``synthetic_images`` generated pictures
  (:func:`tritoncorr.evals.synthetic.synthetic_clip` frame 0, seed ``synthetic_seed + i``).

Augmentation (MoCo v2's ``aug_plus`` pipeline, moco/main_moco.py, written here in torch; the order
and the probabilities are MoCo's): RandomResizedCrop to ``crop_size`` with area scale
``scale = (0.2, 1)`` and aspect ``ratio = (3/4, 4/3)`` (torchvision's algorithm: 10 tries, then a
centre crop with the aspect clamped into ``ratio``; bilinear, antialiased resize), colour jitter
(brightness, contrast, saturation 0.4, hue 0.1, in a random order, applied with p = 0.8), grayscale
with p = 0.2, Gaussian blur with sigma ~ U(0.1, 2.0) and p = 0.5, horizontal flip with p = 0.5,
then ImageNet normalisation. Differences from the PIL pipeline (derived, small): the colour
operations run on float RGB in [0, 1] (no uint8 rounding between them); the blur is an exact
separable Gaussian (half-width ``ceil(3 sigma)``, edge pixels replicated) where PIL approximates
it with box filters; the grayscale weights are torchvision's tensor ones (0.2989, 0.587, 0.114).

Determinism and resume: as :mod:`tritoncorr.data.loader`. An epoch is one pass over the images in
a per-epoch permutation from ``(seed, epoch)``, each DDP rank a disjoint slice, drop_last; every
sample's randomness (both views) comes from ``(seed, epoch, index)``, so batches depend on neither
``num_workers`` nor worker timing, and ``state_dict()``/``load_state_dict()`` resume mid-epoch with
exactly the batches of an uninterrupted run.

Bad inputs, the same errors as the clip loader's (the plan and iteration are
:class:`tritoncorr.data.planned.PlannedLoader`'s): a missing root or an empty folder or dataset raise
:class:`~tritoncorr.data.sources.DataSourceError`, a dataset without an image column or too few images
for a batch :class:`tritoncorr.engine.config.ConfigError` (the ``train`` CLI prints either as one
line), naming the path and the option to set. An image that cannot be decoded is, with ``on_error="skip"``
(default), replaced by another image drawn from the sample's own generator, with a
:class:`~tritoncorr.data.sources.SourceWarning` naming the file (``loader.skipped`` counts them;
``max_retries`` consecutive failures raise); with ``on_error="raise"`` it raises ``OSError`` naming
the file.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from tritoncorr.data.planned import PlannedLoader, check_rank
from tritoncorr.data.sampler import sample_rng, sample_torch_generator
from tritoncorr.data.sources import IMAGE_EXTS, DataSourceError, NamedSource, SourceWarning, _decode_image, _hf_payload
from tritoncorr.data.streaming import StreamCursor
from tritoncorr.data.transforms import imagenet_normalize, resize
from tritoncorr.engine.config import ConfigError

IMAGE_SOURCES = ("folder", "video", "hf", "synthetic")
HF_IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp")
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

__all__ = [
    "ImageDataConfig",
    "ImageLoader",
    "StreamingImageLoader",
    "build_image_loader",
    "build_image_source",
    "ImageFolderSource",
    "VideoFrameSource",
    "HFImageSource",
    "SyntheticImageSource",
    "random_resized_crop_params",
    "rgb_to_grayscale",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "color_jitter",
    "gaussian_blur",
    "moco_view",
]


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclass
class ImageDataConfig:
    """Where pre-training images come from and how the two views are augmented (module docstring).

    ``batch_size`` is per process (DDP rank). Defaults: MoCo v2 on an image folder at 224 x 224.
    """

    source: str = "folder"
    root: str = ""
    hf_split: str = "train"
    hf_streaming: bool = False
    hf_column: str = ""
    frame_step: int = 10
    max_frames_per_video: int = 0
    cache_short_side: int = 0
    probe_cache: str = ""
    batch_size: int = 256
    num_workers: int = 8
    prefetch_factor: int = 2
    pin_memory: bool = False
    crop_size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_p: float = 0.5
    hflip: bool = True
    synthetic_images: int = 64
    synthetic_size: tuple[int, int] = (96, 128)
    synthetic_seed: int = 0
    on_error: str = "skip"
    max_retries: int = 8

    def validate(self) -> "ImageDataConfig":
        """Check field values (not the files); returns ``self``. Raises ``ConfigError`` naming the field."""

        from tritoncorr.data.config import check_source, field_error

        def bad(name: str, why: str) -> ConfigError:
            return field_error(self, name, why)

        check_source(self, IMAGE_SOURCES)
        for name in ("batch_size", "crop_size", "frame_step", "max_retries", "synthetic_images"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be >= 1")
        if self.max_frames_per_video < 0 or self.cache_short_side < 0:
            raise ConfigError("data.max_frames_per_video and data.cache_short_side must be >= 0 (0 = off)")
        if self.num_workers < 0 or self.prefetch_factor < 1:
            raise ConfigError("data.num_workers must be >= 0 and data.prefetch_factor >= 1")
        s0, s1 = self.scale
        if not 0 < s0 <= s1 <= 1:
            raise bad("scale", "must satisfy 0 < lo <= hi <= 1")
        r0, r1 = self.ratio
        if not 0 < r0 <= r1:
            raise bad("ratio", "must satisfy 0 < lo <= hi")
        if min(self.jitter) < 0 or self.jitter[3] > 0.5:
            raise bad("jitter", "brightness/contrast/saturation must be >= 0 and hue in [0, 0.5]")
        for name in ("jitter_p", "gray_p", "blur_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(name, "must be a probability in [0, 1]")
        b0, b1 = self.blur_sigma
        if not 0 < b0 <= b1:
            raise bad("blur_sigma", "must satisfy 0 < lo <= hi")
        if self.on_error not in ("skip", "raise"):
            raise bad("on_error", "must be 'skip' or 'raise'")
        if min(self.synthetic_size) < 16:
            raise bad("synthetic_size", "both sides must be >= 16")
        return self

    def build_loader(self, *, seed: int, rank: int = 0, world_size: int = 1):
        """The engine's hook: :func:`build_image_loader` of this config."""
        return build_image_loader(self, seed=seed, rank=rank, world_size=world_size)


# ----------------------------------------------------------------------------------------------
# Augmentations (float RGB in [0, 1], (..., 3, H, W); every random draw from an explicit generator)
# ----------------------------------------------------------------------------------------------


def _u(generator: torch.Generator | None, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64).item())


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None,
    tries: int = 10,
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop`` box ``(top, left, h, w)`` in a ``height x width`` image.

    Up to ``tries`` draws of area ``A ~ U(scale) * H * W`` and aspect ``w/h`` log-uniform in ``ratio``,
    ``w = round(sqrt(A * ar))``, ``h = round(sqrt(A / ar))``; the first that fits wins with a uniform
    offset. Fallback: the centred crop of the largest box whose aspect is clamped into ``ratio``.
    """
    area = height * width
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(tries):
        target = area * _u(generator, scale[0], scale[1])
        ar = math.exp(_u(generator, lr0, lr1))
        w = int(round(math.sqrt(target * ar)))
        h = int(round(math.sqrt(target / ar)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` -> ``(..., 1, H, W)``: 0.2989 R + 0.587 G + 0.114 B."""
    r, g, b = x.unbind(-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def _blend(a: torch.Tensor, b: torch.Tensor | float, factor: float) -> torch.Tensor:
    return (factor * a + (1.0 - factor) * b).clamp(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``clamp(factor * x, 0, 1)``."""
    return _blend(x, 0.0, factor)


def adjust_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the mean grey level of each image (over ``(1, H, W)``)."""
    mean = rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the image's grayscale version."""
    return _blend(x, rgb_to_grayscale(x), factor)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` RGB in [0, 1] -> HSV, all three in [0, 1] (hue in turns)."""
    r, g, b = x.unbind(-3)
    maxc = x.amax(dim=-3)
    minc = x.amin(dim=-3)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    d = delta.clamp_min(1e-12)
    hr = ((g - b) / d) % 6.0
    hg = (b - r) / d + 2.0
    hb = (r - g) / d + 4.0
    h = torch.where(maxc == r, hr, torch.where(maxc == g, hg, hb))
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h)) % 1.0
    return torch.stack((h, s, maxc), dim=-3)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`: channel ``c = v - v s clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n + 6 h) mod 6`` and ``n = 5, 3, 1`` for R, G, B."""
    h, s, v = x.unbind(-3)
    h6 = (h % 1.0) * 6.0
    n = torch.tensor((5.0, 3.0, 1.0), dtype=x.dtype, device=x.device).view(3, *([1] * (h.dim())))
    k = (n + h6) % 6.0
    w = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    out = v - v * s * w  # (3, ..., H, W)
    return out.movedim(0, -3)


def adjust_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns (``|shift| <= 0.5``)."""
    hsv = rgb_to_hsv(x)
    h, s, v = hsv.unbind(-3)
    return hsv_to_rgb(torch.stack(((h + shift) % 1.0, s, v), dim=-3)).clamp(0.0, 1.0)


def color_jitter(
    x: torch.Tensor, strength: tuple[float, float, float, float], generator: torch.Generator | None
) -> torch.Tensor:
    """torchvision's ``ColorJitter(brightness, contrast, saturation, hue)``: a random order of the four,
    factors ``U(max(0, 1 - s), 1 + s)`` (hue: shift ``U(-s, s)``); zero strengths are skipped."""
    b, c, s, h = strength
    order = torch.randperm(4, generator=generator).tolist()
    fb = _u(generator, max(0.0, 1 - b), 1 + b) if b > 0 else None
    fc = _u(generator, max(0.0, 1 - c), 1 + c) if c > 0 else None
    fs = _u(generator, max(0.0, 1 - s), 1 + s) if s > 0 else None
    fh = _u(generator, -h, h) if h > 0 else None
    for k in order:
        if k == 0 and fb is not None:
            x = adjust_brightness(x, fb)
        elif k == 1 and fc is not None:
            x = adjust_contrast(x, fc)
        elif k == 2 and fs is not None:
            x = adjust_saturation(x, fs)
        elif k == 3 and fh is not None:
            x = adjust_hue(x, fh)
    return x


def _blur_matrix(n: int, sigma: float, radius: int, dtype, device) -> torch.Tensor:
    """``(n, n)`` matrix ``M`` with ``(M @ x)[i] = sum_t k_t x[clamp(i + t, 0, n - 1)]``."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    rows = torch.arange(n).repeat_interleave(2 * radius + 1)
    cols = (torch.arange(n).view(-1, 1) + t.long().view(1, -1)).clamp(0, n - 1).reshape(-1)
    m = torch.zeros(n, n, dtype=torch.float64)
    m.index_put_((rows, cols), k.repeat(n), accumulate=True)
    return m.to(dtype=dtype, device=device)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(..., C, H, W)``: weights ``exp(-t^2 / (2 sigma^2))`` normalised, for
    ``|t| <= ceil(3 sigma)`` (clipped to the image), edge pixels replicated. Computed as
    ``M_H @ x @ M_W^T`` with banded matrices (exact, and much faster on CPU than a 1-channel conv)."""
    H, W = x.shape[-2:]
    radius = max(1, int(math.ceil(3.0 * sigma)))
    mh = _blur_matrix(H, sigma, min(radius, max(H - 1, 1)), x.dtype, x.device)
    mw = _blur_matrix(W, sigma, min(radius, max(W - 1, 1)), x.dtype, x.device)
    return mh @ x @ mw.t()


def moco_view(image: torch.Tensor, cfg: ImageDataConfig, generator: torch.Generator | None) -> torch.Tensor:
    """One MoCo v2 view of ``image`` (uint8 ``(3, H, W)`` RGB): ImageNet-normalised float32 ``(3, S, S)``."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be uint8 (3, H, W), got {image.dtype} {tuple(image.shape)}")
    S = cfg.crop_size
    top, left, h, w = random_resized_crop_params(
        image.shape[1], image.shape[2], tuple(cfg.scale), tuple(cfg.ratio), generator
    )
    x = resize(image[:, top : top + h, left : left + w], (S, S)).float().div_(255.0)
    if _u(generator) < cfg.jitter_p:
        x = color_jitter(x, tuple(cfg.jitter), generator)
    if _u(generator) < cfg.gray_p:
        x = rgb_to_grayscale(x).expand(3, S, S).contiguous()
    if _u(generator) < cfg.blur_p:
        x = gaussian_blur(x, _u(generator, cfg.blur_sigma[0], cfg.blur_sigma[1]))
    if cfg.hflip and _u(generator) < 0.5:
        x = x.flip(-1)
    return imagenet_normalize(x).contiguous()


def _to_chw(arr: np.ndarray) -> torch.Tensor:
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # PIL / Arrow buffers are read-only; torch.from_numpy wants writable memory
        arr = arr.copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def two_views(image: np.ndarray, cfg: ImageDataConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(H, W, 3)`` -> two independent :func:`moco_view` s (query view first)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    x = _to_chw(image)
    return moco_view(x, cfg, generator), moco_view(x, cfg, generator)


# ----------------------------------------------------------------------------------------------
# Sources: names, __len__, read(i) -> uint8 (H, W, 3) RGB
# ----------------------------------------------------------------------------------------------


def _missing_root(root: str, what: str) -> DataSourceError:
    return DataSourceError(f"{what} {root!r} does not exist (set it with --set data.root=PATH)")


class ImageSource(NamedSource):
    """Base class of the image sources: ``names`` (one per image), ``read(i)``; cheap to pickle."""

    def read(self, i: int) -> np.ndarray:
        raise NotImplementedError


class ImageFolderSource(ImageSource):
    """Every ``.jpg/.jpeg/.png`` under ``root`` (recursive, sorted by relative path)."""

    kind = "folder"

    def __init__(self, root: str) -> None:
        super().__init__(root)
        r = Path(root).expanduser()
        if not r.exists():
            raise _missing_root(root, "image folder")
        if not r.is_dir():
            raise DataSourceError(f"image folder {root!r} is not a folder (set --set data.root=PATH)")
        files: list[str] = []
        for dirpath, dirnames, filenames in os.walk(r, followlinks=True):
            dirnames.sort()
            files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTS))
        if not files:
            raise DataSourceError(f"image folder {root!r} holds no {'/'.join(IMAGE_EXTS)} files (searched recursively)")
        self.names = files

    def read(self, i: int) -> np.ndarray:
        path = self.names[i]
        try:
            return _decode_image(path, path)
        except Exception as e:  # noqa: BLE001 - name the file, whatever PIL raised
            raise OSError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def _frame_selection(num_frames: int, step: int, cap: int) -> list[int]:
    idx = list(range(0, num_frames, step))
    if cap and len(idx) > cap:
        pick = np.linspace(0, len(idx) - 1, cap).round().astype(int)
        idx = [idx[k] for k in pick]
    return idx


def _resize_short(arr: np.ndarray, short: int) -> np.ndarray:
    h, w = arr.shape[:2]
    if min(h, w) <= short:
        return arr
    size = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
    return resize(_to_chw(arr), size).permute(1, 2, 0).contiguous().numpy()


class VideoFrameSource(ImageSource):
    """Frames of the videos under ``root``: every ``frame_step``-th frame (module docstring).

    ``names[i]`` is ``"<file>#<frame>"``; ``items[i] = (video, frame)`` indexes ``self.videos``
    (a :class:`tritoncorr.data.sources.VideoFileSource`).
    """

    kind = "video"

    def __init__(
        self, root: str, frame_step: int = 10, max_per_video: int = 0, cache_short_side: int = 0, probe_cache: str = ""
    ) -> None:
        super().__init__(root)
        from tritoncorr.data.sources import VideoFileSource

        if not Path(root).expanduser().exists():
            raise _missing_root(root, "video folder")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SourceWarning)
            self.videos = VideoFileSource(str(Path(root).expanduser()), probe_cache=probe_cache)
        for w in caught:
            warnings.warn(str(w.message), SourceWarning, stacklevel=2)
        self.skipped = list(self.videos.skipped)
        if len(self.videos) == 0:
            raise DataSourceError(
                f"video folder {root!r} holds no readable video file (.mp4/.webm/.avi/.mkv/.mov"
                + (f"; skipped: {self.skipped[:5]}" if self.skipped else "")
                + ")"
            )
        self.items: list[tuple[int, int]] = []
        for v, n in enumerate(self.videos.num_frames):
            for f in _frame_selection(n, frame_step, max_per_video):
                self.items.append((v, f))
                self.names.append(f"{self.videos.names[v]}#{f}")
        self.cache: list[np.ndarray] | None = None
        if cache_short_side > 0:
            self.cache = [None] * len(self.items)  # type: ignore[list-item]
            by_video: dict[int, list[int]] = {}
            for i, (v, _) in enumerate(self.items):
                by_video.setdefault(v, []).append(i)
            for v, ids in by_video.items():
                frames = self.videos.read(v, [self.items[i][1] for i in ids])
                for i, fr in zip(ids, frames):
                    self.cache[i] = _resize_short(fr, cache_short_side)

    def read(self, i: int) -> np.ndarray:
        if self.cache is not None:
            return self.cache[i]
        v, f = self.items[i]
        try:
            return self.videos.read(v, [f])[0]
        except Exception as e:  # noqa: BLE001
            raise OSError(f"cannot decode frame {f} of {self.videos.names[v]}: {type(e).__name__}: {e}") from e


def _require_datasets():
    try:
        import datasets  # noqa: F401
    except ImportError as e:
        raise ConfigError("data.source='hf' needs the Hugging Face 'datasets' package: pip install datasets") from e


def hf_image_column(columns, wanted: str, root: str) -> str:
    """The image column: ``wanted`` or the first of :data:`HF_IMAGE_COLUMNS` present."""
    columns = list(columns)
    if wanted:
        if wanted not in columns:
            raise ConfigError(
                f"HF dataset {root!r} has no column {wanted!r} (columns: {columns}); set --set data.hf_column=NAME"
            )
        return wanted
    for name in HF_IMAGE_COLUMNS:
        if name in columns:
            return name
    raise ConfigError(
        f"HF dataset {root!r}: no image column ({', '.join(HF_IMAGE_COLUMNS)}) among {columns}; "
        "set --set data.hf_column=NAME"
    )


class HFImageSource(ImageSource):
    """A map-style Hugging Face image dataset, one image per row (module docstring)."""

    kind = "hf"

    def __init__(self, root: str, split: str = "train", column: str = "", dataset=None) -> None:
        super().__init__(root)
        if dataset is None:
            _require_datasets()
            from tritoncorr.data.sources import load_hf_dataset

            dataset = load_hf_dataset(root, split, streaming=False)
        self.column = hf_image_column(dataset.column_names, column, root)
        self.ds = dataset.select_columns([self.column]).with_format("arrow")
        self.base = Path(root) if Path(root).is_dir() else None
        n = len(self.ds)
        if n == 0:
            raise DataSourceError(f"HF dataset {root!r} (split {split!r}) is empty")
        self.names = [f"{root}[{i}]" for i in range(n)]

    def read(self, i: int) -> np.ndarray:
        name = self.names[i]
        try:
            cell = self.ds[i][self.column][0].as_py()
            return _decode_image(_hf_payload(cell, self.base), name)
        except Exception as e:  # noqa: BLE001
            raise OSError(f"cannot read image {name}: {type(e).__name__}: {e}") from e


class SyntheticImageSource(ImageSource):
    """``n`` generated pictures of ``size = (H, W)``; image ``i`` is frame 0 of ``synthetic_clip(seed + i)``."""

    kind = "synthetic"

    def __init__(self, n: int, size: tuple[int, int], seed: int = 0) -> None:
        super().__init__("synthetic")
        self.size, self.seed = (int(size[0]), int(size[1])), int(seed)
        self.names = [f"synthetic[{i}]" for i in range(int(n))]

    def read(self, i: int) -> np.ndarray:
        from tritoncorr.evals.synthetic import synthetic_clip

        frames, _ = synthetic_clip(1, self.size[0], self.size[1], self.seed + int(i))
        return np.ascontiguousarray(frames[0])


def build_image_source(cfg: ImageDataConfig) -> ImageSource:
    """The map-style source of ``cfg`` (not for ``hf_streaming``)."""
    if cfg.source == "folder":
        return ImageFolderSource(cfg.root)
    if cfg.source == "video":
        return VideoFrameSource(
            cfg.root, cfg.frame_step, cfg.max_frames_per_video, cfg.cache_short_side, cfg.probe_cache
        )
    if cfg.source == "hf":
        return HFImageSource(cfg.root, cfg.hf_split, cfg.hf_column)
    if cfg.source == "synthetic":
        return SyntheticImageSource(cfg.synthetic_images, cfg.synthetic_size, cfg.synthetic_seed)
    raise ConfigError(f"unknown data.source {cfg.source!r} (one of {IMAGE_SOURCES})")


# ----------------------------------------------------------------------------------------------
# Map-style loader
# ----------------------------------------------------------------------------------------------


class ImageDataset(Dataset):
    """Indexed by ``(epoch, index)``; returns ``{"view1", "view2" (3, S, S), "index", "skipped"}``."""

    def __init__(self, source: ImageSource, cfg: ImageDataConfig, seed: int) -> None:
        self.source, self.cfg, self.seed = source, cfg, int(seed)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = int(key[0]), int(key[1])
        skipped: list[str] = []
        for attempt in range(self.cfg.max_retries + 1):
            rng = sample_rng(self.seed, epoch, index, attempt)
            try:
                image = self.source.read(index)
            except Exception as e:  # noqa: BLE001 - a bad file must not stop a long run (on_error="skip")
                if self.cfg.on_error == "raise":
                    raise
                skipped.append(f"{self.source.names[index]} ({type(e).__name__}: {e})")
                index = int(rng.integers(len(self.source)))
                continue
            v1, v2 = two_views(image, self.cfg, sample_torch_generator(rng))
            return {"view1": v1, "view2": v2, "index": index, "skipped": skipped}
        raise DataSourceError(
            f"{len(skipped)} consecutive unreadable images under {self.source.root!r}: "
            + "; ".join(dict.fromkeys(skipped))
        )


def collate_views(samples: list[dict]) -> dict:
    return {
        "view1": torch.stack([s["view1"] for s in samples]),
        "view2": torch.stack([s["view2"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
        "skipped": [n for s in samples for n in s["skipped"]],
    }


class ImageLoader(PlannedLoader):
    """Iterable over an epoch's batches (module docstring); build with :func:`build_image_loader`."""

    kind = "image"

    def __init__(
        self, cfg: ImageDataConfig, source: ImageSource, *, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        cfg.validate()
        check_rank(rank, world_size)
        self.cfg, self.source = cfg, source
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.dataset = ImageDataset(source, cfg, seed)
        self._start_plan(collate_views)

    @property
    def names(self) -> list[str]:
        return list(self.source.names)


# ----------------------------------------------------------------------------------------------
# Streaming Hugging Face datasets
# ----------------------------------------------------------------------------------------------


class _StreamImages(IterableDataset):
    """Worker ``w`` of ``W`` decodes the batches ``b`` with ``(b - start) % W == w`` (in order, so the
    DataLoader's round-robin returns them in stream order whatever ``num_workers``)."""

    def __init__(self, owner: "StreamingImageLoader", epoch: int, start_batch: int) -> None:
        self.owner, self.epoch, self.start_batch = owner, epoch, start_batch

    def __iter__(self):
        o = self.owner
        info = get_worker_info()
        w, W = (info.id, info.num_workers) if info is not None else (0, 1)
        B = o.cfg.batch_size
        current: list[tuple[int, Any]] = []
        for q, example in enumerate(o.epoch_stream(self.epoch)):
            b = q // B
            if b >= self.start_batch and (b - self.start_batch) % W == w:
                current.append((q, example[o.column]))
                if len(current) == B:
                    yield self._batch(current)
                    current = []

    def _batch(self, items: list[tuple[int, Any]]) -> dict:
        o = self.owner
        samples: list[dict | None] = []
        skipped: list[str] = []
        for q, cell in items:
            name = f"{o.root}[epoch {self.epoch} rank {o.rank} #{q}]"
            try:
                image = _decode_image(_hf_payload(cell, o.base), name)
            except Exception as e:  # noqa: BLE001
                if o.cfg.on_error == "raise":
                    raise OSError(f"cannot read image {name}: {type(e).__name__}: {e}") from e
                skipped.append(f"{name} ({type(e).__name__}: {e})")
                samples.append(None)
                continue
            v1, v2 = two_views(image, o.cfg, sample_torch_generator(sample_rng(o.seed, self.epoch, q, o.rank)))
            samples.append({"view1": v1, "view2": v2, "index": q, "skipped": []})
        good = [s for s in samples if s is not None]
        if not good:
            raise RuntimeError(f"no readable image in a batch of {o.root!r}: {skipped}")
        batch = collate_views([s if s is not None else good[i % len(good)] for i, s in enumerate(samples)])
        batch["skipped"] = skipped
        return batch


class StreamingImageLoader(StreamCursor):
    """:class:`ImageLoader`'s contract over a streaming HF dataset: an epoch is one pass over the stream,
    shuffled per epoch (``ds.shuffle(seed, buffer)``), split by rank (``split_dataset_by_node``),
    drop_last; ``index`` is the position in this rank's stream. ``len`` needs the split size in the
    dataset info (else ``TypeError``). Resume skips the consumed batches of the epoch's stream (read,
    not decoded)."""

    stream_tag = 0x1A6

    def __init__(self, cfg: ImageDataConfig, *, seed: int, rank: int = 0, world_size: int = 1, dataset=None) -> None:
        if dataset is None:
            _require_datasets()
        self.open_stream(
            cfg,
            dataset,
            lambda names: hf_image_column(names, cfg.hf_column, cfg.root),
            seed=seed,
            rank=rank,
            world_size=world_size,
        )

    def __iter__(self) -> Iterator[dict]:
        yield from self._iterate(_StreamImages(self, self.epoch, self.batch), "image", ConfigError)


def build_image_loader(cfg: ImageDataConfig, *, seed: int, rank: int = 0, world_size: int = 1):
    """The loader of ``cfg``: :class:`ImageLoader`, or :class:`StreamingImageLoader` for ``hf_streaming``."""
    cfg.validate()
    if cfg.source == "hf" and cfg.hf_streaming:
        return StreamingImageLoader(cfg, seed=seed, rank=rank, world_size=world_size)
    return ImageLoader(cfg, build_image_source(cfg), seed=seed, rank=rank, world_size=world_size)

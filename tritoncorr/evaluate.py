"""The task-generic label-propagation runner, and the evaluations built on it (DAVIS-2017, JHMDB, VIP, YouTube-VOS).

Every evaluation (``tritoncorr eval davis|vip|jhmdb|ytvos``, the engine's periodic validation) runs
the same path, generic over the kind of label through a *label codec*:

    frames -> features -> first-frame labels -> propagate -> decode -> score

* :func:`compute_features`: frames (uint8 RGB, loaded lazily) -> optional resize to the task's
  network input (bilinear, ``align_corners=False``, aspect ratio not kept: CRW's ``cv2.resize``),
  the model's colour space, right/bottom zero padding to a multiple of ``config.pad``, the
  features, L2-normalised over channels when ``config.normalize``: a :class:`VideoFeatures` with the
  :class:`FrameGeometry` (original size, input size, padded size, feature grid).
* a codec turns the first frame's annotation into ``(L, h, w)`` labels on the feature grid
  (``encode(geometry, config, device)``) and a propagated ``(L, h, w)`` map back into a prediction
  (``decode(soft, geometry, config)``):

  - :class:`MaskCodec` (here): index maps: DAVIS / YouTube-VOS objects, VIP parts. Channel ``c``
    is label id ``labels[c]`` (DAVIS: ``0 .. max id``; VIP and YouTube-VOS: the ids present, as
    CRW's label set). Encoding: void (255) -> background; when the frames are resized, the id map
    is resized to the input size (PIL's NEAREST, :func:`resize_nearest`); padded with channel 0;
    then the preset's ``label_downsample``. Decoding: the preset's upsampling to the padded input
    size (``upsample_align_corners``, STT's ``minmax``), crop, argmax, ids; back to the original
    size with nearest when resized (what VIP's ``eval_vip.py`` does to predictions of another size).
  - :class:`tritoncorr.evals.jhmdb.JointsCodec`: keypoints as CRW's Gaussian heat maps, decoded by
    the top-3 cells.
* :func:`propagate_labels`: ``tritoncorr.propagation.propagate`` from frame ``start`` (YouTube-VOS
  objects start at their own first frame), frame ``start``'s output is the encoded annotation:
  a :class:`PropagatedVideo` (soft ``(T, L, h, w)`` and ``decode(t)``).
* benchmarks: ``tritoncorr/evals/<benchmark>.py`` holds the reader, the label codec and the metric and
  imports nothing of this runner; a class implementing :class:`Benchmark` here (:class:`JhmdbBenchmark`,
  :class:`VipBenchmark`, :class:`YtvosBenchmark`) says how one video is propagated and what is
  written, and :func:`run_benchmark` drives it (the resumable output folder, one progress display
  over every stage, the scoring). DAVIS keeps its own loop (:func:`evaluate_features_on_davis`: the
  feature cache, scoring in worker processes). A new benchmark is such a file, such a class and one
  CLI command (:mod:`tritoncorr.cli.evaluate`).

DAVIS follows DUL (``docs/methods/dul.md`` section 3) under the default preset: frames at native
resolution, ImageNet normalisation, one frame at a time, first-frame one-hot labels (channel 0
background, channel k = object id k) bilinearly (align_corners=True) point-sampled to the grid,
propagated soft labels bilinearly upsampled to the annotation size, argmax over all channels; the
frame-0 output is the downsampled-then-upsampled ground truth. :func:`evaluate_features_on_davis`
(CLI and engine) and :func:`propagate_sequence` keep their interface and results.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from tritoncorr.evals.davis import (
    VOID,
    DavisDataset,
    DavisFormatError,
    DavisScores,
    write_palette_png,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_COLORS = ("rgb", "lab")
SYNTHETIC_DEFAULTS = dict(num_sequences=3, num_frames=12, height=240, width=432, seed=0)

__all__ = [
    "Benchmark",
    "DavisScores",
    "FrameGeometry",
    "LabelCodec",
    "MaskCodec",
    "PropagatedVideo",
    "VideoFeatures",
    "VideoFormatError",
    "VideoProgress",
    "compute_features",
    "default_davis_root",
    "evaluate_features_on_davis",
    "evaluate_features_on_jhmdb",
    "evaluate_features_on_vip",
    "export_features_on_ytvos",
    "first_frame_codec",
    "frame_to_tensor",
    "propagate_labels",
    "propagate_sequence",
    "pil_nearest_indices",
    "propagate_video",
    "resize_nearest",
    "run_benchmark",
    "synthetic_davis_root",
]


class VideoFormatError(ValueError):
    """A video whose frames do not fit together (sizes differ) or do not fit its annotation."""


def frame_to_tensor(
    frame: np.ndarray, device: torch.device | str = "cpu", color: str = "rgb", size: tuple[int, int] | None = None
) -> torch.Tensor:
    """uint8 RGB ``(H, W, 3)`` -> float32 ``(1, 3, H, W)`` on ``device`` in the model's input colour space.

    ``color="rgb"``: ImageNet-normalised RGB (DUL, CRW, MoCo); ``"lab"``: OpenCV-float Lab normalised as
    ``((L - 50) / 50, a / 127, b / 127)`` (MAST, STT, LIIR).
    ``size = (H', W')``: first resize the frame, bilinear with ``align_corners=False`` and no
    antialiasing (``cv2.resize`` INTER_LINEAR, as CRW resizes its float frames; aspect ratio not
    kept); for Lab the resized frame is rounded back to uint8 before the conversion (STT resizes the
    uint8 image).
    """
    if color not in INPUT_COLORS:
        raise ValueError(f"color must be one of {INPUT_COLORS}, got {color!r}")
    x = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1)
    if size is not None and tuple(size) != tuple(x.shape[1:]):
        y = F.interpolate(x[None].float(), size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)[0]
        if color == "lab":
            x = y.round_().clamp_(0, 255).to(torch.uint8)
        else:
            x = y.div_(255.0)
    if color == "lab":
        from tritoncorr.data.transforms import lab_normalize, rgb_uint8_to_lab

        return lab_normalize(rgb_uint8_to_lab(x)).float().unsqueeze(0)
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def pil_nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each of ``n_out`` outputs under PIL's NEAREST resize of ``n_in`` samples.

    PIL steps through the source by accumulating the scale in double precision from half a step
    (``x = s / 2; x += s`` with ``s = n_in / n_out``) and truncates: ``floor((i + 0.5) * s)`` except
    where rounding of the running sum lands just below an integer (e.g. 320 -> 240 columns: 26 of
    240 differ from the closed form, and from ``F.interpolate(mode="nearest-exact")``).
    """
    s = n_in / n_out
    steps = np.full(n_out, s, dtype=np.float64)
    steps[0] = s * 0.5
    return np.minimum(np.cumsum(steps).astype(np.int64), n_in - 1)


def resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(H, W)`` or ``(L, H, W)`` tensor -> ``size = (H', W')`` by PIL's NEAREST rule (:func:`pil_nearest_indices`),
    bit-exact with ``Image.resize((W', H'), Image.NEAREST)``; any dtype and device."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    rows = torch.from_numpy(pil_nearest_indices(x.shape[-2], size[0])).to(x.device)
    cols = torch.from_numpy(pil_nearest_indices(x.shape[-1], size[1])).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def _resolve_config(config):
    if config is not None:
        return config
    from tritoncorr.propagation import PRESETS

    return PRESETS["dul"]


def _config_kwargs(config) -> dict:
    """Keyword arguments of ``propagate`` from a ``PropagationConfig`` (all its fields)."""
    if hasattr(config, "as_kwargs"):
        return dict(config.as_kwargs())
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    raise TypeError(f"config must be a PropagationConfig, got {type(config).__name__}")


def _as_config(config):
    """A ``PropagationConfig`` from ``config`` (None: the ``dul`` preset; another dataclass: by its fields)."""
    from tritoncorr.propagation import PropagationConfig

    config = _resolve_config(config)
    return config if isinstance(config, PropagationConfig) else PropagationConfig(**_config_kwargs(config))


# ----------------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameGeometry:
    """Sizes along the path, all ``(H, W)``.

    Attributes:
        size: the original frames and annotations.
        input_size: the network input after the task's resize (``size`` when native).
        padded_size: ``input_size`` padded right/bottom to a multiple of ``config.pad``.
        grid: the feature grid.
    """

    size: tuple[int, int]
    input_size: tuple[int, int]
    padded_size: tuple[int, int]
    grid: tuple[int, int]

    @property
    def resized(self) -> bool:
        return self.input_size != self.size


@dataclass
class VideoFeatures:
    """Features of every frame of a video: ``feats`` float32 ``(T, C, h, w)`` and the geometry."""

    feats: torch.Tensor
    geometry: FrameGeometry

    def __len__(self) -> int:
        return self.feats.shape[0]


class LabelCodec(Protocol):
    """A label kind: first-frame annotation -> ``(L, h, w)`` float labels, propagated labels -> prediction."""

    num_labels: int

    def encode(self, geometry: FrameGeometry, config, device=None) -> torch.Tensor: ...

    def decode(self, soft: torch.Tensor, geometry: FrameGeometry, config) -> Any: ...


def frame_features(
    features_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, padded: tuple[int, int], normalize: bool
) -> torch.Tensor:
    """One frame's features: ``x`` ``(1, 3, h', w')`` (network input, :func:`frame_to_tensor`)
    zero-padded right/bottom to ``padded`` (0 in the normalised input space; Lab: L* = 50 grey),
    ``features_fn``, float32, L2-normalised over channels when ``normalize`` -> ``(C, h, w)``."""
    hi, wi = x.shape[-2:]
    if tuple(padded) != (hi, wi):
        x = F.pad(x, (0, padded[1] - wi, 0, padded[0] - hi))
    f = features_fn(x)
    if f.dim() != 4 or f.shape[0] != 1:
        raise ValueError(f"features_fn must return (1, C, h, w) for one frame, got {tuple(f.shape)}")
    f = f.float()
    if normalize:
        f = F.normalize(f, dim=1)
    return f[0]


@torch.no_grad()
def compute_features(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    frames: Sequence[np.ndarray] | Callable[[int], np.ndarray],
    num_frames: int,
    *,
    config=None,
    input_size: tuple[int, int] | None = None,
    size: tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
    color: str = "rgb",
    on_frame: Callable[[int], None] | None = None,
) -> VideoFeatures:
    """Features of every frame, one frame at a time.

    Args:
        features_fn: ``(1, 3, H', W')`` frame in the ``color`` space -> ``(1, C, h, w)`` features.
        frames: frame ``t`` as uint8 ``(H, W, 3)``: a sequence or a loader ``t -> frame``.
        num_frames: T >= 1.
        config: ``PropagationConfig`` (its ``pad`` and ``normalize`` act here); default ``dul``.
        input_size: ``(H', W')`` network input (frames resized, :func:`frame_to_tensor`); None: native.
        size: the ``(H, W)`` every frame must have (default: frame 0's).
        device, color: where and in which colour space (:func:`frame_to_tensor`).
        on_frame: called with ``t`` after frame ``t``'s features (progress).

    Raises:
        VideoFormatError: a frame of another size.
    """
    cfg = _as_config(config)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    load = frames if callable(frames) else (lambda t: frames[t])
    ref = "the first mask" if size is not None else "frame 0"
    feats = None
    geometry = None
    for t in range(num_frames):
        frame = load(t)
        if size is None:
            size = tuple(frame.shape[:2])
        H, W = size
        if tuple(frame.shape[:2]) != (H, W):
            raise VideoFormatError(f"frame {t} is {frame.shape[1]}x{frame.shape[0]}, {ref} is {W}x{H}")
        if geometry is None:
            hi, wi = (H, W) if input_size is None else (int(input_size[0]), int(input_size[1]))
            hp, wp = -(-hi // cfg.pad) * cfg.pad, -(-wi // cfg.pad) * cfg.pad  # LIIR: right/bottom to a multiple of 4
        x = frame_to_tensor(frame, device, color, size=None if (hi, wi) == (H, W) else (hi, wi))
        f = frame_features(features_fn, x, (hp, wp), cfg.normalize)
        if feats is None:
            feats = torch.empty((num_frames, *f.shape), dtype=torch.float32, device=f.device)
            geometry = FrameGeometry((H, W), (hi, wi), (hp, wp), tuple(f.shape[-2:]))
        elif tuple(f.shape) != tuple(feats.shape[1:]):
            raise ValueError(
                f"features_fn returned {tuple(f.shape)} for frame {t}, {tuple(feats.shape[1:])} for frame 0"
            )
        feats[t] = f
        if on_frame is not None:
            on_frame(t)
    return VideoFeatures(feats, geometry)


@dataclass
class PropagatedVideo:
    """Propagated labels of frames ``start .. T-1``: ``soft`` float32 ``(T - start, L, h, w)``
    (``soft[0]`` = the encoded annotation) and ``decode(i)`` -> the codec's prediction of frame ``start + i``."""

    soft: torch.Tensor
    geometry: FrameGeometry
    codec: Any
    config: Any
    start: int = 0

    def __len__(self) -> int:
        return self.soft.shape[0]

    def decode(self, i: int) -> Any:
        return self.codec.decode(self.soft[i], self.geometry, self.config)


@torch.no_grad()
def propagate_labels(
    video: VideoFeatures,
    codec: LabelCodec,
    config=None,
    *,
    start: int = 0,
    on_frame: Callable[[int], None] | None = None,
) -> PropagatedVideo:
    """Encode the annotation of frame ``start`` with ``codec`` and propagate it through frames ``start ..``.

    The propagation itself is :func:`tritoncorr.propagation.propagate` with every field of ``config``
    (hard feedback decodes at the padded input size); ``on_frame(t)`` after each propagated frame.
    """
    from tritoncorr.propagation import propagate

    cfg = _as_config(config)
    if not 0 <= start < len(video):
        raise ValueError(f"start={start} must index one of the {len(video)} frames")
    feats = video.feats[start:]
    g = video.geometry
    first = codec.encode(g, cfg, device=feats.device).to(device=feats.device, dtype=torch.float32)
    if first.dim() != 3 or tuple(first.shape[1:]) != tuple(g.grid):
        raise RuntimeError(
            f"{type(codec).__name__}.encode returned {tuple(first.shape)}, expected (L, {g.grid[0]}, {g.grid[1]})"
        )
    soft = propagate(feats, first, image_size=g.padded_size, on_frame=on_frame, **cfg.as_kwargs())
    if tuple(soft.shape) != (feats.shape[0], *first.shape):
        raise RuntimeError(f"propagate returned {tuple(soft.shape)}, expected {(feats.shape[0], *first.shape)}")
    soft = soft.clone()
    soft[0] = first  # DUL: the frame-0 output is the downsampled ground truth
    return PropagatedVideo(soft, g, codec, cfg, start)


def propagate_video(
    features_fn,
    frames,
    num_frames: int,
    codec: LabelCodec,
    config=None,
    *,
    input_size: tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
    color: str = "rgb",
    on_frame: Callable[[int], None] | None = None,
) -> PropagatedVideo:
    """:func:`compute_features` then :func:`propagate_labels` from frame 0."""
    vf = compute_features(
        features_fn,
        frames,
        num_frames,
        config=config,
        input_size=input_size,
        device=device,
        color=color,
        on_frame=on_frame,
    )
    return propagate_labels(vf, codec, config)


class MaskCodec:
    """Index-map labels (object masks, part maps) <-> one channel per label id (see the module docstring).

    Args:
        ids: integer ``(H, W)`` ids of the annotated frame.
        labels: the label ids, channel ``c`` <-> ``labels[c]``, sorted; default ``0 .. max id``
            (DAVIS); :meth:`present` takes the ids present (CRW's label set, VIP, YouTube-VOS).
        void: this id counts as background (0) (DAVIS 255); None: no void id.

    ``decode`` gives uint8 ``(H, W)`` ids; ``probabilities`` the decoded ``(L, H, W)`` scores.
    """

    def __init__(self, ids: np.ndarray, labels: Sequence[int] | None = None, *, void: int | None = VOID):
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be an integer (H, W) array, got {ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64)
        if void is not None:
            ids = np.where(ids == void, 0, ids)
        if ids.size and ids.min() < 0:
            raise ValueError(f"ids must be >= 0, got {ids.min()}")
        top = int(ids.max()) if ids.size else 0
        lab = np.arange(top + 1) if labels is None else np.asarray(list(labels), dtype=np.int64)
        if lab.ndim != 1 or lab.size == 0 or (np.diff(lab) <= 0).any() or lab.min() < 0 or lab.max() > 255:
            raise ValueError(f"labels must be sorted distinct ids in 0..255, got {lab.tolist()}")
        lut = np.full(max(top, int(lab.max())) + 1, -1, dtype=np.int64)
        lut[lab] = np.arange(lab.size)
        ch = lut[ids]
        if (ch < 0).any():
            raise ValueError(
                f"ids {sorted(set(np.unique(ids[ch < 0]).tolist()))} are not among the labels {lab.tolist()}"
            )
        self.size = tuple(ids.shape)
        self.labels = lab
        self.channels = ch
        self.num_labels = int(lab.size)

    @classmethod
    def present(cls, ids: np.ndarray, *, void: int | None = VOID) -> "MaskCodec":
        """Channels for the ids present in ``ids`` only (sorted; CRW's label set from the first frame)."""
        ids = np.asarray(ids)
        clean = ids if void is None else np.where(ids == void, 0, ids)
        return cls(ids, np.unique(clean).tolist(), void=void)

    def encode(self, geometry: FrameGeometry, config, device=None) -> torch.Tensor:
        from tritoncorr.propagation import encode_labels

        cfg = _as_config(config)
        if tuple(geometry.size) != self.size:
            raise VideoFormatError(
                f"the annotation is {self.size[1]}x{self.size[0]} but the frames are "
                f"{geometry.size[1]}x{geometry.size[0]}"
            )
        ch = torch.from_numpy(self.channels).to(device if device is not None else "cpu")
        (hi, wi), (hp, wp) = geometry.input_size, geometry.padded_size
        if geometry.resized:
            ch = resize_nearest(ch, (hi, wi))
        if (hp, wp) != (hi, wi):
            ch = F.pad(ch, (0, wp - wi, 0, hp - hi))  # padded annotation: channel 0 (background)
        return encode_labels(ch, self.num_labels, geometry.grid, cfg.label_downsample)

    def _upsampled(self, soft: torch.Tensor, geometry: FrameGeometry, config) -> torch.Tensor:
        from tritoncorr.propagation import decode_labels

        cfg = _as_config(config)
        (hi, wi) = geometry.input_size
        up = decode_labels(soft, geometry.padded_size, align_corners=cfg.upsample_align_corners, minmax=cfg.minmax)
        return up[:, :hi, :wi]

    def probabilities(self, soft: torch.Tensor, geometry: FrameGeometry, config) -> torch.Tensor:
        """float32 ``(L, H, W)``: the decoded scores per channel at the original size (argmax -> channel)."""
        up = self._upsampled(soft, geometry, config)
        return resize_nearest(up, geometry.size) if geometry.resized else up

    def decode(self, soft: torch.Tensor, geometry: FrameGeometry, config) -> np.ndarray:
        from tritoncorr.propagation import channel_argmax

        ch = channel_argmax(self._upsampled(soft, geometry, config))
        if geometry.resized:
            ch = resize_nearest(ch, geometry.size)
        lab = torch.from_numpy(self.labels).to(ch.device)
        return lab[ch].to(torch.uint8).cpu().numpy()


@torch.no_grad()
def propagate_sequence(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    frames: Sequence[np.ndarray] | Callable[[int], np.ndarray],
    num_frames: int,
    first_ids: np.ndarray,
    config,
    device: torch.device | str = "cpu",
    on_frame: Callable[[int], None] | None = None,
    color: str = "rgb",
    input_size: tuple[int, int] | None = None,
) -> Callable[[int], np.ndarray]:
    """Propagate the first-frame ids through a video (DAVIS objects: :class:`MaskCodec`, channels ``0 .. max id``).

    Args:
        features_fn: ``(1, 3, H, W)`` frame in the ``color`` space -> ``(1, C, h, w)`` features (not yet normalised).
        frames: frame ``t`` as uint8 ``(H, W, 3)``: a sequence or a loader ``t -> frame``.
        num_frames: T.
        first_ids: uint8 ``(H, W)`` object ids of frame 0 (255 = void, treated as background).
        config: a ``PropagationConfig``; besides the propagation itself its fields choose feature
            L2-normalisation (``normalize``), frame padding (``pad``: right/bottom with 0 to a multiple),
            the first-frame label encoding (``label_downsample``) and the output decoding
            (``upsample_align_corners``, ``minmax``; upsampled to the padded size, then cropped).
        device: where features and propagation live.
        on_frame: called with ``t`` after the features of frame ``t`` are computed (progress).
        color: the model's input colour space (:func:`frame_to_tensor`).
        input_size: ``(H', W')`` network input (None: native, DAVIS).

    Returns:
        ``ids_at(t) -> uint8 (H, W)``: the predicted ids of frame ``t`` (upsampled and argmaxed lazily,
        so only the ``(T, L, h, w)`` soft labels are kept in memory).
    """
    cfg = _as_config(config)
    codec = MaskCodec(first_ids)
    try:
        vf = compute_features(
            features_fn,
            frames,
            num_frames,
            config=cfg,
            input_size=input_size,
            size=codec.size,
            device=device,
            color=color,
            on_frame=on_frame,
        )
    except VideoFormatError as err:
        raise DavisFormatError(str(err)) from None
    return propagate_labels(vf, codec, cfg).decode


@torch.no_grad()
def evaluate_features_on_davis(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    root: str | Path,
    out: str | Path,
    split: str = "val",
    resolution: str = "480p",
    sequences: Sequence[str] | None = None,
    config=None,
    device: torch.device | str = "cpu",
    overlays: bool = False,
    progress: bool = True,
    color: str = "rgb",
    folder=None,
    feature_cache=None,
    workers: int = 0,
) -> DavisScores:
    """Propagate the first-frame masks of every sequence with ``features_fn`` and score the result.

    Args:
        features_fn: ``images (N, 3, H, W)`` float32 on ``device`` in the ``color`` space -> ``(N, C, h, w)``;
            called with N = 1 (one frame at a time) under ``torch.no_grad()``; put the model in eval
            mode first. The output is L2-normalised over channels here.
        root: DAVIS root (every frame annotated, as J&F scoring requires).
        out: PNGs go to ``<out>/<seq>/<frame>.png``, CSVs to ``<out>``, overlays to ``<out>/overlays/<seq>/``.
        split, resolution, sequences: which sequences.
        config: ``PropagationConfig``; default ``PRESETS["dul"]``.
        device: where features and propagation run.
        overlays: also write ``<out>/overlays/<seq>/<frame>.jpg``.
        progress: rich progress bar over the whole work (features, propagation, decoding, scoring) with an ETA.
        color: the model's input colour space, ``"rgb"`` (ImageNet-normalised) or ``"lab"`` (:func:`frame_to_tensor`).
        folder: a resumable :class:`tritoncorr.evals.resume.EvalFolder` at ``out`` (sequences it records
            as finished are not propagated again); default: a fresh one.
        feature_cache: a :class:`tritoncorr.feature_cache.FeatureCache`: features are read from it when
            present and written to it otherwise.
        workers: score the sequences in this many processes (0 or 1: in this one).

    Returns:
        :class:`DavisScores` (``jf_mean``, ``j_mean``, ``f_mean``, ... and per-object rows).
    """
    from tritoncorr.evals.davis import objects_from_json, objects_to_json, score_results, scoring_pool
    from tritoncorr.evals.resume import EvalFolder

    config = _resolve_config(config)
    out = Path(out)
    ds = DavisDataset(root, split, resolution, sequences, require_all_masks=True)
    _config_kwargs(config)  # a bad config fails before any feature is computed
    device = torch.device(device)
    folder = folder if folder is not None else EvalFolder.fresh(out, "davis")
    todo = [seq for seq in ds if folder.record(seq.name) is None]
    pool = scoring_pool(workers, len(todo))
    pending: list[tuple[Any, Path, Any]] = []
    try:
        with VideoProgress(progress, [len(s) for s in todo], passes=4) as bar:

            def commit(seq, stage: Path, objects) -> None:
                folder.commit(
                    seq.name, stage, [seq.name, f"overlays/{seq.name}"], {"objects": objects_to_json(objects)}
                )
                bar.advance(len(seq))

            for seq in todo:
                bar.start(seq.name)
                stage = folder.staging(seq.name)
                codec = MaskCodec(seq.load_mask(0))
                vf = sequence_features(
                    features_fn,
                    seq,
                    codec.size,
                    config=config,
                    device=device,
                    color=color,
                    cache=feature_cache,
                    bar=bar,
                )
                bar.stage("propagating")
                prop = propagate_labels(vf, codec, config, on_frame=bar.frame)
                bar.frame()  # frame 0 is the annotation
                bar.stage("decoding")
                for t, fid in enumerate(seq.frame_ids):
                    ids = prop.decode(t)
                    write_palette_png(stage / seq.name / f"{fid}.png", ids)
                    if overlays:
                        from tritoncorr.visualize import save_overlay

                        save_overlay(stage / "overlays" / seq.name / f"{fid}.jpg", seq.load_frame(t), ids)
                    bar.frame()
                del vf, prop
                if pool is None:
                    bar.stage("scoring")
                    commit(seq, stage, score_results(stage, seq))
                else:  # scored in a worker while the next sequence propagates
                    pending.append((seq, stage, pool.submit(score_results, stage, seq)))
                    while pending and pending[0][2].done():
                        commit(*pending[0][:2], pending.pop(0)[2].result())
            bar.stage("scoring")
            for seq, stage, fut in pending:
                commit(seq, stage, fut.result())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    objects = [o for seq in ds for o in objects_from_json(folder.record(seq.name)["objects"])]
    scores = DavisScores(objects, split=split)
    scores.write_csvs(out)
    return scores


def sequence_features(
    features_fn,
    seq,
    size: tuple[int, int],
    *,
    config,
    device,
    color: str = "rgb",
    input_size: tuple[int, int] | None = None,
    cache=None,
    bar: "VideoProgress | None" = None,
) -> VideoFeatures:
    """:func:`compute_features` of the frames of ``seq`` (a DAVIS sequence: ``name``, ``load_frame(i)``,
    ``len``) at label size ``size``, read from / written to ``cache``
    (:class:`tritoncorr.feature_cache.FeatureCache`) when given; ``bar`` counts its frames either way.
    Frame-size errors are :class:`DavisFormatError`."""
    name, frames, num_frames = seq.name, seq.load_frame, len(seq)
    if bar is not None:
        bar.stage("features")
    vf = cache.load(name, num_frames, size) if cache is not None else None
    if vf is not None:
        if bar is not None:
            bar.stage("features (cached)")
            bar.advance(num_frames)
        return VideoFeatures(vf.feats.to(device), vf.geometry)
    try:
        vf = compute_features(
            features_fn,
            frames,
            num_frames,
            config=config,
            input_size=input_size,
            size=size,
            device=device,
            color=color,
            on_frame=bar.frame if bar is not None else None,
        )
    except VideoFormatError as err:
        raise DavisFormatError(str(err)) from None
    if cache is not None:
        cache.save(name, vf)
    return vf


class VideoProgress:
    """A rich progress bar over the frames of several videos (``start(name)`` per video, ``frame(t)`` per
    frame, ``stage(text)`` for what is being done); a no-op when ``enabled`` is False. Use as a context manager.

    ``passes``: how many times the work visits each frame (DAVIS: features, propagation, decoding,
    scoring = 4), so that the bar and its ETA cover the whole work, not only the features.
    """

    def __init__(
        self, enabled: bool, lengths: Sequence[int], label: str = "propagating", unit: str = "sequence", passes: int = 1
    ):
        self.enabled, self.lengths, self.label, self.unit = bool(enabled), list(lengths), label, unit
        self.passes = int(passes)
        self.bar = None
        self.task = None
        self.i = 0

    def __enter__(self) -> "VideoProgress":
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn(f"{{task.description}} {self.unit} {{task.fields[seqs]}} {{task.fields[seq]}}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("frames" if self.passes == 1 else f"frame-steps ({self.passes} per frame)"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            self.bar.__enter__()
            self.task = self.bar.add_task(
                self.label, total=self.passes * sum(self.lengths), seq="", seqs=f"0/{len(self.lengths)}"
            )
        return self

    def stage(self, text: str) -> None:
        """Show what is being done now (e.g. ``features``, ``propagating``, ``scoring``)."""
        if self.bar is not None:
            self.bar.update(self.task, description=text)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False

    def start(self, name: str) -> None:
        self.i += 1
        if self.bar is not None:
            self.bar.update(self.task, seq=name, seqs=f"{self.i}/{len(self.lengths)}")

    def frame(self, t: int = 0) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)


# ----------------------------------------------------------------------------------------------
# JHMDB, VIP, YouTube-VOS: the benchmarks of tritoncorr.evals, driven through one loop
# ----------------------------------------------------------------------------------------------


class Benchmark(Protocol):
    """A benchmark as :func:`run_benchmark` drives it. ``tritoncorr.evals.<benchmark>`` holds the reader,
    the label codec and the metric; a class implementing this adds how one video is propagated and
    what of it is written.

    Attributes:
        task: the task its :class:`~tritoncorr.evals.resume.EvalFolder` records (``"vip"``).
        unit: what one video is called in the progress display (``"clip"``, ``"video"``).
        passes: progress steps per frame of a video (features, propagation, decoding, scoring).
        final_stage: what :meth:`score` does, as the progress display names it (``"scoring"``).
        videos: the reader's videos, each with a ``name`` and a length in frames.
    """

    task: str
    unit: str
    passes: int
    final_stage: str
    videos: Sequence[Any]

    def run(self, video: Any, stage: Path, bar: "VideoProgress") -> tuple[list[str], dict]:
        """Propagate ``video``, write its outputs under ``stage`` and tell ``bar`` each of its
        ``passes * len(video)`` steps; return the paths (relative to ``stage``) to commit and the video's
        JSON record."""
        ...

    def score(self, out: Path, records: list[dict]) -> Any:
        """The metric over every video's outputs in ``out`` and records (in the reader's order); writes its files."""
        ...


def run_benchmark(bench: Benchmark, out: str | Path, *, folder=None, progress: bool = True) -> Any:
    """Run each video of ``bench`` that ``folder`` (a resumable :class:`~tritoncorr.evals.resume.EvalFolder`
    at ``out``; default a fresh one) does not hold yet, commit it, then score every video; ``progress``:
    one rich progress display over the whole work, naming its stages, with an ETA."""
    from tritoncorr.evals.resume import EvalFolder

    out = Path(out)
    folder = folder if folder is not None else EvalFolder.fresh(out, bench.task)
    todo = [v for v in bench.videos if folder.record(v.name) is None]
    with VideoProgress(progress, [len(v) for v in todo], unit=bench.unit, passes=bench.passes) as bar:
        for v in todo:
            bar.start(v.name)
            stage = folder.staging(v.name)
            paths, record = bench.run(v, stage, bar)
            folder.commit(v.name, stage, paths, record)
        bar.stage(bench.final_stage)
        return bench.score(out, [folder.record(v.name) for v in bench.videos])


@dataclass
class _Propagation:
    """How every video of one evaluation is propagated: ``features_fn``, the ``PropagationConfig``, the
    network ``input_size`` (None: native), ``device``, the input ``color`` space, and ``overlays``."""

    features_fn: Callable[[torch.Tensor], torch.Tensor]
    config: Any
    input_size: tuple[int, int] | None
    device: torch.device | str
    color: str
    overlays: bool

    def from_first_frame(
        self, video, codec: LabelCodec, bar: VideoProgress, size: tuple[int, int] | None = None
    ) -> PropagatedVideo:
        """Features of every frame of ``video`` (its ``load_frame``; ``size``: the size every frame must have),
        then ``codec``'s first-frame labels propagated: two steps of ``bar`` per frame."""
        bar.stage("features")
        vf = compute_features(
            self.features_fn,
            video.load_frame,
            len(video),
            config=self.config,
            input_size=self.input_size,
            size=size,
            device=self.device,
            color=self.color,
            on_frame=bar.frame,
        )
        bar.stage("propagating")
        prop = propagate_labels(vf, codec, self.config, on_frame=bar.frame)
        bar.frame()  # frame 0 is the annotation
        return prop

    def overlay(self, path: Path, frame: np.ndarray, ids: np.ndarray) -> None:
        """When ``overlays``: ``frame`` with the coloured ids at ``path`` (:func:`tritoncorr.visualize.save_overlay`)."""
        if self.overlays:
            from tritoncorr.visualize import save_overlay

            save_overlay(path, frame, ids)


class JhmdbBenchmark:
    """JHMDB (:mod:`tritoncorr.evals.jhmdb`): first-frame joints as CRW's heat maps (``JointsCodec``),
    ``keypoints/<clip>.npy`` per clip, PCK over all clips. Progress: features, propagation, decoding."""

    task, unit, passes, final_stage = "jhmdb", "clip", 3, "scoring"

    def __init__(self, dataset, propagation: _Propagation):
        self.videos, self.prop = dataset.clips, propagation

    def run(self, clip, stage: Path, bar: VideoProgress) -> tuple[list[str], dict]:
        from tritoncorr.evals.jhmdb import JointsCodec

        gt = clip.joints()
        prop = self.prop.from_first_frame(clip, JointsCodec(gt[:, :, 0]), bar)
        bar.stage("decoding")
        pred = np.stack([_decoded(prop, t, bar) for t in range(len(clip))], axis=-1)  # (2, J, T)
        n = min(pred.shape[-1], gt.shape[-1])
        if gt.shape[-1] != len(clip):
            warnings.warn(
                f"{clip.mat}: {gt.shape[-1]} annotated frames for {len(clip)} images; scoring {n}", stacklevel=1
            )
        kp = stage / "keypoints" / f"{clip.name}.npy"
        kp.parent.mkdir(parents=True, exist_ok=True)
        np.save(kp, pred)
        if self.prop.overlays:
            from tritoncorr.visualize import save_joints_overlay

            for t in range(len(clip)):
                g = gt[:, :, t] if t < gt.shape[-1] else None
                save_joints_overlay(
                    stage / "overlays" / clip.name / f"{clip.frames[t].stem}.jpg", clip.load_frame(t), pred[:, :, t], g
                )
        return [f"keypoints/{clip.name}.npy", f"overlays/{clip.name}"], {"frames": n}

    def score(self, out: Path, records: list[dict]):
        from tritoncorr.evals.jhmdb import pck, write_per_clip_csv

        gts, preds = [], []
        for clip in self.videos:
            gt, pred = clip.joints(), np.load(out / "keypoints" / f"{clip.name}.npy")
            n = min(pred.shape[-1], gt.shape[-1])
            gts.append(gt[:, :, :n])
            preds.append(pred[:, :, :n])
        result = pck(gts, preds, names=[clip.name for clip in self.videos])
        result.write_csv(out)
        write_per_clip_csv(out / "per-clip.csv", result)
        return result


def _decoded(prop: PropagatedVideo, t: int, bar: VideoProgress) -> Any:
    """``prop.decode(t)``, one step of ``bar``."""
    pred = prop.decode(t)
    bar.frame()
    return pred


def first_frame_codec(ids: np.ndarray) -> MaskCodec:
    """VIP: CRW's label set for a first frame: channels for the ids present, ids outside 0..19 as background."""
    from tritoncorr.evals.vip import NUM_CLASSES

    ids = np.asarray(ids)
    clean = np.where(ids < NUM_CLASSES, ids, 0)
    return MaskCodec.present(clean, void=None)


class VipBenchmark:
    """VIP (:mod:`tritoncorr.evals.vip`): first-frame parts as index maps (:func:`first_frame_codec`), one
    grey PNG of part ids per frame, each video's confusion histogram, mIoU over all. Progress: features,
    propagation, decoding and writing, scoring."""

    task, unit, passes, final_stage = "vip", "video", 4, "scoring"

    def __init__(self, dataset, propagation: _Propagation):
        self.videos, self.prop = dataset.videos, propagation

    def run(self, v, stage: Path, bar: VideoProgress) -> tuple[list[str], dict]:
        from tritoncorr.evals.vip import VipFormatError, video_histogram, write_prediction

        try:
            prop = self.prop.from_first_frame(v, first_frame_codec(v.load_label(0)), bar, size=v.size)
        except VideoFormatError as err:
            raise VipFormatError(f"video {v.name!r}: {err}") from err
        bar.stage("decoding")
        for t in range(len(v)):
            ids = _decoded(prop, t, bar)
            write_prediction(stage / v.name / f"{v.frames[t].stem}.png", ids)
            self.prop.overlay(stage / "overlays" / v.name / f"{v.frames[t].stem}.jpg", v.load_frame(t), ids)
        bar.stage("scoring")
        hist, n = video_histogram(stage, v)
        bar.advance(len(v))
        return [v.name, f"overlays/{v.name}"], {"hist": hist.tolist(), "frames": n}

    def score(self, out: Path, records: list[dict]):
        from tritoncorr.evals.vip import VipScores

        scores = VipScores(
            np.sum([np.asarray(r["hist"], np.int64) for r in records], axis=0),
            frames=sum(int(r["frames"]) for r in records),
        )
        scores.write_csvs(out)
        return scores


class YtvosBenchmark:
    """YouTube-VOS valid export (:mod:`tritoncorr.evals.ytvos`): each video propagated once from its first
    annotated frame, objects joining at their own first frame (:func:`tritoncorr.predictor.track_objects`:
    features, propagation and decoding frame by frame); palette PNGs, then the server zip."""

    task, unit, passes, final_stage = "ytvos", "video", 1, "writing the zip"

    def __init__(self, dataset, propagation: _Propagation, year: str, make_zip: bool):
        self.dataset, self.videos, self.prop = dataset, dataset.videos, propagation
        self.year, self.make_zip = str(year), make_zip

    def run(self, v, stage: Path, bar: VideoProgress) -> tuple[list[str], dict]:
        from tritoncorr.evals.ytvos import YtvosFormatError, write_indexed_png
        from tritoncorr.predictor import track_objects

        masks = {}
        for t0, objs in v.groups().items():
            ann = v.load_annotation(t0)
            masks[t0] = np.where(np.isin(ann, objs), ann, 0)
        first = min(masks)
        palette = v.palette()

        def write(t: int, ids: np.ndarray) -> None:
            write_indexed_png(stage / "Annotations" / v.name / f"{v.frames[t].stem}.png", ids, palette)
            self.prop.overlay(stage / "overlays" / v.name / f"{v.frames[t].stem}.jpg", v.load_frame(t), ids)
            bar.frame(t)

        bar.stage("features, propagation, decoding")
        for t in range(first):
            write(t, np.zeros(v.size, np.uint8))
        frames = (v.load_frame(t) for t in range(first, len(v)))
        try:
            for t, ids in track_objects(
                frames,
                masks,
                self.prop.features_fn,
                self.prop.config,
                color=self.prop.color,
                short_side=0,
                work_size=self.prop.input_size,
                device=self.prop.device,
                start=first,
            ):
                write(t, ids.astype(np.uint8))
        except (VideoFormatError, ValueError) as err:
            raise YtvosFormatError(f"video {v.name!r}: {err}") from err
        return [f"Annotations/{v.name}", f"overlays/{v.name}"], {"frames": len(v)}

    def score(self, out: Path, records: list[dict]):
        from tritoncorr.evals.ytvos import YtvosExport, zip_annotations

        names = [v.name for v in self.videos]
        zip_path = None
        if self.make_zip:
            zip_path = zip_annotations(out, out / f"ytvos{self.year}-valid-submission.zip", names)
        return YtvosExport(
            out / "Annotations",
            zip_path,
            len(self.videos),
            sum(len(v) for v in self.videos),
            sum(len(v.starts) for v in self.videos),
            list(self.dataset.notes),
        )


def _task_config(config, task: str):
    """``config``, or the ``dul`` preset's settings for ``task`` when None."""
    if config is not None:
        return config
    from tritoncorr.propagation import task_preset

    return task_preset("dul", task).config


def evaluate_features_on_jhmdb(
    features_fn: Callable,
    *,
    root: str | Path | None = None,
    dataset=None,
    out: str | Path,
    config=None,
    input_size: tuple[int, int] | None = (320, 320),
    device="cpu",
    overlays: bool = False,
    progress: bool = True,
    color: str = "rgb",
    split: int | None = 1,
    list_file: str | Path | None = None,
    clips: Sequence[str] | None = None,
    folder=None,
):
    """Propagate the first-frame joints of every clip with ``features_fn`` and score PCK (:class:`JhmdbBenchmark`).

    Args:
        features_fn: ``(1, 3, H, W)`` -> ``(1, C, h, w)`` (see :func:`compute_features`).
        root / dataset: the JHMDB root (with ``split``, ``list_file``, ``clips``) or a built
            :class:`~tritoncorr.evals.jhmdb.JhmdbDataset`.
        out: ``<out>/pck.csv``, ``<out>/per-clip.csv``, ``<out>/keypoints/<action>/<clip>.npy``
            (float32 ``(2, 15, T)`` predicted pixels, -1 missing), overlays in ``<out>/overlays/``.
        config: a ``PropagationConfig`` (default: the ``dul`` preset's JHMDB task preset).
        input_size: ``(H, W)`` network input (CRW: 320 x 320), None for native.
        device, overlays, progress, color, folder: as :func:`evaluate_features_on_davis`.

    Returns:
        the :class:`~tritoncorr.evals.jhmdb.PCKResult`.
    """
    from tritoncorr.evals.jhmdb import JhmdbDataset

    ds = dataset if dataset is not None else JhmdbDataset(root, split=split, list_file=list_file, clips=clips)
    prop = _Propagation(features_fn, _task_config(config, "jhmdb"), input_size, device, color, overlays)
    return run_benchmark(JhmdbBenchmark(ds, prop), out, folder=folder, progress=progress)


def evaluate_features_on_vip(
    features_fn: Callable,
    *,
    root: str | Path | None = None,
    dataset=None,
    out: str | Path,
    config=None,
    input_size: tuple[int, int] | None = (560, 560),
    device="cpu",
    overlays: bool = False,
    progress: bool = True,
    color: str = "rgb",
    split: str = "val",
    videos: Sequence[str] | None = None,
    folder=None,
):
    """Propagate every video's first-frame parts with ``features_fn``, write the predictions, score mIoU
    (:class:`VipBenchmark`).

    Args:
        features_fn: ``(1, 3, H, W)`` -> ``(1, C, h, w)`` (:func:`compute_features`).
        root / dataset: the VIP root (with ``split``, ``videos``) or a built :class:`~tritoncorr.evals.vip.VipDataset`.
        out: ``<out>/<video>/<frame>.png`` predictions, the two CSVs, ``<out>/overlays/<video>/``.
        config: a ``PropagationConfig`` (default: the ``dul`` preset's VIP task preset).
        input_size: ``(H, W)`` network input (560 x 560), None for native.
        device, overlays, progress, color, folder: as :func:`evaluate_features_on_davis`.

    Returns:
        the :class:`~tritoncorr.evals.vip.VipScores`.
    """
    from tritoncorr.evals.vip import VipDataset

    ds = dataset if dataset is not None else VipDataset(root, split, videos)
    prop = _Propagation(features_fn, _task_config(config, "vip"), input_size, device, color, overlays)
    return run_benchmark(VipBenchmark(ds, prop), out, folder=folder, progress=progress)


def export_features_on_ytvos(
    features_fn: Callable,
    *,
    root: str | Path | None = None,
    dataset=None,
    out: str | Path,
    year: str = "2018",
    config=None,
    input_size: tuple[int, int] | None = None,
    device="cpu",
    overlays: bool = False,
    progress: bool = True,
    color: str = "rgb",
    videos: Sequence[str] | None = None,
    make_zip: bool = True,
    folder=None,
):
    """Propagate each video once from its first annotated frame, objects joining at their own first
    frame; write the PNGs and the zip (:class:`YtvosBenchmark`).

    Args:
        features_fn: ``(1, 3, H, W)`` -> ``(1, C, h, w)``; called once per frame from the first annotation on.
        root / dataset: the ``valid`` folder (with ``videos``) or a built :class:`~tritoncorr.evals.ytvos.YtvosDataset`.
        out: ``<out>/Annotations/<video>/<frame>.png``, ``<out>/ytvos<year>-valid-submission.zip``,
            overlays in ``<out>/overlays/<video>/``.
        year: "2018" or "2019" (names the zip).
        config: a ``PropagationConfig`` (default: the ``dul`` preset's YouTube-VOS task preset).
        input_size: ``(H, W)`` network input, None for native.
        device, overlays, progress, color, folder: as :func:`evaluate_features_on_davis`.

    Returns:
        the :class:`~tritoncorr.evals.ytvos.YtvosExport` (what was written).
    """
    from tritoncorr.evals.ytvos import YEARS, YtvosDataset

    if str(year) not in YEARS:
        raise ValueError(f"year must be one of {YEARS}, got {year!r}")
    ds = dataset if dataset is not None else YtvosDataset(root, videos)
    prop = _Propagation(features_fn, _task_config(config, "ytvos"), input_size, device, color, overlays)
    return run_benchmark(YtvosBenchmark(ds, prop, year, make_zip), out, folder=folder, progress=progress)


# ----------------------------------------------------------------------------------------------
# Dataset roots
# ----------------------------------------------------------------------------------------------


def default_davis_root() -> Path | None:
    """``$TRITONCORR_DATA/DAVIS`` or ``~/.cache/tritoncorr/DAVIS`` when it exists, else None."""
    from tritoncorr.data.config import find_dataset

    return find_dataset("DAVIS")


def synthetic_davis_root(create: bool = True) -> Path:
    """The generated synthetic set (``<data home>/synthetic-davis``), written once (atomically) on first use."""
    from tritoncorr.data.config import data_home
    from tritoncorr.evals.synthetic import make_synthetic_davis

    root = data_home() / "synthetic-davis"
    if (root / "ImageSets" / "2017" / "val.txt").is_file() or not create:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-davis-", dir=root.parent))
    try:
        make_synthetic_davis(tmp, **SYNTHETIC_DEFAULTS)
        try:
            tmp.rename(root)
        except OSError:  # another process won the race, or a partial folder exists
            if not (root / "ImageSets" / "2017" / "val.txt").is_file():
                shutil.rmtree(root, ignore_errors=True)
                tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root

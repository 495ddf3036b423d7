"""The task-generic label-propagation runner, and the DAVIS-2017 evaluation built on it.

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
* benchmarks (``tritoncorr/evals/<benchmark>.py``: readers, codecs, metrics, writers) compose these;
  a new benchmark is one such file plus one CLI command.

DAVIS follows DUL (``docs/methods/dul.md`` section 3) under the default preset: frames at native
resolution, ImageNet normalisation, one frame at a time, first-frame one-hot labels (channel 0
background, channel k = object id k) bilinearly (align_corners=True) point-sampled to the grid,
propagated soft labels bilinearly upsampled to the annotation size, argmax over all channels; the
frame-0 output is the downsampled-then-upsampled ground truth. :func:`evaluate_features_on_davis`
(CLI and engine) and :func:`propagate_sequence` keep their interface and results.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from tritoncorr.evals.davis import (
    GLOBAL_COLUMNS,
    VOID,
    DavisDataset,
    DavisFormatError,
    DavisScores,
    evaluate_results,
    write_palette_png,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_COLORS = ("rgb", "lab")
SYNTHETIC_DEFAULTS = dict(num_sequences=3, num_frames=12, height=240, width=432, seed=0)

__all__ = [
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
    "default_root",
    "eval_davis_cli",
    "eval_jhmdb_cli",
    "eval_vip_cli",
    "eval_ytvos_cli",
    "evaluate_features_on_davis",
    "frame_to_tensor",
    "propagate_labels",
    "propagate_sequence",
    "pil_nearest_indices",
    "propagate_video",
    "resize_nearest",
    "synthetic_davis_root",
]


class VideoFormatError(ValueError):
    """A video whose frames do not fit together (sizes differ) or do not fit its annotation."""


def frame_to_tensor(frame: np.ndarray, device: torch.device | str = "cpu", color: str = "rgb",
                    size: tuple[int, int] | None = None) -> torch.Tensor:
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


def frame_features(features_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   padded: tuple[int, int], normalize: bool) -> torch.Tensor:
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
            raise ValueError(f"features_fn returned {tuple(f.shape)} for frame {t}, {tuple(feats.shape[1:])} for frame 0")
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
def propagate_labels(video: VideoFeatures, codec: LabelCodec, config=None, *, start: int = 0,
                     on_frame: Callable[[int], None] | None = None) -> PropagatedVideo:
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
        raise RuntimeError(f"{type(codec).__name__}.encode returned {tuple(first.shape)}, expected (L, {g.grid[0]}, {g.grid[1]})")
    soft = propagate(feats, first, image_size=g.padded_size, on_frame=on_frame, **cfg.as_kwargs())
    if tuple(soft.shape) != (feats.shape[0], *first.shape):
        raise RuntimeError(f"propagate returned {tuple(soft.shape)}, expected {(feats.shape[0], *first.shape)}")
    soft = soft.clone()
    soft[0] = first  # DUL: the frame-0 output is the downsampled ground truth
    return PropagatedVideo(soft, g, codec, cfg, start)


def propagate_video(features_fn, frames, num_frames: int, codec: LabelCodec, config=None, *,
                    input_size: tuple[int, int] | None = None, device: torch.device | str = "cpu",
                    color: str = "rgb", on_frame: Callable[[int], None] | None = None) -> PropagatedVideo:
    """:func:`compute_features` then :func:`propagate_labels` from frame 0."""
    vf = compute_features(features_fn, frames, num_frames, config=config, input_size=input_size,
                          device=device, color=color, on_frame=on_frame)
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
            raise ValueError(f"ids {sorted(set(np.unique(ids[ch < 0]).tolist()))} are not among the labels {lab.tolist()}")
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
            raise VideoFormatError(f"the annotation is {self.size[1]}x{self.size[0]} but the frames are "
                                   f"{geometry.size[1]}x{geometry.size[0]}")
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
        vf = compute_features(features_fn, frames, num_frames, config=cfg, input_size=input_size, size=codec.size,
                              device=device, color=color, on_frame=on_frame)
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
                folder.commit(seq.name, stage, [seq.name, f"overlays/{seq.name}"],
                              {"objects": objects_to_json(objects)})
                bar.advance(len(seq))

            for seq in todo:
                bar.start(seq.name)
                stage = folder.staging(seq.name)
                codec = MaskCodec(seq.load_mask(0))
                vf = sequence_features(features_fn, seq.name, seq.load_frame, len(seq), codec.size, config=config,
                                       device=device, color=color, cache=feature_cache, bar=bar)
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


def sequence_features(features_fn, name: str, frames, num_frames: int, size: tuple[int, int], *, config, device,
                      color: str = "rgb", input_size: tuple[int, int] | None = None, cache=None,
                      bar: "VideoProgress | None" = None) -> VideoFeatures:
    """:func:`compute_features` of one video, read from / written to ``cache``
    (:class:`tritoncorr.feature_cache.FeatureCache`) when given; ``bar`` counts its frames either way.
    Frame-size errors are :class:`DavisFormatError`."""
    if bar is not None:
        bar.stage("features")
    vf = cache.load(name, num_frames, size) if cache is not None else None
    if vf is not None:
        if bar is not None:
            bar.stage("features (cached)")
            bar.advance(num_frames)
        return VideoFeatures(vf.feats.to(device), vf.geometry)
    try:
        vf = compute_features(features_fn, frames, num_frames, config=config, input_size=input_size, size=size,
                              device=device, color=color, on_frame=bar.frame if bar is not None else None)
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

    def __init__(self, enabled: bool, lengths: Sequence[int], label: str = "propagating", unit: str = "sequence",
                 passes: int = 1):
        self.enabled, self.lengths, self.label, self.unit = bool(enabled), list(lengths), label, unit
        self.passes = int(passes)
        self.bar = None
        self.task = None
        self.i = 0

    def __enter__(self) -> "VideoProgress":
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn(f"{{task.description}} {self.unit} {{task.fields[seqs]}} {{task.fields[seq]}}"),
                                BarColumn(), MofNCompleteColumn(),
                                TextColumn("frames" if self.passes == 1 else f"frame-steps ({self.passes} per frame)"),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
            self.bar.__enter__()
            self.task = self.bar.add_task(self.label, total=self.passes * sum(self.lengths), seq="",
                                          seqs=f"0/{len(self.lengths)}")
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
# CLI
# ----------------------------------------------------------------------------------------------


def _data_home() -> Path:
    from tritoncorr.data.config import data_home

    return data_home()


def default_davis_root() -> Path | None:
    """``$TRITONCORR_DATA/DAVIS`` or ``~/.cache/tritoncorr/DAVIS`` when it exists, else None."""
    candidates = []
    if os.environ.get("TRITONCORR_DATA"):
        candidates.append(Path(os.environ["TRITONCORR_DATA"]).expanduser() / "DAVIS")
    candidates.append(Path("~/.cache/tritoncorr/DAVIS").expanduser())
    for c in candidates:
        if c.is_dir():
            return c
    return None


def synthetic_davis_root(create: bool = True) -> Path:
    """The generated synthetic set (``<data home>/synthetic-davis``), written once (atomically) on first use."""
    from tritoncorr.evals.synthetic import make_synthetic_davis

    root = _data_home() / "synthetic-davis"
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


def _fail(msg: str):
    import typer

    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code=2)


def _print_scores(console, scores: DavisScores, title: str) -> None:
    from rich.table import Table

    g = Table(title=f"{title}: global ({len(scores.objects)} objects)")
    row = scores.global_row()
    for c in GLOBAL_COLUMNS:
        g.add_column(c, justify="right")
    g.add_row(*(f"{row[c]:.3f}" for c in GLOBAL_COLUMNS))
    console.print(g)
    s = Table(title=f"{title}: per sequence")
    for c, j in (("Sequence", "left"), ("J-Mean", "right"), ("F-Mean", "right")):
        s.add_column(c, justify=j)
    for name, jm, fm in scores.per_sequence_rows():
        s.add_row(name, f"{jm:.3f}", f"{fm:.3f}")
    console.print(s)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        _fail(f"--device {device}: CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError:
        _fail(f"--device must be cpu, cuda or auto, got {device!r}")


def eval_davis_cli(
    *,
    root: Path | None,
    results: Path | None,
    checkpoint: Path | None,
    seed: int,
    out: Path | None,
    split: str,
    resolution: str,
    sequences: list[str] | None,
    preset: str | None,
    context: int | None,
    radius: float | None,
    topk: int | None,
    temperature: float | None,
    overlays: bool,
    device: str,
    precision: str = "fp32",
    overwrite: bool = False,
    cache_features: Path | None = None,
    workers: int = 0,
) -> DavisScores:
    """``tritoncorr eval davis``: score existing results (``--results``) or propagate with a backbone and score.
    ``--out`` is resumable (:mod:`tritoncorr.evals.resume`); ``overwrite`` starts it again."""
    from rich.console import Console

    console = Console()
    sequences = list(sequences) if sequences else None
    t0 = time.perf_counter()

    if results is not None:
        if root is None:
            root = default_davis_root()
            if root is None:
                _fail("--results needs the ground truth: pass --root (no DAVIS found under $TRITONCORR_DATA/DAVIS "
                      "or ~/.cache/tritoncorr/DAVIS)")
        try:
            scores = evaluate_results(root, results, split, resolution, sequences, progress=True, workers=workers)
        except DavisFormatError as err:
            _fail(str(err))
        g_path, s_path = scores.write_csvs(results)
        _print_scores(console, scores, f"DAVIS-2017 {split} ({root})")
        console.print(f"wrote {g_path} and {s_path}  ({time.perf_counter() - t0:.1f} s)")
        return scores

    synthetic = False
    if root is None:
        root = default_davis_root()
        if root is None:
            root = synthetic_davis_root()
            synthetic = True
    if not Path(root).is_dir():
        _fail(f"DAVIS root {root} does not exist")

    if out is None:
        out = Path("eval-davis") / ("synthetic" if synthetic else split)
    if synthetic:
        console.print(f"[bold yellow]No DAVIS found: evaluating on the generated SYNTHETIC set at {root}. "
                      "These are NOT DAVIS numbers.[/]")
    console.print(f"DAVIS root {root} ({split}, {resolution})", soft_wrap=True)
    fmodel, config, _, dev = _task_settings(
        console, task="davis", checkpoint=checkpoint, seed=seed, device=device, preset=preset, context=context,
        radius=radius, topk=topk, temperature=temperature, size=None, precision=precision)
    features_fn = fmodel.features
    try:
        names = DavisDataset(root, split, resolution, sequences, require_all_masks=True).names
    except DavisFormatError as err:
        _fail(str(err))
    folder = _eval_folder(out, task="davis", checkpoint=checkpoint, seed=seed, fmodel=fmodel, config=config,
                          input_size=None, precision=precision, overwrite=overwrite, split=split,
                          resolution=resolution, overlays=overlays)
    _record_provenance(out, "davis", checkpoint, fmodel, preset, config, None, precision, dev, split=split,
                       resolution=resolution, sequences=sequences, root=str(root), synthetic=synthetic)

    cache = feature_cache_for(cache_features, checkpoint, fmodel, config, None, precision)
    if cache is not None:
        console.print(f"feature cache {cache.folder}", soft_wrap=True)
    try:
        scores = _resumable(console, folder, names, lambda: evaluate_features_on_davis(
            features_fn, root=root, out=out, split=split, resolution=resolution, sequences=sequences,
            config=config, device=dev, overlays=overlays, progress=True, color=fmodel.color, folder=folder,
            feature_cache=cache, workers=workers,
        ))
    except DavisFormatError as err:
        _fail(str(err))
    title = "SYNTHETIC (not DAVIS)" if synthetic else f"DAVIS-2017 {split}"
    _print_scores(console, scores, title)
    g_path, s_path = scores.csv_paths(out)
    console.print(f"results in {out} (CSVs {g_path.name}, {s_path.name}); wall time {time.perf_counter() - t0:.1f} s")
    return scores


# ----------------------------------------------------------------------------------------------
# CLI: shared pieces of the jhmdb / vip / ytvos commands
# ----------------------------------------------------------------------------------------------


def default_root(*names: str) -> Path | None:
    """The first existing ``$TRITONCORR_DATA/<name>`` or ``~/.cache/tritoncorr/<name>`` over ``names``, else None."""
    bases = []
    if os.environ.get("TRITONCORR_DATA"):
        bases.append(Path(os.environ["TRITONCORR_DATA"]).expanduser())
    bases.append(Path("~/.cache/tritoncorr").expanduser())
    for base in bases:
        for name in names:
            if (base / name).is_dir():
                return base / name
    return None


def _root_or_fail(root: Path | None, what: str, *names: str) -> Path:
    if root is None:
        root = default_root(*names)
        if root is None:
            _fail(f"no {what} found under $TRITONCORR_DATA or ~/.cache/tritoncorr (looked for {', '.join(names)}): "
                  "pass --root")
    if not Path(root).is_dir():
        _fail(f"{what} root {root} does not exist")
    return Path(root)


def _size_text(size: tuple[int, int] | None) -> str:
    return "native" if size is None else f"{size[1]}x{size[0]}"


def _task_settings(console, *, task: str, checkpoint, seed: int, device: str, preset: str | None,
                   context, radius, topk, temperature, size: int | None, precision: str = "fp32"):
    """Load the model (``precision``: its feature extractor in fp32 or bf16) and resolve the task
    preset with the overrides; print both. Exits 2 on bad input.

    Returns ``(feature model, PropagationConfig, input_size, device)``.
    """
    dev = _resolve_device(device)
    from tritoncorr.methods.inference import feature_stride, load_feature_model
    from tritoncorr.propagation import PRESETS, task_preset

    try:
        fmodel = load_feature_model(checkpoint, seed=seed, device=dev, precision=precision)
    except (FileNotFoundError, ValueError, TypeError) as err:
        _fail(str(err))
    name = preset if preset is not None else fmodel.preset
    if name not in PRESETS:
        _fail(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    if radius is not None:
        if float(radius) != int(radius):
            _fail(f"--radius must be a whole number of feature cells, got {radius}")
        radius = int(radius)
    if size is not None and size < 0:
        _fail(f"--size must be >= 0 (0 = native resolution), got {size}")
    tp = task_preset(name, task, stride=feature_stride(fmodel))
    overrides = {k: v for k, v in dict(context=context, radius=radius, topk=topk, temperature=temperature).items()
                 if v is not None}
    try:
        config = dataclasses.replace(tp.config, **overrides)
    except (TypeError, ValueError) as err:
        _fail(f"invalid propagation settings {overrides}: {err}")
    input_size = tp.input_size if size is None else (None if size == 0 else (int(size), int(size)))
    fields = ", ".join(f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config))
    console.print(f"model: {fmodel.description}; device {dev}", soft_wrap=True)
    origin = "from the checkpoint" if preset is None else "set by --preset"
    console.print(f"propagation preset {name!r} ({origin}) for {task}, input {_size_text(input_size)}: {fields}"
                  f" [{tp.source}]", soft_wrap=True)
    return fmodel, config, input_size, dev


def _record_provenance(out, benchmark: str, checkpoint, fmodel, preset: str | None, config, input_size, precision: str,
                       device, **settings) -> None:
    """``<out>/provenance.json``: code, versions, device, command, checkpoint SHA-256 and the evaluation
    settings (:func:`tritoncorr.provenance.write_eval_provenance`)."""
    from tritoncorr.provenance import write_eval_provenance

    write_eval_provenance(out, benchmark=benchmark, checkpoint=checkpoint, model=fmodel.description,
                          preset=preset if preset is not None else fmodel.preset, config=config,
                          input_size=input_size, precision=precision, device=device, **settings)


def feature_cache_for(folder: Path | None, checkpoint, fmodel, config, input_size, precision: str):
    """The :class:`~tritoncorr.feature_cache.FeatureCache` under ``folder`` for these weights and settings (None: no cache)."""
    if folder is None:
        return None
    from tritoncorr.feature_cache import FeatureCache, weights_identity

    return FeatureCache(Path(folder), weights_identity(checkpoint, fmodel.description), input_size, config.pad,
                        config.normalize, fmodel.color, precision)


def _catch_format_errors(fn, *errors):
    """Run ``fn()``; the benchmark's format errors (and frame-size errors) exit with code 2 and the message."""
    try:
        return fn()
    except (VideoFormatError, DavisFormatError, *errors) as err:
        _fail(str(err))


def _eval_folder(out: Path, *, task: str, checkpoint, seed: int, fmodel, config, input_size, precision: str,
                 overwrite: bool, **settings):
    """The resumable output folder of ``tritoncorr eval TASK --out OUT`` (:mod:`tritoncorr.evals.resume`):
    it records the settings that decide the outputs and the checkpoint's hash. Exits 2 when OUT holds
    an evaluation with other settings (unless ``overwrite``)."""
    from tritoncorr.engine.checkpoint import resolve_weights_path
    from tritoncorr.evals.resume import EvalFolder, EvalFolderError, file_sha256

    model = f"random-init seed {seed}" if checkpoint is None else file_sha256(resolve_weights_path(Path(checkpoint)))
    settings.update(propagation=dataclasses.asdict(config), input_size=list(input_size) if input_size else None,
                    color=fmodel.color, precision=precision)
    try:
        return EvalFolder(out, task=task, settings=settings, checkpoint=model, overwrite=overwrite)
    except EvalFolderError as err:
        _fail(str(err))


def _resumable(console, folder, names: Sequence[str], run: Callable[[], Any]):
    """``run()``, after saying how many of ``names`` ``folder`` already holds; Ctrl-C exits with status
    130 and says how to continue (the folder is consistent at any point: :mod:`tritoncorr.evals.resume`)."""
    import typer

    done = folder.finished(names)
    if done:
        console.print(f"resuming {folder.out}: {len(done)} of {len(names)} finished, skipped", soft_wrap=True)
    try:
        return run()
    except BaseException as err:
        folder.tidy()
        if not isinstance(err, KeyboardInterrupt):
            raise
        kept = len(folder.finished(names))
        typer.echo(f"interrupted: {kept} of {len(names)} finished in {folder.out} are kept; rerun the same command "
                   "to continue", err=True)
        raise typer.Exit(code=130) from None


def eval_jhmdb_cli(
    *,
    root: Path | None,
    checkpoint: Path | None,
    seed: int,
    out: Path | None,
    split: int,
    list_file: Path | None,
    clips: list[str] | None,
    preset: str | None,
    context: int | None,
    radius: float | None,
    topk: int | None,
    temperature: float | None,
    size: int | None,
    overlays: bool,
    device: str,
    precision: str = "fp32",
    overwrite: bool = False,
):
    """``tritoncorr eval jhmdb``: propagate the first-frame joints of every test clip, PCK@0.1..0.5, table and CSVs.
    ``--out`` is resumable (:mod:`tritoncorr.evals.resume`)."""
    from rich.console import Console
    from rich.table import Table

    from tritoncorr.evals.jhmdb import JOINT_NAMES, JhmdbDataset, JhmdbFormatError, evaluate_features_on_jhmdb

    console = Console()
    t0 = time.perf_counter()
    root = _root_or_fail(root, "JHMDB", "JHMDB", "jhmdb")
    ds = _catch_format_errors(lambda: JhmdbDataset(root, split=split, list_file=list_file, clips=clips or None),
                              JhmdbFormatError)
    fmodel, config, input_size, dev = _task_settings(
        console, task="jhmdb", checkpoint=checkpoint, seed=seed, device=device, preset=preset, context=context,
        radius=radius, topk=topk, temperature=temperature, size=size, precision=precision)
    console.print(f"JHMDB root {root}: {len(ds)} clip(s), {ds.note}", soft_wrap=True)
    out = Path(out) if out is not None else Path("eval-jhmdb") / f"split{split}"
    folder = _eval_folder(out, task="jhmdb", checkpoint=checkpoint, seed=seed, fmodel=fmodel, config=config,
                          input_size=input_size, precision=precision, overwrite=overwrite, overlays=overlays)
    _record_provenance(out, "jhmdb", checkpoint, fmodel, preset, config, input_size, precision, dev, split=split,
                       clips=clips, root=str(root))
    res = _resumable(console, folder, [c.name for c in ds.clips], lambda: _catch_format_errors(
        lambda: evaluate_features_on_jhmdb(
            fmodel.features, dataset=ds, out=out, config=config, input_size=input_size, device=dev, overlays=overlays,
            progress=True, color=fmodel.color, folder=folder), JhmdbFormatError))
    g = Table(title=f"JHMDB PCK ({res.clips} clips, {int(res.counts.sum())} joint-frames), %")
    for a in res.thresholds:
        g.add_column(f"PCK@{a:g}", justify="right")
    g.add_row(*(f"{v:.2f}" for v in res.mean))
    console.print(g)
    s = Table(title="per joint, %")
    s.add_column("Joint")
    for a in res.thresholds:
        s.add_column(f"@{a:g}", justify="right")
    for j, name in enumerate(JOINT_NAMES):
        s.add_row(name, *(f"{v:.2f}" for v in res.per_joint[j]))
    console.print(s)
    console.print(f"results in {out} (pck.csv, per-clip.csv, keypoints/); wall time {time.perf_counter() - t0:.1f} s",
                  soft_wrap=True)
    return res


def eval_vip_cli(
    *,
    root: Path | None,
    results: Path | None,
    checkpoint: Path | None,
    seed: int,
    out: Path | None,
    split: str,
    videos: list[str] | None,
    preset: str | None,
    context: int | None,
    radius: float | None,
    topk: int | None,
    temperature: float | None,
    size: int | None,
    overlays: bool,
    device: str,
    precision: str = "fp32",
    overwrite: bool = False,
):
    """``tritoncorr eval vip``: score existing results (``--results``) or propagate and score; mIoU table and CSVs.
    ``--out`` is resumable (:mod:`tritoncorr.evals.resume`)."""
    from rich.console import Console
    from rich.table import Table

    from tritoncorr.evals.vip import GLOBAL_COLUMNS as VIP_COLUMNS
    from tritoncorr.evals.vip import VIP_CLASSES, VipDataset, VipFormatError, evaluate_features_on_vip
    from tritoncorr.evals.vip import evaluate_results as vip_results

    console = Console()
    t0 = time.perf_counter()
    root = _root_or_fail(root, "VIP", "VIP_Fine", "VIP")
    ds = _catch_format_errors(lambda: VipDataset(root, split, videos or None), VipFormatError)
    if results is not None:
        scores = _catch_format_errors(lambda: vip_results(results_dir=results, dataset=ds), VipFormatError)
        out = Path(results)
    else:
        fmodel, config, input_size, dev = _task_settings(
            console, task="vip", checkpoint=checkpoint, seed=seed, device=device, preset=preset, context=context,
            radius=radius, topk=topk, temperature=temperature, size=size, precision=precision)
        console.print(f"VIP root {root}: {len(ds)} video(s) of {split}", soft_wrap=True)
        out = Path(out) if out is not None else Path("eval-vip") / split
        folder = _eval_folder(out, task="vip", checkpoint=checkpoint, seed=seed, fmodel=fmodel, config=config,
                              input_size=input_size, precision=precision, overwrite=overwrite, split=split,
                              overlays=overlays)
        _record_provenance(out, "vip", checkpoint, fmodel, preset, config, input_size, precision, dev, split=split,
                           videos=videos, root=str(root))
        scores = _resumable(console, folder, ds.names, lambda: _catch_format_errors(lambda: evaluate_features_on_vip(
            fmodel.features, dataset=ds, out=out, config=config, input_size=input_size, device=dev,
            overlays=overlays, progress=True, color=fmodel.color, folder=folder), VipFormatError))
    g_path, c_path = scores.write_csvs(out)
    g = Table(title=f"VIP {split}: {len(ds)} videos, {scores.frames} frames")
    for c in VIP_COLUMNS:
        g.add_column(c, justify="right")
    row = scores.global_row()
    g.add_row(*(f"{row[c]:.4f}" for c in VIP_COLUMNS))
    console.print(g)
    s = Table(title="per class")
    for c, j in (("Class", "left"), ("IoU", "right"), ("Acc", "right")):
        s.add_column(c, justify=j)
    for i, name in enumerate(VIP_CLASSES):
        s.add_row(name, f"{scores.class_iou[i]:.4f}", f"{scores.class_accuracy[i]:.4f}")
    console.print(s)
    console.print(f"results in {out} (CSVs {g_path.name}, {c_path.name}); wall time {time.perf_counter() - t0:.1f} s",
                  soft_wrap=True)
    return scores


def eval_ytvos_cli(
    *,
    root: Path | None,
    year: str,
    checkpoint: Path | None,
    seed: int,
    out: Path | None,
    videos: list[str] | None,
    preset: str | None,
    context: int | None,
    radius: float | None,
    topk: int | None,
    temperature: float | None,
    size: int | None,
    overlays: bool,
    make_zip: bool,
    device: str,
    precision: str = "fp32",
    overwrite: bool = False,
):
    """``tritoncorr eval ytvos``: export ``Annotations/`` and the server zip; there is no local score.
    ``--out`` is resumable (:mod:`tritoncorr.evals.resume`)."""
    from rich.console import Console
    from rich.table import Table

    from tritoncorr.evals.ytvos import YEARS, YtvosDataset, YtvosFormatError, export_features_on_ytvos

    console = Console()
    t0 = time.perf_counter()
    if str(year) not in YEARS:
        _fail(f"--year must be one of {', '.join(YEARS)}, got {year!r}")
    root = _root_or_fail(root, f"YouTube-VOS {year} valid", f"YouTube-VOS/{year}/valid", f"YouTube-VOS-{year}/valid")
    ds = _catch_format_errors(lambda: YtvosDataset(root, videos or None), YtvosFormatError)
    fmodel, config, input_size, dev = _task_settings(
        console, task="ytvos", checkpoint=checkpoint, seed=seed, device=device, preset=preset, context=context,
        radius=radius, topk=topk, temperature=temperature, size=size, precision=precision)
    console.print(f"YouTube-VOS {year} root {root}: {len(ds)} video(s)", soft_wrap=True)
    for note in ds.notes:
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True)
    out = Path(out) if out is not None else Path("eval-ytvos") / f"{year}-valid"
    folder = _eval_folder(out, task="ytvos", checkpoint=checkpoint, seed=seed, fmodel=fmodel, config=config,
                          input_size=input_size, precision=precision, overwrite=overwrite, overlays=overlays,
                          year=str(year))
    _record_provenance(out, "ytvos", checkpoint, fmodel, preset, config, input_size, precision, dev, split=str(year),
                       videos=videos, root=str(root))
    res = _resumable(console, folder, [v.name for v in ds], lambda: _catch_format_errors(
        lambda: export_features_on_ytvos(
            fmodel.features, dataset=ds, out=out, year=str(year), config=config, input_size=input_size, device=dev,
            overlays=overlays, progress=True, color=fmodel.color, make_zip=make_zip, folder=folder),
        YtvosFormatError))
    t = Table(title=f"YouTube-VOS {year} valid export")
    for c in ("Videos", "Frames", "Objects", "Annotations", "Zip"):
        t.add_column(c)
    t.add_row(str(res.videos), str(res.frames), str(res.objects), str(res.annotations),
              str(res.zip_path) if res.zip_path else "-")
    console.print(t)
    console.print(f"[bold]No local score[/]: the YouTube-VOS {year} valid ground truth is held by the evaluation "
                  f"server; upload {res.zip_path or res.annotations} to the YouTube-VOS {year} CodaLab competition. "
                  f"Wall time {time.perf_counter() - t0:.1f} s", soft_wrap=True)
    return res

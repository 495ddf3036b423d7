"""Object masks through a video: :class:`VideoPredictor` (SAM 2's shape) and :func:`track_objects`,
the one mechanism behind it, ``tritoncorr propagate`` and the YouTube-VOS export.

.. code-block:: python

    from tritoncorr import VideoPredictor

    predictor = VideoPredictor.from_pretrained()             # the embedded default; or "dul-ytvos", a path, a URL
    state = predictor.init_state("clip.mp4")                 # a video file, a frame folder, an array or an iterator
    predictor.add_new_mask(state, frame_idx=0, obj_id=1, mask=first_mask)   # (H, W) bool
    predictor.add_new_mask(state, frame_idx=40, obj_id=2, mask=late_mask)   # an object that appears later
    for frame_idx, obj_ids, masks in predictor.propagate_in_video(state):
        ...                                                  # masks: (len(obj_ids), H, W) bool, video resolution

Objects that appear mid-video (:func:`track_objects`). Every object gets a label channel from the
start. At a frame with new masks the output is the prediction with the re-annotated objects removed
and the given masks pasted over it (exactly the given masks where they have objects); that merged
frame becomes a new anchor of a :class:`~tritoncorr.propagation.StreamingPropagator`: the objects it
annotates, and the background, are predicted from its references (the preset's reference policy
counted from it) from then on; the other objects keep their earlier anchor. This is DUL's YouTube-VOS
scheme (``infer_vos.py``: paste a new object's ground truth into the running prediction, per-object
contexts). The background follows the newest anchor because its labels are the most complete: an
earlier anchor labels a later object's pixels as background (measured on the generated YouTube-VOS
layout of the tests: with the background kept on frame 0, even features that encode the ground truth
lose part of an object that starts later; with it on the newest anchor the export is exact).

Resolution. ``short_side`` (default 480, as DAVIS) downscales frames whose shorter side is larger
(never upscales; 0 = native): features and propagation run at that working size, masks come back at
the video's own size (soft labels bilinearly upsampled, then argmax). Memory is bounded by the preset's
reference window, not by the number of frames: frames are decoded when needed and only the frames a
later prediction can reference are kept.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PredictorState", "VideoPredictor", "track_objects"]


def _resize_ids(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Integer ids ``(H, W)`` -> ``size`` with PIL's nearest rule (int32 keeps ids above 255)."""
    from PIL import Image

    if ids.shape == tuple(size):
        return ids
    return np.asarray(Image.fromarray(ids.astype(np.int32)).resize((size[1], size[0]), Image.NEAREST))


@torch.no_grad()
def track_objects(
    frames: Iterable[np.ndarray],
    masks: Mapping[int, np.ndarray],
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    config,
    *,
    color: str = "rgb",
    short_side: int | None = 480,
    work_size: tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
    start: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Propagate object masks given at any frames through ``frames``; yields ``(t, ids)`` per frame.

    Args:
        frames: uint8 RGB ``(H, W, 3)`` frames, frame ``start`` first (consumed lazily, one at a time).
        masks: ``{frame index: integer ids (H, W)}`` at the frames' size (0 = background, any positive
            ids); ``start`` must be one of its keys.
        features_fn: ``(1, 3, h, w)`` frame in ``color`` space on ``device`` -> ``(1, C, h', w')``.
        config: a :class:`~tritoncorr.propagation.PropagationConfig`.
        short_side: working resolution (module docstring).
        work_size: ``(H, W)`` working size instead of ``short_side`` (a benchmark's fixed network input).
        start: the index of the first frame of ``frames`` (default: the first annotated frame).

    Yields:
        ``(t, ids)``: ``ids`` int64 ``(H, W)`` at the frames' size, the given mask merged in at
        annotated frames (module docstring). Stops when ``frames`` ends.

    Raises:
        ValueError: no mask at ``start``, masks of another size, too many objects, frames of varying size.
    """
    from tritoncorr.evaluate import frame_features, frame_to_tensor
    from tritoncorr.propagation import StreamingPropagator, channel_argmax, decode_labels, encode_labels
    from tritoncorr.video import resize_frame, working_size

    if not masks:
        raise ValueError("no masks: give at least one object mask")
    start = min(masks) if start is None else int(start)
    if start not in masks:
        raise ValueError(f"propagation starts at frame {start}, which has no mask (masks at {sorted(masks)})")
    cfg = config
    device = torch.device(device)
    ids_all = sorted({int(i) for m in masks.values() for i in np.unique(m) if i != 0})
    n_labels = len(ids_all) + 1
    limit = 64 if cfg.topk is None else 128
    if n_labels > limit:
        raise ValueError(f"{n_labels - 1} objects: this preset propagates at most {limit - 1}")
    lut = {i: c for c, i in enumerate(ids_all, start=1)}
    id_of = torch.tensor([0] + ids_all, dtype=torch.int64, device=device)
    prop = None
    for k, frame in enumerate(frames):
        t = start + k
        if prop is None:
            H0, W0 = frame.shape[:2]
            for f, m in masks.items():
                if m.shape != (H0, W0):
                    raise ValueError(f"the mask of frame {f} is {m.shape[1]}x{m.shape[0]}, the frames {W0}x{H0}")
            H, W = working_size((H0, W0), short_side) if work_size is None else (int(work_size[0]), int(work_size[1]))
            Hp, Wp = -(-H // cfg.pad) * cfg.pad, -(-W // cfg.pad) * cfg.pad
            prop = StreamingPropagator(cfg, image_size=(Hp, Wp))
        elif frame.shape[:2] != (H0, W0):
            raise ValueError(f"frame {t} is {frame.shape[1]}x{frame.shape[0]}, the first frame {W0}x{H0}")

        # work_channels and to_video are called in this iteration only: H, W, Hp, Wp, H0, W0 are this frame's
        # (fixed from frame 0 on)
        def work_channels(ids_video: np.ndarray) -> torch.Tensor:
            small = _resize_ids(ids_video, (H, W))  # noqa: B023
            ch = np.zeros(small.shape, np.int64)
            for i, c in lut.items():
                ch[small == i] = c
            ch = torch.from_numpy(ch).to(device)
            return F.pad(ch, (0, Wp - W, 0, Hp - H)) if (Hp, Wp) != (H, W) else ch  # noqa: B023

        def to_video(soft: torch.Tensor) -> torch.Tensor:
            up = decode_labels(soft, (Hp, Wp), align_corners=cfg.upsample_align_corners, minmax=cfg.minmax)  # noqa: B023
            up = up[:, :H, :W]  # noqa: B023
            if (H, W) != (H0, W0):  # noqa: B023
                up = F.interpolate(up[None], size=(H0, W0), mode="bilinear", align_corners=False)[0]  # noqa: B023
            return id_of[channel_argmax(up)]

        feats = frame_features(
            features_fn, frame_to_tensor(resize_frame(frame, (H, W)), device, color), (Hp, Wp), cfg.normalize
        )
        if k == 0:
            ids_out = torch.from_numpy(masks[t].astype(np.int64))
            prop.start(
                feats, encode_labels(work_channels(masks[t]), n_labels, tuple(feats.shape[1:]), cfg.label_downsample)
            )
        else:
            soft = prop.step(feats)
            ids_out = to_video(soft).cpu()
            if t in masks:
                new = masks[t]
                new_ch = work_channels(new)
                restarted = torch.zeros(n_labels, dtype=torch.bool, device=device)
                restarted[torch.unique(new_ch)] = True
                restarted[0] = True  # background from the newest anchor (module docstring)
                up = decode_labels(soft, (Hp, Wp), align_corners=cfg.upsample_align_corners, minmax=cfg.minmax)
                merged = channel_argmax(up)
                merged = torch.where(restarted[merged], torch.zeros_like(merged), merged)
                merged = torch.where(new_ch > 0, new_ch, merged)
                prop.annotate(encode_labels(merged, n_labels, tuple(feats.shape[1:]), cfg.label_downsample), restarted)
                given = torch.from_numpy(new.astype(np.int64))
                again = torch.tensor(sorted({int(i) for i in np.unique(new) if i}), dtype=torch.int64)
                ids_out = torch.where(torch.isin(ids_out, again), torch.zeros_like(ids_out), ids_out)
                ids_out = torch.where(given > 0, given, ids_out)
        yield t, ids_out.numpy()


# ----------------------------------------------------------------------------------------------
# The predictor
# ----------------------------------------------------------------------------------------------


@dataclass
class PredictorState:
    """A video and the masks given for it (made by :meth:`VideoPredictor.init_state`).

    Attributes:
        video_height, video_width: the frames' size (every mask has it; outputs come back at it).
        num_frames: the frame count when known (``None`` for an iterator or a container that does not say).
        obj_ids: object ids in the order they were first added.
        masks: ``{frame_idx: {obj_id: (H, W) bool}}``.
    """

    video_height: int
    video_width: int
    num_frames: int | None
    frames: Callable[[], Iterator[np.ndarray]] = field(repr=False)
    single_pass: bool = False
    obj_ids: list[int] = field(default_factory=list)
    masks: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)
    consumed: bool = False
    fps: float = 24.0


def _frames_of(video: Any, fps: float | None) -> PredictorState:
    """A :class:`PredictorState` (no masks) for a path, an array ``(T, H, W, 3)`` or an iterable of frames."""
    from tritoncorr.video import open_frames

    if isinstance(video, (str, Path)):
        src = open_frames(video, fps)
        return PredictorState(src.size[0], src.size[1], src.num_frames, src.frames, fps=src.fps)
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().numpy()
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] < 1:
            raise ValueError(f"a video array must be (T, H, W, 3) uint8 RGB, got shape {video.shape}")
        arr = _as_uint8(video)
        return PredictorState(arr.shape[1], arr.shape[2], arr.shape[0], lambda: iter(arr), fps=float(fps or 24.0))
    it = iter(video)
    try:
        first = _as_uint8(np.asarray(next(it)))
    except StopIteration:
        raise ValueError("the frame iterator is empty") from None
    if first.ndim != 3 or first.shape[-1] != 3:
        raise ValueError(f"frames must be (H, W, 3) uint8 RGB, got shape {first.shape}")
    rest = (_as_uint8(np.asarray(f)) for f in it)
    return PredictorState(
        first.shape[0],
        first.shape[1],
        None,
        lambda: itertools.chain([first], rest),
        single_pass=True,
        fps=float(fps or 24.0),
    )


def _as_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating) and a.size and float(a.max()) <= 1.0:
        return (a * 255).round().clip(0, 255).astype(np.uint8)  # [0, 1] floats
    return a.clip(0, 255).astype(np.uint8)


class VideoPredictor:
    """Propagate object masks through a video with a correspondence model (SAM 2's predictor interface).

    Args:
        model: a :class:`~tritoncorr.methods.inference.FeatureModel` (:meth:`from_pretrained` builds one).
        preset: propagation preset name (default: the model's) or a ``PropagationConfig``.
        short_side: working resolution (module docstring); 0 = native.
        device: where features and propagation run.
    """

    def __init__(self, model, preset=None, *, short_side: int = 480, device: torch.device | str = "cpu"):
        from tritoncorr.propagation import PRESETS, PropagationConfig

        self.model = model
        if isinstance(preset, PropagationConfig):
            self.config = preset
            self.preset = "custom"
        else:
            name = preset or model.preset
            if name not in PRESETS:
                raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
            self.config, self.preset = PRESETS[name], name
        if short_side < 0:
            raise ValueError(f"short_side must be >= 0 (0 = native), got {short_side}")
        self.short_side = int(short_side)
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path | None = None,
        *,
        preset: str | None = None,
        short_side: int = 480,
        device: str = "auto",
        precision: str = "fp32",
        random_init: bool = False,
        seed: int = 0,
    ) -> "VideoPredictor":
        """A predictor from a checkpoint: a registered name (``tritoncorr weights list``), a path, an
        ``https://`` URL or ``hf://OWNER/REPO/PATH``; ``None`` = the embedded default
        (:data:`tritoncorr.weights.DEFAULT_NAME`). ``random_init=True`` (no checkpoint) uses random
        weights, with a warning: they do not follow objects well. ``precision``: ``"fp32"`` or
        ``"bf16"`` (the feature extractor under bfloat16 autocast)."""
        from tritoncorr.methods.inference import load_feature_model
        from tritoncorr.weights import DEFAULT_NAME

        if random_init:
            if checkpoint is not None:
                raise ValueError("random_init=True takes no checkpoint")
            warnings.warn(
                f"VideoPredictor with RANDOM-INIT weights (seed {seed}): the masks will not follow the objects well",
                stacklevel=2,
            )
        elif checkpoint is None:
            checkpoint = DEFAULT_NAME
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_feature_model(checkpoint, seed=seed, device=device, precision=precision)
        return cls(model, preset, short_side=short_side, device=device)

    # ------------------------------------------------------------------ state

    def init_state(self, video: Any, *, fps: float | None = None) -> PredictorState:
        """A state for ``video``: a video file or a frame folder (decoded on demand, each propagation
        decodes again), a ``(T, H, W, 3)`` uint8 RGB array / tensor, or an iterable of ``(H, W, 3)``
        frames (streaming: read once, by the first :meth:`propagate_in_video`). No frame is held."""
        return _frames_of(video, fps)

    def reset_state(self, state: PredictorState) -> None:
        """Forget every mask and object of ``state`` (the video stays)."""
        state.masks.clear()
        state.obj_ids.clear()

    def add_new_mask(
        self, state: PredictorState, frame_idx: int, obj_id: int, mask
    ) -> tuple[int, list[int], np.ndarray]:
        """Give object ``obj_id`` the mask ``mask`` (``(H, W)`` bool / 0-1, the video's size) at frame
        ``frame_idx``: a new object, or a correction that restarts it from that frame.

        Returns ``(frame_idx, obj_ids, masks)``: the masks given at that frame, ``(len(obj_ids), H, W)`` bool.
        """
        if isinstance(mask, torch.Tensor):
            mask = mask.detach().cpu().numpy()
        m = np.asarray(mask)
        if m.ndim == 3 and m.shape[0] == 1:
            m = m[0]
        if m.shape != (state.video_height, state.video_width):
            raise ValueError(
                f"mask of object {obj_id} at frame {frame_idx} is {tuple(m.shape)}, the video frames are "
                f"({state.video_height}, {state.video_width})"
            )
        m = m > 0.5 if np.issubdtype(m.dtype, np.floating) else m.astype(bool)
        if not m.any():
            raise ValueError(f"mask of object {obj_id} at frame {frame_idx} is empty")
        frame_idx, obj_id = int(frame_idx), int(obj_id)
        if frame_idx < 0 or (state.num_frames is not None and frame_idx >= state.num_frames):
            raise ValueError(f"frame_idx {frame_idx} is outside the video ({state.num_frames} frames)")
        if obj_id <= 0:
            raise ValueError(f"obj_id must be a positive integer, got {obj_id}")
        state.masks.setdefault(frame_idx, {})[obj_id] = m
        if obj_id not in state.obj_ids:
            state.obj_ids.append(obj_id)
        given = state.masks[frame_idx]
        ids = list(given)
        return frame_idx, ids, np.stack([given[i] for i in ids])

    def _id_maps(self, state: PredictorState) -> dict[int, np.ndarray]:
        """Per annotated frame, one id map; where masks overlap the object added later at that frame wins."""
        out = {}
        for f, objs in state.masks.items():
            ids = np.zeros((state.video_height, state.video_width), np.int64)
            for oid, m in objs.items():
                ids[m] = oid
            out[f] = ids
        return out

    # ------------------------------------------------------------------ propagation

    def propagate_in_video(
        self, state: PredictorState, start_frame_idx: int | None = None, max_frame_num_to_track: int | None = None
    ) -> Iterator[tuple[int, list[int], np.ndarray]]:
        """Yield ``(frame_idx, obj_ids, masks)`` for every frame from ``start_frame_idx`` (default: the
        first annotated frame) to ``start_frame_idx + max_frame_num_to_track`` (inclusive; default: the
        end); ``masks`` bool ``(len(obj_ids), H, W)`` at the video's resolution, ``obj_ids`` in the
        order the objects were added. Propagation always begins at the first annotated frame: frames
        between it and a later ``start_frame_idx`` are propagated but not yielded; frames before the
        first annotation are not yielded."""
        if not state.masks:
            raise ValueError("add_new_mask first: the state has no masks")
        if state.single_pass and state.consumed:
            raise RuntimeError(
                "this state's frames came from an iterator and were already read; "
                "call init_state again with a new iterator (or pass a file, folder or array)"
            )
        first = min(state.masks)
        lo = first if start_frame_idx is None else max(int(start_frame_idx), first)
        hi = None if max_frame_num_to_track is None else lo + int(max_frame_num_to_track)
        maps = self._id_maps(state)
        order = list(state.obj_ids)
        raw = state.frames()
        state.consumed = True
        frames = itertools.islice(raw, first, None if hi is None else hi + 1)
        stream = track_objects(
            frames,
            maps,
            self.model.features,
            self.config,
            color=self.model.color,
            short_side=self.short_side,
            device=self.device,
            start=first,
        )
        try:
            for t, ids in stream:
                if t < lo:
                    continue
                yield t, order, np.stack([ids == o for o in order])
        finally:
            stream.close()
            if hasattr(raw, "close"):
                raw.close()

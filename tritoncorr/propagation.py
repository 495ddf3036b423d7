"""Label propagation through a video: kNN-softmax (CRW / DUL / STT) or full-window softmax (MAST / LIIR).

Given per-frame features ``feats`` (T, C, h, w) and the first frame's labels (L, h, w) at feature
resolution, every later frame t is predicted from a set of reference frames and their labels.

Reference sets (``references``):

* ``"crw"`` (CRW, DUL): ``[0] + [max(u, 0) for u in t - context .. t - 1]``: the first frame (the
  long-term memory) plus the ``context`` previous frames, frame 0 duplicated into the slots before
  the start of the video (for ``t <= context`` frame 0 fills ``context + 2 - t`` of the slots).
* ``"stt"`` (STT's VanillaTracker, stt.md §4.2 VT:198-214): ``[0] + [max(0, t - context) .. t - 1]``:
  frame 0 plus the available previous frames; frame 0 appears twice while ``t <= context`` and is
  not padded into further slots.
* ``"mast"`` (MAST benchmark.py:81-83, LIIR unofficial evaluate_davis.py:104-106, liir.md §8):
  ``{0, 5 if 5 < t} | {t-1, t-3, t-5 those > 0}``, sorted and deduplicated, up to 5; ``context``
  is ignored.

Affinity:

* ``topk`` an int: :func:`tritoncorr.kernels.knn_propagate`: scores ``<q, k> / temperature`` over
  the window (``"disc"`` or ``"square"``) of every reference, the first one searched over the
  whole image when ``unrestricted_first``; the joint top-k over all references, softmax over it.
* ``topk=None`` ("k = all", MAST/LIIR): :func:`tritoncorr.kernels.knn_propagate.window_propagate`:
  the full square window of every reference with zero-border semantics (out-of-image window cells
  take part with logit 0 and value 0, MAST's zero-padded correlation sampler + ``unfold``), one
  softmax jointly over all references' windows, optionally LIIR's compactness prior (``compact = M``
  Gaussians, liir.md §6.6: per reference, where its largest probability in the joint softmax
  exceeds ``compact_threshold``, its window affinity is REPLACED by the template of M peak-1
  Gaussians). Needs ``window="square"`` and ``unrestricted_first=False``.

Feedback (``feedback``): ``"soft"``: each reference carries its own soft prediction unchanged (CRW,
DUL, STT ``hard_prop=False``). ``"hard"`` (MAST/LIIR): each reference other than frame 0 carries the
model's own earlier prediction as predicted ids re-encoded like the first frame: the prediction is
decoded to the (padded) image size (bilinear, ``upsample_align_corners``), argmaxed, then encoded
with ``label_downsample`` and one-hot; frame 0 carries the ground truth.

Label encoding / decoding (used by :func:`tritoncorr.evaluate.propagate_sequence` and by hard feedback):

* ``label_downsample``: ``"bilinear"`` (DUL INF:184): one-hot at full resolution, bilinear
  ``align_corners=True`` point sampling to the grid; ``"strided"`` (MAST/LIIR, liir.md §8):
  ``ids[::s, ::s]`` (top-left pixel of each s x s block) then one-hot; ``"nearest"`` (STT VT:160-169,
  PIL nearest resize = ``F.interpolate(mode="nearest-exact")``) then one-hot.
* output: bilinear upsampling to the (padded) image size with ``upsample_align_corners`` (True:
  DUL; False: MAST, LIIR, STT), STT's per-channel min-max normalisation when ``minmax``, crop, argmax.
* ``normalize``: L2-normalise features over channels (CRW, DUL, STT); MAST/LIIR use raw dot products
  (tau = 1, liir.md §4.2, §11.2).
* ``pad``: frames are zero-padded right and bottom (in the model's normalised input space) to a
  multiple of ``pad`` before the features; the annotation is padded with background. The
  unofficial LIIR code pads to a multiple of 4 (evaluate_davis.py:84-96; 0 in normalised Lab is
  L* = 50 grey); MAST does not pad (``pad=1``).
* ``foreground_boost``: LIIR's inference hack (colorizer_momen.py:204-206, liir.md §6.7): label
  channels 1..L-1 (objects, not background) are multiplied by it before aggregation (equivalently
  the prediction's channels, by linearity); 1.0 = off (default; the unofficial 72.2 run uses 1.05).

Presets (``PRESETS``):

======  ==========  =======  ======  ====  =====  ======  =====  ========  =====  =======  ========  =========  ======  ===  ==================================
preset  references  context  radius  topk  temp.  window  unre.  feedback  norm.  compact  labels    upsample   minmax  pad  source
======  ==========  =======  ======  ====  =====  ======  =====  ========  =====  =======  ========  =========  ======  ===  ==================================
dul     crw         20       12      10    0.05   disc    True   soft      True   0        bilinear  corners    False   1    DUL CFG:65-68 / LPV / INF:184
crw     crw         20       12      10    0.05   disc    True   soft      True   0        bilinear  corners    False   1    CRW README command (DUL's labels)
stt     stt         20       12      10    0.07   square  False  soft      True   0        nearest   half-pix.  True    1    stt.md §4.2-4.3 (DAVIS d8, nr 24)
liir    mast        --       14      all   1      square  False  hard      False  2        strided   half-pix.  False   4    liir.md §6.6, §8 (unofficial code)
mast    mast        --       12      all   1      square  False  hard      False  0        strided   half-pix.  False   1    liir.md §8 (MAST benchmark.py)
common  crw         20       12 @8   10    0.05   disc    True   soft      True   0        bilinear  corners    False   s    DUL's protocol for any method
======  ==========  =======  ======  ====  =====  ======  =====  ========  =====  =======  ========  =========  ======  ===  ==================================

``common`` is the protocol-neutral preset: it scores any checkpoint the same way (L2-normalised
features at the method's own stride s, DUL's context 20 / top-10 / tau 0.05 / disc window with the
first frame unrestricted, soft feedback), so that a comparison separates "the features improved"
from "this inference protocol suits these features". Its window is 96 px in radius whatever the
stride (12 cells at stride 8, 24 at stride 4: :func:`window_radius`), and frames are padded to a
multiple of s so that feature cells tile the frame. Every preset's radius is in cells at the stride
of :data:`PRESET_STRIDES`; :func:`task_preset` with ``stride=`` rescales it to the model's stride.

"corners" = bilinear ``align_corners=True``, "half-pix." = ``align_corners=False``. The ``crw``
preset keeps DUL's label handling (CRW's own code resizes with OpenCV INTER_LINEAR). MAST's ROI
localisation for references more than 15 frames away (liir.md §8) is not implemented: the
``mast`` preset uses the plain local window for every reference, which is what LIIR's 72.2
configuration (``--compact``) does (liir.md §6.8) but not what MAST's own numbers used.

STT's ``neighbor_range`` nr gives ``radius = nr // 2``: DAVIS d8 24 -> 12, VIP d8 32 -> 16, JHMDB d8
10 -> 5 (use ``dataclasses.replace(PRESETS["stt"], radius=...)`` for those).

Per frame the work is one kernel call (Triton kernel on CUDA, tiled PyTorch path on CPU); the
(h*w x N*h*w) affinity is never materialised.

Streaming: the loop lives in :class:`StreamingPropagator` (frames' features pushed one at a time;
only the frames the reference policy can still use are kept, so memory does not grow with the
video; masks given mid-video start new anchors). :func:`propagate` is a thin wrapper over it for a
whole-video ``(T, C, h, w)`` tensor; ``tritoncorr propagate`` (:mod:`tritoncorr.video`) streams.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from tritoncorr.kernels.knn_propagate import WINDOWS, knn_propagate, window_propagate

__all__ = [
    "PropagationConfig",
    "PRESETS",
    "PRESET_STRIDES",
    "window_radius",
    "REFERENCE_POLICIES",
    "context_indices",
    "mast_reference_indices",
    "reference_indices",
    "propagate",
    "StreamingPropagator",
    "distinct_slots",
    "encode_labels",
    "decode_labels",
    "labels_to_feature_grid",
    "labels_to_image",
]

_FLOAT = (torch.float32, torch.float16, torch.bfloat16)
REFERENCE_POLICIES = ("crw", "stt", "mast")
FEEDBACKS = ("soft", "hard")
LABEL_DOWNSAMPLES = ("bilinear", "strided", "nearest")


@dataclasses.dataclass(frozen=True)
class PropagationConfig:
    """Settings of :func:`propagate` and of the label encoding/decoding around it (see the module table).

    Defaults are DUL's protocol. ``topk=None`` means "k = all" (the full-window MAST/LIIR mode).
    ``pad`` acts on frames (in :func:`tritoncorr.evaluate.propagate_sequence`), not in :func:`propagate`.
    """

    context: int = 20
    radius: int = 12
    topk: int | None = 10
    temperature: float = 0.05
    window: str = "disc"
    unrestricted_first: bool = True
    references: str = "crw"
    feedback: str = "soft"
    normalize: bool = True
    compact: int = 0
    compact_threshold: float = 0.1
    foreground_boost: float = 1.0
    label_downsample: str = "bilinear"
    upsample_align_corners: bool = True
    minmax: bool = False
    pad: int = 1

    def __post_init__(self) -> None:
        if self.context < 0:
            raise ValueError(f"context={self.context} must be >= 0")
        if self.window not in WINDOWS:
            raise ValueError(f"window={self.window!r} must be one of {WINDOWS}")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")
        if self.references not in REFERENCE_POLICIES:
            raise ValueError(f"references={self.references!r} must be one of {REFERENCE_POLICIES}")
        if self.feedback not in FEEDBACKS:
            raise ValueError(f"feedback={self.feedback!r} must be one of {FEEDBACKS}")
        if self.label_downsample not in LABEL_DOWNSAMPLES:
            raise ValueError(f"label_downsample={self.label_downsample!r} must be one of {LABEL_DOWNSAMPLES}")
        if self.topk is None:
            if self.window != "square" or self.unrestricted_first:
                raise ValueError("topk=None (the full-window mode) needs window='square' and unrestricted_first=False")
        elif self.compact:
            raise ValueError(f"compact={self.compact} (the compactness prior) needs topk=None (the full-window mode)")
        if isinstance(self.compact, bool) or not isinstance(self.compact, int) or not 0 <= self.compact <= 3:
            raise ValueError(f"compact={self.compact!r} must be an int in 0..3")
        if not self.foreground_boost > 0:
            raise ValueError(f"foreground_boost={self.foreground_boost} must be > 0")
        if isinstance(self.pad, bool) or not isinstance(self.pad, int) or self.pad < 1:
            raise ValueError(f"pad={self.pad!r} must be an int >= 1 (1 = no padding)")

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`propagate` (every field but ``pad``): ``propagate(feats, labels, **cfg.as_kwargs())``."""
        kw = dataclasses.asdict(self)
        del kw["pad"]
        return kw


# DUL's and CRW's kNN protocol (the two codebases agree on every setting).
_DUL = PropagationConfig(context=20, radius=12, topk=10, temperature=0.05, window="disc", unrestricted_first=True)
# MAST's full-window protocol: one softmax at temperature 1 over raw dot products in a square window
# (no top-k), MAST's reference frames, hard feedback, labels sampled at the feature stride.
_MAST = PropagationConfig(
    radius=12,
    topk=None,
    temperature=1.0,
    window="square",
    unrestricted_first=False,
    references="mast",
    feedback="hard",
    normalize=False,
    compact=0,
    label_downsample="strided",
    upsample_align_corners=False,
    pad=1,
)

PRESETS: dict[str, PropagationConfig] = {
    "dul": _DUL,
    "crw": _DUL,
    # STT's VanillaTracker: DUL's kNN (context 20, top-10 in radius 12) at tau 0.07 in a square window, the
    # first frame searched in its window too, STT's references, nearest-neighbour labels, min-max outputs.
    "stt": dataclasses.replace(
        _DUL,
        temperature=0.07,
        window="square",
        unrestricted_first=False,
        references="stt",
        label_downsample="nearest",
        upsample_align_corners=False,
        minmax=True,
    ),
    # LIIR evaluates with MAST's protocol in a larger window, with the compactness prior, frames padded to 4.
    "liir": dataclasses.replace(_MAST, radius=14, compact=2, pad=4),
    "mast": _MAST,
    # The protocol-neutral preset: DUL's kNN protocol for any method (radius rescaled to the model's stride
    # by task_preset, frames padded to a multiple of the stride).
    "common": dataclasses.replace(_DUL, pad=8),
}

#: The feature stride each preset's ``radius`` (in feature cells) was written for; ``task_preset(...,
#: stride=s)`` rescales the radius so that the window covers the same pixels at stride ``s``.
PRESET_STRIDES: dict[str, int] = {"dul": 8, "crw": 8, "stt": 8, "liir": 4, "mast": 4, "common": 8}


def window_radius(preset: str, stride: int, radius: int | None = None) -> int:
    """Radius in feature cells at ``stride`` covering the pixels of ``preset``'s window (``radius`` cells,
    default the preset's, at :data:`PRESET_STRIDES` ``[preset]``): ``round(radius * native / stride)``, >= 1.
    E.g. ``common`` (DUL's 12 cells at stride 8 = 96 px): 24 at stride 4, 6 at stride 16."""
    if int(stride) < 1:
        raise ValueError(f"stride={stride} must be >= 1")
    r = PRESETS[preset].radius if radius is None else int(radius)
    return max(1, int(round(r * PRESET_STRIDES[preset] / int(stride))))


def context_indices(t: int, context: int) -> list[int]:
    """CRW/DUL context frame indices for target frame ``t``: ``[0] + [max(u, 0) for u in t-context .. t-1]``."""
    return [0] + [max(u, 0) for u in range(t - context, t)]


def mast_reference_indices(t: int) -> list[int]:
    """MAST/LIIR references of target frame ``t >= 1``: ``sorted({0, 5 if 5 < t} | {t-1, t-3, t-5 if > 0})``."""
    refs = {0} | ({5} if 5 < t else set()) | {u for u in (t - 1, t - 3, t - 5) if u > 0}
    return sorted(refs)


def reference_indices(t: int, policy: str, context: int = 20) -> list[int]:
    """Reference frame indices of target frame ``t`` under ``policy`` (``REFERENCE_POLICIES``, module docstring)."""
    if policy == "crw":
        return context_indices(t, context)
    if policy == "stt":
        return [0] + list(range(max(0, t - context), t))
    if policy == "mast":
        return mast_reference_indices(t)
    raise ValueError(f"policy={policy!r} must be one of {REFERENCE_POLICIES}")


def _check_inputs(feats: torch.Tensor, first_labels: torch.Tensor, check_unit_norm: bool) -> None:
    if not isinstance(feats, torch.Tensor) or feats.dim() != 4:
        raise ValueError(f"feats must be a (T, C, h, w) tensor, got {getattr(feats, 'shape', type(feats))}")
    if feats.dtype not in _FLOAT:
        raise TypeError(f"feats dtype {feats.dtype} must be float32, float16 or bfloat16")
    if not isinstance(first_labels, torch.Tensor) or first_labels.dim() != 3:
        raise ValueError(
            f"first_labels must be an (L, h, w) tensor, got {getattr(first_labels, 'shape', type(first_labels))}"
        )
    if not first_labels.is_floating_point():
        raise TypeError(f"first_labels must be a float (soft label) tensor, got {first_labels.dtype}")
    if first_labels.device != feats.device:
        raise ValueError(f"first_labels is on {first_labels.device} but feats on {feats.device}")
    if tuple(first_labels.shape[1:]) != tuple(feats.shape[2:]):
        raise ValueError(
            f"first_labels spatial size {tuple(first_labels.shape[1:])} must match the feature grid {tuple(feats.shape[2:])}; "
            "use labels_to_feature_grid()"
        )
    if feats.shape[0] < 1:
        raise ValueError("feats must hold at least one frame")
    if check_unit_norm:
        norms = feats[:: max(1, feats.shape[0] - 1)].float().norm(dim=1)  # first and last frame
        dev = (norms - 1).abs().max().item()
        if not dev <= 2e-2:
            raise ValueError(
                f"feats must be L2-normalised over channels (max |norm - 1| = {dev:.3g}); "
                "use torch.nn.functional.normalize(feats, dim=1) or pass check_unit_norm=False"
            )


@torch.no_grad()
def propagate(
    feats: torch.Tensor,
    first_labels: torch.Tensor,
    *,
    context: int = 20,
    radius: int = 12,
    topk: int | None = 10,
    temperature: float = 0.05,
    window: str = "disc",
    unrestricted_first: bool = True,
    references: str = "crw",
    feedback: str = "soft",
    normalize: bool = True,
    compact: int = 0,
    compact_threshold: float = 0.1,
    foreground_boost: float = 1.0,
    label_downsample: str = "bilinear",
    upsample_align_corners: bool = True,
    minmax: bool = False,
    image_size: tuple[int, int] | None = None,
    check_unit_norm: bool = True,
    on_frame: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Propagate first-frame labels through a video.

    Args:
        feats: (T, C, h, w) features of every frame (float32/bfloat16/float16), L2-normalised over C
            when ``normalize`` (CRW/DUL/STT), raw otherwise (MAST/LIIR).
        first_labels: (L, h, w) labels of frame 0 at feature resolution (e.g. from
            :func:`encode_labels`), L <= 128 (L <= 64 with ``topk=None``).
        context .. minmax: see the module docstring and :class:`PropagationConfig`.
        image_size: (H, W) the (padded) image the labels belong to; hard feedback decodes each
            prediction to this size before the argmax and re-encodes it (default: the feature grid).
        check_unit_norm: with ``normalize``, raise when the first/last frame's features are not
            unit norm (|norm - 1| > 0.02).
        on_frame: called with ``t`` after frame ``t`` is propagated (progress).

    Returns:
        (T, L, h, w) float32 predictions (soft, before any decoding); frame 0 is ``first_labels``.
    """
    _check_inputs(feats, first_labels, check_unit_norm and normalize)
    cfg = PropagationConfig(
        context,
        radius,
        None if topk is None else int(topk),
        float(temperature),
        window,
        bool(unrestricted_first),
        references,
        feedback,
        bool(normalize),
        int(compact),
        float(compact_threshold),
        float(foreground_boost),
        label_downsample,
        bool(upsample_align_corners),
        bool(minmax),
    )
    n_frames = feats.shape[0]
    out = torch.empty((n_frames,) + tuple(first_labels.shape), dtype=torch.float32, device=feats.device)
    prop = StreamingPropagator(cfg, image_size=image_size, check_unit_norm=False)  # checked above
    out[0] = prop.start(feats[0], first_labels)
    for t in range(1, n_frames):
        out[t] = prop.step(feats[t])
        if on_frame is not None:
            on_frame(t)
    return out


def distinct_slots(slots: list[int], unrestricted: int) -> tuple[list[int], list[int]]:
    """Context slots (frame indices, e.g. CRW's ``[0, 0, 0, 1, 2]``) -> the distinct frames and how
    many consecutive slots each fills (``[0, 0, 1, 2]``, ``[1, 2, 1, 1]`` with one unrestricted slot:
    the first ``unrestricted`` slots are searched differently, so they are never merged with the
    others). :func:`tritoncorr.kernels.knn_propagate` with these ``counts`` gives the same result
    as the repeated frames while scoring each distinct frame once."""
    frames, counts = [], []
    for i, f in enumerate(slots):
        if i > unrestricted and frames[-1] == f:
            counts[-1] += 1
        else:
            frames.append(f)
            counts.append(1)
    return frames, counts


def _max_lag(policy: str, context: int) -> int:
    """How many frames back (beyond the anchors) ``policy`` can reach: its previous-frame window."""
    return 5 if policy == "mast" else int(context)


def _stack_channels_last(feats: list[torch.Tensor]) -> torch.Tensor:
    """``N`` maps ``(C, h, w)`` -> ``(N, C, h, w)`` stored channels-last (the layout the CPU kNN path
    reads window rectangles from, so it needs no conversion copy; the CUDA kernel takes any strides)."""
    return torch.stack([f.permute(1, 2, 0) for f in feats]).permute(0, 3, 1, 2)


class StreamingPropagator:
    """Frame-by-frame label propagation with bounded memory (the loop behind :func:`propagate`).

    Usage::

        prop = StreamingPropagator(PRESETS["dul"], image_size=(H, W))
        out0 = prop.start(feats0, labels0)          # frame 0: (C, h, w), (L, h, w)
        for f in later_features:
            soft = prop.step(f)                     # (L, h, w) float32 prediction of the next frame

    Anchors. Frame 0 is the first anchor; references of frame ``t`` relative to an anchor ``a`` are
    ``a + u`` for ``u`` in ``reference_indices(t - a, ...)`` (the preset's policy with ``a`` as its
    frame 0). :meth:`annotate` replaces the labels of the frame just predicted (a mask given mid-video)
    and makes it a new anchor that owns the given label channels from then on: every channel is
    predicted from the references of the latest anchor that owns it (DUL's per-object contexts for
    YouTube-VOS, INF:237-282, with one shared label bank). With a single anchor the result is exactly
    the whole-video propagation.

    Memory: after every frame, features and labels are kept only for the anchors and the frames that
    a reference set of the next ``lag + 1`` frames contains (``context`` previous frames for the
    crw/stt policies, 5 for mast): O(1) in the video length.
    """

    def __init__(
        self,
        config: PropagationConfig | None = None,
        *,
        image_size: tuple[int, int] | None = None,
        check_unit_norm: bool = True,
        **overrides,
    ):
        cfg = config if config is not None else PropagationConfig()
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        self.config = cfg
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.check_unit_norm = bool(check_unit_norm)
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        self.t = -1
        self._feats: dict[int, torch.Tensor] = {}
        self._labels: dict[int, torch.Tensor] = {}
        self._anchors: list[tuple[int, torch.Tensor]] = []
        self.grid: tuple[int, int] | None = None
        self.num_labels = 0

    @property
    def stored_frames(self) -> list[int]:
        """Frame indices whose features and labels are held now."""
        return sorted(self._feats)

    @property
    def anchors(self) -> list[int]:
        return [a for a, _ in self._anchors]

    def _check(self, feats: torch.Tensor) -> None:
        if not isinstance(feats, torch.Tensor) or feats.dim() != 3:
            raise ValueError(f"feats must be a (C, h, w) tensor, got {getattr(feats, 'shape', type(feats))}")
        if feats.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"feats dtype {feats.dtype} must be float32, float16 or bfloat16")
        if self.grid is not None and tuple(feats.shape[1:]) != self.grid:
            raise ValueError(
                f"frame {self.t + 1}: feature grid {tuple(feats.shape[1:])} differs from the first frame's {self.grid}"
            )
        if self.check_unit_norm and self.config.normalize:
            dev = (feats.float().norm(dim=0) - 1).abs().max().item()
            if not dev <= 2e-2:
                raise ValueError(
                    f"frame {self.t + 1}: features must be L2-normalised over channels (max |norm - 1| = {dev:.3g}); "
                    "use torch.nn.functional.normalize(feats, dim=0) or pass check_unit_norm=False"
                )

    # ------------------------------------------------------------------ frames

    def start(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Frame 0: ``feats`` (C, h, w), ``labels`` (L, h, w) float at feature resolution. Returns labels (float32)."""
        self.reset()
        self._check(feats)
        if not isinstance(labels, torch.Tensor) or labels.dim() != 3 or not labels.is_floating_point():
            raise ValueError(f"labels must be a float (L, h, w) tensor, got {getattr(labels, 'shape', type(labels))}")
        if tuple(labels.shape[1:]) != tuple(feats.shape[1:]):
            raise ValueError(
                f"labels spatial size {tuple(labels.shape[1:])} must match the feature grid "
                f"{tuple(feats.shape[1:])}; use labels_to_feature_grid()"
            )
        if labels.device != feats.device:
            raise ValueError(f"labels are on {labels.device} but feats on {feats.device}")
        self.grid = tuple(feats.shape[1:])
        self.num_labels = labels.shape[0]
        self.t = 0
        lab = labels.float()
        self._feats[0] = feats
        self._labels[0] = lab
        self._anchors = [(0, torch.ones(self.num_labels, dtype=torch.bool, device=feats.device))]
        return lab

    def _references(self, t: int, anchor: int) -> list[int]:
        cfg = self.config
        return [anchor + u for u in reference_indices(t - anchor, cfg.references, cfg.context)]

    def _predict(self, feats: torch.Tensor, refs: list[int]) -> torch.Tensor:
        """One kernel call: ``feats`` (C, h, w) against the reference frames ``refs`` (first = anchor)."""
        cfg = self.config
        if cfg.topk is None:
            pred = window_propagate(
                feats,
                torch.stack([self._feats[i] for i in refs]),
                torch.stack([self._labels[i] for i in refs]),
                radius=cfg.radius,
                temperature=cfg.temperature,
                compact=cfg.compact,
                compact_threshold=cfg.compact_threshold,
            )
        else:
            frames, counts = distinct_slots(refs, 1 if cfg.unrestricted_first else 0)
            pred = knn_propagate(
                feats,
                _stack_channels_last([self._feats[i] for i in frames]),
                torch.stack([self._labels[i] for i in frames]),
                radius=cfg.radius,
                topk=cfg.topk,
                temperature=cfg.temperature,
                window=cfg.window,
                unrestricted=1 if cfg.unrestricted_first else 0,
                counts=counts,
            )
        if cfg.foreground_boost != 1.0:
            pred[1:] *= cfg.foreground_boost
        return pred

    def step(self, feats: torch.Tensor) -> torch.Tensor:
        """Predict the next frame from its features ``(C, h, w)``; returns ``(L, h, w)`` float32 (soft)."""
        if self.t < 0:
            raise RuntimeError("call start(feats0, labels0) first")
        self._check(feats)
        t = self.t + 1
        if len(self._anchors) == 1:  # one anchor (frame 0, or a frame that restarted every channel)
            pred = self._predict(feats, self._references(t, self._anchors[0][0]))
        else:
            pred = None
            for a, own in self._anchors:
                if not bool(own.any()):
                    continue
                p = self._predict(feats, self._references(t, a)) * own.view(-1, 1, 1).to(torch.float32)
                pred = p if pred is None else pred + p
        self.t = t
        self._feats[t] = feats
        self._labels[t] = self._bank_labels(pred)
        self._prune()
        return pred

    def _bank_labels(self, pred: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.feedback != "hard":
            return pred
        size = self.grid if self.image_size is None else self.image_size
        ids = channel_argmax(decode_labels(pred, size, align_corners=cfg.upsample_align_corners, minmax=cfg.minmax))
        return encode_labels(ids, self.num_labels, self.grid, cfg.label_downsample)

    def annotate(self, labels: torch.Tensor, channels: torch.Tensor | None = None) -> None:
        """Replace the labels of the frame just processed (``labels`` (L, h, w), e.g. the encoded merge
        of a mid-video mask with the prediction) and make it an anchor owning ``channels`` ((L,) bool;
        default: every channel, i.e. a restart of the whole video at this frame)."""
        if self.t < 0:
            raise RuntimeError("call start(feats0, labels0) first")
        if tuple(labels.shape) != (self.num_labels, *self.grid):
            raise ValueError(f"labels must be {(self.num_labels, *self.grid)}, got {tuple(labels.shape)}")
        dev = self._feats[self.t].device
        own = (
            torch.ones(self.num_labels, dtype=torch.bool, device=dev)
            if channels is None
            else torch.as_tensor(channels, dtype=torch.bool, device=dev).reshape(-1)
        )
        if own.numel() != self.num_labels:
            raise ValueError(f"channels must have {self.num_labels} entries, got {own.numel()}")
        self._labels[self.t] = labels.float().to(dev)
        if self.t == 0:  # frame 0 is already the anchor of every channel
            return
        kept = [(a, o & ~own) for a, o in self._anchors if bool((o & ~own).any())]
        kept.append((self.t, own))
        self._anchors = kept
        self._prune()

    def _prune(self) -> None:
        cfg = self.config
        lag = _max_lag(cfg.references, cfg.context)
        need = set(self.anchors)
        for k in range(1, lag + 2):
            for a in self.anchors:
                need.update(i for i in self._references(self.t + k, a) if i <= self.t)
        for i in [i for i in self._feats if i not in need]:
            del self._feats[i]
            del self._labels[i]


def _label_stride(size: tuple[int, int], grid: tuple[int, int]) -> int:
    """The subsampling step s of ``ids[::s, ::s]`` onto ``grid``: the smallest s with ``ceil(H / s) <= h``
    and ``ceil(W / s) <= w``, which must give equality on both axes."""
    (hh, ww), (h, w) = size, grid
    s = max(-(-hh // h), -(-ww // w))
    if -(-hh // s) != h or -(-ww // s) != w:
        raise ValueError(f"labels of size {size} cannot be subsampled [::s, ::s] to the feature grid {grid}")
    return s


def encode_labels(ids: torch.Tensor, num_labels: int, size: tuple[int, int], method: str = "bilinear") -> torch.Tensor:
    """(H, W) integer ids -> (L, h, w) float32 labels on the feature grid ``size = (h, w)``.

    ``method``: ``"bilinear"`` (DUL): one-hot at full resolution, then :func:`labels_to_feature_grid`
    (bilinear ``align_corners=True``); ``"strided"`` (MAST/LIIR): ``ids[::s, ::s]`` with
    ``s`` such that ``ceil(H / s) = h`` and ``ceil(W / s) = w``, then one-hot; ``"nearest"`` (STT):
    PIL-style nearest resize (``F.interpolate(mode="nearest-exact")``), then one-hot.
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
        raise ValueError(
            f"ids must be an (H, W) integer tensor, got {getattr(ids, 'shape', type(ids))} {getattr(ids, 'dtype', '')}"
        )
    h, w = (int(s) for s in size)
    ids = ids.long()
    if method == "bilinear":
        onehot = F.one_hot(ids, num_labels).permute(2, 0, 1).float()
        return labels_to_feature_grid(onehot, (h, w))
    if method == "strided":
        s = _label_stride(tuple(ids.shape), (h, w))
        small = ids[::s, ::s]
    elif method == "nearest":
        small = F.interpolate(ids[None, None].float(), size=(h, w), mode="nearest-exact")[0, 0].long()
    else:
        raise ValueError(f"method={method!r} must be one of {LABEL_DOWNSAMPLES}")
    return F.one_hot(small, num_labels).permute(2, 0, 1).float().contiguous()


def decode_labels(
    soft: torch.Tensor, size: tuple[int, int], *, align_corners: bool = True, minmax: bool = False
) -> torch.Tensor:
    """(L, h, w) predictions -> (L, H, W) float32 at ``size = (H, W)``: bilinear upsampling.

    ``align_corners=True`` is DUL's decoding (:func:`labels_to_image`); ``False`` MAST/LIIR/STT's.
    ``minmax`` (STT VT:234-252): every channel whose maximum over the image is above 0 is mapped
    to ``(x - min) / (max - min + 1e-12)``. The argmax over channels gives the ids.
    """
    if not isinstance(soft, torch.Tensor) or soft.dim() != 3:
        raise ValueError(f"soft must be an (L, h, w) tensor, got {getattr(soft, 'shape', type(soft))}")
    hh, ww = (int(s) for s in size)
    up = F.interpolate(soft[None].float(), size=(hh, ww), mode="bilinear", align_corners=bool(align_corners))[0]
    if minmax:
        flat = up.reshape(up.shape[0], -1)
        lo = flat.min(dim=1).values.view(-1, 1, 1)
        hi = flat.max(dim=1).values.view(-1, 1, 1)
        up = torch.where(hi > 0, (up - lo) / (hi - lo + 1e-12), up)
    return up


def channel_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``(L, H, W)`` -> int64 ``(H, W)``: the channel of the largest score, the first one on ties.

    ``torch.max(dim=0).indices`` (same result and tie rule as ``argmax(0)``, which reduces a short
    leading dimension of a large map about 25x slower on CPU: 82 ms vs 3 ms at L 2, 480 x 854)."""
    return torch.max(scores, dim=0).indices


def labels_to_feature_grid(onehot: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(L, H, W) one-hot (or soft) labels -> (L, h, w) float32 at ``size = (h, w)``.

    Bilinear with ``align_corners=True`` (DUL INF:184): point sampling, no area averaging.
    """
    if not isinstance(onehot, torch.Tensor) or onehot.dim() != 3:
        raise ValueError(f"onehot must be an (L, H, W) tensor, got {getattr(onehot, 'shape', type(onehot))}")
    h, w = (int(s) for s in size)
    return F.interpolate(onehot[None].float(), size=(h, w), mode="bilinear", align_corners=True)[0]


def labels_to_image(soft: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(L, h, w) soft labels -> (L, H, W) float32 at ``size = (H, W)``, bilinear ``align_corners=True`` (DUL)."""
    if not isinstance(soft, torch.Tensor) or soft.dim() != 3:
        raise ValueError(f"soft must be an (L, h, w) tensor, got {getattr(soft, 'shape', type(soft))}")
    hh, ww = (int(s) for s in size)
    return F.interpolate(soft[None].float(), size=(hh, ww), mode="bilinear", align_corners=True)[0]


# ----------------------------------------------------------------------------------------------
# Per-task presets: each method's settings for each benchmark
# ----------------------------------------------------------------------------------------------

TASKS = ("davis", "vip", "jhmdb", "ytvos")


@dataclasses.dataclass(frozen=True)
class TaskPreset:
    """A method's propagation settings on one benchmark.

    Attributes:
        config: the :class:`PropagationConfig`.
        input_size: ``(H, W)`` the frames are resized to before the network (aspect ratio not kept),
            None for the native resolution.
        source: where the settings come from.
    """

    config: PropagationConfig
    input_size: tuple[int, int] | None = None
    source: str = ""


# STT's ``neighbor_range`` nr per task gives ``radius = nr // 2`` (stt.md §4.3, d8 configs; the d4
# (stride-4) configs use nr 70 / 24 / 70, i.e. radius 35 for DAVIS and VIP and 12 for JHMDB: pass --radius).
_STT_RADIUS = {"davis": 12, "vip": 16, "jhmdb": 5, "ytvos": 12}
_TASK_SIZES = {"davis": None, "vip": (560, 560), "jhmdb": (320, 320), "ytvos": None}
_TASK_SOURCES = {
    "davis": "native resolution (dul.md §3.2, §3.7)",
    "vip": "560 x 560 (CRW paper protocol; STT T18d8:38-49)",
    "jhmdb": "320 x 320 (CRW data/jhmdb.py, cropSize 320; STT T18d8:25-36)",
    "ytvos": "native resolution (DUL infer_vos.py)",
}


def task_preset(preset: str, task: str, stride: int | None = None) -> TaskPreset:
    """The settings of method preset ``preset`` (a key of :data:`PRESETS`) on benchmark ``task`` (:data:`TASKS`)
    for a model of feature stride ``stride`` (None: the preset's own, :data:`PRESET_STRIDES`).

    ======  =============  =================================================================================
    task    input          changes to ``PRESETS[preset]``
    ======  =============  =================================================================================
    davis   native         none
    ytvos   native         none
    vip     560 x 560      ``stt``: radius 16 (nr 32)
    jhmdb   320 x 320      ``stt``: radius 5 (nr 10); every preset: ``feedback="soft"`` (heat maps cannot be
                           argmaxed and fed back; MAST/LIIR's hard feedback is for index maps)
    ======  =============  =================================================================================

    ``stride``: the radius is rescaled to cover the preset's window in pixels (:func:`window_radius`):
    ``--preset dul`` or ``common`` on a stride-4 checkpoint (LIIR's) searches 24 cells, not 12; the
    ``common`` preset also pads frames to a multiple of the stride.

    DUL reports no VIP / JHMDB numbers and LIIR's code has no VIP / JHMDB / YouTube-VOS evaluation
    (liir.md §8: settings UNKNOWN): those use their DAVIS propagation settings with the shared
    protocol's input size (CRW's, which is also STT's). Top-k, context and temperature are the
    DAVIS ones for every task (CRW's VIP/JHMDB commands are not published; STT uses its DAVIS
    top-k 10 / temperature 0.07 everywhere).
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r} must be one of {TASKS}")
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} must be one of {sorted(PRESETS)}")
    cfg = PRESETS[preset]
    if preset == "stt":
        cfg = dataclasses.replace(cfg, radius=_STT_RADIUS[task])
    if task == "jhmdb" and cfg.feedback != "soft":
        cfg = dataclasses.replace(cfg, feedback="soft")
    source = f"{preset} preset; {_TASK_SOURCES[task]}"
    if stride is not None and int(stride) != PRESET_STRIDES[preset]:
        cfg = dataclasses.replace(cfg, radius=window_radius(preset, stride, cfg.radius))
        source += f"; radius {cfg.radius} cells at stride {int(stride)} (the preset's window in pixels)"
    if preset == "common" and stride is not None:
        cfg = dataclasses.replace(cfg, pad=int(stride))
    return TaskPreset(cfg, _TASK_SIZES[task], source)


TASK_PRESETS: dict[str, dict[str, TaskPreset]] = {p: {t: task_preset(p, t) for t in TASKS} for p in PRESETS}

__all__ += ["TASKS", "TASK_PRESETS", "TaskPreset", "task_preset"]

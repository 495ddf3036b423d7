"""Label propagation through a video by kNN-softmax over feature affinities (CRW / DUL / STT protocol).

Given per-frame features ``feats`` (T, C, h, w), L2-normalised over channels, and the first frame's
soft labels (L, h, w) at feature resolution, every later frame t is predicted from a context of
``1 + context`` frames:

    context(t) = [0] + [max(u, 0) for u in t - context .. t - 1]

i.e. the first frame (the long-term memory) plus the ``context`` previous frames, with frame 0
duplicated into the slots before the start of the video (for ``t <= context`` frame 0 fills
``context + 2 - t`` of the slots). The context values are the **soft** predictions of those frames,
fed back unchanged. Entry 0 is searched over the whole image when ``unrestricted_first`` (CRW, DUL);
the short-term slots, including the duplicated frame-0 copies, only inside the spatial window.
STT's tracker restricts every entry, frame 0 included (``unrestricted_first=False``).

Per frame the work is one :func:`tritoncorr.kernels.knn_propagate` call (Triton kernel on CUDA,
windowed PyTorch path on CPU); the (h*w x N*h*w) affinity is never materialised.

Presets (``PRESETS``):

=======  =======  ======  ====  ===========  ======  ===================  ==========================
preset   context  radius  topk  temperature  window  unrestricted_first   source
=======  =======  ======  ====  ===========  ======  ===================  ==========================
dul      20       12      10    0.05         disc    True                 DUL CFG:65-68 / LPV
crw      20       12      10    0.05         disc    True                 CRW README command
stt      20       12      10    0.07         square  False                STT DAVIS d8 (nr 24 -> 12)
=======  =======  ======  ====  ===========  ======  ===================  ==========================

STT's ``neighbor_range`` nr gives ``radius = nr // 2``: DAVIS d8 24 -> 12, VIP d8 32 -> 16, JHMDB d8
10 -> 5 (use ``dataclasses.replace(PRESETS["stt"], radius=...)`` for those).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from tritoncorr.kernels.knn_propagate import WINDOWS, knn_propagate

__all__ = [
    "PropagationConfig",
    "PRESETS",
    "context_indices",
    "propagate",
    "labels_to_feature_grid",
    "labels_to_image",
]

_FLOAT = (torch.float32, torch.float16, torch.bfloat16)


@dataclasses.dataclass(frozen=True)
class PropagationConfig:
    """Settings of :func:`propagate` (see the module table)."""

    context: int = 20
    radius: int = 12
    topk: int = 10
    temperature: float = 0.05
    window: str = "disc"
    unrestricted_first: bool = True

    def __post_init__(self) -> None:
        if self.context < 0:
            raise ValueError(f"context={self.context} must be >= 0")
        if self.window not in WINDOWS:
            raise ValueError(f"window={self.window!r} must be one of {WINDOWS}")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`propagate`: ``propagate(feats, labels, **cfg.as_kwargs())``."""
        return dataclasses.asdict(self)


PRESETS: dict[str, PropagationConfig] = {
    "dul": PropagationConfig(context=20, radius=12, topk=10, temperature=0.05, window="disc", unrestricted_first=True),
    "crw": PropagationConfig(context=20, radius=12, topk=10, temperature=0.05, window="disc", unrestricted_first=True),
    "stt": PropagationConfig(context=20, radius=12, topk=10, temperature=0.07, window="square", unrestricted_first=False),
}


def context_indices(t: int, context: int) -> list[int]:
    """Context frame indices for target frame ``t``: ``[0] + [max(u, 0) for u in t-context .. t-1]``."""
    return [0] + [max(u, 0) for u in range(t - context, t)]


def _check_inputs(feats: torch.Tensor, first_labels: torch.Tensor, check_unit_norm: bool) -> None:
    if not isinstance(feats, torch.Tensor) or feats.dim() != 4:
        raise ValueError(f"feats must be a (T, C, h, w) tensor, got {getattr(feats, 'shape', type(feats))}")
    if feats.dtype not in _FLOAT:
        raise TypeError(f"feats dtype {feats.dtype} must be float32, float16 or bfloat16")
    if not isinstance(first_labels, torch.Tensor) or first_labels.dim() != 3:
        raise ValueError(f"first_labels must be an (L, h, w) tensor, got {getattr(first_labels, 'shape', type(first_labels))}")
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
    topk: int = 10,
    temperature: float = 0.05,
    window: str = "disc",
    unrestricted_first: bool = True,
    check_unit_norm: bool = True,
) -> torch.Tensor:
    """Propagate first-frame labels through a video.

    Args:
        feats: (T, C, h, w) features of every frame, L2-normalised over C (float32/bfloat16/float16).
        first_labels: (L, h, w) soft labels of frame 0 at feature resolution (e.g. from
            :func:`labels_to_feature_grid`), L <= 128.
        context, radius, topk, temperature, window, unrestricted_first: see the module docstring
            and :class:`PropagationConfig`.
        check_unit_norm: raise when the first/last frame's features are not unit norm (|norm - 1| > 0.02).

    Returns:
        (T, L, h, w) float32 soft labels; frame 0 is ``first_labels``.
    """
    _check_inputs(feats, first_labels, check_unit_norm)
    cfg = PropagationConfig(context, radius, topk, float(temperature), window, bool(unrestricted_first))
    n_frames = feats.shape[0]
    out = torch.empty((n_frames,) + tuple(first_labels.shape), dtype=torch.float32, device=feats.device)
    out[0] = first_labels.float()
    for t in range(1, n_frames):
        idx = context_indices(t, cfg.context)
        sel = torch.tensor(idx, device=feats.device)
        out[t] = knn_propagate(
            feats[t],
            feats.index_select(0, sel),
            out.index_select(0, sel),
            radius=cfg.radius,
            topk=cfg.topk,
            temperature=cfg.temperature,
            window=cfg.window,
            unrestricted=1 if cfg.unrestricted_first else 0,
        )
    return out


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

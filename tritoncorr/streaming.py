"""Streaming label propagation (temporary home; moves into :mod:`tritoncorr.propagation`).

:class:`StreamingPropagator` takes the frames' features one at a time and keeps only the features
and labels of the frames its reference policy can still use (the anchors and the last few frames),
so memory does not grow with the length of the video.
"""

from __future__ import annotations

import dataclasses

import torch

from tritoncorr.kernels.knn_propagate import knn_propagate, window_propagate
from tritoncorr.propagation import (
    PropagationConfig,
    decode_labels,
    encode_labels,
    reference_indices,
)

__all__ = ["StreamingPropagator", "max_lag"]


def max_lag(policy: str, context: int) -> int:
    """How many frames back (beyond the anchors) ``policy`` can reach: its previous-frame window."""
    return 5 if policy == "mast" else int(context)


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
    a reference set of the next ``max_lag + 1`` frames contains (``context`` previous frames for the
    crw/stt policies, 5 for mast): O(1) in the video length.
    """

    def __init__(self, config: PropagationConfig | None = None, *, image_size: tuple[int, int] | None = None,
                 check_unit_norm: bool = True, **overrides):
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
            raise ValueError(f"frame {self.t + 1}: feature grid {tuple(feats.shape[1:])} differs from the first "
                             f"frame's {self.grid}")
        if self.check_unit_norm and self.config.normalize:
            dev = (feats.float().norm(dim=0) - 1).abs().max().item()
            if not dev <= 2e-2:
                raise ValueError(
                    f"frame {self.t + 1}: features must be L2-normalised over channels (max |norm - 1| = {dev:.3g}); "
                    "use torch.nn.functional.normalize(feats, dim=0) or pass check_unit_norm=False")

    # ------------------------------------------------------------------ frames

    def start(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Frame 0: ``feats`` (C, h, w), ``labels`` (L, h, w) float at feature resolution. Returns labels (float32)."""
        self.reset()
        self._check(feats)
        if not isinstance(labels, torch.Tensor) or labels.dim() != 3 or not labels.is_floating_point():
            raise ValueError(f"labels must be a float (L, h, w) tensor, got {getattr(labels, 'shape', type(labels))}")
        if tuple(labels.shape[1:]) != tuple(feats.shape[1:]):
            raise ValueError(f"labels spatial size {tuple(labels.shape[1:])} must match the feature grid "
                             f"{tuple(feats.shape[1:])}; use labels_to_feature_grid()")
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
        keys = torch.stack([self._feats[i] for i in refs])
        values = torch.stack([self._labels[i] for i in refs])
        if cfg.topk is None:
            pred = window_propagate(
                feats, keys, values, radius=cfg.radius, temperature=cfg.temperature, compact=cfg.compact,
                compact_threshold=cfg.compact_threshold,
            )
        else:
            pred = knn_propagate(
                feats, keys, values, radius=cfg.radius, topk=cfg.topk, temperature=cfg.temperature,
                window=cfg.window, unrestricted=1 if cfg.unrestricted_first else 0,
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
        if len(self._anchors) == 1:
            pred = self._predict(feats, self._references(t, 0))
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
        ids = decode_labels(pred, size, align_corners=cfg.upsample_align_corners, minmax=cfg.minmax).argmax(0)
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
        own = torch.ones(self.num_labels, dtype=torch.bool, device=dev) if channels is None \
            else torch.as_tensor(channels, dtype=torch.bool, device=dev).reshape(-1)
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
        lag = max_lag(cfg.references, cfg.context)
        need = set(self.anchors)
        for k in range(1, lag + 2):
            for a in self.anchors:
                need.update(i for i in self._references(self.t + k, a) if i <= self.t)
        for i in [i for i in self._feats if i not in need]:
            del self._feats[i]
            del self._labels[i]

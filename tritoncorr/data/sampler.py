"""Clip sampling and the per-epoch plan (which video goes to which rank and batch).

Randomness is derived from integers only, never from worker or global state:

* the epoch permutation from ``(seed, epoch)``;
* each sample's clip (start, order, crop, flip) from ``(seed, epoch, video)``.

So batches depend on neither ``num_workers`` nor the order in which workers finish, and a resumed
run sees exactly the batches it would have seen. The same video in the same epoch gets the same clip
whatever the world size.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

_PERM_TAG = 0x5E9
_SAMPLE_TAG = 0xC11
_STREAM_TAG = 0x57E


def sample_rng(seed: int, epoch: int, video: int, attempt: int = 0) -> np.random.Generator:
    """NumPy generator of one sample, from ``(seed, epoch, video, attempt)``."""
    return np.random.default_rng([_SAMPLE_TAG, int(seed) & 0xFFFFFFFF, int(epoch), int(video), int(attempt)])


def sample_torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``rng`` (for the torch augmentations)."""
    g = torch.Generator()
    g.manual_seed(int(rng.integers(0, 2**62)))
    return g


def loader_generator(seed: int) -> torch.Generator:
    """A private generator for ``torch.utils.data.DataLoader(generator=...)``.

    Every new DataLoader iterator draws its workers' base seed from a generator; without one it takes
    a number from the *global* torch RNG, which the method's own randomness shares. A run resumed
    mid-epoch creates one iterator more than an uninterrupted run, so that draw would shift the
    method's random stream (DUL's views, grid offsets) and resume would not be exact. Samples do not
    use the worker seeds (their randomness comes from ``(seed, epoch, video)``), so a fixed private
    generator changes no batch.
    """
    return torch.Generator().manual_seed(int(seed) & 0xFFFFFFFF)


def timeline(num_frames: int, fps: float, target_fps: float) -> np.ndarray:
    """Native frame index of each step of the sampling timeline.

    ``target_fps <= 0``, unknown ``fps`` or ``target_fps >= fps``: every native frame. Otherwise the
    timeline is resampled at ``target_fps``: step ``j`` is the native frame nearest to time
    ``j / target_fps``, for every ``j`` that stays inside the video.
    """
    if target_fps <= 0 or fps <= 0 or target_fps >= fps:
        return np.arange(num_frames)
    m = int(np.floor((num_frames - 1) * target_fps / fps + 1e-9)) + 1
    idx = np.floor(np.arange(m) * (fps / target_fps) + 0.5).astype(np.int64)
    return np.minimum(idx, num_frames - 1)


def clip_indices(
    num_frames: int,
    clip_len: int,
    frame_gap: int,
    rng: np.random.Generator,
    *,
    order: str = "shuffled",
    fps: float = 0.0,
    target_fps: float = 0.0,
) -> np.ndarray | None:
    """Native frame indices of one clip (DUL's ``DataVideo`` sampling, dul.md §2.2).

    On the timeline (see :func:`timeline`) of ``n`` steps: ``window = min(n, frame_gap * clip_len)``,
    ``gap = window // clip_len``, offsets ``0, gap, ..., (clip_len - 1) * gap``, start uniform in
    ``0 .. n - 1 - offsets[-1]``; then a random permutation when ``order == "shuffled"`` (the first
    frame is the method's reference). Returns int64 ``(clip_len,)``, or None when ``n < clip_len``.
    """
    steps = timeline(num_frames, fps, target_fps)
    n = len(steps)
    if n < clip_len:
        return None
    window = min(n, frame_gap * clip_len)
    gap = max(1, window // clip_len)
    offsets = np.arange(clip_len) * gap
    start = int(rng.integers(0, n - offsets[-1]))
    pos = start + offsets
    if order == "shuffled":
        pos = pos[rng.permutation(clip_len)]
    elif order != "ordered":
        raise ValueError(f"order must be 'shuffled' or 'ordered', got {order!r}")
    return steps[pos].astype(np.int64)


def draw_gap(frame_gap: int, choices: tuple[int, ...], probs: tuple[float, ...], rng: np.random.Generator) -> int:
    """The frame gap of one sample: ``frame_gap`` when ``choices`` is empty (no draw from ``rng``), else
    one of ``choices`` with probabilities ``probs`` (uniform when empty)."""
    if not choices:
        return int(frame_gap)
    p = np.asarray(probs, dtype=np.float64) if probs else None
    return int(choices[int(rng.choice(len(choices), p=p))])


def epoch_permutation(num_videos: int, seed: int, epoch: int) -> np.ndarray:
    """Permutation of ``range(num_videos)`` for ``epoch``."""
    return np.random.default_rng([_PERM_TAG, int(seed) & 0xFFFFFFFF, int(epoch)]).permutation(num_videos)


def rank_slice(perm: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's part of the epoch permutation: ``perm[rank::world_size]``, truncated so every rank
    has the same count (``len(perm) // world_size``); ranks are disjoint."""
    if not (0 <= rank < world_size):
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    per_rank = len(perm) // world_size
    return perm[rank::world_size][:per_rank]


def epoch_batches(
    num_videos: int, batch_size: int, seed: int, epoch: int, rank: int, world_size: int
) -> list[list[int]]:
    """This rank's batches (lists of video indices) for ``epoch``; drop_last."""
    mine = rank_slice(epoch_permutation(num_videos, seed, epoch), rank, world_size)
    nb = len(mine) // batch_size
    return [mine[b * batch_size : (b + 1) * batch_size].tolist() for b in range(nb)]


class EpochCursor:
    """Where an epoch-based loader stands: ``epoch`` and ``batch`` (batches already yielded in it).

    Shared by the clip and image loaders (map-style and streaming). ``state_dict()`` is the cursor
    plus the settings that must match for a resume to reproduce the same batches
    (:meth:`_resume_checks`); ``load_state_dict`` warns once per mismatch (the run continues, not
    exactly) and rejects a position outside the epoch.
    """

    epoch: int = 0
    batch: int = 0

    def _resume_checks(self) -> dict[str, int]:
        """Settings a resumed loader must share with the saved one (subclasses extend it)."""
        return {"seed": self.seed, "world_size": self.world_size, "batch_size": self.cfg.batch_size}

    def _batches_per_epoch(self) -> int | None:
        """Batches per epoch on this rank, or None when unknown (a stream without a size)."""
        try:
            return len(self)  # type: ignore[arg-type]
        except TypeError:
            return None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate; a no-op (keeps the resume position) if it is the current one."""
        if int(epoch) != self.epoch:
            self.epoch, self.batch = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, **self._resume_checks()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in self._resume_checks().items():
            if key in state and int(state[key]) != int(mine):
                warnings.warn(
                    f"loader state has {key}={state[key]} but this loader has {mine}: "
                    "the resumed batches will differ from the original run",
                    stacklevel=2,
                )
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        total = self._batches_per_epoch()
        if self.batch < 0 or (total is not None and self.batch > total):
            raise ValueError(f"loader state batch={self.batch} out of range for {total} batches per epoch")

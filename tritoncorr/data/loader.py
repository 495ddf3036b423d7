"""Batches of augmented training clips: :func:`build_clip_loader`.

Each batch is ``{"frames": float32 (B, T, 3, S, S), "video": int64 (B,), "frame_index": int64 (B, T)}``
(``frames`` ImageNet-normalised RGB or normalised Lab, per ``DataConfig.color``; ``video`` indexes
``loader.video_names``; ``frame_index`` are native frame numbers in the order of ``frames``).

An epoch is one clip per video (DUL), in a per-epoch permutation, drop_last, each DDP rank taking a
disjoint slice. Every sample's randomness comes from ``(seed, epoch, video)`` (see
:mod:`tritoncorr.data.sampler`), so batches do not depend on ``num_workers`` and
``state_dict()``/``load_state_dict()`` resume mid-epoch with exactly the batches an uninterrupted run
would have produced. A video that cannot be read is skipped with a :class:`SourceWarning` naming it
and replaced by another video drawn from the sample's own generator (so the replacement is
deterministic too); ``loader.skipped`` counts the skips (probe-time and read-time).
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tritoncorr.data.clips import clip_to_tensor, collate_clips
from tritoncorr.data.config import DataConfig
from tritoncorr.data.sampler import EpochCursor, clip_indices, epoch_batches, loader_generator, sample_rng, sample_torch_generator
from tritoncorr.data.sources import ClipSource, DataSourceError, SourceWarning, build_source


class ClipDataset(Dataset):
    """Map-style dataset indexed by ``(epoch, video)`` keys (``video`` = a source index).

    ``__getitem__`` returns ``{"frames" (T, 3, S, S), "video", "frame_index" (T,), "skipped": [names]}``.
    """

    def __init__(self, source: ClipSource, cfg: DataConfig, seed: int) -> None:
        self.source = source
        self.cfg = cfg
        self.seed = int(seed)
        probe = np.random.default_rng(0)
        self.videos = [v for v in range(len(source))
                       if clip_indices(source.num_frames[v], cfg.clip_len, cfg.frame_gap, probe, order="ordered",
                                       fps=source.fps[v], target_fps=cfg.target_fps) is not None]
        self.too_short = len(source) - len(self.videos)

    def __len__(self) -> int:
        return len(self.videos)

    def _load(self, video: int, epoch: int, attempt: int) -> dict:
        cfg, src = self.cfg, self.source
        rng = sample_rng(self.seed, epoch, video, attempt)
        idx = clip_indices(src.num_frames[video], cfg.clip_len, cfg.frame_gap, rng, order=cfg.order,
                           fps=src.fps[video], target_fps=cfg.target_fps)
        frames = src.read(video, idx)
        if frames.ndim != 4 or frames.shape[0] != cfg.clip_len or frames.shape[-1] != 3:
            raise ValueError(f"{src.names[video]}: read returned shape {frames.shape}")
        x = clip_to_tensor(frames, cfg, sample_torch_generator(rng))
        return {"frames": x, "video": video, "frame_index": torch.as_tensor(idx, dtype=torch.int64)}

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, video = int(key[0]), int(key[1])
        skipped: list[str] = []
        for attempt in range(self.cfg.max_retries + 1):
            try:
                sample = self._load(video, epoch, attempt)
                sample["skipped"] = skipped
                return sample
            except Exception as e:  # noqa: BLE001 - a bad file must not stop training
                skipped.append(f"{self.source.names[video]} ({type(e).__name__}: {e})")
                alt = sample_rng(self.seed, epoch, video, attempt + 1)
                video = self.videos[int(alt.integers(len(self.videos)))]
        raise DataSourceError(f"{len(skipped)} consecutive unreadable videos under {self.source.root!r}: "
                              + "; ".join(dict.fromkeys(skipped)))


class _PlanSampler:
    """Batch sampler yielding the key lists ClipLoader sets before each iteration."""

    def __init__(self) -> None:
        self.plan: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(list(self.plan))

    def __len__(self) -> int:
        return len(self.plan)


class ClipLoader(EpochCursor):
    """Iterable over an epoch's batches; see the module docstring. Build with :func:`build_clip_loader`."""

    def __init__(self, cfg: DataConfig, source: ClipSource, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        cfg.validate()
        if world_size < 1 or not (0 <= rank < world_size):
            raise ValueError(f"invalid rank {rank} / world_size {world_size}")
        self.cfg = cfg
        self.source = source
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.dataset = ClipDataset(source, cfg, seed)
        root = source.root
        if len(source) == 0:
            from tritoncorr.data.sources import DataSourceError

            raise DataSourceError(f"no readable videos found under {root!r} (source={cfg.source!r}, "
                             f"{len(source.skipped)} skipped)")
        if len(self.dataset) == 0:
            raise ValueError(f"all {len(source)} videos under {root!r} are too short for clip_len={cfg.clip_len}"
                             + (f" at target_fps={cfg.target_fps}" if cfg.target_fps else ""))
        if len(self) == 0:
            raise ValueError(f"{len(self.dataset)} usable videos under {root!r} give no full batch of "
                             f"{cfg.batch_size} per rank with world_size={world_size}")
        self.epoch = 0
        self.batch = 0
        self.skipped_files: list[str] = list(source.skipped)
        self._sampler = _PlanSampler()
        self._dl: DataLoader | None = None

    # -- sizes and names ----------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return (len(self.dataset) // self.world_size) // self.cfg.batch_size

    @property
    def skipped(self) -> int:
        """Number of skipped videos/frames so far (probe time and read time, this process)."""
        return len(self.skipped_files)

    @property
    def video_names(self) -> list[str]:
        return list(self.source.names)

    # -- epoch / resume (EpochCursor: set_epoch, state_dict, load_state_dict) ------------------
    def _resume_checks(self) -> dict[str, int]:
        return {**super()._resume_checks(), "num_videos": len(self.dataset)}

    def epoch_plan(self, epoch: int) -> list[list[int]]:
        """This rank's batches of source video indices for ``epoch`` (before any read-time replacement)."""
        batches = epoch_batches(len(self.dataset), self.cfg.batch_size, self.seed, epoch, self.rank, self.world_size)
        return [[self.dataset.videos[d] for d in b] for b in batches]

    # -- iteration ----------------------------------------------------------------------------
    def _dataloader(self) -> DataLoader:
        if self._dl is None:
            nw = self.cfg.num_workers
            kwargs: dict[str, Any] = {}
            if nw > 0:
                kwargs = {"prefetch_factor": self.cfg.prefetch_factor, "persistent_workers": True}
            self._dl = DataLoader(self.dataset, batch_sampler=self._sampler, num_workers=nw,
                                  collate_fn=collate_clips, pin_memory=self.cfg.pin_memory,
                                  generator=loader_generator(self.seed), **kwargs)
        return self._dl

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch
        plan = self.epoch_plan(epoch)[self.batch:]
        self._sampler.plan = [[(epoch, v) for v in b] for b in plan]
        if plan:
            for batch in self._dataloader():
                for name in batch.pop("skipped"):
                    self.skipped_files.append(name)
                    warnings.warn(f"skipping unreadable video {name}", SourceWarning, stacklevel=2)
                self.batch += 1
                yield batch
        self.epoch, self.batch = epoch + 1, 0


def build_clip_loader(cfg: DataConfig, *, seed: int, rank: int = 0, world_size: int = 1) -> ClipLoader:
    """The training-clip loader described by ``cfg`` (see the module docstring).

    ``rank``/``world_size``: this process's DDP rank (take them from ``torch.distributed``). With
    ``cfg.hf_streaming`` a :class:`StreamingClipLoader` is returned instead.
    """
    cfg.validate()
    if cfg.source == "hf" and cfg.hf_streaming:
        from tritoncorr.data.streaming import StreamingClipLoader

        return StreamingClipLoader(cfg, seed=seed, rank=rank, world_size=world_size)  # type: ignore[return-value]
    source = build_source(cfg)
    if cfg.cache_dir:
        from tritoncorr.data.cache import CachedSource

        source = CachedSource(source, cfg.cache_dir, cfg.cache_short_side, progress=rank == 0)
    return ClipLoader(cfg, source, seed=seed, rank=rank, world_size=world_size)


__all__ = ["ClipDataset", "ClipLoader", "build_clip_loader"]

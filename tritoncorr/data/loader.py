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
deterministic too); ``loader.skipped`` counts the skips (probe-time and read-time). The plan and the
iteration are :class:`tritoncorr.data.planned.PlannedLoader`'s, shared with the image loader.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from tritoncorr.data.clips import clip_to_tensor, collate_clips
from tritoncorr.data.config import DataConfig
from tritoncorr.data.planned import PlannedLoader, check_rank
from tritoncorr.data.sampler import clip_indices, draw_gap, sample_rng, sample_torch_generator
from tritoncorr.data.sources import ClipSource, DataSourceError, build_source


class ClipDataset(Dataset):
    """Map-style dataset indexed by ``(epoch, video)`` keys (``video`` = a source index).

    ``__getitem__`` returns ``{"frames" (T, 3, S, S), "video", "frame_index" (T,), "skipped": [names]}``.
    """

    def __init__(self, source: ClipSource, cfg: DataConfig, seed: int) -> None:
        self.source = source
        self.cfg = cfg
        self.seed = int(seed)
        probe = np.random.default_rng(0)
        self.videos = [
            v
            for v in range(len(source))
            if clip_indices(
                source.num_frames[v],
                cfg.clip_len,
                cfg.frame_gap,
                probe,
                order="ordered",
                fps=source.fps[v],
                target_fps=cfg.target_fps,
            )
            is not None
        ]
        self.too_short = len(source) - len(self.videos)

    def __len__(self) -> int:
        return len(self.videos)

    def _load(self, video: int, epoch: int, attempt: int) -> dict:
        cfg, src = self.cfg, self.source
        rng = sample_rng(self.seed, epoch, video, attempt)
        gap = draw_gap(cfg.frame_gap, cfg.gap_choices, cfg.gap_probs, rng)
        idx = clip_indices(
            src.num_frames[video],
            cfg.clip_len,
            gap,
            rng,
            order=cfg.order,
            fps=src.fps[video],
            target_fps=cfg.target_fps,
        )
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
        raise DataSourceError(
            f"{len(skipped)} consecutive unreadable videos under {self.source.root!r}: "
            + "; ".join(dict.fromkeys(skipped))
        )


class ClipLoader(PlannedLoader):
    """Iterable over an epoch's batches; see the module docstring. Build with :func:`build_clip_loader`."""

    kind = "video"

    def __init__(self, cfg: DataConfig, source: ClipSource, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        cfg.validate()
        check_rank(rank, world_size)
        self.cfg = cfg
        self.source = source
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.dataset = ClipDataset(source, cfg, seed)
        if len(source) and not len(self.dataset):
            raise ValueError(
                f"all {len(source)} videos under {source.root!r} are too short for clip_len={cfg.clip_len}"
                + (f" at target_fps={cfg.target_fps}" if cfg.target_fps else "")
            )
        self._start_plan(collate_clips)

    @property
    def video_names(self) -> list[str]:
        return list(self.source.names)

    def _item_ids(self, positions: list[int]) -> list[int]:
        return [self.dataset.videos[d] for d in positions]


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

"""Clips from a streaming Hugging Face dataset (``DataConfig(source="hf", hf_streaming=True)``).

The stream has no random access, so an epoch is one pass over it: ``ds.shuffle(seed, buffer)`` with a
per-epoch seed (shard order + shuffle buffer), ``datasets.distributed.split_dataset_by_node`` for
this rank, then one clip per usable example, drop_last. Stream position ``q`` counts usable
examples (frame lists long enough for a clip; video examples are all counted and checked when
decoded); batch ``b`` holds positions ``b*B .. b*B+B-1`` and DataLoader worker ``w`` of ``W`` decodes
the batches with ``b % W == w`` (every worker reads the raw stream, only its batches are decoded).
The DataLoader returns batches round-robin across workers, so batches come out in order and do not
depend on ``num_workers``. A sample's randomness comes from ``(seed, epoch, rank, q)``.

An example that cannot be decoded (or a video too short) is replaced by a copy of another sample of
the same batch (warning, ``loader.skipped``). ``len(loader)`` is known only when the dataset info
gives the split size; otherwise ``len`` raises ``TypeError``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tritoncorr.data.clips import clip_to_tensor, collate_clips
from tritoncorr.data.config import DataConfig
from tritoncorr.data.planned import check_rank
from tritoncorr.data.sampler import (
    EpochCursor,
    clip_indices,
    draw_gap,
    loader_generator,
    sample_rng,
    sample_torch_generator,
)
from tritoncorr.data.sources import DataSourceError, SourceWarning, hf_column, load_hf_dataset, read_hf_example


def no_decode_features(feature: Any) -> Any:
    """The same feature tree with ``Image``/``Video`` set to ``decode=False`` (raw bytes / paths)."""
    import datasets

    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    if hasattr(datasets, "Video") and isinstance(feature, datasets.Video):
        return datasets.Video(decode=False)
    if isinstance(feature, datasets.List):
        return datasets.List(no_decode_features(feature.feature), length=feature.length)
    if isinstance(feature, dict):
        return {k: no_decode_features(v) for k, v in feature.items()}
    return feature


class StreamCursor(EpochCursor):
    """The epoch stream and batch iteration shared by the streaming loaders (clips and images).

    :meth:`open_stream` sets ``cfg``, ``seed``, ``rank``, ``world_size``, ``root``, ``ds`` (the one
    column, undecoded), ``column``, ``shuffle_buffer``, ``skipped_files`` and the split size; subclasses
    set ``stream_tag`` (mixed into the per-epoch shuffle seed).
    """

    stream_tag = 0x5B
    shuffle_buffer = 1000

    def open_stream(self, cfg, dataset, pick_column, *, seed: int, rank: int, world_size: int) -> None:
        """Open ``cfg``'s stream (or use ``dataset``) and keep the column ``pick_column(names)`` names.

        ``pick_column``: the dataset's column names -> the column to read (it raises on a bad choice).
        An empty dataset raises :class:`~tritoncorr.data.sources.DataSourceError`.
        """
        cfg.validate()
        check_rank(rank, world_size)
        self.cfg, self.seed, self.rank, self.world_size = cfg, int(seed), int(rank), int(world_size)
        self.root = cfg.root
        ds = dataset if dataset is not None else load_hf_dataset(cfg.root, cfg.hf_split, streaming=True)
        names = list(ds.features) if ds.features is not None else None
        if names is None:
            first = next(iter(ds.take(1)), None)
            if first is None:
                raise DataSourceError(f"HF dataset {cfg.root!r} (split {cfg.hf_split!r}) is empty")
            names = list(first)
        self.column = pick_column(names)
        ds = ds.select_columns([self.column])
        if ds.features is not None:
            ds = ds.cast_column(self.column, no_decode_features(ds.features[self.column]))
        self.ds = ds
        self.base = Path(cfg.root) if Path(cfg.root).is_dir() else None
        self.epoch, self.batch = 0, 0
        self.skipped_files: list[str] = []
        try:
            split = ds.info.splits[cfg.hf_split] if ds.info and ds.info.splits else None
            self._total = int(split.num_examples) if split is not None and split.num_examples else None
        except (KeyError, TypeError, AttributeError):
            self._total = None

    def __len__(self) -> int:
        if self._total is None:
            raise TypeError("the number of batches of a streaming dataset is unknown (no split size in its info)")
        return (self._total // self.world_size) // self.cfg.batch_size

    @property
    def skipped(self) -> int:
        return len(self.skipped_files)

    def epoch_stream(self, epoch: int) -> Iterator[dict]:
        """Raw examples of this rank for ``epoch`` (shuffled per epoch), read in the calling process."""
        from datasets.distributed import split_dataset_by_node

        seed = int(np.random.default_rng([self.stream_tag, self.seed & 0xFFFFFFFF, epoch]).integers(0, 2**31))
        ds = self.ds.shuffle(seed=seed, buffer_size=self.shuffle_buffer)
        if self.world_size > 1:
            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
        for batch in ds.iter(batch_size=1):  # .iter() reads the whole stream even inside a torch worker
            yield {k: v[0] for k, v in batch.items()}

    def _iterate(self, dataset: IterableDataset, what: str, error: type[Exception]) -> Iterator[dict]:
        """Batches of ``dataset`` (built for the current epoch and position); advances the cursor."""
        epoch = self.epoch
        nw = self.cfg.num_workers
        kwargs: dict[str, Any] = {"prefetch_factor": self.cfg.prefetch_factor} if nw > 0 else {}
        dl = DataLoader(
            dataset,
            batch_size=None,
            num_workers=nw,
            pin_memory=self.cfg.pin_memory,
            generator=loader_generator(self.seed),
            **kwargs,
        )
        produced = False
        for batch in dl:
            produced = True
            for name in batch.pop("skipped"):
                self.skipped_files.append(name)
                warnings.warn(f"skipping unreadable {what} {name}", SourceWarning, stacklevel=3)
            self.batch += 1
            yield batch
        if not produced and self.batch == 0:
            raise error(
                f"HF stream {self.root!r} (split {self.cfg.hf_split!r}) gave no full batch of "
                f"{self.cfg.batch_size} usable {what}s on rank {self.rank}"
            )
        self.epoch, self.batch = epoch + 1, 0


class _StreamClips(IterableDataset):
    def __init__(self, owner: "StreamingClipLoader", epoch: int, start_batch: int) -> None:
        self.owner, self.epoch, self.start_batch = owner, epoch, start_batch

    def __iter__(self) -> Iterator[dict]:
        o = self.owner
        info = get_worker_info()
        w, W = (info.id, info.num_workers) if info is not None else (0, 1)
        B = o.cfg.batch_size
        current: list[tuple[int, dict]] = []
        q = 0
        for example in o.epoch_stream(self.epoch):
            if not o.usable(example):
                continue
            b = q // B
            if b >= self.start_batch and (b - self.start_batch) % W == w:
                current.append((q, example))
                if len(current) == B:
                    yield self._batch(current)
                    current = []
            q += 1

    def _batch(self, items: list[tuple[int, dict]]) -> dict:
        o = self.owner
        samples, skipped = [], []
        for q, example in items:
            name = f"{o.root}[epoch {self.epoch} rank {o.rank} #{q}]"
            rng = sample_rng(o.seed, self.epoch, q, o.rank)
            try:

                def indices_fn(n: int, fps: float, rng=rng):  # this example's generator, bound here
                    gap = draw_gap(o.cfg.frame_gap, o.cfg.gap_choices, o.cfg.gap_probs, rng)
                    return clip_indices(
                        n, o.cfg.clip_len, gap, rng, order=o.cfg.order, fps=fps, target_fps=o.cfg.target_fps
                    )

                out = read_hf_example(example, o.column, o.kind, indices_fn, o.base, name)
                if out is None:
                    raise ValueError(f"too short for clip_len={o.cfg.clip_len}")
                frames, idx = out
                x = clip_to_tensor(frames, o.cfg, sample_torch_generator(rng))
                samples.append(
                    {"frames": x, "video": q, "frame_index": torch.as_tensor(idx, dtype=torch.int64), "skipped": []}
                )
            except Exception as e:  # noqa: BLE001
                skipped.append(f"{name} ({type(e).__name__}: {e})")
                samples.append(None)
        good = [s for s in samples if s is not None]
        if not good:
            raise RuntimeError(f"no readable example in a batch of {o.root!r}: {skipped}")
        filled = [s if s is not None else good[i % len(good)] for i, s in enumerate(samples)]
        batch = collate_clips(filled)
        batch["skipped"] = skipped
        return batch


class StreamingClipLoader(StreamCursor):
    """Like :class:`tritoncorr.data.loader.ClipLoader` for ``hf_streaming`` (same batch format and
    ``state_dict``/``load_state_dict``/``set_epoch``); ``video`` holds the stream position."""

    def __init__(self, cfg: DataConfig, *, seed: int, rank: int = 0, world_size: int = 1, dataset=None) -> None:
        def pick_column(names: list[str]) -> str:  # also keeps the column's kind ("frames" or "video")
            column, self.kind = hf_column(names, cfg.hf_column, cfg.root)
            return column

        self.open_stream(cfg, dataset, pick_column, seed=seed, rank=rank, world_size=world_size)

    def usable(self, example: dict) -> bool:
        if self.kind == "frames":
            return len(example[self.column]) >= self.cfg.clip_len
        return example[self.column] is not None

    def __iter__(self) -> Iterator[dict]:
        yield from self._iterate(_StreamClips(self, self.epoch, self.batch), "example", ValueError)

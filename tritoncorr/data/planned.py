"""The epoch plan and iteration shared by the map-style loaders (training clips and MoCo images).

A :class:`PlannedLoader` owns a map-style dataset indexed by ``(epoch, item)`` keys. Each epoch it
computes this rank's batches of item indices (:func:`tritoncorr.data.sampler.epoch_batches`: a
permutation from ``(seed, epoch)``, disjoint rank slices, drop_last), hands them to a
``DataLoader`` through a batch sampler, pops the names of the items the dataset had to skip from
each batch (one :class:`SourceWarning` each) and counts the batches it yielded, so that
``state_dict()`` / ``load_state_dict()`` (:class:`EpochCursor`) resume mid-epoch.

Both loaders reject the same bad data sets with the same error naming the folder: no readable item
at all is a :class:`DataSourceError`; too few items for one full batch per rank a
:class:`~tritoncorr.engine.config.ConfigError` naming ``data.batch_size``.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterator

from torch.utils.data import DataLoader, Dataset

from tritoncorr.data.sampler import EpochCursor, epoch_batches, loader_generator
from tritoncorr.data.sources import DataSourceError, SourceWarning
from tritoncorr.engine.config import ConfigError

__all__ = ["PlannedLoader", "check_rank"]


def check_rank(rank: int, world_size: int) -> None:
    """Raise ``ValueError`` unless ``0 <= rank < world_size``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} / world_size {world_size}")


class _PlanSampler:
    """Batch sampler yielding the key lists the loader sets before each iteration."""

    def __init__(self) -> None:
        self.plan: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(list(self.plan))

    def __len__(self) -> int:
        return len(self.plan)


class PlannedLoader(EpochCursor):
    """Iterable over an epoch's batches of ``dataset[(epoch, item)]`` samples (module docstring).

    Subclasses set ``cfg`` (``batch_size``, ``num_workers``, ``prefetch_factor``, ``pin_memory``,
    ``source``), ``source`` (``root``, ``skipped``, ``len``), ``dataset``, ``seed``, ``rank``,
    ``world_size``, then call :meth:`_start_plan`; they may map plan positions to item ids
    (:meth:`_item_ids`). ``kind`` names the items in messages ("video", "image").
    """

    kind = "item"
    collate_fn: Callable[[list[dict]], dict]
    dataset: Dataset

    def _start_plan(self, collate_fn: Callable[[list[dict]], dict]) -> None:
        """Check that the data fill a batch, then reset the cursor (epoch 0, batch 0)."""
        cfg, source, kind = self.cfg, self.source, self.kind
        if len(source) == 0:
            raise DataSourceError(
                f"no readable {kind}s found under {source.root!r} (source={cfg.source!r}, "
                f"{len(source.skipped)} skipped)"
            )
        if len(self) == 0:
            raise ConfigError(
                f"{self._num_items()} usable {kind}s under {source.root!r} give no full batch of "
                f"{cfg.batch_size} per rank with world_size={self.world_size} "
                f"(data.batch_size={cfg.batch_size}: lower it with --set)"
            )
        self.collate_fn = collate_fn
        self.epoch, self.batch = 0, 0
        self.skipped_files: list[str] = list(source.skipped)
        self._sampler = _PlanSampler()
        self._dl: DataLoader | None = None

    # -- sizes --------------------------------------------------------------------------------
    def _num_items(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return (self._num_items() // self.world_size) // self.cfg.batch_size

    @property
    def skipped(self) -> int:
        """Number of skipped items so far (probe time and read time, this process)."""
        return len(self.skipped_files)

    # -- plan ---------------------------------------------------------------------------------
    def _resume_checks(self) -> dict[str, int]:
        return {**super()._resume_checks(), f"num_{self.kind}s": self._num_items()}

    def _item_ids(self, positions: list[int]) -> list[int]:
        """The dataset keys of a batch of plan positions (identity unless a subclass filters items)."""
        return positions

    def epoch_plan(self, epoch: int) -> list[list[int]]:
        """This rank's batches of item indices for ``epoch`` (before any read-time replacement)."""
        batches = epoch_batches(self._num_items(), self.cfg.batch_size, self.seed, epoch, self.rank, self.world_size)
        return [self._item_ids(b) for b in batches]

    # -- iteration ----------------------------------------------------------------------------
    def _dataloader(self) -> DataLoader:
        if self._dl is None:
            nw = self.cfg.num_workers
            kwargs: dict[str, Any] = {}
            if nw > 0:
                kwargs = {"prefetch_factor": self.cfg.prefetch_factor, "persistent_workers": True}
            self._dl = DataLoader(
                self.dataset,
                batch_sampler=self._sampler,
                num_workers=nw,
                collate_fn=self.collate_fn,
                pin_memory=self.cfg.pin_memory,
                generator=loader_generator(self.seed),
                **kwargs,
            )
        return self._dl

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch
        plan = self.epoch_plan(epoch)[self.batch :]
        self._sampler.plan = [[(epoch, i) for i in b] for b in plan]
        if plan:
            for batch in self._dataloader():
                for name in batch.pop("skipped"):
                    self.skipped_files.append(name)
                    warnings.warn(f"skipping unreadable {self.kind} {name}", SourceWarning, stacklevel=2)
                self.batch += 1
                yield batch
        self.epoch, self.batch = epoch + 1, 0

"""The training engine: typed run configs and recipes, the loop, checkpoints, DDP.

* :mod:`tritoncorr.engine.config`: ``RunConfig`` and its sections, ``--set`` overrides, JSON.
* :mod:`tritoncorr.engine.recipe`: ``load_recipe("recipes/x.py:NAME", overrides)``.
* :mod:`tritoncorr.engine.loop`: ``train(cfg, out, resume=..., stop_at=...)`` = ``Trainer(...).run()``
  (imports torch); the ``Trainer``'s resumable state is one ``TrainState``.
* :mod:`tritoncorr.engine.checkpoint`, :mod:`~tritoncorr.engine.optim`,
  :mod:`~tritoncorr.engine.distributed`, :mod:`~tritoncorr.engine.curves`, :mod:`~tritoncorr.engine.log`,
  :mod:`~tritoncorr.engine.cli`.

Importing this package is cheap (no torch); ``train`` and ``Trainer`` are imported on first use.
"""

from tritoncorr.engine.config import (
    CheckpointConfig,
    ConfigError,
    EvalConfig,
    LogConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
)
from tritoncorr.engine.recipe import load_recipe

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "EvalConfig",
    "LogConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "load_recipe",
    "train",
    "Trainer",
]


def __getattr__(name: str):
    if name in ("train", "Trainer"):
        from tritoncorr.engine import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'tritoncorr.engine' has no attribute {name!r}")

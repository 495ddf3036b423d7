"""Toy recipes for the engine's tests (tests/test_engine.py, tests/test_recipes.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds toy_method.py

from toy_method import ToyDataConfig, ToyMethodConfig  # noqa: E402

from tritoncorr.engine.config import CheckpointConfig, OptimConfig, RunConfig, ScheduleConfig  # noqa: E402


def default() -> RunConfig:
    """Toy method on toy clips, Adam with DUL-style groups, cosine schedule with warm-up, CPU."""
    return RunConfig(
        name="toy",
        method=ToyMethodConfig(),
        data=ToyDataConfig(),
        optim=OptimConfig(
            name="adam", lr=3e-3, betas=(0.5, 0.999), weight_decay=5e-4, bias_lr_mult=2.0, no_decay_bias=True
        ),
        schedule=ScheduleConfig(name="cosine", warmup_steps=2, warmup_start_factor=0.1, min_lr_ratio=0.01),
        checkpoint=CheckpointConfig(every=2, keep_last=2),
        steps=8,
        seed=3,
        device="cpu",
        log_every=1,
        curves_every=4,
    )


def ddp() -> RunConfig:
    """No BatchNorm and a fixed frame pair, so 2 ranks x B equals 1 process x 2B."""
    cfg = default()
    cfg.method = ToyMethodConfig(norm=False, random_pair=False)
    cfg.optim.weight_decay = 0.0
    return cfg


def synthetic() -> RunConfig:
    """The toy method on tritoncorr's own synthetic clip loader (tritoncorr.data)."""
    from tritoncorr.data.config import DataConfig

    cfg = default()
    cfg.data = DataConfig(
        source="synthetic",
        clip_len=3,
        batch_size=2,
        num_workers=0,
        crop_size=32,
        short_side=(32, 40),
        synthetic_videos=6,
        synthetic_frames=8,
        synthetic_size=(40, 48),
    )
    return cfg


def _helper() -> None:  # private: not a recipe
    pass

"""DUL (Araslanov et al., NeurIPS 2021) recipes: ``tritoncorr train recipes/dul.py[:NAME]``.

* ``default``: the paper's YouTube-VOS setting (docs/methods/dul.md §1, §2.8), reading the frame
  folders from ``$TRITONCORR_DATA/YouTube-VOS/train/JPEGImages`` (default ``~/.cache/tritoncorr``);
  elsewhere set ``--set data.root=/path/to/youtube-vos/train/JPEGImages``.
* ``cpu``: the same method scaled down to train in about ten minutes on a 2-core CPU from a folder
  of video files: ``--set data.root=/work/shared/data/videos``.
* ``smoke``: tiny synthetic clips, a few steps in seconds (checks the whole pipeline).
"""

from dataclasses import replace

from tritoncorr.data.config import DataConfig, dataset_path
from tritoncorr.engine.config import CheckpointConfig, OptimConfig, RunConfig, ScheduleConfig
from tritoncorr.engine.recipe import cpu_video_data, smoke_run
from tritoncorr.methods.dul import DULConfig

# YouTube-VOS-2018 train has 3,471 videos: 216 iterations per epoch at 16 clips; 500 epochs ~ 108K
# iterations (the paper's "0.1M", Table 3).
_YTVOS_ITERS_PER_EPOCH = 216


def _optim(lr: float = 1e-4) -> OptimConfig:
    """DUL's Adam: betas (0.5, 0.999), coupled weight decay 5e-4 on weights (BN gammas included),
    biases (conv biases, BN betas) at 2x the learning rate without weight decay."""
    return OptimConfig(
        name="adam",
        lr=lr,
        betas=(0.5, 0.999),
        weight_decay=5e-4,
        bias_lr_mult=2.0,
        no_decay_bias=True,
        no_decay_bias_norm=False,
    )


def default() -> RunConfig:
    """Paper settings: ResNet-18 stride 8, 128-d key, B=16 x T=5 clips of 256x256 (32x32 features),
    tau 0.05, lambda 0.1, N 8 (64 anchors/video), M 4; StepLR x0.5 every 100 epochs, 500 epochs."""
    return RunConfig(
        name="dul-ytvos",
        method=DULConfig(tau=0.05, cv_weight=0.1, anchor_grid=8, cross_view_grid=4, key_dim=128),
        data=DataConfig(
            source="frames",
            root=dataset_path("YouTube-VOS", "train", "JPEGImages"),
            clip_len=5,
            frame_gap=2,
            order="shuffled",
            batch_size=16,
            num_workers=8,
            pin_memory=True,
            crop_size=256,
            short_side=(256, 320),
            crop="random",
            hflip=True,
            color="rgb",
        ),
        optim=_optim(1e-4),
        schedule=ScheduleConfig(name="step", unit="epochs", step_size=100, gamma=0.5),
        checkpoint=CheckpointConfig(every=5000, keep_last=3),
        steps=500 * _YTVOS_ITERS_PER_EPOCH,
        seed=32,
        log_every=50,
        curves_every=1000,
    )


def cpu() -> RunConfig:
    """DUL scaled down for a ~10 minute run on a 2-core CPU over a folder of videos.

    Choices (vs ``default``): 128x128 crops (16x16 features; short side resized to 128..159, the
    same shrink factor range as YouTube-VOS 720p -> 256..319), N = 4 (16 anchors per video, one per
    4x4 cell as in the paper's 32/8 grid), M = 2 (one 8x8 cell per point as with 32/4), B = 2 clips
    (chosen when the sample folder had two videos) x T = 5 frames, 600 steps (~1 s each on 2 idle
    cores), Adam lr 1e-3 (10x the paper's: the run is ~200x shorter) decayed to 0 by a cosine over
    the run. Frames come from the decoded-frame cache (``cache_dir``, short side 160 >= the largest
    rescale 159): a 5-frame clip spanning 100 frames of a 720p H.264 video takes seconds to decode
    by seeking, ~1 ms from the cache.
    Three departures, each measured on ``../shared/data/videos`` -> davis-mini (docs/DUL_CPU.md):

    * ``reg_bn_eval=True``: the regularising (zoomed, no-grad) pass uses the running BatchNorm
      statistics instead of updating them (the paper's wording; the official code updates them).
      With the code's choice the zoomed views' statistics end up in the running averages used at
      inference: with the learning rate at ~0 for 50 steps that alone moves davis-mini J&F from
      0.634 to 0.515.
    * frame gap 25 (window 125 frames) instead of 10: the two sample videos are 5-7.5 s long and
      largely static, so a 10-frame gap shows almost no motion.
    * cosine decay instead of a constant rate: Adam's noisy per-step updates (gradients of
      consecutive 2-clip batches are uncorrelated) settle at the end of a short run.

    Everything else (tau, lambda, head, Adam betas, weight decay, bias groups, views) is the paper's.
    On the 20 sample videos (47 min on a shared 2-core machine) it beats its own initial weights on the
    ten davis-dev sequences, paired: J&F 0.601 -> 0.644, 95% interval [+0.004, +0.085], and beats the
    initial weights with trained BatchNorm statistics by +0.117 (docs/DUL_CPU.md). On the earlier two
    sample videos it did not clearly beat random init on the one-sequence davis-mini.
    """
    paper = default()
    return replace(
        paper,
        name="dul-cpu",
        method=replace(paper.method, anchor_grid=4, cross_view_grid=2, reg_bn_eval=True),
        data=cpu_video_data(
            paper.data,
            frame_gap=25,
            batch_size=2,
            crop_size=128,
            short_side=(128, 160),
            cache_dir=dataset_path("frame-cache"),
            cache_short_side=160,
        ),
        optim=_optim(1e-3),
        schedule=ScheduleConfig(name="cosine"),
        checkpoint=CheckpointConfig(every=100, keep_last=2),
        steps=600,
        device="cpu",
        log_every=5,
        curves_every=25,
    )


def smoke() -> RunConfig:
    """Tiny synthetic clips (64x64 crops -> 8x8 features, N 4, M 2, K 32): 3 steps in seconds."""
    return smoke_run(
        "dul-smoke",
        DULConfig(anchor_grid=4, cross_view_grid=2, key_dim=32, head_hidden=64),
        DataConfig(
            source="synthetic",
            clip_len=3,
            frame_gap=1,
            order="shuffled",
            batch_size=2,
            num_workers=0,
            crop_size=64,
            short_side=(64, 72),
            crop="random",
            hflip=True,
            color="rgb",
            synthetic_videos=4,
            synthetic_frames=6,
            synthetic_size=(72, 96),
        ),
        _optim(1e-3),
        steps=3,
    )

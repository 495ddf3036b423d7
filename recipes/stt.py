"""STT step 2 (temporal feature learning, Li & Liu CVPR 2023): ``tritoncorr train recipes/stt.py[:NAME]``.

Step 1 (``recipes/stt_spatial.py``, MoCo v2) writes the backbone that step 2 loads as its frozen
teacher and as the student's initialisation (``method.teacher_weights``; ``method.student_init``
"teacher" = the same file, as the official config). A published MoCo v2 / DetCo ``.pth.tar`` also
works: ``--set method.teacher_weights=/path/moco_v2_800ep_pretrain.pth.tar``.

* ``default``: the official training config (docs/methods/stt.md §1, ``configs/train/train.py``):
  ResNet-50 student stride 8, teacher ResNet-50, YouTube-VOS-2018 train at
  ``$TRITONCORR_DATA/YouTube-VOS/train`` (``~/.cache/tritoncorr`` when ``TRITONCORR_DATA`` is unset,
  ``tritoncorr.data.config.data_home``; another folder with ``--set data.root=...``), teacher
  ``runs/stt-spatial/model.safetensors`` (``recipes/stt_spatial.py:default``). 4 GPUs x 16 clips:
  ``torchrun --nproc_per_node 4 -m tritoncorr.cli train recipes/stt.py``.
* ``r18``: the same with ResNet-18 (no R18 config ships; the paper's R18 runs 90k iterations at batch 128:
  ``--set steps=90000 data.batch_size=32`` on 4 GPUs).
* ``temporal``: ResNet-18 from scratch, no teacher (the README's "ResNet-18 (Temporal)", YouTube-VOS only).
* ``cpu``: ResNet-18 at 128 x 128 on a folder of videos, about 25 minutes on a 2-core CPU, from the
  ``recipes/stt_spatial.py:cpu`` checkpoint: ``--set data.root=/work/shared/data/videos``.
* ``smoke``: synthetic clips, ResNet-18 at 64 x 64 with a **random-init teacher** (smoke only), seconds.

A missing dataset folder or teacher checkpoint stops the run at start-up with one line naming the
path and the option to set (``data.root``, ``method.teacher_weights``).
"""

from dataclasses import replace

from tritoncorr.data.config import dataset_path
from tritoncorr.engine.config import CheckpointConfig, EvalConfig, OptimConfig, RunConfig, ScheduleConfig
from tritoncorr.engine.recipe import cpu_video_data, smoke_run
from tritoncorr.methods.stt import STTConfig, STTDataConfig

# YouTube-VOS-2018 train: 3,471 videos; the official 4 x 16 = 64 clips per iteration give 55
# iterations per epoch (sampler padding), 800 epochs = 44,000 iterations, warm-up 20 epochs = 1,100.
_OFFICIAL_STEPS = 44_000
_OFFICIAL_WARMUP = 1_100


def _adam(lr: float = 5e-5) -> OptimConfig:
    """CFG:108-110: Adam (0.9, 0.999), no weight decay, student parameters only."""
    return OptimConfig(name="adam", lr=lr, betas=(0.9, 0.999), weight_decay=0.0)


def _official_schedule(warmup: int = _OFFICIAL_WARMUP) -> ScheduleConfig:
    """CFG:113-123: per-iteration cosine to 0.001 x lr, linear warm-up from 0.001 (mmcv semantics)."""
    return ScheduleConfig(name="cosine", min_lr_ratio=0.001, warmup_steps=warmup, warmup_start_factor=0.001)


def default() -> RunConfig:
    """The official R50 stride-8 config: radii 12/6, alpha 1000, beta 50, T 0.7, teacher /0.07;
    2-frame clips (consecutive 6-fps frames), crop area 0.6-1 w/h 1.5-2 -> 256 x 256, flip; Adam 5e-5,
    1,100-step warm-up, cosine to 5e-8 over 44,000 steps; 16 clips per GPU, SyncBN."""
    teacher = "runs/stt-spatial/model.safetensors"
    return RunConfig(
        name="stt-r50",
        method=STTConfig(
            depth=50,
            radii=(12, 6),
            local_weight=1000.0,
            global_weight=50.0,
            entropy_fraction=0.7,
            teacher_weights=teacher,
            student_init="teacher",
        ),
        data=STTDataConfig(
            source="frames",
            root=dataset_path("YouTube-VOS", "train"),
            batch_size=16,
            num_workers=2,
            pin_memory=True,
            crop_size=256,
        ),
        optim=_adam(5e-5),
        schedule=_official_schedule(),
        checkpoint=CheckpointConfig(every=2000, keep_last=3),
        eval=EvalConfig(every=0, preset="stt"),
        steps=_OFFICIAL_STEPS,
        seed=0,
        sync_bn=True,
        log_every=50,
        curves_every=1000,
    )


def r18() -> RunConfig:
    """``default`` with a ResNet-18 student and teacher. Step 1 for it: ``tritoncorr train
    recipes/stt_spatial.py --set method.depth=18 --out runs/stt-spatial-r18`` (or a published R18 MoCo
    checkpoint through ``--set method.teacher_weights=...``)."""
    cfg = default()
    return replace(
        cfg,
        name="stt-r18",
        method=replace(cfg.method, depth=18, teacher_weights="runs/stt-spatial-r18/model.safetensors"),
    )


def temporal() -> RunConfig:
    """Temporal-only ResNet-18 (YouTube-VOS only): student from scratch (Kaiming init, last BN of each
    block zeroed), no teacher and no global distillation, the student stops at res4 (spec §3.14)."""
    return replace(
        default(),
        name="stt-r18-temporal",
        method=STTConfig(depth=18, radii=(12, 6), use_teacher=False, teacher_weights="", student_init="scratch"),
    )


def cpu() -> RunConfig:
    """STT step 2 scaled down to about 25 minutes on a 2-core CPU, from the step-1 cpu checkpoint.

    Run ``recipes/stt_spatial.py:cpu`` first (it writes ``runs/stt-spatial-cpu/model.safetensors``), then
    ``tritoncorr train recipes/stt.py:cpu --set data.root=/work/shared/data/videos``.
    Settings (vs ``default``) and why:

    * ResNet-18 student and teacher: what the step-1 cpu recipe trains (the cheapest STT backbone).
    * 128 x 128 crops (res3 32 x 32, res4 16 x 16, res5 4 x 4) with windows scaled with the image:
      radii 6/3 cover +-24 px, the same fraction of the crop as the official 12/6 (+-48 px of 256);
      ``r0 = 2 r1`` keeps the pooled res3 label exactly inside the res4 window as in the official config.
    * clips: the videos are 30 fps; ``target_fps=6`` resamples them to YouTube-VOS's 6-fps frame list,
      and ``frame_gap=2`` takes frames 2 list entries apart (10 raw frames): at 128 px a 720p frame is
      shrunk about twice as much as YouTube-VOS at 256 px, so twice the gap gives a similar motion in pixels.
    * batch 4 clips (8 images for BatchNorm), 600 steps, 1 loader worker: measured here, forward +
      backward of a batch takes ~1 s; decoding one 2-frame clip by seeking into 720p H.264 takes
      0.1-1.5 s, so the frames come from the decoded-frame cache (``cache_dir``, short side 160, built
      once in ~40 s for the 20 sample videos; a cached clip reads in ~1 ms); 600 x 4 = 2,400 clips =
      ~120 per video of the 20-video sample folder.
    * Adam 2e-4 (4x the official 5e-5: the run is ~70x shorter), warm-up 30 steps (5 %, the official
      1,100 / 44,000 is 2.5 %, a few more steps because early Adam steps are noisy at batch 4),
      cosine to 0.001 x lr.
    * Everything else (alpha 1000, beta 50, T 0.7, paper entropy rule, teacher /0.07, Lab dropout,
      crop aspect 1.5-2 area 0.6-1) is the official setting. Not tuned: no CPU run of this recipe
      was long enough to measure a gain over its step-1 initialisation.
    """
    official = default()
    return replace(
        official,
        name="stt-cpu",
        method=replace(
            official.method, depth=18, radii=(6, 3), teacher_weights="runs/stt-spatial-cpu/model.safetensors"
        ),
        data=cpu_video_data(
            official.data,
            target_fps=6.0,
            frame_gap=2,
            batch_size=4,
            crop_size=128,
            cache_dir=dataset_path("frame-cache"),
            cache_short_side=160,
        ),
        optim=_adam(2e-4),
        schedule=_official_schedule(warmup=30),
        checkpoint=CheckpointConfig(every=100, keep_last=2),
        steps=600,
        sync_bn=False,
        device="cpu",
        log_every=10,
        curves_every=50,
    )


def smoke() -> RunConfig:
    """Synthetic clips, ResNet-18 at 64 x 64 (res3 16 x 16, res4 8 x 8, res5 2 x 2), radii 4/2, a
    random-init teacher (``teacher_weights="random"``, allowed for smoke tests only), scratch student,
    4 steps of Adam 1e-3 in seconds."""
    return smoke_run(
        "stt-smoke",
        STTConfig(depth=18, radii=(4, 2), teacher_weights="random", student_init="scratch"),
        STTDataConfig(
            source="synthetic",
            batch_size=2,
            num_workers=0,
            crop_size=64,
            synthetic_videos=4,
            synthetic_frames=6,
            synthetic_size=(72, 96),
        ),
        _adam(1e-3),
        steps=4,
    )

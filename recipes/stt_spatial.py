"""STT step 1 (spatial feature learning), MoCo v2 image pre-training:
``tritoncorr train recipes/stt_spatial.py[:NAME]``.

The run's ``model.safetensors`` holds the query backbone under ``backbone.*`` (torchvision layout);
STT step 2 (``recipes/stt.py``) loads it as teacher and student initialisation through
:func:`tritoncorr.models.loading.load_backbone_weights` (see :mod:`tritoncorr.methods.moco`).

* ``default``: the paper's step 1 (docs/methods/stt.md §2: MoCo, 200 epochs on ImageNet, official
  MoCo v2 hyper-parameters): ResNet-50 on ``$TRITONCORR_DATA/ImageNet/train`` (``~/.cache/tritoncorr``
  when ``TRITONCORR_DATA`` is unset: ``tritoncorr.data.config.data_home``); another folder with
  ``--set data.root=/path/to/imagenet/train``. One process with batch 256 (BN in 8 groups of 32 = the
  paper's 8 GPUs x 32), or ``torchrun --nproc_per_node 8 ... --set data.batch_size=32`` (per rank;
  ``optim.lr`` 0.03 is for the global batch of 256, scale it with ``--set optim.lr=`` otherwise).
* ``cpu``: ResNet-18 on frames of a folder of videos, about 20 minutes on a 2-core CPU::

      tritoncorr train recipes/stt_spatial.py:cpu --set data.root=/work/shared/data/videos --out runs/stt-spatial-cpu

  writes ``runs/stt-spatial-cpu/model.safetensors``, the default step-1 checkpoint of STT step 2's cpu
  recipe (``--out`` may be left out: the run folder defaults to ``runs/<name>`` = ``runs/stt-spatial-cpu``).
* ``smoke``: generated pictures, R18 at 64 x 64, 3 steps in seconds.
"""

from dataclasses import replace

from tritoncorr.data.config import dataset_path
from tritoncorr.data.images import ImageDataConfig
from tritoncorr.engine.config import CheckpointConfig, EvalConfig, OptimConfig, RunConfig, ScheduleConfig
from tritoncorr.engine.recipe import cpu_video_data, smoke_run
from tritoncorr.methods.moco import MoCoConfig

# ImageNet-1k train: 1,281,167 images -> 5,004 full batches of 256 per epoch.
_IMAGENET_ITERS_PER_EPOCH = 1_281_167 // 256


def _sgd(batch: int, base: float = 0.03) -> OptimConfig:
    """MoCo's SGD: lr ``base x batch / 256``, momentum 0.9, weight decay 1e-4 on every parameter."""
    return OptimConfig(name="sgd", lr=base * batch / 256, momentum=0.9, weight_decay=1e-4)


def default() -> RunConfig:
    """MoCo v2, ResNet-50: K 65,536, m 0.999, T 0.2, MLP head 2048-2048-128, aug+ at 224, SGD lr 0.03
    (batch 256), cosine, 200 epochs (1,000,800 steps). Features for propagation: layer3 at stride 8."""
    return RunConfig(
        name="stt-spatial",
        method=MoCoConfig(
            depth=50, dim=128, mlp=True, queue_size=65536, momentum=0.999, temperature=0.2, shuffle_bn=True, bn_group=32
        ),
        data=ImageDataConfig(
            source="folder",
            root=dataset_path("ImageNet", "train"),
            batch_size=256,
            num_workers=16,
            pin_memory=True,
            crop_size=224,
        ),
        optim=_sgd(256),
        schedule=ScheduleConfig(name="cosine"),
        checkpoint=CheckpointConfig(every=5000, keep_last=3),
        eval=EvalConfig(every=0, preset="stt"),
        steps=200 * _IMAGENET_ITERS_PER_EPOCH,
        seed=0,
        log_every=100,
        curves_every=2000,
    )


def cpu() -> RunConfig:
    """MoCo v2 scaled down to about 20 minutes on a 2-core CPU over frames of a folder of videos.

    Settings (vs ``default``) and why:

    * data: every 10th frame of each video (``/work/shared/data/videos``: 20 clips -> 464 frames),
      decoded once at start-up (about 40 s) and kept in memory with the shorter side at 128 px;
      random access into 720p H.264 would otherwise cost a seek and a decode per image.
    * ResNet-18 (MLP 512-512-128) at 96 x 96 crops: the cheapest backbone STT uses; one step of
      batch 32 (query forward/backward + key forward) takes about 0.7-1 s on the two cores, the
      two views of 32 images about 0.25 s in the loader worker.
    * batch 32 with ``bn_group=8``: BatchNorm statistics over 4 groups of 8 and the key batch shuffled
      within the batch, the single-process stand-in for MoCo's shuffling BN on 4 GPUs x 8.
    * queue K = 256 (8 batches), smaller than the 464 images (14 batches per epoch), so a query's
      own (stale) key is almost never among its negatives; 65,536 would hold every frame ~140 times.
    * momentum 0.99 (MoCo's CIFAR/single-GPU demo value): 0.999 averages over ~1,000 steps, the
      length of the whole run, so the key encoder would stay near its random initialisation.
    * SGD lr 0.03 at batch 32 (8x the linear ``0.03 x 32 / 256``: the run is ~1,000x shorter than the
      paper's), momentum 0.9, wd 1e-4, cosine to 0 over 1,000 steps (~70 epochs).
    * T 0.2, aug+ (colour jitter 0.8, grayscale 0.2, blur 0.5, flip, crop scale 0.2-1) as the paper.
    """
    paper = default()
    return replace(
        paper,
        name="stt-spatial-cpu",
        method=replace(paper.method, depth=18, queue_size=256, momentum=0.99, bn_group=8),
        data=cpu_video_data(
            paper.data,
            frame_step=10,
            cache_short_side=128,
            batch_size=32,
            crop_size=96,
        ),
        # optim: default's SGD unchanged, lr 0.03 at batch 32 (8x the linear rule, see above)
        checkpoint=CheckpointConfig(every=200, keep_last=2),
        steps=1000,
        device="cpu",
        log_every=10,
        curves_every=50,
    )


def smoke() -> RunConfig:
    """Generated 64 x 80 pictures, R18 at 64 x 64 crops, batch 4 (BN groups of 2), K 16: 3 steps."""
    return smoke_run(
        "stt-spatial-smoke",
        MoCoConfig(
            depth=18, dim=32, mlp=True, queue_size=16, momentum=0.99, temperature=0.2, shuffle_bn=True, bn_group=2
        ),
        ImageDataConfig(
            source="synthetic", synthetic_images=12, synthetic_size=(64, 80), batch_size=4, num_workers=0, crop_size=64
        ),
        OptimConfig(name="sgd", lr=0.03, momentum=0.9, weight_decay=1e-4),
        steps=3,
        eval=EvalConfig(every=0, preset="stt"),
    )

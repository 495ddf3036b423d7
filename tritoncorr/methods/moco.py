"""MoCo v2 (He et al. CVPR 2020; Chen et al. 2020, "Improved Baselines with Momentum Contrastive
Learning"): STT step 1, the spatial (image) pre-training whose query backbone becomes the teacher and
the student initialisation of STT step 2 (docs/methods/stt.md §2).

The STT repository ships no step-1 code ("use the official MoCo or DetCo", README.md:156-157); the
paper trains MoCo for 200 epochs on ImageNet "following most hyper-parameter settings of [MoCo]". We
follow the official MoCo v2 recipe (facebookresearch/moco, ``--mlp --moco-t 0.2 --aug-plus --cos``),
stt.md §2 calls this an unverified assumption:

* query encoder ``f_q``: a torchvision-layout :class:`~tritoncorr.models.resnet.ResNet` (R18/R50,
  standard strides (1, 2, 2, 2), max-pool stem), global average pooling of ``layer4``, then the MLP
  head ``Linear(C, C) -> ReLU -> Linear(C, 128)`` (C = 2048 for R50, 512 for R18; MoCo v2's
  ``--mlp``; no BatchNorm in the head), output L2-normalised;
* key encoder ``f_k``: a copy of ``f_q`` (same init), never trained by gradients; before the keys
  are computed at every forward, ``theta_k <- m theta_k + (1 - m) theta_q`` with m = 0.999 (the
  official order: after the previous optimiser step, before the key forward). Only parameters are
  averaged; the key encoder's BatchNorm running statistics come from its own forward passes;
* queue: ``K`` = 65,536 keys of the past batches (``(dim, K)``, initialised to random unit
  columns) with a FIFO pointer, both registered buffers (in ``state_dict``, so checkpoints and
  resume hold them). After the loss, the batch's keys (all-gathered over DDP ranks, in rank
  order) are written at columns ``ptr, ptr + 1, ... (mod K)`` and ``ptr`` advances by their count
  (the official code asserts ``K % batch == 0``; we wrap instead, which equals it whenever it holds);
* loss: InfoNCE, ``-log( exp(q.k+ / T) / (exp(q.k+ / T) + sum_queue exp(q.n / T)) )``, T = 0.2,
  averaged over the batch (``logits = [q.k+, q.queue] / T``, cross-entropy at class 0), one
  direction (query = ``view1``, key = ``view2``), as the official code;
* shuffling BN: each key must be normalised with BatchNorm statistics of a *different* group of
  samples than its query, else the model can cheat through the batch statistics (MoCo paper, section 3.3).
  Under DDP (more than one process) we do what the official code does: gather the key images of
  all ranks, apply one random permutation (drawn on rank 0, broadcast), run the key encoder on this
  rank's slice, gather the keys and undo the permutation; BN is per process (no SyncBN: keep
  ``RunConfig.sync_bn=False``). In one process a permutation alone changes nothing (the batch
  statistics are the same whatever the order), so the single-process equivalent is the one of the
  authors' single-GPU demo (moco/colab): BatchNorm layers of **both** encoders compute their
  statistics over groups of ``bn_group`` consecutive samples (:class:`SplitBatchNorm2d`, the same
  parameters and buffers as ``nn.BatchNorm2d``: the checkpoint keeps the torchvision layout), and
  the key batch is permuted within the batch before the key encoder. ``bn_group=32`` at batch 256
  in one process is the paper's 8 GPUs x 32; under DDP at 32 per rank it is one group per rank,
  i.e. the official per-GPU BN. ``bn_group=0``: one group per process (plain BN).
* optimiser (the recipe's, ``recipes/stt_spatial.py``): SGD lr 0.03 x batch / 256, momentum 0.9,
  weight decay 1e-4 on every parameter (biases and BN included, as the official code), cosine to 0
  over the run (per step; the official code steps it per epoch), 200 epochs.

Inference (``features``): STT evaluates its backbones at ``res4`` = ``layer3`` with the stride-8
test configuration, strides (1, 2, 2, 1) and no stem pool (stt.md §4.1, T18d8:8), and so does the
step-2 student. The weights do not depend on the strides, and ``layer4``'s stride does not affect
``layer3``, so ``features(images)`` runs the query backbone without its max-pool and returns
``layer3``: ``(N, 3, H, W) -> (N, 256 (R18) | 1024 (R50), H/8, W/8)``, ImageNet-normalised RGB
input (``input_color = "rgb"``), propagated with STT's preset (``inference_preset = "stt"``: cosine
/ 0.07, top-10, square window, 20 + 1 context frames), the protocol under which the paper reports
its MoCo baselines (Table 2). ``feature_stage`` / ``feature_pool`` select another layer or stem.

Output for STT step 2: the engine writes ``<run>/model.safetensors`` = this module's state dict. The
query backbone is the sub-module ``backbone``, so its keys are ``backbone.conv1.weight``,
``backbone.layer1.0.bn1.running_mean``, ... (torchvision layout under the prefix ``backbone.``, which
:func:`tritoncorr.models.loading.load_backbone_weights` strips); every other key (``head.*``,
``key_backbone.*``, ``key_head.*``, ``queue``, ``queue_ptr``) does not start with that prefix and is
reported as ignored. :meth:`MoCo.backbone_state_dict` gives the plain dict.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tritoncorr.models.resnet import STAGES, ResNet

__all__ = [
    "MoCoConfig",
    "MoCo",
    "SplitBatchNorm2d",
    "convert_split_bn",
    "info_nce",
    "momentum_update",
    "concat_all_gather",
]


@dataclass
class MoCoConfig:
    """MoCo v2 settings (defaults: the official MoCo v2 recipe with ResNet-50).

    Attributes:
        depth: ResNet depth, 18 or 50 (34 works too).
        dim: output dimension of the projection head (128).
        mlp: MoCo v2's 2-layer MLP head (True); False = MoCo v1's single linear layer.
        mlp_hidden: hidden width of the MLP; 0 = the backbone's output channels (2048 R50, 512 R18).
        queue_size: K, number of negative keys (65,536).
        momentum: m of the key encoder's moving average (0.999).
        temperature: T of InfoNCE (0.2 for v2; v1 used 0.07).
        shuffle_bn: shuffle the key batch across ranks (DDP) / within the batch (one process).
        bn_group: samples per BatchNorm statistics group in both encoders (0 = the whole local batch).
        padding_mode: ResNet conv padding ("zeros", torchvision).
        feature_stage: backbone stage returned by ``features`` ("layer3" = STT's res4).
        feature_pool: stem pooling used by ``features``: "none" (STT d8 test model, layer3 at
            stride 8), "max" (the training stem), "avg" (STT d4 style).
    """

    depth: int = 50
    dim: int = 128
    mlp: bool = True
    mlp_hidden: int = 0
    queue_size: int = 65536
    momentum: float = 0.999
    temperature: float = 0.2
    shuffle_bn: bool = True
    bn_group: int = 0
    padding_mode: str = "zeros"
    feature_stage: str = "layer3"
    feature_pool: str = "none"

    def __post_init__(self) -> None:
        if self.depth not in (18, 34, 50):
            raise ValueError(f"MoCoConfig.depth must be 18, 34 or 50, got {self.depth}")
        for name in ("dim", "queue_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"MoCoConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.mlp_hidden < 0 or self.bn_group < 0:
            raise ValueError("MoCoConfig.mlp_hidden and bn_group must be >= 0 (0 = automatic)")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"MoCoConfig.momentum must be in [0, 1), got {self.momentum}")
        if not self.temperature > 0:
            raise ValueError(f"MoCoConfig.temperature must be > 0, got {self.temperature}")
        if self.feature_stage not in STAGES:
            raise ValueError(f"MoCoConfig.feature_stage must be one of {STAGES}, got {self.feature_stage!r}")
        if self.feature_pool not in ("none", "max", "avg"):
            raise ValueError(f"MoCoConfig.feature_pool must be 'none', 'max' or 'avg', got {self.feature_pool!r}")

    def build(self) -> "MoCo":
        return MoCo(self)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are computed per group of ``group_size``
    consecutive samples (``N % group_size == 0``); the running statistics are updated with the mean
    over groups of what each group's update would be. Same parameters/buffers (names, shapes) as
    ``nn.BatchNorm2d``; eval mode, ``group_size == 0`` or ``N <= group_size``: plain BatchNorm.

    ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, num_features: int, group_size: int = 0, **kwargs):
        super().__init__(num_features, **kwargs)
        self.group_size = int(group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        g = self.group_size
        if not self.training or g <= 0 or n <= g:
            return super().forward(x)
        if n % g:
            raise ValueError(
                f"SplitBatchNorm2d: batch {n} is not a multiple of bn_group={g} "
                "(choose data.batch_size as a multiple of method.bn_group)"
            )
        groups = n // g
        c, h, w = x.shape[1:]
        if self.momentum is None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            self.num_batches_tracked.add_(1)
            factor = self.momentum
        # (G*g, C, H, W) -> (g, G*C, H, W): channel block j holds group j's samples
        xg = x.view(groups, g, c, h, w).transpose(0, 1).reshape(g, groups * c, h, w)
        rm = self.running_mean.repeat(groups)
        rv = self.running_var.repeat(groups)
        y = F.batch_norm(xg, rm, rv, self.weight.repeat(groups), self.bias.repeat(groups), True, factor, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(rm.view(groups, c).mean(0))
            self.running_var.copy_(rv.view(groups, c).mean(0))
        return y.view(g, groups, c, h, w).transpose(0, 1).reshape(n, c, h, w)


def convert_split_bn(module: nn.Module, group_size: int) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by a :class:`SplitBatchNorm2d` with the same
    state (in place; returns ``module``)."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm2d):
            new = SplitBatchNorm2d(
                child.num_features,
                group_size,
                eps=child.eps,
                momentum=child.momentum,
                affine=child.affine,
                track_running_stats=child.track_running_stats,
            )
            new.load_state_dict(child.state_dict())
            new.to(device=child.weight.device, dtype=child.weight.dtype)
            setattr(module, name, new)
        else:
            convert_split_bn(child, group_size)
    return module


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: ``q`` (N, D) queries, ``k`` (N, D) positive keys, ``queue`` (D, K) negatives
    (all L2-normalised). ``logits = [q.k, q^T queue] / T`` (N, 1 + K), mean cross-entropy at 0."""
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


@torch.no_grad()
def momentum_update(key: nn.Module, query: nn.Module, m: float) -> None:
    """``theta_k <- m theta_k + (1 - m) theta_q`` for every parameter pair (same order)."""
    kp = list(key.parameters())
    qp = list(query.parameters())
    if len(kp) != len(qp):
        raise ValueError(f"key and query encoders differ ({len(kp)} vs {len(qp)} parameters)")
    for pk, pq in zip(kp, qp):
        pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N, ...) of every rank in rank order (no gradient); ``x`` itself in one process."""
    rank, world = _world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------


def _head(c: int, hidden: int, dim: int, mlp: bool) -> nn.Module:
    if mlp:
        return nn.Sequential(nn.Linear(c, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
    return nn.Linear(c, dim)


class MoCo(nn.Module):
    """MoCo v2 (module docstring). ``forward({"view1", "view2": (B, 3, S, S)}) -> {"infonce": loss}``."""

    method_name = "moco"
    input_color = "rgb"
    inference_preset = "stt"

    def __init__(self, cfg: MoCoConfig):
        super().__init__()
        self.cfg = cfg
        self.config = cfg  # the method contract's name (tritoncorr.engine.method): recorded in checkpoints
        self.backbone = ResNet(
            cfg.depth, strides=(1, 2, 2, 2), pool="max", padding_mode=cfg.padding_mode, out_stages=("layer4",)
        )
        c = self.backbone.channels["layer4"]
        self.head = _head(c, cfg.mlp_hidden or c, cfg.dim, cfg.mlp)
        if cfg.bn_group:
            convert_split_bn(self.backbone, cfg.bn_group)
        self.key_backbone = copy.deepcopy(self.backbone)
        self.key_head = copy.deepcopy(self.head)
        for p in list(self.key_backbone.parameters()) + list(self.key_head.parameters()):
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(cfg.dim, cfg.queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    # -- encoders -------------------------------------------------------------------------------
    @staticmethod
    def _encode(backbone: ResNet, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
        f = backbone(x)["layer4"]
        return F.normalize(head(torch.flatten(F.adaptive_avg_pool2d(f, 1), 1)), dim=1)

    def encode_query(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` -> unit queries ``(N, dim)``."""
        return self._encode(self.backbone, self.head, x)

    @torch.no_grad()
    def encode_key(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` -> unit keys ``(N, dim)`` from the key encoder, with the BN shuffle."""
        if not self.cfg.shuffle_bn:
            return self._encode(self.key_backbone, self.key_head, x)
        rank, world = _world()
        if world == 1:
            perm = torch.randperm(x.shape[0]).to(x.device)
            k = self._encode(self.key_backbone, self.key_head, x[perm])
            return k[torch.argsort(perm)]
        x_all = concat_all_gather(x)
        perm = torch.randperm(x_all.shape[0]).to(x.device)
        dist.broadcast(perm, src=0)
        mine = perm.view(world, -1)[rank]
        k_all = concat_all_gather(self._encode(self.key_backbone, self.key_head, x_all[mine]))
        return k_all[torch.argsort(perm).view(world, -1)[rank]]

    @torch.no_grad()
    def momentum_update(self) -> None:
        momentum_update(self.key_backbone, self.backbone, self.cfg.momentum)
        momentum_update(self.key_head, self.head, self.cfg.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (M, dim) (this step's keys of all ranks) at columns ``ptr .. ptr+M-1 (mod K)``."""
        K = self.queue.shape[1]
        m = keys.shape[0]
        if m > K:
            raise ValueError(f"{m} keys per step exceed the queue size {K} (raise method.queue_size)")
        ptr = int(self.queue_ptr.item())
        cols = (ptr + torch.arange(m, device=self.queue.device)) % K
        self.queue[:, cols] = keys.to(self.queue.dtype).t()
        self.queue_ptr[0] = (ptr + m) % K

    # -- training -------------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        im_q, im_k = batch["view1"], batch["view2"]
        if im_q.dim() != 4 or im_q.shape[1] != 3 or im_q.shape != im_k.shape:
            raise ValueError(
                f"MoCo expects view1/view2 of the same shape (B, 3, S, S), got {tuple(im_q.shape)} "
                f"and {tuple(im_k.shape)}"
            )
        q = self.encode_query(im_q)
        with torch.no_grad():
            self.momentum_update()
            k = self.encode_key(im_k)
        loss = info_nce(q, k, self.queue.clone().detach(), self.cfg.temperature)
        self.enqueue(concat_all_gather(k))
        return {"infonce": loss}

    # -- inference / export ------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` ImageNet-normalised RGB -> ``feature_stage`` of the query backbone with the
        ``feature_pool`` stem; default ``(N, C3, H/8, W/8)`` (C3 = 256 R18, 1024 R50)."""
        b = self.backbone
        x = b.relu(b.bn1(b.conv1(images)))
        if self.cfg.feature_pool == "max":
            x = F.max_pool2d(x, 3, 2, 1)
        elif self.cfg.feature_pool == "avg":
            x = F.avg_pool2d(x, 3, 2, 1)
        for name in STAGES:
            x = getattr(b, name)(x)
            if name == self.cfg.feature_stage:
                return x
        raise AssertionError("unreachable")

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The query backbone's state dict in torchvision layout (no prefix)."""
        return {k: v.detach() for k, v in self.backbone.state_dict().items()}

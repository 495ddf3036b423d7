"""A small but real self-supervised method and a deterministic clip loader for the engine's tests.

``ToyMethod``: a two-layer conv encoder; frame t+1's colours (average-pooled to the feature grid) are
reconstructed from frame t's colours by softmax attention over feature similarities (the
colourisation / reconstruction pretext of CRW/MAST in miniature). Loss terms: ``recon`` (L1) and
``entropy`` (weighted attention entropy). The source frame t is drawn with the global torch RNG when
``random_pair`` is set, so resume tests also check that RNG states are restored.

``ToyDataConfig.build_loader`` follows the data-loader contract of ``tritoncorr.data.loader``
(``len``, ``set_epoch``, ``state_dict``/``load_state_dict``, dict batches with ``frames`` (B,T,3,S,S),
``video`` (B,), ``frame_index`` (B,T)); the epoch's permutation depends only on (seed, epoch) and rank
r takes every world_size-th clip of each global batch, so one process with batch 2B sees the union of
two ranks' batches of B.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tritoncorr.engine.registry import register_config


@dataclass
class ToyMethodConfig:
    channels: int = 8
    norm: bool = True
    temperature: float = 0.1
    entropy_weight: float = 0.01
    random_pair: bool = True

    def build(self) -> "ToyMethod":
        return ToyMethod(self)


class ToyMethod(nn.Module):
    def __init__(self, cfg: ToyMethodConfig):
        super().__init__()
        c = cfg.channels
        self.cfg = cfg
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, stride=2, padding=1, bias=not cfg.norm)]
        if cfg.norm:
            layers.append(nn.BatchNorm2d(c))
        layers += [nn.ReLU(), nn.Conv2d(c, c, 3, padding=1)]
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, c, 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C, ceil(H/2), ceil(W/2))."""
        return self.head(self.backbone(images))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        frames = batch["frames"]  # (B, T, 3, S, S)
        b, t = frames.shape[:2]
        if self.cfg.random_pair and t > 2:
            src = int(torch.randint(0, t - 1, ()).item())
        else:
            src = 0
        fs = F.normalize(self.features(frames[:, src]), dim=1)  # (B, C, h, w)
        ft = F.normalize(self.features(frames[:, src + 1]), dim=1)
        h, w = fs.shape[-2:]
        cs = F.adaptive_avg_pool2d(frames[:, src], (h, w)).flatten(2)  # (B, 3, hw)
        ct = F.adaptive_avg_pool2d(frames[:, src + 1], (h, w)).flatten(2)
        logits = torch.einsum("bcq,bck->bqk", ft.flatten(2), fs.flatten(2)) / self.cfg.temperature
        attn = logits.softmax(dim=-1)  # (B, hw target, hw source)
        pred = torch.einsum("bqk,bck->bcq", attn, cs)
        recon = (pred - ct).abs().mean()
        entropy = -(attn * logits.log_softmax(dim=-1)).sum(-1).mean()
        return {"recon": recon, "entropy": self.cfg.entropy_weight * entropy}


def toy_clip(video: int, epoch: int, seed: int, clip_len: int, size: int) -> torch.Tensor:
    """A moving-blob clip (T, 3, S, S), deterministic in (video, epoch, seed)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + video * 7919 + epoch)
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    centre = torch.rand(2, generator=g) * size
    vel = (torch.rand(2, generator=g) - 0.5) * 2
    colour = torch.rand(3, 1, 1, generator=g) * 2 - 1
    bg = torch.rand(3, 1, 1, generator=g) * 0.5
    frames = []
    for t in range(clip_len):
        cy, cx = centre + vel * t
        blob = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * (size / 6) ** 2))
        frames.append(bg + colour * blob + 0.05 * torch.randn(3, size, size, generator=g))
    return torch.stack(frames)


class ToyLoader:
    def __init__(self, cfg: "ToyDataConfig", seed: int, rank: int, world_size: int):
        self.cfg, self.seed, self.rank, self.world = cfg, seed, rank, world_size
        self.epoch, self.batch = 0, 0
        self.global_batch = cfg.batch_size * world_size
        self.fetched = 0

    def __len__(self) -> int:
        return self.cfg.num_videos // self.global_batch

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.batch = int(epoch), 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def __iter__(self):
        perm = torch.randperm(self.cfg.num_videos, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        while self.batch < len(self):
            self.fetched += 1
            if self.fetched == self.cfg.interrupt_at_fetch:
                # what Ctrl-C does to a DataLoader with workers: the workers die, the fetch fails
                os.kill(os.getpid(), signal.SIGINT)
                raise RuntimeError("DataLoader worker (pid 0) exited unexpectedly")
            ids = perm[self.batch * self.global_batch : (self.batch + 1) * self.global_batch][self.rank :: self.world]
            clips = [toy_clip(int(v), self.epoch, self.seed, self.cfg.clip_len, self.cfg.size) for v in ids]
            self.batch += 1
            yield {
                "frames": torch.stack(clips),
                "video": ids.clone(),
                "frame_index": torch.arange(self.cfg.clip_len).repeat(len(ids), 1),
            }


@dataclass
class ToyDataConfig:
    num_videos: int = 12
    clip_len: int = 3
    size: int = 16
    batch_size: int = 2
    interrupt_at_fetch: int = 0  # > 0: simulate Ctrl-C killing the workers at this fetch (tests)

    def build_loader(self, *, seed: int, rank: int = 0, world_size: int = 1) -> ToyLoader:
        return ToyLoader(self, seed, rank, world_size)


# The toy configs are recorded in config.json / checkpoint metadata as "toy" / "toy_data"; files may
# only name registered classes (tritoncorr.engine.registry).
register_config("toy", ToyMethodConfig)
register_config("toy_data", ToyDataConfig)

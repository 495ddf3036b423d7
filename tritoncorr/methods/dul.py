"""DUL: "Dense Unsupervised Learning for Video Segmentation" (Araslanov et al., NeurIPS 2021).

The training objective, as the official code computes it (spec: ``docs/methods/dul.md`` §2):

* every clip (``B`` videos x ``T`` frames, main view, already cropped/flipped by the data pipeline)
  gets a *regularising view*: one random h-flip + square zoom-in crop per clip
  (:func:`tritoncorr.data.transforms.random_view_transform`), with ``A_b`` (B, 2, 3) mapping
  regularising-view coordinates to main-view coordinates (``align_corners=False``);
* keys = L2-normalised 128-d output of an MLP head on ResNet-18 ``layer4`` (stride 8);
* anchors ``q`` = keys of the **main** view's reference frame (t = 0) on an ``N x N`` grid with one
  random offset per video -> ``B * N^2`` anchors shared by both views;
* pseudo labels = for every regularising-view position of the non-reference frames, the best anchor
  of the **own** video (no gradient);
* ``L_ST`` = mean cross-entropy, softmax over **all** ``B * N^2`` anchors, of the main-view logits
  resampled into the regularising view (nearest neighbour) against those pseudo labels, over the
  non-reference frames; computed by the fused :func:`tritoncorr.kernels.anchor_nll` without ever
  storing the ``P x B*N^2`` logits;
* ``L_CV`` = cross-entropy over ``B*M^2 x B*M^2`` similarities between the warped main-view reference
  keys and the regularising-view reference keys at an ``M x M`` grid (one offset per video), diagonal
  targets, mean;
* loss = ``L_ST + lambda * L_CV``; :meth:`DUL.forward` returns ``{"st": L_ST, "cv": lambda * L_CV}``.

Paper-vs-code choices (we follow the official code everywhere; the spec's §2.11 / §5 list):

1. Regularising branch: frames 1..T-1 of the regularising view go through a ``no_grad`` pass with
   BatchNorm in **train** mode (batch statistics, running statistics updated); the paper's
   "evaluation mode" is literally only available as ``DULConfig.reg_bn_eval=True``.
2. The regularising view's reference frame goes through the main (gradient) pass together with
   the main-view frames (so BatchNorm statistics of the main pass include it); it is the only
   regularising-view frame with a gradient, needed by ``L_CV``.
3. Alignment warps with nearest-neighbour sampling. The code warps the logits ``z/tau``; since the
   warp is nearest and never samples outside the frame (zoom-in only), warping the logits equals
   computing logits from nearest-warped keys (spec §2.10), which is what we do (exact, and it lets
   the kernel avoid the ``[BT, B*N^2, h, w]`` tensor).
4. Anchor grid jitter: one ``(dy, dx)`` offset per video shared by all ``N^2`` cells (the paper says
   "one sample per grid cell"); the cross-view grid draws its own offsets.
5. ``L_ST``: softmax over all batch anchors (other videos are negatives), argmax restricted to the
   own video. Mean instead of the paper's sum. The reference frame is excluded.
6. ``L_CV``: plain softmax cross-entropy (positive included in the denominator, paper eq. 4
   excludes it), one direction (rows = main view), all-batch negatives, mean; ``lambda`` multiplies
   the mean.
7. The temperature 0.05 is used for training (the code reads it from the inference config).
8. Regularising-view crop (:func:`tritoncorr.data.transforms.random_view_transform`): a square
   crop of side ``int(s*S)``; its affine uses the true factor ``int(s*S)/S`` (exact), whereas DUL's
   code puts the drawn ``s`` in ``A_b`` (up to 0.5 px misalignment). We do not reproduce that quirk.

Optimiser settings (Adam, betas (0.5, 0.999), coupled wd 5e-4, biases at 2x lr without wd) are the
recipe's (``recipes/dul.py``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from tritoncorr.models.resnet import dul_backbone

__all__ = [
    "DULConfig",
    "DUL",
    "DULHead",
    "sample_grid",
    "gather_positions",
    "warp_maps",
    "pseudo_labels",
    "self_training_loss",
    "cross_view_loss",
]


@dataclass
class DULConfig:
    """DUL's method settings (defaults = the paper / official code, YouTube-VOS config).

    Attributes:
        tau: softmax temperature of both losses (0.05).
        cv_weight: lambda, the weight of the cross-view loss ``L_CV`` (0.1).
        anchor_grid: N, anchors per video = N*N from the main view's reference frame (8).
        cross_view_grid: M, points per video of the cross-view loss = M*M (4).
        key_dim: K, dimension of the L2-normalised key (128).
        head_hidden: hidden width of the MLP head (512).
        padding_mode: ResNet conv padding, "zeros" (DUL) or "reflect" (CRW).
        view_scale_range: zoom-in crop side fraction s ~ U(lo, hi) of the regularising view.
        view_flip_p: probability of the regularising view's horizontal flip.
        reg_bn_eval: run the no-grad regularising pass with BatchNorm in eval mode (the paper's
            wording). False = the official code: no autograd graph but batch statistics.
    """

    tau: float = 0.05
    cv_weight: float = 0.1
    anchor_grid: int = 8
    cross_view_grid: int = 4
    key_dim: int = 128
    head_hidden: int = 512
    padding_mode: str = "zeros"
    view_scale_range: tuple[float, float] = (0.5, 1.0)
    view_flip_p: float = 0.5
    reg_bn_eval: bool = False

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"DULConfig.tau must be > 0, got {self.tau}")
        if self.cv_weight < 0:
            raise ValueError(f"DULConfig.cv_weight must be >= 0, got {self.cv_weight}")
        for name in ("anchor_grid", "cross_view_grid", "key_dim", "head_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DULConfig.{name} must be >= 1, got {getattr(self, name)}")
        lo, hi = self.view_scale_range
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"DULConfig.view_scale_range must satisfy 0 < lo <= hi <= 1 (zoom-in), got {(lo, hi)}")
        if not 0 <= self.view_flip_p <= 1:
            raise ValueError(f"DULConfig.view_flip_p must be in [0, 1], got {self.view_flip_p}")

    def build(self) -> "DUL":
        return DUL(self)


class DULHead(nn.Module):
    """DUL's key head: Conv1x1(C->hidden) -> BN -> ReLU -> Conv1x1(hidden->K), both convs with bias.

    ``(N, C, h, w) -> (N, K, h, w)`` (not normalised; :meth:`DUL.keys` L2-normalises).
    """

    def __init__(self, in_channels: int = 512, hidden: int = 512, out_channels: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=True),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --------------------------------------------------------------------------------------------
# Building blocks (public so that tests can check each against the spec's equations)
# --------------------------------------------------------------------------------------------


def sample_grid(
    batch: int,
    height: int,
    width: int,
    n: int,
    *,
    generator: Optional[torch.Generator] = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Jittered ``n x n`` grid of flat positions per video, one random offset per video.

    Cell size ``(height // n, width // n)``; video ``b`` draws ``oy_b ~ U{0..height//n - 1}``,
    ``ox_b ~ U{0..width//n - 1}`` and samples ``(i*cy + oy_b, j*cx + ox_b)`` for ``i, j in 0..n-1``.

    Returns:
        (batch, n*n) int64 flat indices ``y * width + x`` in ``[0, height*width)``, row-major over
        ``(i, j)``.
    """
    if n < 1:
        raise ValueError(f"grid side must be >= 1, got {n}")
    if height < n or width < n:
        raise ValueError(f"a {n}x{n} grid needs a feature map of at least {n}x{n}, got {height}x{width}")
    cy, cx = height // n, width // n
    oy = torch.randint(0, cy, (batch, 1, 1), generator=generator)
    ox = torch.randint(0, cx, (batch, 1, 1), generator=generator)
    steps = torch.arange(n)
    ys = steps.view(1, n, 1) * cy + oy
    xs = steps.view(1, 1, n) * cx + ox
    return (ys * width + xs).reshape(batch, n * n).to(device)


def gather_positions(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Vectors of ``maps`` (B, C, h, w) at flat positions ``index`` (B, n) -> (B*n, C), row b*n + i."""
    if maps.dim() != 4:
        raise ValueError(f"maps must be (B, C, h, w), got {tuple(maps.shape)}")
    b, c = maps.shape[:2]
    if index.dim() != 2 or index.shape[0] != b:
        raise ValueError(f"index must be (B={b}, n), got {tuple(index.shape)}")
    flat = maps.flatten(2)
    picked = flat.gather(2, index.to(maps.device)[:, None, :].expand(b, c, index.shape[1]))
    return picked.transpose(1, 2).reshape(b * index.shape[1], c)


def warp_maps(maps: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Resample main-view maps into the regularising view: nearest, ``align_corners=False``.

    Args:
        maps: (B, C, h, w) or (B, T, C, h, w) main-view maps (keys or logits).
        affine: (B, 2, 3) ``A_b``, regularising-view -> main-view normalised coordinates; the same
            matrix for all frames of a video.
    Returns:
        the warped maps, same shape as ``maps``.
    """
    from tritoncorr.data.transforms import warp_to_view

    if affine.dim() != 3 or affine.shape[1:] != (2, 3):
        raise ValueError(f"affine must be (B, 2, 3), got {tuple(affine.shape)}")
    if maps.dim() == 5:
        b, t = maps.shape[:2]
        if affine.shape[0] != b:
            raise ValueError(f"maps has {b} videos but affine has {affine.shape[0]}")
        out = warp_to_view(maps.flatten(0, 1), affine.repeat_interleave(t, dim=0), mode="nearest")
        return out.unflatten(0, (b, t))
    if maps.dim() != 4:
        raise ValueError(f"maps must be (B, C, h, w) or (B, T, C, h, w), got {tuple(maps.shape)}")
    if affine.shape[0] != maps.shape[0]:
        raise ValueError(f"maps has {maps.shape[0]} videos but affine has {affine.shape[0]}")
    return warp_to_view(maps, affine, mode="nearest")


def _positions_major(maps: torch.Tensor) -> torch.Tensor:
    """(B, T, K, h, w) -> (B*T*h*w, K), row ((b*T + t)*h + y)*w + x."""
    return maps.permute(0, 1, 3, 4, 2).reshape(-1, maps.shape[2])


def pseudo_labels(reg_keys: torch.Tensor, anchors: torch.Tensor, anchors_per_video: int) -> torch.Tensor:
    """Own-video argmax anchor of every regularising-view position (paper eq. 2; no gradient).

    Args:
        reg_keys: (B, T', K, h, w) regularising-view keys.
        anchors: (B*A, K), rows b*A .. b*A+A-1 from video b (A = ``anchors_per_video``).
    Returns:
        (B, T', h, w) int64 global anchor indices in ``[b*A, (b+1)*A)``.
    """
    from tritoncorr.kernels import anchor_argmax

    b, t, k, h, w = reg_keys.shape
    if anchors.dim() != 2 or anchors.shape != (b * anchors_per_video, k):
        raise ValueError(f"anchors must be (B*A={b * anchors_per_video}, K={k}), got {tuple(anchors.shape)}")
    dev = reg_keys.device
    feature_group = torch.arange(b, device=dev).repeat_interleave(t * h * w)
    anchor_group = torch.arange(b, device=dev).repeat_interleave(anchors_per_video)
    with torch.no_grad():
        labels = anchor_argmax(_positions_major(reg_keys.detach()), anchors.detach(), feature_group, anchor_group)
    return labels.view(b, t, h, w)


def self_training_loss(
    main_keys: torch.Tensor,
    reg_keys: torch.Tensor,
    anchors: torch.Tensor,
    affine: torch.Tensor,
    tau: float,
    anchors_per_video: int,
) -> torch.Tensor:
    """``L_ST``: mean CE of aligned main-view logits against regularising-view pseudo labels.

    Args:
        main_keys: (B, T', K, h, w) unit-norm main-view keys of the non-reference frames (grad).
        reg_keys: (B, T', K, h, w) unit-norm regularising-view keys of the same frames (no grad).
        anchors: (B*A, K) anchors (grad), A = ``anchors_per_video``.
        affine: (B, 2, 3) ``A_b``.
        tau: temperature.
    Returns:
        scalar fp32: mean over B*T'*h*w of ``logsumexp_a z~[a] - z~[uhat]`` with
        ``z~ = <warp(k), q_a> / tau`` over all B*A anchors.
    """
    from tritoncorr.kernels import anchor_nll

    if main_keys.shape != reg_keys.shape or main_keys.dim() != 5:
        raise ValueError(
            f"main_keys and reg_keys must both be (B, T', K, h, w), got {tuple(main_keys.shape)} and {tuple(reg_keys.shape)}"
        )
    labels = pseudo_labels(reg_keys, anchors, anchors_per_video).reshape(-1)
    aligned = _positions_major(warp_maps(main_keys, affine))
    return anchor_nll(aligned, anchors, labels, float(tau)).mean()


def cross_view_loss(main_ref: torch.Tensor, reg_ref: torch.Tensor, index: torch.Tensor, tau: float) -> torch.Tensor:
    """``L_CV``: CE over ``B*M^2 x B*M^2`` similarities with diagonal targets, mean over rows.

    Args:
        main_ref: (B, K, h, w) main-view reference keys already warped into the regularising view.
        reg_ref: (B, K, h, w) regularising-view reference keys (grad pass).
        index: (B, M^2) flat grid positions (the same for both sides).
        tau: temperature.
    Returns:
        scalar fp32.
    """
    if main_ref.shape != reg_ref.shape or main_ref.dim() != 4:
        raise ValueError(
            f"main_ref and reg_ref must both be (B, K, h, w), got {tuple(main_ref.shape)} and {tuple(reg_ref.shape)}"
        )
    r = gather_positions(main_ref, index).float()
    rhat = gather_positions(reg_ref, index).float()
    logits = r @ rhat.t() / float(tau)
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target)


@contextlib.contextmanager
def _batchnorm_eval(module: nn.Module, enabled: bool):
    """Temporarily put every BatchNorm of ``module`` in eval mode (restored on exit)."""
    if not enabled:
        yield
        return
    changed = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in changed:
        m.eval()
    try:
        yield
    finally:
        for m in changed:
            m.train()


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------


class DUL(nn.Module):
    """DUL training module: ResNet-18 (stride 8) ``backbone`` + MLP key ``head``.

    ``forward(batch)`` takes ``batch["frames"]`` float (B, T, 3, S, S) ImageNet-normalised main-view
    clips (T >= 2; frame 0 is the reference, the data loader already shuffled frame order) and
    returns ``{"st": L_ST, "cv": lambda * L_CV}`` (scalars; the engine minimises their sum).
    ``features(images (N, 3, H, W)) -> (N, 512, H/8, W/8)`` layer4 output, not normalised (the
    label propagation L2-normalises).

    Randomness (regularising views, grid offsets) comes from the global torch CPU RNG, so the
    engine's seed fixes it and its RNG checkpointing makes resume exact; :meth:`seed` switches to a
    private generator instead (tests, reproducible diagnostics).
    """

    method_name = "dul"
    input_color = "rgb"
    inference_preset = "dul"

    def __init__(self, config: Optional[DULConfig] = None):
        super().__init__()
        self.config = config or DULConfig()
        self.backbone = dul_backbone(out_stages=("layer4",), padding_mode=self.config.padding_mode)
        self.head = DULHead(self.backbone.channels["layer4"], self.config.head_hidden, self.config.key_dim)
        self._generator: Optional[torch.Generator] = None

    def seed(self, seed: Optional[int]) -> None:
        """Draw views and grid offsets from a private CPU generator seeded with ``seed``
        (``None``: back to the global torch RNG)."""
        self._generator = None if seed is None else torch.Generator().manual_seed(int(seed))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> layer4 (N, 512, ceil(H/8), ceil(W/8)), not normalised."""
        return self.backbone(images)["layer4"]

    def keys(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> L2-normalised keys (N, K, h, w)."""
        return F.normalize(self.head(self.features(images)), dim=1)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        from tritoncorr.data.transforms import random_view_transform

        cfg = self.config
        frames = batch["frames"]
        if not isinstance(frames, torch.Tensor) or frames.dim() != 5 or frames.shape[2] != 3:
            shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"DUL expects batch['frames'] of shape (B, T, 3, S, S), got {shape}")
        b, t = frames.shape[:2]
        if t < 2:
            raise ValueError(f"DUL needs at least 2 frames per clip (a reference and a target), got T={t}")
        gen = self._generator  # None = global torch RNG

        with torch.no_grad():
            views, affine = random_view_transform(
                frames, gen, scale_range=tuple(cfg.view_scale_range), flip_p=cfg.view_flip_p
            )
        affine = affine.to(device=frames.device, dtype=torch.float32)

        # Main pass (gradient, BN batch statistics over B*T main frames + B regularising references).
        keys1 = self.keys(torch.cat([frames.flatten(0, 1), views[:, 0]], dim=0))
        k, h, w = keys1.shape[1:]
        main = keys1[: b * t].unflatten(0, (b, t))  # (B, T, K, h, w)
        reg_ref = keys1[b * t :]  # (B, K, h, w)
        # Regularising pass: no autograd graph; BN in train mode unless reg_bn_eval.
        with torch.no_grad(), _batchnorm_eval(self, cfg.reg_bn_eval):
            reg_rest = self.keys(views[:, 1:].flatten(0, 1)).unflatten(0, (b, t - 1))

        n2 = cfg.anchor_grid * cfg.anchor_grid
        anchor_index = sample_grid(b, h, w, cfg.anchor_grid, generator=gen, device=frames.device)
        anchors = gather_positions(main[:, 0], anchor_index)  # (B*N^2, K) from main view, t = 0
        st = self_training_loss(main[:, 1:], reg_rest, anchors, affine, cfg.tau, n2)

        cv_index = sample_grid(b, h, w, cfg.cross_view_grid, generator=gen, device=frames.device)
        cv = cross_view_loss(warp_maps(main[:, 0], affine), reg_ref, cv_index, cfg.tau)
        return {"st": st, "cv": cfg.cv_weight * cv}

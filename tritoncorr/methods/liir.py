"""LIIR: "Locality-Aware Inter-and Intra-Video Reconstruction for Self-Supervised Correspondence
Learning" (Li et al., CVPR 2022, arXiv 2203.14333). Training method; spec ``docs/methods/liir.md``.

Source tags as in the spec: [S] supplement, [A] abstract/README/Fig. 2, [U] unofficial code
(shasha521/LIIR_pytorch), [M] MAST, [G] a guess. The paper's method section was never found, so
the exact form of its position encoding, position shifting, temperature and schedule is UNKNOWN;
what is "paper" below is the spec's paper-shaped reading (§4.4 profile P, §5 S1) [G].

The objective, per clip of two ordered frames (frame 0 reference ``I_r``, frame 1 target ``I_t``;
normalised Lab, whole frame resized, no crop or flip: spec §2):

* channel dropout (:func:`tritoncorr.methods.common.drop_chroma`): one of a/b zeroed for the whole
  batch and both frames, all channels x1.5; targets ``Y_r, Y_t`` = the clean dropped channel [U, M];
* stride-4 ResNet-18 (strides (1, 2, 1, 1), no max-pool, widths (64, 128, 256, 256)) run once per
  frame batch (BN statistics per frame batch, spec §3.1), then the 64-d matching head ``f``
  (Conv3x3 256->64 with bias) [U mast_momen.py];
* intra-video reconstruction (spec §4.2): ``Yhat_t(p) = sum_d A(p,d) v_r(p+d)`` with ``A`` the softmax
  of raw dot products (tau 1) over the 13x13 window (R = 6, out-of-image cells count with logit 0
  and value 0), ``v_r = decimate(Y_r, 4)``, computed by the fused
  :func:`tritoncorr.kernels.local_attention` (no correlation volume stored);
  ``L_rec = mean SmoothL1(20 up(Yhat_t) - 20 Y_t)`` at full resolution;
* inter-video reconstruction (spec §4.4): the softmax denominator also holds the target pixel's
  affinities to a FIFO bank of features of other videos, with value 0, so
  ``Yhat_t = out_window * exp(LSE_window - LSE_total)``, ``LSE_total = logaddexp(LSE_window, LSE_bank)``;
  gradients flow through both LSEs (the bank is detached). Two bank profiles:

  - ``inter="points"`` (paper, [S Tab 3] best row, default): 1,440 frames x 4 points of the
    stride-4 matching features, sampled uniformly at random positions of each pair's reference
    frame (which frames and how points are sampled is UNKNOWN [G]); logits are global dot products
    against all bank points of other videos; ``LSE_bank`` from :func:`tritoncorr.kernels.anchor_lse`
    (streamed; no ``P x bank`` matrix). It joins the stride-4 reconstruction softmax.
  - ``inter="maps"`` (unofficial [U colorizer_momen.py, mast_momen.py], spec §4.3): a separate
    stride-8 128-d head ``g`` (Conv3x3 s2 256->128) whose keys come from a momentum twin ``g~``
    (m = 0.999, updated before the keys are computed, copied from ``g`` at build); the bank holds
    960 whole ``g~`` maps of reference frames; per sample, negatives are the first ``min_len`` bank
    maps of other videos (``min_len`` = the smallest such count over the batch, as the code does),
    each compared over the 7x7 window at the query's own location (49 location-aligned negatives
    per map). Only the stride-8 loss ``0.5 * mean SmoothL1(20 Yhat8 - 20 down8(Y_t))`` sees them;
    values and target are bilinearly downsampled to stride 8. ``LSE_bank`` is streamed over chunks
    of bank maps with recomputation in backward (memory bounded by the chunk).
  - ``inter="none"``: intra-video only (stage 1).

  Same-video entries are excluded per sample (the bank stores video ids = ``batch["video"]``).
  Bank rule: the bank is written after every training forward (train mode, autograd on: the
  current batch never sees itself) and USED ONLY ONCE FULL, i.e. once every slot has been written
  at least once (the unofficial code waits one more iteration, ``flag > factor``). Under DDP the
  enqueued features and ids are all-gathered from every rank (``torch.distributed.all_gather``),
  so all ranks hold the same bank. Bank, ids, write pointer and fill count are registered buffers:
  checkpoints hold them and resume is exact. (The unofficial code re-randomises the bank whenever
  it loads weights [U main_dis.py:93-95]; here a resumed run keeps its bank, and a stage-2 run
  started with ``init_from`` a stage-1 checkpoint (which has no bank) starts empty, pointer 0.)

* position encoding merged into matching (spec §5; the paper's exact form is UNKNOWN):

  - ``position="feature"`` (default, the spec's S1 reading [G]): a learned embedding ``E``
    (D x G x G, zero-init, bicubically resized to the feature size when it differs) added to the
    matching features, ``phi = f + E``; intra-video logits ``<phi_t(p), phi_r(q)>``. Position
    shifting (``position_shift=True``): bank points are stored WITHOUT their position code and are
    "shifted" to the query's position, ``<phi_t(p), f_n + E(p)> = <phi_t(p), f_n> + <phi_t(p), E(p)>``,
    so the position term is the same for every negative and only appearance discriminates.
    ``position_shift=False`` banks ``phi_n = f_n + E(q_n)`` with its own position.
  - ``position="ape"`` (unofficial [U resnet.py:63, 102-108]): a learned (1, 64, G, G) zero-init
    embedding added to the stem output after conv1/BN/ReLU, bicubically resized to the stem size
    (G = 128 at 256 input). The code has no position shifting (README TODO); with location-aligned
    negatives (``inter="maps"``) none is needed (spec §5).
  - ``position="none"``: MAST.

* spatial compactness prior (spec §6, [S Tab 1]; the form is the unofficial code's): on the
  stride-4 affinity ``a_p`` (the reconstruction's, i.e. including the bank's share of the
  denominator when a bank is in the stride-4 softmax), the template
  :func:`tritoncorr.methods.common.compactness_template` (top-M of the detached probabilities,
  weights softmax of the M probabilities, peak-1 Gaussians of FWHM 1 cell) on the explicit window
  affinity (:func:`window_logits`, ``(B, P*P, h, w)``: the one tensor of window size this term
  needs), the mask ``max_d a_p > 0.5``, and ``L_c = mean over all (B, P*P, h, w) elements of
  SmoothL1(20 m a - 20 m T)`` (masked zeros included), weight 1. ``compact_m`` = 0 (off), 1, 2
  (default [S]), 3.

Total (spec §7): ``L = L_rec + 0.5 L_rec8 (stride-8 branch) + 1.0 L_c``; :meth:`LIIR.forward`
returns the already-weighted terms ``{"rec", "compact", "rec8"}`` (only those that are on).

Initialisation: PyTorch/torchvision defaults; ``zero_gamma=True`` is the unofficial code's
"zero-gamma" for the last BN of every block (its conv init N(0, sqrt(2/(k*k*C_out))) is the
Kaiming fan-out init our ResNet already uses). BatchNorm: plain BN per process (the unofficial
code uses SyncBN over 2 GPUs: set ``RunConfig.sync_bn``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tritoncorr.kernels import local_attention
from tritoncorr.methods.common import (
    RECON_SCALE,
    compactness_mask,
    compactness_template,
    decimate,
    drop_chroma,
    upsampled_huber,
)
from tritoncorr.models.heads import resize_embedding
from tritoncorr.models.resnet import ResNet

__all__ = [
    "LIIRConfig",
    "LIIR",
    "FeatureBank",
    "all_gather_cat",
    "reconstruct_with_bank",
    "points_bank_lse",
    "negative_indices",
    "maps_bank_lse",
    "compactness_loss",
    "window_probabilities",
    "window_logits",
    "resize_embedding",
]

#: LIIR/MAST matching stride and window: stride 4, R = 6 (13 x 13) in training [U mast_momen.py:26-29].
STRIDE = 4
#: The unofficial stride-8 branch: radius 3 (patch_size R + 1 = 7) [U colorizer_momen.py, C].
STRIDE8_RADIUS = 3


@dataclass
class LIIRConfig:
    """LIIR's method settings (defaults = the paper as far as the spec knows it, with inter-video on).

    Attributes:
        radius: stride-4 window radius R in training (6, i.e. 13 x 13).
        feature_dim: D of the matching head f (64).
        temperature: tau of all affinity softmaxes (1: raw dot products [U, M]).
        zero_gamma: unofficial "zero-gamma" init of the last BN of every residual block.
        position: "feature" (S1, paper reading [G]), "ape" (unofficial, after the stem) or "none".
        position_grid: side G of the learned embedding; 0 = auto (64 for "feature" = the stride-4
            feature size at 256 input; 128 for "ape" = the stem size at 256 input). Resized
            bicubically (``align_corners=False``) whenever the actual size differs.
        position_shift: "feature" only: bank points are shifted to the query's position (S1).
        inter: inter-video bank: "points" (paper), "maps" (unofficial, needs ``stride8``) or "none".
        bank_frames: frames in the bank (points: 1440 [S Tab 3]; maps: 960 = 12 x 80 [U]).
        bank_points: points sampled per banked frame ("points" only; 4 [S Tab 3]).
        bank_map_size: side of the banked stride-8 maps ("maps" only; 32 at 256 input).
        bank_chunk: bank maps per chunk of the streamed stride-8 negative LSE ("maps").
        stride8: the unofficial 128-d stride-8 branch with its own reconstruction loss.
        stride8_keys: where that branch's reference keys come from: "momentum" (the twin ``g~``,
            no gradient [U mast_momen.py]) or "online" (``g`` itself, with gradient [U mast_semantic.py]).
        stride8_dim: channels of ``g`` (128).
        momentum: m of the momentum twin (0.999).
        rec8_weight: weight of the stride-8 loss (0.5).
        compact_m: Gaussians M of the compactness prior; 0 = off (default 2 [S Tab 1]).
        compact_threshold: confident-pixel threshold of the training mask (0.5 [U]).
        compact_sigma: FWHM of each Gaussian in window cells (1 [U]).
        compact_weight: weight of the compactness loss (1 [U main_dis.py:245-246]).
    """

    radius: int = 6
    feature_dim: int = 64
    temperature: float = 1.0
    zero_gamma: bool = False
    position: Literal["feature", "ape", "none"] = "feature"
    position_grid: int = 0
    position_shift: bool = True
    inter: Literal["points", "maps", "none"] = "points"
    bank_frames: int = 1440
    bank_points: int = 4
    bank_map_size: int = 32
    bank_chunk: int = 64
    stride8: bool = False
    stride8_keys: Literal["momentum", "online"] = "momentum"
    stride8_dim: int = 128
    momentum: float = 0.999
    rec8_weight: float = 0.5
    compact_m: int = 2
    compact_threshold: float = 0.5
    compact_sigma: float = 1.0
    compact_weight: float = 1.0

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"LIIRConfig.{name}={getattr(self, name)!r}: {why}")

        if int(self.radius) < 1:
            raise bad("radius", "must be >= 1")
        for name in ("feature_dim", "stride8_dim", "bank_frames", "bank_points", "bank_map_size", "bank_chunk"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be >= 1")
        if not self.temperature > 0:
            raise bad("temperature", "must be > 0")
        if self.position not in ("feature", "ape", "none"):
            raise bad("position", "must be 'feature', 'ape' or 'none'")
        if int(self.position_grid) < 0:
            raise bad("position_grid", "must be >= 0 (0 = auto)")
        if self.inter not in ("points", "maps", "none"):
            raise bad("inter", "must be 'points', 'maps' or 'none'")
        if self.inter == "maps" and not self.stride8:
            raise bad("inter", "'maps' (the unofficial bank) lives in the stride-8 branch: set stride8=True")
        if self.stride8_keys not in ("momentum", "online"):
            raise bad("stride8_keys", "must be 'momentum' or 'online'")
        if self.inter == "maps" and self.stride8_keys != "momentum":
            raise bad("stride8_keys", "the 'maps' bank stores momentum keys: use 'momentum'")
        if not 0 <= self.momentum <= 1:
            raise bad("momentum", "must be in [0, 1]")
        P = 2 * int(self.radius) + 1
        if not 0 <= int(self.compact_m) <= P * P:
            raise bad("compact_m", f"must be in [0, {P * P}] (0 = off)")
        if not 0 <= self.compact_threshold < 1:
            raise bad("compact_threshold", "must be in [0, 1)")
        if not self.compact_sigma > 0:
            raise bad("compact_sigma", "must be > 0")
        for name in ("rec8_weight", "compact_weight"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")

    @property
    def grid(self) -> int:
        """The learned position grid's side (``position_grid`` or its automatic value)."""
        if self.position_grid:
            return int(self.position_grid)
        return 128 if self.position == "ape" else 64

    def build(self) -> "LIIR":
        return LIIR(self)


# --------------------------------------------------------------------------------------------
# Building blocks (public so that tests can check each against the spec's equations)
# --------------------------------------------------------------------------------------------


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N, ...) over all ranks along dim 0 (no gradient); ``x`` itself when
    ``torch.distributed`` is not initialised or has one rank. Every rank must pass the same shape."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def reconstruct_with_bank(
    out: torch.Tensor, lse_window: torch.Tensor, lse_bank: Optional[torch.Tensor]
) -> torch.Tensor:
    """Join the window softmax and value-0 bank entries into one softmax.

    Args:
        out: ``(B, D, h, w)`` window reconstruction ``sum_d softmax_window(s)(d) v(d)``.
        lse_window: ``(B, h, w)`` log-sum-exp of the window logits.
        lse_bank: ``(B, h, w)`` log-sum-exp of the bank logits (``-inf`` where no entry), or None.

    Returns:
        ``(B, D, h, w)`` ``out * exp(lse_window - logaddexp(lse_window, lse_bank))`` (``out`` when
        ``lse_bank`` is None): the window part of the joint softmax applied to the values.
    """
    if lse_bank is None:
        return out
    lse_window = lse_window.to(out.dtype)
    total = torch.logaddexp(lse_window, lse_bank.to(out.dtype))
    return out * torch.exp(lse_window - total).unsqueeze(1)


def points_bank_lse(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_video: torch.Tensor,
    video: torch.Tensor,
    temperature: float = 1.0,
    shift: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Log-sum-exp of every query pixel's affinities to the bank points of OTHER videos.

    Args:
        query: ``(B, D, h, w)`` target matching features (with gradient).
        bank: ``(N, D)`` bank points (detached here).
        bank_video: ``(N,)`` int64 video id of each point.
        video: ``(B,)`` int64 video id of each sample (entries with the same id are excluded).
        temperature: tau; logits ``<q, n> / tau``.
        shift: optional ``(D, h, w)`` position code ``E`` for position shifting (S1): the logits
            become ``<q(p), n + E(p)> / tau``, i.e. the per-pixel constant ``<q(p), E(p)> / tau`` is added.

    Returns:
        ``(B, h, w)`` (float32, float64 for float64 inputs); ``-inf`` where a sample has no
        other-video point. Differentiable w.r.t. ``query`` (and ``shift``); computed by the
        streamed :func:`tritoncorr.kernels.anchor_lse` (no ``P x N`` matrix), one call per distinct
        video of the batch.
    """
    from tritoncorr.kernels import anchor_lse

    B, D, h, w = query.shape
    if bank.dim() != 2 or bank.shape[1] != D:
        raise ValueError(f"bank must be (N, D={D}), got {tuple(bank.shape)}")
    acc = torch.float64 if query.dtype == torch.float64 else torch.float32
    bank = bank.detach().to(query.dtype)
    bank_video = bank_video.to(query.device)
    video = video.to(query.device)
    rows = query.permute(0, 2, 3, 1).reshape(B, h * w, D)
    parts: list[Optional[torch.Tensor]] = [None] * B
    for v in torch.unique(video).tolist():
        samples = (video == v).nonzero().flatten()
        anchors = bank[bank_video != v]
        if anchors.shape[0] == 0:
            lse = torch.full((samples.numel(), h * w), float("-inf"), dtype=acc, device=query.device)
        else:
            feats = rows[samples].reshape(-1, D).contiguous()
            lse = anchor_lse(feats, anchors.contiguous(), float(temperature)).to(acc).view(samples.numel(), h * w)
        for i, b in enumerate(samples.tolist()):
            parts[b] = lse[i]
    out = torch.stack(parts).view(B, h, w)
    if shift is not None:
        out = out + (query.to(acc) * shift.to(acc).unsqueeze(0)).sum(1) / float(temperature)
    return out


def negative_indices(bank_video: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """The unofficial code's negatives per sample: bank rows of other videos, in bank order, cut to
    the smallest count over the batch [U colorizer_momen.py:139-152].

    Args:
        bank_video: ``(F,)`` video id per bank row; video: ``(B,)`` video id per sample.

    Returns:
        ``(B, min_len)`` int64 bank row indices; row ``b`` lists the first ``min_len`` rows whose id
        differs from ``video[b]``.
    """
    bank_video = bank_video.to(video.device)
    other = bank_video.unsqueeze(0) != video.unsqueeze(1)  # (B, F)
    min_len = int(other.sum(1).min()) if other.numel() else 0
    # stable order: sort by (not other) keeps the other-video rows first, in bank order
    order = torch.sort((~other).to(torch.int8), dim=1, stable=True).indices
    return order[:, :min_len]


def _maps_chunk_lse(query_b: torch.Tensor, keys: torch.Tensor, radius: int, scale: float) -> torch.Tensor:
    """``logsumexp`` over (maps, window) of ``scale * <q(p), k_n(p+d)>``: ``(C, h, w), (K, C, h, w) -> (h, w)``."""
    k = keys.shape[0]
    q = query_b.unsqueeze(0).expand(k, -1, -1, -1).contiguous()
    zeros = torch.zeros(k, 1, *keys.shape[-2:], dtype=keys.dtype, device=keys.device)
    _, lse = local_attention(q, keys, zeros, radius, scale=scale, border="zero", return_lse=True)
    return torch.logsumexp(lse, dim=0)


def maps_bank_lse(
    query: torch.Tensor,
    bank: torch.Tensor,
    index: torch.Tensor,
    radius: int = STRIDE8_RADIUS,
    temperature: float = 1.0,
    chunk: int = 64,
) -> torch.Tensor:
    """Log-sum-exp of location-aligned window affinities to banked maps (the unofficial negatives).

    ``LSE[b, p] = logsumexp_{k, d} <query[b](p), bank[index[b, k]](p + d)> / tau`` over the
    ``(2r+1)^2`` window (border "zero": out-of-image cells count with logit 0, like the zero-padded
    correlation sampler).

    Args:
        query: ``(B, C, h, w)`` target stride-8 features (with gradient).
        bank: ``(F, C, h, w)`` banked maps (detached here).
        index: ``(B, K)`` bank rows per sample (:func:`negative_indices`).
        chunk: bank maps per streamed chunk; each chunk is recomputed in backward
            (``torch.utils.checkpoint``), so memory is bounded by one chunk, not by ``K``.

    Returns:
        ``(B, h, w)`` float32 (float64 for float64 inputs); ``-inf`` where ``K == 0``.
    """
    B, C, h, w = query.shape
    acc = torch.float64 if query.dtype == torch.float64 else torch.float32
    bank = bank.detach().to(query.dtype)
    K = index.shape[1]
    if K == 0:
        return torch.full((B, h, w), float("-inf"), dtype=acc, device=query.device)
    scale = 1.0 / float(temperature)
    out = []
    for b in range(B):
        total = None
        for s in range(0, K, int(chunk)):
            keys = bank[index[b, s : s + int(chunk)].to(bank.device)]
            if torch.is_grad_enabled() and query.requires_grad:
                part = checkpoint(_maps_chunk_lse, query[b], keys, radius, scale, use_reentrant=False)
            else:
                part = _maps_chunk_lse(query[b], keys, radius, scale)
            part = part.to(acc)
            total = part if total is None else torch.logaddexp(total, part)
        out.append(total)
    return torch.stack(out)


#: Largest ``F.unfold`` volume (bytes) for which :func:`window_logits` uses the unfold reference on CPU.
CPU_UNFOLD_BYTES = 512 * 2**20


def window_logits(query: torch.Tensor, key: torch.Tensor, radius: int) -> torch.Tensor:
    """``(B, C, h, w), (B, C, h, w) -> (B, (2r+1)^2, h, w)`` window dot products, 0 outside the image.

    :func:`tritoncorr.kernels.local_correlation` (Triton on CUDA); on CPU tensors, when the
    ``(B, C*(2r+1)^2, h*w)`` unfolded key fits :data:`CPU_UNFOLD_BYTES` and the Triton backend is not
    forced (``TRITONCORR_BACKEND=triton``), the library's ``F.unfold`` reference instead: same values,
    and about 25x faster than the op's offset-loop CPU path (96x96 frames x 4 pairs: 0.4 s vs 8 s,
    forward + backward, measured here).
    """
    import os

    from tritoncorr.kernels import local_correlation, local_correlation_reference

    P = 2 * int(radius) + 1
    volume = query.shape[0] * query.shape[1] * P * P * query.shape[2] * query.shape[3] * query.element_size()
    if (
        query.device.type == "cpu"
        and os.environ.get("TRITONCORR_BACKEND", "").lower() != "triton"
        and volume <= CPU_UNFOLD_BYTES
    ):
        return local_correlation_reference(query, key, int(radius)).to(query.dtype)
    return local_correlation(query, key, int(radius))


def window_probabilities(logits: torch.Tensor, lse_bank: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Each query pixel's window affinities, normalised over its own logits (and the bank's share).

    Args:
        logits: ``(B, P*P, h, w)`` window logits (already scaled), with gradient.
        lse_bank: ``(B, h, w)`` log-sum-exp of the bank logits, or None (no bank).

    Returns:
        ``(B, P*P, h, w)`` (at least float32) ``exp(logits - logaddexp(logsumexp(logits), lse_bank))``: the window
        part of the joint softmax; sums to 1 over the window without a bank.

    The normaliser is taken from these same logits, not from the reconstruction kernel's log-sum-exp:
    raw features at tau 1 reach logits of ~1e7 within a few hundred CPU steps, where two fp32 sums of
    the same logits in another order differ by whole units, and ``exp(logits - lse_kernel)`` gave
    "probabilities" of e^8 (compactness loss 14,000 on one step of the 2026-12-03 run). The reference
    computes its compactness input from one softmax as well [U colorizer_momen.py:177-181].
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    total = torch.logsumexp(logits, dim=1)
    if lse_bank is not None:
        total = torch.logaddexp(total, lse_bank.to(logits.dtype))
    return torch.exp(logits - total.unsqueeze(1))


def compactness_loss(
    prob: torch.Tensor,
    m: int = 2,
    *,
    threshold: float = 0.5,
    sigma: float = 1.0,
    scale: float = RECON_SCALE,
) -> torch.Tensor:
    """LIIR's training compactness loss on window affinities (spec §6.5, [U colorizer_momen.py:177-196]).

    Args:
        prob: ``(B, P*P, h, w)`` affinities of each query pixel over its window (window index
            ``y * P + x``, dy outer), with gradient.
        m: Gaussians M; threshold: confident-pixel mask ``max prob > threshold``.

    Returns:
        scalar: ``mean over all B*P*P*h*w elements of SmoothL1_1(scale m a - scale m T)`` with ``T``
        :func:`compactness_template` (no gradient) and ``m`` the mask; gradient into ``prob`` only.
    """
    side = int(round(prob.shape[1] ** 0.5))
    template = compactness_template(prob, side, m, sigma=sigma, dim=1)
    mask = compactness_mask(prob, threshold, dim=1).to(prob.dtype)
    return F.smooth_l1_loss(scale * prob * mask, scale * template * mask, beta=1.0, reduction="mean")


class FeatureBank(nn.Module):
    """FIFO ring of per-frame feature items from other videos, in registered buffers.

    Buffers (all in ``state_dict``): ``feats`` ``(F, *item_shape)`` float32, ``video`` ``(F,)`` int64
    (-1 = never written), ``ptr`` ``()`` int64 next slot to write, ``filled`` ``()`` int64 slots written
    at least once (saturates at F). ``enqueue`` writes rows ``ptr, ptr+1, ...`` modulo F (the oldest are
    overwritten); when more than F items arrive at once only the last F are kept.
    """

    def __init__(self, frames: int, item_shape: tuple[int, ...]):
        super().__init__()
        self.frames = int(frames)
        self.item_shape = tuple(int(s) for s in item_shape)
        self.register_buffer("feats", torch.zeros(self.frames, *self.item_shape))
        self.register_buffer("video", torch.full((self.frames,), -1, dtype=torch.int64))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.int64))
        self.register_buffer("filled", torch.zeros((), dtype=torch.int64))

    @property
    def full(self) -> bool:
        """True once every slot has been written at least once (the bank is used from then on)."""
        return int(self.filled) >= self.frames

    def reset(self) -> None:
        self.feats.zero_()
        self.video.fill_(-1)
        self.ptr.zero_()
        self.filled.zero_()

    @torch.no_grad()
    def enqueue(self, items: torch.Tensor, video: torch.Tensor) -> None:
        """Write ``items`` ``(n, *item_shape)`` with their ``video`` ids ``(n,)`` (already gathered)."""
        if tuple(items.shape[1:]) != self.item_shape:
            raise ValueError(f"bank items must be (n, {self.item_shape}), got {tuple(items.shape)}")
        n = items.shape[0]
        if video.shape != (n,):
            raise ValueError(f"video ids must be ({n},), got {tuple(video.shape)}")
        items = items.detach().to(self.feats.dtype)
        video = video.to(self.video.device, torch.int64)
        if n > self.frames:
            items, video, skipped = items[-self.frames :], video[-self.frames :], n - self.frames
        else:
            skipped = 0
        start = (int(self.ptr) + skipped) % self.frames
        rows = (torch.arange(items.shape[0], device=self.feats.device) + start) % self.frames
        self.feats[rows] = items.to(self.feats.device)
        self.video[rows] = video
        self.ptr.fill_((int(self.ptr) + n) % self.frames)
        self.filled.fill_(min(self.frames, int(self.filled) + n))


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------


class LIIR(nn.Module):
    """LIIR training module (see the module docstring).

    Submodules: ``backbone`` (ResNet-18 stride 4, widths (64, 128, 256, 256)), ``head`` (Conv3x3
    256->D, the matching features f), optional ``pos_embed`` (``position`` "feature": (1, D, G, G);
    "ape": (1, 64, G, G)), optional ``head8`` / ``head8_k`` (stride-8 branch and its momentum twin),
    optional ``bank`` (:class:`FeatureBank`).

    ``forward(batch)``: ``batch["frames"]`` (B, 2, 3, S, S) normalised Lab (frame 0 reference, frame
    1 target), ``batch["video"]`` (B,) int64 video ids (needed when a bank is on) ->
    ``{"rec", "compact"?, "rec8"?}`` weighted scalar terms. Randomness (dropped channel, bank point
    positions) comes from the global torch RNG (the engine checkpoints it).
    ``features(images (N, 3, H, W) Lab) -> (N, D, ceil(H/4), ceil(W/4))`` the matching features
    with the position code applied as at training (not normalised).
    """

    method_name = "liir"
    input_color = "lab"
    inference_preset = "liir"

    def __init__(self, config: Optional[LIIRConfig] = None):
        super().__init__()
        cfg = self.config = config or LIIRConfig()
        self.backbone = ResNet(
            depth=18,
            strides=(1, 2, 1, 1),
            pool="none",
            out_stages=("layer4",),
            widths=(64, 128, 256, 256),
            zero_gamma=cfg.zero_gamma,
        )
        c5 = self.backbone.channels["layer4"]
        self.head = nn.Conv2d(c5, cfg.feature_dim, 3, padding=1)
        if cfg.position == "feature":
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.feature_dim, cfg.grid, cfg.grid))
        elif cfg.position == "ape":
            self.pos_embed = nn.Parameter(torch.zeros(1, 64, cfg.grid, cfg.grid))
        else:
            self.pos_embed = None
        self.head8 = self.head8_k = None
        if cfg.stride8:
            self.head8 = nn.Conv2d(c5, cfg.stride8_dim, 3, stride=2, padding=1)
            if cfg.stride8_keys == "momentum":
                self.head8_k = copy.deepcopy(self.head8)
                for p in self.head8_k.parameters():
                    p.requires_grad_(False)
        self.bank = None
        if cfg.inter == "points":
            self.bank = FeatureBank(cfg.bank_frames, (cfg.bank_points, cfg.feature_dim))
        elif cfg.inter == "maps":
            self.bank = FeatureBank(cfg.bank_frames, (cfg.stride8_dim, cfg.bank_map_size, cfg.bank_map_size))
        if self.head8_k is not None:
            self.register_load_state_dict_post_hook(_copy_head8_into_twin)

    # ------------------------------------------------------------------ features

    def _ape(self, x: torch.Tensor) -> torch.Tensor:
        return x + resize_embedding(self.pos_embed, x.shape[-2:]).to(x.dtype)

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> c5 (N, 256, ceil(H/4), ceil(W/4)) (APE after the stem when ``position="ape"``)."""
        hook = self._ape if self.config.position == "ape" else None
        return self.backbone(images, stem_hook=hook)["layer4"]

    def embedding(self, size: tuple[int, int]) -> Optional[torch.Tensor]:
        """The feature-level position code ``E`` resized to ``size``: (D, h, w), or None."""
        if self.config.position != "feature":
            return None
        return resize_embedding(self.pos_embed, size)[0]

    def matching(self, c5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """c5 -> (f, phi): the head's features f and the matching features phi = f (+ E)."""
        f = self.head(c5)
        e = self.embedding(f.shape[-2:])
        return f, (f if e is None else f + e.to(f.dtype).unsqueeze(0))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised Lab -> matching features phi (N, D, ceil(H/4), ceil(W/4)), not normalised."""
        return self.matching(self.trunk(images))[1]

    # ------------------------------------------------------------------ state updates

    def _updating(self) -> bool:
        return self.training and torch.is_grad_enabled()

    @torch.no_grad()
    def _momentum_update(self) -> None:
        m = float(self.config.momentum)
        for q, k in zip(self.head8.parameters(), self.head8_k.parameters()):
            k.mul_(m).add_(q.detach(), alpha=1.0 - m)

    def _sample_points(self, f: torch.Tensor) -> torch.Tensor:
        """``(B, D, h, w)`` -> ``(B, n, D)`` at ``n`` uniform random positions per frame (global RNG)."""
        B, D, h, w = f.shape
        n = self.config.bank_points
        pos = torch.randint(0, h * w, (B, n)).to(f.device)
        return f.flatten(2).gather(2, pos.unsqueeze(1).expand(B, D, n)).transpose(1, 2)

    # ------------------------------------------------------------------ forward

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        cfg = self.config
        frames = batch["frames"]
        if not isinstance(frames, torch.Tensor) or frames.dim() != 5 or frames.shape[1] != 2 or frames.shape[2] != 3:
            shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"LIIR expects batch['frames'] of shape (B, 2, 3, S, S) (reference, target), got {shape}")
        B = frames.shape[0]
        video = batch.get("video")
        if self.bank is not None:
            if video is None:
                raise ValueError("LIIR with an inter-video bank needs batch['video'] (B,) video ids")
            video = torch.as_tensor(video).to(frames.device, torch.int64).view(B)

        net, target, _ = drop_chroma(frames)  # (B, 2, 3, S, S), (B, 2, 1, S, S)
        y_r, y_t = target[:, 0], target[:, 1]
        # one backbone pass per frame batch (BN statistics per frame batch); target first [U mast_momen.py:111-116]
        c5_t = self.trunk(net[:, 1])
        c5_r = self.trunk(net[:, 0])
        f_t, phi_t = self.matching(c5_t)
        f_r, phi_r = self.matching(c5_r)
        h, w = phi_t.shape[-2:]
        scale = 1.0 / float(cfg.temperature)
        v_r = decimate(y_r, STRIDE).to(phi_t.dtype)
        if v_r.shape[-2:] != (h, w):
            raise ValueError(
                f"frame size {tuple(frames.shape[-2:])} gives features {h}x{w} but values "
                f"{tuple(v_r.shape[-2:])}; use a frame size divisible by {STRIDE}"
            )

        out, lse = local_attention(phi_t, phi_r, v_r, cfg.radius, scale=scale, border="zero", return_lse=True)
        use_bank = self.bank is not None and self.bank.full
        lse_bank = None
        if use_bank and cfg.inter == "points":
            bank = self.bank.feats.reshape(-1, cfg.feature_dim)
            bank_video = self.bank.video.repeat_interleave(cfg.bank_points)
            shift = self.embedding((h, w)) if cfg.position_shift else None
            lse_bank = points_bank_lse(phi_t, bank, bank_video, video, cfg.temperature, shift=shift)
        pred = reconstruct_with_bank(out, lse, lse_bank)
        terms = {"rec": upsampled_huber(pred, y_t)}

        if cfg.compact_m > 0 and cfg.compact_weight > 0:
            logits = window_logits(phi_t, phi_r, cfg.radius) * scale  # (B, P*P, h, w), zero border
            prob = window_probabilities(logits, lse_bank)
            terms["compact"] = cfg.compact_weight * compactness_loss(
                prob, cfg.compact_m, threshold=cfg.compact_threshold, sigma=cfg.compact_sigma
            )

        keys8 = None
        if cfg.stride8:
            if self.head8_k is not None and self._updating():
                self._momentum_update()  # before the keys are computed [U mast_momen.py:118]
            g_t = self.head8(c5_t)
            if self.head8_k is not None:
                with torch.no_grad():
                    keys8 = self.head8_k(c5_r)
            else:
                keys8 = self.head8(c5_r)
            h8, w8 = g_t.shape[-2:]
            v8 = F.interpolate(y_r, size=(h8, w8), mode="bilinear", align_corners=False).to(g_t.dtype)
            out8, lse8 = local_attention(g_t, keys8, v8, STRIDE8_RADIUS, scale=scale, border="zero", return_lse=True)
            lse8_bank = None
            if use_bank and cfg.inter == "maps":
                if tuple(keys8.shape[1:]) != self.bank.item_shape:
                    raise ValueError(
                        f"stride-8 maps are {tuple(keys8.shape[1:])} but the bank holds "
                        f"{self.bank.item_shape}: set method.bank_map_size to the stride-8 size"
                    )
                index = negative_indices(self.bank.video, video)
                lse8_bank = maps_bank_lse(g_t, self.bank.feats, index, STRIDE8_RADIUS, cfg.temperature, cfg.bank_chunk)
            pred8 = reconstruct_with_bank(out8, lse8, lse8_bank)
            t8 = F.interpolate(y_t, size=(h8, w8), mode="bilinear", align_corners=False)
            terms["rec8"] = cfg.rec8_weight * upsampled_huber(pred8, t8)

        if self.bank is not None and self._updating():
            with torch.no_grad():
                if cfg.inter == "points":
                    items = self._sample_points((f_r if cfg.position_shift else phi_r).detach())
                else:
                    if keys8 is None or tuple(keys8.shape[1:]) != self.bank.item_shape:
                        raise ValueError(
                            f"stride-8 maps {None if keys8 is None else tuple(keys8.shape[1:])} do not "
                            f"fit the bank {self.bank.item_shape}: set method.bank_map_size"
                        )
                    items = keys8.detach()
                self.bank.enqueue(all_gather_cat(items.float()), all_gather_cat(video))
        return terms


def _copy_head8_into_twin(module: LIIR, incompatible_keys) -> None:
    """Loading weights that have ``head8`` but no ``head8_k`` (a stage-1 checkpoint): the momentum
    twin starts as a copy of the loaded ``head8`` (the unofficial stage-2 start [U main_dis.py:97-100])."""
    missing = incompatible_keys.missing_keys
    twin = [k for k in missing if k.startswith("head8_k.")]
    if not twin or any(k.startswith("head8.") for k in missing):
        return
    with torch.no_grad():
        for q, k in zip(module.head8.parameters(), module.head8_k.parameters()):
            k.copy_(q)
    for k in twin:
        missing.remove(k)

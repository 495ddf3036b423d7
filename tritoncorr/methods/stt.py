"""STT step 2: "Spatial-then-Temporal Self-Supervised Learning for Video Correspondence" (Li & Liu, CVPR 2023).

Step 2 fine-tunes a step-1 (contrastive, image-level) ResNet on video with a colour-reconstruction
objective plus two correlation distillations (spec ``docs/methods/stt.md`` §3; the official
``vcl/models/trackers/framework.py`` forward_train, "FW"). Step 1 is :mod:`tritoncorr.methods.moco`.

One training iteration (spec §3.13), ``B`` clips of 2 frames, frame 0 = reference, frame 1 = target:

1. **Input** (§3.2-3.3, FW:215-227): normalised Lab clips ``(B, 2, 3, S, S)``; one chroma channel
   ``k`` in {a, b} is zeroed for the whole batch and everything is x1.5
   (:func:`tritoncorr.methods.common.drop_chroma`); the clean channel ``k`` is the target.
2. **Student** (§3.4, CFG:6): ResNet-18/50, strides (1, 2, 2, 4), **no stem pool**; pyramid
   res3 = ``layer2`` (stride 4, 64 x 64 at S = 256), res4 = ``layer3`` (stride 8, 32 x 32), res5 =
   ``layer4`` (stride 32, 8 x 8). Both frames in one batch (BatchNorm statistics over 2B images).
3. **Reconstruction at each pyramid level** (§3.5-3.7, FW:131-145, FW:229-243): the reference's
   channel ``k`` decimated at offset 0 (``x[::s, ::s]``, :func:`~tritoncorr.methods.common.frame_pyramid`)
   is copied to the target by a windowed softmax over ``<f_t(i), f_r(j)> / sqrt(C)`` in a square
   window of radius 12 (res3) / 6 (res4) **truncated** at the image border (fused
   :func:`tritoncorr.kernels.local_attention`, ``border="truncate"``; no correlation volume is
   stored), bilinearly upsampled to S x S and compared with Smooth-L1 on x20 values
   (:func:`~tritoncorr.methods.common.upsampled_huber`). Weight 1 per level.
4. **Local correlation distillation** (§3.8, FW:175-183): the res3 window softmax ``c^0``, 2x2
   average-pooled over **both** the query and the reference grids (rows sum to 1/4), detached, is
   the target of the res4 window softmax ``c^1``; masked MSE divided by ``h1*w1 * #selected``
   (the dense row length times the selected queries, LU:67-69 / spec §5.11); alpha = 1000. Computed
   in window layout (:func:`pooled_window_target`), equal to the dense formula whenever
   ``r0 <= 2 * r1`` (the pooled support is then inside the student's window).
5. **Entropy-based selection** (§3.9, FW:148-163): ``H(i) = sum_d -log(p_d(i) + 1e-12)`` over the
   ``(2 r1 + 1)^2`` displacements of the *unscaled, zero-padded* res4 correlation (mmcv
   ``Correlation``; out-of-image displacements count with logit 0), T = 0.7 (a rank fraction).
   ``entropy_select`` (:func:`entropy_mask`):

   * ``"global_quantile"`` (default; the paper's rule, "keep the queries above a threshold T",
     read as the spec's "intended" per-sample rank threshold, §3.9 item 5): per sample, sort the
     ``h*w`` scores descending, threshold = the value at rank ``int(h*w*T) - 1``, keep ``H >
     threshold`` (715 of 1024 at 32 x 32 for distinct values).
   * ``"reference_bug"`` (the official code, FW:156-161): the scores stay ``(h, w)``, are sorted
     along x only, and the threshold is row ``int(w*T) - 1`` of that sorted array, so pixel
     ``(y, x)`` is compared with the x-th largest value of row 21: about 49 % kept, biased to the right.
   * ``"none"``: every query (the paper's "+L_lc without entropy" ablation).

   Note (spec §3.9 item 3, §6 row 5): this ``H`` is Eq. 8 as written, which is *largest* for peaked
   rows; the paper calls the kept queries uncertain. Both options keep the high-``H`` queries.
6. **Global correlation distillation** (§3.10, FW:134-136, FW:186-194): student res5 affinity
   ``softmax_j(<g_t(i), g_r(j)> / sqrt(C5))`` over all reference positions vs the frozen teacher's
   ``softmax_j(<h_t(i), h_r(j)> / 0.07)`` on raw (not normalised) res5 features of the
   **ImageNet-normalised RGB** frames of the same crop (recovered from the Lab input with
   :func:`tritoncorr.data.transforms.lab_to_rgb`); MSE mean over ``B * (h5 w5)^2``; beta = 50.
   Teacher: ResNet of the same depth, strides (1, 2, 2, 2), max-pool stem, BatchNorm always in eval
   mode, ``no_grad``, never in the optimiser.
7. Loss terms returned by :meth:`STT.forward` (already weighted, the engine sums them):
   ``{"rec0": L_rec^0, "rec1": L_rec^1, "lc": alpha * L_lc, "gc": beta * L_gc}`` (``"gc"`` only
   with a teacher). Optimiser/schedule (Adam 5e-5, warm-up + cosine) are the recipe's (``recipes/stt.py``).

Teacher and student initialisation (spec §2): ``STTConfig.teacher_weights`` is the step-1 backbone
(a ``.safetensors`` from ``recipes/stt_spatial.py``, or a published MoCo v2 / DetCo ``.pth(.tar)``,
read through :func:`tritoncorr.models.loading.load_backbone_weights`: the ``module.encoder_q.`` /
``backbone.`` prefixes are stripped, heads and the key encoder ignored; every backbone tensor must be
present). ``student_init="teacher"`` starts the student from the same file (CFG:6/8), ``"scratch"``
from Kaiming init with the last BN of every residual block zero-initialised (RN:571-582), or a path.
``use_teacher=False`` is the temporal-only variant (no ``L_gc``; the student stops at res4, §3.14).
The teacher is a sub-module whose parameters have ``requires_grad=False``: it is in ``state_dict()``
(so checkpoints are self-contained and resume is exact), but not in ``parameters()`` that require
grad, which the engine's optimiser builder skips. ``for_inference()`` drops it.

Inference: ``features(images)`` = res4 (``layer3``) of the student, stride 8 (the d8 test
configuration; ``layer4``'s stride does not affect ``layer3``), not normalised (the propagation
L2-normalises), Lab input without the x1.5 (spec §4.1), preset ``"stt"``.

Code-vs-paper choices (spec §6): we follow the code (scales, pooling, loss normalisations, weights,
the crop) everywhere except the entropy threshold, where the paper's rule is the default and the
code's as a named option (see 5).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tritoncorr.data.config import DataConfig
from tritoncorr.engine.config import ConfigError
from tritoncorr.kernels import local_attention
from tritoncorr.methods.common import decimate, drop_chroma, upsampled_huber
from tritoncorr.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = [
    "STTConfig",
    "STT",
    "STTDataConfig",
    "LEVELS",
    "ENTROPY_SELECT",
    "window_valid",
    "window_softmax",
    "reconstruction_loss",
    "pooled_window_target",
    "correlation_entropy",
    "entropy_mask",
    "local_distillation_loss",
    "global_affinity",
    "global_distillation_loss",
    "load_step1_weights",
]

#: The student's reconstruction levels (res3, res4) and the global-distillation level (res5).
LEVELS = ("layer2", "layer3")
GLOBAL_LEVEL = "layer4"
#: Student strides (CFG:6): no stem pool, layer4 stride 4 -> res3/res4/res5 at strides 4/8/32.
STUDENT_STRIDES = (1, 2, 2, 4)
TEACHER_STRIDES = (1, 2, 2, 2)
ENTROPY_SELECT = ("global_quantile", "reference_bug", "none")
ENTROPY_EPS = 1e-12
#: ``student_init`` / ``teacher_weights`` sentinels.
FROM_TEACHER, SCRATCH, RANDOM_TEACHER = "teacher", "scratch", "random"


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# --------------------------------------------------------------------------------------------
# Loss building blocks (public so that the tests check each against the official forward_train)
# --------------------------------------------------------------------------------------------


def window_valid(height: int, width: int, radius: int, device=None) -> torch.Tensor:
    """``(P*P, h, w)`` bool, ``P = 2r+1``: True where window cell ``(dy, dx)`` of pixel ``(y, x)``
    lies inside the image; cell index ``(dy + r) * P + (dx + r)`` (the kernels' layout)."""
    d = torch.arange(-radius, radius + 1, device=device)
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    oky = ((ys[None, :] + d[:, None]) >= 0) & ((ys[None, :] + d[:, None]) < height)  # (P, h)
    okx = ((xs[None, :] + d[:, None]) >= 0) & ((xs[None, :] + d[:, None]) < width)  # (P, w)
    p = 2 * radius + 1
    return (oky[:, None, :, None] & okx[None, :, None, :]).reshape(p * p, height, width)


def _acc(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def window_softmax(
    query: torch.Tensor, key: torch.Tensor, radius: int, scale: float, corr: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """STT's local correlation ``c^l`` in window layout (CORR:29-44 with the CU:358-380 mask).

    Args:
        query, key: ``(B, C, h, w)`` target / reference features.
        radius: square window radius; cells outside the image leave the softmax (truncated border).
        scale: logit multiplier (``1/sqrt(C)``).
        corr: optional precomputed ``local_correlation(query, key, radius)`` (raw dot products).

    Returns:
        ``(B, (2r+1)^2, h, w)`` float32 (float64 for float64 input) probabilities, 0 outside the
        image, each pixel's cells summing to 1. Differentiable.
    """
    from tritoncorr.kernels import local_correlation

    if corr is None:
        corr = local_correlation(query, key, radius)
    b, _, h, w = query.shape
    valid = window_valid(h, w, radius, query.device)
    logits = (_acc(corr) * scale).masked_fill(~valid.unsqueeze(0), float("-inf"))
    return torch.softmax(logits, dim=1)


def reconstruction_loss(
    query: torch.Tensor,
    key: torch.Tensor,
    ref_channel: torch.Tensor,
    target_channel: torch.Tensor,
    *,
    stride: int,
    radius: int,
    scale: float,
) -> torch.Tensor:
    """``L_rec^l`` (FW:138-145, FW:229-243): windowed copy of the decimated reference channel, then
    bilinear upsampling and Smooth-L1 on x20 values.

    Args:
        query, key: ``(B, C, h, w)`` target / reference features of level ``l``.
        ref_channel: ``(B, 1, S, S)`` clean dropped channel of the reference frame.
        target_channel: ``(B, 1, S, S)`` clean dropped channel of the target frame.
        stride: the level's stride ``s`` (``ref_channel[..., ::s, ::s]`` must be ``h x w``).
        radius, scale: window radius and logit multiplier.

    Returns:
        scalar (float32, float64 for float64 input).
    """
    value = decimate(ref_channel, stride)
    if value.shape[-2:] != query.shape[-2:]:
        raise ValueError(
            f"decimated frame {tuple(value.shape[-2:])} (stride {stride}) does not match the feature grid "
            f"{tuple(query.shape[-2:])}"
        )
    dtype = query.dtype
    rec = local_attention(query, key, value.to(dtype).contiguous(), radius, scale=scale, border="truncate")
    return upsampled_huber(rec, target_channel)


def pooled_window_target(fine: torch.Tensor, fine_radius: int, coarse_radius: int) -> torch.Tensor:
    """The local-distillation pseudo label in window layout (FW:175-177, spec §3.8).

    ``t[I, d] = (1/16) sum_{a, a' in {0,1}^2} c^0[2I + a, 2(I + d) + a']`` for ``d in [-r1, r1]^2``:
    the fine window softmax 2x2 average-pooled over the query grid and over the reference grid.

    Args:
        fine: ``(B, (2 r0 + 1)^2, 2h, 2w)`` fine-level window probabilities (0 outside the image).
        fine_radius: ``r0``; coarse_radius: ``r1`` (``r0 <= 2 r1``: the pooled support then lies in
            the coarse window, as with the official 12 / 6).

    Returns:
        ``(B, (2 r1 + 1)^2, h, w)``; rows sum to 1/4 (mass of the pooled fine rows).
    """
    b, k, hh, ww = fine.shape
    pf, pc = 2 * fine_radius + 1, 2 * coarse_radius + 1
    if k != pf * pf:
        raise ValueError(f"fine has {k} window cells, expected (2*{fine_radius}+1)^2 = {pf * pf}")
    if hh % 2 or ww % 2:
        raise ValueError(f"the fine grid {hh}x{ww} must be twice the coarse grid (even sizes)")
    if fine_radius > 2 * coarse_radius:
        raise ValueError(
            f"fine radius {fine_radius} > 2 x coarse radius {coarse_radius}: the pooled label would "
            "leave the coarse window"
        )
    pad = 2 * coarse_radius + 1 - fine_radius  # >= 1: room for displacements 2d + a' - a up to +-(2 r1 + 1)
    f = F.pad(fine.view(b, pf, pf, hh, ww), (0, 0, 0, 0, pad, pad, pad, pad))
    out = fine.new_zeros(b, pc, pc, hh // 2, ww // 2)
    span = 4 * coarse_radius + 1
    for ay in (0, 1):
        for ax in (0, 1):
            q = f[:, :, :, ay::2, ax::2]  # fine queries 2I + a
            for by in (0, 1):
                for bx in (0, 1):
                    # fine displacement e = 2d + b - a sits at padded index e + r0 + pad
                    sy = by - ay + fine_radius + pad - 2 * coarse_radius
                    sx = bx - ax + fine_radius + pad - 2 * coarse_radius
                    out = out + q[:, sy : sy + span : 2, sx : sx + span : 2]
    return (out / 16.0).reshape(b, pc * pc, hh // 2, ww // 2)


def correlation_entropy(corr: torch.Tensor) -> torch.Tensor:
    """FW:154-157: ``H(i) = sum_d -log(softmax_d(corr)(i) + 1e-12)``.

    Args:
        corr: ``(B, (2r+1)^2, h, w)`` raw, zero-padded window correlation (``local_correlation``;
            out-of-image displacements are 0 and take part in the softmax, as mmcv's ``Correlation``).

    Returns:
        ``(B, h, w)`` float32 (float64 for float64 input), no gradient.
    """
    with torch.no_grad():
        p = torch.softmax(_acc(corr.detach()), dim=1)
        return (-torch.log(p + ENTROPY_EPS)).sum(1)


def entropy_mask(scores: torch.Tensor, fraction: float, mode: str = "global_quantile") -> torch.Tensor:
    """Query selection from entropy scores (spec §3.9; see the module docstring).

    Args:
        scores: ``(B, h, w)`` from :func:`correlation_entropy`.
        fraction: ``T`` (0.7), a rank fraction.
        mode: ``"global_quantile"`` | ``"reference_bug"`` | ``"none"``.

    Returns:
        ``(B, h, w)`` float mask in {0, 1} (scores' dtype), no gradient.
    """
    b, h, w = scores.shape
    s = scores.detach()
    if mode == "none":
        return torch.ones_like(s)
    if mode == "global_quantile":
        flat = s.reshape(b, h * w)
        idx = int(h * w * fraction) - 1
        if not 0 <= idx < h * w:
            raise ValueError(f"entropy fraction {fraction} selects rank {idx} of {h * w} positions")
        thr = flat.sort(dim=1, descending=True).values[:, idx : idx + 1]
        return (flat > thr).to(s.dtype).view(b, h, w)
    if mode == "reference_bug":
        idx = int(w * fraction) - 1
        if not 0 <= idx < h:
            raise ValueError(f"entropy fraction {fraction}: row {idx} of an {h}x{w} score map (reference_bug mode)")
        thr = s.sort(dim=-1, descending=True).values[:, idx : idx + 1]  # (B, 1, w): row idx, sorted along x
        return (s > thr).to(s.dtype)
    raise ValueError(f"entropy_select must be one of {ENTROPY_SELECT}, got {mode!r}")


def local_distillation_loss(student: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``L_lc`` (FW:181-183, LU:43-69): ``sum_{b,I} m * sum_J (c1 - t)^2 / (h*w * sum m + 1e-12)``.

    Args:
        student: ``(B, K, h, w)`` window probabilities of the coarse level (``c^1``).
        target: ``(B, K, h, w)`` pooled fine label (detached here).
        mask: ``(B, h, w)`` query selection.

    Returns:
        scalar. Out-of-window cells of the dense ``(h w) x (h w)`` row are 0 in both, so only the
        window contributes to the numerator while the denominator counts the full row ``h*w``.
    """
    if student.shape != target.shape or mask.shape != (student.shape[0], *student.shape[2:]):
        raise ValueError(
            f"student {tuple(student.shape)}, target {tuple(target.shape)} and mask {tuple(mask.shape)} "
            "must be (B, K, h, w), (B, K, h, w) and (B, h, w)"
        )
    h, w = student.shape[-2:]
    m = mask.detach().to(student.dtype)
    sq = (student - target.detach().to(student.dtype)).pow(2).sum(1)
    return (sq * m).sum() / (h * w * m.sum() + ENTROPY_EPS)


def global_affinity(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax_j(scale * <q_i, k_j>)`` over all reference positions (CORR:9-44, no mask, no norm).

    ``(B, C, h, w), (B, C, h, w) -> (B, h*w [query], h*w [reference])`` float32 (float64 kept).
    """
    q = _acc(query).flatten(2)
    k = _acc(key).flatten(2)
    return torch.softmax(torch.einsum("bci,bcj->bij", q, k) * scale, dim=-1)


def global_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``L_gc`` (FW:194): mean over ``B * (h w)^2`` of ``(a - a^t)^2`` (teacher detached)."""
    return F.mse_loss(student, teacher.detach().to(student.dtype))


# --------------------------------------------------------------------------------------------
# Step-1 checkpoints
# --------------------------------------------------------------------------------------------


def load_step1_weights(model: nn.Module, path: str, *, option: str, who: str):
    """Load a step-1 backbone checkpoint into ``model`` (a :class:`ResNet`); every tensor of the model
    must be found (``num_batches_tracked`` excepted), extra keys (heads, key encoder, ``fc``) are reported.

    Raises :class:`ConfigError` (one line naming ``option`` and the path) when the file is missing,
    unreadable or does not fit. Returns the :class:`~tritoncorr.models.loading.LoadReport`.
    """
    from tritoncorr.engine.checkpoint import resolve_weights_option
    from tritoncorr.models.loading import load_backbone_weights
    from tritoncorr.weights import is_path_like

    # a missing path gets the STT-specific hint; names, URLs and existing paths go to the shared resolver
    if not Path(path).expanduser().exists() and is_path_like(path):
        raise ConfigError(
            f"{option}={path!r}: no such file (the STT step-1 backbone checkpoint, e.g. "
            f"runs/stt-spatial-cpu/model.safetensors from recipes/stt_spatial.py:cpu); set --set {option}=PATH"
        )
    p = resolve_weights_option(path, option)
    try:
        report = load_backbone_weights(model, p)
    except (ValueError, OSError, RuntimeError) as err:
        raise ConfigError(f"{option}={path!r}: {err}") from None
    missing = [k for k in report.missing if not k.endswith("num_batches_tracked")]
    if missing or report.shape_mismatch:
        raise ConfigError(f"{option}={path!r} does not fit the ResNet-{model.depth} {who}: {report.summary()}")
    if _is_main_process():
        print(f"[stt] {who} <- {p}: {report.summary()}", flush=True)
    return report


def _zero_init_residual(backbone: ResNet) -> None:
    """Zero the last BN gamma of every residual block (RN:571-582, scratch students)."""
    for m in backbone.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        elif isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


@dataclass
class STTConfig:
    """STT step-2 settings (defaults: the official R50 stride-8 training config, CFG).

    Attributes:
        depth: student ResNet depth (18 or 50).
        teacher_depth: teacher depth (0 = ``depth``, as the official config).
        radii: window radii (res3, res4) in feature cells (12, 6); ``radii[0] <= 2 * radii[1]``.
        rec_weights: weights of ``L_rec^0``, ``L_rec^1`` (1, 1).
        local_weight: alpha, weight of ``L_lc`` (1000).
        global_weight: beta, weight of ``L_gc`` (50).
        entropy_fraction: T (0.7), a rank fraction.
        entropy_select: "global_quantile" (paper, default) | "reference_bug" (official code) | "none".
        teacher_temperature: the teacher affinity's temperature (0.07, on raw dot products).
        use_teacher: False = the temporal-only variant (no teacher, no ``L_gc``, no res5).
        teacher_weights: the step-1 backbone checkpoint for the teacher (``.safetensors`` or MoCo/DetCo
            ``.pth(.tar)``, a run folder, a published name, an ``https://`` URL or ``hf://...``);
            ``"random"`` = a random-init teacher (smoke tests only).
        student_init: ``"teacher"`` (the ``teacher_weights`` file, official), ``"scratch"``, or a path.
        zero_init_residual: scratch students zero the last BN of each residual block (RN:571-582).
        padding_mode: conv padding of both networks ("zeros").
    """

    depth: int = 50
    teacher_depth: int = 0
    radii: tuple[int, int] = (12, 6)
    rec_weights: tuple[float, float] = (1.0, 1.0)
    local_weight: float = 1000.0
    global_weight: float = 50.0
    entropy_fraction: float = 0.7
    entropy_select: Literal["global_quantile", "reference_bug", "none"] = "global_quantile"
    teacher_temperature: float = 0.07
    use_teacher: bool = True
    teacher_weights: str = ""
    student_init: str = FROM_TEACHER
    zero_init_residual: bool = True
    padding_mode: str = "zeros"

    def __post_init__(self) -> None:
        if self.depth not in (18, 34, 50) or self.teacher_depth not in (0, 18, 34, 50):
            raise ValueError(
                f"STTConfig.depth/teacher_depth must be 18, 34 or 50 (teacher 0 = same), got "
                f"{self.depth}/{self.teacher_depth}"
            )
        r0, r1 = (int(r) for r in self.radii)
        if not (1 <= r1 and 1 <= r0 <= 2 * r1):
            raise ValueError(
                f"STTConfig.radii={tuple(self.radii)} must satisfy 1 <= r0 <= 2 * r1 (the pooled res3 "
                "label must fit the res4 window)"
            )
        if min(self.rec_weights) < 0 or self.local_weight < 0 or self.global_weight < 0:
            raise ValueError("STTConfig loss weights must be >= 0")
        if not 0 < self.entropy_fraction <= 1:
            raise ValueError(f"STTConfig.entropy_fraction must be in (0, 1], got {self.entropy_fraction}")
        if self.entropy_select not in ENTROPY_SELECT:
            raise ValueError(f"STTConfig.entropy_select must be one of {ENTROPY_SELECT}, got {self.entropy_select!r}")
        if not self.teacher_temperature > 0:
            raise ValueError(f"STTConfig.teacher_temperature must be > 0, got {self.teacher_temperature}")

    def for_inference(self) -> "STTConfig":
        """The same student without teacher or checkpoint files (``features`` only; used by
        :func:`tritoncorr.methods.inference.load_feature_model`)."""
        return dataclasses.replace(self, use_teacher=False, teacher_weights="", student_init=SCRATCH)

    def _student_source(self) -> str:
        if self.student_init == FROM_TEACHER:
            if not self.teacher_weights:
                raise ConfigError(
                    "method.student_init='teacher' needs method.teacher_weights (the step-1 checkpoint); "
                    "set --set method.teacher_weights=PATH or method.student_init=scratch"
                )
            return self.teacher_weights
        return self.student_init

    def build(self) -> "STT":
        """The module, with the teacher and the student loaded from their checkpoints.

        Raises :class:`ConfigError` naming the option when a checkpoint is needed but missing."""
        if self.use_teacher and not self.teacher_weights:
            raise ConfigError(
                "STT needs a teacher: set --set method.teacher_weights=PATH (the step-1 backbone, "
                "e.g. runs/stt-spatial-cpu/model.safetensors) or method.use_teacher=false (temporal only)"
            )
        student_src = self._student_source()
        model = STT(self)
        if model.teacher is not None and self.teacher_weights != RANDOM_TEACHER:
            model.load_reports["teacher"] = load_step1_weights(
                model.teacher, self.teacher_weights, option="method.teacher_weights", who="teacher"
            )
        if student_src == SCRATCH:
            if self.zero_init_residual:
                _zero_init_residual(model.backbone)
        elif student_src == RANDOM_TEACHER:
            if model.teacher is None:
                raise ConfigError("method.teacher_weights='random' with student_init='teacher' needs use_teacher=true")
            model.backbone.load_state_dict(
                {k: v for k, v in model.teacher.state_dict().items() if k in model.backbone.state_dict()}, strict=True
            )
        else:
            option = "method.teacher_weights" if self.student_init == FROM_TEACHER else "method.student_init"
            model.load_reports["student"] = load_step1_weights(
                model.backbone, student_src, option=option, who="student"
            )
        return model


@dataclass
class STTDataConfig(DataConfig):
    """STT's clip pipeline (spec §3.1-3.2): 2 consecutive listed frames, STT's random resized crop
    (area 0.6-1, w/h 1.5-2) squashed to 256 x 256, whole-clip flip, normalised Lab.

    :meth:`validate` also checks, for ``frames``/``video`` sources, that ``root`` exists, with a
    one-line :class:`ConfigError` naming ``data.root`` (the engine reports it without a traceback).
    """

    clip_len: int = 2
    frame_gap: int = 1
    order: str = "ordered"
    crop: str = "resized"
    crop_size: int = 256
    area_range: tuple[float, float] = (0.6, 1.0)
    aspect_range: tuple[float, float] = (1.5, 2.0)
    hflip: bool = True
    color: str = "lab"

    def validate(self) -> "STTDataConfig":
        if self.source in ("frames", "video"):
            what = "a folder of frame folders (YouTube-VOS train/)" if self.source == "frames" else "a folder of videos"
            if not self.root:
                raise ConfigError(f"data.root is empty: set --set data.root=PATH ({what})")
            if not Path(self.root).expanduser().exists():
                raise ConfigError(f"data.root={self.root!r} does not exist: set --set data.root=PATH ({what})")
        if self.clip_len != 2:
            raise ConfigError(f"data.clip_len={self.clip_len}: STT trains on 2-frame clips (reference, target)")
        super().validate()
        return self


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------


class STT(nn.Module):
    """STT step-2 training module: student ``backbone`` (+ frozen ``teacher`` unless temporal-only).

    ``forward(batch)``: ``batch["frames"]`` float ``(B, 2, 3, S, S)`` normalised Lab clips (frame 0
    reference, frame 1 target) -> ``{"rec0", "rec1", "lc"[, "gc"]}`` weighted scalar terms.
    ``features(images (N, 3, H, W) Lab) -> (N, C4, ceil(H/8), ceil(W/8))`` res4, not normalised
    (``C4`` = 256 for R18, 1024 for R50).

    The chroma channel draw uses the global torch RNG (the engine seeds and checkpoints it).
    """

    method_name = "stt"
    input_color = "lab"
    inference_preset = "stt"

    def __init__(self, config: Optional[STTConfig] = None):
        super().__init__()
        self.config = cfg = config or STTConfig()
        stages = LEVELS + ((GLOBAL_LEVEL,) if cfg.use_teacher else ())
        self.backbone = ResNet(
            cfg.depth, strides=STUDENT_STRIDES, pool="none", padding_mode=cfg.padding_mode, out_stages=stages
        )
        self.teacher: Optional[ResNet] = None
        if cfg.use_teacher:
            self.teacher = ResNet(
                cfg.teacher_depth or cfg.depth,
                strides=TEACHER_STRIDES,
                pool="max",
                padding_mode=cfg.padding_mode,
                out_stages=(GLOBAL_LEVEL,),
            )
            self.teacher.requires_grad_(False)
            self.teacher.eval()
        self.load_reports: dict = {}

    def train(self, mode: bool = True) -> "STT":
        """Student in ``mode``; the teacher's BatchNorm always uses its running statistics (FW:189)."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def strides(self) -> tuple[int, ...]:
        """Cumulative strides of res3, res4 (and res5): (4, 8[, 32])."""
        return tuple(self.backbone.stride_of(s) for s in self.backbone.out_stages)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` normalised Lab -> res4 ``(N, C4, ceil(H/8), ceil(W/8))`` (layer4 is not run)."""
        bb = self.backbone
        x = bb.maxpool(bb.relu(bb.bn1(bb.conv1(images))))
        return bb.layer3(bb.layer2(bb.layer1(x)))

    @torch.no_grad()
    def teacher_features(self, frames_lab: torch.Tensor) -> torch.Tensor:
        """Teacher res5 of the ImageNet-normalised RGB version of the clips: ``(B, T, 3, S, S)`` Lab ->
        ``(B, T, C5, h5, w5)`` float32, BatchNorm in eval mode, no gradient."""
        from tritoncorr.data.transforms import imagenet_normalize, lab_denormalize, lab_to_rgb

        if self.teacher is None:
            raise RuntimeError("this STT model has no teacher (use_teacher=False)")
        self.teacher.eval()
        b, t = frames_lab.shape[:2]
        rgb = imagenet_normalize(lab_to_rgb(lab_denormalize(frames_lab.float())))
        # fp32 even under bf16 autocast: the teacher's logits are raw dot products / 0.07
        with torch.autocast(device_type=frames_lab.device.type, enabled=False):
            return self.teacher(rgb.flatten(0, 1))[GLOBAL_LEVEL].unflatten(0, (b, t))

    def loss_terms(
        self, pyramid: dict[str, torch.Tensor], target: torch.Tensor, teacher_res5: Optional[torch.Tensor] = None
    ) -> dict[str, torch.Tensor]:
        """The weighted loss terms from the student pyramid (spec §3.13 steps 3-6).

        Args:
            pyramid: ``{"layer2": (B, 2, C3, h0, w0), "layer3": (B, 2, C4, h1, w1)[, "layer4": (B, 2, C5, h5, w5)]}``
                student features, frame 0 = reference, frame 1 = target (``h0 = 2 h1``).
            target: ``(B, 2, 1, S, S)`` the clean dropped chroma channel of both frames.
            teacher_res5: ``(B, 2, C5', h5, w5)`` teacher features (``None``: no ``L_gc``).

        Returns:
            ``{"rec0", "rec1", "lc"[, "gc"]}`` scalars (float32; float64 for float64 inputs), already weighted.
        """
        cfg = self.config
        strides = dict(zip(self.backbone.out_stages, self.strides()))
        device_type = target.device.type
        terms: dict[str, torch.Tensor] = {}
        with torch.autocast(device_type=device_type, enabled=False):
            feats = {n: _acc(pyramid[n]) for n in pyramid}
            tgt = _acc(target)
            levels = []
            for l, name in enumerate(LEVELS):
                f = feats[name]
                ref, tar = f[:, 0], f[:, 1]
                scale = 1.0 / math.sqrt(f.shape[2])
                levels.append((tar, ref, scale))
                terms[f"rec{l}"] = cfg.rec_weights[l] * reconstruction_loss(
                    tar, ref, tgt[:, 0], tgt[:, 1], stride=strides[name], radius=int(cfg.radii[l]), scale=scale
                )

            from tritoncorr.kernels import local_correlation

            (tar0, ref0, s0), (tar1, ref1, s1) = levels
            r0, r1 = int(cfg.radii[0]), int(cfg.radii[1])
            if tar0.shape[-2:] != (2 * tar1.shape[-2], 2 * tar1.shape[-1]):
                raise ValueError(
                    f"res3 grid {tuple(tar0.shape[-2:])} must be twice the res4 grid {tuple(tar1.shape[-2:])}"
                )
            with torch.no_grad():
                pseudo = pooled_window_target(window_softmax(tar0.detach(), ref0.detach(), r0, s0), r0, r1)
            corr1 = local_correlation(tar1, ref1, r1)
            c1 = window_softmax(tar1, ref1, r1, s1, corr=corr1)
            mask = entropy_mask(correlation_entropy(corr1), cfg.entropy_fraction, cfg.entropy_select)
            terms["lc"] = cfg.local_weight * local_distillation_loss(c1, pseudo, mask)

            if teacher_res5 is not None:
                g = feats[GLOBAL_LEVEL]
                h = _acc(teacher_res5)
                if g.shape[-2:] != h.shape[-2:]:
                    raise ValueError(
                        f"student res5 grid {tuple(g.shape[-2:])} != teacher res5 grid {tuple(h.shape[-2:])}"
                    )
                student_aff = global_affinity(g[:, 1], g[:, 0], 1.0 / math.sqrt(g.shape[2]))
                teacher_aff = global_affinity(h[:, 1], h[:, 0], 1.0 / cfg.teacher_temperature)
                terms["gc"] = cfg.global_weight * global_distillation_loss(student_aff, teacher_aff)
        return terms

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        frames = batch["frames"]
        if not isinstance(frames, torch.Tensor) or frames.dim() != 5 or frames.shape[1] != 2 or frames.shape[2] != 3:
            shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(
                f"STT expects batch['frames'] of shape (B, 2, 3, S, S) (normalised Lab, reference then "
                f"target), got {shape}"
            )
        b = frames.shape[0]
        net_input, target, _k = drop_chroma(frames)
        feats = self.backbone(net_input.flatten(0, 1))
        pyramid = {name: f.unflatten(0, (b, 2)) for name, f in feats.items()}
        teacher = self.teacher_features(frames) if self.teacher is not None else None
        return self.loss_terms(pyramid, target, teacher)

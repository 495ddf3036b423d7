"""STT step 2: every loss term against a direct transcription of the official forward_train
(qianduoduolr/Spa-then-Temp ``vcl/models/trackers/framework.py``: dense ``(HW x HW)`` masked softmaxes,
``frame_transform``, ``compute_lphoto``, the avg-pool chain of the pseudo label, mmcv's zero-padded
``Correlation`` for the entropy, mmedit's masked MSE), values and gradients in float64; the fused
reconstruction against explicit loops; teacher handling, checkpoints, recipes, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tritoncorr.engine.config import ConfigError
from tritoncorr.methods.stt import (
    STT,
    STTConfig,
    STTDataConfig,
    correlation_entropy,
    entropy_mask,
    global_affinity,
    pooled_window_target,
    window_softmax,
)

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "stt.py"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ official forward_train, transcribed


def off_make_mask(size: int, r: int) -> torch.Tensor:
    """CU make_mask: row (i, j) of a size x size grid allows the truncated (2r+1)^2 square."""
    masks = []
    for i in range(size):
        for j in range(size):
            m = torch.zeros(size, size)
            m[max(0, i - r) : min(size, i + r + 1), max(0, j - r) : min(size, j + r + 1)] = 1
            masks.append(m.reshape(-1))
    return torch.stack(masks)


def off_non_local_correlation(tar, refs, temprature=1.0, mask=None, scaling=False):
    """CORR non_local_correlation, per_ref=True: returns the softmaxed (B, t, HW, HW) correlation."""
    tar = tar.flatten(2).permute(0, 2, 1)
    _, t, feat_dim, w_, h_ = refs.shape
    refs = refs.flatten(3).permute(0, 1, 3, 2)
    corr = torch.einsum("bic,btjc->btij", tar, refs) / temprature
    if scaling:
        corr = corr / torch.sqrt(torch.tensor(feat_dim, dtype=corr.dtype))
    if mask is not None:
        corr = corr.masked_fill(~mask.bool(), float("-inf"))
    return F.softmax(corr, dim=-1)


def off_frame_transform(corr, refs_list):
    refs = torch.stack(refs_list, 1).flatten(3).permute(0, 1, 3, 2)
    return torch.matmul(corr, refs)


def off_mmcv_correlation(tar, ref, r):
    """mmcv Correlation(max_displacement=r), kernel 1: (B, 2r+1, 2r+1, H, W) raw dot, 0 outside."""
    b, c, h, w = tar.shape
    pad = F.pad(ref, (r, r, r, r))
    out = tar.new_zeros(b, 2 * r + 1, 2 * r + 1, h, w)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out[:, dy + r, dx + r] = (tar * pad[:, :, r + dy : r + dy + h, r + dx : r + dx + w]).sum(1)
    return out


def off_masked_mse(pred, target, weight):
    """mmedit mask_reduce_loss, reduction mean, weight.size(1) > 1: sum(w * l) / (sum(w) + 1e-12)."""
    loss = F.mse_loss(pred, target, reduction="none") * weight
    return loss.sum() / (weight.sum() + 1e-12)


def off_forward_train(
    fs,
    lab_gt,
    ch,
    fs_t,
    *,
    feat_size,
    radius,
    rate,
    T=0.7,
    flatten_threshold=False,
    loss_weight=(1, 1, 1000, 50),
    temperature_t=0.07,
):
    """FW forward_train after the backbones: fs = [res3, res4, res5] each (B, 2, C, h, w), lab_gt the
    clean (B, 2, 3, S, S) Lab, ch the dropped channel, fs_t the teacher res5 (B, 2, C, h, w) or None.
    ``flatten_threshold``: the commented "intended" flatten (global rank) instead of the row-sort bug."""
    bsz = lab_gt.shape[0]
    images_lab_gt = [lab_gt[:, i] for i in range(2)]
    tar_pyramid, refs_pyramid = [f[:, -1] for f in fs], [f[:, :-1] for f in fs]
    losses, c1s, c2s = {}, [], []
    masks = [off_make_mask(feat_size[i], radius[i]).to(lab_gt.dtype) for i in range(2)]
    c_g = None
    for idx, (tar, refs) in enumerate(zip(tar_pyramid, refs_pyramid)):
        if idx == len(fs) - 1 and fs_t is not None:
            c_g = off_non_local_correlation(tar, refs, scaling=True)
            break
        if idx == len(fs) - 1:
            break
        c1 = off_non_local_correlation(tar, refs, mask=masks[idx], scaling=True)
        ref_gt = [gt[:, ch : ch + 1, :: rate[idx], :: rate[idx]] for gt in images_lab_gt[:-1]]
        outputs = off_frame_transform(c1, ref_gt)
        outputs = outputs[:, 0].permute(0, 2, 1).reshape(bsz, -1, feat_size[idx], feat_size[idx])
        h, w = images_lab_gt[0].shape[-2:]
        up = F.interpolate(outputs, (h, w), mode="bilinear")
        tar_y = images_lab_gt[-1][:, ch : ch + 1]
        losses[f"rec{idx}"] = loss_weight[idx] * F.smooth_l1_loss(up * 20, tar_y * 20, reduction="mean")
        c2s.append(off_mmcv_correlation(tar, refs[:, 0], radius[idx]))
        c1s.append(c1)
    corr_feat = c2s[-1].reshape(bsz, -1, feat_size[-1], feat_size[-1])
    corr = corr_feat.softmax(1)
    corr_en = (-torch.log(corr + 1e-12)).sum(1)
    if flatten_threshold:
        corr_en = corr_en.flatten(-2)
    corr_sorted, _ = torch.sort(corr_en, dim=-1, descending=True)
    idx = int(corr_en.shape[-1] * T) - 1
    thr = corr_sorted[:, idx : idx + 1]
    sparse_mask = (corr_en > thr).reshape(bsz, 1, *corr_feat.shape[-2:]).to(lab_gt.dtype).detach()
    weight = sparse_mask.flatten(-2).permute(0, 2, 1).repeat(1, 1, c1s[-1].shape[-1])
    c1_ = c1s[0].reshape(bsz, -1, *fs[0].shape[-2:])
    c1_ = F.avg_pool2d(c1_, 2, stride=2).flatten(-2).permute(0, 2, 1).reshape(bsz, -1, *fs[0].shape[-2:])
    target = F.avg_pool2d(c1_, 2, stride=2).flatten(-2).permute(0, 2, 1)
    losses["lc"] = loss_weight[2] * off_masked_mse(c1s[-1][:, 0], target.detach(), weight)
    if fs_t is not None:
        tar_t, refs_t = fs_t[:, -1], fs_t[:, :-1]
        target_c_g = off_non_local_correlation(tar_t, refs_t, temprature=temperature_t)
        losses["gc"] = loss_weight[3] * F.mse_loss(c_g, target_c_g)
    return losses, sparse_mask.reshape(bsz, feat_size[-1], feat_size[-1]), target


# ------------------------------------------------------------------ helpers


def _lab_clips(b: int, s: int, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """Smooth random normalised Lab clips (B, 2, 3, S, S): L in [-1, 1], a/b in about [-0.5, 0.5]."""
    low = torch.rand(b, 2, 3, s // 8, s // 8, generator=gen, dtype=dtype)
    x = F.interpolate(low.flatten(0, 1), size=(s, s), mode="bilinear", align_corners=False).unflatten(0, (b, 2))
    return torch.cat([x[:, :, :1] * 2 - 1, x[:, :, 1:] - 0.5], dim=2)


def _small_model(**kw) -> STT:
    cfg = dict(depth=18, radii=(4, 2), teacher_weights="random", student_init="scratch")
    cfg.update(kw)
    return STTConfig(**cfg).build()


# ------------------------------------------------------------------ loss terms vs the official code


@pytest.mark.parametrize("select", ["reference_bug", "global_quantile"])
def test_loss_terms_match_official_forward_train(torch_backend, select):
    g = _gen(1)
    b, s = 2, 48  # res3 12x12 (stride 4), res4 6x6 (stride 8)
    radius = (4, 2)
    model = _small_model(radii=radius, entropy_select=select).double()
    lab = _lab_clips(b, s, g)
    ch = 2
    target = lab[:, :, ch : ch + 1]
    shapes = {"layer2": (b, 2, 6, 12, 12), "layer3": (b, 2, 10, 6, 6), "layer4": (b, 2, 12, 3, 3)}
    feats = {k: (torch.randn(*v, generator=g, dtype=torch.float64) * 2).requires_grad_(True) for k, v in shapes.items()}
    teacher = torch.randn(b, 2, 7, 3, 3, generator=g, dtype=torch.float64) * 0.3

    ours = model.loss_terms(feats, target, teacher)
    ref, ref_mask, _ = off_forward_train(
        [feats["layer2"], feats["layer3"], feats["layer4"]],
        lab,
        ch,
        teacher,
        feat_size=(12, 6),
        radius=radius,
        rate=(4, 8),
        flatten_threshold=(select == "global_quantile"),
    )
    assert set(ours) == {"rec0", "rec1", "lc", "gc"} == set(ref)
    leaves = list(feats.values())
    for name in ours:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-10, atol=1e-12, msg=name)
        g_ours = torch.autograd.grad(ours[name], leaves, retain_graph=True, allow_unused=True)
        g_ref = torch.autograd.grad(ref[name], leaves, retain_graph=True, allow_unused=True)
        for leaf, a, r in zip(feats, g_ours, g_ref):
            if r is None or not r.abs().sum() > 0:
                assert a is None or not a.abs().sum() > 0, (name, leaf)
                continue
            torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-12, msg=f"d{name}/d{leaf}")
    # each term reaches exactly its own level: rec0 <- res3, rec1 and lc <- res4, gc <- res5
    assert ours["lc"].item() > 0 and ours["gc"].item() > 0
    # the selection we used is the official one
    corr = __import__("tritoncorr.kernels", fromlist=["local_correlation"]).local_correlation(
        feats["layer3"][:, 1].detach(), feats["layer3"][:, 0].detach(), radius[1]
    )
    mask = entropy_mask(correlation_entropy(corr), 0.7, select)
    assert torch.equal(mask, ref_mask)
    assert 0 < mask.sum() < mask.numel()


@pytest.mark.interpreter
def test_loss_terms_triton_kernels_match_torch_path(monkeypatch):
    """The whole step-2 objective with the Triton kernels (interpreter) vs the float64 PyTorch path."""
    g = _gen(8)
    b, s = 2, 32
    model = _small_model(radii=(2, 1))
    target = _lab_clips(b, s, g)[:, :, 1:2]
    shapes = {"layer2": (b, 2, 6, 8, 8), "layer3": (b, 2, 10, 4, 4), "layer4": (b, 2, 12, 2, 2)}
    feats = {k: torch.randn(*v, generator=g, dtype=torch.float64) for k, v in shapes.items()}
    teacher = torch.randn(b, 2, 7, 2, 2, generator=g, dtype=torch.float64) * 0.3
    results = {}
    for backend, dtype in (("torch", torch.float64), ("triton", torch.float32)):
        monkeypatch.setenv("TRITONCORR_BACKEND", backend)
        leaves = {k: v.to(dtype).requires_grad_(True) for k, v in feats.items()}
        terms = model.loss_terms(leaves, target.to(dtype), teacher.to(dtype))
        grads = torch.autograd.grad(sum(terms.values()), list(leaves.values()))
        results[backend] = ({k: v.double() for k, v in terms.items()}, [x.double() for x in grads])
    for name in results["torch"][0]:
        torch.testing.assert_close(
            results["triton"][0][name], results["torch"][0][name], rtol=1e-4, atol=1e-5, msg=name
        )
    for a, r in zip(results["triton"][1], results["torch"][1]):
        torch.testing.assert_close(a, r, rtol=1e-3, atol=1e-5)


def test_pooled_label_equals_dense_avg_pool_chain(torch_backend):
    """The window-layout pseudo label equals FW:175-177 on dense masked softmaxes; rows sum to 1/4,
    its support is the coarse window, rim entries are partial sums."""
    g = _gen(2)
    b, c, hf, r0, r1 = 2, 5, 16, 6, 3
    tar = torch.randn(b, c, hf, hf, generator=g, dtype=torch.float64)
    ref = torch.randn(b, c, hf, hf, generator=g, dtype=torch.float64)
    fine = window_softmax(tar, ref, r0, 0.7)
    ours = pooled_window_target(fine, r0, r1)  # (B, 49, 8, 8)
    dense = off_non_local_correlation(tar, ref[:, None], mask=off_make_mask(hf, r0).double())[:, 0] * 1.0
    # the same dense c^0 with the 0.7 scale
    dense = torch.softmax(
        (torch.einsum("bci,bcj->bij", tar.flatten(2), ref.flatten(2)) * 0.7).masked_fill(
            ~off_make_mask(hf, r0).bool(), float("-inf")
        ),
        dim=-1,
    )
    c1_ = F.avg_pool2d(dense.reshape(b, -1, hf, hf), 2).flatten(-2).permute(0, 2, 1).reshape(b, -1, hf, hf)
    target = F.avg_pool2d(c1_, 2).flatten(-2).permute(0, 2, 1)  # (B, 64, 64) coarse query x coarse ref
    hc = hf // 2
    # scatter our window layout into the dense coarse layout
    scattered = torch.zeros(b, hc * hc, hc * hc, dtype=torch.float64)
    p = 2 * r1 + 1
    for i in range(hc * hc):
        y, x = divmod(i, hc)
        for dy in range(-r1, r1 + 1):
            for dx in range(-r1, r1 + 1):
                if 0 <= y + dy < hc and 0 <= x + dx < hc:
                    scattered[:, i, (y + dy) * hc + x + dx] = ours[:, (dy + r1) * p + dx + r1, y, x]
                else:
                    assert torch.all(ours[:, (dy + r1) * p + dx + r1, y, x] == 0)
    torch.testing.assert_close(scattered, target, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(target.sum(-1), torch.full((b, hc * hc), 0.25, dtype=torch.float64))


def _explicit_reconstruction(q, k, v, radius, scale):
    """Explicit loops: logits <q_i, k_j> * scale over in-image cells of the square window, softmax, sum."""
    b, c, h, w = q.shape
    out = torch.zeros(b, v.shape[1], h, w, dtype=q.dtype)
    for bi in range(b):
        for y in range(h):
            for x in range(w):
                cells = [
                    (yy, xx)
                    for yy in range(y - radius, y + radius + 1)
                    for xx in range(x - radius, x + radius + 1)
                    if 0 <= yy < h and 0 <= xx < w
                ]
                logits = torch.stack([(q[bi, :, y, x] * k[bi, :, yy, xx]).sum() for yy, xx in cells]) * scale
                p = torch.softmax(logits, 0)
                out[bi, :, y, x] = sum(pi * v[bi, :, yy, xx] for pi, (yy, xx) in zip(p, cells))
    return out


@pytest.mark.parametrize(
    "backend,dtype", [("torch", torch.float64), pytest.param("triton", torch.float32, marks=pytest.mark.interpreter)]
)
def test_local_attention_reconstruction_equals_explicit_softmax(backend, dtype, monkeypatch):
    from tritoncorr.kernels import local_attention

    monkeypatch.setenv("TRITONCORR_BACKEND", backend)
    g = _gen(3)
    b, c, h, w, r = 2, 4, 5, 7, 2
    q = torch.randn(b, c, h, w, generator=g, dtype=torch.float64).requires_grad_(True)
    k = torch.randn(b, c, h, w, generator=g, dtype=torch.float64).requires_grad_(True)
    v = torch.randn(b, 1, h, w, generator=g, dtype=torch.float64).requires_grad_(True)
    scale = 1 / math.sqrt(c)
    ours = local_attention(q.to(dtype), k.to(dtype), v.to(dtype), r, scale=scale, border="truncate")
    ref = _explicit_reconstruction(q, k, v, r, scale)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.double(), ref, **tol)
    dout = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ga = torch.autograd.grad((ours.double() * dout).sum(), (q, k, v))
    gr = torch.autograd.grad((ref * dout).sum(), (q, k, v))
    for a, r_ in zip(ga, gr):
        torch.testing.assert_close(
            a, r_, **(dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-4))
        )


def test_window_softmax_rows_and_cell_counts():
    """Cells per query 625/325/169 at res3 interior/edge/corner (r=12 on 64x64), 169/91/49 at res4."""
    for size, r, counts in ((64, 12, (625, 325, 169)), (32, 6, (169, 91, 49))):
        q = torch.randn(1, 3, size, size)
        p = window_softmax(q, q.clone(), r, 1.0)
        nz = (p > 0).sum(1)[0]
        assert (nz[size // 2, size // 2].item(), nz[0, size // 2].item(), nz[0, 0].item()) == counts
        torch.testing.assert_close(p.sum(1), torch.ones(1, size, size))


def test_entropy_selection_modes():
    g = _gen(4)
    scores = torch.rand(8, 32, 32, generator=g, dtype=torch.float64)
    keep = entropy_mask(scores, 0.7, "global_quantile")
    assert torch.all(keep.sum((1, 2)) == 715)  # distinct values: ranks 0..714 strictly above rank 715
    flat = scores.flatten(1)
    thr = flat.sort(1, descending=True).values[:, 715:716]
    assert torch.equal(keep.flatten(1), (flat > thr).double())
    bug = entropy_mask(scores, 0.7, "reference_bug")
    row21 = scores.sort(-1, descending=True).values[:, 21]  # (B, 32): x-th largest of row 21
    assert torch.equal(bug, (scores > row21[:, None, :]).double())
    frac = bug.mean().item()
    assert 0.4 < frac < 0.6  # about 49 % (stt.md §3.9)
    cols = bug.mean((0, 1))
    assert cols[0] < 0.3 and cols[-1] > 0.7  # left-to-right bias
    assert torch.equal(entropy_mask(scores, 0.7, "none"), torch.ones_like(scores))


def test_global_affinity_is_softmax_over_reference_positions():
    g = _gen(5)
    q = torch.randn(2, 6, 3, 4, generator=g, dtype=torch.float64)
    k = torch.randn(2, 6, 3, 4, generator=g, dtype=torch.float64)
    a = global_affinity(q, k, 0.5)
    ref = torch.softmax(0.5 * torch.einsum("bci,bcj->bij", q.flatten(2), k.flatten(2)), -1)
    torch.testing.assert_close(a, ref)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 12, dtype=torch.float64))


# ------------------------------------------------------------------ the module


def test_features_pyramid_and_metadata():
    model = _small_model()
    assert (model.method_name, model.input_color, model.inference_preset) == ("stt", "lab", "stt")
    assert model.strides() == (4, 8, 32)
    assert model.backbone.pool_kind == "none" and model.backbone.strides == (1, 2, 2, 4)
    assert model.teacher.pool_kind == "max" and model.teacher.strides == (1, 2, 2, 2)
    x = torch.randn(2, 3, 64, 80)
    model.eval()
    out = model.backbone(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "layer2": (2, 128, 16, 20),
        "layer3": (2, 256, 8, 10),
        "layer4": (2, 512, 2, 3),
    }
    torch.testing.assert_close(model.features(x), out["layer3"])
    r50 = STTConfig(depth=50, use_teacher=False, student_init="scratch").build()
    assert r50.backbone.channels == {"layer1": 256, "layer2": 512, "layer3": 1024}
    assert not hasattr(r50.backbone, "layer4") and r50.teacher is None


def test_teacher_is_frozen_eval_and_outside_the_optimiser():
    from tritoncorr.engine.config import OptimConfig
    from tritoncorr.engine.optim import build_optimizer

    torch.manual_seed(0)
    model = _small_model().train()
    assert not model.teacher.training and model.backbone.training
    opt = build_optimizer(model, OptimConfig(name="adam", lr=1e-3))
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert in_opt == {id(p) for p in model.backbone.parameters()}
    assert any(k.startswith("teacher.") for k in model.state_dict())  # saved: checkpoints are self-contained
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    frames = _lab_clips(2, 64, _gen(6), torch.float32)
    loss = sum(model({"frames": frames}).values())
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in model.teacher.parameters())
    after = model.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched too


def test_teacher_sees_imagenet_rgb_of_the_same_crop():
    from tritoncorr.data.transforms import imagenet_normalize, lab_normalize, rgb_uint8_to_lab

    model = _small_model()
    rgb = torch.randint(0, 256, (2, 2, 3, 64, 64), dtype=torch.uint8)
    lab = lab_normalize(rgb_uint8_to_lab(rgb))
    seen = {}
    model.teacher.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    model.teacher_features(lab)
    torch.testing.assert_close(seen["x"], imagenet_normalize(rgb.float().flatten(0, 1) / 255), rtol=0, atol=1e-4)


def test_forward_terms_and_temporal_variant():
    torch.manual_seed(0)
    frames = _lab_clips(2, 64, _gen(7), torch.float32)
    terms = _small_model()({"frames": frames})
    assert set(terms) == {"rec0", "rec1", "lc", "gc"} and all(torch.isfinite(v) for v in terms.values())
    temporal = STTConfig(depth=18, radii=(4, 2), use_teacher=False, student_init="scratch").build()
    assert temporal.teacher is None and set(temporal({"frames": frames})) == {"rec0", "rec1", "lc"}
    # scratch students zero the last BN of every residual block (RN:571-582)
    assert all(float(blk.bn2.weight.detach().abs().sum()) == 0 for blk in temporal.backbone.layer1)
    with pytest.raises(ValueError, match=r"\(B, 2, 3, S, S\)"):
        temporal({"frames": torch.zeros(2, 3, 3, 64, 64)})


def test_config_errors_name_the_option(tmp_path):
    with pytest.raises(ConfigError, match="method.teacher_weights"):
        STTConfig(depth=18, teacher_weights="").build()
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ConfigError, match=r"method.teacher_weights=.*nope.safetensors.*no such file"):
        STTConfig(depth=18, teacher_weights=str(missing)).build()
    with pytest.raises(ConfigError, match="method.student_init"):
        STTConfig(depth=18, use_teacher=False, student_init=str(missing)).build()
    with pytest.raises(ValueError, match="radii"):
        STTConfig(radii=(13, 6))
    with pytest.raises(ConfigError, match=r"data.root=.*does not exist"):
        STTDataConfig(source="frames", root=str(tmp_path / "ytvos")).validate()
    with pytest.raises(ConfigError, match="data.root is empty"):
        STTDataConfig(source="video", root="").validate()


def _moco_pth(tmp_path: Path, depth: int, seed: int) -> tuple[Path, dict]:
    """A MoCo-v2-format checkpoint: {'state_dict': module.encoder_q.* (+ fc MLP), module.encoder_k.*, queue}."""
    from tritoncorr.models.resnet import ResNet

    torch.manual_seed(seed)
    net = ResNet(depth, strides=(1, 2, 2, 2), pool="max", out_stages=("layer4",))
    sd = {f"module.encoder_q.{k}": v for k, v in net.state_dict().items()}
    sd.update({f"module.encoder_k.{k}": v + 1 for k, v in net.state_dict().items()})
    sd["module.encoder_q.fc.0.weight"] = torch.randn(512, 512)
    sd["module.encoder_q.fc.2.weight"] = torch.randn(128, 512)
    sd["module.queue"] = torch.randn(128, 16)
    path = tmp_path / "moco_v2.pth.tar"
    torch.save({"epoch": 200, "arch": f"resnet{depth}", "state_dict": sd}, path)
    return path, net.state_dict()


def test_loads_published_moco_checkpoint_as_teacher_and_student(tmp_path, capsys):
    path, want = _moco_pth(tmp_path, 18, seed=3)
    model = STTConfig(depth=18, radii=(4, 2), teacher_weights=str(path)).build()
    for k, v in want.items():
        assert torch.equal(model.teacher.state_dict()[k], v), k
        assert torch.equal(model.backbone.state_dict()[k], v), k
    rep = model.load_reports["teacher"]
    assert rep.prefix == "module.encoder_q." and not rep.missing
    assert any("encoder_k" in k for k in rep.ignored) and any("fc." in k for k in rep.ignored)
    assert "[stt] teacher <-" in capsys.readouterr().out
    # a depth mismatch is one clear error naming the option
    with pytest.raises(ConfigError, match="method.teacher_weights.*does not fit the ResNet-50 teacher"):
        STTConfig(depth=50, teacher_weights=str(path)).build()


def test_loads_step1_safetensors_and_drops_teacher_for_inference(tmp_path):
    from safetensors.torch import save_file

    from tritoncorr.models.resnet import ResNet

    torch.manual_seed(4)
    net = ResNet(18, strides=(1, 2, 2, 2), pool="max", out_stages=("layer4",))
    sd = {f"backbone.{k}": v.contiguous() for k, v in net.state_dict().items()}  # MoCo module layout
    sd.update({f"key_backbone.{k}": v.clone() for k, v in net.state_dict().items()})
    sd["queue"] = torch.randn(8, 4)
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    cfg = STTConfig(depth=18, radii=(4, 2), teacher_weights=str(path))
    model = cfg.build()
    assert torch.equal(model.teacher.conv1.weight, net.conv1.weight)
    inf = cfg.for_inference()
    assert not inf.use_teacher and inf.teacher_weights == "" and inf.student_init == "scratch"
    student = inf.build()
    res = student.load_state_dict(model.state_dict(), strict=False)
    assert not res.missing_keys and all(k.startswith(("teacher.", "backbone.layer4")) for k in res.unexpected_keys)


def test_lab_to_rgb_inverts_the_lab_conversion():
    from tritoncorr.data.transforms import lab_to_rgb, rgb_to_lab, rgb_uint8_to_lab

    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(lab_to_rgb(rgb_uint8_to_lab(x)), x.float() / 255, rtol=0, atol=2e-5)
    y = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(y)), y, rtol=0, atol=1e-10)


# ------------------------------------------------------------------ recipes and the engine


def test_recipes_official_settings():
    from tritoncorr.engine.optim import lr_factor
    from tritoncorr.engine.recipe import load_recipe

    cfg = load_recipe(f"{RECIPE}:default", validate=False)
    m, d, o, s = cfg.method, cfg.data, cfg.optim, cfg.schedule
    assert (m.depth, tuple(m.radii), m.local_weight, m.global_weight, m.entropy_fraction) == (
        50,
        (12, 6),
        1000,
        50,
        0.7,
    )
    assert (m.teacher_temperature, tuple(m.rec_weights), m.student_init) == (0.07, (1.0, 1.0), "teacher")
    assert (d.clip_len, d.frame_gap, d.crop, d.crop_size, d.color, d.batch_size) == (2, 1, "resized", 256, "lab", 16)
    assert tuple(d.area_range) == (0.6, 1.0) and tuple(d.aspect_range) == (1.5, 2.0) and d.hflip
    assert d.root.endswith("YouTube-VOS/train") and cfg.sync_bn
    assert (o.name, o.lr, tuple(o.betas), o.weight_decay) == ("adam", 5e-5, (0.9, 0.999), 0.0)
    assert cfg.steps == 44_000
    lr = [o.lr * lr_factor(it, s, total_steps=cfg.steps, steps_per_epoch=55) for it in (0, 1100, 44_000)]
    assert math.isclose(lr[0], 5e-8, rel_tol=1e-6) and math.isclose(lr[1], 4.992e-5, rel_tol=1e-3)
    assert math.isclose(lr[2], 5e-8, rel_tol=1e-6)
    assert load_recipe(f"{RECIPE}:r18", validate=False).method.depth == 18
    t = load_recipe(f"{RECIPE}:temporal", validate=False).method
    assert not t.use_teacher and t.student_init == "scratch" and t.depth == 18
    cpu = load_recipe(f"{RECIPE}:cpu", ["data.root=/work/shared/data/videos"])
    assert cpu.method.teacher_weights == "runs/stt-spatial-cpu/model.safetensors" and cpu.data.source == "video"
    assert cpu.device == "cpu" and cpu.method.depth == 18


def test_smoke_recipe_lowers_its_loss():
    from tritoncorr.engine.distributed import DistInfo
    from tritoncorr.engine.loop import build_loader, seed_all
    from tritoncorr.engine.optim import build_optimizer
    from tritoncorr.engine.recipe import load_recipe

    cfg = load_recipe(f"{RECIPE}:smoke")
    seed_all(cfg.seed)
    model = cfg.method.build().train()
    opt = build_optimizer(model, cfg.optim)
    loader = build_loader(cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    batch = next(iter(loader))

    def loss_at() -> float:
        torch.manual_seed(123)  # the same dropped channel
        with torch.no_grad():
            return float(sum(model(batch).values()))

    before = loss_at()
    for i in range(8):
        torch.manual_seed(i)
        opt.zero_grad()
        sum(model(batch).values()).backward()
        opt.step()
    after = loss_at()
    print("smoke loss before/after", before, after)
    assert after < 0.8 * before, (before, after)


def test_resume_is_exact(tmp_path):
    from safetensors.torch import load_file

    from tritoncorr.engine.loop import train
    from tritoncorr.engine.recipe import load_recipe

    full = train(load_recipe(f"{RECIPE}:smoke", ["steps=4"]), tmp_path / "full", progress=False)
    part_cfg = load_recipe(f"{RECIPE}:smoke", ["steps=4", "checkpoint.every=2"])
    train(part_cfg, tmp_path / "part", stop_at=2, progress=False)
    resumed = train(
        load_recipe(f"{RECIPE}:smoke", ["steps=4", "checkpoint.every=2"]),
        tmp_path / "part",
        resume=True,
        progress=False,
    )
    rows_full = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    rows_part = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert resumed.step == full.step == 4 and len(rows_part) == 4
    for a, b in zip(rows_full, rows_part):
        assert {k: a[k] for k in ("step", "loss", "rec0", "rec1", "lc", "gc", "lr")} == {
            k: b[k] for k in ("step", "loss", "rec0", "rec1", "lc", "gc", "lr")
        }
    wa = load_file(str(tmp_path / "full" / "model.safetensors"))
    wb = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert wa.keys() == wb.keys() and any(k.startswith("teacher.") for k in wa)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

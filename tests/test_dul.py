"""DUL method: each loss term against a direct transcription of the spec's equations
(docs/methods/dul.md §2.4-2.7: explicit logits, dense softmax, grid_sample of the logits), the
grid sampling and view alignment properties, and a few training steps lowering the loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tritoncorr.methods import dul as dul_mod
from tritoncorr.methods.dul import (
    DUL,
    DULConfig,
    cross_view_loss,
    gather_positions,
    pseudo_labels,
    sample_grid,
    self_training_loss,
    warp_maps,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit(*shape, dim, gen, dtype=torch.float32) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=gen, dtype=dtype), dim=dim)


def _random_affine(b: int, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """A_b = [[f*s, 0, f*dx/half], [0, s, dy/half]] for a zoom-in crop inside the frame (spec §2.2)."""
    s = 0.5 + 0.5 * torch.rand(b, generator=gen, dtype=torch.float64)
    f = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0).double()
    # crop centre offset in normalised units: |d| <= 1 - s keeps the crop inside.
    tx = (torch.rand(b, generator=gen, dtype=torch.float64) * 2 - 1) * (1 - s)
    ty = (torch.rand(b, generator=gen, dtype=torch.float64) * 2 - 1) * (1 - s)
    a = torch.zeros(b, 2, 3, dtype=torch.float64)
    a[:, 0, 0], a[:, 0, 2] = f * s, f * tx
    a[:, 1, 1], a[:, 1, 2] = s, ty
    return a.to(dtype)


def _grid_sample_nearest(x: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """The code's W_b: grid_sample(x, affine_grid(A_b), nearest, align_corners=False, zero padding)."""
    grid = F.affine_grid(affine.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


# ------------------------------------------------------------------ references (spec equations)


def ref_self_training(main_keys, reg_keys, anchors, affine, tau, a_per_video):
    """Spec §2.5-2.6 literally: z = k q^T / tau for all anchors as [BT', BA, h, w] maps, warp the
    logit maps with nearest grid_sample, pseudo labels = argmax(softmax(zhat) * E) with the
    block-diagonal own-video mask E, L_ST = mean CE over all anchors."""
    b, t, k, h, w = main_keys.shape
    z = torch.einsum("btkhw,ak->btahw", main_keys, anchors) / tau
    zhat = torch.einsum("btkhw,ak->btahw", reg_keys, anchors) / tau
    ztilde = _grid_sample_nearest(z.flatten(0, 1), affine.repeat_interleave(t, 0))  # [BT', BA, h, w]
    n_anchor = anchors.shape[0]
    e = torch.zeros(b, n_anchor, dtype=zhat.dtype)
    for i in range(b):
        e[i, i * a_per_video : (i + 1) * a_per_video] = 1
    probs = torch.softmax(zhat, dim=2) * e[:, None, :, None, None]
    uhat = probs.argmax(dim=2).flatten(0, 1)  # [BT', h, w]
    return F.cross_entropy(ztilde, uhat.detach()), uhat.view(b, t, h, w)


def ref_cross_view(main_ref_warped, reg_ref, index, tau):
    """Spec §2.7 with explicit loops: rows = warped main-view grid vectors, columns = regularising
    grid vectors of all videos, CE with the diagonal as target (positive in the denominator)."""
    b, k, h, w = main_ref_warped.shape
    rows, cols = [], []
    for i in range(b):
        for p in index[i].tolist():
            y, x = divmod(p, w)
            rows.append(main_ref_warped[i, :, y, x])
            cols.append(reg_ref[i, :, y, x])
    r, rhat = torch.stack(rows), torch.stack(cols)
    n = r.shape[0]
    loss = 0.0
    for i in range(n):
        logits = torch.stack([(r[i] * rhat[j]).sum() for j in range(n)]) / tau
        loss = loss - torch.log_softmax(logits, 0)[i]
    return loss / n


# ------------------------------------------------------------------ grid sampling


@pytest.mark.parametrize("h,w,n", [(8, 8, 4), (13, 11, 4), (7, 9, 1), (5, 5, 5), (32, 32, 8)])
def test_sample_grid_one_jitter_per_video(h, w, n):
    b = 6
    idx = sample_grid(b, h, w, n, generator=_gen(h * 31 + w))
    assert idx.shape == (b, n * n) and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < h * w
    ys, xs = (idx // w).view(b, n, n), (idx % w).view(b, n, n)
    cy, cx = h // n, w // n
    oy, ox = ys[:, 0, 0], xs[:, 0, 0]
    assert bool(((oy >= 0) & (oy < cy)).all()) and bool(((ox >= 0) & (ox < cx)).all())
    steps = torch.arange(n)
    # the same (oy, ox) offset for every cell of a video: y = i*cy + oy_b, x = j*cx + ox_b
    assert torch.equal(ys, steps.view(1, n, 1) * cy + oy.view(b, 1, 1) + 0 * xs)
    assert torch.equal(xs, steps.view(1, 1, n) * cx + ox.view(b, 1, 1) + 0 * ys)


def test_sample_grid_offsets_cover_the_cell_and_vary():
    idx = sample_grid(400, 32, 32, 8, generator=_gen(1))
    oy, ox = (idx[:, 0] // 32), (idx[:, 0] % 32)
    assert set(oy.tolist()) == {0, 1, 2, 3} and set(ox.tolist()) == {0, 1, 2, 3}
    # independent draws for x and y
    assert not torch.equal(oy, ox)
    # redrawn every call
    assert not torch.equal(idx, sample_grid(400, 32, 32, 8, generator=_gen(2)))


def test_sample_grid_rejects_too_small_maps():
    with pytest.raises(ValueError, match="at least 8x8"):
        sample_grid(2, 7, 32, 8)


def test_gather_positions_matches_indexing():
    g = _gen(3)
    maps = torch.randn(3, 5, 7, 6, generator=g)[:, :, :, :]
    maps = maps.transpose(2, 3).contiguous().transpose(2, 3)  # non-standard strides
    idx = torch.randint(0, 42, (3, 4), generator=g)
    out = gather_positions(maps, idx)
    assert out.shape == (12, 5)
    for bi in range(3):
        for i in range(4):
            y, x = divmod(int(idx[bi, i]), 6)
            assert torch.equal(out[bi * 4 + i], maps[bi, :, y, x])


# ------------------------------------------------------------------ view alignment


def test_warp_identity_reproduces_map():
    x = torch.randn(3, 5, 9, 13, generator=_gen(4))
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(3, 2, 3)
    assert torch.equal(warp_maps(x, eye), x)
    x5 = x.view(3, 1, 5, 9, 13).expand(3, 2, 5, 9, 13)
    assert torch.equal(warp_maps(x5, eye), x5)


@pytest.mark.parametrize("h,w", [(8, 8), (11, 13)])
def test_warp_keys_equals_warp_of_logits(h, w):
    """Spec §2.10 hint: nearest warp of unit keys then logits == nearest warp of the logit maps."""
    g = _gen(5)
    b, k, a = 4, 6, 10
    keys = _unit(b, k, h, w, dim=1, gen=g)
    q = _unit(a, k, dim=1, gen=g)
    affine = _random_affine(b, g)
    logits_of_warped = torch.einsum("bkhw,ak->bahw", warp_maps(keys, affine), q) / 0.05
    warped_logits = _grid_sample_nearest(torch.einsum("bkhw,ak->bahw", keys, q) / 0.05, affine)
    torch.testing.assert_close(logits_of_warped, warped_logits, rtol=1e-5, atol=1e-4)
    # the zoom-in never samples outside the frame: warped keys stay unit norm
    torch.testing.assert_close(warp_maps(keys, affine).norm(dim=1), torch.ones(b, h, w))


def test_warp_matches_code_direction():
    """A_b maps regularising-view coordinates to main-view coordinates: a flip-only A_b mirrors."""
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).view(2, 1, 3, 4)
    flip = torch.tensor([[-1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    assert torch.equal(warp_maps(x, flip), x.flip(-1))


# ------------------------------------------------------------------ losses against the spec


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_self_training_loss_matches_spec(backend, monkeypatch):
    monkeypatch.setenv("TRITONCORR_BACKEND", backend)
    g = _gen(6)
    b, t, k, h, w, a = 2, 2, 8, 5, 7, 4
    tau = 0.1
    main = _unit(b, t, k, h, w, dim=2, gen=g).requires_grad_(True)
    reg = _unit(b, t, k, h, w, dim=2, gen=g)
    anchors = _unit(b * a, k, dim=1, gen=g).requires_grad_(True)
    affine = _random_affine(b, g)

    loss = self_training_loss(main, reg, anchors, affine, tau, a)
    gm, ga = torch.autograd.grad(loss, (main, anchors))

    m64 = main.detach().double().requires_grad_(True)
    a64 = anchors.detach().double().requires_grad_(True)
    ref, uhat = ref_self_training(m64, reg.double(), a64, affine.double(), tau, a)
    rm, ra = torch.autograd.grad(ref, (m64, a64))

    assert torch.equal(pseudo_labels(reg, anchors, a), uhat)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gm.double(), rm, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ga.double(), ra, rtol=1e-4, atol=1e-6)


def test_pseudo_labels_stay_in_own_video_and_ignore_other_videos():
    g = _gen(7)
    b, t, k, h, w, a = 3, 2, 6, 4, 5, 4
    reg = _unit(b, t, k, h, w, dim=2, gen=g)
    anchors = _unit(b * a, k, dim=1, gen=g)
    lab = pseudo_labels(reg, anchors, a)
    assert lab.shape == (b, t, h, w) and lab.dtype == torch.int64
    for i in range(b):
        assert bool(((lab[i] >= i * a) & (lab[i] < (i + 1) * a)).all())
    # an anchor of video 0 identical to a key of video 1 does not attract video 1's label there
    anchors2 = anchors.clone()
    anchors2[0] = reg[1, 0, :, 2, 3]
    lab2 = pseudo_labels(reg, anchors2, a)
    assert int((reg[1, 0, :, 2, 3] @ anchors2.t()).argmax()) == 0  # the unrestricted argmax would pick it
    assert torch.equal(lab2[1:], lab[1:])


def test_cross_view_loss_matches_spec():
    g = _gen(8)
    b, k, h, w, m = 3, 5, 6, 7, 2
    tau = 0.05
    main = _unit(b, k, h, w, dim=1, gen=g).double().requires_grad_(True)
    reg = _unit(b, k, h, w, dim=1, gen=g).double().requires_grad_(True)
    idx = sample_grid(b, h, w, m, generator=g)
    loss = cross_view_loss(main, reg, idx, tau)
    ref = ref_cross_view(main, reg, idx, tau)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    g1 = torch.autograd.grad(loss, (main, reg))
    g2 = torch.autograd.grad(ref, (main, reg))
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-7)
    assert g1[0].abs().sum() > 0 and g1[1].abs().sum() > 0  # gradient into both views


# ------------------------------------------------------------------ the module


def _small_config(**kw) -> DULConfig:
    base = dict(anchor_grid=4, cross_view_grid=2, key_dim=16, head_hidden=32)
    base.update(kw)
    return DULConfig(**base)


def _synthetic_clips(b: int, t: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Smooth random textures translated by 2 px per frame: (B, T, 3, size, size)."""
    big = size + 2 * t + 2
    tex = F.interpolate(
        torch.randn(b, 3, big // 8 + 1, big // 8 + 1, generator=gen),
        size=(big, big),
        mode="bilinear",
        align_corners=False,
    )
    return torch.stack([tex[:, :, 2 * i : 2 * i + size, 2 * i : 2 * i + size] for i in range(t)], dim=1)


def test_config_validation():
    with pytest.raises(ValueError, match="tau"):
        DULConfig(tau=0)
    with pytest.raises(ValueError, match="view_scale_range"):
        DULConfig(view_scale_range=(0.5, 1.5))
    with pytest.raises(ValueError, match="anchor_grid"):
        DULConfig(anchor_grid=0)
    model = DULConfig().build()
    assert isinstance(model, DUL)
    assert model.head.net[3].out_channels == 128
    assert any(k.startswith("backbone.layer4.") for k in model.state_dict())


def test_features_are_layer4_stride8():
    model = _small_config().build().eval()
    with torch.no_grad():
        f = model.features(torch.randn(1, 3, 37, 50, generator=_gen(9)))
    assert f.shape == (1, 512, 5, 7)


def test_forward_rejects_bad_batches():
    model = _small_config().build()
    with pytest.raises(ValueError, match=r"\(B, T, 3, S, S\)"):
        model({"frames": torch.zeros(2, 3, 32, 32)})
    with pytest.raises(ValueError, match="at least 2 frames"):
        model({"frames": torch.zeros(2, 1, 3, 32, 32)})


def test_forward_terms_gradients_and_bn_passes():
    torch.manual_seed(0)
    model = _small_config().build().train()
    model.seed(0)
    clips = _synthetic_clips(2, 3, 48, _gen(10))
    bn = model.backbone.bn1
    before = int(bn.num_batches_tracked)
    out = model({"frames": clips})
    assert set(out) == {"st", "cv"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    # two BN passes per step: main (grad) pass and the no-grad regularising pass in train mode
    assert int(bn.num_batches_tracked) == before + 2
    # loss scale sanity: CE over B*N^2 = 32 anchors, over B*M^2 = 8 grid points
    assert 0 < float(out["st"].detach()) < 10 * math.log(32)
    sum(out.values()).backward()
    for name in ("backbone.conv1.weight", "backbone.layer4.1.conv2.weight", "head.net.0.weight", "head.net.3.bias"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name

    model_eval_bn = _small_config(reg_bn_eval=True).build().train()
    before = int(model_eval_bn.backbone.bn1.num_batches_tracked)
    model_eval_bn({"frames": clips})
    assert int(model_eval_bn.backbone.bn1.num_batches_tracked) == before + 1
    assert model_eval_bn.backbone.bn1.training  # restored to train mode


@pytest.mark.interpreter
def test_forward_triton_kernels_match_torch_path(monkeypatch):
    """The whole DUL step with the Triton kernels (interpreter on CPU) equals the PyTorch path."""
    import copy

    torch.manual_seed(0)
    model = _small_config(anchor_grid=2, key_dim=8, head_hidden=16).build().train()
    twin = copy.deepcopy(model)
    clips = _synthetic_clips(2, 3, 32, _gen(13))
    results = []
    for backend, m in (("torch", model), ("triton", twin)):
        monkeypatch.setenv("TRITONCORR_BACKEND", backend)
        m.seed(5)
        out = m({"frames": clips})
        sum(out.values()).backward()
        results.append((out, {n: p.grad.clone() for n, p in m.named_parameters()}))
    (o1, g1), (o2, g2) = results
    for k in ("st", "cv"):
        torch.testing.assert_close(o2[k], o1[k], rtol=1e-4, atol=1e-5)
    for name in ("backbone.conv1.weight", "head.net.3.weight"):
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-3, atol=1e-5)


def test_anchors_come_from_main_view_reference_frame(monkeypatch):
    model = _small_config().build().train()
    model.seed(1)
    clips = _synthetic_clips(2, 3, 40, _gen(11))
    seen = {}
    real_keys, real_st = model.keys, dul_mod.self_training_loss

    def keys_spy(images):
        out = real_keys(images)
        seen.setdefault("keys", []).append(out.detach())
        return out

    def st_spy(main_keys, reg_keys, anchors, affine, tau, a):
        seen.update(anchors=anchors.detach(), main=main_keys.detach(), a=a)
        return real_st(main_keys, reg_keys, anchors, affine, tau, a)

    monkeypatch.setattr(model, "keys", keys_spy)
    monkeypatch.setattr(dul_mod, "self_training_loss", st_spy)
    model({"frames": clips})
    b, t = 2, 3
    main_all = seen["keys"][0][: b * t].unflatten(0, (b, t))  # the grad pass, main view
    anchors = seen["anchors"].view(b, seen["a"], -1)
    assert seen["a"] == 16 and torch.equal(seen["main"], main_all[:, 1:])  # L_ST excludes t = 0
    h, w = main_all.shape[-2:]
    for i in range(b):
        ref = main_all[i, 0].flatten(1).t()  # (h*w, K) frame 0 of video i
        for q in anchors[i]:
            assert bool((ref == q).all(dim=1).any()), "anchor not a main-view frame-0 key of its own video"
    # the anchors of a video form a jittered grid: distinct positions
    assert torch.unique(anchors[0], dim=0).shape[0] == 16


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = _small_config(key_dim=32).build().train()
    clips = _synthetic_clips(2, 3, 48, _gen(12))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999))

    def loss_at(seed: int) -> float:
        model.seed(seed)
        with torch.no_grad():
            return float(sum(model({"frames": clips}).values()))

    fixed = [loss_at(s) for s in (100, 101)]
    model.seed(0)
    for _ in range(12):
        opt.zero_grad()
        loss = sum(model({"frames": clips}).values())
        loss.backward()
        opt.step()
    after = [loss_at(s) for s in (100, 101)]
    print("losses before/after", fixed, after)
    assert sum(after) < 0.8 * sum(fixed), (fixed, after)


# ------------------------------------------------------------------ recipes


RECIPE = __import__("pathlib").Path(__file__).resolve().parents[1] / "recipes" / "dul.py"


def test_recipes_load_with_paper_settings():
    from tritoncorr.engine.recipe import load_recipe

    cfg = load_recipe(f"{RECIPE}:default", validate=False)
    m, d, o, s = cfg.method, cfg.data, cfg.optim, cfg.schedule
    assert (m.tau, m.cv_weight, m.anchor_grid, m.cross_view_grid, m.key_dim) == (0.05, 0.1, 8, 4, 128)
    assert (d.batch_size, d.clip_len, d.crop_size, d.frame_gap, d.source) == (16, 5, 256, 2, "frames")
    assert (o.name, o.lr, tuple(o.betas), o.weight_decay, o.bias_lr_mult) == ("adam", 1e-4, (0.5, 0.999), 5e-4, 2.0)
    assert o.no_decay_bias and not o.no_decay_bias_norm  # wd on BN gammas, not on biases
    assert (s.name, s.unit, s.step_size, s.gamma) == ("step", "epochs", 100, 0.5)
    cpu = load_recipe(f"{RECIPE}:cpu", ["data.root=/tmp/videos", "method.tau=0.07"])
    assert cpu.data.source == "video" and cpu.data.root == "/tmp/videos" and cpu.method.tau == 0.07
    assert cpu.data.crop_size // 8 >= cpu.method.anchor_grid  # the anchor grid fits the feature map
    # the CPU recipe's measured departures (recipes/dul.py:cpu docstring, docs/DUL_CPU.md)
    assert cpu.method.reg_bn_eval and cpu.schedule.name == "cosine" and cpu.data.frame_gap == 25


def test_engine_initial_backbone_is_the_seeded_random_init():
    """``tritoncorr eval davis --seed S`` reproduces the initial backbone of a run whose recipe seed is S."""
    from tritoncorr.engine.loop import seed_all
    from tritoncorr.engine.recipe import load_recipe
    from tritoncorr.models import dul_backbone

    cfg = load_recipe(f"{RECIPE}:cpu", ["data.root=/tmp/videos"])
    seed_all(cfg.seed)
    trained_init = cfg.method.build().backbone.state_dict()
    torch.manual_seed(cfg.seed)
    random_init = dul_backbone().state_dict()
    assert trained_init.keys() == random_init.keys()
    assert all(torch.equal(trained_init[k], random_init[k]) for k in trained_init)


def test_smoke_recipe_trains_and_exports_a_backbone(tmp_path):
    from tritoncorr.engine.loop import train
    from tritoncorr.engine.recipe import load_recipe
    from tritoncorr.models import dul_backbone
    from tritoncorr.models.loading import load_backbone_weights

    cfg = load_recipe(f"{RECIPE}:smoke", ["steps=2"])
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == 2 and all(math.isfinite(r["loss"]) for r in result.rows)
    assert {"st", "cv"} <= set(result.rows[-1])
    report = load_backbone_weights(dul_backbone(), tmp_path / "run" / "model.safetensors")
    assert not report.missing and not report.shape_mismatch

"""STT step 1 (MoCo v2): InfoNCE against a transcription of the official loss (float64, values and
gradients), queue and momentum-encoder invariants, split/shuffled BatchNorm (one process and a
2-rank gloo group), the torch augmentations, the image sources and the loader's exact mid-epoch
resume, the recipes, and the checkpoint loading as a plain torchvision-layout ResNet."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tritoncorr.data import images as I
from tritoncorr.data.images import ImageDataConfig
from tritoncorr.data.sources import DataSourceError, SourceWarning
from tritoncorr.data.transforms import imagenet_denormalize
from tritoncorr.engine.config import ConfigError
from tritoncorr.methods.moco import MoCo, MoCoConfig, SplitBatchNorm2d, info_nce, momentum_update
from tritoncorr.models.loading import load_backbone_weights
from tritoncorr.models.resnet import ResNet

RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "stt_spatial.py")


def _tiny(**kw) -> MoCo:
    args = dict(depth=18, dim=8, queue_size=12, momentum=0.9, temperature=0.2, bn_group=0)
    args.update(kw)
    torch.manual_seed(0)
    return MoCoConfig(**args).build()


def _views(b: int, s: int = 32, seed: int = 0, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "view1": torch.randn(b, 3, s, s, generator=g, dtype=dtype),
        "view2": torch.randn(b, 3, s, s, generator=g, dtype=dtype),
    }


# ------------------------------------------------------------------------------------ the loss


def ref_moco_loss(q, k, queue, t):
    """moco/builder.py MoCo.forward, transcribed: einsum logits, concat, /T, CE at label 0."""
    l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", [q, queue.clone().detach()])
    logits = torch.cat([l_pos, l_neg], dim=1) / t
    labels = torch.zeros(logits.shape[0], dtype=torch.long)
    return torch.nn.CrossEntropyLoss()(logits, labels)


def ref_infonce_loop(q, k, queue, t):
    """Paper Eq. (1) literally: mean_i -log(exp(q_i.k_i/T) / (exp(q_i.k_i/T) + sum_j exp(q_i.n_j/T)))."""
    terms = []
    for i in range(q.shape[0]):
        pos = torch.exp(q[i] @ k[i] / t)
        neg = sum(torch.exp(q[i] @ queue[:, j] / t) for j in range(queue.shape[1]))
        terms.append(-torch.log(pos / (pos + neg)))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("t", [0.2, 0.07])
def test_info_nce_matches_moco_code_values_and_gradients(torch_backend, t):
    g = torch.Generator().manual_seed(1)
    q0 = F.normalize(torch.randn(5, 6, generator=g, dtype=torch.float64), dim=1)
    k0 = F.normalize(torch.randn(5, 6, generator=g, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(6, 9, generator=g, dtype=torch.float64), dim=0)
    grads = []
    for fn in (info_nce, ref_moco_loss, ref_infonce_loop):
        q, k = q0.clone().requires_grad_(True), k0.clone().requires_grad_(True)
        loss = fn(q, k, queue, t)
        loss.backward()
        grads.append((loss.detach(), q.grad, k.grad))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert grads[0][0] > 0 and grads[0][1].abs().sum() > 0


def test_forward_loss_is_infonce_of_query_and_key_encoders():
    m = _tiny(shuffle_bn=False)
    ref = copy.deepcopy(m)
    batch = _views(4)
    queue0 = m.queue.clone()
    out = m(batch)
    assert list(out) == ["infonce"] and out["infonce"].requires_grad
    ref.momentum_update()  # the official order: momentum update, then the keys
    q = ref.encode_query(batch["view1"])
    with torch.no_grad():
        k = ref._encode(ref.key_backbone, ref.key_head, batch["view2"])
    torch.testing.assert_close(out["infonce"], ref_moco_loss(q, k, queue0, 0.2))
    # the keys were enqueued at columns 0..3, the rest of the queue is untouched
    torch.testing.assert_close(m.queue[:, :4], k.t())
    torch.testing.assert_close(m.queue[:, 4:], queue0[:, 4:], rtol=0, atol=0)
    assert int(m.queue_ptr) == 4


# ------------------------------------------------------------------------ queue and momentum


def test_queue_is_fifo_and_wraps():
    m = _tiny(queue_size=10)
    assert m.queue.shape == (8, 10) and torch.allclose(m.queue.norm(dim=0), torch.ones(10))
    assert {"queue", "queue_ptr"} <= set(m.state_dict())
    keys = [torch.full((4, 8), float(i + 1)) for i in range(3)]
    m.enqueue(keys[0])
    assert int(m.queue_ptr) == 4 and torch.all(m.queue[:, :4] == 1)
    m.enqueue(keys[1])
    assert int(m.queue_ptr) == 8 and torch.all(m.queue[:, 4:8] == 2) and torch.all(m.queue[:, :4] == 1)
    before = m.queue.clone()
    m.enqueue(keys[2])  # columns 8, 9, 0, 1
    assert int(m.queue_ptr) == 2
    assert torch.all(m.queue[:, [8, 9, 0, 1]] == 3)
    assert torch.equal(m.queue[:, 2:8], before[:, 2:8])
    with pytest.raises(ValueError, match="exceed the queue size"):
        m.enqueue(torch.zeros(11, 8))


def test_queue_key_order_within_a_batch():
    m = _tiny(queue_size=6)
    keys = torch.arange(4 * 8, dtype=torch.float32).view(4, 8)
    m.enqueue(keys[:2])
    m.enqueue(keys)  # columns 2, 3, 4, 5 get keys 0, 1, 2, 3
    assert torch.equal(m.queue[:, 2:6], keys.t()) and int(m.queue_ptr) == 0


def test_momentum_update_is_exact_and_only_touches_key_parameters():
    m = _tiny().double()
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(torch.randn_like(p))
        for p in m.head.parameters():
            p.add_(torch.randn_like(p))
    q = [p.detach().clone() for p in list(m.backbone.parameters()) + list(m.head.parameters())]
    k = [p.detach().clone() for p in list(m.key_backbone.parameters()) + list(m.key_head.parameters())]
    kb = {n: b.clone() for n, b in m.key_backbone.named_buffers()}
    m.momentum_update()
    new_k = list(m.key_backbone.parameters()) + list(m.key_head.parameters())
    for pk, k0, q0 in zip(new_k, k, q):
        torch.testing.assert_close(pk, 0.9 * k0 + 0.1 * q0, rtol=1e-15, atol=1e-15)
        assert not torch.allclose(pk, 0.1 * k0 + 0.9 * q0)  # the weights are not swapped
    for pq, q0 in zip(list(m.backbone.parameters()) + list(m.head.parameters()), q):
        assert torch.equal(pq, q0)
    for n, b in m.key_backbone.named_buffers():
        assert torch.equal(b, kb[n])  # BN running statistics are not averaged
    with pytest.raises(ValueError, match="differ"):
        momentum_update(m.key_head, m.backbone, 0.5)


def test_key_encoder_starts_equal_and_gets_no_gradient():
    m = _tiny()
    for pk, pq in zip(m.key_backbone.state_dict().values(), m.backbone.state_dict().values()):
        assert torch.equal(pk, pq)
    assert all(not p.requires_grad for p in m.key_backbone.parameters())
    assert all(not p.requires_grad for p in m.key_head.parameters())
    out = m(_views(4))
    out["infonce"].backward()
    assert all(p.grad is None for p in list(m.key_backbone.parameters()) + list(m.key_head.parameters()))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.head.parameters())
    assert m.backbone.conv1.weight.grad is not None
    # the optimiser the engine builds sees only the query encoder
    from tritoncorr.engine.config import OptimConfig
    from tritoncorr.engine.optim import build_optimizer

    opt = build_optimizer(m, OptimConfig(name="sgd", lr=0.1, weight_decay=1e-4))
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in list(m.backbone.parameters()) + list(m.head.parameters()))


def test_head_sizes_follow_moco_v2():
    r18 = MoCoConfig(depth=18, queue_size=4).build()
    assert [tuple(p.shape) for p in r18.head.parameters()] == [(512, 512), (512,), (128, 512), (128,)]
    r50 = MoCoConfig(depth=50, queue_size=4).build()
    assert [tuple(p.shape) for p in r50.head.parameters()] == [(2048, 2048), (2048,), (128, 2048), (128,)]
    v1 = MoCoConfig(depth=18, queue_size=4, mlp=False).build()
    assert [tuple(p.shape) for p in v1.head.parameters()] == [(128, 512), (128,)]
    assert r50.method_name == "moco" and r50.input_color == "rgb" and r50.inference_preset == "stt"


# ------------------------------------------------------------------------------- BatchNorm


def test_split_batchnorm_equals_batchnorm_per_group():
    torch.manual_seed(0)
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    split = SplitBatchNorm2d(4, group_size=2).double()
    with torch.no_grad():
        split.weight.uniform_(0.5, 1.5)
        split.bias.uniform_(-0.5, 0.5)
    plain = [copy.deepcopy(torch.nn.BatchNorm2d(4).double()) for _ in range(3)]
    for p in plain:
        p.load_state_dict(split.state_dict())
    y = split(x)
    xs = x.detach().clone().requires_grad_(True)
    y_ref = torch.cat([p(xs[2 * i : 2 * i + 2]) for i, p in enumerate(plain)])
    torch.testing.assert_close(y, y_ref)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    torch.testing.assert_close(x.grad, xs.grad)
    torch.testing.assert_close(split.running_mean, torch.stack([p.running_mean for p in plain]).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack([p.running_var for p in plain]).mean(0))
    assert int(split.num_batches_tracked) == 1
    # not the whole-batch statistics
    assert not torch.allclose(y, F.batch_norm(x, None, None, split.weight, split.bias, True))
    with pytest.raises(ValueError, match="multiple of bn_group"):
        split(torch.randn(5, 4, 3, 3, dtype=torch.float64))
    split.eval()
    torch.testing.assert_close(
        split(x), F.batch_norm(x, split.running_mean, split.running_var, split.weight, split.bias, False)
    )


def test_split_bn_keeps_the_torchvision_layout():
    m = _tiny(bn_group=2)
    assert isinstance(m.backbone.bn1, SplitBatchNorm2d) and isinstance(m.key_backbone.layer1[0].bn2, SplitBatchNorm2d)
    assert set(m.backbone.state_dict()) == set(ResNet(18).state_dict())


def test_single_process_shuffle_bn():
    m = _tiny(bn_group=2)
    x = _views(6)["view2"]
    torch.manual_seed(3)
    k = m.encode_key(x)
    torch.manual_seed(3)
    perm = torch.randperm(6)
    direct = m._encode(m.key_backbone, m.key_head, x[perm])[torch.argsort(perm)]
    torch.testing.assert_close(k, direct)
    unshuffled = m._encode(m.key_backbone, m.key_head, x)
    assert not torch.allclose(k, unshuffled, atol=1e-4)  # other BN groups -> other keys
    m.eval()  # running statistics: the shuffle is undone exactly
    torch.testing.assert_close(m.encode_key(x), m._encode(m.key_backbone, m.key_head, x), rtol=1e-5, atol=1e-6)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        m = _tiny(queue_size=8)
        batch = _views(2, s=32, seed=10 + rank)
        # different global RNGs per rank (the permutation must come from rank 0); with seed 101 rank 0's
        # second permutation, the one of the training forward, is [2, 0, 3, 1]: it mixes the ranks' samples
        torch.manual_seed(101 if rank == 0 else 7)
        m.eval()  # running BN statistics: keys do not depend on the shuffle, so it must be undone exactly
        k_eval = m.encode_key(batch["view2"])
        direct = m._encode(m.key_backbone, m.key_head, batch["view2"])
        m.train()
        captured = {}
        encode_key = m.encode_key

        def capture(x):
            captured["k"] = encode_key(x)
            return captured["k"]

        m.encode_key = capture
        m(batch)
        with torch.no_grad():  # this rank's batch alone through the (updated) key encoder, per-rank BN
            local = m._encode(m.key_backbone, m.key_head, batch["view2"])
        torch.save(
            {
                "k_eval": k_eval,
                "direct": direct,
                "k": captured["k"],
                "local": local,
                "queue": m.queue,
                "ptr": m.queue_ptr,
            },
            f"{out_dir}/r{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ddp_shuffle_and_gathered_queue(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"r{i}.pt") for i in range(2)]
    for i in range(2):  # shuffle + unshuffle return every rank its own samples' keys
        torch.testing.assert_close(r[i]["k_eval"], r[i]["direct"], rtol=1e-5, atol=1e-6)
    # the queue is the same on every rank and got the keys of all ranks in rank order
    assert torch.equal(r[0]["queue"], r[1]["queue"]) and int(r[0]["ptr"]) == int(r[1]["ptr"]) == 4
    torch.testing.assert_close(r[0]["queue"][:, :4], torch.cat([r[0]["k"], r[1]["k"]]).t(), rtol=0, atol=0)
    init = _tiny(queue_size=8).queue
    assert torch.equal(r[0]["queue"][:, 4:], init[:, 4:])
    # train-mode keys were computed in a shuffled batch: not the keys of the rank's own batch
    assert not torch.allclose(torch.cat([r[0]["k"], r[1]["k"]]), torch.cat([r[0]["local"], r[1]["local"]]), atol=1e-3)


# ------------------------------------------------------------------------------ augmentations


def test_random_resized_crop_params_follow_torchvision():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = I.random_resized_crop_params(60, 90, (0.2, 1.0), (3 / 4, 4 / 3), g)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 90
        assert 0.2 * 5400 * 0.8 <= h * w <= 5400
    # impossible scale: the fallback is the centred box with the aspect clamped into the ratio range
    assert I.random_resized_crop_params(10, 100, (1.0, 1.0), (3 / 4, 4 / 3), g) == (0, 43, 10, 13)
    assert I.random_resized_crop_params(100, 10, (1.0, 1.0), (3 / 4, 4 / 3), g) == (43, 0, 13, 10)


def test_color_ops():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 9, 11, dtype=torch.float64, generator=g)
    torch.testing.assert_close(I.hsv_to_rgb(I.rgb_to_hsv(x)), x)
    torch.testing.assert_close(I.adjust_hue(x, 0.0), x)
    torch.testing.assert_close(I.adjust_hue(I.adjust_hue(x, 0.3), -0.3), x)
    # a hue rotation by 1/3 turn maps pure red to pure green
    red = torch.zeros(3, 1, 1, dtype=torch.float64)
    red[0] = 1
    torch.testing.assert_close(I.adjust_hue(red, 1 / 3).flatten(), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    gray = I.rgb_to_grayscale(x)
    torch.testing.assert_close(gray[:, 0], 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    torch.testing.assert_close(I.adjust_saturation(x, 0.0), gray.expand_as(x))
    torch.testing.assert_close(I.adjust_saturation(x, 1.0), x)
    torch.testing.assert_close(I.adjust_contrast(x, 0.0)[0], gray[0].mean().expand(3, 9, 11))
    torch.testing.assert_close(I.adjust_brightness(x, 0.5), x * 0.5)
    assert torch.equal(I.color_jitter(x, (0.0, 0.0, 0.0, 0.0), g), x)
    y = I.color_jitter(x, (0.4, 0.4, 0.4, 0.1), g)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.allclose(y, x)


def test_gaussian_blur_matches_a_replicate_padded_convolution():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 20, 17, dtype=torch.float64, generator=g)
    for sigma in (0.1, 0.7, 2.0):
        r = math.ceil(3 * sigma)
        t = torch.arange(-r, r + 1, dtype=torch.float64)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        y = F.pad(x[:, None], (r, r, 0, 0), mode="replicate")
        y = F.conv2d(y, k.view(1, 1, 1, -1))
        y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))[:, 0]
        torch.testing.assert_close(I.gaussian_blur(x, sigma), y)
    const = torch.full((3, 8, 8), 0.3, dtype=torch.float64)
    torch.testing.assert_close(I.gaussian_blur(const, 1.5), const)


def test_moco_views_shapes_ranges_and_seeding():
    cfg = ImageDataConfig(crop_size=40)
    img = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    a = I.two_views(img, cfg, torch.Generator().manual_seed(5))
    b = I.two_views(img, cfg, torch.Generator().manual_seed(5))
    c = I.two_views(img, cfg, torch.Generator().manual_seed(6))
    for v in a:
        assert v.shape == (3, 40, 40) and v.dtype == torch.float32
        rgb = imagenet_denormalize(v)
        assert rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], c[0])
    # with every random operation off but the crop, a full-scale crop of a square image is the resize
    plain = ImageDataConfig(
        crop_size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0, gray_p=0, blur_p=0, hflip=False
    )
    sq = torch.from_numpy(img[:32, :32]).permute(2, 0, 1).contiguous()
    v = I.moco_view(sq, plain, torch.Generator().manual_seed(0))
    torch.testing.assert_close(imagenet_denormalize(v), sq.float() / 255, rtol=0, atol=1e-6)
    gray_cfg = ImageDataConfig(crop_size=16, gray_p=1.0)
    gv = imagenet_denormalize(I.moco_view(sq, gray_cfg, torch.Generator().manual_seed(0)))
    torch.testing.assert_close(gv[0], gv[1], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------- sources and loader


def _write_images(root: Path, n: int, size=(40, 52)) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        sub = root / f"class{i % 2}" / ("deep" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"img{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def _collect(loader, n=None):
    """The first ``n`` batches of one pass over ``loader`` (all of them when ``n`` is None)."""
    return list(itertools.islice(loader, n))


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        all(torch.equal(x[key], y[key]) for key in ("index", "view1", "view2")) for x, y in zip(a, b)
    )


def test_folder_source_and_exact_mid_epoch_resume(tmp_path):
    paths = _write_images(tmp_path / "imgs", 10)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    cfg = ImageDataConfig(source="folder", root=str(tmp_path / "imgs"), batch_size=3, num_workers=0, crop_size=24)
    full = cfg.build_loader(seed=4)
    assert len(full) == 3 and sorted(full.names) == sorted(str(p) for p in paths)
    epoch0 = _collect(full)
    epoch1 = _collect(full)
    assert full.epoch == 2 and len(epoch0) == 3
    idx0 = torch.cat([b["index"] for b in epoch0])
    assert len(set(idx0.tolist())) == 9  # one pass, drop_last
    assert not torch.equal(idx0, torch.cat([b["index"] for b in epoch1]))  # a new permutation each epoch
    b = epoch0[0]
    assert b["view1"].shape == (3, 3, 24, 24) and b["index"].dtype == torch.int64

    part = cfg.build_loader(seed=4)
    _collect(part, 2)  # stop after 2 of 3 batches of epoch 0
    state = part.state_dict()
    assert state["epoch"] == 0 and state["batch"] == 2
    resumed = cfg.build_loader(seed=4)
    resumed.load_state_dict(state)
    rest = _collect(resumed)
    assert _same(rest, epoch0[2:])
    assert _same(_collect(resumed), epoch1)
    # batches do not depend on num_workers
    w1 = ImageDataConfig(source="folder", root=str(tmp_path / "imgs"), batch_size=3, num_workers=1, crop_size=24)
    assert _same(_collect(w1.build_loader(seed=4)), epoch0)


def test_loader_ranks_are_disjoint():
    cfg = ImageDataConfig(source="synthetic", synthetic_images=12, batch_size=2, num_workers=0, crop_size=16)
    ranks = [cfg.build_loader(seed=0, rank=r, world_size=2) for r in range(2)]
    got = [set(torch.cat([b["index"] for b in _collect(l)]).tolist()) for l in ranks]
    assert len(ranks[0]) == 3 and not got[0] & got[1] and len(got[0] | got[1]) == 12


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(DataSourceError, match=r"image folder '.*missing' does not exist \(set it with --set data.root"):
        ImageDataConfig(source="folder", root=str(tmp_path / "missing")).build_loader(seed=0)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataSourceError, match=r"'.*empty' holds no .jpg/.jpeg/.png files"):
        ImageDataConfig(source="folder", root=str(tmp_path / "empty")).build_loader(seed=0)
    with pytest.raises(ConfigError, match="needs a root"):
        ImageDataConfig(source="folder").build_loader(seed=0)
    _write_images(tmp_path / "few", 2)
    with pytest.raises(ConfigError, match="no full batch of 4"):
        ImageDataConfig(source="folder", root=str(tmp_path / "few"), batch_size=4).build_loader(seed=0)
    with pytest.raises(ConfigError, match="data.scale"):
        ImageDataConfig(source="synthetic", scale=(0.5, 0.2)).validate()
    with pytest.raises(ConfigError, match="data.on_error"):
        ImageDataConfig(source="synthetic", on_error="ignore").validate()
    with pytest.raises(DataSourceError, match="no readable video"):
        ImageDataConfig(source="video", root=str(tmp_path / "few")).build_loader(seed=0)


def test_unreadable_image_is_named(tmp_path):
    _write_images(tmp_path / "imgs", 4)
    bad = tmp_path / "imgs" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    cfg = ImageDataConfig(
        source="folder", root=str(tmp_path / "imgs"), batch_size=5, num_workers=0, crop_size=16, on_error="raise"
    )
    with pytest.raises(OSError, match=r"cannot read image .*broken\.jpg"):
        _collect(cfg.build_loader(seed=0))
    cfg.on_error = "skip"
    loader = cfg.build_loader(seed=0)
    with pytest.warns(SourceWarning, match=r"broken\.jpg"):
        batches = _collect(loader)
    assert loader.skipped == 1 and batches[0]["view1"].shape == (5, 3, 16, 16)
    bad_i = loader.names.index(str(bad))
    assert bad_i not in batches[0]["index"].tolist()


def _write_video(path: Path, n: int, seed: int) -> None:
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        st.options = {"g": "5", "crf": "18"}
        for _ in range(n):
            fr = av.VideoFrame.from_ndarray((rng.random((48, 64, 3)) * 255).astype(np.uint8), format="rgb24")
            for p in st.encode(fr):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


def test_video_frame_source_and_cache(tmp_path):
    (tmp_path / "v" / "sub").mkdir(parents=True)
    _write_video(tmp_path / "v" / "a.mp4", 12, 0)
    _write_video(tmp_path / "v" / "sub" / "b.mp4", 7, 1)
    src = I.VideoFrameSource(str(tmp_path / "v"), frame_step=3)
    assert [f for _, f in src.items] == [0, 3, 6, 9, 0, 3, 6]
    assert src.names[1].endswith("a.mp4#3")
    capped = I.VideoFrameSource(str(tmp_path / "v"), frame_step=1, max_per_video=3)
    assert [f for _, f in capped.items] == [0, 6, 11, 0, 3, 6]
    cached = I.VideoFrameSource(str(tmp_path / "v"), frame_step=3, cache_short_side=48)
    small = I.VideoFrameSource(str(tmp_path / "v"), frame_step=3, cache_short_side=24)
    for i in range(len(src)):
        a = src.read(i)
        assert a.shape == (48, 64, 3) and np.array_equal(a, cached.read(i))
        assert small.read(i).shape == (24, 32, 3)
    cfg = ImageDataConfig(
        source="video", root=str(tmp_path / "v"), frame_step=3, batch_size=2, num_workers=0, crop_size=16
    )
    assert len(_collect(cfg.build_loader(seed=0))) == 3


def _hf_dataset(tmp_path: Path, n: int = 6) -> Path:
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)) for _ in range(n)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"image": imgs, "label": list(range(n))}, features=features)
    ds.save_to_disk(str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_hf_image_dataset_map_style_and_streaming(tmp_path):
    root = _hf_dataset(tmp_path)
    cfg = ImageDataConfig(source="hf", root=str(root), batch_size=2, num_workers=0, crop_size=16)
    loader = cfg.build_loader(seed=0)
    assert isinstance(loader, I.ImageLoader) and len(loader) == 3 and loader.source.column == "image"
    batches = _collect(loader)
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(6))
    assert batches[0]["view2"].shape == (2, 3, 16, 16)
    with pytest.raises(ConfigError, match="no column 'pixels'"):
        ImageDataConfig(source="hf", root=str(root), hf_column="pixels").build_loader(seed=0)

    cfg.hf_streaming = True
    stream = cfg.build_loader(seed=0)
    assert isinstance(stream, I.StreamingImageLoader)
    s_all = _collect(stream)
    assert len(s_all) == 3 and s_all[0]["view1"].shape == (2, 3, 16, 16)
    part = cfg.build_loader(seed=0)
    _collect(part, 1)
    resumed = cfg.build_loader(seed=0)
    resumed.load_state_dict(part.state_dict())
    assert _same(_collect(resumed), s_all[1:])


def test_hf_without_datasets_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ConfigError, match="pip install datasets"):
        ImageDataConfig(source="hf", root="some/dataset").build_loader(seed=0)


# --------------------------------------------------------------------------------------- model


def test_features_are_stt_res4_at_stride_8():
    m = _tiny()
    m.eval()
    x = torch.randn(2, 3, 64, 48)
    f = m.features(x)
    assert f.shape == (2, 256, 8, 6)
    # the same as STT's d8 test backbone (strides (1, 2, 2, 1), no stem pool, res4 = layer3) loaded from it
    test_model = ResNet(18, strides=(1, 2, 2, 1), pool="none", out_stages=("layer3",)).eval()
    report = load_backbone_weights(test_model, m.state_dict())
    assert not report.missing and report.prefix == "backbone."
    torch.testing.assert_close(f, test_model(x)["layer3"])


def test_loss_falls_on_a_fixed_batch_with_a_fixed_queue():
    m = _tiny(queue_size=32, momentum=0.99, bn_group=2)
    batch = _views(8, s=32, seed=3)
    queue, ptr = m.queue.clone(), m.queue_ptr.clone()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    losses = []
    for step in range(6):
        with torch.no_grad():
            m.queue.copy_(queue)
            m.queue_ptr.copy_(ptr)
        torch.manual_seed(step)
        loss = m(batch)["infonce"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_config_validation():
    for bad in (
        dict(depth=101),
        dict(momentum=1.0),
        dict(temperature=0.0),
        dict(queue_size=0),
        dict(feature_stage="layer5"),
        dict(feature_pool="mean"),
        dict(bn_group=-1),
    ):
        with pytest.raises(ValueError):
            MoCoConfig(**bad)


# ------------------------------------------------------------------------------------- recipes


def test_recipes_have_the_paper_settings(tmp_path, monkeypatch):
    from tritoncorr.engine.recipe import load_recipe

    monkeypatch.setenv("TRITONCORR_DATA", str(tmp_path))
    d = load_recipe(f"{RECIPE}:default")
    m, o, data = d.method, d.optim, d.data
    assert (m.depth, m.dim, m.mlp, m.queue_size, m.momentum, m.temperature) == (50, 128, True, 65536, 0.999, 0.2)
    assert (o.name, o.lr, o.momentum, o.weight_decay) == ("sgd", 0.03, 0.9, 1e-4)
    assert not (o.no_decay_bias or o.no_decay_bias_norm) and d.schedule.name == "cosine" and not d.sync_bn
    assert d.steps == 200 * 5004 and data.batch_size == 256 and data.crop_size == 224
    assert data.scale == (0.2, 1.0) and data.jitter == (0.4, 0.4, 0.4, 0.1) and data.jitter_p == 0.8
    assert data.gray_p == 0.2 and data.blur_sigma == (0.1, 2.0) and data.blur_p == 0.5 and data.hflip
    assert data.root == str(tmp_path / "ImageNet" / "train")
    with pytest.raises(DataSourceError, match=r"ImageNet/train' does not exist \(set it with --set data.root="):
        data.build_loader(seed=0)
    c = load_recipe(f"{RECIPE}:cpu", ["data.root=/x"])
    assert c.name == "stt-spatial-cpu" and c.method.depth == 18 and c.data.source == "video"
    assert c.data.batch_size % c.method.bn_group == 0 and c.method.queue_size % c.data.batch_size == 0


def test_smoke_recipe_trains_and_exports_a_torchvision_backbone(tmp_path):
    from safetensors.torch import load_file

    from tritoncorr.engine.loop import train
    from tritoncorr.engine.recipe import load_recipe

    cfg = load_recipe(f"{RECIPE}:smoke", ["steps=2"])
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == 2 and all(math.isfinite(r["infonce"]) for r in result.rows)
    path = tmp_path / "run" / "model.safetensors"
    sd = load_file(str(path))
    assert int(sd["queue_ptr"]) == 2 * 4  # the queue travels with the checkpoint
    for model in (ResNet(18), ResNet(18, strides=(1, 2, 2, 4), pool="none", out_stages=("layer2", "layer3", "layer4"))):
        report = load_backbone_weights(model, path, strict=True)
        assert report.prefix == "backbone." and not report.missing and len(report.loaded) == len(model.state_dict())
        assert not any(k.startswith("backbone.") for k in report.ignored)
        for k, v in model.state_dict().items():
            assert torch.equal(v, sd["backbone." + k])
    # the run's weights evaluate as MoCo (its layer3 features, STT's preset), not as a plain DUL backbone
    from tritoncorr.methods.inference import load_feature_model

    fm = load_feature_model(path)
    assert (fm.method, fm.preset, fm.color, type(fm.module).__name__) == ("moco", "stt", "rgb", "MoCo")
    assert any(k.startswith("key_backbone.") for k in sd) and "queue" in sd
    # resume is exact: 1 step, then --resume to 2, gives the same weights, key encoder and queue
    train(cfg, tmp_path / "split", progress=False, stop_at=1)
    train(cfg, tmp_path / "split", progress=False, resume=True)
    resumed = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert resumed.keys() == sd.keys() and all(torch.equal(resumed[k], sd[k]) for k in sd)

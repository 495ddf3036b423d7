"""Colour conversion, channel dropout, clip augmentations and DUL's view transform (bookkeeping)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tritoncorr.data import transforms as T


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Lab
# ----------------------------------------------------------------------------------------------


def _lab_reference_f64(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab (D65, OpenCV's constants) in float64, written independently of the library: (..., 3) HWC."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    X = (0.412453 * lin[..., 0] + 0.357580 * lin[..., 1] + 0.180423 * lin[..., 2]) / 0.950456
    Y = 0.212671 * lin[..., 0] + 0.715160 * lin[..., 1] + 0.072169 * lin[..., 2]
    Z = (0.019334 * lin[..., 0] + 0.119193 * lin[..., 1] + 0.950227 * lin[..., 2]) / 1.088754

    def f(t):
        return np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16 / 116)

    L = np.where(Y > 0.008856, 116 * np.cbrt(Y) - 16, 903.3 * Y)
    return np.stack([L, 500 * (f(X) - f(Y)), 200 * (f(Y) - f(Z))], axis=-1)


def _random_rgb(seed: int, h: int = 37, w: int = 41) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.random((h, w, 3), dtype=np.float32)
    img[0, :4] = 0.0  # black, white, greys and values at the companding/cube-root thresholds
    img[1, :4] = 1.0
    img[2, :6] = np.array([0.04045, 0.04, 0.041, 0.008, 0.5, 0.9], dtype=np.float32)[:, None]
    img[3, :3] = np.eye(3, dtype=np.float32)
    return img


def test_rgb_to_lab_matches_cie_reference():
    img = _random_rgb(0)
    got = T.rgb_to_lab(torch.from_numpy(img).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    ref = _lab_reference_f64(img.astype(np.float64))
    # fp32 evaluation of the same formula: errors ~1e-5 of the 0..100 range
    assert np.abs(got - ref).max() < 1e-3
    assert got[0, 0] == pytest.approx([0, 0, 0], abs=1e-4)
    assert got[1, 0] == pytest.approx([100, 0, 0], abs=1e-2)  # white point -> L=100, a=b=0
    assert abs(got[2, 4, 1]) < 1e-4 and abs(got[2, 4, 2]) < 1e-4  # greys have no chroma
    # batched (..., 3, H, W) with a leading batch/time dims, and fp64 input stays fp64
    x = torch.from_numpy(np.stack([img, img[::-1].copy()])).permute(0, 3, 1, 2).double()[:, None]
    lab = T.rgb_to_lab(x)
    assert lab.dtype == torch.float64 and lab.shape == (2, 1, 3, 37, 41)
    np.testing.assert_allclose(lab[0, 0].permute(1, 2, 0).numpy(), ref, atol=1e-9)


def test_rgb_uint8_to_lab_matches_float_path():
    x = torch.randint(0, 256, (2, 3, 9, 11), dtype=torch.uint8)
    x[0, :, 0, 0] = 0
    x[0, :, 0, 1] = 255
    x[0, :, 0, 2] = 10  # at the companding threshold (10/255 < 0.04045 < 11/255)
    torch.testing.assert_close(T.rgb_uint8_to_lab(x), T.rgb_to_lab(x.float() / 255), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="uint8"):
        T.rgb_uint8_to_lab(x.float())


def test_rgb_to_lab_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    img = _random_rgb(1, 64, 64)
    ref = cv2.cvtColor(img, cv2.COLOR_RGB2Lab)
    got = T.rgb_to_lab(torch.from_numpy(img).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    diff = np.abs(got - ref)
    if int(cv2.__version__.split(".")[0]) >= 5:
        # OpenCV 5's float RGB2Lab is table-interpolated and quantised (a, b are multiples of 1/64;
        # a grey 0.2 gives a=0.0625): measured max |diff| 0.21 (L), 0.59 (a), 0.42 (b), mean 0.08 on
        # 65k random pixels, while our values equal the exact CIE formula to 1e-5 (test above).
        assert diff[..., 0].max() < 0.3 and diff[..., 1:].max() < 0.8
        assert diff.mean() < 0.12
    else:  # OpenCV 3/4 (what MAST/STT/LIIR used): spline tables accurate to ~1e-4
        assert diff.max() < 2e-3


def test_lab_normalize_roundtrip_and_values():
    lab = torch.tensor([50.0, 127.0, -127.0]).view(3, 1, 1)
    assert T.lab_normalize(lab).flatten().tolist() == pytest.approx([0.0, 1.0, -1.0])
    x = torch.randn(2, 3, 5, 7) * 30
    torch.testing.assert_close(T.lab_denormalize(T.lab_normalize(x)), x)
    rgb = torch.rand(2, 3, 5, 7)
    torch.testing.assert_close(T.imagenet_denormalize(T.imagenet_normalize(rgb)), rgb)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        T.lab_normalize(torch.zeros(2, 4, 5, 5))


def test_channel_dropout():
    lab = torch.randn(3, 2, 3, 5, 6)
    clean = lab.clone()
    seen = set()
    for seed in range(20):
        out, k = T.channel_dropout(lab, _gen(seed))
        assert k in (1, 2)
        seen.add(k)
        torch.testing.assert_close(lab, clean)  # input untouched
        assert torch.all(out[:, :, k] == 0)  # the same channel for every clip and frame
        keep = [c for c in range(3) if c != k]
        torch.testing.assert_close(out[:, :, keep], 1.5 * clean[:, :, keep])
        out2, k2 = T.channel_dropout(lab, _gen(seed))
        assert k2 == k and torch.equal(out, out2)
    assert seen == {1, 2}


# ----------------------------------------------------------------------------------------------
# Clip augmentations
# ----------------------------------------------------------------------------------------------


def _ramp_clip(t: int, h: int, w: int) -> torch.Tensor:
    """Frames that differ by a constant: frame k = base + 0.01 k, base asymmetric left/right."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    base = torch.stack([xx / (2 * w), yy / (2 * h), (xx * yy) / (2 * h * w)])
    return torch.stack([base + 0.01 * k for k in range(t)])


@pytest.mark.parametrize("mode", ["random", "center", "resized", "full"])
def test_augment_clip_same_params_for_all_frames(mode):
    clip = _ramp_clip(4, 45, 61)
    flips = set()
    for seed in range(6):
        out = T.augment_clip(
            clip,
            crop_mode=mode,
            crop_size=23,
            short_side=(29, 37),
            area_range=(0.6, 1.0),
            aspect_range=(1.2, 1.5),
            flip=True,
            generator=_gen(seed),
        )
        assert out.shape == (4, 3, 23, 23)
        # resizing/cropping/flipping are linear and the same for every frame: frames still differ by 0.01 k
        for k in range(1, 4):
            torch.testing.assert_close(out[k] - out[0], torch.full_like(out[0], 0.01 * k), atol=1e-5, rtol=0)
        flips.add(bool(out[0, 0, :, 0].mean() > out[0, 0, :, -1].mean()))  # channel 0 increases with x
    assert flips == {True, False}


def test_uint8_resize_follows_pil_and_float():
    """The uint8 path (used by the loader) is PIL's BILINEAR (DUL) within one grey level."""
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (47, 83, 3), dtype=np.uint8)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    for size in ((29, 51), (61, 97)):  # shrink (anti-aliased) and enlarge
        got = T.resize(x, size)
        assert got.dtype == torch.uint8 and got.shape == (1, 3, *size)
        pil = np.asarray(Image.fromarray(img).resize(size[::-1], Image.BILINEAR))
        assert np.abs(got[0].permute(1, 2, 0).numpy().astype(int) - pil.astype(int)).max() <= 1
    clip = torch.from_numpy(rng.integers(0, 256, (3, 3, 40, 52), dtype=np.uint8))
    for mode in ("random", "resized"):
        kw = dict(
            crop_mode=mode, crop_size=17, short_side=(20, 26), area_range=(0.6, 1.0), aspect_range=(1.0, 1.4), flip=True
        )
        a = T.augment_clip(clip, generator=_gen(4), **kw)
        b = T.augment_clip(clip.float() / 255, generator=_gen(4), **kw)
        assert a.dtype == torch.uint8
        assert (a.float() / 255 - b).abs().max() <= 1.01 / 255


def test_random_crop_is_resize_then_crop():
    clip = torch.rand(2, 3, 40, 50)
    out = T.augment_clip(
        clip,
        crop_mode="random",
        crop_size=24,
        short_side=(30, 31),
        area_range=(0.6, 1.0),
        aspect_range=(1.0, 1.0),
        flip=False,
        generator=_gen(3),
    )
    resized = T.resize_shorter_side(clip, 30)
    assert resized.shape[-2:] == (30, 37)  # int(30 * 50 / 40)
    hits = [
        (i, j)
        for i in range(30 - 24 + 1)
        for j in range(37 - 24 + 1)
        if torch.allclose(resized[..., i : i + 24, j : j + 24], out)
    ]
    assert len(hits) == 1


def test_short_side_and_resized_crop_ranges():
    g = _gen(0)
    draws = {T.sample_short_side((256, 260), g) for _ in range(400)}
    assert draws == {256, 257, 258, 259}
    assert {T.sample_short_side((256, 256), g) for _ in range(10)} == {256}
    for _ in range(200):
        top, left, h, w = T.random_resized_crop_box(48, 80, (0.6, 1.0), (1.5, 2.0), g)
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 80
        if (h, w) != (48, 48):  # not the fallback
            assert 1.5 - 0.1 <= w / h <= 2.0 + 0.1
            assert 0.6 * 48 * 80 * 0.9 <= w * h <= 48 * 80


# ----------------------------------------------------------------------------------------------
# DUL view transform
# ----------------------------------------------------------------------------------------------


def _params_from_affine(a: torch.Tensor, S: int):
    f = 1 if a[0, 0] > 0 else -1
    s = float(a[1, 1])
    side = round(s * S)
    dy = float(a[1, 2]) * S / 2
    dx = float(a[0, 2]) * f * S / 2
    top = round(dy + S / 2 - side / 2)
    left = round(dx + S / 2 - side / 2)
    return f, side, top, left


def test_view_transform_matrix_structure_and_determinism():
    S = 32
    clips = torch.rand(64, 2, 3, S, S)
    views, A = T.random_view_transform(clips, _gen(0))
    views2, A2 = T.random_view_transform(clips, _gen(0))
    assert torch.equal(views, views2) and torch.equal(A, A2)
    assert views.shape == clips.shape and A.shape == (64, 2, 3) and A.dtype == torch.float32
    assert torch.all(A[:, 0, 1] == 0) and torch.all(A[:, 1, 0] == 0)
    torch.testing.assert_close(A[:, 0, 0].abs(), A[:, 1, 1])
    side = A[:, 1, 1] * S
    torch.testing.assert_close(side, side.round())  # the true crop factor int(s*S)/S
    assert torch.all((side >= S // 2) & (side <= S))
    assert set(torch.sign(A[:, 0, 0]).tolist()) == {-1.0, 1.0}
    # the crop stays inside the frame: |t| <= 1 - s
    assert torch.all(A[:, 0, 2].abs() <= 1 - A[:, 1, 1] + 1e-6) and torch.all(A[:, 1, 2].abs() <= 1 - A[:, 1, 1] + 1e-6)
    _, A_noflip = T.random_view_transform(clips, _gen(1), flip_p=0.0)
    assert torch.all(A_noflip[:, 0, 0] > 0)
    with pytest.raises(ValueError, match="zoom-in"):
        T.random_view_transform(clips, _gen(0), scale_range=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"\(B, T, 3, S, S\)"):
        T.random_view_transform(clips[:, :, :, :, :-1], _gen(0))


def test_view_transform_equals_flip_crop_resize():
    S = 29
    clips = torch.rand(6, 3, 3, S, S)
    views, A = T.random_view_transform(clips, _gen(5))
    for b in range(6):
        f, side, top, left = _params_from_affine(A[b], S)
        x = clips[b].flip(-1) if f < 0 else clips[b]
        ref = F.interpolate(
            x[..., top : top + side, left : left + side], size=(S, S), mode="bilinear", align_corners=False
        )
        # interior: identical; the outermost ring samples past the crop's last pixel centre, where
        # crop-then-resize replicates the crop edge but the view uses the real neighbouring pixel
        torch.testing.assert_close(views[b][..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=2e-5, rtol=0)
        if side == S:
            torch.testing.assert_close(views[b], ref, atol=2e-5, rtol=0)
    # warp_to_view with the recorded matrix reproduces the view
    re = T.warp_to_view(clips.reshape(6, 9, S, S), A, mode="bilinear", padding_mode="border")
    torch.testing.assert_close(re.reshape(clips.shape), views, atol=1e-6, rtol=0)


def test_view_transform_maps_points_back():
    """A dot moved by the view lands, mapped back through A, on the original dot (one-hot dot test)."""
    S = 31
    g = torch.Generator().manual_seed(11)
    B = 16
    ys = torch.randint(3, S - 3, (B,), generator=g)
    xs = torch.randint(3, S - 3, (B,), generator=g)
    img = torch.zeros(B, 1, 3, S, S)
    img[torch.arange(B), 0, :, ys, xs] = 1.0
    views, A = T.random_view_transform(img, _gen(2))
    errs = []
    for b in range(B):
        v = views[b, 0, 0]
        if v.max() < 0.2:  # the dot fell outside the crop
            continue
        # sub-pixel dot position in the view: weighted centroid of the bilinear footprint
        w = v / v.sum()
        yy, xx = torch.meshgrid(
            torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij"
        )
        p_view = torch.stack([(w * xx).sum(), (w * yy).sum()])
        p_main = T.to_pixels(T.affine_apply(A[b : b + 1], T.to_normalised(p_view, S)[None, None])[0, 0], S)
        # the centroid of a sampled tent is within ~0.1 px of its peak; a wrong flip sign, offset
        # normalisation or the reference's truncated scale would be off by 0.5 px or (much) more
        err = (p_main - torch.stack([xs[b], ys[b]]).float()).abs().max()
        assert err < 0.2, (b, p_main, xs[b], ys[b])
        errs.append(float(err))
    assert len(errs) >= 4 and sum(errs) / len(errs) < 0.1


def test_view_transform_coordinate_ramp_is_exact():
    """Images holding their own pixel coordinates: the view's values at pixel u equal A(u)."""
    S = 24
    yy, xx = torch.meshgrid(torch.arange(S, dtype=torch.float64), torch.arange(S, dtype=torch.float64), indexing="ij")
    coords = torch.stack([xx, yy, xx * 0]).expand(8, 1, 3, S, S).contiguous()
    views, A = T.random_view_transform(coords, _gen(9))
    u = T.to_normalised(torch.stack([xx, yy], -1).reshape(1, -1, 2), S).expand(8, -1, -1)
    mapped = T.to_pixels(T.affine_apply(A.double(), u), S).reshape(8, S, S, 2)
    # exclude the outermost view pixels, where bilinear sampling clamps at the crop's border
    inner = (slice(None), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(views[:, 0, 0][inner], mapped[..., 0][inner], atol=1e-9, rtol=0)
    torch.testing.assert_close(views[:, 0, 1][inner], mapped[..., 1][inner], atol=1e-9, rtol=0)


def test_warp_to_view_nearest_labels_follow_content():
    """Warping the main view's label map (nearest, at a coarser grid) agrees with the view's content."""
    S, h = 32, 8
    labels = torch.randint(0, 5, (4, 1, h, h)).float()
    img = F.interpolate(labels, size=(S, S), mode="nearest")[:, None].expand(4, 1, 3, S, S).contiguous()
    views, A = T.random_view_transform(img, _gen(4), scale_range=(1.0, 1.0))  # flip only: exact on the grid
    warped = T.warp_to_view(labels, A, mode="nearest")
    torch.testing.assert_close(F.interpolate(warped, size=(S, S), mode="nearest"), views[:, 0, :1])
    with pytest.raises(ValueError, match=r"\(4, 2, 3\)"):
        T.warp_to_view(labels, A[:3])
    # bf16 maps are sampled with an fp32 grid: nearest picks the same cells as in fp32
    torch.testing.assert_close(T.warp_to_view(labels.bfloat16(), A).float(), warped)


@pytest.mark.gpu
def test_view_transform_on_cuda_matches_cpu():
    """On CUDA with a CUDA generator: same bookkeeping, and the CPU warp with the same matrix agrees."""
    S = 64
    clips = torch.rand(4, 5, 3, S, S)
    g = torch.Generator(device="cuda").manual_seed(0)
    views, A = T.random_view_transform(clips.cuda(), g)
    assert views.is_cuda and A.is_cuda
    cpu = T.warp_to_view(clips.reshape(4, 15, S, S), A.cpu(), mode="bilinear", padding_mode="border")
    torch.testing.assert_close(views.cpu(), cpu.reshape(clips.shape), atol=1e-5, rtol=0)
    lab = T.lab_normalize(T.rgb_to_lab(clips.cuda()))
    torch.testing.assert_close(lab.cpu(), T.lab_normalize(T.rgb_to_lab(clips)), atol=1e-4, rtol=0)
    out, k = T.channel_dropout(lab, g)
    assert torch.all(out[:, :, k] == 0)

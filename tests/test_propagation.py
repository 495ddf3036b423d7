"""Video label propagation (CRW/DUL/STT protocol) on top of the kNN-softmax op."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.kernel_harness import fresh_generator
from tritoncorr.propagation import (
    PRESETS,
    PropagationConfig,
    context_indices,
    decode_labels,
    encode_labels,
    labels_to_feature_grid,
    labels_to_image,
    mast_reference_indices,
    propagate,
    reference_indices,
)


def _naive_propagate(feats, first, *, context, radius, topk, temperature, window, unrestricted_first, stt=False):
    """Loop over frames, query pixels, context slots and positions; stable order on ties.

    Slots: CRW/DUL ``[0] + [max(u, 0) for u in t-context .. t-1]``, or with ``stt`` STT's
    VanillaTracker (VT:198-214): frame 0, then frames ``max(0, t - precede_frames) .. t-1``."""
    t_len, _, h, w = feats.shape
    out = [first.double()]
    f = feats.double()
    for t in range(1, t_len):
        if stt:
            slots = [0] + list(range(max(0, t - context), t))
        else:
            slots = [0] + [max(u, 0) for u in range(t - context, t)]
        pred = torch.zeros_like(first, dtype=torch.float64)
        for y in range(h):
            for x in range(w):
                cands = []
                for s, fr in enumerate(slots):
                    for yy in range(h):
                        for xx in range(w):
                            dy, dx = yy - y, xx - x
                            if window == "disc":
                                inside = dy * dy + dx * dx < radius * radius
                            else:
                                inside = abs(dy) <= radius and abs(dx) <= radius
                            if (s == 0 and unrestricted_first) or inside:
                                score = float(f[t, :, y, x] @ f[fr, :, yy, xx]) / temperature
                                cands.append((-score, s, yy, xx, fr))
                cands.sort(key=lambda c: c[:4])
                top = cands[:topk]
                wts = torch.softmax(torch.tensor([-c[0] for c in top], dtype=torch.float64), 0)
                pred[:, y, x] = sum(wts[i] * out[fr][:, yy, xx] for i, (_, _, yy, xx, fr) in enumerate(top))
        out.append(pred)
    return torch.stack(out).float()


def _video(t_len, c, h, w, lab, seed=None):
    g = fresh_generator(seed)
    feats = F.normalize(torch.randn(t_len, c, h, w, generator=g), dim=1)
    first = torch.softmax(3 * torch.randn(lab, h, w, generator=g), dim=0)
    return feats, first


def test_context_indices():
    assert context_indices(1, 20) == [0] * 21
    assert context_indices(5, 20) == [0] * 17 + [1, 2, 3, 4]
    assert context_indices(25, 20) == [0] + list(range(5, 25))
    assert context_indices(3, 0) == [0]


@pytest.mark.parametrize(
    "window, radius, unrestricted_first",
    [("disc", 2, True), ("square", 1, False), ("square", 2, True)],
)
def test_propagate_matches_pixel_loop(window, radius, unrestricted_first):
    # 6 frames with a context of 3: frame 0 duplicated into the early slots, soft labels fed back
    feats, first = _video(6, 4, 4, 5, 3)
    kw = dict(context=3, radius=radius, topk=4, temperature=0.2, window=window, unrestricted_first=unrestricted_first)
    out = propagate(feats, first, **kw)
    assert out.shape == (6, 3, 4, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], first)
    torch.testing.assert_close(out, _naive_propagate(feats, first, **kw), atol=1e-5, rtol=1e-5)


def test_identical_frames_reproduce_labels_exactly():
    """stt.md §8: identical context frames, distinct per-position features -> top-10 all hit the own
    position, so one-hot labels are reproduced exactly in every frame."""
    g = fresh_generator()
    h, w = 6, 7
    base = F.normalize(torch.randn(32, h, w, generator=g), dim=0)
    feats = base[None].expand(8, -1, -1, -1).contiguous()
    onehot = F.one_hot(torch.randint(0, 4, (h, w), generator=g), 4).permute(2, 0, 1).float()
    # (STT's reference set holds only 2 copies of frame 0 at t = 1, so its top-10 is not all the own position)
    for name in ("dul", "crw"):
        cfg = dataclasses.replace(PRESETS[name], radius=3)
        out = propagate(feats, onehot, **cfg.as_kwargs())
        torch.testing.assert_close(out, onehot[None].expand(8, -1, -1, -1), atol=1e-6, rtol=0)


def test_soft_labels_stay_convex():
    feats, first = _video(5, 8, 6, 6, 4)
    out = propagate(feats, first, **PRESETS["crw"].as_kwargs())
    torch.testing.assert_close(out.sum(1), torch.ones(5, 6, 6), atol=1e-5, rtol=0)
    assert (out >= 0).all()


def test_bfloat16_features():
    feats, first = _video(4, 16, 5, 6, 2)
    out = propagate(feats.bfloat16(), first, context=2, radius=2, topk=3, temperature=0.1)
    ref = propagate(feats.bfloat16().float(), first, context=2, radius=2, topk=3, temperature=0.1)
    torch.testing.assert_close(out, ref, atol=1e-2, rtol=1e-2)


def test_presets():
    assert PRESETS["dul"] == PRESETS["crw"]
    assert PRESETS["dul"] == PropagationConfig(20, 12, 10, 0.05, "disc", True)  # the defaults are DUL's protocol
    fields = {f.name for f in dataclasses.fields(PropagationConfig)}
    assert set(PRESETS["stt"].as_kwargs()) == fields - {"pad"}
    # STT (stt.md §4.2-4.3): no duplicated frame-0 slots, PIL-nearest labels, half-pixel upsampling, min-max
    assert PRESETS["stt"] == PropagationConfig(
        20,
        12,
        10,
        0.07,
        "square",
        False,
        references="stt",
        label_downsample="nearest",
        upsample_align_corners=False,
        minmax=True,
    )
    # LIIR (liir.md §6.6, §8, unofficial code) and MAST: raw features, tau 1, full window, hard feedback
    for name, radius, compact, pad in (("liir", 14, 2, 4), ("mast", 12, 0, 1)):
        cfg = PRESETS[name]
        assert (cfg.references, cfg.radius, cfg.topk, cfg.temperature, cfg.window, cfg.unrestricted_first) == (
            "mast",
            radius,
            None,
            1.0,
            "square",
            False,
        )
        assert (cfg.feedback, cfg.normalize, cfg.compact, cfg.compact_threshold, cfg.foreground_boost) == (
            "hard",
            False,
            compact,
            0.1,
            1.0,
        )
        assert (cfg.label_downsample, cfg.upsample_align_corners, cfg.minmax, cfg.pad) == ("strided", False, False, pad)
    with pytest.raises(ValueError, match="window"):
        PropagationConfig(window="circle")
    with pytest.raises(ValueError, match="context"):
        PropagationConfig(context=-1)
    with pytest.raises(ValueError, match="full-window"):
        PropagationConfig(topk=None)  # disc window, unrestricted first frame
    with pytest.raises(ValueError, match="needs topk=None"):
        PropagationConfig(compact=2)
    with pytest.raises(ValueError, match="references"):
        PropagationConfig(references="all")
    with pytest.raises(ValueError, match="feedback"):
        PropagationConfig(feedback="argmax")
    with pytest.raises(ValueError, match="pad"):
        PropagationConfig(pad=0)


def test_reference_indices():
    # MAST benchmark.py:81-83 / LIIR evaluate_davis.py:104-106 for target i + 1, transcribed
    def official(i):
        return sorted(set([x for x in [0, 5] if x <= i] + [x for x in range(i, i - 6, -2) if x > 0][::-1]))

    for t in range(1, 60):
        assert mast_reference_indices(t) == official(t - 1) == reference_indices(t, "mast", 20)
        assert len(mast_reference_indices(t)) <= 5
    assert [mast_reference_indices(t) for t in (1, 2, 4, 6, 7, 8, 10, 20)] == [
        [0],
        [0, 1],
        [0, 1, 3],
        [0, 1, 3, 5],
        [0, 2, 4, 5, 6],
        [0, 3, 5, 7],
        [0, 5, 7, 9],
        [0, 5, 15, 17, 19],
    ]
    assert reference_indices(1, "stt", 20) == [0, 0]
    assert reference_indices(5, "stt", 20) == [0, 0, 1, 2, 3, 4]
    assert reference_indices(25, "stt", 20) == [0] + list(range(5, 25))
    assert reference_indices(5, "crw", 20) == context_indices(5, 20)
    with pytest.raises(ValueError):
        reference_indices(3, "ring")


def test_stt_preset_matches_tracker_loop():
    feats, first = _video(7, 4, 4, 5, 3)
    cfg = dataclasses.replace(PRESETS["stt"], context=3, radius=1, topk=4)
    out = propagate(feats, first, **cfg.as_kwargs())
    kw = dict(context=3, radius=1, topk=4, temperature=0.07, window="square", unrestricted_first=False)
    torch.testing.assert_close(out, _naive_propagate(feats, first, stt=True, **kw), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ MAST / LIIR (full window, hard feedback)


def _dense_mast_video(feats, ids0, n_labels, *, radius, compact, image_size, threshold=0.1, boost=1.0):
    """MAST/LIIR's test loop transcribed (benchmark.py / evaluate_davis.py + colorizer(_momen).py):
    references {0, 5} u {t-1, t-3, t-5}; labels = ids[::s, ::s] one-hot (frame 0: the ground truth,
    later: the model's own full-resolution argmax); per reference a zero-padded window correlation
    (raw dot products), ONE softmax over the concatenated windows, the compactness replace rule per
    reference, zero-padded unfold of the labels, the x boost on object channels; output upsampled
    bilinearly (align_corners=False) to the image size and argmaxed. Float64, dense."""
    from tritoncorr.methods.common import compactness_mask, compactness_template

    t_len, c, h, w = feats.shape
    side, hw = 2 * radius + 1, h * w
    s = image_size[0] // h
    f = feats.double()
    outputs = [ids0]  # full-resolution id maps
    preds = [None]
    for t in range(1, t_len):
        i = t - 1
        refs = sorted(set([x for x in [0, 5] if x <= i] + [x for x in range(i, i - 6, -2) if x > 0]))
        corr = [
            (f[t].reshape(c, 1, hw) * F.unfold(f[r][None], side, padding=radius).reshape(c, side * side, hw)).sum(0)
            for r in refs
        ]
        a = torch.softmax(torch.cat(corr, 0), 0).reshape(len(refs), side * side, hw)
        if compact:  # ties (rare) to the lower window index, as the kernels do
            nudge = torch.arange(side * side, dtype=torch.float64).view(1, -1, 1) * 1e-15
            a = torch.where(compactness_mask(a, threshold), compactness_template(a - nudge, side, compact), a)
        lab = [F.one_hot(outputs[r][::s, ::s], n_labels).permute(2, 0, 1).double() for r in refs]
        cols = torch.stack([F.unfold(v[None], side, padding=radius).reshape(n_labels, side * side, hw) for v in lab])
        cols[:, 1:] *= boost
        pred = torch.einsum("npq,nlpq->lq", a, cols).reshape(n_labels, h, w)
        preds.append(pred)
        up = F.interpolate(pred[None], size=image_size, mode="bilinear", align_corners=False)[0]
        outputs.append(up.argmax(0))
    return preds, outputs


def _raw_video(t_len, c, h, w, seed=None):
    g = fresh_generator(seed)
    base = torch.randn(c, h, w, generator=g)
    return torch.stack([base + 0.6 * torch.randn(c, h, w, generator=g) for _ in range(t_len)])  # correlated frames


@pytest.mark.parametrize("name, boost", [("liir", 1.0), ("liir", 1.05), ("mast", 1.0)])
def test_mast_liir_presets_equal_dense_reference(name, boost):
    t_len, c, h, w, n_labels, s = 9, 8, 5, 7, 3, 4  # frame 5 becomes a reference from t = 6 on
    feats = _raw_video(t_len, c, h, w)
    ids0 = torch.randint(0, n_labels, (h * s, w * s), generator=fresh_generator())
    cfg = dataclasses.replace(PRESETS[name], radius=3, foreground_boost=boost)
    first = encode_labels(ids0, n_labels, (h, w), "strided")
    torch.testing.assert_close(first, F.one_hot(ids0[::4, ::4], n_labels).permute(2, 0, 1).float())
    out = propagate(feats, first, image_size=(h * s, w * s), **cfg.as_kwargs())  # raw features: no norm check
    preds, outputs = _dense_mast_video(
        feats, ids0, n_labels, radius=3, compact=cfg.compact, image_size=(h * s, w * s), boost=boost
    )
    for t in range(1, t_len):
        torch.testing.assert_close(out[t], preds[t].float(), atol=1e-5, rtol=1e-5, msg=f"frame {t}")
        ids = decode_labels(out[t], (h * s, w * s), align_corners=False).argmax(0)
        assert torch.equal(ids, outputs[t]), f"frame {t}"
    # the hard feedback matters: soft feedback gives different predictions
    soft = propagate(feats, first, image_size=(h * s, w * s), **dataclasses.replace(cfg, feedback="soft").as_kwargs())
    assert not torch.allclose(soft[2:], out[2:], atol=1e-3)


@pytest.mark.interpreter
def test_liir_preset_triton_matches_dense_reference(triton_backend):
    t_len, c, h, w, n_labels, s = 5, 8, 4, 6, 3, 4  # one 4 x 8 tile (the interpreter is slow)
    feats = _raw_video(t_len, c, h, w)
    ids0 = torch.randint(0, n_labels, (h * s, w * s), generator=fresh_generator())
    cfg = dataclasses.replace(PRESETS["liir"], radius=2)
    out = propagate(
        feats, encode_labels(ids0, n_labels, (h, w), "strided"), image_size=(h * s, w * s), **cfg.as_kwargs()
    )
    preds, _ = _dense_mast_video(feats, ids0, n_labels, radius=2, compact=2, image_size=(h * s, w * s))
    for t in range(1, t_len):
        torch.testing.assert_close(out[t], preds[t].float(), atol=1e-4, rtol=1e-4, msg=f"frame {t}")


def test_encode_labels():
    g = fresh_generator()
    ids = torch.randint(0, 4, (22, 29), generator=g)
    strided = encode_labels(ids, 4, (6, 8), "strided")  # ceil(22/4) = 6, ceil(29/4) = 8: top-left of each block
    assert torch.equal(strided.argmax(0), ids[::4, ::4]) and strided.sum(0).eq(1).all()
    assert torch.equal(encode_labels(ids, 4, (3, 4), "strided").argmax(0), ids[::8, ::8])  # ceil(22/8), ceil(29/8)
    with pytest.raises(ValueError, match="subsampled"):
        encode_labels(ids, 4, (5, 8), "strided")
    bil = encode_labels(ids, 4, (8, 15), "bilinear")
    torch.testing.assert_close(bil, labels_to_feature_grid(F.one_hot(ids, 4).permute(2, 0, 1).float(), (8, 15)))
    # STT resizes the id map with PIL's nearest filter (mmcv.imresize backend 'pillow')
    from PIL import Image

    for (hh, ww), (h, w) in (
        ((22, 29), (6, 8)),
        ((480, 854), (60, 107)),
        ((480, 854), (120, 214)),
        ((37, 41), (9, 13)),
    ):
        big = torch.randint(0, 7, (hh, ww), generator=g)
        pil = np.asarray(Image.fromarray(big.numpy().astype(np.uint8)).resize((w, h), Image.NEAREST))
        assert torch.equal(encode_labels(big, 7, (h, w), "nearest").argmax(0), torch.from_numpy(pil.astype(np.int64)))


def test_decode_labels():
    g = fresh_generator()
    soft = torch.rand(3, 4, 5, generator=g)
    torch.testing.assert_close(decode_labels(soft, (9, 11)), labels_to_image(soft, (9, 11)))
    half = decode_labels(soft, (8, 10), align_corners=False)
    torch.testing.assert_close(half, F.interpolate(soft[None], size=(8, 10), mode="bilinear", align_corners=False)[0])
    soft[2] = -soft[2]  # a channel with max <= 0 is left alone by the min-max
    mm = decode_labels(soft, (8, 10), align_corners=False, minmax=True)
    for ch in (0, 1):
        assert abs(mm[ch].min().item()) < 1e-6 and abs(mm[ch].max().item() - 1) < 1e-6
    torch.testing.assert_close(mm[2], -half[2])


def test_propagate_bad_inputs():
    feats, first = _video(3, 4, 5, 5, 2)
    with pytest.raises(ValueError, match="feature grid"):
        propagate(feats, first[:, :4])
    with pytest.raises(ValueError, match="L2-normalised"):
        propagate(feats * 3, first)
    with pytest.raises(ValueError, match=r"\(T, C, h, w\)"):
        propagate(feats[0], first)
    with pytest.raises(TypeError, match="float"):
        propagate(feats, first.long())
    out = propagate(feats * 3, first, check_unit_norm=False, radius=2, topk=2)
    assert out.shape == (3, 2, 5, 5)


def test_labels_to_feature_grid_align_corners():
    # align_corners=True: output cell i samples input row i*(H-1)/(h-1); 9 -> 5 and 17 -> 9 hit every 2nd pixel
    g = fresh_generator()
    onehot = F.one_hot(torch.randint(0, 3, (9, 17), generator=g), 3).permute(2, 0, 1).float()
    small = labels_to_feature_grid(onehot, (5, 9))
    assert small.shape == (3, 5, 9) and small.dtype == torch.float32
    torch.testing.assert_close(small, onehot[:, ::2, ::2])
    soft = torch.rand(3, 5, 9, generator=g)
    big = labels_to_image(soft, (9, 17))
    assert big.shape == (3, 9, 17)
    torch.testing.assert_close(big[:, ::2, ::2], soft)
    torch.testing.assert_close(big[:, 1, 1], (soft[:, 0, 0] + soft[:, 1, 0] + soft[:, 0, 1] + soft[:, 1, 1]) / 4)
    with pytest.raises(ValueError):
        labels_to_feature_grid(onehot[0], (5, 9))


# ------------------------------------------------------------------ propagate_sequence follows the preset


def _toy_frames(t_len, hh, ww, seed=None):
    g = fresh_generator(seed)
    base = torch.randint(0, 256, (hh, ww, 3), generator=g)
    return [
        ((base + torch.randint(-20, 21, (hh, ww, 3), generator=g)).clamp(0, 255)).to(torch.uint8).numpy()
        for _ in range(t_len)
    ]


def _toy_features(stride, channels=8, seed=0, ceil_mode=True):
    weight = torch.randn(channels, 3, 1, 1, generator=torch.Generator().manual_seed(seed))

    def features_fn(x):
        return F.conv2d(F.avg_pool2d(x, stride, ceil_mode=ceil_mode), weight)

    return features_fn


def test_propagate_sequence_dul_unchanged():
    """The DUL path of propagate_sequence is bit-identical to its earlier body (normalise, bilinear
    align_corners=True labels, propagate, align_corners=True upsampling, argmax)."""
    from tritoncorr.evaluate import frame_to_tensor, propagate_sequence

    frames = _toy_frames(5, 16, 24)
    ids0 = torch.randint(0, 3, (16, 24), generator=fresh_generator()).numpy().astype(np.uint8)
    fn = _toy_features(4)
    cfg = dataclasses.replace(PRESETS["dul"], context=2, radius=2)
    ids_at = propagate_sequence(fn, frames, 5, ids0, cfg)
    feats = torch.stack([F.normalize(fn(frame_to_tensor(f)).float(), dim=1)[0] for f in frames])
    onehot = F.one_hot(torch.from_numpy(ids0.astype(np.int64)), 3).permute(2, 0, 1).float()
    first = labels_to_feature_grid(onehot, size=(4, 6))
    soft = propagate(
        feats, first, context=2, radius=2, topk=10, temperature=0.05, window="disc", unrestricted_first=True
    )
    soft[0] = first
    for t in range(5):
        assert np.array_equal(ids_at(t), labels_to_image(soft[t], (16, 24)).argmax(0).to(torch.uint8).numpy())


def test_propagate_sequence_liir_pads_and_follows_the_preset():
    """LIIR: Lab frames padded right/bottom with 0 to a multiple of 4, raw features, annotation padded
    with background and subsampled [::4, ::4], hard feedback at the padded size, output upsampled
    (align_corners=False) to the padded size and cropped; against the dense MAST/LIIR loop."""
    from tritoncorr.evaluate import frame_to_tensor, propagate_sequence

    t_len, hh, ww, n_labels = 8, 22, 29, 3  # padded to 24 x 32 -> a 6 x 8 grid
    frames = _toy_frames(t_len, hh, ww)
    ids0 = torch.randint(0, n_labels, (hh, ww), generator=fresh_generator()).numpy().astype(np.uint8)
    ids0[0, 0] = 255  # void counts as background
    fn = _toy_features(4)
    cfg = dataclasses.replace(PRESETS["liir"], radius=3)
    ids_at = propagate_sequence(fn, frames, t_len, ids0, cfg, color="lab")
    feats = torch.stack([fn(F.pad(frame_to_tensor(f, color="lab"), (0, 3, 0, 2)))[0] for f in frames]).double()
    assert feats.shape == (t_len, 8, 6, 8)
    gt = torch.from_numpy(np.where(ids0 == 255, 0, ids0).astype(np.int64))
    _, outputs = _dense_mast_video(feats, F.pad(gt, (0, 3, 0, 2)), n_labels, radius=3, compact=2, image_size=(24, 32))
    for t in range(1, t_len):
        assert np.array_equal(ids_at(t), outputs[t][:hh, :ww].to(torch.uint8).numpy()), f"frame {t}"
    # unpadded 22 x 29: a stride-8 grid (ceil) 3 x 4 takes ids[::8, ::8]; a floor-mode 5 x 7 grid fits no step
    ids8 = propagate_sequence(_toy_features(8), frames[:2], 2, ids0, dataclasses.replace(cfg, pad=1), color="lab")
    assert ids8(0).shape == (hh, ww)
    with pytest.raises(ValueError, match="subsampled"):
        propagate_sequence(
            _toy_features(4, ceil_mode=False), frames[:2], 2, ids0, dataclasses.replace(cfg, pad=1), color="lab"
        )


def test_distinct_slots_merges_repeats_but_not_unrestricted_slots():
    from tritoncorr.propagation import context_indices, distinct_slots

    assert distinct_slots(context_indices(3, 20), 1) == ([0, 0, 1, 2], [1, 18, 1, 1])
    assert distinct_slots(context_indices(25, 20), 1) == ([0] + list(range(5, 25)), [1] * 21)
    assert distinct_slots([0, 0, 1], 0) == ([0, 1], [2, 1])
    assert distinct_slots([0, 0, 0], 2) == ([0, 0, 0], [1, 1, 1])
    assert distinct_slots([0, 1, 1, 0], 0) == ([0, 1, 0], [1, 2, 1])  # only consecutive repeats merge


def test_channel_argmax_equals_argmax_with_ties():
    from tritoncorr.propagation import channel_argmax

    g = torch.Generator().manual_seed(3)
    for L, H, W in [(1, 5, 7), (2, 31, 17), (5, 40, 33)]:
        x = torch.randint(0, 3, (L, H, W), generator=g).float()  # many exact ties: the first channel wins
        assert torch.equal(channel_argmax(x), x.argmax(0))
        y = torch.rand(L, H, W, generator=g)
        assert torch.equal(channel_argmax(y), y.argmax(0))


def test_common_preset_is_duls_protocol_with_the_window_in_pixels():
    """``common``: DUL's kNN protocol; its radius is 96 px at every stride (12 cells at 8, 24 at 4, 6 at
    16) and frames are padded to a multiple of the stride. Other presets keep their own window in
    pixels when the stride differs from theirs (``--preset dul`` on LIIR: 24 cells, ``liir`` at stride 8: 7)."""
    from tritoncorr.propagation import PRESET_STRIDES, task_preset, window_radius

    assert set(PRESET_STRIDES) == set(PRESETS)
    for stride, radius in ((4, 24), (8, 12), (16, 6)):
        cfg = task_preset("common", "davis", stride=stride).config
        assert (cfg.radius, cfg.pad) == (radius, stride) and cfg.radius * stride == 96
        assert dataclasses.replace(cfg, radius=12, pad=1) == PRESETS["dul"]
    assert task_preset("common", "davis").config == task_preset("common", "davis", stride=8).config
    assert task_preset("dul", "davis", stride=4).config.radius == 24
    assert task_preset("dul", "davis", stride=8).config == PRESETS["dul"]  # its own stride: unchanged
    assert task_preset("liir", "davis", stride=4).config == PRESETS["liir"]
    assert task_preset("liir", "davis", stride=8).config.radius == 7
    assert task_preset("stt", "vip", stride=4).config.radius == 32  # STT's VIP radius 16 at stride 8
    assert window_radius("common", 64) == 2 and window_radius("common", 1000) == 1
    with pytest.raises(ValueError, match="stride"):
        window_radius("common", 0)


@pytest.mark.parametrize("stride", [4, 8])
def test_common_preset_covers_the_same_pixel_window_at_stride_4_and_8(stride):
    """Toy video: a random texture (and its object) panned 64 px right between two frames; a toy
    patch-embedding "checkpoint" of stride 4 or 8. The common preset's window (resolved for that stride,
    96 px) reaches the true match at both strides, so the object is tracked; a radius of 12 cells
    reaches only 48 px at stride 4 and loses it. (The preset's unrestricted first frame is turned off, or
    the first frame would be searched everywhere and no window would matter.)"""
    from tritoncorr.evaluate import propagate_sequence
    from tritoncorr.propagation import task_preset

    hh, ww, shift = 64, 256, 64
    texture = torch.randint(0, 256, (hh, ww, 3), generator=fresh_generator(1)).to(torch.uint8).numpy()
    ids0 = np.zeros((hh, ww), np.uint8)
    ids0[16:48, 32:64] = 1
    frames = [texture, np.roll(texture, shift, axis=1)]
    truth = np.roll(ids0, shift, axis=1)
    weight = torch.randn(32, 3, stride, stride, generator=torch.Generator().manual_seed(0))

    def patch_embedding(x):  # (1, 3, H, W) -> (1, 32, H / stride, W / stride): one vector per patch
        return F.conv2d(x, weight, stride=stride)

    def jaccard(cfg):
        pred = propagate_sequence(patch_embedding, frames, 2, ids0, dataclasses.replace(cfg, unrestricted_first=False))(
            1
        )
        return ((pred == 1) & (truth == 1)).sum() / ((pred == 1) | (truth == 1)).sum()

    common = task_preset("common", "davis", stride=stride).config
    assert common.radius * stride == 96
    # J < 1 comes from the coarse label grid of this small toy (bilinear align_corners labels at 8-16
    # cells per object side): without any motion J is 0.89 (stride 4) and 0.78 (stride 8).
    assert jaccard(common) > 0.6
    if stride == 4:
        assert jaccard(dataclasses.replace(common, radius=12)) < 0.1  # 48 px: the object is out of reach

"""Video label propagation (CRW/DUL/STT protocol) on top of the kNN-softmax op."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from tests.kernel_harness import fresh_generator
from tritoncorr.propagation import (
    PRESETS,
    PropagationConfig,
    context_indices,
    labels_to_feature_grid,
    labels_to_image,
    propagate,
)


def _naive_propagate(feats, first, *, context, radius, topk, temperature, window, unrestricted_first):
    """Loop over frames, query pixels, context slots and positions; stable order on ties."""
    t_len, _, h, w = feats.shape
    out = [first.double()]
    f = feats.double()
    for t in range(1, t_len):
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
    """dul.md §8: identical context frames, distinct per-position features -> top-10 all hit the own
    position, so one-hot labels are reproduced exactly in every frame."""
    g = fresh_generator()
    h, w = 6, 7
    base = F.normalize(torch.randn(32, h, w, generator=g), dim=0)
    feats = base[None].expand(8, -1, -1, -1).contiguous()
    onehot = F.one_hot(torch.randint(0, 4, (h, w), generator=g), 4).permute(2, 0, 1).float()
    for name in ("dul", "stt"):
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
    assert PRESETS["dul"] == PropagationConfig(20, 12, 10, 0.05, "disc", True)
    assert PRESETS["stt"] == PropagationConfig(20, 12, 10, 0.07, "square", False)
    assert set(PRESETS["stt"].as_kwargs()) == {"context", "radius", "topk", "temperature", "window", "unrestricted_first"}
    with pytest.raises(ValueError, match="window"):
        PropagationConfig(window="circle")
    with pytest.raises(ValueError, match="context"):
        PropagationConfig(context=-1)


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

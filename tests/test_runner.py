"""The task-generic propagation runner (tritoncorr.evaluate): features with resize and padding, the mask
codec, propagation from a later start frame, an arbitrary label kind, and the per-task presets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tritoncorr.evaluate import (
    FrameGeometry,
    MaskCodec,
    VideoFormatError,
    compute_features,
    frame_to_tensor,
    pil_nearest_indices,
    propagate_labels,
    propagate_sequence,
    propagate_video,
    resize_nearest,
)
from tritoncorr.propagation import PRESETS, TASK_PRESETS, TASKS, decode_labels, encode_labels, propagate, task_preset


def _frames(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy() for _ in range(n)]


def _pool_features(stride, channels=6, seed=0):
    weight = torch.randn(channels, 3, 1, 1, generator=torch.Generator().manual_seed(seed))

    def fn(x):
        return F.conv2d(F.avg_pool2d(x, stride, ceil_mode=True), weight)

    return fn


# --------------------------------------------------------------------------- resizing


@pytest.mark.parametrize(
    "sizes",
    [
        ((40, 30), (560, 560)),
        ((560, 560), (40, 30)),
        ((320, 320), (240, 320)),
        ((480, 854), (560, 560)),
        ((37, 53), (70, 70)),
    ],
)
def test_resize_nearest_is_pil_nearest(sizes):
    (h, w), (hh, ww) = sizes
    ids = np.random.default_rng(0).integers(0, 20, (h, w)).astype(np.uint8)
    ref = np.asarray(Image.fromarray(ids).resize((ww, hh), Image.NEAREST))
    np.testing.assert_array_equal(resize_nearest(torch.from_numpy(ids), (hh, ww)).numpy(), ref)
    stack = torch.from_numpy(np.stack([ids, ids[::-1].copy()])).float()
    np.testing.assert_array_equal(
        resize_nearest(stack, (hh, ww))[1].numpy(),
        np.asarray(Image.fromarray(ids[::-1].copy()).resize((ww, hh), Image.NEAREST)),
    )
    assert pil_nearest_indices(h, hh).max() <= h - 1


def test_frame_to_tensor_resize():
    frame = _frames(1, 24, 36)[0]
    x = frame_to_tensor(frame, size=(16, 20))
    ref = frame_to_tensor(frame)
    ref = F.interpolate(ref, size=(16, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=0)
    cv2 = pytest.importorskip("cv2")
    crw = cv2.resize(frame.astype(np.float32) / 255.0, (20, 16))  # CRW: float image, INTER_LINEAR
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), (crw - mean) / std, atol=1e-4)
    lab = frame_to_tensor(frame, color="lab", size=(16, 20))
    small = (
        F.interpolate(
            torch.from_numpy(frame).permute(2, 0, 1)[None].float(), size=(16, 20), mode="bilinear", align_corners=False
        )[0]
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
        .permute(1, 2, 0)
        .numpy()
    )
    torch.testing.assert_close(lab, frame_to_tensor(small, color="lab"))
    assert torch.equal(frame_to_tensor(frame, size=(24, 36)), frame_to_tensor(frame))


# --------------------------------------------------------------------------- features


def test_compute_features_geometry_resize_and_pad():
    frames = _frames(3, 22, 29)
    seen = []
    fn = _pool_features(4)

    def features_fn(x):
        seen.append(tuple(x.shape))
        return fn(x)

    cfg = dataclasses.replace(PRESETS["liir"], radius=2)  # pad 4, raw features
    vf = compute_features(features_fn, frames, 3, config=cfg, input_size=(30, 37), color="lab")
    assert seen == [(1, 3, 32, 40)] * 3
    assert vf.geometry == FrameGeometry((22, 29), (30, 37), (32, 40), (8, 10)) and vf.geometry.resized
    x = F.pad(frame_to_tensor(frames[1], color="lab", size=(30, 37)), (0, 3, 0, 2))
    assert torch.equal(vf.feats[1], fn(x)[0])
    vf = compute_features(fn, frames, 3, config=PRESETS["dul"])
    assert not vf.geometry.resized and torch.allclose(vf.feats.norm(dim=1), torch.ones(1))
    with pytest.raises(VideoFormatError, match="frame 2 is 30x22, frame 0 is 29x22"):
        compute_features(fn, frames[:2] + [_frames(1, 22, 30)[0]], 3)
    with pytest.raises(VideoFormatError, match="frame 0 is 29x22, the first mask is 28x22"):
        compute_features(fn, frames, 3, size=(22, 28))
    with pytest.raises(ValueError, match=r"\(1, C, h, w\)"):
        compute_features(lambda x: fn(x)[0], frames, 3)


# --------------------------------------------------------------------------- mask codec


def test_mask_codec_labels_and_errors():
    ids = np.array([[0, 3, 3], [255, 7, 0]], dtype=np.uint8)
    c = MaskCodec(ids)
    assert c.labels.tolist() == list(range(8)) and c.channels.tolist() == [[0, 3, 3], [0, 7, 0]]
    p = MaskCodec.present(ids)
    assert p.labels.tolist() == [0, 3, 7] and p.channels.tolist() == [[0, 1, 1], [0, 2, 0]]
    assert MaskCodec.present(ids, void=None).labels.tolist() == [0, 3, 7, 255]
    with pytest.raises(ValueError, match=r"ids \[7\] are not among the labels \[0, 3\]"):
        MaskCodec(ids, [0, 3])
    with pytest.raises(ValueError, match="sorted distinct"):
        MaskCodec(ids, [3, 0, 7])
    g = FrameGeometry((2, 4), (2, 4), (2, 4), (2, 4))
    with pytest.raises(VideoFormatError, match="the annotation is 3x2 but the frames are 4x2"):
        c.encode(g, PRESETS["dul"])


@pytest.mark.parametrize("preset", ["dul", "stt", "liir"])
def test_mask_codec_resized_encode_decode(preset):
    """Resized + padded geometry: encode = PIL-nearest resize, pad with channel 0, the preset's downsampling;
    decode = the preset's upsampling to the padded size, crop, argmax, ids, PIL-nearest back."""
    rng = np.random.default_rng(4)
    ids = rng.choice(np.array([0, 5, 9], np.uint8), (21, 27))
    cfg = PRESETS[preset]
    codec = MaskCodec.present(ids)
    g = FrameGeometry((21, 27), (30, 38), (32, 40), (8, 10))
    first = codec.encode(g, cfg)
    ch = torch.from_numpy(np.searchsorted([0, 5, 9], ids)).long()
    ch = F.pad(resize_nearest(ch, (30, 38)), (0, 2, 0, 2))
    assert torch.equal(first, encode_labels(ch, 3, (8, 10), cfg.label_downsample))
    soft = torch.rand(3, 8, 10, generator=torch.Generator().manual_seed(1))
    up = decode_labels(soft, (32, 40), align_corners=cfg.upsample_align_corners, minmax=cfg.minmax)[:, :30, :38]
    expect = np.array([0, 5, 9], np.uint8)[resize_nearest(up.argmax(0), (21, 27)).numpy()]
    np.testing.assert_array_equal(codec.decode(soft, g, cfg), expect)
    probs = codec.probabilities(soft, g, cfg)
    assert probs.shape == (3, 21, 27)
    np.testing.assert_array_equal(np.array([0, 5, 9], np.uint8)[probs.argmax(0).numpy()], expect)


# --------------------------------------------------------------------------- propagation


def test_propagate_labels_from_a_later_frame():
    frames = _frames(6, 16, 24)
    fn = _pool_features(4)
    cfg = dataclasses.replace(PRESETS["dul"], context=2, radius=2, topk=3)
    vf = compute_features(fn, frames, 6, config=cfg)
    ids = np.random.default_rng(2).integers(0, 3, (16, 24)).astype(np.uint8)
    codec = MaskCodec(ids)
    prop = propagate_labels(vf, codec, cfg, start=2)
    first = codec.encode(vf.geometry, cfg)
    ref = propagate(vf.feats[2:], first, image_size=(16, 24), **cfg.as_kwargs())
    assert prop.start == 2 and len(prop) == 4 and torch.equal(prop.soft, ref)
    assert torch.equal(prop.soft[0], first)
    np.testing.assert_array_equal(prop.decode(3), codec.decode(ref[3], vf.geometry, cfg))
    with pytest.raises(ValueError, match="start=6"):
        propagate_labels(vf, codec, cfg, start=6)
    # propagate_sequence is the start-0 mask path, with or without a resize
    whole = propagate_video(fn, frames, 6, codec, cfg)
    ids_at = propagate_sequence(fn, frames, 6, ids, cfg)
    for t in range(6):
        np.testing.assert_array_equal(ids_at(t), whole.decode(t))
    small = propagate_sequence(fn, frames, 6, ids, cfg, input_size=(8, 12))
    assert small(5).shape == (16, 24)


class _MeanColourCodec:
    """A toy label kind: 3 soft channels = the first frame's pooled colour; decode = the mean of each channel."""

    num_labels = 3

    def __init__(self, frame):
        self.frame = torch.from_numpy(frame).permute(2, 0, 1).float() / 255

    def encode(self, geometry, config, device=None):
        return F.adaptive_avg_pool2d(self.frame, geometry.grid)

    def decode(self, soft, geometry, config):
        return soft.mean(dim=(1, 2))


def test_runner_is_generic_over_the_label_kind():
    frames = _frames(4, 16, 16)
    frames = [frames[0]] * 4  # static video: propagation keeps the labels (soft values are convex combinations)
    cfg = dataclasses.replace(PRESETS["dul"], context=2, radius=2, topk=1)
    eye = torch.eye(16).view(16, 4, 4)
    prop = propagate_video(lambda x: eye[None], frames, 4, _MeanColourCodec(frames[0]), cfg)
    assert prop.soft.shape == (4, 3, 4, 4)
    for t in range(4):
        torch.testing.assert_close(prop.decode(t), prop.decode(0))


# --------------------------------------------------------------------------- per-task presets


def test_task_presets():
    assert set(TASK_PRESETS) == set(PRESETS) and all(set(v) == set(TASKS) for v in TASK_PRESETS.values())
    for p in PRESETS:
        assert task_preset(p, "davis").config == PRESETS[p] and task_preset(p, "davis").input_size is None
        assert task_preset(p, "vip").input_size == (560, 560) and task_preset(p, "jhmdb").input_size == (320, 320)
        assert task_preset(p, "jhmdb").config.feedback == "soft"
    assert [task_preset("stt", t).config.radius for t in ("davis", "vip", "jhmdb")] == [12, 16, 5]
    assert task_preset("liir", "vip").config.feedback == "hard" and task_preset("liir", "jhmdb").config.topk is None
    with pytest.raises(ValueError, match="task="):
        task_preset("dul", "kitti")
    with pytest.raises(ValueError, match="preset="):
        task_preset("nope", "vip")

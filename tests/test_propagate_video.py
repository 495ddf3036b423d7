"""``tritoncorr propagate``: video / frame-folder reading, masks, the streaming propagator, outputs.

Shapes are tiny (generated 48x64 clips) and most tests use a cheap deterministic feature function
(colour + position features pooled to stride 4), so the whole file runs in seconds; one CLI test uses
the random-init ResNet at 48x64.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_runs import run_cli
from PIL import Image
from tritoncorr.evals.davis import read_index_png, write_palette_png

from tritoncorr.propagation import PRESETS, StreamingPropagator, encode_labels, propagate
from tritoncorr.video import (
    VideoError,
    fit_mask,
    open_frames,
    parse_mask_spec,
    propagate_video,
    read_mask,
    synthetic_video_frame,
    working_size,
    write_synthetic_video,
)

SIZE = (64, 96)


@pytest.fixture(autouse=True)
def _torch_path(torch_backend):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def colour_features(x: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) -> (1, 5, H/4, W/4): the colour every 4 pixels and a weak position code, scaled to norm 12 (so
    that raw dot products, MAST/LIIR's affinity, are largest for equal colours): objects of a
    distinct colour are matched to themselves, as a trained model would."""
    c = x[:, :, ::4, ::4] * 4.0  # point samples at 4i, where "strided" labels sample too (no drift)
    h, w = c.shape[-2:]
    yy = torch.linspace(-0.2, 0.2, h).view(1, 1, h, 1).expand(1, 1, h, w)
    xx = torch.linspace(-0.2, 0.2, w).view(1, 1, 1, w).expand(1, 1, h, w)
    return F.normalize(torch.cat([c, yy, xx], dim=1), dim=1) * 12.0


def _true_ids(t: int, size=SIZE) -> np.ndarray:
    return synthetic_video_frame(t, size)[1]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(1, float((a | b).sum()))


# ----------------------------------------------------------------------------------------------
# The streaming propagator
# ----------------------------------------------------------------------------------------------


def _whole_video_loop(feats, first, cfg, image_size):
    """The whole-video loop as it was before streaming: every frame's features and labels in memory,
    references gathered with index_select (repeated slots as repeated frames)."""
    from tritoncorr.kernels.knn_propagate import knn_propagate, window_propagate

    from tritoncorr.propagation import decode_labels, reference_indices

    out = torch.empty((feats.shape[0], *first.shape))
    out[0] = first
    bank = out.clone() if cfg.feedback == "hard" else out
    for t in range(1, feats.shape[0]):
        sel = torch.tensor(reference_indices(t, cfg.references, cfg.context))
        args = (feats[t], feats[sel], bank[sel])
        common = dict(radius=cfg.radius, temperature=cfg.temperature)
        if cfg.topk is None:
            pred = window_propagate(*args, **common, compact=cfg.compact, compact_threshold=cfg.compact_threshold)
        else:
            unrestricted = 1 if cfg.unrestricted_first else 0
            pred = knn_propagate(*args, **common, topk=cfg.topk, window=cfg.window, unrestricted=unrestricted)
        out[t] = pred
        if cfg.feedback == "hard":
            ids = decode_labels(pred, image_size, align_corners=cfg.upsample_align_corners).argmax(0)
            bank[t] = encode_labels(ids, first.shape[0], first.shape[1:], cfg.label_downsample)
    return out


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_streaming_equals_whole_video_propagation(preset):
    cfg = PRESETS[preset]
    g = torch.Generator().manual_seed(3)
    T, C, h, w = 27, 8, 7, 9
    feats = torch.randn(T, C, h, w, generator=g)
    if cfg.normalize:
        feats = F.normalize(feats, dim=1)
    s = 4 if cfg.label_downsample == "strided" else 8
    ids = torch.randint(0, 3, (h * s, w * s), generator=g)
    first = encode_labels(ids, 3, (h, w), cfg.label_downsample)
    ref = _whole_video_loop(feats, first, cfg, (h * s, w * s))
    prop = StreamingPropagator(cfg, image_size=(h * s, w * s))
    outs = [prop.start(feats[0].clone(), first)]  # clones: the propagator sees one frame at a time
    most = 0
    for t in range(1, T):
        outs.append(prop.step(feats[t].clone()))
        most = max(most, len(prop.stored_frames))
    torch.testing.assert_close(torch.stack(outs), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        propagate(feats, first, image_size=(h * s, w * s), **cfg.as_kwargs()), torch.stack(outs), rtol=0, atol=0
    )
    # bounded memory: the anchor + the previous-frame window (crw/stt: 20, mast: 5 (+ frame 5))
    assert most <= (cfg.context + 1 if cfg.references != "mast" else 7)
    assert prop.stored_frames[0] == 0


def test_streaming_memory_does_not_grow():
    cfg = PRESETS["mast"]
    prop = StreamingPropagator(cfg, check_unit_norm=False)
    f = torch.randn(4, 5, 6)
    prop.start(f, torch.rand(2, 5, 6))
    sizes = []
    for _ in range(60):
        prop.step(f)
        sizes.append(len(prop.stored_frames))
    assert max(sizes[10:]) == min(sizes[10:]) <= 7
    assert set(prop.stored_frames) == {0, 5, 56, 57, 58, 59, 60}


def test_annotate_moves_channels_to_the_new_anchor():
    cfg = PRESETS["crw"]
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(12, 6, 5, 5, generator=g), dim=1)
    first = torch.zeros(3, 5, 5)
    first[0] = 1
    first[1, :2] = 1
    first[0, :2] = 0
    prop = StreamingPropagator(cfg)
    prop.start(feats[0], first)
    for t in range(1, 6):
        prop.step(feats[t])
    new = torch.zeros(3, 5, 5)
    new[0] = 1
    new[2, 3:, 3:] = 1
    new[0, 3:, 3:] = 0
    own = torch.tensor([False, False, True])
    prop.annotate(new, own)
    assert prop.anchors == [0, 5]
    out = prop.step(feats[6])
    # channel 2 comes from anchor 5's references only: the same as a propagator started at frame 5
    solo = StreamingPropagator(cfg)
    solo.start(feats[5], new)
    torch.testing.assert_close(out[2], solo.step(feats[6])[2])
    with pytest.raises(ValueError, match="labels must be"):
        prop.annotate(torch.zeros(2, 5, 5))


def test_restarting_every_channel_equals_a_new_start():
    # annotate(labels) at frame k with every channel (the newest anchor owns all of them, frame 0 none)
    # continues exactly as a propagation started at frame k with those labels
    cfg = PRESETS["crw"]
    g = torch.Generator().manual_seed(1)
    feats = F.normalize(torch.randn(14, 6, 5, 5, generator=g), dim=1)
    first = torch.softmax(torch.randn(3, 5, 5, generator=g), dim=0)
    again = torch.softmax(torch.randn(3, 5, 5, generator=g), dim=0)
    prop = StreamingPropagator(cfg)
    prop.start(feats[0], first)
    for t in range(1, 5):
        prop.step(feats[t])
    prop.annotate(again)
    assert prop.anchors == [4]
    fresh = StreamingPropagator(cfg)
    fresh.start(feats[4], again)
    for t in range(5, 14):
        torch.testing.assert_close(prop.step(feats[t]), fresh.step(feats[t]), rtol=0, atol=0)


def test_streaming_checks_inputs():
    prop = StreamingPropagator(PRESETS["dul"])
    with pytest.raises(RuntimeError, match="start"):
        prop.step(torch.zeros(4, 3, 3))
    with pytest.raises(ValueError, match="L2-normalised"):
        prop.start(torch.ones(4, 3, 3), torch.ones(2, 3, 3))
    prop.start(F.normalize(torch.randn(4, 3, 3), dim=0), torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match="feature grid"):
        prop.step(F.normalize(torch.randn(4, 3, 4), dim=0))


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def test_open_video_and_frame_folder(tmp_path):
    video = write_synthetic_video(tmp_path / "clip.mp4", 9, SIZE)
    folder = write_synthetic_video(tmp_path / "frames", 9, SIZE)
    for src in (open_frames(video), open_frames(folder)):
        frames = list(src.frames())
        assert len(frames) == 9 and src.size == SIZE
        assert frames[0].dtype == np.uint8 and frames[0].shape == (*SIZE, 3)
        # the red disc is where the generator put it (lossy codec: compare coarsely)
        inside = frames[4][_true_ids(4) == 1].astype(float).mean(0)
        assert np.abs(inside - (220, 40, 40)).max() < 30
    assert open_frames(folder).name(3) == "00003"
    assert open_frames(video).fps == pytest.approx(25)


def test_unreadable_and_empty_inputs(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(VideoError, match="cannot read video"):
        open_frames(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoError, match="no images"):
        open_frames(tmp_path / "empty")
    with pytest.raises(VideoError, match="does not exist"):
        open_frames(tmp_path / "nope.mp4")


def test_read_mask_formats(tmp_path):
    ids = np.zeros(SIZE, np.uint8)
    ids[5:10, 5:10] = 1
    ids[20:30, 30:40] = 3
    ids[0, 0] = 255  # void
    write_palette_png(tmp_path / "p.png", ids)
    got = read_mask(tmp_path / "p.png")
    assert got[0, 0] == 0 and (got == np.where(ids == 255, 0, ids)).all()
    Image.fromarray(((ids == 1) * 255).astype(np.uint8)).save(tmp_path / "binary.png")
    assert set(np.unique(read_mask(tmp_path / "binary.png"))) == {0, 1}
    from tritoncorr.visualize import palette_colors

    Image.fromarray(palette_colors()[np.where(ids == 255, 0, ids)]).save(tmp_path / "rgb.png")
    assert (read_mask(tmp_path / "rgb.png") == np.where(ids == 255, 0, ids)).all()
    Image.fromarray(np.zeros(SIZE, np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(VideoError, match="no object"):
        read_mask(tmp_path / "blank.png")


def test_mask_size_checks():
    ids = np.zeros((24, 32), np.uint8)
    ids[4:8, 4:8] = 1
    with pytest.warns(UserWarning, match="resizing the mask"):
        big = fit_mask(ids, (48, 64), "half.png")
    assert big.shape == (48, 64) and big[8:16, 8:16].all()
    with pytest.raises(VideoError, match="aspect ratio"):
        fit_mask(ids, (48, 48), "square.png")
    assert fit_mask(big, (48, 64), "same.png") is big


def test_parse_mask_spec_and_working_size(tmp_path):
    assert parse_mask_spec("first.png") == (0, __import__("pathlib").Path("first.png"))
    t, p = parse_mask_spec("120:later.png")
    assert t == 120 and p.name == "later.png"
    assert working_size((1080, 1920), 480) == (480, 853)
    assert working_size((320, 568), 480) == (320, 568)
    assert working_size((1080, 1920), 0) == (1080, 1920)


# ----------------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------------


def _run(tmp_path, masks, n=16, preset="crw", **kw):
    video = write_synthetic_video(tmp_path / "clip.mp4", n, SIZE)
    cfg = PRESETS[preset]
    return propagate_video(open_frames(video), masks, colour_features, cfg, tmp_path / "out", short_side=0, **kw)


def test_propagate_video_writes_masks_and_a_watchable_overlay(tmp_path):
    res = _run(tmp_path, {0: _true_ids(0)}, n=16)
    assert res.num_frames == 16 and res.objects == [1, 2]
    pngs = sorted(res.mask_dir.glob("*.png"))
    assert [p.stem for p in pngs] == [f"{t:05d}" for t in range(16)]
    assert (read_index_png(pngs[0]) == _true_ids(0)).all()
    last = read_index_png(pngs[-1])
    assert _iou(last == 1, _true_ids(15) == 1) > 0.4 and _iou(last == 2, _true_ids(15) == 2) > 0.4
    import av

    with av.open(str(res.overlay)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 16 and frames[0].shape == (*SIZE, 3)


@pytest.mark.parametrize("preset", ["stt", "mast", "liir"])
def test_propagate_video_other_presets(tmp_path, preset):
    # (the colour features are too weak for MAST/LIIR's hard feedback over many frames: frame 1 only)
    res = _run(tmp_path, {0: _true_ids(0)}, n=4, preset=preset, overlay=False)
    assert res.overlay is None and res.num_frames == 4 and res.mask_dir.joinpath("00003.png").is_file()
    second = read_index_png(res.mask_dir / "00001.png")
    assert _iou(second == 1, _true_ids(1) == 1) > 0.3


def test_a_later_mask_adds_and_restarts_objects(tmp_path):
    first = np.where(_true_ids(0) == 1, 1, 0).astype(np.uint8)  # only the disc at frame 0
    later = _true_ids(6).copy()
    later[later == 2] = 7  # the square appears at frame 6 with a new id
    res = _run(tmp_path, {0: first, 6: later}, n=14, max_frames=12)
    assert res.num_frames == 12 and res.objects == [1, 7]
    before = read_index_png(res.mask_dir / "00005.png")
    assert not (before == 7).any()
    at = read_index_png(res.mask_dir / "00006.png")
    assert (at[later > 0] == later[later > 0]).all()
    # id 1 is restarted: exactly the given region, its predicted extent elsewhere is removed
    assert ((at == 1) == (later == 1)).all()
    after = read_index_png(res.mask_dir / "00011.png")
    assert _iou(after == 7, _true_ids(11) == 2) > 0.4 and _iou(after == 1, _true_ids(11) == 1) > 0.4


@pytest.mark.parametrize("preset", ["crw", "stt", "liir"])
def test_streamed_video_equals_the_evaluation_path(tmp_path, preset):
    # the same frames through tritoncorr.evaluate.propagate_sequence (whole-video features) give the same ids
    from tritoncorr.evaluate import propagate_sequence

    size = (62, 90)  # not a multiple of 4: LIIR's padding to a multiple of 4 is exercised
    folder = write_synthetic_video(tmp_path / "frames", 6, size)
    frames = list(open_frames(folder).frames())
    cfg = PRESETS[preset]
    first = _true_ids(0, size)
    res = propagate_video(
        open_frames(folder), {0: first}, colour_features, cfg, tmp_path / "o", color="lab", short_side=0, overlay=False
    )
    ids_at = propagate_sequence(colour_features, frames, 6, first, cfg, color="lab")
    for t in range(1, 6):
        assert (read_index_png(res.mask_dir / f"{t:05d}.png") == ids_at(t)).all(), t


def test_frame_folder_keeps_its_frame_names(tmp_path):
    folder = write_synthetic_video(tmp_path / "frames", 5, SIZE)
    for p in sorted(folder.glob("*.png")):
        p.rename(p.with_name(f"img_{int(p.stem) * 10}.png"))
    res = propagate_video(
        open_frames(folder),
        {0: _true_ids(0)},
        colour_features,
        PRESETS["dul"],
        tmp_path / "o",
        short_side=0,
        overlay=False,
    )
    assert sorted(p.stem for p in res.mask_dir.glob("*.png")) == sorted(f"img_{t * 10}" for t in range(5))


def test_short_side_runs_smaller_and_writes_full_size_masks(tmp_path):
    video = write_synthetic_video(tmp_path / "clip.mp4", 4, (96, 128))
    ids0 = _true_ids(0, (96, 128))
    res = propagate_video(
        open_frames(video), {0: ids0}, colour_features, PRESETS["crw"], tmp_path / "o", short_side=48, overlay=False
    )
    assert res.work_size == (48, 64) and res.feature_grid == (12, 16)
    assert read_index_png(res.mask_dir / "00003.png").shape == (96, 128)


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


def test_cli_propagate(tmp_path):
    video = write_synthetic_video(tmp_path / "clip.mp4", 6, SIZE)
    first, later = tmp_path / "first.png", tmp_path / "later.png"
    write_palette_png(first, _true_ids(0))
    write_palette_png(later, np.where(_true_ids(3) == 2, 2, 0).astype(np.uint8))
    half = np.asarray(Image.fromarray(_true_ids(0)).resize((SIZE[1] // 2, SIZE[0] // 2), Image.NEAREST))
    write_palette_png(tmp_path / "half.png", half)
    wide = {"COLUMNS": "200"}
    masks = ("--mask", first, "--mask", f"3:{later}", "--mask", f"40:{later}")
    res = run_cli("propagate", video, *masks, "--out", tmp_path / "out", "--device", "cpu", "--random-init", env=wide)
    assert "RANDOM-INIT" in res.output and "frames/s" in res.output
    assert "preset 'dul' (the default for random weights)" in res.output and "from the checkpoint" not in res.output
    assert "frame 40 was not used" in res.output
    assert (tmp_path / "out" / "overlay.mp4").is_file() and len(list((tmp_path / "out" / "masks").glob("*.png"))) == 6
    # a mask at half the size is resized with a warning
    short = ("--device", "cpu", "--no-overlay", "--max-frames", 2, "--random-init", "--precision", "bf16")
    res = run_cli("propagate", video, "--mask", tmp_path / "half.png", "--out", tmp_path / "out2", *short, env=wide)
    assert "resizing the mask" in res.output
    # clear errors
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 500)
    res = run_cli("propagate", bad, "--mask", first, exit_code=2)
    assert "cannot read video" in res.output
    Image.fromarray(np.zeros((10, 40), np.uint8) + 1).save(tmp_path / "wrong.png")
    res = run_cli("propagate", video, "--mask", tmp_path / "wrong.png", exit_code=2)
    assert "aspect ratio" in res.output
    res = run_cli("propagate", video, "--mask", f"2:{first}", exit_code=2)
    assert "frame 0" in res.output
    res = run_cli("propagate", video, "--mask", first, "--precision", "fp8", exit_code=2)
    assert "--precision must be one of fp32, bf16" in res.output
    res = run_cli("propagate", video, "--mask", first, "--random-init", "--checkpoint", "crw", exit_code=2)
    assert "exclude each other" in res.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_cli("propagate", "--help")
    assert "--short-side" in res.output

"""tritoncorr.VideoPredictor: SAM 2's interface over the one mid-video-object mechanism (track_objects).

Most tests use the cheap colour features of test_propagate_video on generated clips; the real-clip
tests (DAVIS car-shadow of ../shared/data, skipped when absent) use a real ResNet-18.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import run_cli
from test_propagate_video import colour_features
from tritoncorr.evals.davis import read_index_png, write_palette_png

from tritoncorr import VideoPredictor
from tritoncorr.methods.inference import FeatureModel
from tritoncorr.propagation import PRESETS
from tritoncorr.video import open_frames, propagate_video, synthetic_video_frame, write_synthetic_video

SIZE = (64, 96)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _torch_path(torch_backend, one_thread):
    yield


def _colour_predictor(preset="crw", short_side=0) -> VideoPredictor:
    fm = FeatureModel(torch.nn.Identity(), colour_features, "rgb", preset, "test", "colour features")
    return VideoPredictor(fm, short_side=short_side)


def _truth(t: int, size=SIZE) -> np.ndarray:
    return synthetic_video_frame(t, size)[1]


def _iou(a, b) -> float:
    return float((a & b).sum()) / max(1, float((a | b).sum()))


def _frames(tmp_path: Path, n: int, size=SIZE) -> np.ndarray:
    """The generated clip as decoded from an H.264 file (the colour features track it as a real decode)."""
    video = write_synthetic_video(tmp_path / f"clip{n}.mp4", n, size)
    return np.stack(list(open_frames(video).frames()))


def test_two_objects_equal_the_propagate_command_path(tmp_path):
    folder = write_synthetic_video(tmp_path / "clip.mp4", 10, SIZE)
    first = _truth(0)
    res = propagate_video(
        open_frames(folder), {0: first}, colour_features, PRESETS["crw"], tmp_path / "cli", short_side=0, overlay=False
    )
    pred = _colour_predictor()
    state = pred.init_state(folder)
    assert (state.video_height, state.video_width, state.num_frames) == (*SIZE, 10)
    t0, ids, masks = pred.add_new_mask(state, 0, 1, first == 1)
    assert (t0, ids) == (0, [1]) and masks.shape == (1, *SIZE)
    pred.add_new_mask(state, 0, 2, first == 2)
    seen = []
    for t, obj_ids, masks in pred.propagate_in_video(state):
        assert obj_ids == [1, 2] and masks.dtype == bool and masks.shape == (2, *SIZE)
        png = read_index_png(res.mask_dir / f"{t:05d}.png")
        assert (masks[0] == (png == 1)).all() and (masks[1] == (png == 2)).all(), t
        seen.append(t)
    assert seen == list(range(10))
    assert _iou(masks[0], _truth(9) == 1) > 0.4 and _iou(masks[1], _truth(9) == 2) > 0.4


def test_object_added_at_frame_k_and_arbitrary_ids(tmp_path):
    video = _frames(tmp_path, 12)
    pred = _colour_predictor()
    state = pred.init_state(video)
    pred.add_new_mask(state, 0, 1000, _truth(0) == 1)  # ids need not be small
    pred.add_new_mask(state, 6, 3, _truth(6) == 2)  # the square appears at frame 6
    out = {t: (ids, m) for t, ids, m in pred.propagate_in_video(state)}
    assert sorted(out) == list(range(12))
    for t in range(6):
        assert not out[t][1][1].any(), t  # object 3 does not exist before its first mask
    assert (out[6][1][1] == (_truth(6) == 2)).all()  # exactly the given mask at its frame
    ids, m = out[11]
    assert ids == [1000, 3] and _iou(m[0], _truth(11) == 1) > 0.4
    # (the toy colour features hold the fast-sliding square for a few frames only)
    assert _iou(out[8][1][1], _truth(8) == 2) > 0.4
    # the same with the propagate command's id-map input (one mechanism): identical masks
    ids0 = np.where(_truth(0) == 1, 1000, 0)
    ids6 = np.where(_truth(6) == 2, 3, 0)
    from tritoncorr.predictor import track_objects

    for t, got in track_objects(iter(video), {0: ids0, 6: ids6}, colour_features, PRESETS["crw"], short_side=0):
        assert ((got == 1000) == out[t][1][0]).all() and ((got == 3) == out[t][1][1]).all()


def test_start_frame_and_max_frames_and_reset(tmp_path):
    pred = _colour_predictor()
    state = pred.init_state(_frames(tmp_path, 12))
    pred.add_new_mask(state, 2, 1, _truth(2) == 1)
    ts = [t for t, _, _ in pred.propagate_in_video(state)]
    assert ts == list(range(2, 12))  # frames before the first mask are not yielded
    ts = [t for t, _, _ in pred.propagate_in_video(state, start_frame_idx=5, max_frame_num_to_track=3)]
    assert ts == [5, 6, 7, 8]
    pred.reset_state(state)
    assert state.obj_ids == [] and not state.masks
    with pytest.raises(ValueError, match="add_new_mask first"):
        next(pred.propagate_in_video(state))


def test_input_checks(tmp_path):
    pred = _colour_predictor()
    state = pred.init_state(_frames(tmp_path, 3))
    with pytest.raises(ValueError, match=r"is \(10, 10\), the video frames are \(64, 96\)"):
        pred.add_new_mask(state, 0, 1, np.ones((10, 10), bool))
    with pytest.raises(ValueError, match="empty"):
        pred.add_new_mask(state, 0, 1, np.zeros(SIZE, bool))
    with pytest.raises(ValueError, match="outside the video"):
        pred.add_new_mask(state, 3, 1, _truth(0) == 1)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        pred.init_state(np.zeros((4, 5, 6)))
    with pytest.raises(ValueError, match="unknown preset"):
        VideoPredictor(pred.model, "nope")


def test_iterator_input_is_streamed_once(tmp_path):
    pred = _colour_predictor()
    state = pred.init_state(f for f in _frames(tmp_path, 5))
    assert state.num_frames is None and (state.video_height, state.video_width) == SIZE
    pred.add_new_mask(state, 0, 1, _truth(0) == 1)
    assert [t for t, _, _ in pred.propagate_in_video(state)] == list(range(5))
    with pytest.raises(RuntimeError, match="already read"):
        next(pred.propagate_in_video(state))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux) to read the RSS")
def test_streaming_memory_is_bounded():
    # 1,000 generated frames from a generator (never all in memory): the RSS after 100 and after 1,000
    # frames differ by far less than the frames themselves would take (1,000 x 32x48x3 = 4.6 MB).
    # CRW's policy with a 4-frame context keeps the test quick (every preset's window is bounded alike)
    import dataclasses

    size = (32, 48)
    fm = _colour_predictor().model
    pred = VideoPredictor(fm, dataclasses.replace(PRESETS["crw"], context=4), short_side=0)
    state = pred.init_state(synthetic_video_frame(t, size)[0] for t in range(1000))
    pred.add_new_mask(state, 0, 1, _truth(0, size) == 1)
    rss = {}
    for t, _, _ in pred.propagate_in_video(state):
        if t in (100, 999):
            rss[t] = _rss_mb()
    assert rss[999] - rss[100] < 2.0, rss


def test_random_init_warns_and_default_is_the_embedded_checkpoint(monkeypatch):
    with pytest.warns(UserWarning, match="RANDOM-INIT"):
        p = VideoPredictor.from_pretrained(random_init=True, device="cpu")
    assert p.model.method == "backbone"
    from tritoncorr import weights

    entry = weights.REGISTRY[weights.DEFAULT_NAME]
    if not (REPO / "tritoncorr" / entry.package_file).is_file():
        pytest.skip("the embedded checkpoint is not in this checkout")
    d = VideoPredictor.from_pretrained(device="cpu")
    assert d.model.method == "stt" and d.preset == "stt"


def test_propagate_without_checkpoint_uses_the_embedded_model(tmp_path):
    video = write_synthetic_video(tmp_path / "clip.mp4", 3, SIZE)
    mask = tmp_path / "first.png"
    write_palette_png(mask, _truth(0))
    out = tmp_path / "o"
    res = run_cli(
        "propagate", video, "--mask", mask, "--out", out, "--device", "cpu", "--no-overlay", env={"COLUMNS": "300"}
    )
    assert "preset 'stt' (from the checkpoint tritoncorr-stt-r18-cpu)" in res.output and "RANDOM" not in res.output
    assert len(list((out / "masks").glob("*.png"))) == 3


# ----------------------------------------------------------------------------------------------
# Real clip (../shared/data)
# ----------------------------------------------------------------------------------------------


def _car_shadow(shared_data: Path, tmp_path: Path, n: int) -> tuple[Path, np.ndarray]:
    src = shared_data / "davis-mini" / "JPEGImages" / "480p" / "car-shadow"
    frames = tmp_path / "car-shadow"
    frames.mkdir()
    for p in sorted(src.glob("*.jpg"))[:n]:
        (frames / p.name).symlink_to(p)
    first = np.array(
        __import__("PIL.Image", fromlist=["Image"]).open(
            shared_data / "davis-mini" / "Annotations" / "480p" / "car-shadow" / "00000.png"
        )
    )
    return frames, first


def test_equal_masks_to_the_propagate_command_on_a_real_clip(shared_data, tmp_path):
    from tritoncorr.models import dul_backbone
    from tritoncorr.models.loading import save_backbone_weights

    frames, first = _car_shadow(shared_data, tmp_path, 5)
    torch.manual_seed(5)
    ckpt = save_backbone_weights(dul_backbone(), tmp_path / "backbone.safetensors")
    write_palette_png(tmp_path / "first.png", first)
    options = ("--short-side", 120, "--out", tmp_path / "cli", "--no-overlay", "--device", "cpu")
    run_cli("propagate", frames, "--mask", tmp_path / "first.png", "--checkpoint", ckpt, *options)
    pred = VideoPredictor.from_pretrained(str(ckpt), short_side=120, device="cpu")
    state = pred.init_state(frames)
    pred.add_new_mask(state, 0, 1, first == 1)
    n = 0
    for t, _ids, masks in pred.propagate_in_video(state):
        png = read_index_png(tmp_path / "cli" / "masks" / f"{t:05d}.png")
        assert (masks[0] == (png == 1)).all(), t
        n += 1
    assert n == 5


def test_example_script_runs(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "predict_davis_clip.py",
            "--root",
            str(shared_data / "davis-mini"),
            "--short-side",
            "120",
            "--max-frames",
            "4",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    runpy.run_path(str(REPO / "examples" / "predict_davis_clip.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "frame   3 object 1: IoU" in out and "mean IoU over 3 object-frames" in out
    assert len(list((tmp_path / "out").glob("*.png"))) == 4

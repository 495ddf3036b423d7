"""Inputs that used to give a silent wrong answer now give a warning or an error naming the file (issue 25).

(The CRW ``model_type`` and random-bytes ``convert`` cases are in ``test_convert.py``.)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from cli_runs import run_cli, run_eval
from eval_layouts import make_vip
from PIL import Image
from test_reliability import _write_video
from tritoncorr.evals.davis import DavisDataset, DavisFormatError, read_index_png
from tritoncorr.evals.synthetic import make_synthetic_davis

from tritoncorr.video import read_mask

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _square(h: int = 120, w: int = 160) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[30:90, 40:120] = 1
    return m


@pytest.mark.parametrize("colour", [(255, 255, 255), (128, 0, 0), (255, 0, 0)])
def test_an_rgb_jpeg_mask_is_one_object_with_a_warning(tmp_path, colour):
    """A binary mask saved as an RGB JPEG: edge noise used to become dozens of 'objects'."""
    m = _square()
    path = tmp_path / "mask.jpg"
    Image.fromarray((m[..., None] * np.array(colour, np.uint8)).astype(np.uint8)).save(path, quality=75)
    assert len(np.unique(np.asarray(Image.open(path)).reshape(-1, 3), axis=0)) > 2  # it is noisy
    with pytest.warns(UserWarning, match=f"mask {path} has .* colours: treated as 2"):
        ids = read_mask(path)
    assert set(np.unique(ids)) == {0, 1}  # (128, 0, 0) is DAVIS id 1; another single colour is object 1 too
    assert (ids == m).mean() > 0.995


def test_a_two_object_palette_coloured_jpeg_keeps_the_palette_ids(tmp_path):
    rgb = np.zeros((120, 160, 3), np.uint8)
    rgb[20:60, 20:80] = (0, 128, 0)  # DAVIS id 2
    rgb[70:110, 90:150] = (128, 128, 0)  # DAVIS id 3
    path = tmp_path / "two.jpg"
    Image.fromarray(rgb).save(path, quality=80)
    with pytest.warns(UserWarning, match="treated as 3"):
        ids = read_mask(path)
    want = np.zeros((120, 160), np.uint8)
    want[20:60, 20:80], want[70:110, 90:150] = 2, 3
    assert set(np.unique(ids)) == {0, 2, 3} and (ids == want).mean() > 0.99


def test_an_exact_rgb_mask_reads_without_a_warning(tmp_path):
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[5:20, 5:20] = (200, 10, 30)
    rgb[25:35, 30:45] = (20, 200, 30)
    path = tmp_path / "exact.png"
    Image.fromarray(rgb).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = read_mask(path)
    assert set(np.unique(ids)) == {0, 1, 2}


def test_a_video_cut_in_half_warns_with_both_frame_counts(tmp_path):
    video = _write_video(tmp_path / "cut.mp4", frames=40, size=(48, 64), faststart=True)
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])  # the index (at the start) survives
    mask = tmp_path / "m.png"
    m = np.zeros((48, 64), np.uint8)
    m[10:30, 10:40] = 1
    Image.fromarray(m, mode="L").save(mask)
    r = run_cli("propagate", video, "--mask", mask, "--out", tmp_path / "out", "--device", "cpu", "--no-overlay")
    warn = [line for line in r.output.splitlines() if line.startswith("warning:") and "declares 40 frames" in line]
    assert len(warn) == 1, r.output
    n = len(list((tmp_path / "out" / "masks").glob("*.png")))
    assert 0 < n < 40 and f"only {n} could be decoded" in warn[0] and str(video) in warn[0]
    assert f"the output holds {n} frames" in warn[0] and f"({n} palette PNGs)" in r.output


@pytest.mark.parametrize(
    "setting, words",
    [
        ("data.root=/nonexistent", ["data.root", "source='synthetic'", "data.source"]),
        ("data.hf_column=video", ["hf_column", "source='hf'"]),
    ],
)
def test_a_data_option_the_source_does_not_use_is_an_error(tmp_path, setting, words):
    r = run_cli("train", f"{RECIPES / 'dul.py'}:smoke", "--set", setting, "--out", tmp_path / "run", exit_code=2)
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), r.output
    assert "Traceback" not in r.output


def test_an_unknown_sequence_suggests_close_names(tmp_path):
    root = make_synthetic_davis(tmp_path / "D", num_sequences=2, num_frames=3, height=24, width=32)
    name = DavisDataset(root).names[0]
    with pytest.raises(DavisFormatError, match=f"did you mean '{name}'"):
        DavisDataset(root, sequences=[name + "go"])
    r = run_eval("davis", root, "-s", name + "go", "--device", "cpu", "--out", tmp_path / "o", exit_code=2)
    assert f"'{name}go': did you mean '{name}'" in r.output, r.output


def test_vip_accepts_rgb_predictions_with_equal_channels_and_refuses_coloured_ones(tmp_path):
    """CRW's test.py writes VIP predictions as RGB PNGs with R = G = B = category id."""
    root = make_vip(tmp_path / "VIP")
    res_l, res_rgb = tmp_path / "pred-l", tmp_path / "pred-rgb"
    for ann in sorted((root / "Annotations" / "Category_ids").rglob("*.png")):
        ids = np.asarray(Image.open(ann))
        pred = np.where(ids == 255, 0, ids).astype(np.uint8)
        pred[:, : pred.shape[1] // 3] = 13  # a wrong third
        rel = ann.relative_to(root / "Annotations" / "Category_ids")
        for folder, img in (
            (res_l, Image.fromarray(pred, mode="L")),
            (res_rgb, Image.fromarray(np.repeat(pred[..., None], 3, axis=2), mode="RGB")),
        ):
            (folder / rel.parent).mkdir(parents=True, exist_ok=True)
            img.save(folder / rel)
    outs = []
    for folder in (res_l, res_rgb):
        run_eval("vip", root, "--results", folder)
        outs.append(
            (folder / "vip_global.csv").read_text()
            if (folder / "vip_global.csv").exists()
            else sorted(p.read_text() for p in folder.glob("*.csv"))
        )
    assert outs[0] == outs[1]
    bad = next(res_rgb.rglob("*.png"))
    rgb = np.asarray(Image.open(bad)).copy()
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb, mode="RGB").save(bad)
    with pytest.raises(DavisFormatError, match="equal channels"):
        read_index_png(bad)
    r = run_eval("vip", root, "--results", res_rgb, exit_code=2)
    assert str(bad) in r.output and "equal channels" in r.output, r.output

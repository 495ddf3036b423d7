"""The DAVIS-2017 reader: layout, binary (2016-style) masks, every format error, GT-as-results scoring."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tritoncorr.evals.davis import (
    DavisDataset,
    DavisFormatError,
    davis_palette,
    evaluate_results,
    read_index_png,
    write_palette_png,
)
from tritoncorr.evals.synthetic import make_synthetic_davis


@pytest.fixture
def davis(tmp_path) -> Path:
    return make_synthetic_davis(tmp_path / "DAVIS", num_sequences=2, num_frames=5, height=24, width=40, seed=3)


def test_reads_layout(davis):
    ds = DavisDataset(davis)
    assert ds.names == ["synth-000", "synth-001"]
    seq = ds["synth-000"]
    assert len(seq) == 5 and seq.size == (24, 40) and not seq.binary
    assert seq.frame_ids == [f"{t:05d}" for t in range(5)] == seq.mask_ids
    f = seq.load_frame(0)
    assert f.shape == (24, 40, 3) and f.dtype == np.uint8
    m = seq.load_masks()
    assert m.shape == (5, 24, 40) and m.dtype == np.uint8
    assert seq.num_objects() == int(m[0].max()) >= 2
    assert DavisDataset(davis, sequences=["synth-001"]).names == ["synth-001"]


def test_palette_png_roundtrip(tmp_path):
    ids = np.arange(6 * 7, dtype=np.uint8).reshape(6, 7)
    p = write_palette_png(tmp_path / "a" / "x.png", ids)
    with Image.open(p) as im:
        assert im.mode == "P" and im.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    np.testing.assert_array_equal(read_index_png(p), ids)
    with pytest.raises(ValueError, match="0..255"):
        write_palette_png(tmp_path / "y.png", np.full((2, 2), 300))


def test_palette_is_the_davis_palette(shared_data):
    ann = shared_data / "davis-mini" / "Annotations" / "480p" / "car-shadow" / "00000.png"
    with Image.open(ann) as im:
        assert im.getpalette() == davis_palette()


def test_binary_2016_masks_are_one_object(davis):
    ann = davis / "Annotations" / "480p" / "synth-000"
    for p in sorted(ann.glob("*.png")):
        m = read_index_png(p)
        Image.fromarray(np.where(m == 1, 255, 0).astype(np.uint8), mode="L").save(p)
    seq = DavisDataset(davis)["synth-000"]
    assert seq.binary and seq.num_objects() == 1
    masks = seq.load_masks()
    assert set(np.unique(masks)) <= {0, 1} and masks.max() == 1
    # scored as one object against itself
    res = davis.parent / "res"
    for t, fid in enumerate(seq.mask_ids):
        write_palette_png(res / "synth-000" / f"{fid}.png", masks[t])
    scores = evaluate_results(davis, res, sequences=["synth-000"])
    assert [o.name for o in scores.objects] == ["synth-000_1"] and scores.jf_mean == 1.0


def test_ground_truth_as_results_scores_exactly_one(davis, tmp_path):
    scores = evaluate_results(davis, davis / "Annotations" / "480p")
    assert len(scores.objects) >= 4
    row = scores.global_row()
    assert row["J&F-Mean"] == 1.0 and row["J-Mean"] == 1.0 and row["F-Mean"] == 1.0
    assert row["J-Recall"] == 1.0 and row["F-Recall"] == 1.0
    assert row["J-Decay"] == 0.0 and row["F-Decay"] == 0.0


def _expect(match):
    return pytest.raises(DavisFormatError, match=match)


def test_error_missing_root(tmp_path):
    with _expect("does not exist"):
        DavisDataset(tmp_path / "nope")


@pytest.mark.parametrize("sub", ["JPEGImages", "Annotations"])
def test_error_missing_subfolder(davis, sub):
    shutil.rmtree(davis / sub)
    with _expect(f"missing folder .*{sub}"):
        DavisDataset(davis)


def test_error_bad_resolution_and_split(davis):
    with _expect("resolution"):
        DavisDataset(davis, resolution="720p")
    with _expect("Full-Resolution"):
        DavisDataset(davis, resolution="Full-Resolution")  # folder absent
    with _expect("missing split file .*test-dev.txt"):
        DavisDataset(davis, split="test-dev")


def test_error_empty_split_and_unknown_sequence(davis):
    (davis / "ImageSets" / "2017" / "val.txt").write_text("\n  \n")
    with _expect("lists no sequence"):
        DavisDataset(davis)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("synth-000\nghost\n")
    with _expect("'ghost' is listed .* does not exist"):
        DavisDataset(davis)
    with _expect("not listed"):
        DavisDataset(davis, sequences=["other"])


def test_error_frame_mask_count_mismatch(davis):
    ann = davis / "Annotations" / "480p" / "synth-001"
    (ann / "00004.png").unlink()
    with _expect("synth-001.*5 frames .* 4 annotations"):
        DavisDataset(davis)
    # semi-supervised propagation only needs the first frame's mask
    assert len(DavisDataset(davis, require_all_masks=False)["synth-001"].masks) == 4
    for p in ann.glob("*.png"):
        p.unlink()
    with _expect("no .png annotation"):
        DavisDataset(davis, require_all_masks=False)


def test_error_first_mask_missing(davis):
    (davis / "Annotations" / "480p" / "synth-000" / "00000.png").unlink()
    with _expect("first annotation 00001.png does not match the first frame 00000.jpg"):
        DavisDataset(davis, require_all_masks=False)


def test_error_size_mismatch(davis):
    p = davis / "Annotations" / "480p" / "synth-000" / "00002.png"
    write_palette_png(p, np.zeros((24, 41), np.uint8))
    with _expect("00002.png is 41x24"):
        DavisDataset(davis)


@pytest.mark.parametrize("name", ["JPEGImages/480p/synth-000/00003.jpg", "Annotations/480p/synth-001/00001.png"])
def test_error_corrupt_file(davis, name):
    (davis / name).write_bytes(b"this is not an image")
    with _expect(f"cannot read .*{Path(name).name}"):
        DavisDataset(davis)


def test_error_truncated_png_on_load(davis):
    p = davis / "Annotations" / "480p" / "synth-000" / "00001.png"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with _expect("00001.png"):
        DavisDataset(davis)["synth-000"].load_masks()


def test_error_rgb_mask(davis):
    p = davis / "Annotations" / "480p" / "synth-000" / "00001.png"
    rgb = np.zeros((24, 40, 3), np.uint8)
    rgb[3, 4] = (128, 0, 0)  # a coloured RGB mask; R = G = B would be read as ids (CRW's format)
    Image.fromarray(rgb).save(p)
    with _expect("00001.png: an RGB mask must have equal channels"):
        DavisDataset(davis)["synth-000"].load_masks()
    Image.fromarray(np.zeros((24, 40, 4), np.uint8)).save(p)
    with _expect("00001.png: mask must be an indexed"):
        DavisDataset(davis)["synth-000"].load_masks()


def test_results_errors(davis, tmp_path):
    res = tmp_path / "res"
    with _expect("results folder"):
        evaluate_results(davis, res)
    shutil.copytree(davis / "Annotations" / "480p", res)
    (res / "synth-001" / "00002.png").unlink()
    with _expect("00002.png not found"):
        evaluate_results(davis, res)
    shutil.copy(res / "synth-001" / "00001.png", res / "synth-001" / "00002.png")
    write_palette_png(res / "synth-000" / "00001.png", np.full((24, 40), 9, np.uint8))
    with _expect("'synth-000'.*object id 9"):
        evaluate_results(davis, res)
    write_palette_png(res / "synth-000" / "00001.png", np.zeros((12, 40), np.uint8))
    with _expect("00001.png is 40x12"):
        evaluate_results(davis, res)

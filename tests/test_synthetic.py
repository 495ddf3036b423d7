"""The synthetic DAVIS-format generator: determinism, content, layout."""

from __future__ import annotations

import numpy as np
import pytest
from tritoncorr.evals.davis import DavisDataset
from tritoncorr.evals.synthetic import make_synthetic_davis, synthetic_clip


def test_clip_shapes_and_determinism():
    f1, m1 = synthetic_clip(6, 40, 56, seed=11)
    f2, m2 = synthetic_clip(6, 40, 56, seed=11)
    f3, m3 = synthetic_clip(6, 40, 56, seed=12)
    assert f1.shape == (6, 40, 56, 3) and f1.dtype == np.uint8
    assert m1.shape == (6, 40, 56) and m1.dtype == np.uint8
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(f1, f3)


@pytest.mark.parametrize("seed", range(6))
def test_clip_objects_visible_moving_textured(seed):
    frames, masks = synthetic_clip(8, 64, 96, seed=seed)
    n = int(masks.max())
    assert 2 <= n <= 3
    assert set(np.unique(masks[0])) == set(range(n + 1)), "every object visible in frame 0"
    for k in range(1, n + 1):
        areas = (masks == k).sum(axis=(1, 2))
        assert (areas > 0).sum() >= 1
        assert not np.array_equal(masks[0] == k, masks[-1] == k), f"object {k} does not move"
        # textured: more than a handful of distinct colours inside the object
        pix = frames[0][masks[0] == k]
        assert len(np.unique(pix.reshape(-1, 3), axis=0)) > 10
    bg = frames[0][masks[0] == 0]
    assert bg.std() > 10, "background is textured"


def test_clip_occlusion_order():
    # With a fixed object count the later object is painted above the earlier ones: over many seeds
    # some frame shows an object's area shrinking when another passes in front of it.
    shrunk = False
    for seed in range(8):
        _, masks = synthetic_clip(12, 48, 64, seed=seed, num_objects=3)
        areas = np.stack([(masks == k).sum(axis=(1, 2)) for k in (1, 2, 3)])
        shrunk |= bool((areas.min(axis=1) < 0.8 * areas.max(axis=1)).any())
    assert shrunk


def test_clip_argument_errors():
    with pytest.raises(ValueError, match="num_frames"):
        synthetic_clip(0, 32, 32, 0)
    with pytest.raises(ValueError, match="height and width"):
        synthetic_clip(2, 8, 32, 0)
    with pytest.raises(ValueError, match="num_objects"):
        synthetic_clip(2, 32, 32, 0, num_objects=9)


def test_make_synthetic_davis_layout(tmp_path):
    root = make_synthetic_davis(tmp_path / "syn", num_sequences=3, num_frames=4, height=32, width=48, seed=1)
    assert (root / "ImageSets" / "2017" / "val.txt").read_text().split() == ["synth-000", "synth-001", "synth-002"]
    ds = DavisDataset(root)
    assert len(ds) == 3
    _, masks = synthetic_clip(4, 32, 48, seed=1000 + 2)
    np.testing.assert_array_equal(ds["synth-002"].load_masks(), masks)  # PNG masks are exact
    frames, _ = synthetic_clip(4, 32, 48, seed=1000 + 2)
    jpg = ds["synth-002"].load_frame(1).astype(np.int16)
    assert np.abs(jpg - frames[1]).mean() < 8  # JPEG q95

"""DAVIS J / F / statistics / CSVs against hand-computed values and a transcription of the toolkit's ops.

The reference F below uses exactly the official toolkit's operations (cv2.dilate with an
skimage.morphology.disk structuring element); cv2 and skimage are test-only dependencies.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from tritoncorr.evals.davis import (
    GLOBAL_COLUMNS,
    DavisFormatError,
    DavisScores,
    ObjectScore,
    db_statistics,
    dilate_disk,
    disk,
    f_boundary,
    jaccard,
    score_sequence,
    seg2bmap,
)

cv2 = pytest.importorskip("cv2")
skmorph = pytest.importorskip("skimage.morphology")


def _reference_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """Transcription of the toolkit's f_measure (no void) with cv2 + skimage."""
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(pred.shape))

    def bmap(seg):
        seg = seg.astype(bool)
        e = np.zeros_like(seg)
        s = np.zeros_like(seg)
        se = np.zeros_like(seg)
        e[:, :-1] = seg[:, 1:]
        s[:-1, :] = seg[1:, :]
        se[:-1, :-1] = seg[1:, 1:]
        b = seg ^ e | seg ^ s | seg ^ se
        b[-1, :] = seg[-1, :] ^ e[-1, :]
        b[:, -1] = seg[:, -1] ^ s[:, -1]
        b[-1, -1] = 0
        return b

    fg_b, gt_b = bmap(pred), bmap(gt)
    se_ = skmorph.disk(bound_pix).astype(np.uint8)
    fg_dil = cv2.dilate(fg_b.astype(np.uint8), se_)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), se_)
    gt_match = gt_b * fg_dil
    fg_match = fg_b * gt_dil
    n_fg, n_gt = np.sum(fg_b), np.sum(gt_b)
    if n_fg == 0 and n_gt > 0:
        p, r = 1, 0
    elif n_fg > 0 and n_gt == 0:
        p, r = 0, 1
    elif n_fg == 0 and n_gt == 0:
        p, r = 1, 1
    else:
        p, r = np.sum(fg_match) / float(n_fg), np.sum(gt_match) / float(n_gt)
    return 0 if p + r == 0 else 2 * p * r / (p + r)


# --------------------------------------------------------------------------- J


def test_jaccard_hand_cases():
    z = np.zeros((5, 7), bool)
    full = np.ones((5, 7), bool)
    assert jaccard(z, z) == 1.0  # empty union
    assert jaccard(full, full) == 1.0
    assert jaccard(z, full) == 0.0 and jaccard(full, z) == 0.0
    one = z.copy()
    one[2, 3] = True
    two = one.copy()
    two[2, 4] = True
    assert jaccard(two, one) == 0.5
    assert jaccard(one, one) == 1.0
    shifted = z.copy()
    shifted[0, 0] = True
    assert jaccard(one, shifted) == 0.0
    # 4 x 4 square vs 2 x 4 half: 8 / 16
    a = np.zeros((6, 6), bool)
    a[1:5, 1:5] = True
    b = np.zeros((6, 6), bool)
    b[1:3, 1:5] = True
    assert jaccard(a, b) == 0.5
    assert isinstance(jaccard(a, b), float)


def test_jaccard_video_and_void():
    a = np.zeros((3, 4, 4), bool)
    b = np.zeros((3, 4, 4), bool)
    a[1, :2] = True
    b[1, :1] = True
    a[2] = True
    j = jaccard(a, b)
    assert j.shape == (3,) and j.dtype == np.float64
    np.testing.assert_array_equal(j, [1.0, 0.5, 0.0])
    void = np.zeros_like(a)
    void[1, 1] = True  # the row b misses is void -> perfect
    np.testing.assert_array_equal(jaccard(a, b, void), [1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="shape"):
        jaccard(a, b[:2])


# --------------------------------------------------------------------------- boundaries / dilation


def test_seg2bmap_one_pixel_and_borders():
    seg = np.zeros((5, 5), bool)
    seg[2, 2] = True
    expected = np.zeros((5, 5), bool)
    expected[[1, 1, 2, 2], [1, 2, 1, 2]] = True  # the pixel and its W, N, NW neighbours
    np.testing.assert_array_equal(seg2bmap(seg), expected)
    full = np.ones((4, 6), bool)
    assert not seg2bmap(full).any()
    corner = np.zeros((4, 6), bool)
    corner[-1, -1] = True  # the bottom-right pixel itself is never a boundary
    b = seg2bmap(corner)
    assert not b[-1, -1] and b[-1, -2] and b[-2, -1] and b[-2, -2]


@pytest.mark.parametrize("r", [0, 1, 2, 3, 4, 7, 8, 13])
def test_disk_equals_skimage(r):
    np.testing.assert_array_equal(disk(r), skmorph.disk(r))


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (11, 13), (37, 53)])
@pytest.mark.parametrize("r", [0, 1, 3, 8, 20])
def test_dilate_disk_equals_cv2(shape, r):
    rng = np.random.default_rng(hash((shape, r)) % 2**32)
    for density in (0.0, 0.01, 0.2):
        x = rng.random(shape) < density
        x[0, -1] = density > 0.1  # objects touching borders
        ref = cv2.dilate(x.astype(np.uint8), skmorph.disk(r).astype(np.uint8)).astype(bool)
        np.testing.assert_array_equal(dilate_disk(x, r), ref)


def test_disk_rejects_fractional_radius():
    with pytest.raises(ValueError, match="integer"):
        disk(2.5)


# --------------------------------------------------------------------------- F


def test_f_boundary_special_cases():
    z = np.zeros((20, 30), bool)
    obj = z.copy()
    obj[5:12, 8:20] = True
    assert f_boundary(z, z) == 1.0  # no boundary anywhere
    assert f_boundary(obj, z) == 0.0  # prediction empty
    assert f_boundary(z, obj) == 0.0  # ground truth empty
    assert f_boundary(obj, obj) == 1.0
    full = np.ones_like(z)
    assert f_boundary(full, full) == 1.0  # a full mask has no boundary
    one = z.copy()
    one[10, 10] = True
    assert f_boundary(one, one) == 1.0
    far = z.copy()
    far[1, 28] = True  # diag 36 -> bound_pix = ceil(0.288) = 1: too far
    assert f_boundary(one, far) == 0.0
    near = z.copy()
    near[10, 11] = True  # one pixel away: every boundary pixel within the 1-px disk
    assert f_boundary(one, near) == _reference_f(near, one) == 1.0


def test_f_boundary_tolerance_from_diagonal():
    # 480 x 854 -> ceil(0.008 * 979.6) = 8 px: a 8-px shift keeps F = 1, a 10-px shift does not.
    gt = np.zeros((480, 854), bool)
    gt[100:300, 200:500] = True
    shift8 = np.roll(gt, 8, axis=1)
    shift10 = np.roll(gt, 10, axis=1)
    assert math.ceil(0.008 * math.hypot(480, 854)) == 8
    assert f_boundary(gt, shift8) == 1.0
    assert f_boundary(gt, shift10) < 1.0
    assert f_boundary(gt, shift10) == pytest.approx(_reference_f(shift10, gt), abs=0)


@pytest.mark.parametrize("bound_th", [0.008, 0.05, 2])
def test_f_boundary_matches_toolkit_ops_on_random_masks(bound_th):
    rng = np.random.default_rng(17)
    for shape in [(1, 1), (2, 3), (23, 31), (61, 47)]:
        for _ in range(4):
            # blobby masks: threshold smoothed noise; plus sparse speckles
            gt = rng.random(shape) < rng.uniform(0.05, 0.6)
            pred = gt ^ (rng.random(shape) < 0.1)
            ours = f_boundary(gt, pred, bound_th=bound_th)
            ref = _reference_f(pred, gt, bound_th)
            assert ours == pytest.approx(ref, rel=0, abs=1e-12), (shape, bound_th)


def test_f_boundary_video_shape():
    rng = np.random.default_rng(3)
    gt = rng.random((4, 15, 17)) < 0.3
    pred = rng.random((4, 15, 17)) < 0.3
    f = f_boundary(gt, pred)
    assert f.shape == (4,)
    np.testing.assert_allclose(f, [_reference_f(pred[t], gt[t]) for t in range(4)], rtol=0, atol=1e-12)


def test_f_boundary_void_removed_from_both():
    gt = np.zeros((12, 12), bool)
    gt[2:6, 2:6] = True
    pred = gt.copy()
    pred[8:11, 8:11] = True  # a false positive ...
    void = np.zeros_like(gt)
    void[7:12, 7:12] = True  # ... entirely inside void
    assert f_boundary(gt, pred) < 1.0
    assert f_boundary(gt, pred, void=void) == 1.0


# --------------------------------------------------------------------------- statistics


def test_db_statistics_hand_values():
    v = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    m, r, d = db_statistics(v)
    # linspace(1, 8, 5) = [1, 2.75, 4.5, 6.25, 8] -> ids [0, 2, 4, 5, 7]; first bin v[0:3], last v[5:8]
    assert m == pytest.approx(0.55)
    assert r == 0.5  # 0.5 itself is not > 0.5
    assert d == pytest.approx(0.8 - 0.3)
    # n = 3: ids [0, 1, 1, 2, 2] -> first bin v[0:2], last bin v[2:3]
    m, r, d = db_statistics(np.array([1.0, 0.5, 0.0]))
    assert (m, r) == (0.5, pytest.approx(1 / 3))
    assert d == pytest.approx(0.75)
    # n = 1: every bin is the single value
    assert db_statistics(np.array([0.7])) == (pytest.approx(0.7), 1.0, 0.0)


def test_db_statistics_nan():
    v = np.array([np.nan, 1.0, 1.0, 0.0, 0.0])
    m, r, d = db_statistics(v)
    assert m == 0.5  # nanmean
    assert r == 0.4  # NaN > 0.5 is False and still counts in the denominator (toolkit)
    # ids [0, 1, 2, 3, 4]: first bin v[0:2] -> nanmean 1.0; last bin v[3:5] -> 0.0
    assert d == 1.0


# --------------------------------------------------------------------------- sequence scoring / globals


def _square_video(T, H=16, W=20):
    gt = np.zeros((T, H, W), np.uint8)
    gt[:, 2:8, 2:8] = 1
    gt[:, 9:14, 10:18] = 2
    return gt


def test_score_sequence_excludes_first_and_last_frames():
    gt = _square_video(5)
    pred = gt[1:-1].copy()
    objs = score_sequence("seq", gt, pred)
    assert [o.name for o in objs] == ["seq_1", "seq_2"]
    for o in objs:
        assert o.j.shape == (3,) and o.j_mean == 1.0 and o.f_mean == 1.0
    # a frame that is wrong only at t = 0 or T - 1 cannot be passed: shapes are the evaluated frames
    with pytest.raises(DavisFormatError, match="seq"):
        score_sequence("seq", gt, gt)


def test_score_sequence_zero_pads_and_rejects_extra_objects():
    gt = _square_video(4)
    pred = np.where(gt[1:-1] == 2, 0, gt[1:-1])  # object 2 never predicted
    o1, o2 = score_sequence("s", gt, pred)
    assert o1.j_mean == 1.0 and o2.j_mean == 0.0 and o2.f_mean == 0.0 and o2.j_recall == 0.0
    extra = gt[1:-1].copy()
    extra[0, 0, 0] = 3
    with pytest.raises(DavisFormatError, match="'bad'.*object id 3"):
        score_sequence("bad", gt, extra)


def test_score_sequence_void_is_background_in_semi_supervised():
    gt = _square_video(3)
    gt[:, 0, :] = 255  # void row; objects are counted from frame 0 without it
    pred = np.where(gt[1:-1] == 255, 0, gt[1:-1])
    objs = score_sequence("v", gt, pred)
    assert len(objs) == 2 and all(o.j_mean == 1.0 for o in objs)
    pred_void_fp = pred.copy()
    pred_void_fp[:, 0, :5] = 1  # predicting object 1 on void pixels is a false positive (void unused)
    assert score_sequence("v", gt, pred_void_fp)[0].j_mean < 1.0


def test_global_metrics_average_objects_not_sequences():
    a = ObjectScore("a", 1, np.array([1.0, 1.0]), np.array([1.0, 1.0]))
    b1 = ObjectScore("b", 1, np.array([0.0, 0.0]), np.array([0.5, 0.5]))
    b2 = ObjectScore("b", 2, np.array([0.0, 0.0]), np.array([0.5, 0.5]))
    s = DavisScores([a, b1, b2])
    assert s.j_mean == pytest.approx(1 / 3)  # per-sequence averaging would give 0.5
    assert s.f_mean == pytest.approx(2 / 3)
    assert s.jf_mean == pytest.approx(0.5)
    assert s.j_recall == pytest.approx(1 / 3)
    assert list(s.global_row()) == list(GLOBAL_COLUMNS)


# --------------------------------------------------------------------------- CSVs


def test_csv_names_columns_and_format(tmp_path):
    a = ObjectScore("bike-packing", 1, np.array([0.81234, 0.6]), np.array([0.5, 0.25]))
    b = ObjectScore("bike-packing", 2, np.array([1.0, 1.0]), np.array([1.0, 0.9996]))
    s = DavisScores([a, b], split="val")
    g, p = s.write_csvs(tmp_path)
    assert g.name == "global_results-val.csv" and p.name == "per-sequence_results-val.csv"
    lines = g.read_text().splitlines()
    assert lines[0] == "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
    vals = [float(x) for x in lines[1].split(",")]
    assert all(len(x.split(".")[1]) == 3 for x in lines[1].split(","))
    assert vals[1] == round((0.706170 + 1.0) / 2, 3)
    assert p.read_text().splitlines() == [
        "Sequence,J-Mean,F-Mean",
        "bike-packing_1,0.706,0.375",
        "bike-packing_2,1.000,1.000",
    ]


def test_csv_equals_pandas_like_the_toolkit(tmp_path):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(5)
    objs = [ObjectScore(f"s{i}", k, rng.random(7), rng.random(7)) for i in range(3) for k in (1, 2)]
    s = DavisScores(objs, split="train")
    g, p = s.write_csvs(tmp_path)
    row = s.global_row()
    g_ref = pd.DataFrame(data=np.array([[row[c] for c in GLOBAL_COLUMNS]]), columns=list(GLOBAL_COLUMNS))
    assert g.read_text() == g_ref.to_csv(index=False, float_format="%.3f")
    names = [o.name for o in objs]
    p_ref = pd.DataFrame(
        data=list(zip(names, [o.j_mean for o in objs], [o.f_mean for o in objs])),
        columns=["Sequence", "J-Mean", "F-Mean"],
    )
    assert p.read_text() == p_ref.to_csv(index=False, float_format="%.3f")

"""JHMDB: MAT-file reader, CRW's joint encoding / top-3 decoding, PCK as eval_pck.py computes it,
the reader's errors, and ``tritoncorr eval jhmdb`` end to end on a generated folder.

The ``_crw_*`` functions are direct transcriptions of ajabri/videowalk (``code/data/jhmdb.py``
``draw_labelmap_np`` and the label assembly of ``JhmdbSet.__getitem__``, ``code/utils/test_utils.py``
``process_pose``, ``code/eval/eval_pck.py``), loops and all, for comparison only.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from cli_runs import check_eval_progress, run_eval
from eval_layouts import make_jhmdb
from tritoncorr.evals import jhmdb as J

from tritoncorr.evaluate import FrameGeometry, evaluate_features_on_jhmdb

# --------------------------------------------------------------------------- transcriptions of CRW


def _crw_draw(img, pt, sigma):
    ul = [int(pt[0] - 3 * sigma), int(pt[1] - 3 * sigma)]
    br = [int(pt[0] + 3 * sigma + 1), int(pt[1] + 3 * sigma + 1)]
    if ul[0] >= img.shape[1] or ul[1] >= img.shape[0] or br[0] < 0 or br[1] < 0:
        return img
    size = 6 * sigma + 1
    x = np.arange(0, size, 1, float)
    y = x[:, np.newaxis]
    x0 = y0 = size // 2
    g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))
    g_x = max(0, -ul[0]), min(br[0], img.shape[1]) - ul[0]
    g_y = max(0, -ul[1]), min(br[1], img.shape[0]) - ul[1]
    img_x = max(0, ul[0]), min(br[0], img.shape[1])
    img_y = max(0, ul[1]), min(br[1], img.shape[0])
    img[img_y[0] : img_y[1], img_x[0] : img_x[1]] = g[g_y[0] : g_y[1], g_x[0] : g_x[1]]
    return img


def _crw_labels(pos_img, ht, wd, newh, neww, map_scale, lblsize, sigma=0.5):
    """pos_img (2, 15, T) 1-based -> (T, h, w, 16) float32 labels, background first."""
    coord = pos_img - 1
    coord[0, :, :] = coord[0, :, :] * float(neww) / float(wd) / map_scale[0]
    coord[1, :, :] = coord[1, :, :] * float(newh) / float(ht) / map_scale[1]
    lbls = np.zeros((coord.shape[2], lblsize[0], lblsize[1], coord.shape[1]))
    for i in range(coord.shape[2]):
        for j in range(coord.shape[1]):
            _crw_draw(lbls[i, :, :, j], coord[:, j, i], sigma)
    t = torch.zeros(coord.shape[2], lblsize[0], lblsize[1], coord.shape[1])
    for i in range(coord.shape[2]):
        t[i] = torch.from_numpy(lbls[i])
    return torch.cat([(t.sum(-1) == 0)[..., None] * 1.0, t], dim=-1)


def _crw_process_pose(pred, topk=3):
    pred = pred[..., 1:]
    flatlbls = pred.flatten(0, 1)
    topk = min(flatlbls.shape[0], topk)
    vals, ids = torch.topk(flatlbls, k=topk, dim=0)
    vals /= vals.sum(0)[None]
    xx, yy = ids % pred.shape[1], ids // pred.shape[1]
    current_coord = torch.stack([(xx * vals).sum(0), (yy * vals).sum(0)], dim=0)
    current_coord[:, flatlbls.sum(0) == 0] = -1
    return current_coord


def _crw_pck(gts, preds_feat, heights, widths, feat_res=40, rng=(0.1, 0.2, 0.3, 0.4, 0.5)):
    """eval_pck.py: gts (2, 15, T) pos_img - 1; preds_feat float32 (2, 15, T) feature coordinates."""
    preds, vis_set, boxes = [], [], []
    for i in range(len(gts)):
        predres = np.array(preds_feat[i], dtype=np.float32)
        jnt_visible = np.ones((predres.shape[1], predres.shape[2]))
        for j in range(predres.shape[1]):
            for k in range(predres.shape[2]):
                if predres[0, j, k] < 0:
                    jnt_visible[j, k] = 0
        vis_set.append(jnt_visible)
        predres[0, :, :] = predres[0, :, :] / float(feat_res) * widths[i]
        predres[1, :, :] = predres[1, :, :] / float(feat_res) * heights[i]
        preds.append(predres)
    for i in range(len(gts)):
        nowgt, jnt_visible = gts[i], vis_set[i]
        now_boxes = np.zeros(nowgt.shape[2])
        for k in range(nowgt.shape[2]):
            minx, maxx, miny, maxy = 1e6, -1, 1e6, -1
            for j in range(nowgt.shape[1]):
                if jnt_visible[j, k] == 0:
                    continue
                minx = np.min([minx, nowgt[0, j, k]])
                miny = np.min([miny, nowgt[1, j, k]])
                maxx = np.max([maxx, nowgt[0, j, k]])
                maxy = np.max([maxy, nowgt[1, j, k]])
            now_boxes[k] = 0.6 * np.linalg.norm(np.subtract([maxx, maxy], [minx, miny]))
        boxes.append(now_boxes)
    dist_all = {p: np.zeros([0, 0]) for p in range(15)}
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(len(gts)):
            predres, nowgt, now_boxes, jnt_visible = preds[i], gts[i], boxes[i], vis_set[i]
            for j in range(nowgt.shape[1]):
                for k in range(nowgt.shape[2]):
                    if jnt_visible[j, k] == 0 or k == 0:
                        continue
                    d = np.linalg.norm(
                        np.subtract([predres[0, j, k], predres[1, j, k]], [nowgt[0, j, k], nowgt[1, j, k]])
                    )
                    dist_all[j] = np.append(dist_all[j], [[d / now_boxes[k]]])
    out = []
    for thr in rng:
        pck_all = np.zeros([len(dist_all) + 1, 1])
        for p in range(len(dist_all)):
            idxs = np.argwhere(dist_all[p] <= thr)
            pck_all[p, 0] = 100.0 * len(idxs) / len(dist_all[p])
        pck_all[len(dist_all), 0] = np.mean(pck_all[0 : len(dist_all), 0])
        out.append(pck_all[:, 0])
    return np.stack(out, axis=1)  # (16, A): 15 joints + mean


# --------------------------------------------------------------------------- MAT-files


def test_read_mat_matches_scipy(tmp_path):
    sio = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    arrays = {
        "pos_img": rng.normal(size=(2, 15, 7)) * 100,
        "pos_world": rng.normal(size=(2, 15, 7)).astype(np.float32),
        "scale": rng.integers(0, 9, (3, 4)).astype(np.int16),
        "flags": (rng.random((2, 5)) > 0.5).astype(np.uint8),
    }
    for compress in (False, True):
        p = tmp_path / f"m{compress}.mat"
        sio.savemat(p, arrays, do_compression=compress)
        got, ref = J.read_mat(p), sio.loadmat(p)
        assert set(got) == set(arrays)
        for k in arrays:
            assert got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k]), k
    p = J.write_mat(tmp_path / "ours.mat", arrays)
    ref = sio.loadmat(p)
    for k, v in arrays.items():
        assert np.array_equal(ref[k], v) and np.array_equal(J.read_mat(p)[k], v), k


def test_read_mat_real_file_and_errors(shared_data, tmp_path):
    sio = pytest.importorskip("scipy.io")
    p = next((shared_data / "jhmdb-mini" / "joint_positions").rglob("joint_positions.mat"))
    got, ref = J.read_mat(p), sio.loadmat(p)
    assert np.array_equal(got["pos_img"], ref["pos_img"]) and got["pos_img"].shape == (2, 15, 40)
    assert np.array_equal(J.read_joints(p), ref["pos_img"] - 1)
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64" + b"\0" * 600)
    with pytest.raises(J.JhmdbFormatError, match="v7.3"):
        J.read_mat(bad)
    bad.write_bytes(b"hello" * 40)
    with pytest.raises(J.JhmdbFormatError, match="not a MATLAB 5"):
        J.read_mat(bad)
    bad.write_bytes(p.read_bytes()[:300])
    with pytest.raises(J.JhmdbFormatError, match="truncated"):
        J.read_mat(bad)
    J.write_mat(bad, {"pos_img": np.zeros((2, 14, 3))})
    with pytest.raises(J.JhmdbFormatError, match=r"bad.mat: 'pos_img' must be \(2, 15, T\)"):
        J.read_joints(bad)
    J.write_mat(bad, {"other": np.zeros((2, 2))})
    with pytest.raises(J.JhmdbFormatError, match="no 'pos_img'"):
        J.read_joints(bad)


# --------------------------------------------------------------------------- encoding / decoding


@pytest.mark.parametrize("size", [(240, 320), (320, 240), (37, 53)])
def test_joint_heatmaps_equal_crw(size):
    """Coordinates everywhere, including the truncation cases (-1.5 .. 1.5 cells), borders and outside."""
    ht, wd = size
    rng = np.random.default_rng(1)
    pos = np.stack([rng.uniform(-20, wd + 20, (15, 6)), rng.uniform(-20, ht + 20, (15, 6))])
    pos[:, :4, 0] = [[1.0, 5.0, 9.0, 13.0], [3.0, 1.0, 8.0, 12.0]]  # 0..1.5 cells after -1 and /8
    pos[:, 4:8, 1] = [[-3.0, -11.0, wd + 2.0, wd - 1.0], [ht + 7.0, 2.0, -4.0, ht - 1.0]]
    ref = _crw_labels(pos.copy(), ht, wd, 320, 320, (8, 8), (40, 40))
    geom = FrameGeometry((ht, wd), (320, 320), (320, 320), (40, 40))
    for t in range(pos.shape[2]):
        got = J.JointsCodec(pos[:, :, t] - 1).encode(geom)
        assert got.dtype == torch.float32 and got.shape == (16, 40, 40)
        assert torch.equal(got, ref[t].permute(2, 0, 1)), t
    # the known answer: a joint at cell (10, 20) (1-based pixel 81, 161) is a 4x4 patch peaking at (row 20, col 10)
    heat = J.joint_heatmaps(np.array([[10.0], [20.0]]), (40, 40))
    assert heat[1, 20, 10] == 1.0 and heat[1, 18:22, 8:12].min() > 0 and heat[1].astype(bool).sum() == 16
    assert heat[0].sum() == 40 * 40 - 16 and (heat[0][heat[1] > 0] == 0).all()


def test_decode_joints_equals_crw_process_pose():
    g = torch.Generator().manual_seed(2)
    soft = torch.rand(16, 9, 11, generator=g) ** 4
    soft[3] = 0  # joint 2 has no mass: -1
    soft[5, 4, 7] = 5.0  # a clear peak
    got = J.decode_joints(soft)
    ref = _crw_process_pose(soft.permute(1, 2, 0).clone())
    assert torch.equal(got, ref)
    assert (got[:, 2] == -1).all()
    # the known answer: three cells with masses 1, 2, 1 -> mass-weighted mean
    s = torch.zeros(2, 5, 6)
    s[1, 1, 1], s[1, 1, 2], s[1, 3, 2] = 1.0, 2.0, 1.0
    np.testing.assert_allclose(J.decode_joints(s)[:, 0].numpy(), [(1 + 4 + 2) / 4, (1 + 2 + 3) / 4])


def test_codec_roundtrip_and_pixels():
    """encode -> decode of a frame recovers every joint within a cell, and decode's pixels are eval_pck's scaling."""
    rng = np.random.default_rng(3)
    ht, wd = 240, 320
    pos = np.stack([rng.uniform(16, wd - 16, 15), rng.uniform(16, ht - 16, 15)])
    geom = FrameGeometry((ht, wd), (320, 320), (320, 320), (40, 40))
    codec = J.JointsCodec(pos)
    soft = codec.encode(geom)
    px = codec.decode(soft, geom)
    cells = J.decode_joints(soft).numpy()
    assert px.dtype == np.float32
    np.testing.assert_array_equal(px[0], (cells[0] / 40.0 * wd).astype(np.float32))
    np.testing.assert_array_equal(px[1], (cells[1] / 40.0 * ht).astype(np.float32))
    assert np.abs(px[0] - pos[0]).max() < wd / 40 and np.abs(px[1] - pos[1]).max() < ht / 40
    soft[4] = 0
    assert (codec.decode(soft, geom)[:, 3] == -1).all()


# --------------------------------------------------------------------------- PCK


def _random_clips(seed, n_clips=3):
    rng = np.random.default_rng(seed)
    gts, preds, hw = [], [], []
    for i in range(n_clips):
        ht, wd = int(rng.integers(180, 260)), int(rng.integers(240, 340))
        T = int(rng.integers(3, 9))
        gt = np.stack([rng.uniform(-5, wd, (15, T)), rng.uniform(-5, ht, (15, T))])
        pred_px = gt + rng.normal(0, 12, gt.shape)
        feat = (pred_px / np.array([wd, ht])[:, None, None] * 40).astype(np.float32)
        feat[:, rng.random((15, T)) < 0.2] = -1  # invisible predictions
        if i == 0:
            feat[:, 1:, 2] = -1  # frame 2: one visible joint -> normaliser 0 (inf / nan)
            feat[:, 0, 2] = (gt[:, 0, 2] / np.array([wd, ht]) * 40).astype(np.float32)
        gts.append(gt)
        preds.append(feat)
        hw.append((ht, wd))
    return gts, preds, hw


def _to_pixels(feat, ht, wd):
    return J.cells_to_pixels(feat.reshape(2, -1), (ht, wd), (40.0, 40.0)).reshape(feat.shape)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pck_equals_eval_pck(seed):
    gts, preds, hw = _random_clips(seed)
    ref = _crw_pck(gts, preds, [h for h, _ in hw], [w for _, w in hw])
    res = J.pck(gts, [_to_pixels(p, h, w) for p, (h, w) in zip(preds, hw)])
    np.testing.assert_array_equal(res.per_joint, ref[:15])
    np.testing.assert_array_equal(res.mean, ref[15])
    assert res.counts.sum() == sum(int((p[0, :, 1:] >= 0).sum()) for p in preds)


def test_pck_known_answers(tmp_path):
    # one clip, 2 frames; frame 0 ignored; GT box of frame 1: (0,0)-(30,40) -> normaliser 0.6 * 50 = 30
    gt = np.zeros((2, 15, 2))
    gt[0, :, 1] = np.r_[0, np.arange(1, 14) * 2, 30]  # integers: the distances below are exact
    gt[1, :, 1] = np.r_[0, np.arange(1, 14) * 2, 40]
    pred = gt.copy()
    pred[0, :, 1] += np.arange(15) * 1.0  # joint j off by j pixels: distance / 30 = j / 30
    pred[:, :, 0] = -1  # frame 0 predictions do not matter
    res = J.pck([gt], [pred])
    expect = [100.0 * np.mean([(j / 30) <= a for j in range(15)]) for a in J.PCK_THRESHOLDS]
    np.testing.assert_allclose(res.mean, expect)
    assert res.per_joint[3, 0] == 100.0 and res.per_joint[4, 0] == 0.0  # 3/30 <= 0.1 < 4/30
    perfect = J.pck([gt], [gt.copy()])
    assert (perfect.mean == 100.0).all()
    # a joint never evaluated: NaN for it, mean over the others (eval_pck.py would divide by zero)
    pred2 = gt.copy()
    pred2[:, 5, :] = -1
    r2 = J.pck([gt], [pred2])
    assert np.isnan(r2.per_joint[5]).all() and (r2.mean == 100.0).all() and r2.counts[5] == 0
    p = r2.write_csv(tmp_path)
    lines = p.read_text().splitlines()
    assert lines[0] == "Joint,N,PCK@0.1,PCK@0.2,PCK@0.3,PCK@0.4,PCK@0.5"
    assert lines[6].startswith("right_hip,0,nan") and lines[-1] == "mean,14,100.00,100.00,100.00,100.00,100.00"


# --------------------------------------------------------------------------- reader


def test_dataset_split_files_list_file_and_errors(tmp_path):
    root = make_jhmdb(tmp_path / "J", clips=(("catch", "clip_a", 3), ("run", "clip_b", 2), ("run", "clip_c", 2)))
    with open(root / "splits" / "run_test_split1.txt") as f:
        text = f.read()
    (root / "splits" / "run_test_split1.txt").write_text(text.replace("clip_c.avi 2", "clip_c.avi 1"))
    ds = J.JhmdbDataset(root)
    assert [c.name for c in ds] == ["catch/clip_a", "run/clip_b"] and "split 1" in ds.note
    assert len(ds.clips[0]) == 3 and ds.clips[0].size == (36, 48)
    assert [c.name for c in J.JhmdbDataset(root, clips=["clip_b"])] == ["run/clip_b"]
    every = J.JhmdbDataset(root, split=2)  # no split-2 files: every clip
    assert len(every) == 3 and "no split files" in every.note
    lst = tmp_path / "test.split.v2.txt"
    lst.write_text(
        f"{root}/Rename_Images/run/clip_c {root}/joint_positions/run/clip_c/joint_positions.mat\n"
        "Rename_Images/catch/clip_a joint_positions/catch/clip_a/joint_positions.mat\n"
    )
    assert [c.name for c in J.JhmdbDataset(root, list_file=lst)] == ["run/clip_c", "catch/clip_a"]
    with pytest.raises(J.JhmdbFormatError, match="not in the evaluated list"):
        J.JhmdbDataset(root, clips=["clip_c"])
    with pytest.raises(J.JhmdbFormatError, match="does not exist"):
        J.JhmdbDataset(tmp_path / "nope")
    (root / "splits" / "catch_test_split1.txt").write_text("clip_a.avi\n")
    with pytest.raises(J.JhmdbFormatError, match=r"catch_test_split1.txt:1: expected"):
        J.JhmdbDataset(root)
    (root / "splits" / "catch_test_split1.txt").write_text("clip_a.avi 2\nclip_x.avi 2\n")
    with pytest.raises(J.JhmdbFormatError, match=r"clip 'catch/clip_x': frame folder .*clip_x does not exist"):
        J.JhmdbDataset(root)
    (root / "splits" / "catch_test_split1.txt").write_text("clip_a.avi 2\n")
    (root / "joint_positions" / "run" / "clip_b" / "joint_positions.mat").unlink()
    with pytest.raises(J.JhmdbFormatError, match=r"missing joint file .*clip_b/joint_positions.mat"):
        J.JhmdbDataset(root)
    (root / "Rename_Images" / "catch" / "clip_a" / "notes.png").write_bytes(b"")
    with pytest.raises(J.JhmdbFormatError, match="named by number"):
        J.JhmdbDataset(root, clips=["clip_a"])
    import shutil

    shutil.rmtree(root / "joint_positions")
    with pytest.raises(J.JhmdbFormatError, match="missing folder .*joint_positions"):
        J.JhmdbDataset(root)


# --------------------------------------------------------------------------- end to end


def test_evaluate_static_video_positional_features(tmp_path):
    """A static clip with features that identify each cell: every frame's prediction is frame 0's decoding,
    so PCK is that of decode(encode(gt_0)) against each frame's ground truth."""
    from tritoncorr.propagation import task_preset

    root = make_jhmdb(tmp_path / "J", clips=(("catch", "still", 4),), size=(32, 32))
    clip = J.JhmdbDataset(root).clips[0]
    first = clip.load_frame(0)
    for t in range(1, 4):  # make the clip static
        from PIL import Image

        Image.fromarray(first).save(clip.frames[t])
    eye = torch.eye(64).view(64, 8, 8)

    def features_fn(x):
        assert x.shape == (1, 3, 64, 64)
        return eye[None]  # stride 8: 8 x 8 grid, one channel per cell

    cfg = dataclasses.replace(task_preset("dul", "jhmdb").config, context=2, radius=3, topk=1)
    res = evaluate_features_on_jhmdb(
        features_fn, root=root, out=tmp_path / "o", config=cfg, input_size=(64, 64), progress=False, overlays=True
    )
    gt = clip.joints()
    geom = FrameGeometry((32, 32), (64, 64), (64, 64), (8, 8))
    codec = J.JointsCodec(gt[:, :, 0])
    p0 = codec.decode(codec.encode(geom), geom)
    kp = np.load(tmp_path / "o" / "keypoints" / "catch" / "still.npy")
    assert kp.shape == (2, 15, 4)
    for t in range(4):
        np.testing.assert_allclose(kp[:, :, t], p0, atol=1e-4)
    ref = J.pck([gt], [kp])
    np.testing.assert_array_equal(res.per_joint, ref.per_joint)
    assert (tmp_path / "o" / "pck.csv").is_file() and (tmp_path / "o" / "per-clip.csv").is_file()
    assert len(list((tmp_path / "o" / "overlays" / "catch" / "still").glob("*.jpg"))) == 4


def test_cli_jhmdb_end_to_end(tmp_path):
    root = make_jhmdb(tmp_path / "J")
    out = tmp_path / "out"
    r = run_eval("jhmdb", root, "--out", out, "--device", "cpu", "--size", 64, "--context", 2, "--topk", 3)
    assert "PCK@0.1" in r.output and "input 64x64" in r.output and "random init (seed 0)" in r.output
    lines = (out / "pck.csv").read_text().splitlines()
    assert len(lines) == 17 and lines[-1].startswith("mean,")
    vals = [float(v) for v in lines[-1].split(",")[2:]]
    assert all(0 <= v <= 100 for v in vals) and vals == sorted(vals)
    assert sorted(p.name for p in (out / "keypoints").rglob("*.npy")) == ["clip_a.npy", "clip_b.npy"]


def test_cli_jhmdb_progress_covers_every_stage(tmp_path, progress_stages):
    """One progress display over the whole work: features, propagation, decoding, then scoring; the steps
    advanced are the steps announced (the ETA counts them all)."""
    root = make_jhmdb(tmp_path / "J")
    stages = ["features", "propagating", "decoding"] * 2 + ["scoring"]
    check_eval_progress(progress_stages, "jhmdb", root, tmp_path / "out", stages, "--size", 64)


def test_cli_jhmdb_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs without --out write under eval-jhmdb/ in the current folder
    r = run_eval("jhmdb", tmp_path / "missing", "--device", "cpu", exit_code=2)
    assert "does not exist" in r.output
    root = make_jhmdb(tmp_path / "J")
    (root / "joint_positions" / "catch" / "clip_a" / "joint_positions.mat").write_bytes(b"junk")
    r = run_eval("jhmdb", root, "--device", "cpu", "--size", 64, exit_code=2)
    assert "clip_a/joint_positions.mat: not a MATLAB 5 MAT-file" in r.output
    r = run_eval("jhmdb", root, "--preset", "nope", "--device", "cpu", exit_code=2)
    assert "unknown preset" in r.output


@pytest.mark.slow
def test_jhmdb_mini_random_init(shared_data, tmp_path):
    run_eval("jhmdb", shared_data / "jhmdb-mini", "--out", tmp_path, "--device", "cpu")
    mean = (tmp_path / "pck.csv").read_text().splitlines()[-1].split(",")
    assert 5.0 < float(mean[2]) < 100.0


def test_draw_joints(tmp_path):
    from tritoncorr.visualize import draw_joints, palette_colors, save_joints_overlay

    frame = np.zeros((40, 50, 3), np.uint8)
    joints = np.full((2, 15), -1.0)
    joints[:, 0] = (10, 20)  # neck
    joints[:, 1] = (30, 20)  # belly: the neck's bone
    out = draw_joints(frame, joints, radius=2, width=1)
    assert (frame == 0).all()  # a copy
    np.testing.assert_array_equal(out[20, 20], palette_colors()[1])  # the neck -> belly bone in the neck's colour
    np.testing.assert_array_equal(out[20, 30], palette_colors()[2])  # the belly's dot
    assert out[:, :5].max() == 0 and out[30:].max() == 0  # missing joints draw nothing
    p = save_joints_overlay(tmp_path / "o.png", frame, joints, joints)
    assert p.is_file()
    with pytest.raises(ValueError, match=r"\(2, J\)"):
        draw_joints(frame, np.zeros((3, 15)))

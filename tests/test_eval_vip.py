"""VIP: the confusion histogram and its scores equal CRW's eval_vip.py (transcribed below), the reader's
errors, the label set, and ``tritoncorr eval vip`` end to end on a generated VIP_Fine folder."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from cli_runs import check_eval_progress, run_eval
from eval_layouts import make_vip
from PIL import Image
from tritoncorr.evals import vip as V

from tritoncorr.evaluate import evaluate_features_on_vip, first_frame_codec

# --------------------------------------------------------------------------- transcription of eval_vip.py


def _crw_fast_hist(a, b, n):
    k = (a >= 0) & (a < n)
    return np.bincount(n * a[k].astype(int) + b[k], minlength=n**2).reshape(n, n)


def _crw_compute_hist(pre_dir, gt_dir, n_cl=20):
    cv2 = pytest.importorskip("cv2")
    image_paths, label_paths = [], []
    for vid in os.listdir(pre_dir):
        for img in os.listdir(os.path.join(pre_dir, vid)):
            image_paths.append(os.path.join(pre_dir, vid, img))
            label_paths.append(os.path.join(gt_dir, vid, img))
    hist = np.zeros((n_cl, n_cl))
    for img_path, label_path in zip(image_paths, label_paths):
        label_array = np.array(Image.open(label_path.replace(".jpg", ".png")), dtype=np.int32)
        image = Image.fromarray(cv2.imread(img_path))
        image_array = np.array(image, dtype=np.int32)
        if not label_array.shape == image_array.shape:
            image = image.resize((label_array.shape[1], label_array.shape[0]), Image.NEAREST)
            image_array = np.array(image, dtype=np.int32)
        if len(image_array.shape) == 3:
            image_array = image_array[..., -1]
        hist += _crw_fast_hist(label_array, image_array, n_cl)
    return hist


def _crw_show_result(hist):
    with np.errstate(divide="ignore", invalid="ignore"):
        num_cor_pix = np.diag(hist)
        num_gt_pix = hist.sum(1)
        acc = num_cor_pix.sum() / hist.sum()
        mean_acc = np.nanmean(num_cor_pix / num_gt_pix)
        iu = num_cor_pix / (num_gt_pix + hist.sum(0) - num_cor_pix)
        miou = np.nanmean(iu)
        freq = num_gt_pix / hist.sum()
        fw = (freq[freq > 0] * iu[freq > 0]).sum()
    return acc, mean_acc, miou, fw


def _write_random_results(root, res, seed, classes_absent=(3, 11)):
    """Random predictions for every annotated frame (some at half size), never predicting ``classes_absent``."""
    rng = np.random.default_rng(seed)
    ds = V.VipDataset(root)
    allowed = np.array([c for c in range(20) if c not in classes_absent])
    for k, v in enumerate(ds):
        for t in range(len(v)):
            gt = v.load_label(t)
            pred = np.where(rng.random(gt.shape) < 0.6, np.where(gt < 20, gt, 0), rng.choice(allowed, gt.shape))
            if (k + t) % 2:
                pred = pred[::2, ::2]  # another size: resized (PIL nearest) to the ground truth
            V.write_prediction(res / v.name / f"{v.frames[t].stem}.png", pred.astype(np.uint8))
    return ds


@pytest.mark.parametrize("seed", [0, 1])
def test_histogram_and_scores_equal_eval_vip(tmp_path, seed):
    root = make_vip(tmp_path / "VIP", seed=seed)
    res = tmp_path / "res"
    ds = _write_random_results(root, res, seed)
    ours = V.evaluate_results(results_dir=res, dataset=ds)
    ref_hist = _crw_compute_hist(str(res), str(root / "Annotations" / "Category_ids"))
    np.testing.assert_array_equal(ours.hist, ref_hist)
    assert ours.frames == 7
    acc, mean_acc, miou, fw = _crw_show_result(ref_hist)
    assert ours.pixel_accuracy == acc and ours.mean_accuracy == mean_acc
    assert ours.mean_iou == miou and ours.fw_iou == fw
    assert np.isnan(ours.class_iou[3]) and np.isnan(ours.class_accuracy[3])  # absent everywhere: left out by nanmean
    assert ours.hist[:, 3].sum() == 0 and not np.isnan(miou)


def test_scores_known_answer(tmp_path):
    gt = np.array([[0, 0], [1, 255]])
    pred = np.array([[0, 1], [1, 0]])
    hist = V.fast_hist(gt, pred)
    assert hist.sum() == 3 and hist[0, 0] == 1 and hist[0, 1] == 1 and hist[1, 1] == 1  # 255 ignored
    s = V.VipScores(hist, frames=1)
    assert s.pixel_accuracy == pytest.approx(2 / 3) and s.mean_accuracy == pytest.approx(0.75)
    assert s.class_iou[0] == 0.5 and s.class_iou[1] == 0.5 and s.mean_iou == 0.5
    assert s.fw_iou == pytest.approx(2 / 3 * 0.5 + 1 / 3 * 0.5)
    g, c = s.write_csvs(tmp_path)
    assert g.read_text().splitlines() == ["Pixel-Acc,Mean-Acc,mIoU,fwIoU", "0.6667,0.7500,0.5000,0.5000"]
    rows = c.read_text().splitlines()
    assert (
        rows[0] == "Class,IoU,Acc,GT-Pixels" and rows[1] == "background,0.5000,0.5000,2" and rows[3] == "hair,nan,nan,0"
    )
    with pytest.raises(ValueError, match="0..19"):
        V.fast_hist(gt, np.array([[0, 20], [1, 0]]))


def test_first_frame_label_set():
    ids = np.array([[0, 13, 13], [2, 255, 19]], dtype=np.uint8)
    codec = first_frame_codec(ids)
    assert codec.labels.tolist() == [0, 2, 13, 19] and codec.num_labels == 4
    assert codec.channels.tolist() == [[0, 2, 2], [1, 0, 3]]


# --------------------------------------------------------------------------- reader


def test_reader_layout_errors(tmp_path):
    root = make_vip(tmp_path / "VIP")
    ds = V.VipDataset(root)
    assert ds.names == ["videos1", "videos7"] and len(ds.videos[0]) == 4 and ds.videos[0].size == (40, 30)
    assert V.VipDataset(root, videos=["videos7"]).names == ["videos7"]
    with pytest.raises(V.VipFormatError, match="not listed"):
        V.VipDataset(root, videos=["videos2"])
    with pytest.raises(V.VipFormatError, match=r"missing list .*lists/test_videos.txt"):
        V.VipDataset(root, split="test")
    (root / "lists" / "val_videos.txt").write_text("videos1\nvideos9\n")
    with pytest.raises(V.VipFormatError, match=r"'videos9' is listed but .*Images/videos9 does not exist"):
        V.VipDataset(root)
    (root / "lists" / "val_videos.txt").write_text("videos1\n")
    first = root / "Annotations" / "Category_ids" / "videos1" / "000000000025.png"
    data = first.read_bytes()
    first.unlink()
    with pytest.raises(V.VipFormatError, match="no category-id PNG .*000000000025.png for the first frame"):
        V.VipDataset(root)
    first.write_bytes(data)
    (root / "Annotations" / "Category_ids" / "videos1" / "000000000999.png").write_bytes(data)
    with pytest.raises(V.VipFormatError, match=r"annotations without a frame .*\['000000000999'\]"):
        V.VipDataset(root)
    (root / "Annotations" / "Category_ids" / "videos1" / "000000000999.png").unlink()
    Image.new("RGB", (30, 40), (3, 2, 1)).save(first)  # RGB with equal channels is read as ids (CRW); these differ
    with pytest.raises(V.VipFormatError, match="000000000025.png: an RGB category-id PNG must have equal channels"):
        V.VipDataset(root).videos[0].load_label(0)
    Image.new("RGBA", (30, 40)).save(first)
    with pytest.raises(V.VipFormatError, match="000000000025.png: category-id PNG must be an indexed"):
        V.VipDataset(root).videos[0].load_label(0)
    Image.new("L", (31, 40)).save(first)
    with pytest.raises(V.VipFormatError, match="label size 31x40 differs from the frame size 30x40"):
        V.VipDataset(root).videos[0].load_label(0)
    import shutil

    shutil.rmtree(root / "Annotations")
    with pytest.raises(V.VipFormatError, match="missing folder .*Category_ids"):
        V.VipDataset(root)


def test_results_errors(tmp_path):
    root = make_vip(tmp_path / "VIP")
    res = tmp_path / "res"
    ds = _write_random_results(root, res, 0)
    (res / "videos7" / "000000000050.png").unlink()
    with pytest.raises(V.VipFormatError, match=r"videos7/000000000050.png not found"):
        V.evaluate_results(results_dir=res, dataset=ds)
    V.write_prediction(res / "videos7" / "000000000050.png", np.full((40, 30), 21, np.uint8))
    with pytest.raises(V.VipFormatError, match=r"000000000050.png: predicted ids must lie in 0..19"):
        V.evaluate_results(results_dir=res, dataset=ds)


# --------------------------------------------------------------------------- end to end


def test_perfect_features_give_miou_one(tmp_path):
    """Features that encode each pixel's ground-truth class propagate the parts perfectly (native size, stride 1)."""
    root = make_vip(tmp_path / "VIP")
    ds = V.VipDataset(root)
    order = [(v, t) for v in ds for t in range(len(v))]
    calls = []

    def features_fn(x):
        v, t = order[len(calls)]
        calls.append(1)
        ids = torch.from_numpy(np.where(v.load_label(t) < 20, v.load_label(t), 0).astype(np.int64))
        return torch.nn.functional.one_hot(ids, 20).permute(2, 0, 1).float()[None] + 1e-3

    s = evaluate_features_on_vip(features_fn, dataset=ds, out=tmp_path / "o", input_size=None, progress=False)
    assert len(calls) == 7
    assert s.mean_iou == 1.0 and s.pixel_accuracy == 1.0 and s.frames == 7
    present = sorted({int(c) for v in ds for t in range(len(v)) for c in np.unique(v.load_label(t)) if c < 20})
    assert [i for i in range(20) if not np.isnan(s.class_iou[i])] == present


def test_cli_vip_end_to_end(tmp_path):
    root = make_vip(tmp_path / "VIP")
    out = tmp_path / "out"
    r = run_eval("vip", root, "--out", out, "--device", "cpu", "--size", 32, "--context", 2, "--overlays")
    assert "mIoU" in r.output and "input 32x32" in r.output and "for vip" in r.output
    g = (out / "global_results-vip.csv").read_text().splitlines()
    vals = [float(x) for x in g[1].split(",")]
    assert g[0] == "Pixel-Acc,Mean-Acc,mIoU,fwIoU" and all(0 <= x <= 1 for x in vals)
    for v in ("videos1", "videos7"):
        frames = sorted(p.stem for p in (root / "Images" / v).glob("*.jpg"))
        preds = sorted((out / v).glob("*.png"))
        assert [p.stem for p in preds] == frames
        first = np.unique(np.asarray(Image.open(root / "Annotations" / "Category_ids" / v / f"{frames[0]}.png")))
        for p in preds:
            a = np.asarray(Image.open(p))
            assert a.shape == (40, 30) and set(np.unique(a)) <= set(first[first < 20])
        assert len(list((out / "overlays" / v).glob("*.jpg"))) == len(frames)
    # --results: the same scores from the written predictions
    run_eval("vip", root, "--results", out)
    assert (out / "global_results-vip.csv").read_text().splitlines() == g


def test_cli_vip_progress_covers_every_stage(tmp_path, progress_stages):
    """One progress display over the whole work: features, propagation, decoding, scoring per video, then
    the total; the steps advanced are the steps announced (the ETA counts them all)."""
    root = make_vip(tmp_path / "VIP")
    stages = ["features", "propagating", "decoding", "scoring"] * 2
    check_eval_progress(progress_stages, "vip", root, tmp_path / "out", stages, "--size", 32)


def test_cli_vip_errors(tmp_path):
    r = run_eval("vip", tmp_path / "nope", "--device", "cpu", exit_code=2)
    assert "does not exist" in r.output
    root = make_vip(tmp_path / "VIP")
    (root / "lists" / "val_videos.txt").unlink()
    r = run_eval("vip", root, "--device", "cpu", exit_code=2)
    assert "missing list" in r.output and "val_videos.txt" in r.output

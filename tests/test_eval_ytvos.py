"""YouTube-VOS valid: reader (objects first annotated mid-video, meta.json with missing frames, layout
errors), the merge rule, and ``tritoncorr eval ytvos`` end to end on a generated valid folder."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from cli_runs import check_eval_progress, run_eval
from eval_layouts import make_ytvos
from PIL import Image
from tritoncorr.evals import ytvos as Y
from tritoncorr.evals.synthetic import synthetic_clip

from tritoncorr.evaluate import export_features_on_ytvos


def _gt_masks(seed=0, size=(32, 40)):
    """The full-video ground truth behind make_ytvos (object ids as exported) and each object's first frame."""
    gt_a = synthetic_clip(6, *size, seed=seed + 20, num_objects=2)[1]  # objects 1 and 2 keep their ids
    b = synthetic_clip(4, *size, seed=seed + 21, num_objects=1)[1]
    gt_b = np.where(b == 1, 3, 0).astype(np.uint8)  # the clip's object 1 is exported as object 3
    return {"a": (gt_a, {1: 0, 2: 2}), "b": (gt_b, {3: 1})}


def test_reader_objects_start_later_and_meta_gaps(tmp_path):
    root = make_ytvos(tmp_path / "valid")
    ds = Y.YtvosDataset(root)
    va, vb = ds.videos
    assert (va.name, len(va), va.size) == ("a", 6, (32, 40)) and vb.name == "b"
    assert va.starts == {1: 0, 2: 2} and va.groups() == {0: [1], 2: [2]}
    assert vb.starts == {3: 1} and vb.groups() == {1: [3]} and sorted(vb.annotations) == [1]
    assert ds.notes == []  # frames missing from meta.json's lists are fine
    meta = json.loads((root / "meta.json").read_text())
    meta["videos"]["a"]["objects"]["2"]["frames"] = ["00005", "00010", "00099"]  # a frame without JPEG; listed earlier
    meta["videos"]["c"] = {"objects": {}}
    (root / "JPEGImages" / "d").mkdir()
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(Y.YtvosFormatError, match=r"video 'c' is in meta.json but .*JPEGImages/c does not exist"):
        Y.YtvosDataset(root)
    ds = Y.YtvosDataset(root, videos=["a", "b"])
    assert any("1 frame(s) without a JPEG" in n for n in ds.notes)
    assert any("object 2 is first annotated in 00010.jpg, meta.json lists it from 00005" in n for n in ds.notes)
    del meta["videos"]["c"]
    (root / "meta.json").write_text(json.dumps(meta))
    assert any("not in meta.json, skipped" in n and "'d'" in n for n in Y.YtvosDataset(root).notes)


def test_reader_errors(tmp_path):
    root = make_ytvos(tmp_path / "valid")
    meta = (root / "meta.json").read_text()
    (root / "meta.json").write_text("{not json")
    with pytest.raises(Y.YtvosFormatError, match="meta.json: not valid JSON"):
        Y.YtvosDataset(root)
    (root / "meta.json").write_text(json.dumps({"vids": {}}))
    with pytest.raises(Y.YtvosFormatError, match="expected"):
        Y.YtvosDataset(root)
    m = json.loads(meta)
    m["videos"]["a"]["objects"]["4"] = {"category": "ghost", "frames": ["00000"]}
    (root / "meta.json").write_text(json.dumps(m))
    with pytest.raises(Y.YtvosFormatError, match=r"video 'a': object 4 \(meta.json\) appears in no annotation PNG"):
        Y.YtvosDataset(root)
    m["videos"]["a"]["objects"] = {"x": {}}
    (root / "meta.json").write_text(json.dumps(m))
    with pytest.raises(Y.YtvosFormatError, match="object id 'x' is not an integer"):
        Y.YtvosDataset(root)
    (root / "meta.json").write_text(meta)
    with pytest.raises(Y.YtvosFormatError, match=r"video\(s\) \['zz'\] not listed in"):
        Y.YtvosDataset(root, videos=["zz"])
    png = root / "Annotations" / "b" / "00005.png"
    png.rename(root / "Annotations" / "b" / "00777.png")
    with pytest.raises(Y.YtvosFormatError, match=r"annotation .*00777.png has no frame .*JPEGImages/b/00777.jpg"):
        Y.YtvosDataset(root)
    (root / "Annotations" / "b" / "00777.png").unlink()
    with pytest.raises(Y.YtvosFormatError, match=r"video 'b': no .png annotation in"):
        Y.YtvosDataset(root)
    Image.new("P", (41, 32)).save(png)
    with pytest.raises(Y.YtvosFormatError, match="annotation size 41x32 differs from the frame size 40x32"):
        Y.YtvosDataset(root)
    (root / "meta.json").unlink()
    with pytest.raises(Y.YtvosFormatError, match="missing .*meta.json"):
        Y.YtvosDataset(root)


def test_export_perfect_features_objects_appear_later(tmp_path):
    """Features that encode the full ground truth: the export equals it, each object only from its first frame."""
    root = make_ytvos(tmp_path / "valid")
    ds = Y.YtvosDataset(root)
    gts = _gt_masks()
    # features only from each video's first annotated frame on (video b starts at its second frame)
    order = [(v.name, t) for v in ds for t in range(min(v.starts.values()), len(v))]
    calls = []

    def features_fn(x):
        name, t = order[len(calls)]
        calls.append(1)
        ids = torch.from_numpy(gts[name][0][t].astype(np.int64))
        return torch.nn.functional.one_hot(ids, 4).permute(2, 0, 1).float()[None] + 1e-3

    res = export_features_on_ytvos(features_fn, dataset=ds, out=tmp_path / "o", year="2019", progress=False)
    assert len(calls) == 9 and (res.videos, res.frames, res.objects) == (2, 10, 3)
    for name, (gt, starts) in gts.items():
        for t in range(gt.shape[0]):
            p = tmp_path / "o" / "Annotations" / name / f"{5 * t:05d}.png"
            im = Image.open(p)
            assert im.mode == "P"
            expect = gt[t].copy()
            for oid, s in starts.items():
                if t < s:
                    expect[expect == oid] = 0
            np.testing.assert_array_equal(np.asarray(im), expect, err_msg=f"{name} frame {t}")
    with zipfile.ZipFile(res.zip_path) as zf:
        names = sorted(zf.namelist())
    assert res.zip_path.name == "ytvos2019-valid-submission.zip"
    assert names == sorted(
        [f"Annotations/a/{5 * t:05d}.png" for t in range(6)] + [f"Annotations/b/{5 * t:05d}.png" for t in range(4)]
    )


def test_cli_ytvos_end_to_end(tmp_path):
    root = make_ytvos(tmp_path / "valid")
    out = tmp_path / "out"
    r = run_eval("ytvos", root, "--out", out, "--device", "cpu", "--context", 2, "--topk", 3, "--year", 2018)
    assert "No local score" in r.output and "ytvos2018-valid-submission.zip" in r.output
    a = [np.asarray(Image.open(out / "Annotations" / "a" / f"{5 * t:05d}.png")) for t in range(6)]
    assert all(x.shape == (32, 40) for x in a)
    assert not (a[0] == 2).any() and not (a[1] == 2).any() and (a[2] == 2).any()  # object 2 from frame 00010 on
    b = [np.asarray(Image.open(out / "Annotations" / "b" / f"{5 * t:05d}.png")) for t in range(4)]
    assert (b[0] == 0).all() and (b[1] == 3).any()
    with zipfile.ZipFile(out / "ytvos2018-valid-submission.zip") as zf:
        assert len(zf.namelist()) == 10
    r = run_eval("ytvos", root, "--year", 2017, "--device", "cpu", exit_code=2)
    assert "--year must be one of 2018, 2019" in r.output
    (root / "meta.json").unlink()
    r = run_eval("ytvos", root, "--device", "cpu", exit_code=2)
    assert "meta.json" in r.output


def test_cli_ytvos_progress_covers_every_stage(tmp_path, progress_stages):
    """One progress display over the whole work: each frame's features, propagation and decoding (one
    pass, track_objects), then the zip; the steps advanced are the steps announced (the ETA counts them all)."""
    root = make_ytvos(tmp_path / "valid")
    stages = ["features, propagation, decoding", "writing the zip"]
    check_eval_progress(progress_stages, "ytvos", root, tmp_path / "out", stages)

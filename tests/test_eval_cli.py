"""``tritoncorr eval davis`` end to end, the reusable evaluation core, weight loading and overlays."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import check_eval_progress, run_cli, run_eval
from tritoncorr.evals.davis import DavisFormatError, read_index_png, write_palette_png
from tritoncorr.evals.synthetic import make_synthetic_davis

from tritoncorr.models import dul_backbone, resnet18
from tritoncorr.models.loading import load_backbone_weights, save_backbone_weights
from tritoncorr.visualize import overlay_masks, palette_colors, save_overlay


@pytest.fixture
def tiny_davis(tmp_path) -> Path:
    return make_synthetic_davis(tmp_path / "DAVIS", num_sequences=2, num_frames=5, height=40, width=56, seed=7)


# --------------------------------------------------------------------------- --results mode


def test_results_mode_scores_ground_truth(tiny_davis, tmp_path):
    res = tmp_path / "res"
    shutil.copytree(tiny_davis / "Annotations" / "480p", res)
    r = run_eval("davis", tiny_davis, "--results", res)
    assert "J&F-Mean" in r.output and "synth-000_1" in r.output
    g = (res / "global_results-val.csv").read_text().splitlines()
    assert g == [
        "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay",
        "1.000,1.000,1.000,0.000,1.000,1.000,0.000",
    ]
    s = (res / "per-sequence_results-val.csv").read_text().splitlines()
    assert s[0] == "Sequence,J-Mean,F-Mean" and s[1] == "synth-000_1,1.000,1.000"


def test_results_mode_wrong_prediction_and_sequence_filter(tiny_davis, tmp_path):
    res = tmp_path / "res"
    shutil.copytree(tiny_davis / "Annotations" / "480p", res)
    for p in (res / "synth-001").glob("*.png"):
        write_palette_png(p, np.zeros_like(read_index_png(p)))  # predicts background only: zero-padded objects
    run_eval("davis", tiny_davis, "--results", res, "-s", "synth-001")
    g = (res / "global_results-val.csv").read_text().splitlines()[1]
    assert g == "0.000,0.000,0.000,0.000,0.000,0.000,0.000"
    assert "synth-000" not in (res / "per-sequence_results-val.csv").read_text()


def test_cli_errors_exit_2(tiny_davis, tmp_path):
    r = run_eval("davis", tmp_path / "missing", "--results", tmp_path, exit_code=2)
    assert "does not exist" in r.output
    res = tmp_path / "res"
    shutil.copytree(tiny_davis / "Annotations" / "480p", res)
    (res / "synth-000" / "00003.png").unlink()
    r = run_eval("davis", tiny_davis, "--results", res, exit_code=2)
    assert "00003.png not found" in r.output
    r = run_eval("davis", tmp_path / "missing", "--device", "cpu", exit_code=2)
    assert "does not exist" in r.output


# --------------------------------------------------------------------------- full pipeline


def test_full_pipeline_on_tiny_synthetic(tiny_davis, tmp_path):
    pytest.importorskip("tritoncorr.propagation")
    out = tmp_path / "out"
    r = run_eval("davis", tiny_davis, "--out", out, "--device", "cpu", "--overlays", "--topk", 3, "--context", 2)
    assert "topk=3" in r.output and "context=2" in r.output and "wall time" in r.output
    for seq in ("synth-000", "synth-001"):
        pngs = sorted((out / seq).glob("*.png"))
        assert [p.stem for p in pngs] == [f"{t:05d}" for t in range(5)]
        gt0 = read_index_png(tiny_davis / "Annotations" / "480p" / seq / "00000.png")
        pred = np.stack([read_index_png(p) for p in pngs])
        assert pred.shape == (5, 40, 56) and pred.max() <= gt0.max()
        # frame 0 is the down- then up-sampled ground truth: nearly identical
        assert (pred[0] == gt0).mean() > 0.8
        assert len(list((out / "overlays" / seq).glob("*.jpg"))) == 5
    g = (out / "global_results-val.csv").read_text().splitlines()
    vals = [float(x) for x in g[1].split(",")]
    assert 0.0 <= vals[1] <= 1.0 and 0.0 <= vals[4] <= 1.0
    assert vals[0] == pytest.approx((vals[1] + vals[4]) / 2, abs=1.5e-3)


def test_progress_covers_every_stage(tiny_davis, tmp_path, progress_stages):
    """One progress display over the whole work: features, propagation, decoding, scoring per sequence;
    the steps advanced are the steps announced (the ETA counts them all)."""
    stages = ["features", "propagating", "decoding", "scoring"] * 2
    check_eval_progress(progress_stages, "davis", tiny_davis, tmp_path / "out", stages)


def test_default_root_falls_back_to_synthetic(tmp_path, monkeypatch):
    pytest.importorskip("tritoncorr.propagation")
    import tritoncorr.evaluate as ev

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TRITONCORR_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(ev, "SYNTHETIC_DEFAULTS", dict(num_sequences=1, num_frames=3, height=24, width=32, seed=0))
    assert ev.default_davis_root() is None
    r = run_cli("eval", "davis", "--out", tmp_path / "o", "--device", "cpu", "--context", 1)
    assert "NOT DAVIS numbers" in r.output and "SYNTHETIC" in r.output
    root = tmp_path / "data" / "synthetic-davis"
    assert (root / "ImageSets" / "2017" / "val.txt").read_text().split() == ["synth-000"]
    assert (tmp_path / "o" / "global_results-val.csv").is_file()
    (root / "DAVIS-real-marker").touch()  # generated once: a second run reuses the folder
    assert ev.synthetic_davis_root() == root and (root / "DAVIS-real-marker").exists()
    (tmp_path / "data" / "DAVIS").mkdir()
    assert ev.default_davis_root() == tmp_path / "data" / "DAVIS"


def test_evaluate_features_on_davis_perfect_features(tmp_path):
    """Features that encode the ground-truth ids at full resolution propagate the masks perfectly."""
    prop = pytest.importorskip("tritoncorr.propagation")
    from tritoncorr.evals.davis import DavisDataset

    from tritoncorr.evaluate import evaluate_features_on_davis

    root = make_synthetic_davis(tmp_path / "D", num_sequences=2, num_frames=4, height=20, width=28, seed=5)
    ds = DavisDataset(root)
    gts = {s.name: s.load_masks() for s in ds}
    order = [(name, k) for name, gt in gts.items() for k in range(gt.shape[0])]
    calls = []

    def features_fn(x: torch.Tensor) -> torch.Tensor:
        # frames arrive in order, sequence by sequence, one at a time
        assert x.shape == (1, 3, 20, 28) and x.dtype == torch.float32
        name, k = order[len(calls)]
        calls.append((name, k))
        onehot = torch.nn.functional.one_hot(torch.from_numpy(gts[name][k]).long(), 8).permute(2, 0, 1).float()
        return onehot[None] + 1e-3  # stride 1: the feature grid is the image grid

    cfg = dataclasses.replace(prop.PRESETS["dul"], context=2)
    scores = evaluate_features_on_davis(features_fn, root=root, out=tmp_path / "o", config=cfg, progress=False)
    assert calls == order
    assert len(scores.objects) == sum(int(g[0].max()) for g in gts.values())
    assert scores.j_mean == 1.0 and scores.f_mean == 1.0 and scores.jf_mean == 1.0
    assert (tmp_path / "o" / "per-sequence_results-val.csv").is_file()


def test_evaluate_rejects_incomplete_ground_truth(tiny_davis, tmp_path):
    from tritoncorr.evaluate import evaluate_features_on_davis

    (tiny_davis / "Annotations" / "480p" / "synth-000" / "00004.png").unlink()
    with pytest.raises(DavisFormatError, match="annotations"):
        evaluate_features_on_davis(lambda x: x, root=tiny_davis, out=tmp_path / "o", config=object(), progress=False)


@pytest.mark.slow
def test_davis_mini_random_init(shared_data, tmp_path):
    pytest.importorskip("tritoncorr.propagation")
    run_eval("davis", shared_data / "davis-mini", "--out", tmp_path)
    g = (tmp_path / "global_results-val.csv").read_text().splitlines()[1].split(",")
    assert 0.2 < float(g[0]) < 1.0


# --------------------------------------------------------------------------- weights


def test_save_and_load_roundtrip_with_prefixes(tmp_path):
    torch.manual_seed(1)
    src = dul_backbone()
    path = save_backbone_weights(src, tmp_path / "w.safetensors")
    torch.manual_seed(2)
    dst = dul_backbone()
    rep = load_backbone_weights(dst, path, strict=True)
    assert rep.prefix == "" and not rep.missing and not rep.unexpected
    for k, v in dst.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k
    # MoCo-style wrapped checkpoint with a classifier and the key encoder
    sd = {f"module.encoder_q.{k}": v for k, v in src.state_dict().items()}
    sd["module.encoder_q.fc.0.weight"] = torch.zeros(3, 3)
    sd["module.encoder_k.conv1.weight"] = torch.zeros(1)
    sd["queue"] = torch.zeros(4)
    torch.manual_seed(3)
    dst = dul_backbone()
    rep = load_backbone_weights(dst, {"state_dict": sd})
    assert rep.prefix == "module.encoder_q." and not rep.unexpected and not rep.missing
    assert len(rep.ignored) == 3
    assert torch.equal(dst.conv1.weight, src.conv1.weight)


def test_load_reports_and_raises(tmp_path):
    full = resnet18(out_stages=("layer1", "layer2", "layer3", "layer4"))
    sd = {f"backbone.{k}": v for k, v in full.state_dict().items()}
    sd["backbone.fc.weight"] = torch.zeros(1000, 512)
    sd["backbone.extra.weight"] = torch.zeros(2)
    small = resnet18(out_stages=("layer2",))  # layer3/layer4 in the source are unexpected
    rep = load_backbone_weights(small, sd)
    assert rep.prefix == "backbone." and "backbone.fc.weight" in rep.ignored
    assert "backbone.extra.weight" in rep.unexpected and any(k.startswith("backbone.layer3") for k in rep.unexpected)
    assert "unexpected" in rep.summary()
    with pytest.raises(ValueError, match="strict load failed.*unexpected"):
        load_backbone_weights(resnet18(out_stages=("layer2",)), sd, strict=True)
    with pytest.raises(ValueError, match="no checkpoint key matched"):
        load_backbone_weights(small, {"head.weight": torch.zeros(2)})
    partial = {k: v for k, v in full.state_dict().items() if not k.startswith("layer4")}
    rep = load_backbone_weights(resnet18(), partial)
    assert rep.missing and all(k.startswith("layer4") for k in rep.missing)
    bad = dict(full.state_dict())
    bad["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    rep = load_backbone_weights(resnet18(), bad)
    assert rep.shape_mismatch[0][0] == "conv1.weight"
    with pytest.raises(FileNotFoundError):
        load_backbone_weights(small, tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_backbone_weights(small, tmp_path / "junk.safetensors")


def test_cli_checkpoint_errors(tiny_davis, tmp_path):
    pytest.importorskip("tritoncorr.propagation")
    missing = tmp_path / "none.safetensors"
    r = run_eval("davis", tiny_davis, "--out", tmp_path / "o", "--checkpoint", missing, "--device", "cpu", exit_code=2)
    assert "does not exist" in r.output
    r = run_eval("davis", tiny_davis, "--preset", "nope", "--device", "cpu", exit_code=2)
    assert "unknown preset" in r.output


# --------------------------------------------------------------------------- overlays


def test_overlay_blends_and_outlines(tmp_path):
    frame = np.full((9, 11, 3), 100, np.uint8)
    ids = np.zeros((9, 11), np.uint8)
    ids[2:7, 3:8] = 1
    out = overlay_masks(frame, ids, alpha=0.5, contour=False)
    assert (out[0, 0] == 100).all()  # background untouched
    expected = np.round(0.5 * 100 + 0.5 * palette_colors()[1].astype(float)).astype(np.uint8)
    np.testing.assert_array_equal(out[4, 5], expected)
    outlined = overlay_masks(frame, ids, alpha=0.5)
    np.testing.assert_array_equal(outlined[2, 7], palette_colors()[1])  # right edge pixel of the object
    np.testing.assert_array_equal(outlined[4, 5], expected)
    p = save_overlay(tmp_path / "o" / "x.jpg", frame, ids)
    assert p.is_file()
    with pytest.raises(ValueError, match="does not match"):
        overlay_masks(frame, ids[:3])


def test_random_init_seed_option(tiny_davis, tmp_path):
    for seed in (0, 5):
        out = tmp_path / f"seed{seed}"
        r = run_eval("davis", tiny_davis, "--out", out, "--device", "cpu", "--seed", seed, "--topk", 3, "--context", 2)
        assert f"random init (seed {seed})" in r.output
    pred = {s: read_index_png(tmp_path / f"seed{s}" / "synth-000" / "00004.png") for s in (0, 5)}
    assert pred[0].shape == pred[5].shape == (40, 56)

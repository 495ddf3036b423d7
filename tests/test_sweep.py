"""Feature cache and ``tritoncorr eval sweep``: the same numbers as one ``eval davis`` per setting."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from cli_runs import run_eval
from tritoncorr.evals.synthetic import make_synthetic_davis

from tritoncorr.evaluate import evaluate_features_on_davis
from tritoncorr.feature_cache import FeatureCache
from tritoncorr.propagation import PRESETS
from tritoncorr.sweep import grid_settings, parse_values, sweep_davis


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    return make_synthetic_davis(
        tmp_path_factory.mktemp("sweep") / "DAVIS", num_sequences=2, num_frames=5, height=128, width=192, seed=11
    )


@pytest.fixture(scope="module")
def features_fn():
    from tritoncorr.methods.inference import load_feature_model

    return load_feature_model(None, seed=0, device="cpu").features  # what eval davis uses without a checkpoint


def _cache(tmp_path, weights="w"):
    return FeatureCache(tmp_path / "cache", weights, None, 1, True, "rgb", "fp32")


def test_sweep_scores_equal_one_eval_per_setting(davis, features_fn, tmp_path):
    settings = grid_settings({"topk": [1, 10], "temperature": [0.05, 0.5]})
    assert settings == [
        {"topk": 1, "temperature": 0.05},
        {"topk": 1, "temperature": 0.5},
        {"topk": 10, "temperature": 0.05},
        {"topk": 10, "temperature": 0.5},
    ]
    results, _ = sweep_davis(features_fn, root=davis, config=PRESETS["dul"], settings=settings, progress=False)
    jfs = []
    for s, scores in results:
        ref = evaluate_features_on_davis(
            features_fn,
            root=davis,
            out=tmp_path / str(s),
            config=dataclasses.replace(PRESETS["dul"], **s),
            progress=False,
        )
        assert [(o.name, o.j_mean, o.f_mean) for o in scores.objects] == [
            (o.name, o.j_mean, o.f_mean) for o in ref.objects
        ]
        jfs.append(scores.jf_mean)
    assert len(set(jfs)) > 1  # the settings do change the result here


def test_feature_cache_is_written_then_read(davis, features_fn, tmp_path):
    cache = _cache(tmp_path)
    evaluate_features_on_davis(features_fn, root=davis, out=tmp_path / "a", progress=False, feature_cache=cache)
    files = sorted(p.name for p in cache.folder.glob("*.safetensors"))
    assert files == ["synth-000.safetensors", "synth-001.safetensors"] and (cache.folder / "key.json").is_file()

    def no_features(x):
        raise AssertionError("features recomputed despite the cache")

    cfg = dataclasses.replace(PRESETS["dul"], topk=3)
    out2 = evaluate_features_on_davis(
        no_features, root=davis, out=tmp_path / "b", progress=False, feature_cache=cache, config=cfg
    )
    ref = evaluate_features_on_davis(features_fn, root=davis, out=tmp_path / "c", progress=False, config=cfg)
    assert [o.j_mean for o in out2.objects] == [o.j_mean for o in ref.objects]
    # another key (other weights, precision, input size ...) is another folder; a stale file is recomputed
    assert _cache(tmp_path, "other").folder != cache.folder
    assert FeatureCache(tmp_path / "cache", "w", None, 1, True, "rgb", "bf16").key != cache.key
    assert cache.load("synth-000", 5, (128, 192)) is not None
    assert cache.load("synth-000", 4, (128, 192)) is None  # wrong frame count
    (cache.path("synth-001")).write_bytes(b"garbage")
    assert cache.load("synth-001", 5, (128, 192)) is None


def test_bf16_cache_is_lossless(tmp_path):
    from tritoncorr.evaluate import FrameGeometry, VideoFeatures

    cache = FeatureCache(tmp_path, "w", None, 1, True, "rgb", "bf16")
    feats = torch.randn(3, 8, 4, 5).bfloat16().float()
    cache.save("v", VideoFeatures(feats, FrameGeometry((32, 40), (32, 40), (32, 40), (4, 5))))
    back = cache.load("v", 3, (32, 40))
    assert torch.equal(back.feats, feats) and back.geometry.grid == (4, 5)
    assert cache.path("v").stat().st_size < feats.numel() * 4  # stored as bf16


def test_parse_values():
    assert parse_values("5, 10,5", int, "topk") == [5, 10]
    assert parse_values("0.05,0.1", float, "temperature") == [0.05, 0.1]
    assert parse_values(None, int, "topk") == []
    with pytest.raises(ValueError, match="--topk: 'x'"):
        parse_values("5,x", int, "topk")
    with pytest.raises(ValueError, match="--radius"):
        parse_values("2.5", int, "radius")
    assert grid_settings({"topk": []}) == [{}]


def test_sweep_cli_table_csv_and_cache(davis, tmp_path):
    out = tmp_path / "sw"
    options = ["--topk", "1,10", "--temperature", "0.05", "--device", "cpu", "--cache-features", tmp_path / "cache"]
    r = run_eval("sweep", davis, *options, "--out", out)
    assert "2 setting(s)" in r.output and "best" in r.output
    rows = (out / "sweep-val.csv").read_text().splitlines()
    assert rows[0] == "topk,temperature,J&F-Mean,J-Mean,F-Mean" and len(rows) == 3
    assert len(list((tmp_path / "cache").glob("*/*.safetensors"))) == 2
    assert (out / "provenance.json").is_file()
    r = run_eval("sweep", davis, "--topk", "1,x", exit_code=2)
    assert "--topk" in r.output
    r = run_eval("sweep", davis, "--topk", "0", exit_code=2)
    assert "invalid propagation setting" in r.output


def test_scoring_workers_give_the_same_scores(davis, tmp_path):
    from tritoncorr.evals.davis import evaluate_results

    gt = davis / "Annotations" / "480p"
    one = evaluate_results(davis, gt)
    two = evaluate_results(davis, gt, workers=2)
    assert [(o.name, o.j_mean, o.f_mean) for o in one.objects] == [(o.name, o.j_mean, o.f_mean) for o in two.objects]
    assert np.isclose(one.jf_mean, 1.0)

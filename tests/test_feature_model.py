"""Checkpoint metadata (method, input colour, preset), ``init.safetensors`` and the inference loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import run_eval
from tritoncorr.evals.synthetic import make_synthetic_davis

from tritoncorr.methods.inference import load_feature_model, method_metadata, read_metadata

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def dul_run(tmp_path_factory) -> Path:
    from tritoncorr.engine.loop import train
    from tritoncorr.engine.recipe import load_recipe

    out = tmp_path_factory.mktemp("dul") / "run"
    cfg = load_recipe(f"{RECIPES / 'dul.py'}:smoke", ["steps=2"])
    train(cfg, out, progress=False)
    return out


def test_metadata_records_method_color_preset_and_config():
    from tritoncorr.methods.dul import DULConfig

    model = DULConfig(key_dim=16, head_hidden=8).build()
    meta = method_metadata(model)
    assert meta["tritoncorr.method"] == "dul" and meta["tritoncorr.input_color"] == "rgb"
    assert meta["tritoncorr.preset"] == "dul"
    cfg = json.loads(meta["tritoncorr.method_config"])
    assert cfg["__class__"] == "dul" and cfg["key_dim"] == 16
    assert method_metadata(torch.nn.Linear(2, 2)) == {}  # a module that declares nothing


def test_library_methods_fulfil_the_method_contract():
    """Every built-in method is a DescribedMethod; describe() fills the defaults for one that declares nothing."""
    from tritoncorr.engine.method import DescribedMethod, Method, describe
    from tritoncorr.methods.dul import DULConfig
    from tritoncorr.methods.liir import LIIRConfig
    from tritoncorr.methods.moco import MoCoConfig

    for cfg, name, color in (
        (DULConfig(key_dim=16, head_hidden=8), "dul", "rgb"),
        (LIIRConfig(), "liir", "lab"),
        (MoCoConfig(queue_size=64), "moco", "rgb"),
    ):
        model = cfg.build()
        assert isinstance(model, DescribedMethod), type(model).__name__
        info = describe(model)
        assert (info.name, info.color, info.has_features, info.config) == (name, color, True, cfg)
    plain = describe(torch.nn.Conv2d(3, 4, 1))
    assert not isinstance(torch.nn.Conv2d(3, 4, 1), Method)
    assert (plain.name, plain.color, plain.preset, plain.config, plain.has_features) == (
        None,
        "rgb",
        "dul",
        None,
        False,
    )


def test_run_writes_init_and_model_weights_with_metadata(dul_run):
    from safetensors.torch import load_file

    from tritoncorr.engine.loop import seed_all
    from tritoncorr.engine.recipe import load_recipe

    for name in ("init.safetensors", "model.safetensors"):
        meta = read_metadata(dul_run / name)
        assert meta["tritoncorr.method"] == "dul" and meta["tritoncorr.preset"] == "dul"
    init, final = load_file(str(dul_run / "init.safetensors")), load_file(str(dul_run / "model.safetensors"))
    # init.safetensors is the recipe seed's random init; training moved the weights away from it
    cfg = load_recipe(f"{RECIPES / 'dul.py'}:smoke", [])
    seed_all(cfg.seed)
    fresh = cfg.method.build().state_dict()
    assert all(torch.equal(init[k], fresh[k]) for k in fresh)
    assert not torch.equal(init["backbone.conv1.weight"], final["backbone.conv1.weight"])


def test_load_feature_model_rebuilds_the_method(dul_run):
    from safetensors.torch import load_file

    from tritoncorr.engine.recipe import load_recipe

    fm = load_feature_model(dul_run / "model.safetensors")
    assert (fm.method, fm.color, fm.preset) == ("dul", "rgb", "dul")
    model = load_recipe(f"{RECIPES / 'dul.py'}:smoke", []).method.build()
    model.load_state_dict(load_file(str(dul_run / "model.safetensors")))
    model.eval()
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        np.testing.assert_allclose(fm.features(x).numpy(), model.features(x).numpy(), rtol=1e-5, atol=1e-5)
    # a run folder resolves to its model.safetensors
    assert load_feature_model(dul_run).method == "dul"


def test_load_feature_model_plain_backbone_and_random_init(tmp_path):
    from tritoncorr.models import dul_backbone
    from tritoncorr.models.loading import save_backbone_weights

    torch.manual_seed(3)
    bb = dul_backbone()
    save_backbone_weights(bb, tmp_path / "bb.safetensors")
    fm = load_feature_model(tmp_path / "bb.safetensors")
    assert (fm.method, fm.color, fm.preset) == ("backbone", "rgb", "dul")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fm.features(x), bb.eval()(x)["layer4"])
    r0, r1 = load_feature_model(None, seed=3), load_feature_model(None, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(r0.features(x), bb(x)["layer4"])
        assert not torch.allclose(r1.features(x), r0.features(x))


def test_bf16_precision_features_are_close_to_fp32_and_float32(dul_run):
    """``precision="bf16"``: the same model under bfloat16 autocast, float32 out, close to fp32 (a
    cosine near 1 per feature vector), for plain backbones and rebuilt methods alike."""
    x = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    for source in (None, dul_run / "model.safetensors"):
        f32, b16 = load_feature_model(source, seed=1), load_feature_model(source, seed=1, precision="bf16")
        with torch.no_grad():
            a, b = f32.features(x), b16.features(x)
        assert b.dtype == torch.float32 and b.shape == a.shape
        assert not torch.equal(a, b)  # autocast really ran in bfloat16
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
        assert cos.min() > 0.99, cos.min()
        assert "bf16" in b16.description
    with pytest.raises(ValueError, match="precision"):
        load_feature_model(None, precision="fp8")


def test_load_feature_model_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_feature_model(tmp_path / "missing.safetensors")
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"\x01" * 9)
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_feature_model(bad)


def test_metadata_that_names_an_unknown_method_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "odd.safetensors"
    save_file(
        {"w": torch.zeros(1)},
        str(path),
        metadata={"tritoncorr.method": "x", "tritoncorr.method_config": json.dumps({"__class__": "nope:Cfg"})},
    )
    with pytest.raises(ValueError, match="odd.safetensors"):
        load_feature_model(path)


def test_eval_davis_uses_the_checkpoint_preset(dul_run, tmp_path):
    davis = make_synthetic_davis(tmp_path / "DAVIS", num_sequences=1, num_frames=4, height=40, width=56, seed=2)
    options = ("--device", "cpu", "--context", 2)
    r = run_eval("davis", davis, "--out", tmp_path / "o", "--checkpoint", dul_run / "model.safetensors", *options)
    assert "preset 'dul' (from the checkpoint)" in r.output and "dul (DUL)" in r.output
    init = dul_run / "init.safetensors"
    r = run_eval("davis", davis, "--out", tmp_path / "o2", "--checkpoint", init, "--preset", "crw", *options)
    assert "preset 'crw' (set by --preset)" in r.output


def test_lab_frames_match_the_training_pipeline():
    from tritoncorr.data.transforms import lab_normalize, rgb_uint8_to_lab
    from tritoncorr.evaluate import frame_to_tensor

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    lab = frame_to_tensor(frame, color="lab")
    ref = lab_normalize(rgb_uint8_to_lab(torch.from_numpy(frame).permute(2, 0, 1)))
    assert lab.shape == (1, 3, 7, 9)
    torch.testing.assert_close(lab[0], ref.float())
    with pytest.raises(ValueError, match="color"):
        frame_to_tensor(frame, color="hsv")

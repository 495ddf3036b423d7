"""Recipes: loading by path and name, typed ``--set`` overrides and their errors, JSON round trips,
``--resume`` config resolution and ``tritoncorr train --dry-run``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional, Union

import pytest
from cli_runs import run_cli
from toy_method import ToyDataConfig, ToyMethodConfig

from tritoncorr.engine.cli import resolve_config
from tritoncorr.engine.config import (
    ConfigError,
    RunConfig,
    apply_dict,
    apply_overrides,
    coerce,
    config_from_dict,
    config_to_dict,
)
from tritoncorr.engine.recipe import load_recipe, split_recipe_ref

TOY = str(Path(__file__).resolve().parent / "recipes" / "toy.py")


def test_split_recipe_ref():
    assert split_recipe_ref("recipes/dul.py") == (Path("recipes/dul.py"), "default")
    assert split_recipe_ref("recipes/dul.py:cpu") == (Path("recipes/dul.py"), "cpu")
    assert split_recipe_ref("/a/b.py:smoke") == (Path("/a/b.py"), "smoke")


def test_load_named_recipes_and_errors(tmp_path):
    cfg = load_recipe(TOY)
    assert cfg.name == "toy" and isinstance(cfg.method, ToyMethodConfig) and cfg.method.norm
    assert load_recipe(TOY + ":ddp").method.norm is False
    with pytest.raises(ConfigError, match=r"no config named 'nope'; available: ddp, default, synthetic"):
        load_recipe(TOY + ":nope")
    with pytest.raises(ConfigError, match="no config named '_helper'"):
        load_recipe(TOY + ":_helper")
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(str(tmp_path / "missing.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("def default():\n    return 3\n")
    with pytest.raises(ConfigError, match="returned int, expected RunConfig"):
        load_recipe(str(bad))


def test_overrides_are_typed():
    cfg = load_recipe(
        TOY,
        [
            "optim.lr=3e-4",
            "steps=1_000",
            "compile=yes",
            "optim.betas=(0.8, 0.99)",
            "schedule.milestones=[10,20]",
            "schedule.name=multistep",
            "method.channels=4",
            "data.size=12",
            "eval.sequences=bike,car",
            "name='x y'",
            "optim.name=sgd",
            "schedule.factors=()",
        ],
    )
    assert cfg.optim.lr == 3e-4 and cfg.steps == 1000 and cfg.compile is True
    assert cfg.optim.betas == (0.8, 0.99) and cfg.schedule.milestones == (10, 20)
    assert cfg.method.channels == 4 and cfg.data.size == 12
    assert cfg.eval.sequences == ("bike", "car") and cfg.name == "x y" and cfg.optim.name == "sgd"
    assert cfg.schedule.factors == ()


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", r"unknown field 'optim.lrr'; did you mean 'optim.lr'"),
        ("optm.lr=1", r"unknown field 'optm'; did you mean 'optim'"),
        ("method.chanels=3", r"did you mean 'method.channels'"),
        ("optim.lr=fast", r"cannot parse optim.lr='fast' as float"),
        ("steps=2.5", r"cannot parse steps='2.5' as int"),
        ("compile=maybe", r"cannot parse compile='maybe' as bool"),
        ("optim.betas=(0.9)", r"expected 2 values, got 1"),
        ("optim.name=rmsprop", r"optim.name='rmsprop' is not one of \['adam', 'adamw', 'sgd'\]"),
        ("optim=3", r"optim is a section \(OptimConfig\); set one of its fields: optim.name"),
        ("optim.lr", r"must look like section.field=value"),
        ("optim.lr.x=1", r"optim.lr is not a section"),
    ],
)
def test_override_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(TOY, [override])


def test_validation_errors():
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        load_recipe(TOY, ["steps=0"])
    with pytest.raises(ConfigError, match="eval.every > 0 needs eval.davis_root"):
        load_recipe(TOY, ["eval.every=5"])
    with pytest.raises(ConfigError, match="one value per milestone"):
        load_recipe(TOY, ["schedule.name=multistep", "schedule.milestones=1,2", "schedule.factors=0.5"])


def test_coerce_generic_types():
    assert coerce("none", Optional[int], "x") is None and coerce("3", Optional[int], "x") == 3
    assert coerce("a, b", list[str], "x") == ["a", "b"]
    assert coerce("1,2,3", tuple[int, ...], "x") == (1, 2, 3)
    assert coerce([1, 2], tuple[float, float], "x") == (1.0, 2.0)
    assert coerce("b", Literal["a", "b"], "x") == "b"
    assert coerce("/tmp/a", Path, "x") == Path("/tmp/a")
    with pytest.raises(ConfigError):
        coerce("none", int, "x")
    with pytest.raises(ConfigError):
        coerce(True, int, "x")


def test_coerce_union_reports_each_branch():
    """A value no branch of a union accepts: the error says why each one refused it."""
    with pytest.raises(ConfigError) as info:
        coerce("1,2,3", Union[int, tuple[int, int]], "data.size")
    msg = str(info.value)
    assert msg.startswith("cannot parse data.size='1,2,3' as ") and "(tried int; " in msg
    assert "tuple[int, int] (expected 2 values, got 3)" in msg
    assert coerce("4", Union[int, tuple[int, int]], "x") == 4 and coerce("4,5", int | tuple[int, int], "x") == (4, 5)


def test_json_roundtrip_rebuilds_classes():
    cfg = load_recipe(TOY, ["optim.betas=0.5,0.9", "method.channels=6"])
    data = json.loads(json.dumps(config_to_dict(cfg)))
    assert data["method"]["__class__"] == "toy" and data["data"]["__class__"] == "toy_data"
    assert "__class__" not in data["optim"]  # fixed by the declared type
    back = config_from_dict(data)
    assert back == cfg and isinstance(back.data, ToyDataConfig)
    with pytest.raises(ConfigError, match="unknown field 'optim.gamma'"):
        apply_dict(load_recipe(TOY), {"optim": {"gamma": 1}})


def test_resume_resolution_uses_saved_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    saved = load_recipe(TOY, ["optim.lr=0.123", "steps=50"])
    (run / "config.json").write_text(json.dumps({**config_to_dict(saved), "__recipe__": TOY}))
    cfg, run_dir, stop = resolve_config(
        recipe=TOY, overrides=["log_every=7"], steps=None, seed=None, out=None, resume=run
    )
    assert cfg.optim.lr == 0.123 and cfg.steps == 50 and cfg.log_every == 7 and run_dir == run and stop == 50
    cfg, _, stop = resolve_config(recipe=TOY, overrides=[], steps=80, seed=None, out=None, resume=run)
    assert cfg.steps == 80 and stop == 80  # --steps beyond the horizon extends it
    with pytest.raises(ConfigError, match="differs from the resumed run's seed"):
        resolve_config(recipe=TOY, overrides=[], steps=None, seed=cfg.seed + 1, out=None, resume=run)
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_config(recipe=TOY, overrides=[], steps=None, seed=None, out=None, resume=tmp_path)


def test_new_run_resolution():
    cfg, run_dir, stop = resolve_config(recipe=TOY, overrides=["steps=10"], steps=4, seed=9, out=None, resume=None)
    assert cfg.seed == 9 and cfg.steps == 10 and stop == 4 and run_dir == Path("runs") / "toy"


def test_cli_dry_run_and_errors(tmp_path):
    r = run_cli("train", TOY, "--dry-run", "--set", "optim.lr=0.5", "--steps", "3", "--out", tmp_path)
    assert "lr = 0.5" in r.output and "ToyMethodConfig" in r.output and "stop at step 3" in r.output
    assert not any(tmp_path.iterdir())  # nothing written
    r = run_cli("train", TOY, "--dry-run", "--set", "optim.lrr=0.5", exit_code=2)
    assert "did you mean 'optim.lr'" in r.output
    r = run_cli("train", TOY + ":nope", "--dry-run", exit_code=2)
    assert "available: ddp, default, synthetic" in r.output
    r = run_cli("train", "--help")
    assert "--resume" in r.output


def test_recipe_files_in_repo_load():
    """Every recipe function shipped in recipes/ resolves to a valid RunConfig (their own modules decide
    whether they can be built here)."""
    from tritoncorr.engine.recipe import load_recipe_module, recipe_names

    recipes = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.py"))
    assert recipes, "recipes/ holds no recipe files"
    for path in recipes:
        module = load_recipe_module(path)
        for name in recipe_names(module):
            cfg = load_recipe(f"{path}:{name}", validate=False)
            assert isinstance(cfg, RunConfig), f"{path}:{name}"
            json.dumps(config_to_dict(cfg))


def test_apply_overrides_in_order():
    cfg = load_recipe(TOY)
    apply_overrides(cfg, ["steps=5", "steps=6"])
    assert cfg.steps == 6

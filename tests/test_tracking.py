"""Experiment trackers (TensorBoard / W&B writers beside metrics.jsonl) and the matplotlib curves."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from cli_runs import run_cli

from tritoncorr.engine import ConfigError, load_recipe
from tritoncorr.engine.curves import plot_curves, read_metrics, series_from_rows
from tritoncorr.engine.log import RunLoggers, check_backends, tag_for

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "tests" / "recipes" / "toy.py")


def _event_accumulator(logdir: Path):
    ea_mod = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="the [tb] extra (tensorboard) is not installed"
    )
    acc = ea_mod.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_smoke_run_with_tensorboard_writes_events_tensorboard_reads(tmp_path):
    pytest.importorskip("tensorboard", reason="the [tb] extra (tensorboard) is not installed")
    run = tmp_path / "run"
    smoke = f"{ROOT / 'recipes' / 'dul.py'}:smoke"
    run_cli("train", smoke, "--steps", "2", "--set", "log.backends=[tensorboard]", "--out", run)
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = _event_accumulator(run / "tensorboard")
    tags = set(acc.Tags()["scalars"])
    expected = {
        "train/loss",
        "train/st",
        "train/cv",
        "train/lr",
        "train/step_time",
        "throughput/steps_per_s",
        "throughput/clips_per_s",
        "memory/peak_mib",
    }
    assert expected <= tags, tags
    rows = read_metrics(run / "metrics.jsonl")
    loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert loss == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in rows]
    assert all(e.value > 0 for e in acc.Scalars("memory/peak_mib"))


def test_validation_masks_are_logged_as_images(tmp_path):
    pytest.importorskip("tensorboard", reason="the [tb] extra (tensorboard) is not installed")
    from tritoncorr.evals.synthetic import make_synthetic_davis

    from tritoncorr.engine.loop import train

    root = make_synthetic_davis(tmp_path / "davis", num_sequences=1, num_frames=4, height=32, width=48)
    cfg = load_recipe(
        TOY, ["steps=2", "eval.every=2", f"eval.davis_root={root}", "log.backends=[tensorboard]", "log.val_frames=3"]
    )
    train(cfg, tmp_path / "run", progress=False)
    acc = _event_accumulator(tmp_path / "run" / "tensorboard")
    assert "val/jf" in acc.Tags()["scalars"]
    (tag,) = acc.Tags()["images"]
    assert tag.startswith("val/masks/")
    (img,) = acc.Images(tag)
    assert img.step == 2 and img.height == 240 and img.width > 3 * img.height  # a strip of 3 frames


def test_backends_off_by_default_and_clear_errors(tmp_path, monkeypatch):
    cfg = load_recipe(TOY, [])
    assert cfg.log.backends == ()
    assert not RunLoggers((), tmp_path)
    with pytest.raises(ConfigError, match="unknown backend 'tensorbord'"):
        check_backends(["tensorbord"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r'pip install "tritoncorr\[wandb\]"'):
        check_backends(["wandb"])

    res = run_cli("train", TOY, "--set", "log.backends=[wandb]", "--out", tmp_path / "r", exit_code=2)
    assert "tritoncorr[wandb]" in res.output
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_wandb_writer_offline(tmp_path):
    pytest.importorskip("wandb", reason="the [wandb] extra is not installed")
    from tritoncorr.engine.loop import train

    cfg = load_recipe(TOY, ["steps=2", "log.backends=[wandb]", "log.wandb_mode=offline"])
    train(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "wandb" / "run_id").is_file()
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_tags():
    assert tag_for("loss") == "train/loss" and tag_for("val/jf") == "val/jf"
    assert tag_for("throughput/clips_per_s") == "throughput/clips_per_s"


def test_curves_one_panel_per_series(tmp_path):
    rows = [
        {
            "step": i,
            "epoch": 0,
            "loss": 3.0 / i,
            "st": 2.0 / i,
            "lr": 1e-3,
            "time": i,
            "step_time": 0.5,
            "memory/peak_mib": 700.0,
        }
        for i in range(1, 60)
    ]
    rows[-1]["val/jf"] = 0.5
    series = series_from_rows(rows)
    assert list(series) == ["loss", "st", "lr", "step_time", "memory/peak_mib", "val/jf"]
    png = plot_curves(rows, tmp_path / "curves.png", title="t")
    from PIL import Image

    w, h = Image.open(png).size
    assert w >= 1000 and h >= 3 * 300  # 2 columns, 3 rows of panels
    png2 = plot_curves(tmp_path / "missing.jsonl", tmp_path / "empty.png")
    assert png2.is_file()
    # the metrics file is the source of truth: read back as written
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6')
    assert read_metrics(tmp_path / "m.jsonl") == rows
    assert np.isfinite([v for _, v in series["loss"]]).all()

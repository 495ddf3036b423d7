"""``recipes/liir.py:cpu`` is what its docstring says: 128 x 128 crops of frames at DAVIS 480p scale
(decoded-frame cache at the same short side), the reference code's pair sampling, 4 pairs per step,
the position grid of the crop's feature size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tritoncorr.data.clips import clip_to_tensor
from tritoncorr.data.sampler import draw_gap
from tritoncorr.engine.recipe import load_recipe, load_recipe_module

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "liir.py"


def _cpu():
    module = load_recipe_module(RECIPE)
    cfg = load_recipe(f"{RECIPE}:cpu", validate=False)
    cfg.data.root = "videos"
    cfg.validate()
    return module, cfg


def test_cpu_recipe_settings_match_its_docstring():
    module, cfg = _cpu()
    doc = " ".join(module.cpu.__doc__.split())
    d, m, o = cfg.data, cfg.method, cfg.optim
    # scale: shorter side 480 (DAVIS 480p), then a 128 x 128 crop, the same for both frames; cache at 480
    assert (module.CPU_SHORT_SIDE, module.CPU_CROP) == (480, 128)
    assert (d.crop, tuple(d.short_side), d.crop_size) == ("random", (480, 480), 128)
    assert d.cache_dir and d.cache_short_side == 480
    assert "shorter side is 480" in doc and "random 128 x 128 crop" in doc and "short side 480" in doc
    assert (d.hflip, d.color, d.clip_len, d.order) == (False, "lab", 2, "ordered")
    # pairs: gap k in {2, 5, 8} with p = 0.4 / 0.4 / 0.2
    assert (tuple(d.gap_choices), tuple(d.gap_probs)) == ((2, 5, 8), (0.4, 0.4, 0.2))
    assert "{2, 5, 8} frames with p = 0.4 / 0.4 / 0.2" in doc
    # batch: 4 pairs per step, no accumulation
    assert (d.batch_size, o.accumulate) == (4, 1)
    assert "4 pairs per optimiser step, no gradient accumulation" in doc
    # model: stage 1 of the paper profile; position grid = the crop's stride-4 feature size; no bank
    assert (m.radius, m.feature_dim, m.compact_m, m.position, m.inter) == (6, 64, 2, "feature", "none")
    assert m.position_grid == 128 // 4 == 32 and "position grid 32" in doc
    assert "Stage 1 only, no inter-video bank" in doc
    # optimiser: Adam 1e-3, cosine to 0 over CPU_STEPS (follows --set steps=N)
    assert (o.name, o.lr, cfg.steps) == ("adam", 1e-3, module.CPU_STEPS)
    assert f"``CPU_STEPS`` = {cfg.steps} steps" in doc and "Adam 1e-3" in doc and cfg.steps == 600
    assert (cfg.schedule.name, cfg.schedule.min_lr_ratio, cfg.schedule.warmup_steps) == ("cosine", 0.0, 0)
    assert "cosine decay to 0 over the run" in doc


def test_cpu_recipe_crops_keep_the_480p_scale():
    """A 1280 x 720 frame of vertical stripes 30 px wide: after the recipe's pipeline the stripes are
    30 x 480 / 720 = 20 px wide in the 128 x 128 crop (the object scale of DAVIS 480p), and both frames
    of a pair are cut at the same place."""
    _, cfg = _cpu()
    x = np.arange(1280)
    frame = np.where(((x // 30) % 2 == 0)[None, :, None], 255, 0).astype(np.uint8).repeat(720, 0).repeat(3, 2)
    frames = np.stack([frame, frame])
    clip = clip_to_tensor(frames, cfg.data, torch.Generator().manual_seed(3))
    assert clip.shape == (2, 3, 128, 128)
    assert torch.equal(clip[0], clip[1])
    row = (clip[0, 0, 64] > 0).numpy().astype(np.int8)  # L channel: white > 0, black < 0
    edges = np.flatnonzero(np.diff(row))
    widths = np.diff(edges)
    assert len(widths) >= 4 and abs(widths.mean() - 20.0) < 0.5


def test_gap_is_drawn_with_the_reference_probabilities():
    _, cfg = _cpu()
    rng = np.random.default_rng(0)
    gaps = np.array([draw_gap(cfg.data.frame_gap, cfg.data.gap_choices, cfg.data.gap_probs, rng) for _ in range(4000)])
    freq = [float((gaps == g).mean()) for g in (2, 5, 8)]
    assert np.allclose(freq, (0.4, 0.4, 0.2), atol=0.03)
    # without choices the fixed gap is used and nothing is drawn (other recipes' random streams unchanged)
    before = rng.bit_generator.state
    assert draw_gap(7, (), (), rng) == 7 and rng.bit_generator.state == before

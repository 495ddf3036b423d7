"""Training engine: schedules, parameter groups, checkpoints, exact resume, interrupts, accumulation,
clipping, torch.compile on CPU, 2-process gloo DDP, curves and periodic validation.

Runs use the toy method of ``tests/toy_method.py`` on 16x16 toy clips (milliseconds per step).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runs import run_cli, torchrun_train
from safetensors.torch import load_file
from toy_method import ToyDataConfig, ToyMethodConfig

from tritoncorr.engine import checkpoint as ck
from tritoncorr.engine.config import OptimConfig, ScheduleConfig
from tritoncorr.engine.curves import plot_curves, read_metrics
from tritoncorr.engine.loop import seed_all, train
from tritoncorr.engine.optim import build_optimizer, classify_parameters, lr_factor, param_groups, set_lr
from tritoncorr.engine.recipe import load_recipe

TESTS = Path(__file__).resolve().parent
TOY = str(TESTS / "recipes" / "toy.py")
REPO = TESTS.parent


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _losses(run: Path) -> list[tuple[int, float, float, float, float]]:
    return [(r["step"], r["loss"], r["recon"], r["entropy"], r["lr"]) for r in read_metrics(run / "metrics.jsonl")]


# ------------------------------------------------------------------------------------- schedules


def test_step_schedule_counts_epochs_like_steplr():
    # DUL YouTube-VOS: StepLR(100 epochs, 0.5) stepped per epoch, 216 iterations per epoch
    s = ScheduleConfig(name="step", unit="epochs", step_size=100, gamma=0.5)
    f = lambda it: lr_factor(it, s, total_steps=10**6, steps_per_epoch=216)  # noqa: E731
    assert f(0) == 1.0 and f(216 * 100 - 1) == 1.0
    assert f(216 * 100) == 0.5 and f(216 * 200 - 1) == 0.5 and f(216 * 200) == 0.25
    s_steps = ScheduleConfig(name="step", unit="steps", step_size=3, gamma=0.1)
    assert [lr_factor(i, s_steps, total_steps=10, steps_per_epoch=1000) for i in range(7)] == pytest.approx(
        [1, 1, 1, 0.1, 0.1, 0.1, 0.01]
    )


def test_multistep_schedule_with_factors():
    # LIIR stage 2 in samples/12 per step: factors 0.9, 0.75 after the milestones
    s = ScheduleConfig(name="multistep", unit="steps", milestones=(5, 8), factors=(0.9, 0.75))
    got = [lr_factor(i, s, total_steps=20, steps_per_epoch=1) for i in range(10)]
    assert got == pytest.approx([1] * 5 + [0.9] * 3 + [0.75] * 2)
    s2 = ScheduleConfig(name="multistep", unit="steps", milestones=(2,), gamma=0.5)
    assert (
        lr_factor(1, s2, total_steps=5, steps_per_epoch=1) == 1
        and lr_factor(2, s2, total_steps=5, steps_per_epoch=1) == 0.5
    )


def test_cosine_warmup_matches_stt_check_values():
    # stt.md §3.12: eta_0 5e-5, eta_min 0.001 eta_0, 44,000 iterations, warm-up 1,100 from 0.001
    s = ScheduleConfig(name="cosine", min_lr_ratio=0.001, warmup_steps=1100, warmup_start_factor=0.001)
    lr = lambda it: 5e-5 * lr_factor(it, s, total_steps=44000, steps_per_epoch=55)  # noqa: E731
    assert lr(0) == pytest.approx(5.0e-8, rel=1e-2)
    assert lr(1100) == pytest.approx(4.992e-5, rel=2e-4)
    assert lr(44000) == pytest.approx(5.0e-8, rel=1e-6)
    mid = 5e-8 + 0.5 * (5e-5 - 5e-8) * (1 + math.cos(math.pi * 0.5))
    assert lr(22000) == pytest.approx(mid, rel=1e-9)
    values = [lr(i) for i in range(0, 1100, 50)]
    assert values == sorted(values)  # warm-up increases monotonically


# --------------------------------------------------------------------------------- param groups


def test_param_groups_dul_rules():
    model = ToyMethodConfig(norm=True).build()
    kinds = classify_parameters(model)
    assert kinds["backbone.0.weight"] == "weight" and kinds["backbone.1.weight"] == "norm"
    assert kinds["backbone.1.bias"] == "bias" and kinds["head.bias"] == "bias"
    cfg = OptimConfig(name="adam", lr=1e-4, betas=(0.5, 0.999), weight_decay=5e-4, bias_lr_mult=2.0, no_decay_bias=True)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["betas"] == (0.5, 0.999)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    # DUL: biases (incl. BN beta) at 2x lr without decay; conv weights and BN gamma decayed at 1x
    for name in ("backbone.1.bias", "backbone.3.bias", "head.bias"):
        g = by_param[id(named[name])]
        assert g["lr"] == pytest.approx(2e-4) and g["weight_decay"] == 0.0
    for name in ("backbone.0.weight", "backbone.1.weight", "head.weight"):
        g = by_param[id(named[name])]
        assert g["lr"] == pytest.approx(1e-4) and g["weight_decay"] == 5e-4
    assert sum(len(g["params"]) for g in opt.param_groups) == len(named)
    set_lr(opt, 1e-4, 0.5)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([5e-5, 1e-4])
    # no decay on norms either
    groups = param_groups(model, OptimConfig(weight_decay=1e-2, no_decay_bias_norm=True))
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    assert decayed == {"backbone.0.weight", "backbone.3.weight", "head.weight"}
    # frozen parameters are left out; optimiser kinds
    model.head.weight.requires_grad_(False)
    assert "head.weight" not in classify_parameters(model)
    assert isinstance(build_optimizer(model, OptimConfig(name="adamw")), torch.optim.AdamW)
    sgd = build_optimizer(model, OptimConfig(name="sgd", momentum=0.9, nesterov=True))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] is True


# ---------------------------------------------------------------------------------- checkpoints


def test_checkpoint_roundtrip_atomic_and_keep_last(tmp_path):
    seed_all(0)
    model = ToyMethodConfig().build()
    opt = build_optimizer(model, OptimConfig(name="adam", lr=1e-2))
    batch = next(iter(ToyDataConfig().build_loader(seed=0)))
    sum(model(batch).values()).backward()
    opt.step()
    for step in (1, 2, 3):
        ck.save_checkpoint(
            tmp_path,
            step,
            model,
            opt,
            {"epoch": 0, "loader": {"epoch": 0, "batch": step}, "rng": [ck.get_rng_state()]},
            keep_last=2,
        )
    (tmp_path / ".tmp-ckpt-00000009-1").mkdir()  # a half-written checkpoint is never "latest"
    (tmp_path / "ckpt-00000007").mkdir()  # no state.json: incomplete
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [2, 3]
    latest = ck.latest_checkpoint(tmp_path)
    assert latest.name == "ckpt-00000003" and ck.latest_checkpoint(latest) == latest
    ck.clean_temporaries(tmp_path)
    assert not (tmp_path / ".tmp-ckpt-00000009-1").exists()

    seed_all(1)
    model2 = ToyMethodConfig().build()
    opt2 = build_optimizer(model2, OptimConfig(name="adam", lr=1e-2))
    state = ck.load_checkpoint(latest, model2, opt2)
    assert state["step"] == 3 and state["loader"] == {"epoch": 0, "batch": 3}
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for i in s1["state"]:
        for k in s1["state"][i]:
            assert torch.equal(torch.as_tensor(s1["state"][i][k]), torch.as_tensor(s2["state"][i][k])), (i, k)
    assert s1["param_groups"] == s2["param_groups"]
    # eval loads model.safetensors by key
    sd = load_file(str(latest / "model.safetensors"))
    assert set(sd) == set(model.state_dict()) and any(k.startswith("backbone.") for k in sd)


def test_rng_state_roundtrip():
    import random

    import numpy as np

    state = json.loads(json.dumps(ck.get_rng_state()))
    a = (random.random(), np.random.rand(), torch.rand(3))
    ck.set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


# ---------------------------------------------------------------------------------- full runs


def test_resume_is_exact_via_cli(tmp_path):
    """--steps 6 equals --steps 3 then --resume to 6, step for step (cosine schedule, random pairs)."""
    full, part = tmp_path / "full", tmp_path / "part"
    run_cli("train", TOY, "--steps", "6", "--out", full, "--set", "log_every=100")
    run_cli("train", TOY, "--steps", "3", "--out", part)
    assert ck.latest_checkpoint(part).name == "ckpt-00000003"
    run_cli("train", TOY, "--steps", "6", "--resume", part)
    a, b = _losses(full), _losses(part)
    assert [x[0] for x in a] == list(range(1, 7))
    assert a == b  # bit-exact: losses, terms and lr
    wa, wb = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    saved = json.loads((part / "config.json").read_text())
    assert saved["steps"] == 8 and saved["method"]["__class__"] == "toy"
    assert (part / "curves.png").is_file()
    # keep_last=2, every=2 in the toy recipe
    assert [s for s, _ in ck.list_checkpoints(full)] == [4, 6]
    # a second run into a folder with checkpoints needs --resume
    r = run_cli("train", TOY, "--steps", "2", "--out", full, exit_code=2)
    assert "--resume" in r.output


def test_sigterm_saves_checkpoint_and_resume_continues(tmp_path):
    cfg = load_recipe(TOY, ["steps=5", "checkpoint.every=0"])
    train(cfg, tmp_path / "ref", progress=False)

    def kill_at_2(row):
        if row["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = load_recipe(TOY, ["steps=5", "checkpoint.every=0"])
    res = train(cfg, tmp_path / "run", progress=False, on_step=kill_at_2)
    assert res.interrupted and res.step == 2 and res.last_checkpoint.name == "ckpt-00000002"
    cfg = load_recipe(TOY, ["steps=5", "checkpoint.every=0"])
    res = train(cfg, tmp_path / "run", resume=True, progress=False)
    assert not res.interrupted and res.step == 5
    assert _losses(tmp_path / "ref") == _losses(tmp_path / "run")


def test_ctrl_c_killing_data_workers_mid_step_rolls_back_and_saves(tmp_path):
    # accumulate=2: the interrupt hits step 3's second micro-batch (the 6th fetch)
    common = ["steps=5", "checkpoint.every=0", "optim.accumulate=2"]
    train(load_recipe(TOY, common), tmp_path / "ref", progress=False)
    res = train(load_recipe(TOY, common + ["data.interrupt_at_fetch=6"]), tmp_path / "run", progress=False)
    assert res.interrupted and res.step == 2
    state = json.loads((tmp_path / "run" / "ckpt-00000002" / "state.json").read_text())
    assert state["loader"] == {"epoch": 0, "batch": 4}  # the half-consumed step is replayed
    train(load_recipe(TOY, common), tmp_path / "run", resume=True, progress=False)
    assert _losses(tmp_path / "ref") == _losses(tmp_path / "run")


def test_resume_after_crash_truncates_metrics(tmp_path):
    # the log may run ahead of the last checkpoint (crash between checkpoints): those steps are replayed
    cfg = load_recipe(TOY, ["steps=4"])
    train(cfg, tmp_path, progress=False)
    ref = _losses(tmp_path)
    shutil.rmtree(tmp_path / "ckpt-00000004")  # crash after step 4 was logged, before its checkpoint
    cfg = load_recipe(TOY, ["steps=4"])
    train(cfg, tmp_path, resume=True, progress=False)
    assert _losses(tmp_path) == ref


def test_resume_with_tritoncorr_clip_loader(tmp_path):
    """Same check on the real synthetic clip loader (epoch rollover after 3 batches)."""
    pytest.importorskip("tritoncorr.data.loader")
    cfg = load_recipe(TOY + ":synthetic", ["steps=5"])
    train(cfg, tmp_path / "full", progress=False)
    cfg = load_recipe(TOY + ":synthetic", ["steps=5"])
    train(cfg, tmp_path / "part", stop_at=2, progress=False)
    cfg = load_recipe(TOY + ":synthetic", ["steps=5"])
    train(cfg, tmp_path / "part", resume=True, progress=False)
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "part")
    assert len(a) == 5 and a == b
    assert read_metrics(tmp_path / "full" / "metrics.jsonl")[-1]["epoch"] == 1


def test_accumulation_equals_larger_batch(tmp_path):
    common = ["steps=3", "method.norm=false", "method.random_pair=false", "optim.weight_decay=0"]
    big = train(load_recipe(TOY, common + ["data.batch_size=4"]), tmp_path / "big", progress=False)
    acc = train(
        load_recipe(TOY, common + ["data.batch_size=2", "optim.accumulate=2"]), tmp_path / "acc", progress=False
    )
    for x, y in zip(big.rows, acc.rows):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5, abs=1e-7)
    wa, wb = (
        load_file(str(tmp_path / "big" / "model.safetensors")),
        load_file(str(tmp_path / "acc" / "model.safetensors")),
    )
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_grad_clip_bounds_the_update(tmp_path):
    clip = 1e-3
    cfg = load_recipe(
        TOY,
        [
            "steps=1",
            "optim.name=sgd",
            "optim.momentum=0",
            "optim.weight_decay=0",
            "optim.lr=1",
            "optim.bias_lr_mult=1",
            f"optim.grad_clip={clip}",
            "schedule.name=constant",
            "schedule.warmup_steps=0",
        ],
    )
    seed_all(cfg.seed)
    before = cfg.method.build().state_dict()
    res = train(cfg, tmp_path, progress=False)
    after = load_file(str(tmp_path / "model.safetensors"))
    delta = torch.sqrt(
        sum(
            ((after[k] - before[k]) ** 2).sum()
            for k in before
            if k.endswith(("weight", "bias")) and before[k].is_floating_point()
        )
    )
    assert res.rows[0]["grad_norm"] > clip  # the clip was active
    assert float(delta) == pytest.approx(clip, rel=1e-3)


def test_nonfinite_loss_is_reported(tmp_path):
    cfg = load_recipe(TOY, ["steps=2", "method.temperature=0"])
    with pytest.raises(FloatingPointError, match="non-finite loss at step 1"):
        train(cfg, tmp_path, progress=False)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_method_trains_on_cpu(tmp_path, backend):
    # inductor generates and builds C++ on CPU (~100 s cold on a loaded 2-core machine): opt-in
    cfg = load_recipe(TOY, ["steps=2", "compile=true", f"compile_backend={backend}", "method.random_pair=false"])
    res = train(cfg, tmp_path / "c", progress=False)
    cfg = load_recipe(TOY, ["steps=2", "compile=false", "method.random_pair=false"])
    ref = train(cfg, tmp_path / "e", progress=False)
    for x, y in zip(res.rows, ref.rows):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)


def test_ddp_two_processes_gloo_equals_one_process_double_batch(tmp_path):
    """torchrun --nproc_per_node 2 (gloo): rank r trains on half of each global batch; DDP's averaged
    gradients must give the same weights as one process on the whole batch."""
    args = [TOY + ":ddp", "--steps", "3", "--out", str(tmp_path / "ddp"), "--set", "data.batch_size=2"]
    torchrun_train(args, tmp_path, timeout=240)
    cfg = load_recipe(TOY + ":ddp", ["data.batch_size=4"])
    train(cfg, tmp_path / "single", stop_at=3, progress=False)
    a, b = read_metrics(tmp_path / "ddp" / "metrics.jsonl"), read_metrics(tmp_path / "single" / "metrics.jsonl")
    assert [r["step"] for r in a] == [1, 2, 3]  # rank 0 only writes: one line per step
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    wa, wb = (
        load_file(str(tmp_path / "ddp" / "model.safetensors")),
        load_file(str(tmp_path / "single" / "model.safetensors")),
    )
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)
    state = json.loads((tmp_path / "ddp" / "ckpt-00000003" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2


# ------------------------------------------------------------------------ curves and validation


def test_curves_png(tmp_path):
    from PIL import Image

    rows = [{"step": i, "loss": 1 / i, "st": 0.5 / i, "lr": 1e-3, "time": i} for i in range(1, 30)]
    rows[9]["val/jf"] = 0.4
    rows[19]["val/jf"] = 0.5
    rows.append({"step": 30, "loss": float("nan"), "lr": 1e-3})
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 31, "lo')  # truncated last line
    assert len(read_metrics(path)) == 30
    out = plot_curves(path, tmp_path / "curves.png", title="t")
    img = Image.open(out)
    assert img.size == (1200, 2 * 320 + 40)  # loss, st, lr, val/jf -> 2 x 2 panels of 6 x 3.2 in (100 dpi) + title
    assert len(img.getcolors(1 << 16)) > 4  # something was drawn


def test_periodic_validation_logs_val_jf(tmp_path):
    pytest.importorskip("tritoncorr.propagation")
    from tritoncorr.evals.synthetic import make_synthetic_davis

    root = make_synthetic_davis(tmp_path / "davis", num_sequences=1, num_frames=4, height=32, width=48)
    cfg = load_recipe(TOY, ["steps=2", "eval.every=2", f"eval.davis_root={root}"])
    res = train(cfg, tmp_path / "run", progress=False)
    assert "val/jf" not in res.rows[0]
    assert 0.0 <= res.rows[1]["val/jf"] <= 1.0 and "val/j" in res.rows[1]
    assert (tmp_path / "run" / "eval" / "step-00000002").is_dir()


@pytest.mark.parametrize("workers", [0, 2])
def test_dul_resume_mid_epoch_is_exact(tmp_path, workers):
    """Issue 16's report: DUL smoke, 6 steps vs 3 + resume to 6 (step 3 opens epoch 1, mid-epoch).

    A new data-loader iterator used to draw its base seed from the global torch RNG, which DUL's views
    share: the resumed run made one iterator more and its random stream shifted."""
    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "dul.py") + ":smoke"
    common = ["steps=6", f"data.num_workers={workers}", "checkpoint.every=0"]
    train(load_recipe(recipe, common), tmp_path / "a", progress=False)
    train(load_recipe(recipe, common), tmp_path / "b", progress=False, stop_at=3)
    train(load_recipe(recipe, common), tmp_path / "b", progress=False, resume=True)
    rows = [
        [(r["step"], r["loss"], r["st"], r["cv"]) for r in read_metrics(tmp_path / run / "metrics.jsonl")]
        for run in ("a", "b")
    ]
    assert len(rows[0]) == 6 and rows[0] == rows[1]
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------------------------- crash safety


def test_damaged_checkpoint_is_reported_and_resume_from_an_older_one_is_exact(tmp_path):
    common = ["steps=6", "checkpoint.every=2", "checkpoint.keep_last=3"]
    train(load_recipe(TOY, common), tmp_path / "ref", progress=False)
    run = tmp_path / "run"
    train(load_recipe(TOY, common), run, progress=False, stop_at=4)
    state = json.loads((run / "ckpt-00000004" / "state.json").read_text())
    assert set(state["files"]) == {"model.safetensors", "optimizer.safetensors"}
    ck.verify_checkpoint(run / "ckpt-00000004")
    # damage the newest checkpoint without changing its size
    f = run / "ckpt-00000004" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ck.CheckpointCorruptError, match="model.safetensors"):
        ck.verify_checkpoint(run / "ckpt-00000004")
    r = run_cli("train", TOY, "--resume", run, "--steps", "6", exit_code=2)
    assert "Traceback" not in r.output
    assert "ckpt-00000004/model.safetensors" in r.output and "--resume-from ckpt-00000002" in r.output
    with pytest.warns(UserWarning, match="moved the newer ckpt-00000004"):
        run_cli("train", TOY, "--resume", run, "--resume-from", "ckpt-00000002", "--steps", "6")
    assert _losses(run) == _losses(tmp_path / "ref")
    assert (run / "superseded" / "ckpt-00000004").is_dir()  # kept, but not resumed from again
    # truncation is caught by the size check
    g = run / "ckpt-00000006" / "optimizer.safetensors"
    g.write_bytes(g.read_bytes()[:-10])
    with pytest.raises(ck.CheckpointCorruptError, match="optimizer.safetensors has"):
        ck.verify_checkpoint(run / "ckpt-00000006")
    r = run_cli("train", TOY, "--resume", run, "--resume-from", "9", exit_code=2)
    assert "no such checkpoint" in r.output


_KILL_SCRIPT = r"""
import os, signal, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)  # as the in-process runs of this module (bit-equal sums)
from tritoncorr.engine import checkpoint as ck
from tritoncorr.engine.loop import train
from tritoncorr.engine.recipe import load_recipe

calls = {{"n": 0}}
real = ck.save_file
def dying_save_file(tensors, path, metadata=None):
    calls["n"] += 1
    if calls["n"] == {kill_at}:  # mid-checkpoint: half of this file is on disk, then SIGKILL
        real(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(tensors, path, metadata=metadata)
ck.save_file = dying_save_file
train(load_recipe({toy!r}, ["steps=6", "checkpoint.every=2", "checkpoint.keep_last=3"]), {out!r}, progress=False)
"""


# save_file calls: 1 init.safetensors; ckpt-2: 2 model, 3 optimizer, 4 run-root model.safetensors;
# ckpt-4: 5 model, 6 optimizer, then 7 the run-root model.safetensors after ckpt-4 is complete.
@pytest.mark.parametrize("kill_at,survivor", [(5, "ckpt-00000002"), (6, "ckpt-00000002"), (7, "ckpt-00000004")])
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, kill_at, survivor):
    """SIGKILL half-way through a file of a checkpoint write: the newest complete checkpoint is intact."""
    ref = tmp_path / "ref"
    train(load_recipe(TOY, ["steps=6", "checkpoint.every=2", "checkpoint.keep_last=3"]), ref, progress=False)
    run = tmp_path / "run"
    script = _KILL_SCRIPT.format(tests=str(TESTS), toy=TOY, out=str(run), kill_at=kill_at)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    latest = ck.latest_checkpoint(run)
    assert latest is not None and latest.name == survivor
    ck.verify_checkpoint(latest)
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".")]
    assert leftovers  # the half-written file or folder, never renamed into place
    train(
        load_recipe(TOY, ["steps=6", "checkpoint.every=2", "checkpoint.keep_last=3"]), run, resume=True, progress=False
    )
    assert _losses(run) == _losses(ref)
    assert not any(p.name.startswith(".") for p in run.iterdir())
    wa, wb = load_file(str(ref / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

"""Reliability (issue 16): exact resume mid-epoch with gradient accumulation and an LR schedule for
every method's smoke recipe; under torchrun; the one warning when a resume cannot be exact; old
checkpoints; and a sweep of bad inputs through ``tritoncorr train``, each a one-line error.

docs/RELIABILITY.md lists which test checks which claim.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from cli_runs import run_cli, torchrun_train
from safetensors.torch import load_file

from tritoncorr.engine import checkpoint as ck
from tritoncorr.engine.curves import read_metrics
from tritoncorr.engine.loop import MEASURED_FIELDS, Trainer, train
from tritoncorr.engine.recipe import load_recipe

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TOY = str(TESTS / "recipes" / "toy.py")
RECIPES = REPO / "recipes"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _rows(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock columns."""
    return [{k: v for k, v in r.items() if k not in MEASURED_FIELDS} for r in read_metrics(run / "metrics.jsonl")]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)


def _no_inexact_resume_warning() -> None:
    """Inside ``warnings.catch_warnings()``: the warnings of an inexact resume become errors."""
    for pattern in (r"resuming .* cannot be exact", r"loader state has", r"checkpoint has RNG"):
        warnings.filterwarnings("error", message=pattern)


def _sigterm_during_accumulation(trainer: Trainer, after_step: int) -> None:
    """SIGTERM at the first micro-batch of optimiser step ``after_step + 1`` (gradients half accumulated)."""
    fired = {"done": False}

    def hook(module, args):
        if not fired["done"] and trainer.state.step == after_step:
            fired["done"] = True
            os.kill(os.getpid(), signal.SIGTERM)

    trainer.model.register_forward_pre_hook(hook)


# --------------------------------------------------------------------- exact resume, every method

# 8 clips (16 pictures for MoCo) of batch 2 (4) -> 4 batches per epoch; accumulate 2 -> 2 steps per
# epoch. The interrupt lands in step 1's first micro-batch: the step completes, ckpt-1 is in the
# middle of epoch 0 and the resumed steps 2-3 cross into epoch 1.
_METHODS = {
    # DUL's paper schedule is StepLR per epoch: the drop at epoch 1 happens after the resume
    "dul": [
        "data.synthetic_videos=8",
        "schedule.name=multistep",
        "schedule.unit=epochs",
        "schedule.milestones=1",
        "schedule.gamma=0.5",
    ],
    "stt": [
        "data.synthetic_videos=8",
        "schedule.name=cosine",
        "schedule.warmup_steps=2",
        "schedule.warmup_start_factor=0.1",
    ],
    "liir": [
        "data.synthetic_videos=8",
        "schedule.name=multistep",
        "schedule.unit=steps",
        "schedule.milestones=2",
        "schedule.factors=0.75",
    ],
    "stt_spatial": ["data.synthetic_images=16", "schedule.name=cosine", "schedule.min_lr_ratio=0.1"],
}
# buffers whose content at the checkpoint the resumed run depends on
_BUFFERS = {"liir": "filled", "stt_spatial": "queue_ptr"}


@pytest.mark.parametrize("method", sorted(_METHODS))
def test_smoke_recipe_resume_mid_epoch_with_accumulation_and_schedule_is_exact(tmp_path, method):
    recipe = f"{RECIPES / method}.py:smoke"
    common = ["steps=3", "optim.accumulate=2", "checkpoint.every=0", *_METHODS[method]]
    train(load_recipe(recipe, common), tmp_path / "a", progress=False)

    trainer = Trainer(load_recipe(recipe, common), tmp_path / "b", progress=False)
    assert trainer.steps_per_epoch == 2
    _sigterm_during_accumulation(trainer, after_step=0)
    res = trainer.run()
    assert res.interrupted and res.step == 1 and res.last_checkpoint.name == "ckpt-00000001"
    state = json.loads((res.last_checkpoint / "state.json").read_text())
    assert state["epoch"] == 0 and state["loader"]["batch"] == 2  # mid-epoch: 2 of 4 batches used
    assert state["accumulate"] == 2 and state["steps_per_epoch"] == 2 and state["format"] == ck.FORMAT_VERSION
    if method in _BUFFERS:  # the feature bank / MoCo queue holds entries the next steps read
        sd = load_file(str(res.last_checkpoint / "model.safetensors"))
        keys = [k for k in sd if k.endswith(_BUFFERS[method])]
        assert keys and all(int(sd[k].sum()) > 0 for k in keys), keys

    with warnings.catch_warnings():
        _no_inexact_resume_warning()
        train(load_recipe(recipe, common), tmp_path / "b", resume=True, progress=False)
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert [r["step"] for r in a] == [1, 2, 3] and [r["epoch"] for r in a] == [0, 0, 1]
    assert len({r["lr"] for r in a}) > 1  # the schedule moved
    assert a == b  # loss, every term and lr, bit for bit
    assert _same_weights(tmp_path / "a", tmp_path / "b")


# ------------------------------------------------------------------------------ inexact resumes


def test_resume_with_another_batch_size_warns_once_and_continues(tmp_path):
    common = ["steps=6", "checkpoint.every=0", "data.num_videos=24"]
    train(load_recipe(TOY, common), tmp_path / "run", stop_at=2, progress=False)  # 2 of 12 batches of 2
    with pytest.warns(UserWarning) as record:
        res = train(load_recipe(TOY, common + ["data.batch_size=4"]), tmp_path / "run", resume=True, progress=False)
    msgs = [str(w.message) for w in record]
    assert len(msgs) == 1, msgs
    assert "cannot be exact" in msgs[0] and "batch_size (per rank) 2 -> 4" in msgs[0]
    assert "steps per epoch 12 -> 6" in msgs[0]
    assert res.step == 6 and not res.interrupted
    assert json.loads((tmp_path / "run" / "ckpt-00000006" / "state.json").read_text())["loader"] == {
        "epoch": 0,
        "batch": 5,
    }  # 4 clips seen = batch 1 of 6, + 4 steps
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7))
    # 4 clips seen = batch 1 of 4: steps 3-7 use batches 1..5 of epoch 0 (6 per epoch), then epoch 1
    assert [r["epoch"] for r in rows[2:]] == [0, 0, 0, 0]


def test_resume_with_another_world_size_warns_once_and_continues(tmp_path):
    """A checkpoint of 2 ranks resumed by one process (without torchrun: the state of a 2-rank
    checkpoint, as the slow torchrun test below writes it, is made from a 1-rank one)."""
    common = ["steps=5", "checkpoint.every=0", "data.num_videos=24"]
    run = tmp_path / "run"
    train(load_recipe(TOY, common + ["data.batch_size=1"]), run, stop_at=2, progress=False)
    path = run / "ckpt-00000002" / "state.json"
    state = json.loads(path.read_text())
    assert state["loader"] == {"epoch": 0, "batch": 2}
    state.update(world_size=2, rng=[state["rng"][0], state["rng"][0]], steps_per_epoch=12)  # 2 ranks x batch 1
    path.write_text(json.dumps(state))
    with pytest.warns(UserWarning) as record:
        res = train(load_recipe(TOY, common + ["data.batch_size=1"]), run, resume=True, progress=False)
    msgs = [str(w.message) for w in record]
    assert len(msgs) == 1, msgs
    assert "world_size 2 -> 1" in msgs[0] and "steps per epoch 12 -> 24" in msgs[0] and "re-seeded" in msgs[0]
    assert res.step == 5 and not res.interrupted
    # 2 batches x 1 clip x 2 ranks = 4 clips seen -> batch 4 of 24 on one process, + 3 steps
    assert json.loads((run / "ckpt-00000005" / "state.json").read_text())["loader"] == {"epoch": 0, "batch": 7}


def test_format_1_checkpoint_still_resumes_exactly(tmp_path):
    """A checkpoint written before TrainState (format 1: no layout, elapsed or method keys)."""
    common = ["steps=5", "checkpoint.every=0"]
    train(load_recipe(TOY, common), tmp_path / "ref", progress=False)
    run = tmp_path / "run"
    train(load_recipe(TOY, common), run, stop_at=3, progress=False)
    path = run / "ckpt-00000003" / "state.json"
    state = json.loads(path.read_text())
    for key in ("batch_size", "accumulate", "steps_per_epoch", "elapsed", "method"):
        del state[key]
    state["format"] = 1
    path.write_text(json.dumps(state))
    with warnings.catch_warnings():
        _no_inexact_resume_warning()
        train(load_recipe(TOY, common), run, resume=True, progress=False)
    assert _rows(run) == _rows(tmp_path / "ref") and _same_weights(run, tmp_path / "ref")
    times = [r["time"] for r in read_metrics(run / "metrics.jsonl")]
    assert times == sorted(times)  # the wall time continues from the last logged step


def test_train_state_roundtrip():
    st = ck.TrainState(
        step=4,
        epoch=1,
        loader={"epoch": 1, "batch": 2},
        rng=[{"a": 1}],
        world_size=2,
        batch_size=3,
        accumulate=2,
        steps_per_epoch=5,
        schedule={"name": "cosine", "factor": 0.5},
        elapsed=1.5,
        method="dul",
        rows=[{"step": 1}],
    )
    d = json.loads(json.dumps(st.to_dict()))
    assert "rows" not in d
    back = ck.TrainState.from_dict({**d, "format": 2, "files": {}, "optimizer": {}})
    assert back == ck.TrainState(**{**st.__dict__, "rows": []})
    old = ck.TrainState.from_dict({"step": 3, "epoch": 0, "loader": None, "rng": [], "world_size": 1})
    assert old.batch_size is None and old.elapsed is None and old.method is None


# ---------------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_torchrun_resume_mid_epoch_is_exact_and_another_world_size_warns_once(tmp_path):
    """2 gloo processes, BatchNorm and a per-rank random frame pair (so every rank's RNG state
    matters), accumulation 2: --steps 5 equals --steps 2 + --resume to 5 bit for bit. Resuming the
    2-process checkpoint in one process warns once and continues."""
    sets = ["--set", "optim.accumulate=2", "--set", "data.num_videos=24", "--set", "checkpoint.every=0"]
    torchrun_train([TOY, "--steps", "5", "--out", str(tmp_path / "full"), *sets], tmp_path)
    torchrun_train([TOY, "--steps", "2", "--out", str(tmp_path / "part"), *sets], tmp_path)
    state = json.loads((tmp_path / "part" / "ckpt-00000002" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["rng"][0] != state["rng"][1]
    assert state["loader"] == {"epoch": 0, "batch": 4} and state["steps_per_epoch"] == 3  # mid-epoch
    shutil.copytree(tmp_path / "part", tmp_path / "single")
    torchrun_train([TOY, "--steps", "5", "--resume", str(tmp_path / "part")], tmp_path)
    a, b = _rows(tmp_path / "full"), _rows(tmp_path / "part")
    assert [r["step"] for r in a] == [1, 2, 3, 4, 5] and [r["epoch"] for r in a] == [0, 0, 0, 1, 1]
    assert a == b
    assert _same_weights(tmp_path / "full", tmp_path / "part")

    cfg = load_recipe(TOY, ["optim.accumulate=2", "data.num_videos=24", "checkpoint.every=0"])
    with pytest.warns(UserWarning) as record:
        res = train(cfg, tmp_path / "single", resume=True, stop_at=5, progress=False)
    msgs = [str(w.message) for w in record]
    assert len(msgs) == 1, msgs
    assert "world_size 2 -> 1" in msgs[0] and "re-seeded" in msgs[0]
    assert res.step == 5
    # 4 batches x 2 clips x 2 ranks = 16 clips seen -> batch 8 of 12 on one process
    assert [r["epoch"] for r in read_metrics(tmp_path / "single" / "metrics.jsonl")] == [0, 0, 0, 0, 1]


# -------------------------------------------------------------------------- bad inputs (CLI)


def _error(args: list[str]) -> str:
    """Run ``tritoncorr train ARGS``; it must fail with status 2 and one ``error:`` line (no traceback)."""
    r = run_cli("train", *args, exit_code=2)
    assert "Traceback" not in r.output and not r.output.lstrip().startswith("File ")
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.output
    after = r.output.split(errors[0], 1)[1].strip().splitlines()
    assert len(after) <= 1 and all(not line.startswith(" ") for line in after), r.output  # at most a hint line
    return errors[0]


def _write_video(path: Path, frames: int = 12, size: tuple[int, int] = (72, 96), faststart: bool = False) -> Path:
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = size[1], size[0], "yuv420p"
        for _ in range(frames):
            a = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            for p in st.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path


def test_recipe_errors(tmp_path):
    line = _error([str(tmp_path / "nope.py")])
    assert "recipe file not found" in line and "nope.py" in line
    syn = tmp_path / "syn.py"
    syn.write_text("from tritoncorr.engine.config import RunConfig\n\ndef default(:\n    pass\n")
    line = _error([str(syn)])
    assert f"{syn}:3: syntax error" in line
    imp = tmp_path / "imp.py"
    imp.write_text("import os\nimport no_such_module_here\n")
    line = _error([str(imp)])
    assert f"{imp}:2" in line and "No module named 'no_such_module_here'" in line
    raising = tmp_path / "raising.py"
    raising.write_text("def default():\n    return {}['x']\n")
    line = _error([str(raising)])
    assert f"{raising}:2: default() failed: KeyError" in line
    line = _error([TOY + ":nope"])
    assert "has no config named 'nope'" in line and "toy.py" in line and "available: ddp, default, synthetic" in line


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--set", "optim.lrr=1"], ["unknown field 'optim.lrr'", "did you mean 'optim.lr'"]),
        (["--set", "methd.channels=3"], ["unknown field 'methd'", "did you mean 'method'"]),
        (["--set", "optim.lr=fast"], ["cannot parse optim.lr='fast' as float"]),
        (["--set", "steps=1.5"], ["cannot parse steps='1.5' as int"]),
        (["--set", "optim.name=rmsprop"], ["optim.name='rmsprop' is not one of ['adam', 'adamw', 'sgd']"]),
        (["--set", "optim.lr"], ["must look like section.field=value"]),
        (["--set", "steps=0"], ["invalid run config: steps must be >= 1, got 0"]),
        (
            ["--set", "optim.lr=-1", "--set", "optim.accumulate=0"],
            ["invalid run config: optim.lr must be > 0, got -1.0; optim.accumulate must be >= 1, got 0"],
        ),
        (["--steps", "0"], ["--steps must be >= 1, got 0"]),
        (["--resume-from", "ckpt-2"], ["--resume-from needs --resume"]),
    ],
)
def test_option_errors(tmp_path, args, expected):
    line = _error([TOY, "--out", str(tmp_path / "run"), *args])
    for text in expected:
        assert text in line, line
    assert not (tmp_path / "run").exists()


def test_data_root_errors(tmp_path):
    """Empty folder, no decodable video, a corrupt mp4, a truncated one, too few videos for a batch."""
    smoke = f"{RECIPES / 'dul.py'}:smoke"

    def video_run(root: Path, *extra: str) -> str:
        return _error(
            [
                smoke,
                "--set",
                "data.source=video",
                "--set",
                f"data.root={root}",
                "--set",
                "data.cache_dir=",
                "--out",
                str(tmp_path / "run"),
                *extra,
            ]
        )

    (tmp_path / "empty").mkdir()
    line = video_run(tmp_path / "empty")
    assert "no readable videos found under" in line and str(tmp_path / "empty") in line
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("not a video")
    assert str(tmp_path / "text") in video_run(tmp_path / "text")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "a.mp4").write_bytes(os.urandom(4096))
    assert str(tmp_path / "corrupt") in video_run(tmp_path / "corrupt")
    (tmp_path / "cut").mkdir()
    video = _write_video(tmp_path / "cut" / "v.mp4")
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])  # index (moov) lost
    assert str(tmp_path / "cut") in video_run(tmp_path / "cut")
    (tmp_path / "one").mkdir()
    _write_video(tmp_path / "one" / "v.mp4")
    line = video_run(tmp_path / "one")  # smoke's batch is 2
    assert "1 usable videos" in line and "no full batch of 2" in line and "data.batch_size=2" in line
    line = _error([smoke, "--set", "data.batch_size=64", "--out", str(tmp_path / "run")])
    assert "4 usable videos under 'synthetic' give no full batch of 64" in line
    # a missing root: the path it looked at, and a hint line naming the --set key
    options = ["--set", "data.source=video", "--set", f"data.root={tmp_path / 'absent'}", "--out", tmp_path / "run"]
    r = run_cli("train", smoke, *options, exit_code=2)
    assert str(tmp_path / "absent") in r.output and "--set data.root=PATH" in r.output
    assert not (tmp_path / "run" / "ckpt-00000001").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_videos_that_fail_only_when_read_are_one_error_line(tmp_path, workers):
    """Truncated files whose index is intact (faststart): they probe fine, decoding fails at the first
    batch, in the main process or in a DataLoader worker (whose traceback must not leak)."""
    root = tmp_path / "cut"
    root.mkdir()
    for name in ("a.mp4", "b.mp4"):
        video = _write_video(root / name, frames=40, faststart=True)
        video.write_bytes(video.read_bytes()[: video.stat().st_size // 4])
    line = _error(
        [
            f"{RECIPES / 'dul.py'}:smoke",
            "--set",
            "data.source=video",
            "--set",
            f"data.root={root}",
            "--set",
            f"data.num_workers={workers}",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert f"consecutive unreadable videos under '{root}'" in line and str(root / "a.mp4") in line
    assert "Original Traceback" not in line and "DataLoader worker" not in line


def test_cli_output_of_a_corrupt_video_is_a_warning_line_and_an_error_line(tmp_path):
    """In a real process (pytest records warnings instead of printing them): the skipped file on one
    ``warning:`` line, the folder on one ``error:`` line, then the hint; nothing else."""
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "a.mp4").write_bytes(os.urandom(4096))
    cmd = [
        sys.executable,
        "-m",
        "tritoncorr.cli",
        "train",
        f"{RECIPES / 'dul.py'}:smoke",
        "--set",
        "data.source=video",
        "--set",
        f"data.root={tmp_path / 'corrupt'}",
        "--out",
        str(tmp_path / "run"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="80"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3, proc.stderr
    assert lines[0].startswith(f"warning: skipping {tmp_path / 'corrupt' / 'a.mp4'}: cannot probe video")
    assert lines[1] == f"error: no readable videos found under '{tmp_path / 'corrupt'}' (source='video', 1 skipped)"
    assert lines[2].startswith("Point the run at your data with --set data.root=PATH")


def test_run_folder_errors(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = _error([TOY, "--out", str(afile)])
    assert f"--out {afile} is an existing file, not a folder" in line
    line = _error([TOY, "--resume", str(afile)])
    assert f"--resume {afile}: is a file" in line
    line = _error([TOY, "--resume", str(tmp_path / "absent")])
    assert "does not exist" in line
    line = _error([TOY, "--resume", str(tmp_path)])
    assert f"--resume {tmp_path}: no config.json there" in line
    # a run folder whose checkpoints are gone
    run = tmp_path / "run"
    run_cli("train", TOY, "--steps", "1", "--out", run)
    shutil.rmtree(run / "ckpt-00000001")
    line = _error([TOY, "--resume", str(run)])
    assert f"--resume {run}: the folder holds no complete checkpoint" in line
    (run / "config.json").write_text("{ not json")
    assert "config.json is not valid JSON" in _error([TOY, "--resume", str(run)])
    # a fresh run into a folder that already has checkpoints
    run2 = tmp_path / "run2"
    run_cli("train", TOY, "--steps", "1", "--out", run2)
    assert f"{run2} already holds checkpoints; use --resume" in _error([TOY, "--steps", "1", "--out", str(run2)])


@pytest.fixture(scope="module")
def dul_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("dul") / "run"
    run_cli("train", f"{RECIPES / 'dul.py'}:smoke", "--steps", "1", "--out", run)
    return run


def test_checkpoint_of_another_method_or_architecture(tmp_path, dul_run):
    toy = tmp_path / "toy"
    run_cli("train", TOY, "--steps", "1", "--out", toy)
    # --resume with another method's recipe
    line = _error([TOY, "--resume", str(dul_run)])
    assert "the run trains DULConfig" in line and "builds ToyMethodConfig" in line and "own recipe" in line
    # a DUL checkpoint dropped into the toy run's folder: its state names the method
    shutil.copytree(dul_run / "ckpt-00000001", toy / "ckpt-00000005")
    line = _error([TOY, "--resume", str(toy)])
    assert "ckpt-00000005 was written by method 'dul', this run trains 'ToyMethod'" in line
    # ... and a format-1 state without the method: the weights do not fit (named, with key examples)
    state_path = toy / "ckpt-00000005" / "state.json"
    state = json.loads(state_path.read_text())
    del state["method"]
    state_path.write_text(json.dumps(state))
    line = _error([TOY, "--resume", str(toy)])
    assert f"checkpoint {toy / 'ckpt-00000005' / 'model.safetensors'} does not fit this run's model" in line
    assert "it holds a 'dul' model, this run trains 'ToyMethod'" in line and "keys missing (e.g." in line
    shutil.rmtree(toy / "ckpt-00000005")
    # the same method, another architecture (--set on resume changes the model)
    line = _error([TOY, "--resume", str(toy), "--steps", "2", "--set", "method.channels=4"])
    assert "does not fit this run's model: another architecture than this run's ToyMethod" in line
    assert "tensors of another shape (e.g. backbone.0.weight (8, 3, 3, 3) vs (4, 3, 3, 3)" in line
    # init_from with another method's weights: nothing fits
    line = _error([TOY, "--out", str(tmp_path / "new"), "--set", f"init_from={dul_run / 'model.safetensors'}"])
    assert f"init_from: weights {dul_run / 'model.safetensors'} do not fit ToyMethod" in line
    line = _error([TOY, "--out", str(tmp_path / "new2"), "--set", f"init_from={tmp_path / 'absent.safetensors'}"])
    assert "init_from: checkpoint" in line and "does not exist" in line


def test_a_diverging_run_is_one_error_line(tmp_path):
    r = run_cli("train", TOY, "--set", "method.temperature=0", "--out", tmp_path / "run", exit_code=1)
    assert "Traceback" not in r.output and not isinstance(r.exception, FloatingPointError)
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "non-finite loss at step 1: loss=nan" in errors[0] and "optim.lr" in errors[0]


def test_checkpoint_errors_name_the_file(tmp_path):
    run = tmp_path / "run"
    run_cli("train", TOY, "--steps", "2", "--out", run)
    (run / "ckpt-00000002" / "state.json").write_text('{"step": 2, "fil')
    line = _error([TOY, "--resume", str(run), "--steps", "4"])
    assert f"{run / 'ckpt-00000002' / 'state.json'} is not valid JSON" in line
    assert "no older checkpoint is left" in line
    line = _error([TOY, "--resume", str(run), "--resume-from", "ckpt-7"])
    assert "no such checkpoint" in line and "ckpt-00000002" in line

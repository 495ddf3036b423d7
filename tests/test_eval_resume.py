"""Resumable ``tritoncorr eval davis|vip|jhmdb|ytvos --out DIR`` (issue 25; :mod:`tritoncorr.evals.resume`).

An evaluation interrupted after N sequences (Ctrl-C in the middle of the next one, or a kill between
moving a sequence's outputs into place and recording it) and rerun with the same command propagates
only the unfinished sequences and writes the same CSVs and predictions as an uninterrupted run.
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest
from cli_runs import run_eval
from eval_layouts import make_jhmdb, make_vip, make_ytvos
from tritoncorr.evals import resume
from tritoncorr.evals.synthetic import make_synthetic_davis

from tritoncorr.methods import inference


class Calls:
    """Counts feature calls; raises KeyboardInterrupt at call ``interrupt_at`` (1-based) when set."""

    def __init__(self, interrupt_at: int | None = None):
        self.n, self.interrupt_at = 0, interrupt_at


@pytest.fixture
def calls(monkeypatch):
    state = Calls()
    original = inference.load_feature_model

    def load(*args, **kwargs):
        fm = original(*args, **kwargs)
        inner = fm.features

        def features(x):
            state.n += 1
            if state.interrupt_at is not None and state.n == state.interrupt_at:
                raise KeyboardInterrupt
            return inner(x)

        fm.features = features
        return fm

    monkeypatch.setattr(inference, "load_feature_model", load)
    return state


def _csvs(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("*.csv"))}


def _same_tree(a: Path, b: Path, pattern: str) -> None:
    fa = sorted(p.relative_to(a) for p in a.rglob(pattern) if ".done" not in p.parts)
    fb = sorted(p.relative_to(b) for p in b.rglob(pattern) if ".done" not in p.parts)
    assert fa == fb and fa
    assert all(filecmp.cmp(a / p, b / p, shallow=False) for p in fa)


TASKS = {
    # task: (make the data, CLI options after --root, frames per sequence, number of sequences)
    "davis": (
        lambda root: make_synthetic_davis(root, num_sequences=4, num_frames=4, height=32, width=48, seed=3),
        [],
        4,
        4,
    ),
    "vip": (
        lambda root: make_vip(root, videos=(("v1", 3), ("v2", 3), ("v3", 3), ("v4", 3))),
        ["--size", "0"],
        3,
        4,
    ),
}


def _run(task: str, root: Path, out: Path, *extra: str, exit_code: int = 0):
    """``eval <task> --root <root>`` into ``out`` on the CPU with context 2 (and ``extra``), as ``run_eval``."""
    options = [*TASKS[task][1], "--out", out, "--device", "cpu", "--context", "2", *extra]
    return run_eval(task, root, *options, exit_code=exit_code)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_interrupted_evaluation_resumes_to_the_same_csvs(tmp_path, calls, task):
    make, _, frames, nseq = TASKS[task]
    root = make(tmp_path / "data")
    whole = tmp_path / "whole"
    _run(task, root, whole)
    assert calls.n == frames * nseq

    # Ctrl-C in the middle of the third sequence
    out = tmp_path / "resumed"
    calls.n, calls.interrupt_at = 0, 2 * frames + 2
    r = _run(task, root, out, exit_code=130)
    assert f"interrupted: 2 of {nseq} finished in {out} are kept" in r.output
    assert len(list((out / ".done").glob("*.json"))) == 2
    assert not list(out.glob("*.csv")) and not list(out.glob(".staging-*"))  # no table, no half sequence

    # rerun: only the two unfinished sequences are propagated
    calls.n, calls.interrupt_at = 0, None
    r = _run(task, root, out)
    assert f"resuming {out}: 2 of {nseq} finished, skipped" in r.output
    assert calls.n == 2 * frames
    assert _csvs(out) == _csvs(whole) and _csvs(out)
    _same_tree(out, whole, "*.png")
    assert not list(out.glob(".staging-*"))

    # a rerun of a finished folder propagates nothing and writes the same tables
    calls.n = 0
    _run(task, root, out)
    assert calls.n == 0 and _csvs(out) == _csvs(whole)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_kill_between_moving_the_outputs_and_recording_them_redoes_that_sequence(tmp_path, calls, monkeypatch, task):
    make, _, frames, nseq = TASKS[task]
    root = make(tmp_path / "data")
    whole = tmp_path / "whole"
    _run(task, root, whole)
    out = tmp_path / "killed"
    written = []
    original = resume._atomic_write_json

    def dies_on_the_third_record(path, obj):
        if path.parent.name == ".done":
            written.append(path)
            if len(written) == 3:
                raise KeyboardInterrupt  # the process dies after the outputs moved, before the record
        original(path, obj)

    monkeypatch.setattr(resume, "_atomic_write_json", dies_on_the_third_record)
    _run(task, root, out, exit_code=130)
    monkeypatch.setattr(resume, "_atomic_write_json", original)
    assert len(list((out / ".done").glob("*.json"))) == 2
    calls.n = 0
    _run(task, root, out)
    assert calls.n == (nseq - 2) * frames
    assert _csvs(out) == _csvs(whole)
    _same_tree(out, whole, "*.png")


def test_other_settings_or_another_checkpoint_are_refused_unless_overwrite(tmp_path, calls):
    root = TASKS["davis"][0](tmp_path / "data")
    out = tmp_path / "o"
    _run("davis", root, out)
    r = _run("davis", root, out, "--context", "3", exit_code=2)
    assert "other settings or another checkpoint" in r.output and "context: 2 -> 3" in r.output
    r = _run("davis", root, out, "--seed", "1", exit_code=2)
    assert "checkpoint: 'random-init seed 0' -> 'random-init seed 1'" in r.output
    calls.n = 0
    _run("davis", root, out, "--context", "3", "--overwrite")
    assert calls.n == 16  # everything again
    state = json.loads((out / resume.STATE_FILE).read_text())
    assert state["settings"]["propagation"]["context"] == 3 and state["task"] == "davis"
    (out / resume.STATE_FILE).write_text("{broken")
    r = _run("davis", root, out, "--context", "3", exit_code=2)
    assert "eval-state.json is damaged" in r.output


def test_a_checkpoint_is_recorded_by_its_hash(tmp_path):
    from tritoncorr.models import dul_backbone
    from tritoncorr.models.loading import save_backbone_weights

    root = TASKS["davis"][0](tmp_path / "data")
    a = save_backbone_weights(dul_backbone(), tmp_path / "a.safetensors")
    out = tmp_path / "o"
    args = ["--out", out, "--device", "cpu", "--checkpoint", a, "--context", "2"]
    run_eval("davis", root, *args)
    state = json.loads((out / resume.STATE_FILE).read_text())
    assert state["checkpoint"] == resume.file_sha256(a) and state["checkpoint"].startswith("sha256:")
    a.write_bytes(a.read_bytes()[:-1] + b"\x00")  # another file under the same name
    r = run_eval("davis", root, *args, exit_code=2)
    assert "checkpoint: 'sha256:" in r.output, r.output


@pytest.mark.parametrize("task", ["jhmdb", "ytvos"])
def test_jhmdb_and_ytvos_resume_too(tmp_path, calls, task):
    if task == "jhmdb":
        root = make_jhmdb(tmp_path / "data", clips=(("catch", "a", 3), ("catch", "b", 3), ("run", "c", 3)))
        options = ["--size", "0"]
        result = "pck.csv"
    else:
        root = make_ytvos(tmp_path / "data")
        options = ["--size", "0", "--no-zip"]
        result = None
    base = [*options, "--device", "cpu", "--context", "2"]
    run_eval(task, root, *base, "--out", tmp_path / "whole")
    total = calls.n
    out = tmp_path / "resumed"
    calls.n, calls.interrupt_at = 0, 4 if task == "jhmdb" else 8  # in the second clip / video
    run_eval(task, root, *base, "--out", out, exit_code=130)
    done = len(list((out / ".done").glob("*.json")))
    assert done >= 1
    calls.n, calls.interrupt_at = 0, None
    run_eval(task, root, *base, "--out", out)
    assert 0 < calls.n < total
    if result:
        assert (out / result).read_text() == (tmp_path / "whole" / result).read_text()
    else:
        _same_tree(out / "Annotations", tmp_path / "whole" / "Annotations", "*.png")

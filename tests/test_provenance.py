"""provenance.json in run and evaluation folders; ``eval compare`` checks the recorded settings and the sample size."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from cli_runs import run_cli
from tritoncorr.evals.synthetic import make_synthetic_davis

from tritoncorr.compare import check_settings, paired_comparison
from tritoncorr.provenance import file_sha256, git_state, read_provenance, settings_differences

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "tests" / "recipes" / "toy.py")

RECORD_FIELDS = {"code", "versions", "device", "host", "platform", "cwd", "time_utc", "command", "checkpoint"}


def _check_record(rec: dict) -> None:
    assert RECORD_FIELDS <= set(rec), set(rec)
    assert rec["versions"]["torch"] == torch.__version__ and "triton" in rec["versions"] and "cuda" in rec["versions"]
    assert rec["device"]["name"] and rec["host"]
    git = rec["code"]["git"]
    if git is not None:  # a source checkout (CI and development); None for an installed wheel
        assert len(git["commit"]) == 40 and isinstance(git["dirty"], bool)


def test_eval_folder_records_provenance_and_settings(tmp_path, monkeypatch):
    root = make_synthetic_davis(tmp_path / "DAVIS", num_sequences=1, num_frames=4, height=32, width=48, seed=1)
    from tritoncorr.models import dul_backbone
    from tritoncorr.models.loading import save_backbone_weights

    ckpt = tmp_path / "w.safetensors"
    torch.manual_seed(0)
    save_backbone_weights(dul_backbone(), ckpt)
    out = tmp_path / "ev"
    args = [
        "eval",
        "davis",
        "--root",
        str(root),
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--topk",
        "5",
        "--device",
        "cpu",
    ]
    monkeypatch.setattr("sys.argv", ["/somewhere/bin/tritoncorr", *args])  # as the console script sees it
    run_cli(*args)
    rec = read_provenance(out)
    _check_record(rec)
    assert rec["checkpoint"] == {"path": str(ckpt.resolve()), "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    assert rec["command"].startswith("tritoncorr eval davis --root ") and "--topk 5" in rec["command"]
    ev = rec["eval"]
    assert ev["benchmark"] == "davis" and ev["split"] == "val" and ev["precision"] == "fp32"
    assert ev["propagation"]["topk"] == 5 and ev["preset"] == "dul"


def test_run_folder_records_each_session(tmp_path):
    from tritoncorr.engine import load_recipe
    from tritoncorr.engine.loop import train

    run = tmp_path / "run"
    train(load_recipe(TOY, ["steps=4"]), run, progress=False, stop_at=2)
    train(load_recipe(TOY, ["steps=4"]), run, progress=False, resume=True)
    sessions = json.loads((run / "provenance.json").read_text())["sessions"]
    assert [s["start_step"] for s in sessions] == [0, 2]
    for s in sessions:
        _check_record(s)
    assert sessions[0]["checkpoint"]["sha256"] == file_sha256(run / "init.safetensors")
    assert sessions[1]["checkpoint"]["path"].endswith("ckpt-00000002/model.safetensors")


def test_git_state_of_this_checkout():
    state = git_state()
    if state is None:
        pytest.skip("tritoncorr is not imported from a git checkout")
    assert Path(state["root"], "tritoncorr", "__init__.py").is_file()
    assert state["dirty"] == (state["changed_files"] > 0)


def _eval_folder(path: Path, jf: list[float], **overrides) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    lines = ["Sequence,J-Mean,F-Mean"] + [f"s{i}_1,{v:.3f},{v:.3f}" for i, v in enumerate(jf)]
    (path / "per-sequence_results-val.csv").write_text("\n".join(lines) + "\n")
    ev = {
        "benchmark": "davis",
        "split": "val",
        "resolution": "480p",
        "input_size": None,
        "precision": "fp32",
        "propagation": {"topk": 10, "temperature": 0.05, "radius": 12},
    }
    for k, v in overrides.items():
        if k in ev["propagation"]:
            ev["propagation"][k] = v
        else:
            ev[k] = v
    (path / "provenance.json").write_text(json.dumps({"eval": ev}))
    return path


def test_compare_refuses_different_settings_unless_told(tmp_path):
    a = _eval_folder(tmp_path / "a", [0.5] * 6)
    b = _eval_folder(tmp_path / "b", [0.6] * 6, topk=5, precision="bf16")
    diffs, notes = check_settings([a, b])
    assert not notes and len(diffs) == 2
    assert any("propagation.topk: 10 -> 5" in d for d in diffs) and any("precision" in d for d in diffs)
    r = run_cli("eval", "compare", a, b, "--bootstrap", "200", exit_code=2)
    assert "settings differ" in r.output and "propagation.topk: 10 -> 5" in r.output
    assert "--allow-different-settings" in r.output
    r = run_cli("eval", "compare", a, b, "--bootstrap", "200", "--allow-different-settings")
    assert "propagation.topk" in r.output and "B better than A" in r.output
    # the same settings compare silently; a folder without provenance is compared with a note
    c = _eval_folder(tmp_path / "c", [0.55] * 6)
    assert check_settings([a, c]) == ([], [])
    (c / "provenance.json").unlink()
    diffs, notes = check_settings([a, c])
    assert not diffs and "cannot be checked" in notes[0]


def test_no_verdict_below_the_minimum_number_of_sequences(tmp_path):
    r = paired_comparison({"a": 0.5}, {"a": 0.9}, n_boot=100)
    assert r.verdict == "no verdict" and not r.enough
    a = _eval_folder(tmp_path / "a", [0.5, 0.4, 0.3])
    b = _eval_folder(tmp_path / "b", [0.9, 0.8, 0.7])
    res = run_cli("eval", "compare", a, b, "--bootstrap", "200")
    assert "no verdict" in res.output and "only 3 paired sequence(s), at least 5" in res.output
    assert "better than A" not in res.output and "nan" not in res.output.lower()
    res = run_cli("eval", "compare", a, b, "--bootstrap", "200", "--min-sequences", "3")
    assert "B better than A" in res.output


def test_settings_differences_ignores_records_without_settings():
    assert settings_differences(None, {"eval": {"split": "val"}}) == []
    assert settings_differences({"eval": {"split": "val"}}, {"eval": {"split": "test"}}) == ["split: 'val' -> 'test'"]

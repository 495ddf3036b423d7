"""The command line: version, help, and that every command exists and explains itself."""

from __future__ import annotations

import subprocess
import sys
import time

from cli_runs import run_cli

from tritoncorr import __version__


def test_version():
    result = run_cli("--version")
    assert result.output.strip() == f"tritoncorr {__version__}"


def test_help_lists_commands():
    result = run_cli("--help")
    for command in ("train", "eval", "bench"):
        assert command in result.output


def test_subcommand_help():
    for args in (["eval", "davis", "--help"], ["train", "--help"], ["bench", "--help"]):
        result = run_cli(*args)
        assert "Usage" in result.output


def test_help_is_instant_and_imports_no_torch():
    code = "import sys; from tritoncorr.cli import app; print('torch' in sys.modules)"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", "importing the CLI must not import torch (keeps --help instant)"
    assert time.perf_counter() - t0 < 10


def test_bench_rejects_unknown_kernel():
    result = run_cli("bench", "--kernel", "nope", "--device", "cpu", exit_code=2)
    assert "unknown kernel" in result.output


def test_train_without_the_dataset_is_a_one_line_error(tmp_path, monkeypatch):
    """The paper recipe before the data is set up: the path it looked at and what to do, no traceback."""
    from pathlib import Path

    monkeypatch.setenv("TRITONCORR_DATA", str(tmp_path / "data-home"))
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "dul.py"
    r = run_cli("train", recipe, "--out", tmp_path / "run", exit_code=2)
    assert "Traceback" not in r.output
    assert str(tmp_path / "data-home" / "YouTube-VOS" / "train" / "JPEGImages") in r.output
    assert "--set data.root=PATH" in r.output and "dul.py:cpu" in r.output

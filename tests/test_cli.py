"""The command line: version, help, and that every command exists and explains itself."""

from __future__ import annotations

import subprocess
import sys
import time

from typer.testing import CliRunner

from tritoncorr import __version__
from tritoncorr.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"tritoncorr {__version__}"


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "eval", "bench"):
        assert command in result.output


def test_subcommand_help():
    for args in (["eval", "davis", "--help"], ["train", "--help"], ["bench", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_help_is_instant_and_imports_no_torch():
    code = "import sys; from tritoncorr.cli import app; print('torch' in sys.modules)"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", "importing the CLI must not import torch (keeps --help instant)"
    assert time.perf_counter() - t0 < 10


def test_bench_rejects_unknown_kernel():
    result = runner.invoke(app, ["bench", "--kernel", "nope", "--device", "cpu"])
    assert result.exit_code == 2
    assert "unknown kernel" in result.output


def test_train_without_the_dataset_is_a_one_line_error(tmp_path, monkeypatch):
    """The paper recipe before the data is set up: the path it looked at and what to do, no traceback."""
    from pathlib import Path

    monkeypatch.setenv("TRITONCORR_DATA", str(tmp_path / "data-home"))
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "dul.py"
    r = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert str(tmp_path / "data-home" / "YouTube-VOS" / "train" / "JPEGImages") in r.output
    assert "--set data.root=PATH" in r.output and "dul.py:cpu" in r.output

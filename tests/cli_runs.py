"""Running the command line in tests: ``tritoncorr ...`` in process (typer's CliRunner) and ``tritoncorr train``
under torchrun (two gloo processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

TESTS = Path(__file__).resolve().parent

runner = CliRunner()


def run_cli(*args, exit_code: int = 0, env: dict[str, str] | None = None):
    """``tritoncorr <args>`` (each ``str()``-ed) in process; asserts the exit code (the message is the output and
    the exception the command raised, if it raised one rather than exiting) and returns the result."""
    from tritoncorr.cli import app  # here: importing this module for torchrun_train leaves the CLI unloaded

    r = runner.invoke(app, [str(a) for a in args], env=env)
    raised = "" if r.exception is None or isinstance(r.exception, SystemExit) else f"\n{r.exception!r}"
    assert r.exit_code == exit_code, r.output + raised
    return r


def run_eval(benchmark: str, root, *options, exit_code: int = 0):
    """``tritoncorr eval <benchmark> --root <root> <options>``, as ``run_cli``."""
    return run_cli("eval", benchmark, "--root", root, *options, exit_code=exit_code)


def check_eval_progress(progress, benchmark: str, root, out, stages: list[str], *options) -> None:
    """``eval <benchmark>`` on the CPU with context 2 (and ``options``) runs to the end under one progress display
    (``progress`` is the ``progress_stages`` fixture): its stage names are ``stages``, in order, and the steps
    advanced are the steps announced (the ETA counts them all)."""
    run_eval(benchmark, root, "--out", out, "--device", "cpu", "--context", "2", *options)
    assert progress.stages == stages
    assert progress.done == progress.total > 0


def torchrun_train(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m tritoncorr.cli train <args>`` (gloo, one OpenMP thread per
    process, tests/ importable for the toy recipes); asserts that it succeeds and returns the finished process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "tritoncorr.cli",
        "train",
        *args,
    ]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc

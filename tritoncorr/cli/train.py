"""``tritoncorr train``: resolve the run config (:func:`tritoncorr.engine.cli.resolve_config`) and train
(:func:`tritoncorr.engine.loop.train`).

Bad input (a recipe that is missing or does not import, an unknown ``:NAME`` or ``--set`` key, a
value of the wrong type, missing or unusable data, a run folder that is a file, ``--resume`` on a
folder without checkpoints, a damaged checkpoint or one of another method) ends with one
``error: ...`` line naming the problem and the file or option, exit status 2; warnings print as
``warning: ...`` lines. ``TRITONCORR_DEBUG=1`` re-raises instead, with the traceback.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import typer

from tritoncorr.cli.common import fail
from tritoncorr.engine.cli import print_config, resolve_config
from tritoncorr.engine.config import ConfigError


def _data_hint(recipe: str) -> str:
    """What to do about missing training data: set data.root, or use the recipe's CPU config if it has one."""
    from tritoncorr.engine.recipe import load_recipe_module, split_recipe_ref

    hint = "Point the run at your data with --set data.root=PATH"
    path, name = split_recipe_ref(recipe)
    try:
        has_cpu = name != "cpu" and callable(getattr(load_recipe_module(path), "cpu", None))
    except Exception:  # the recipe already loaded once; this is only a hint
        has_cpu = False
    if has_cpu:
        hint += f", or try the CPU-scale config: tritoncorr train {path}:cpu --set data.root=PATH"
    return hint + "."


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line. An error re-raised from a DataLoader worker carries the
    worker's traceback in its message: keep the original message (its last line)."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1].strip()
        name, sep, rest = last.partition(": ")
        text = rest if sep and name.replace(".", "").isidentifier() else last
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


@contextlib.contextmanager
def _one_line_warnings():
    """Print warnings as ``warning: message`` (no source line); recording (pytest.warns) still works."""
    old = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None):
        return f"warning: {message}\n"

    warnings.formatwarning = fmt
    try:
        yield
    finally:
        warnings.formatwarning = old


def train_cli(
    *,
    recipe: str,
    overrides: list[str],
    steps: int | None,
    seed: int | None,
    out: Path | None,
    resume: Path | None,
    dry_run: bool,
    resume_from: str | None = None,
) -> None:
    """Entry point of ``tritoncorr train`` (see the module docstring)."""
    from tritoncorr.engine.distributed import env_world

    rank = env_world()[0]
    debug = bool(os.environ.get("TRITONCORR_DEBUG"))
    if resume_from is not None and resume is None:
        fail("--resume-from needs --resume RUN_FOLDER")
    with _one_line_warnings():
        try:
            cfg, run_dir, stop_at = resolve_config(
                recipe=recipe, overrides=list(overrides or []), steps=steps, seed=seed, out=out, resume=resume
            )
        except (ConfigError, FileNotFoundError) as e:
            if debug:
                raise
            fail(_one_line(e))
        if dry_run:
            if rank == 0:
                print_config(cfg, run_dir, stop_at, recipe=recipe)
            return

        from tritoncorr.data.sources import DataSourceError
        from tritoncorr.engine.checkpoint import (
            CheckpointCorruptError,
            CheckpointMismatchError,
        )
        from tritoncorr.engine.loop import train

        try:
            result = train(
                cfg, run_dir, resume=resume is not None, stop_at=stop_at, recipe_ref=recipe, resume_from=resume_from
            )
        except (ConfigError, CheckpointCorruptError, CheckpointMismatchError) as e:
            if debug:
                raise
            fail(_one_line(e))
        except DataSourceError as e:
            if debug:
                raise
            fail(_one_line(e) + "\n" + _data_hint(recipe))
        except FloatingPointError as e:  # the run diverged: the checkpoints written so far are kept
            if debug:
                raise
            fail(
                _one_line(e) + " (lower optim.lr, check the method's settings or the data; the "
                f"checkpoints in {run_dir} are kept)",
                code=1,
            )
    if result.interrupted:
        raise typer.Exit(code=130)

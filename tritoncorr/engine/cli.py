"""The run config of ``tritoncorr train`` (recipe + overrides, or a run's saved config), resolved and printed;
the command itself is :mod:`tritoncorr.cli.train`.

* new run: ``recipe`` (``path.py[:NAME]``) -> RunConfig, then ``--set`` overrides in order, then
  ``--seed``; the run folder is ``--out`` (default ``runs/<name>``); the resolved config is written
  to ``<out>/config.json``.
* ``--resume DIR``: the recipe only supplies the classes (method/data configs); every value comes
  from ``DIR/config.json``; ``--set`` overrides then apply on top (e.g. ``log_every``, ``eval.every``;
  changing the method/data/optimiser of a run breaks exact continuation and is the user's call);
  ``--seed`` must match the saved seed; training continues from DIR's last checkpoint into DIR, after
  checking its files' sizes and hashes; ``--resume-from ckpt-N`` continues from an older checkpoint
  (e.g. when the newest is damaged).
* ``--steps N`` stops after N total optimiser steps. The schedule's horizon stays the config's
  ``steps`` (so ``--steps 3`` then ``--resume --steps 6`` equals one ``--steps 6`` run); when N is
  larger than ``steps``, ``steps`` is raised to N.
* ``--dry-run`` prints the resolved config and the stop step, and exits.

Bad input raises :class:`~tritoncorr.engine.config.ConfigError` (or ``FileNotFoundError``) naming the
problem and the file or option.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from tritoncorr.engine.config import (
    ConfigError,
    RunConfig,
    apply_dict,
    apply_overrides,
    config_to_dict,
    names_class,
)
from tritoncorr.engine.recipe import load_recipe


def resolve_config(
    *, recipe: str, overrides: list[str], steps: int | None, seed: int | None, out: Path | None, resume: Path | None
) -> tuple[RunConfig, Path, int]:
    """(config, run folder, stop step) for the CLI arguments; raises ConfigError on bad input."""
    if resume is not None:
        resume = Path(resume)
        if not resume.is_dir():
            what = "is a file, not a run folder" if resume.exists() else "does not exist"
            raise ConfigError(f"--resume {resume}: {what}")
        saved_path = resume / "config.json"
        if not saved_path.is_file():
            raise ConfigError(f"--resume {resume}: no config.json there (is it a run folder?)")
        if out is not None and Path(out).resolve() != resume.resolve():
            raise ConfigError(f"--out {out} differs from --resume {resume}; a resumed run continues in its own folder")
        try:
            saved = json.loads(saved_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"--resume {resume}: {saved_path} is not valid JSON ({err})") from None
        if not isinstance(saved, dict):
            raise ConfigError(f"--resume {resume}: {saved_path} holds a JSON {type(saved).__name__}, not a run config")
        saved_recipe = saved.get("__recipe__")
        cfg = load_recipe(recipe, [], validate=False)
        saved_method = saved.get("method")
        saved_method = saved_method.get("__class__") if isinstance(saved_method, dict) else None
        if saved_method and cfg.method is not None and not names_class(saved_method, type(cfg.method)):
            raise ConfigError(
                f"--resume {resume}: the run trains {_recorded_class_name(saved_method)} "
                f"(recipe {saved_recipe or '?'}) but {recipe} builds "
                f"{type(cfg.method).__name__}; resume it with its own recipe, or use another --out"
            )
        if saved_recipe and saved_recipe != recipe:
            warnings.warn(
                f"resuming a run made from {saved_recipe!r} with recipe {recipe!r}: the saved values are used",
                stacklevel=2,
            )
        apply_dict(cfg, {k: v for k, v in saved.items() if not k.startswith("__")}, source=str(saved_path))
        apply_overrides(cfg, overrides)
        if seed is not None and seed != cfg.seed:
            raise ConfigError(f"--seed {seed} differs from the resumed run's seed {cfg.seed}")
        run_dir = resume
    else:
        cfg = load_recipe(recipe, overrides, validate=False)
        if seed is not None:
            cfg.seed = seed
        run_dir = Path(out) if out is not None else Path("runs") / cfg.name
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"--out {run_dir} is an existing file, not a folder")
    if steps is not None:
        if steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {steps}")
        if steps > cfg.steps:
            cfg.steps = steps
    stop_at = steps if steps is not None else cfg.steps
    cfg.validate()
    return cfg, run_dir, stop_at


def _recorded_class_name(ref: Any) -> str:
    """The class name a run's ``config.json`` records (looked up in the registry, never imported)."""
    from tritoncorr.engine.registry import config_class

    try:
        return config_class(ref, "").__name__
    except ConfigError:
        return str(ref).rpartition(":")[2][:80]


def _tree(name: str, data: Any):
    from rich.tree import Tree

    tree = Tree(f"[bold]{name}[/bold]")

    def add(node, d: dict) -> None:
        cls = d.get("__class__")
        if cls:
            node.label = f"{node.label} [dim]({_recorded_class_name(cls)})[/dim]"
        for k, v in d.items():
            if k.startswith("__"):
                continue
            if isinstance(v, dict):
                add(node.add(f"[bold cyan]{k}[/bold cyan]"), v)
            else:
                node.add(f"{k} = [green]{v!r}[/green]")

    add(tree, data)
    return tree


def print_config(cfg: RunConfig, run_dir: Path, stop_at: int, *, recipe: str) -> None:
    from rich.console import Console

    console = Console()
    console.print(_tree(f"RunConfig from {recipe}", config_to_dict(cfg)))
    console.print(f"run folder: {run_dir}", soft_wrap=True)
    console.print(f"stop at step {stop_at} of {cfg.steps}", soft_wrap=True)

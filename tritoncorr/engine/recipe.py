"""Recipe files: plain Python whose top-level functions return a :class:`RunConfig`.

``load_recipe("recipes/dul.py:cpu", overrides=["optim.lr=3e-4"])`` imports the file by path
(``importlib.util.spec_from_file_location``), calls ``cpu()`` (``default()`` when no name is given),
applies the overrides and validates the result. A recipe function takes no arguments.

A recipe file that is missing, does not parse, fails to import or whose function raises gives a
one-line :class:`ConfigError` naming the file and line (``recipes/x.py:12: ...``); set
``TRITONCORR_DEBUG=1`` to see the traceback from ``tritoncorr train``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from tritoncorr.engine.config import (
    CheckpointConfig,
    ConfigError,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    apply_overrides,
)


def split_recipe_ref(ref: str) -> tuple[Path, str]:
    """``"recipes/dul.py:cpu"`` -> ``(Path("recipes/dul.py"), "cpu")``; default name ``"default"``."""
    path, sep, name = ref.rpartition(":")
    if not sep or not path.endswith(".py") or "/" in name or "\\" in name:
        # no ":NAME" (a ':' may also be part of a Windows drive)
        path, name = ref, "default"
    return Path(path), (name or "default")


def load_recipe_module(path: Path) -> ModuleType:
    """Import a recipe file by path (registered in ``sys.modules`` under a name derived from its path)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    resolved = path.resolve()
    mod_name = f"tritoncorr_recipe_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(mod_name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import recipe file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses / get_type_hints look classes' modules up here
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        sys.modules.pop(mod_name, None)
        raise ConfigError(f"recipe {path}:{err.lineno}: syntax error: {err.msg}") from err
    except (Exception, SystemExit) as err:  # a recipe calling sys.exit() is a failed import too
        sys.modules.pop(mod_name, None)
        raise ConfigError(
            f"recipe {path}{_line_in(err, resolved)}: importing it failed: {type(err).__name__}: {err}"
        ) from err
    return module


def _line_in(err: BaseException, file: Path) -> str:
    """``":LINE"`` of the innermost frame of ``err``'s traceback inside ``file`` ("" if none)."""
    line = ""
    for frame in traceback.extract_tb(err.__traceback__):
        if Path(frame.filename).resolve() == file:
            line = f":{frame.lineno}"
    return line


def recipe_names(module: ModuleType) -> list[str]:
    """Functions defined in the recipe file itself (not imported) whose names do not start with ``_``."""
    out = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not inspect.isfunction(obj) or obj.__module__ != module.__name__:
            continue
        params = [
            p
            for p in inspect.signature(obj).parameters.values()
            if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if not params:
            out.append(name)
    return sorted(out)


def load_recipe(ref: str, overrides: list[str] | None = None, *, validate: bool = True) -> RunConfig:
    """Build the :class:`RunConfig` named by ``ref`` (``path.py[:NAME]``) and apply ``overrides``."""
    path, name = split_recipe_ref(ref)
    module = load_recipe_module(path)
    names = recipe_names(module)
    fn = getattr(module, name, None)
    if name not in names or fn is None:
        raise ConfigError(f"recipe {path} has no config named {name!r}; available: {', '.join(names) or '(none)'}")
    try:
        cfg = fn()
    except ConfigError as err:
        raise (err if str(path) in str(err) else ConfigError(f"recipe {path}:{name}: {err}")) from err
    except (Exception, SystemExit) as err:
        raise ConfigError(
            f"recipe {path}{_line_in(err, path.resolve())}: {name}() failed: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(cfg, RunConfig):
        raise ConfigError(f"recipe {path}:{name} returned {type(cfg).__name__}, expected RunConfig")
    apply_overrides(cfg, list(overrides or []))
    if not validate:
        return cfg
    try:
        return cfg.validate()
    except ConfigError as err:
        raise ConfigError(f"recipe {path}:{name}: {err}") from err


# Building blocks of the recipe files


def smoke_run(name: str, method: Any, data: Any, optim: OptimConfig, steps: int, **fields: Any) -> RunConfig:
    """The run of a ``smoke`` recipe (a few steps in seconds that check the whole pipeline): on the CPU,
    seed 0, a constant rate, no checkpoints, a log line every step, no curves; ``fields``: other
    :class:`RunConfig` fields (e.g. ``eval``)."""
    return RunConfig(
        name=name,
        method=method,
        data=data,
        optim=optim,
        schedule=ScheduleConfig(name="constant"),
        checkpoint=CheckpointConfig(every=0, keep_last=1),
        steps=steps,
        seed=0,
        device="cpu",
        log_every=1,
        curves_every=0,
        **fields,
    )


def cpu_video_data(data: Any, **changes: Any) -> Any:
    """The data section of a ``cpu`` recipe (a short run on a laptop or a small CPU machine): ``data`` read from
    a local folder of videos (``source="video"``, the folder given at run time with ``--set data.root=DIR``),
    one loader worker, no pinned memory (there is no GPU to copy to), and the recipe's ``changes``."""
    return dataclasses.replace(data, source="video", root="", num_workers=1, pin_memory=False, **changes)

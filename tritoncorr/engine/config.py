"""The run configuration: a typed dataclass tree, dotted overrides and JSON round trips.

A recipe (``recipes/*.py``) is a function returning a :class:`RunConfig`. The tree is::

    RunConfig
      name, steps, seed, compile, amp, device, log_every, curves_every, sync_bn, ddp_find_unused, init_from
      method     a method config dataclass with ``build() -> nn.Module`` (e.g. DULConfig)
      data       tritoncorr.data.config.DataConfig (or any dataclass with
                 ``build_loader(*, seed, rank, world_size)``, used by the tests)
      optim      OptimConfig
      schedule   ScheduleConfig
      checkpoint CheckpointConfig
      eval       EvalConfig
      log        LogConfig (optional TensorBoard / W&B writers)

Overrides ``"optim.lr=3e-4"`` are parsed against the field's declared type (``int``, ``float``,
``bool``, ``str``, ``Path``, ``tuple``/``list`` of those, ``Optional[...]``, ``Literal[...]``); unknown
fields get close-match suggestions, unparsable values a message naming the field, its type and the value.

``config_to_dict`` writes plain JSON; a dataclass whose class is not fixed by its declared field type
(the method, the data) records ``"__class__"``: its name in :mod:`tritoncorr.engine.registry`
(``"dul"``, ``"data"``, ...), or ``"module:QualName"`` for a class nobody registered. ``apply_dict``
overlays such a dict on a template tree (used by ``--resume``: the template is built by the recipe,
the values come from the run's ``config.json``). A class recorded in a file is never imported: it is
either the template's own class or a registered one (:func:`tritoncorr.engine.registry.config_class`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "step", "multistep", "cosine")
UNITS = ("steps", "epochs")
AMP_MODES = ("none", "bf16")


class ConfigError(ValueError):
    """A bad override, an unknown field or an invalid value in a run configuration."""


# --------------------------------------------------------------------------------------------- tree


@dataclass
class OptimConfig:
    """Optimiser and the gradient pipeline.

    ``weight_decay`` is coupled (L2 added to the gradient) for adam/sgd and decoupled for adamw, as
    in ``torch.optim``. Parameter groups: ``bias_lr_mult`` multiplies the learning rate of every
    bias (conv/linear biases and norm betas); with ``no_decay_bias_norm`` biases and all parameters
    of normalisation layers get no weight decay. DUL: adam, betas (0.5, 0.999), wd 5e-4,
    bias_lr_mult 2.0, no_decay_bias_norm False (DUL keeps wd on BN gammas but not on biases: see
    ``no_decay_bias``).
    """

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    bias_lr_mult: float = 1.0
    no_decay_bias: bool = False
    no_decay_bias_norm: bool = False
    grad_clip: float = 0.0
    accumulate: int = 1


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, evaluated at every optimiser step ``it`` (0-based) as ``lr * factor(it)``.

    * ``constant``: 1.
    * ``step``: ``gamma ** floor(t / step_size)``, ``t`` counted in ``unit`` (``"epochs"``: the
      epoch of step ``it`` is ``it // steps_per_epoch``, so the factor changes when an epoch ends,
      like ``StepLR`` stepped per epoch; ``"steps"``: ``t = it``).
    * ``multistep``: after each milestone (in ``unit``) the factor becomes ``factors[i]`` (or
      ``gamma ** (i + 1)`` when ``factors`` is empty).
    * ``cosine``: ``min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + cos(pi * it / total))`` with
      ``total = total_steps or RunConfig.steps``.
    * warm-up (any schedule): for ``it < warmup_steps`` the factor is multiplied by
      ``1 - (1 - it / warmup_steps) * (1 - warmup_start_factor)`` (mmcv's linear warm-up, relative
      to the scheduled value; STT: 1,100 steps from 0.001).
    """

    name: Literal["constant", "step", "multistep", "cosine"] = "constant"
    unit: Literal["steps", "epochs"] = "epochs"
    step_size: int = 1
    gamma: float = 0.1
    milestones: tuple[int, ...] = ()
    factors: tuple[float, ...] = ()
    total_steps: int = 0
    min_lr_ratio: float = 0.0
    warmup_steps: int = 0
    warmup_start_factor: float = 0.001


@dataclass
class CheckpointConfig:
    """``every``: save every N optimiser steps (0 = only at the end / on interrupt); keep the last ``keep_last``."""

    every: int = 1000
    keep_last: int = 3


@dataclass
class EvalConfig:
    """Periodic DAVIS validation (label propagation with ``method.features``); ``every`` 0 = off.

    ``preset`` "" = the method's own ``inference_preset`` (DUL "dul", STT "stt", LIIR "liir").
    """

    every: int = 0
    davis_root: str = ""
    sequences: tuple[str, ...] = ()
    split: str = "val"
    resolution: str = "480p"
    preset: str = ""


@dataclass
class LogConfig:
    """Experiment trackers mirroring ``metrics.jsonl`` (:mod:`tritoncorr.engine.log`); off by default.

    ``backends``: any of ``"tensorboard"`` (extra ``[tb]``) and ``"wandb"`` (extra ``[wandb]``), e.g.
    ``--set log.backends=[tensorboard]``. ``wandb_project`` / ``wandb_mode`` (``online``,
    ``offline``, ``disabled``): the W&B run. ``val_frames``: frames per validation sequence drawn with
    their propagated masks and logged as an image (0 = none), for at most ``val_sequences`` sequences.
    """

    backends: tuple[str, ...] = ()
    wandb_project: str = "tritoncorr"
    wandb_mode: Literal["online", "offline", "disabled"] = "online"
    val_frames: int = 4
    val_sequences: int = 2


def _default_data() -> Any:
    from tritoncorr.data.config import DataConfig

    return DataConfig()


@dataclass
class RunConfig:
    """One training run. ``steps`` is the planned length (the schedule's horizon); the CLI's
    ``--steps`` stops earlier without changing the schedule (see :func:`tritoncorr.engine.loop.train`).

    ``compile``: wrap the method (inside DDP) with ``torch.compile(backend=compile_backend)``;
    ``"inductor"`` (default) generates C++/Triton code, ``"aot_eager"`` only traces (fast, for checks).
    ``amp``: ``"bf16"`` autocast on CUDA only (ignored on CPU). ``device``: ``"auto"`` (CUDA when
    available, else CPU), ``"cpu"``, ``"cuda"``. ``init_from``: a ``model.safetensors`` (or a run or
    checkpoint folder), a published name, an ``https://`` URL or ``hf://OWNER/REPO/PATH`` (as
    ``--checkpoint`` takes them) whose weights initialise the model (fresh optimiser), e.g. a stage-2 run.
    """

    name: str = "run"
    method: Any = None
    data: Any = field(default_factory=_default_data)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    steps: int = 1000
    seed: int = 0
    compile: bool = False
    compile_backend: str = "inductor"
    amp: Literal["none", "bf16"] = "none"
    device: str = "auto"
    log_every: int = 10
    curves_every: int = 100
    sync_bn: bool = False
    ddp_find_unused: bool = False
    init_from: str = ""

    def validate(self) -> "RunConfig":
        """Check value types, ranges and cross-field rules; raise :class:`ConfigError` naming the field."""
        errs: list[str] = _type_errors(self)
        if errs:  # a recipe that set e.g. steps="x": the range checks below would compare a str with an int
            raise ConfigError("invalid run config: " + "; ".join(errs))
        if self.method is None or not dataclasses.is_dataclass(self.method) or not hasattr(self.method, "build"):
            errs.append(
                f"method must be a method config dataclass with a build() method, got {type(self.method).__name__}"
            )
        if self.data is None:
            errs.append("data must be a data config (tritoncorr.data.config.DataConfig)")
        o, s = self.optim, self.schedule
        if o.name not in OPTIMIZERS:
            errs.append(f"optim.name must be one of {OPTIMIZERS}, got {o.name!r}")
        if not o.lr > 0:
            errs.append(f"optim.lr must be > 0, got {o.lr}")
        if o.accumulate < 1:
            errs.append(f"optim.accumulate must be >= 1, got {o.accumulate}")
        if o.grad_clip < 0:
            errs.append(f"optim.grad_clip must be >= 0 (0 = off), got {o.grad_clip}")
        if o.weight_decay < 0 or o.bias_lr_mult <= 0:
            errs.append("optim.weight_decay must be >= 0 and optim.bias_lr_mult > 0")
        if len(o.betas) != 2:
            errs.append(f"optim.betas must have 2 values, got {o.betas}")
        if s.name not in SCHEDULES:
            errs.append(f"schedule.name must be one of {SCHEDULES}, got {s.name!r}")
        if s.unit not in UNITS:
            errs.append(f"schedule.unit must be one of {UNITS}, got {s.unit!r}")
        if s.name == "step" and s.step_size < 1:
            errs.append(f"schedule.step_size must be >= 1, got {s.step_size}")
        if s.name == "multistep":
            if list(s.milestones) != sorted(s.milestones):
                errs.append(f"schedule.milestones must be increasing, got {s.milestones}")
            if s.factors and len(s.factors) != len(s.milestones):
                errs.append(
                    f"schedule.factors needs one value per milestone ({len(s.milestones)}), got {len(s.factors)}"
                )
        if not 0 <= s.min_lr_ratio <= 1 or not 0 <= s.warmup_start_factor <= 1 or s.warmup_steps < 0:
            errs.append("schedule.min_lr_ratio and warmup_start_factor must be in [0, 1], warmup_steps >= 0")
        if self.steps < 1:
            errs.append(f"steps must be >= 1, got {self.steps}")
        if self.amp not in AMP_MODES:
            errs.append(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            errs.append(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.log_every < 1 or self.curves_every < 0:
            errs.append("log_every must be >= 1 and curves_every >= 0")
        if self.checkpoint.every < 0 or self.checkpoint.keep_last < 1:
            errs.append("checkpoint.every must be >= 0 and checkpoint.keep_last >= 1")
        if self.log.val_frames < 0 or self.log.val_sequences < 0:
            errs.append("log.val_frames and log.val_sequences must be >= 0")
        if self.eval.every < 0:
            errs.append(f"eval.every must be >= 0, got {self.eval.every}")
        if self.eval.every > 0 and not self.eval.davis_root:
            errs.append("eval.every > 0 needs eval.davis_root (a DAVIS-2017 folder)")
        if errs:
            raise ConfigError("invalid run config: " + "; ".join(errs))
        return self


# ------------------------------------------------------------------------------------ type helpers


def _type_errors(cfg: Any, prefix: str = "") -> list[str]:
    """``"field must be T, got V"`` for each value of ``cfg`` (and its sections of a fixed type) that is
    not of its declared type (as a recipe may set them; ``--set`` values are converted on the way in)."""
    errs = []
    hints = _hints(cfg)
    for f in dataclasses.fields(cfg):
        value, tp = getattr(cfg, f.name), hints.get(f.name, Any)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not isinstance(value, tp):
                errs.append(f"{prefix}{f.name} must be a {tp.__name__}, got {type(value).__name__}")
            else:
                errs += _type_errors(value, prefix + f.name + ".")
            continue
        if tp is Any or value is None and tp is not Any and type(None) in typing.get_args(tp):
            continue
        if isinstance(value, str) and tp is not str and tp is not Path and typing.get_origin(tp) is not Literal:
            ok = False  # a string where a number, flag or tuple belongs
        else:
            try:
                ok = coerce(value, tp, prefix + f.name) == value
            except (ConfigError, TypeError, ValueError):
                ok = False
        if not ok:
            errs.append(f"{prefix}{f.name} must be {_type_name(tp)}, got {value!r}"[:300])
    return errs


def _hints(obj: Any) -> dict[str, Any]:
    cls = type(obj)
    try:
        return typing.get_type_hints(cls)
    except Exception:  # annotations that cannot be evaluated: fall back to the current values' types
        return {f.name: type(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def _split_seq(text: str) -> list[str]:
    t = text.strip()
    if t[:1] in "([" and t[-1:] in ")]":
        t = t[1:-1]
    parts = [p.strip() for p in t.split(",")]
    return [p for p in parts if p != ""]


def _unquote(text: str) -> str:
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    return t


def _fail(value: Any, tp: Any, where: str, extra: str = "") -> ConfigError:
    return ConfigError(f"cannot parse {where}={value!r} as {_type_name(tp)}{extra}")


def _coerce_any(value: Any, tp: Any, where: str) -> Any:
    """``Any``: literal-looking strings become numbers / bools (best effort), anything else is kept."""
    if not isinstance(value, str):
        return value
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    low = value.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    return _unquote(value)


def _coerce_union(value: Any, tp: Any, where: str) -> Any:
    """The first branch that accepts ``value``; else an error listing why each branch refused it."""
    args = typing.get_args(tp)
    non_none = [a for a in args if a is not type(None)]
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
        if len(non_none) < len(args):
            return None
        raise _fail(value, tp, where)
    reasons = []
    prefix = f"cannot parse {where}={value!r} as "
    for branch in non_none:
        try:
            return coerce(value, branch, where)
        except ConfigError as e:
            msg = str(e)
            reasons.append(msg[len(prefix) :] if msg.startswith(prefix) else msg)
    raise _fail(value, tp, where, " (tried " + "; ".join(reasons) + ")")


def _coerce_literal(value: Any, tp: Any, where: str) -> Any:
    for a in typing.get_args(tp):
        try:
            cand = coerce(value, type(a), where)
        except ConfigError:
            continue
        if cand == a:
            return a
    raise ConfigError(f"{where}={value!r} is not one of {list(typing.get_args(tp))}")


def _coerce_sequence(value: Any, tp: Any, where: str) -> Any:
    """``tuple[...]`` / ``list[...]`` from a sequence or a CLI string ``"(1, 2)"`` / ``"1,2"``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    items = _split_seq(value) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise _fail(value, tp, where)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(items) != len(args):
            raise _fail(value, tp, where, f" (expected {len(args)} values, got {len(items)})")
        out = [coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(items, args))]
    else:
        elem = args[0] if args else Any
        out = [coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(items)]
    return tuple(out) if (origin is tuple or tp is tuple) else list(out)


def _coerce_bool(value: Any, tp: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _fail(value, tp, where, " (use true/false)")


def _coerce_int(value: Any, tp: Any, where: str) -> int:
    """Integers, integral floats and strings (``"1_000"``, ``"1e3"``); never bools."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip().replace("_", ""))
        except ValueError:
            try:
                f = float(value)
            except ValueError:
                raise _fail(value, tp, where) from None
            if f.is_integer():
                return int(f)
    raise _fail(value, tp, where)


def _coerce_float(value: Any, tp: Any, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise _fail(value, tp, where) from None
    raise _fail(value, tp, where)


def _coerce_str(value: Any, tp: Any, where: str) -> str:
    if isinstance(value, str):
        return _unquote(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _fail(value, tp, where)


def _coerce_path(value: Any, tp: Any, where: str) -> Path:
    if isinstance(value, (str, Path)):
        return Path(_unquote(str(value)))
    raise _fail(value, tp, where)


_SCALARS = {bool: _coerce_bool, int: _coerce_int, float: _coerce_float, str: _coerce_str, Path: _coerce_path}


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (a CLI string or a JSON value) to the declared type ``tp``; raise :class:`ConfigError`.

    The error names ``where`` (the dotted field), the value and the type; for a union it also says
    why each branch refused the value.
    """
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return _coerce_any(value, tp, where)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, where)
    if origin is Literal:
        return _coerce_literal(value, tp, where)
    if origin in (tuple, list) or tp in (tuple, list):
        return _coerce_sequence(value, tp, where)
    if tp in _SCALARS:
        return _SCALARS[tp](value, tp, where)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        raise ConfigError(
            f"{where} is a section ({tp.__name__}); set one of its fields: "
            + ", ".join(f"{where}.{f.name}" for f in dataclasses.fields(tp))
        )
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _fail(value, tp, where, " (unsupported field type)")


def _field_names(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj)]


def _unknown(obj: Any, key: str, prefix: str) -> ConfigError:
    names = _field_names(obj)
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(prefix + c) for c in close)}?" if close else ""
    sect = prefix[:-1] if prefix else "the run config"
    return ConfigError(f"unknown field {prefix + key!r}{hint} (fields of {sect}: {', '.join(names)})")


def set_field(cfg: Any, dotted: str, raw: Any) -> None:
    """Set ``cfg.<dotted>`` to ``raw`` converted to the field's declared type (in place)."""
    parts = dotted.split(".")
    obj, prefix = cfg, ""
    for i, key in enumerate(parts):
        if not dataclasses.is_dataclass(obj):
            raise ConfigError(f"{prefix[:-1]} is not a section (it is a {type(obj).__name__}); cannot set {dotted}")
        if key not in _field_names(obj):
            raise _unknown(obj, key, prefix)
        if i == len(parts) - 1:
            current = getattr(obj, key)
            if dataclasses.is_dataclass(current) and not isinstance(raw, dict):
                raise ConfigError(
                    f"{prefix + key} is a section ({type(current).__name__}); set one of its fields: "
                    + ", ".join(f"{prefix + key}.{n}" for n in _field_names(current))
                )
            tp = _hints(obj).get(key, type(current))
            if tp is Any and current is not None:
                tp = type(current)  # an untyped field keeps the type of its current value
            setattr(obj, key, coerce(raw, tp, prefix + key))
        else:
            obj = getattr(obj, key)
            prefix += key + "."


def parse_override(text: str) -> tuple[str, str]:
    """``"optim.lr=3e-4"`` -> ``("optim.lr", "3e-4")``."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p.isidentifier() for p in key.split(".")):
        raise ConfigError(f"override {text!r} must look like section.field=value (e.g. optim.lr=3e-4)")
    return key, value


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply ``["a.b=v", ...]`` in order (in place) and return ``cfg``."""
    for text in overrides:
        key, value = parse_override(text)
        set_field(cfg, key, value)
    return cfg


# ------------------------------------------------------------------------------------------ JSON


def _class_ref(cls: type) -> str:
    """What a file records for ``cls``: its registry name, or ``module:QualName`` when unregistered."""
    from tritoncorr.engine.registry import class_path, config_name

    return config_name(cls) or class_path(cls)


def names_class(ref: Any, cls: type) -> bool:
    """Whether ``ref`` (read from a file) denotes ``cls``: its registry name or its ``module:QualName``."""
    from tritoncorr.engine.registry import class_path, config_name

    return isinstance(ref, str) and ref in (config_name(cls), class_path(cls))


def _build_registered(ref: Any, where: str) -> Any:
    """An instance (defaults) of the registered config class ``ref`` names; never imports."""
    from tritoncorr.engine.registry import config_class

    cls = config_class(ref, where)
    try:
        return cls()
    except Exception as e:
        raise ConfigError(f"{where}: cannot construct {cls.__name__} with its defaults: {e}") from e


def _jsonable(value: Any, declared: Any = None) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        if not (isinstance(declared, type) and type(value) is declared):
            out["__class__"] = _class_ref(type(value))
        hints = _hints(value)
        for f in dataclasses.fields(value):
            out[f.name] = _jsonable(getattr(value, f.name), hints.get(f.name))
        return out
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(f"config value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config tree as JSON-ready dicts (see the module docstring for ``__class__``)."""
    return _jsonable(cfg, type(cfg))


def apply_dict(cfg: Any, data: dict[str, Any], prefix: str = "", *, source: str = "") -> Any:
    """Overlay a ``config_to_dict`` dict on the tree ``cfg`` (in place), type-checking every value.

    A nested dataclass whose recorded ``__class__`` differs from the template's is rebuilt from
    the registered class of that name (:mod:`tritoncorr.engine.registry`) with its defaults, then
    overlaid; an unregistered name is a :class:`ConfigError` (nothing is imported). ``source``: the
    file ``data`` was read from, named in errors.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source + ': ' if source else ''}{prefix[:-1] or 'config'} must be a JSON object, "
            f"got {type(data).__name__}"
        )
    for key, value in data.items():
        if key == "__class__":
            continue
        if key not in _field_names(cfg):
            err = _unknown(cfg, key, prefix)
            raise ConfigError(f"{source}: {err}") if source else err
        current = getattr(cfg, key)
        if isinstance(value, dict) and ("__class__" in value or dataclasses.is_dataclass(current)):
            ref = value.get("__class__")
            where = f"{source}: {prefix + key}" if source else prefix + key
            if current is None or (ref and not names_class(ref, type(current))):
                if not ref:
                    raise ConfigError(f"{where}: cannot rebuild a section without its class")
                current = _build_registered(ref, where)
                setattr(cfg, key, current)
            apply_dict(current, value, prefix + key + ".", source=source)
        elif dataclasses.is_dataclass(current):
            raise ConfigError(
                f"{source + ': ' if source else ''}{prefix + key} is a section ({type(current).__name__}), "
                f"got {type(value).__name__}"
            )
        else:
            tp = _hints(cfg).get(key, Any)
            try:
                setattr(cfg, key, coerce(value, tp, prefix + key))
            except ConfigError as err:
                if not source:
                    raise
                raise ConfigError(f"{source}: {err}") from err
    return cfg


def dataclass_to_dict(obj: Any) -> dict[str, Any]:
    """One config dataclass as JSON-ready dicts, always with its ``"__class__"`` (see :func:`dataclass_from_dict`)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise ConfigError(f"expected a config dataclass instance, got {type(obj).__name__}")
    return _jsonable(obj, None)


def dataclass_from_dict(data: dict[str, Any], where: str = "config") -> Any:
    """Rebuild one config dataclass (e.g. a method config) from its ``config_to_dict`` form.

    ``data`` must carry ``"__class__"``, a name of :mod:`tritoncorr.engine.registry` (or the
    ``module:QualName`` of a registered class); the class is built with its defaults and the
    recorded values are overlaid (type-checked) with :func:`apply_dict`. ``where`` names the file
    (and field) in errors.
    """
    ref = data.get("__class__") if isinstance(data, dict) else None
    if not ref:
        raise ConfigError(f"{where}: no '__class__' recorded, cannot rebuild it")
    obj = _build_registered(ref, where)
    return apply_dict(obj, data, source=where)


def config_from_dict(data: dict[str, Any], source: str = "") -> RunConfig:
    """Rebuild a :class:`RunConfig` from ``config_to_dict`` output (classes from the registry)."""
    cfg = RunConfig(method=None, data=None)
    return apply_dict(cfg, data, source=source)

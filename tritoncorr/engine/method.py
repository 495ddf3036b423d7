"""The method contract: what the engine, the checkpoints and the evaluation need from a method.

A method (DUL, STT, LIIR, MoCo, or a recipe's own) is a config dataclass with ``build()`` returning
an ``nn.Module`` that satisfies :class:`Method`:

* ``forward(batch) -> {name: loss term}``: the already-weighted scalar loss terms of one batch; the
  engine sums them, logs each, and requires the same names at every step;
* ``features(images) -> (N, C, h, w)``: the inference features (needed by validation and ``eval``).

A method that can be evaluated by name also declares (:class:`DescribedMethod`):

* ``method_name``: ``"dul"``, ``"stt"``, ``"liir"``, ``"moco"``, ...;
* ``input_color``: the colour space ``features`` expects, ``"rgb"`` (ImageNet-normalised) or
  ``"lab"`` (normalised OpenCV Lab);
* ``inference_preset``: a key of :data:`tritoncorr.propagation.PRESETS`;
* ``config``: its config dataclass (recorded in checkpoints so the method can be rebuilt).

Modules that declare nothing (a test's toy method, a plain backbone) get the defaults of
:func:`describe`, the one place that reads these attributes. :func:`method_metadata` writes them into
the string metadata of every ``model.safetensors`` / ``init.safetensors``; :func:`read_metadata` reads
a file's metadata back. This module imports nothing of ``tritoncorr.methods``: methods depend on the
engine, not the reverse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = [
    "Method",
    "DescribedMethod",
    "MethodConfig",
    "MethodInfo",
    "describe",
    "inference_config",
    "METADATA_KEYS",
    "INPUT_COLORS",
    "method_metadata",
    "read_metadata",
]

METADATA_KEYS = ("tritoncorr.method", "tritoncorr.input_color", "tritoncorr.preset", "tritoncorr.method_config")
INPUT_COLORS = ("rgb", "lab")


@runtime_checkable
class Method(Protocol):
    """A trainable method module (see the module docstring)."""

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]: ...

    def features(self, images: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class DescribedMethod(Method, Protocol):
    """A method that names itself, its input colour space, its propagation preset and its config."""

    method_name: str
    input_color: str
    inference_preset: str
    config: Any


class MethodConfig(Protocol):
    """A method's config dataclass. It may also define ``for_inference()``: the config to rebuild the
    method from a checkpoint for feature extraction only (e.g. STT without its teacher file)."""

    def build(self) -> nn.Module: ...


@dataclass(frozen=True)
class MethodInfo:
    """What a module declares of the contract, defaults filled in (:func:`describe`).

    Attributes:
        name: ``method_name``, or None for a module that declares none.
        color: ``input_color`` (default ``"rgb"``).
        preset: ``inference_preset`` (default ``"dul"``).
        config: the config dataclass, or None.
        has_features: whether the module has ``features(images)``.
    """

    name: str | None
    color: str
    preset: str
    config: Any
    has_features: bool


def describe(model: nn.Module) -> MethodInfo:
    """The contract as ``model`` declares it (the defaults for what it does not declare)."""
    name = getattr(model, "method_name", None)
    return MethodInfo(
        name=str(name) if name else None,
        color=str(getattr(model, "input_color", "rgb")),
        preset=str(getattr(model, "inference_preset", "dul")),
        config=getattr(model, "config", None),
        has_features=callable(getattr(model, "features", None)),
    )


def inference_config(config: Any) -> Any:
    """``config.for_inference()`` when the config defines it, else ``config``."""
    for_inference = getattr(config, "for_inference", None)
    return for_inference() if callable(for_inference) else config


def method_metadata(model: nn.Module) -> dict[str, str]:
    """Safetensors metadata describing ``model``'s inference (empty for modules that declare no name)."""
    from tritoncorr.engine.config import dataclass_to_dict

    info = describe(model)
    if not info.name:
        return {}
    if info.color not in INPUT_COLORS:
        raise ValueError(f"{type(model).__name__}.input_color must be one of {INPUT_COLORS}, got {info.color!r}")
    meta = {"tritoncorr.method": info.name, "tritoncorr.input_color": info.color, "tritoncorr.preset": info.preset}
    if info.config is not None:
        meta["tritoncorr.method_config"] = json.dumps(dataclass_to_dict(info.config))
    return meta


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file (``{}`` when it has none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err

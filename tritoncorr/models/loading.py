"""Loading and saving backbone weights (safetensors or in-memory state dicts).

Checkpoints of self-supervised methods wrap the backbone in various ways (``module.`` from
DataParallel/DDP, ``backbone.``, ``encoder.``, MoCo's ``module.encoder_q.``, ``model.``). The loader
strips those prefixes, ignores keys that are not part of a backbone (classifier ``fc.*``, heads, queue
buffers) and reports what it did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

# Longest first: "module.encoder_q." must win over "module.".
KNOWN_PREFIXES = (
    "module.encoder_q.",
    "module.backbone.",
    "module.encoder.",
    "module.",
    "backbone.",
    "encoder.",
    "model.",
    "encoder_q.",
)
# Keys of a torchvision-style ResNet checkpoint that are not backbone parameters.
IGNORED_PREFIXES = ("fc.",)
# PyTorch pickles read with ``torch.load(weights_only=True)`` (MoCo's ``moco_v2_800ep_pretrain.pth.tar``).
TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar")


@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` did.

    Attributes:
        loaded: model keys that received a tensor.
        missing: model keys absent from the source (left at their current values).
        unexpected: source keys (after prefix stripping) that match no model key and are not ignored.
        ignored: source keys skipped on purpose (non-backbone keys such as ``fc.*``).
        shape_mismatch: ``(key, source shape, model shape)`` for keys present in both with other shapes.
        prefix: the prefix stripped from the source keys ('' when none).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    prefix: str = ""

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors"]
        if self.prefix:
            parts.append(f"stripped prefix {self.prefix!r}")
        if self.ignored:
            parts.append(f"ignored {len(self.ignored)} non-backbone keys")
        if self.missing:
            parts.append(f"missing {len(self.missing)}: {_short(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected {len(self.unexpected)}: {_short(self.unexpected)}")
        if self.shape_mismatch:
            parts.append(f"shape mismatch {len(self.shape_mismatch)}: {_short([k for k, _, _ in self.shape_mismatch])}")
        return "; ".join(parts)


def _short(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def _read_source(source) -> dict[str, torch.Tensor]:
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        if path.name.endswith(TORCH_SUFFIXES):
            # published PyTorch checkpoints (MoCo v2 / DetCo ``.pth.tar``): tensors and plain containers only
            try:
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as err:
                raise ValueError(f"cannot read checkpoint {path} with torch.load(weights_only=True): {err}") from err
            if not isinstance(obj, Mapping):
                raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
            return _read_source(obj)
        if path.suffix != ".safetensors":
            raise ValueError(
                f"checkpoint {path}: only .safetensors and PyTorch {TORCH_SUFFIXES} files are supported "
                f"(got {path.suffix!r})"
            )
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if isinstance(source, Mapping):
        sd = source.get("state_dict", source) if isinstance(source.get("state_dict", None), Mapping) else source
        out = {}
        for k, v in sd.items():
            if not isinstance(k, str):
                raise ValueError(f"state dict keys must be strings, got {k!r}")
            if isinstance(v, torch.Tensor):
                out[k] = v
        return out
    raise TypeError(f"source must be a .safetensors path or a state dict, got {type(source).__name__}")


def _strip(keys: list[str], model_keys: set[str]) -> str:
    """The known prefix whose stripping matches the most model keys ('' if none helps)."""
    best, best_n = "", sum(k in model_keys for k in keys)
    for p in KNOWN_PREFIXES:
        n = sum(k.startswith(p) and k[len(p) :] in model_keys for k in keys)
        if n > best_n:
            best, best_n = p, n
    return best


def load_backbone_weights(model: nn.Module, source, *, strict: bool = False) -> LoadReport:
    """Copy backbone tensors from ``source`` into ``model`` (in place).

    Args:
        model: the backbone (e.g. :func:`tritoncorr.models.dul_backbone`).
        source: path to a ``.safetensors`` file or a PyTorch ``.pth``/``.pth.tar``/``.pt`` checkpoint (read with
            ``torch.load(weights_only=True)``), or a state dict (a ``{"state_dict": ...}`` wrapper is unwrapped).
        strict: raise when any model key is missing, any key is unexpected or a shape differs.

    Returns:
        :class:`LoadReport`.

    Raises:
        ValueError: no source key matched a model key (after prefix stripping), or ``strict`` and the
            report is not clean; the message lists the keys.
    """
    sd = _read_source(source)
    where = f"checkpoint {source}: " if isinstance(source, (str, Path)) else ""
    model_sd = model.state_dict()
    model_keys = set(model_sd)
    prefix = _strip(list(sd), model_keys)
    report = LoadReport(prefix=prefix)
    to_load: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        name = k[len(prefix) :] if prefix and k.startswith(prefix) else k
        if name in model_keys:
            if tuple(v.shape) != tuple(model_sd[name].shape):
                report.shape_mismatch.append((name, tuple(v.shape), tuple(model_sd[name].shape)))
            else:
                to_load[name] = v
        elif name.startswith(IGNORED_PREFIXES) or (prefix and not k.startswith(prefix)):
            report.ignored.append(k)
        else:
            report.unexpected.append(k)
    report.loaded = sorted(to_load)
    report.missing = sorted(model_keys - set(to_load) - {k for k, _, _ in report.shape_mismatch})
    if not to_load:
        raise ValueError(
            f"{where}no checkpoint key matched the model (tried prefixes {KNOWN_PREFIXES}); checkpoint keys: "
            f"{_short(sorted(sd))}; model keys: {_short(sorted(model_keys))}"
        )
    if strict and (report.missing or report.unexpected or report.shape_mismatch):
        raise ValueError(f"{where}strict load failed: {report.summary()}")
    with torch.no_grad():
        for name, v in to_load.items():
            model_sd[name].copy_(v.to(model_sd[name].dtype))
    return report


def save_backbone_weights(model: nn.Module, path: str | Path) -> Path:
    """Save ``model.state_dict()`` (contiguous CPU tensors, buffers included) as a ``.safetensors`` file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path))
    return path


__all__ = ["KNOWN_PREFIXES", "LoadReport", "load_backbone_weights", "save_backbone_weights"]

"""Optimiser parameter groups, optimisers and learning-rate schedules (pure functions of the step).

The schedule is a function ``lr_factor(it)`` of the optimiser step, so resuming needs only the step
count: the engine sets ``group["lr"] = optim.lr * group["lr_mult"] * lr_factor(it)`` before step ``it``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tritoncorr.engine.config import OptimConfig, ScheduleConfig

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
if hasattr(nn, "RMSNorm"):
    NORM_TYPES = NORM_TYPES + (nn.RMSNorm,)


def classify_parameters(model: nn.Module) -> dict[str, str]:
    """``{param_name: "bias" | "norm" | "weight"}`` for every trainable parameter.

    ``bias``: parameters named ``*.bias`` (conv/linear biases and norm betas); ``norm``: the other
    parameters of normalisation layers (gammas); ``weight``: everything else. Shared parameters are
    listed once (first name).
    """
    out: dict[str, str] = {}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if p_name == "bias":
                out[full] = "bias"
            elif isinstance(module, NORM_TYPES):
                out[full] = "norm"
            else:
                out[full] = "weight"
    return out


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Parameter groups for ``torch.optim``: each group has ``params``, ``lr_mult``, ``weight_decay``, ``name``.

    * weights: lr x1, ``weight_decay``;
    * biases: lr x ``bias_lr_mult``, no decay when ``no_decay_bias`` or ``no_decay_bias_norm``;
    * norm gammas: lr x1, no decay when ``no_decay_bias_norm``.
    Groups with identical (lr_mult, weight_decay) are merged; empty groups are dropped. Frozen
    parameters (``requires_grad=False``) are left out.
    """
    kinds = classify_parameters(model)
    params = dict(model.named_parameters(remove_duplicate=True))
    wd = cfg.weight_decay
    rule = {
        "weight": (1.0, wd),
        "bias": (cfg.bias_lr_mult, 0.0 if (cfg.no_decay_bias or cfg.no_decay_bias_norm) else wd),
        "norm": (1.0, 0.0 if cfg.no_decay_bias_norm else wd),
    }
    groups: dict[tuple[float, float], dict] = {}
    for name, kind in kinds.items():
        key = rule[kind]
        g = groups.setdefault(key, {"params": [], "names": [], "lr_mult": key[0], "weight_decay": key[1]})
        g["params"].append(params[name])
        g["names"].append(name)
    out = []
    for g in groups.values():
        g["name"] = f"lr_x{g['lr_mult']:g}_wd{g['weight_decay']:g}"
        out.append(g)
    if not out:
        raise ValueError("the model has no trainable parameters")
    return out


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam (coupled wd), AdamW (decoupled wd) or SGD over :func:`param_groups` (lr set per step later)."""
    groups = param_groups(model, cfg)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_mult"]
        del g["names"]
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    raise ValueError(f"optim.name must be adam, adamw or sgd, got {cfg.name!r}")


def lr_factor(it: int, cfg: ScheduleConfig, *, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at optimiser step ``it`` (0-based); see ScheduleConfig."""
    if it < 0:
        raise ValueError(f"step must be >= 0, got {it}")
    t = it // max(steps_per_epoch, 1) if cfg.unit == "epochs" else it
    if cfg.name == "constant":
        f = 1.0
    elif cfg.name == "step":
        f = cfg.gamma ** (t // cfg.step_size)
    elif cfg.name == "multistep":
        passed = sum(1 for m in cfg.milestones if t >= m)
        if passed == 0:
            f = 1.0
        elif cfg.factors:
            f = float(cfg.factors[passed - 1])
        else:
            f = cfg.gamma**passed
    elif cfg.name == "cosine":
        total = cfg.total_steps or total_steps
        progress = min(it / max(total, 1), 1.0)
        f = cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown schedule {cfg.name!r}")
    if cfg.warmup_steps > 0 and it < cfg.warmup_steps:
        f *= 1.0 - (1.0 - it / cfg.warmup_steps) * (1.0 - cfg.warmup_start_factor)
    return f


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    """Set every group's lr to ``base_lr * lr_mult * factor``; return the base group's lr."""
    for g in optimizer.param_groups:
        g["lr"] = base_lr * g.get("lr_mult", 1.0) * factor
    return base_lr * factor

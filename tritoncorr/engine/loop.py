"""The training loop: one process, or one process per device under torchrun (DDP).

A method is an ``nn.Module`` whose ``forward(batch) -> dict[str, Tensor]`` returns named, already
weighted scalar loss terms (their sum is minimised, each is logged) and which has
``features(images (N, 3, H, W)) -> (N, C, h, w)`` for validation. Nothing else about it is known here.

Run folder: ``config.json``, ``init.safetensors`` (the weights the run starts from: random init of
the seed, or what ``init_from`` / the method's own initialisation loaded), ``model.safetensors``
(the latest weights), ``ckpt-*/`` (resumable checkpoints), ``metrics.jsonl``, ``curves.png``.

Per optimiser step ``it`` (0-based): ``optim.accumulate`` micro-batches (DDP gradient sync only on
the last), bf16 autocast on CUDA when ``amp="bf16"``, optional gradient clipping, lr =
``optim.lr * group lr_mult * lr_factor(it)``, ``optimizer.step()``. Then (rank 0) one line in
``metrics.jsonl``: ``{"step": it + 1, "epoch", "loss", <each term>, "lr", "time", "step_time"}``
(loss terms are averaged over ranks), optionally ``val/jf``, ``val/j``, ``val/f``; periodic checkpoints,
curves and DAVIS validation. SIGINT/SIGTERM (Ctrl-C; torchrun forwards SIGTERM) finish the current
step, save a checkpoint and return (a second Ctrl-C aborts at once).

Resume is exact: weights, optimiser state, the step (the schedule is a function of it), the data
position (``loader.state_dict()``) and every rank's Python/NumPy/torch/CUDA RNG states are restored,
and ``metrics.jsonl`` is cut back to the checkpoint's step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from tritoncorr.engine import checkpoint as ckpt_io
from tritoncorr.engine.config import ConfigError, RunConfig, config_to_dict
from tritoncorr.engine.curves import plot_curves, read_metrics
from tritoncorr.engine.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    gather_objects,
    init_distributed,
    shutdown,
)
from tritoncorr.engine.optim import build_optimizer, lr_factor, set_lr


@dataclass
class TrainResult:
    out: Path
    step: int
    interrupted: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)
    last_checkpoint: Path | None = None


def seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def build_loader(cfg: RunConfig, info: DistInfo):
    """``cfg.data.build_loader(...)`` when the data config has one, else ``build_clip_loader``."""
    data = cfg.data
    if hasattr(data, "build_loader"):
        return data.build_loader(seed=cfg.seed, rank=info.rank, world_size=info.world_size)
    from tritoncorr.data.loader import build_clip_loader

    return build_clip_loader(data, seed=cfg.seed, rank=info.rank, world_size=info.world_size)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _check_terms(terms: Any, method: nn.Module) -> None:
    name = type(method).__name__
    if not isinstance(terms, dict) or not terms:
        raise TypeError(f"{name}.forward(batch) must return a non-empty dict of named loss terms, got {type(terms).__name__}")
    for k, v in terms.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor) or v.numel() != 1:
            raise TypeError(f"{name}.forward(batch)[{k!r}] must be a scalar tensor, got "
                            f"{type(v).__name__}{tuple(v.shape) if isinstance(v, torch.Tensor) else ''}")
    if not any(v.requires_grad for v in terms.values()):
        raise RuntimeError(f"no loss term of {name} requires grad: nothing to train")


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                return int(v.shape[0])
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    return 0


class _StopFlag:
    """SIGINT/SIGTERM -> ``requested``; a second SIGINT raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._old[sig] = signal.signal(sig, self._handler)
                except (ValueError, OSError):
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _Progress:
    """Rich progress bar (rank 0): it/s, clips/s, ETA, loss terms, lr; plus a log line every N steps."""

    def __init__(self, enabled: bool, total: int, start: int, log_every: int, name: str):
        from rich.console import Console

        self.console = Console(stderr=False)
        self.log_every = log_every
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[speed]}"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=False,
            )
            self.task = self.bar.add_task(name, total=total, completed=start, speed="", info="")
            self.bar.start()

    def update(self, row: dict[str, Any], terms: list[str], its: float, clips: float) -> None:
        info = " ".join([f"loss {row['loss']:.4f}"] + [f"{t} {row[t]:.4f}" for t in terms] + [f"lr {row['lr']:.3g}"])
        if "val/jf" in row:
            info += f" val/jf {row['val/jf']:.4f}"
        speed = f"{its:.2f} it/s {clips:.1f} clips/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=row["step"], speed=speed, info=info)
        if row["step"] % self.log_every == 0 or "val/jf" in row:
            self.log(f"step {row['step']} {info} ({speed})")

    def log(self, msg: str) -> None:
        console = self.bar.console if self.bar is not None else self.console
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {msg}", highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _truncate_metrics(path: Path, step: int) -> list[dict[str, Any]]:
    """Keep the rows with ``step <= step`` (steps logged after the checkpoint are replayed)."""
    rows = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    if path.exists():
        ckpt_io.atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())
    return rows


def _run_validation(cfg: RunConfig, model: nn.Module, out: Path, step: int, device: torch.device) -> dict[str, float]:
    from tritoncorr.evaluate import evaluate_features_on_davis

    from tritoncorr.propagation import PRESETS

    preset = cfg.eval.preset or getattr(model, "inference_preset", "dul")
    if preset not in PRESETS:
        raise ConfigError(f"eval.preset {preset!r} is not one of {sorted(PRESETS)}")
    prop_config = PRESETS[preset]

    was_training = model.training
    model.eval()

    def features_fn(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.features(images.to(device)).float()

    try:
        # validation must not perturb the training RNG streams (resume exactness)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            scores = evaluate_features_on_davis(
                features_fn, root=cfg.eval.davis_root, out=out / "eval" / f"step-{step:08d}", split=cfg.eval.split,
                resolution=cfg.eval.resolution, sequences=list(cfg.eval.sequences) or None, config=prop_config,
                device=str(device), overlays=False, progress=False, color=getattr(model, "input_color", "rgb"),
            )
    finally:
        model.train(was_training)
    return {"val/jf": float(scores.jf_mean), "val/j": float(scores.j_mean), "val/f": float(scores.f_mean)}


def _resume_checkpoint(out: Path, resume_from: str | None, is_main: bool) -> Path:
    """The checkpoint to resume from (verified), per ``resume_from`` (None = the newest)."""
    ckpts = ckpt_io.list_checkpoints(out)
    if not ckpts:
        raise FileNotFoundError(f"--resume: no complete checkpoint (ckpt-*/state.json) in {out}")
    names = ", ".join(p.name for _, p in ckpts)
    if resume_from is None:
        chosen = ckpts[-1][1]
    else:
        text = str(resume_from).strip()
        step = int(text.removeprefix("ckpt-")) if text.removeprefix("ckpt-").isdigit() else None
        match = [p for s, p in ckpts if s == step]
        if not match:
            raise ConfigError(f"--resume-from {resume_from}: no such checkpoint in {out} (complete ones: {names})")
        chosen = match[0]
    try:
        ckpt_io.verify_checkpoint(chosen)
    except ckpt_io.CheckpointCorruptError as err:
        older = [p.name for _, p in ckpts if p != chosen and p.name < chosen.name]
        hint = (f"; resume from an older one with --resume-from {older[-1]} (complete: {', '.join(older)})"
                if older else "; no older checkpoint is left")
        raise ConfigError(f"{err}{hint}") from None
    if resume_from is not None and is_main:
        newer = [p for _, p in ckpts if p.name > chosen.name]
        if newer:
            aside = out / "superseded"
            aside.mkdir(exist_ok=True)
            for p in newer:
                os.replace(p, aside / p.name)
            warnings.warn(f"resuming from {chosen.name}: moved the newer {', '.join(p.name for p in newer)} to {aside}",
                          stacklevel=3)
    return chosen


def train(
    cfg: RunConfig,
    out: Path,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    recipe_ref: str = "",
    on_step: Callable[[dict[str, Any]], None] | None = None,
    resume_from: str | None = None,
) -> TrainResult:
    """Train ``cfg.method`` and write the run folder ``out``; returns at ``stop_at`` (default ``cfg.steps``).

    ``resume``: continue from the highest complete checkpoint in ``out`` (exactly; see module doc), after
    checking its files against the sizes and hashes recorded in its ``state.json``; a damaged one
    stops with an error naming the file. ``resume_from`` (``"ckpt-00000400"`` or ``"400"``) picks an
    older checkpoint instead; the newer ones are moved to ``out/superseded/`` so that they are kept
    but not resumed from again.
    ``stop_at`` <= ``cfg.steps`` stops early without changing the schedule (its horizon is ``cfg.steps``).
    """
    cfg.validate()
    out = Path(out)
    stop_at = cfg.steps if stop_at is None else int(stop_at)
    if not 1 <= stop_at <= cfg.steps:
        raise ConfigError(f"stop step {stop_at} must be in [1, steps={cfg.steps}] (raise steps with --set steps=N)")
    if cfg.eval.every > 0:
        if not Path(cfg.eval.davis_root).is_dir():
            raise ConfigError(f"eval.davis_root {cfg.eval.davis_root!r} is not a folder (set eval.every=0 to disable)")
        import tritoncorr.evaluate  # noqa: F401  (fail now rather than at the first validation)

    info = init_distributed(cfg.device)
    device = info.device
    is_main = info.is_main
    bar: _Progress | None = None
    try:
        resume_ckpt = None
        if resume:
            resume_ckpt = _resume_checkpoint(out, resume_from, is_main)
        elif ckpt_io.list_checkpoints(out):
            raise ConfigError(f"{out} already holds checkpoints; use --resume {out} or another --out")

        seed_all(cfg.seed)  # identical initial weights on every rank
        model = cfg.method.build()
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(cfg.method).__name__}.build() must return an nn.Module, got {type(model).__name__}")
        if cfg.eval.every > 0 and not hasattr(model, "features"):
            raise ConfigError(f"eval.every > 0 but {type(model).__name__} has no features(images) method")
        if cfg.init_from and resume_ckpt is None:
            missing, unexpected = ckpt_io.load_model_weights(model, Path(cfg.init_from), strict=False)
            if is_main and (missing or unexpected):
                warnings.warn(f"init_from {cfg.init_from}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                              f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})", stacklevel=2)
        model.to(device)
        if cfg.sync_bn and info.distributed:
            if device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif is_main:
                warnings.warn("sync_bn needs CUDA (torch's SyncBatchNorm has no CPU path); using per-process BN",
                              stacklevel=2)
        optimizer = build_optimizer(model, cfg.optim)
        loader = build_loader(cfg, info)
        if is_main and resume_ckpt is None:
            # the weights the run starts from, for comparing any checkpoint with where it began
            out.mkdir(parents=True, exist_ok=True)
            ckpt_io.save_model_weights(out / "init.safetensors", model)
        batches_per_epoch = len(loader)
        if batches_per_epoch < 1:
            raise ValueError("the data loader yields no batch per epoch (fewer clips than batch_size x world_size?)")
        acc = cfg.optim.accumulate
        steps_per_epoch = max(batches_per_epoch // acc, 1)

        step, epoch = 0, 0
        if resume_ckpt is not None:
            state = ckpt_io.load_checkpoint(resume_ckpt, model, optimizer)
            step = int(state["step"])
            if "loader" in state and state["loader"] is not None:
                loader.load_state_dict(state["loader"])
            epoch = int(state.get("epoch", 0))
            rngs = state.get("rng") or []
            if len(rngs) == info.world_size:
                ckpt_io.set_rng_state(rngs[info.rank])
            else:
                if is_main:
                    warnings.warn(f"checkpoint has RNG states for {len(rngs)} ranks, running {info.world_size}: "
                                  "re-seeding (the run continues, but not bit-exactly)", stacklevel=2)
                seed_all(cfg.seed + 7919 * (step + 1) + info.rank)
            if step >= stop_at and is_main:
                warnings.warn(f"checkpoint is at step {step} >= stop step {stop_at}: nothing to do", stacklevel=2)
        else:
            loader.set_epoch(0)
            seed_all(cfg.seed + 10007 * (info.rank + 1))  # per-rank streams for the method's randomness

        fwd_module: nn.Module = model
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            fwd_module = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                             find_unused_parameters=cfg.ddp_find_unused)
        fwd: Callable = torch.compile(fwd_module, backend=cfg.compile_backend) if cfg.compile else fwd_module
        amp_ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if (
            cfg.amp == "bf16" and device.type == "cuda") else contextlib.nullcontext

        metrics_path = out / "metrics.jsonl"
        rows: list[dict[str, Any]] = []
        if is_main:
            out.mkdir(parents=True, exist_ok=True)
            ckpt_io.clean_temporaries(out)
            conf = config_to_dict(cfg)
            if recipe_ref:
                conf["__recipe__"] = recipe_ref
            ckpt_io.atomic_write_json(out / "config.json", conf)
            if resume_ckpt is not None:
                rows = _truncate_metrics(metrics_path, step)
            elif metrics_path.exists():
                metrics_path.unlink()
        barrier(info)

        def save(at: int) -> Path | None:
            rng_all = gather_objects(ckpt_io.get_rng_state(), info)  # collective: every rank calls it
            path = None
            if is_main:
                path = ckpt_io.save_checkpoint(
                    out, at, model, optimizer,
                    {"epoch": epoch, "loader": loader.state_dict(), "rng": rng_all, "world_size": info.world_size,
                     "schedule": {"name": cfg.schedule.name, "factor": lr_factor(max(at - 1, 0), cfg.schedule,
                                  total_steps=cfg.steps, steps_per_epoch=steps_per_epoch)}},
                    keep_last=cfg.checkpoint.keep_last)
                ckpt_io.save_model_weights(out / "model.safetensors", model)
            barrier(info)
            return path

        if is_main:
            bar = _Progress(progress, stop_at, step, cfg.log_every, cfg.name)
        data_iter = iter(loader)

        def next_batch() -> Any:
            nonlocal data_iter, epoch
            for _ in range(3):
                try:
                    return next(data_iter)
                except StopIteration:
                    epoch += 1
                    loader.set_epoch(epoch)
                    data_iter = iter(loader)
            raise RuntimeError("the data loader produced no batch in a new epoch")

        start_step = step
        time_offset = float(rows[-1].get("time", 0.0)) if rows else 0.0  # wall time continues across resumes
        session_start = time.perf_counter() - time_offset
        last_ckpt: Path | None = None
        interrupted = False
        step_time_ema = None
        term_names: list[str] | None = None
        with _StopFlag() as stop:
            while step < stop_at:
                t0 = time.perf_counter()
                model.train()
                optimizer.zero_grad(set_to_none=True)
                acc_vals: torch.Tensor | None = None
                clips = 0
                # one process: remember where this step started, in case Ctrl-C kills the data workers
                # while it runs (they get SIGINT too and the next fetch fails): we then roll back and save
                snap = None if info.distributed else (loader.state_dict(), epoch, ckpt_io.get_rng_state())
                try:
                    for micro in range(acc):
                        batch = _to_device(next_batch(), device)
                        clips += _batch_size(batch)
                        sync = fwd_module.no_sync() if (info.distributed and micro < acc - 1) else contextlib.nullcontext()
                        with sync:
                            with amp_ctx():
                                terms = fwd(batch)
                            if term_names is None:
                                _check_terms(terms, model)
                                term_names = list(terms)
                            elif list(terms) != term_names:
                                raise RuntimeError(f"loss terms changed from {term_names} to {list(terms)}")
                            loss = sum(t.float() for t in terms.values())
                            (loss / acc).backward()
                        vals = torch.stack([loss.detach().float()] + [t.detach().float().reshape(()) for t in terms.values()])
                        acc_vals = vals if acc_vals is None else acc_vals + vals
                except Exception:
                    if snap is None or not stop.requested:
                        raise
                    loader.load_state_dict(snap[0])
                    epoch = snap[1]
                    ckpt_io.set_rng_state(snap[2])
                    optimizer.zero_grad(set_to_none=True)
                    interrupted = True
                    break
                assert acc_vals is not None
                vec = torch.cat([acc_vals / acc, torch.tensor([1.0 if stop.requested else 0.0], device=acc_vals.device)])
                vec = all_reduce_mean(vec, info).cpu()
                values = vec[:-1].tolist()
                stop_requested = bool(vec[-1].item() > 0)
                if not math.isfinite(values[0]):
                    detail = ", ".join(f"{n}={v}" for n, v in zip(term_names, values[1:]))
                    raise FloatingPointError(f"non-finite loss at step {step + 1}: loss={values[0]} ({detail})")
                grad_norm = None
                if cfg.optim.grad_clip > 0:
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip))
                lr = set_lr(optimizer, cfg.optim.lr,
                            lr_factor(step, cfg.schedule, total_steps=cfg.steps, steps_per_epoch=steps_per_epoch))
                optimizer.step()
                step += 1
                dt = time.perf_counter() - t0
                step_time_ema = dt if step_time_ema is None else 0.9 * step_time_ema + 0.1 * dt
                row: dict[str, Any] = {"step": step, "epoch": epoch, "loss": values[0]}
                row.update({n: v for n, v in zip(term_names, values[1:])})
                row["lr"] = lr
                if grad_norm is not None:
                    row["grad_norm"] = grad_norm
                row["time"] = round(time.perf_counter() - session_start, 4)
                row["step_time"] = round(dt, 4)
                if cfg.eval.every > 0 and (step % cfg.eval.every == 0 or step == stop_at):
                    if is_main:
                        row.update(_run_validation(cfg, model, out, step, device))
                    barrier(info)
                if is_main:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    rows.append(row)
                    if bar is not None:
                        bar.update(row, term_names, 1.0 / step_time_ema,
                                   clips * info.world_size / max(step_time_ema, 1e-9))
                    if cfg.curves_every and step % cfg.curves_every == 0:
                        plot_curves(rows, out / "curves.png", title=cfg.name)
                    if on_step is not None:
                        on_step(row)
                if not info.distributed:  # one process: no need to agree with other ranks
                    stop_requested = stop_requested or stop.requested
                if stop_requested and step < stop_at:
                    interrupted = True
                    break
                if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < stop_at:
                    last_ckpt = save(step)

        ran = step > start_step
        if ran or resume_ckpt is None:
            last_ckpt = save(step)
        else:
            last_ckpt = resume_ckpt
        if is_main:
            plot_curves(rows, out / "curves.png", title=cfg.name)
            if bar is not None:
                if interrupted:
                    bar.log(f"interrupted: saved {last_ckpt}; continue with --resume {out}")
                else:
                    bar.log(f"done: step {step}, checkpoint {last_ckpt}, weights {out / 'model.safetensors'}")
        return TrainResult(out=out, step=step, interrupted=interrupted, rows=rows, last_checkpoint=last_ckpt)
    finally:
        if bar is not None:
            bar.close()
        shutdown(info)

"""The training loop: one process, or one process per device under torchrun (DDP).

A method is an ``nn.Module`` whose ``forward(batch) -> dict[str, Tensor]`` returns named, already
weighted scalar loss terms (their sum is minimised, each is logged) and which has
``features(images (N, 3, H, W)) -> (N, C, h, w)`` for validation. Nothing else about it is known here.

Run folder: ``config.json``, ``provenance.json`` (code commit and dirty flag, versions, device,
host, command, SHA-256 of the weights the session starts from; one record per start/resume), ``init.safetensors`` (the weights the run starts from: random init of
the seed, or what ``init_from`` / the method's own initialisation loaded), ``model.safetensors``
(the latest weights), ``ckpt-*/`` (resumable checkpoints), ``metrics.jsonl``, ``curves.png``.

Per optimiser step ``it`` (0-based): ``optim.accumulate`` micro-batches (DDP gradient sync only on
the last), bf16 autocast on CUDA when ``amp="bf16"``, optional gradient clipping, lr =
``optim.lr * group lr_mult * lr_factor(it)``, ``optimizer.step()``. Then (rank 0) one line in
``metrics.jsonl``: ``{"step": it + 1, "epoch", "loss", <each term>, "lr", "time", "step_time",
"throughput/steps_per_s", "throughput/clips_per_s", "memory/peak_mib"}``
(loss terms are averaged over ranks), optionally ``val/jf``, ``val/j``, ``val/f``; periodic checkpoints,
curves and DAVIS validation; the same row goes to the optional TensorBoard / W&B writers
(``log.backends``, :mod:`tritoncorr.engine.log`) with the validation masks as images. SIGINT/SIGTERM (Ctrl-C; torchrun forwards SIGTERM) finish the current
step, save a checkpoint and return (a second Ctrl-C aborts at once).

The run is a :class:`Trainer` (setup in ``__init__``, ``train_step``, ``validate``, ``save``,
``load_state``, ``run``); :func:`train` is ``Trainer(...).run()``. Its resumable state is the model,
the optimiser and one :class:`~tritoncorr.engine.checkpoint.TrainState`.

Resume is exact: weights, optimiser state, the step (the schedule is a function of it), the data
position (``loader.state_dict()``) and every rank's Python/NumPy/torch/CUDA RNG states are restored,
and ``metrics.jsonl`` is cut back to the checkpoint's step. That needs the same run layout (world
size, per-rank batch size, accumulation, data); with another one the resume warns once, listing the
differences, and continues at the same step and place in the epoch (docs/RELIABILITY.md).
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
from tritoncorr.engine.log import RunLoggers, check_backends, validation_images
from tritoncorr.engine.method import describe
from tritoncorr.engine.optim import build_optimizer, lr_factor, set_lr
from tritoncorr.provenance import record_run_session

# metrics-row fields measured from the clock or the process (they differ between identical runs)
MEASURED_FIELDS = ("time", "step_time", "throughput/steps_per_s", "throughput/clips_per_s", "memory/peak_mib")


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
        raise TypeError(
            f"{name}.forward(batch) must return a non-empty dict of named loss terms, got {type(terms).__name__}"
        )
    for k, v in terms.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor) or v.numel() != 1:
            raise TypeError(
                f"{name}.forward(batch)[{k!r}] must be a scalar tensor, got "
                f"{type(v).__name__}{tuple(v.shape) if isinstance(v, torch.Tensor) else ''}"
            )
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

    info = describe(model)
    preset = cfg.eval.preset or info.preset
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
                features_fn,
                root=cfg.eval.davis_root,
                out=out / "eval" / f"step-{step:08d}",
                split=cfg.eval.split,
                resolution=cfg.eval.resolution,
                sequences=list(cfg.eval.sequences) or None,
                config=prop_config,
                device=str(device),
                overlays=False,
                progress=False,
                color=info.color,
            )
    finally:
        model.train(was_training)
    return {"val/jf": float(scores.jf_mean), "val/j": float(scores.j_mean), "val/f": float(scores.f_mean)}


def _resume_checkpoint(out: Path, resume_from: str | None, is_main: bool) -> Path:
    """The checkpoint to resume from (verified), per ``resume_from`` (None = the newest)."""
    ckpts = ckpt_io.list_checkpoints(out)
    if not ckpts:
        where = "does not exist" if not out.exists() else "holds no complete checkpoint (ckpt-*/state.json)"
        raise ConfigError(f"--resume {out}: the folder {where}; start a new run with --out instead")
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
        hint = (
            f"; resume from an older one with --resume-from {older[-1]} (complete: {', '.join(older)})"
            if older
            else "; no older checkpoint is left"
        )
        raise ConfigError(f"{err}{hint}") from None
    if resume_from is not None and is_main:
        newer = [p for _, p in ckpts if p.name > chosen.name]
        if newer:
            aside = out / "superseded"
            aside.mkdir(exist_ok=True)
            for p in newer:
                os.replace(p, aside / p.name)
            warnings.warn(
                f"resuming from {chosen.name}: moved the newer {', '.join(p.name for p in newer)} to {aside}",
                stacklevel=4,
            )
    return chosen


_LOADER_POSITION = ("epoch", "batch")


class _NoStop:
    requested = False


class Trainer:
    """One training run, in the shape of torchtitan's ``Trainer``.

    ``__init__`` sets everything up: the process group, the model (seeded init, ``init_from``), the
    optimiser, the data loader, the run folder and, with ``resume``, the state of a checkpoint
    (:meth:`load_state`). :meth:`train_step` does one optimiser step, :meth:`validate` the periodic
    DAVIS validation, :meth:`save` one checkpoint, :meth:`run` the loop to ``stop_at`` (then the
    final checkpoint; it releases the process group). :func:`train` is ``Trainer(...).run()``.

    The resumable state is three objects: ``model`` and ``optimizer`` (tensors) and ``state``, a
    :class:`~tritoncorr.engine.checkpoint.TrainState` (step, epoch, data position, every rank's RNG
    states, the run layout, schedule, elapsed time, metrics rows). :meth:`state_dict` brings
    ``state`` up to date (collective under DDP), :meth:`save` writes all three as one checkpoint and
    :meth:`load_state` restores all three from one. A checkpoint is always at an optimiser-step
    boundary: an interrupt during gradient accumulation finishes the step (or, when it killed the
    data workers, rolls the step back), so no half-accumulated gradient is ever needed.
    """

    def __init__(
        self,
        cfg: RunConfig,
        out: Path,
        *,
        resume: bool = False,
        resume_from: str | None = None,
        stop_at: int | None = None,
        progress: bool = True,
        recipe_ref: str = "",
        on_step: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        cfg.validate()
        check_backends(cfg.log.backends)  # a missing extra fails before any work
        self.cfg = cfg
        self.out = out = Path(out)
        self.stop_at = cfg.steps if stop_at is None else int(stop_at)
        if not 1 <= self.stop_at <= cfg.steps:
            raise ConfigError(
                f"stop step {self.stop_at} must be in [1, steps={cfg.steps}] (raise steps with --set steps=N)"
            )
        if out.exists() and not out.is_dir():
            raise ConfigError(f"run folder {out} is an existing file, not a folder (choose another --out)")
        if cfg.eval.every > 0:
            if not Path(cfg.eval.davis_root).is_dir():
                raise ConfigError(
                    f"eval.davis_root {cfg.eval.davis_root!r} is not a folder (set eval.every=0 to disable)"
                )
            import tritoncorr.evaluate  # noqa: F401  (fail now rather than at the first validation)
        self.progress, self.recipe_ref, self.on_step = progress, recipe_ref, on_step
        self.info = init_distributed(cfg.device)
        self.device = self.info.device
        self.is_main = self.info.is_main
        self.resumed_from: Path | None = None
        self._bar: _Progress | None = None
        self._stop: Any = _NoStop()
        self._stop_agreed = False
        self._data_iter: Any = None
        self._term_names: list[str] | None = None
        self._step_time_ema: float | None = None
        self._session_start = time.perf_counter()
        self.loggers = RunLoggers((), out)
        self._val_images: dict[str, Any] = {}
        try:
            self._setup(resume, resume_from)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------ setup

    def _setup(self, resume: bool, resume_from: str | None) -> None:
        """Build everything a run needs, in order: the checkpoint to resume, the model and its starting
        weights, optimizer and loader, the training state, the wrapped forward, the run folder's logs."""
        out = self.out
        if resume:
            self.resumed_from = _resume_checkpoint(out, resume_from, self.is_main)
        elif ckpt_io.list_checkpoints(out):
            raise ConfigError(f"{out} already holds checkpoints; use --resume {out} or another --out")
        seed_all(self.cfg.seed)  # identical initial weights on every rank
        init_path = self._build_model()
        self.optimizer = build_optimizer(self.model, self.cfg.optim)
        self.loader = self._build_loader()
        if self.is_main and self.resumed_from is None:
            # the weights the run starts from, for comparing any checkpoint with where it began
            self._make_run_folder()
            ckpt_io.save_model_weights(out / "init.safetensors", self.model)
        self._init_state()
        self._wrap_forward()
        self.metrics_path = out / "metrics.jsonl"
        if self.is_main:
            self._open_run_log(init_path)
        if self.state.elapsed is None:  # format-1 checkpoint: the wall time of its last logged step
            self.state.elapsed = float(self.state.rows[-1].get("time", 0.0)) if self.state.rows else 0.0
        # wall time continues across resumes
        self._session_start = time.perf_counter() - self.state.elapsed
        barrier(self.info)

    def _build_model(self) -> Path | None:
        """``self.model`` on the device, from ``init_from`` when set (not on resume); returns that file."""
        cfg = self.cfg
        model = cfg.method.build()
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(cfg.method).__name__}.build() must return an nn.Module, got {type(model).__name__}")
        if cfg.eval.every > 0 and not describe(model).has_features:
            raise ConfigError(f"eval.every > 0 but {type(model).__name__} has no features(images) method")
        init_path = (
            ckpt_io.resolve_weights_option(cfg.init_from, "init_from")
            if cfg.init_from and self.resumed_from is None
            else None
        )
        if init_path is not None:
            try:
                missing, unexpected = ckpt_io.load_model_weights(model, init_path, strict=False)
            except ckpt_io.CheckpointMismatchError as err:
                raise ConfigError(f"init_from: {err}") from None
            if self.is_main and (missing or unexpected):
                warnings.warn(
                    f"init_from {cfg.init_from}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                    f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})",
                    stacklevel=4,
                )
        model.to(self.device)
        if cfg.sync_bn and self.info.distributed:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif self.is_main:
                warnings.warn(
                    "sync_bn needs CUDA (torch's SyncBatchNorm has no CPU path); using per-process BN", stacklevel=4
                )
        self.model: nn.Module = model
        return init_path

    def _init_state(self) -> None:
        """``self.state``: fresh (epoch 0, per-rank random streams) or loaded from the checkpoint to resume."""
        cfg, info = self.cfg, self.info
        batches_per_epoch = len(self.loader)
        if batches_per_epoch < 1:
            raise ConfigError("the data loader yields no batch per epoch (fewer clips than batch_size x world_size?)")
        self.steps_per_epoch = max(batches_per_epoch // cfg.optim.accumulate, 1)
        self.state = ckpt_io.TrainState(
            world_size=info.world_size,
            batch_size=_int_or_none(getattr(cfg.data, "batch_size", None)),
            accumulate=cfg.optim.accumulate,
            steps_per_epoch=self.steps_per_epoch,
            method=ckpt_io.model_method(self.model),
            schedule={"name": cfg.schedule.name, "factor": None},
            elapsed=0.0,
        )
        if self.resumed_from is not None:
            self.load_state(self.resumed_from)
        else:
            self.loader.set_epoch(0)
            seed_all(cfg.seed + 10007 * (info.rank + 1))  # per-rank streams for the method's randomness

    def _wrap_forward(self) -> None:
        """``fwd_module`` (DDP when distributed), ``fwd`` (compiled when ``cfg.compile``) and ``amp_ctx``."""
        cfg = self.cfg
        self.fwd_module: nn.Module = self.model
        if self.info.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.fwd_module = DDP(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.ddp_find_unused,
            )
        self.fwd: Callable = (
            torch.compile(self.fwd_module, backend=cfg.compile_backend) if cfg.compile else self.fwd_module
        )
        self.amp_ctx = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
            if (cfg.amp == "bf16" and self.device.type == "cuda")
            else contextlib.nullcontext
        )

    def _open_run_log(self, init_path: Path | None) -> None:
        """Main rank: the run folder's config.json, session record, metrics.jsonl (cut back to the resumed
        step, or removed on a fresh start) and the loggers."""
        cfg, out = self.cfg, self.out
        self._make_run_folder()
        ckpt_io.clean_temporaries(out)
        conf = config_to_dict(cfg)
        if self.recipe_ref:
            conf["__recipe__"] = self.recipe_ref
        ckpt_io.atomic_write_json(out / "config.json", conf)
        if self.resumed_from is not None:
            start = self.resumed_from / "model.safetensors"
        else:
            start = init_path if init_path is not None else out / "init.safetensors"
        record_run_session(out, start_step=self.state.step, device=self.device, weights=start)
        if self.resumed_from is not None:
            self.state.rows = _truncate_metrics(self.metrics_path, self.state.step)
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        self.loggers = RunLoggers(
            cfg.log.backends,
            out,
            name=out.name,
            project=cfg.log.wandb_project,
            mode=cfg.log.wandb_mode,
            config=conf,
        )

    def _make_run_folder(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"cannot create the run folder {self.out}: {err.strerror or err} (choose another --out)"
            ) from None

    def _build_loader(self) -> Any:
        """:func:`build_loader`; a data set that cannot fill a batch is a :class:`ConfigError` naming the data."""
        from tritoncorr.data.sources import DataSourceError

        try:
            return build_loader(self.cfg, self.info)
        except (ConfigError, DataSourceError):
            raise
        except ValueError as err:  # e.g. too few / too short videos for batch_size, clip_len
            data = self.cfg.data
            sizes = ", ".join(f"data.{k}={getattr(data, k)}" for k in ("batch_size", "clip_len") if hasattr(data, k))
            raise ConfigError(f"data: {err} ({sizes}; change them with --set)") from err

    # ---------------------------------------------------------------------------- state / resume

    def state_dict(self) -> ckpt_io.TrainState:
        """``state`` brought up to date: data position, every rank's RNG states (a collective under
        DDP: every rank must call it), the last step's schedule factor."""
        st = self.state
        st.loader = self.loader.state_dict()
        st.rng = gather_objects(ckpt_io.get_rng_state(), self.info)
        st.world_size = self.info.world_size
        st.schedule = {
            "name": self.cfg.schedule.name,
            "factor": lr_factor(
                max(st.step - 1, 0), self.cfg.schedule, total_steps=self.cfg.steps, steps_per_epoch=self.steps_per_epoch
            ),
        }
        return st

    def load_state(self, ckpt: Path) -> ckpt_io.TrainState:
        """Restore weights, optimiser state and :class:`TrainState` from checkpoint ``ckpt``.

        Exact when the run layout matches the checkpoint's (world size, per-rank batch size,
        accumulation, the loader's own checks such as the number of videos). Otherwise one warning
        lists every difference and the run continues: the data position is carried over as the
        number of clips already seen in the epoch, and with another world size the random streams
        are re-seeded.
        """
        cfg, info = self.cfg, self.info
        try:
            saved = ckpt_io.load_train_state(ckpt, self.model, self.optimizer)
        except ckpt_io.CheckpointMismatchError as err:
            raise ConfigError(str(err)) from None
        mine = self.state
        diffs = self._layout_differences(saved)
        loader_state = saved.loader
        if loader_state is not None:
            if diffs:
                loader_state = self._carry_position(loader_state, saved)
            with warnings.catch_warnings():
                # the differences the loader would warn about are in the one warning below
                warnings.filterwarnings("ignore", message="loader state has", category=UserWarning)
                self.loader.load_state_dict(loader_state)
        same_ranks = len(saved.rng) == info.world_size and saved.world_size == info.world_size
        if same_ranks:
            ckpt_io.set_rng_state(saved.rng[info.rank])
        else:
            diffs.append(
                f"RNG states of {len(saved.rng)} ranks for {info.world_size}: the method's random streams are re-seeded"
            )
            seed_all(cfg.seed + 7919 * (saved.step + 1) + info.rank)
        if diffs and self.is_main:
            warnings.warn(
                f"resuming {ckpt.name} cannot be exact: "
                + "; ".join(diffs)
                + ". The run continues from the same step and place in the epoch, "
                "but its batches and losses will differ from an uninterrupted run",
                stacklevel=4,
            )
        mine.step, mine.epoch, mine.elapsed = saved.step, saved.epoch, saved.elapsed
        mine.loader, mine.rng, mine.schedule = loader_state, saved.rng, saved.schedule
        if mine.step >= self.stop_at and self.is_main:
            warnings.warn(f"checkpoint is at step {mine.step} >= stop step {self.stop_at}: nothing to do", stacklevel=4)
        return mine

    def _layout_differences(self, saved: ckpt_io.TrainState) -> list[str]:
        """What differs between the checkpoint's run layout and this one's (empty: resume is exact)."""
        now = self.state
        diffs = []
        for name, before, after in (
            ("world_size", saved.world_size, now.world_size),
            ("batch_size (per rank)", saved.batch_size, now.batch_size),
            ("optim.accumulate", saved.accumulate, now.accumulate),
            ("steps per epoch", saved.steps_per_epoch, now.steps_per_epoch),
        ):
            if before is not None and after is not None and before != after:
                diffs.append(f"{name} {before} -> {after}")
        if saved.loader:
            current = self.loader.state_dict()
            for key, before in saved.loader.items():
                if key in _LOADER_POSITION or key not in current or current[key] == before:
                    continue
                if key in ("world_size", "batch_size") and any(d.startswith(key) for d in diffs):
                    continue
                diffs.append(f"data {key} {before} -> {current[key]}")
        return diffs

    def _carry_position(self, loader_state: dict[str, Any], saved: ckpt_io.TrainState) -> dict[str, Any]:
        """The loader position converted to this layout: the same number of clips seen in the epoch."""
        state = dict(loader_state)
        before = _int_or_none(state.get("batch_size", saved.batch_size))
        after = self.state.batch_size
        ws_before = int(state.get("world_size", saved.world_size) or 1)
        if "batch" in state and before and after:
            clips = int(state["batch"]) * before * ws_before
            batch = clips // (after * self.info.world_size)
            try:
                batch = min(batch, len(self.loader))
            except TypeError:
                pass
            state["batch"] = batch
        return state

    # ------------------------------------------------------------------------------- the steps

    def _next_batch(self) -> Any:
        if self._data_iter is None:
            self._data_iter = iter(self.loader)
        for _ in range(3):
            try:
                return next(self._data_iter)
            except StopIteration:
                self.state.epoch += 1
                self.loader.set_epoch(self.state.epoch)
                self._data_iter = iter(self.loader)
        raise RuntimeError("the data loader produced no batch in a new epoch")

    def train_step(self) -> dict[str, Any] | None:
        """One optimiser step (``optim.accumulate`` micro-batches); returns its metrics row.

        The step is: accumulate the micro-batches' gradients (:meth:`_accumulate`), average the loss
        terms over ranks and agree on stopping (:meth:`_reduce_losses`), clip (:meth:`_clip_gradients`),
        set the learning rate and step (:meth:`_optimizer_step`), then time and log it (:meth:`_log_step`).

        Returns None when an interrupt killed the data workers during the step (one process): the
        step is rolled back (data position, epoch, RNG states; gradients dropped) so the checkpoint
        saved next replays it.
        """
        t0 = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        # one process: remember where this step started, in case Ctrl-C kills the data workers
        # while it runs (they get SIGINT too and the next fetch fails): we then roll back and save
        snap = None if self.info.distributed else (self.loader.state_dict(), self.state.epoch, ckpt_io.get_rng_state())
        try:
            sums, clips = self._accumulate()
        except Exception:
            if snap is None or not self._stop.requested:
                raise
            self._roll_back(snap)
            return None
        values = self._reduce_losses(sums)
        grad_norm = self._clip_gradients()
        lr = self._optimizer_step()
        return self._log_step(values, lr, grad_norm, time.perf_counter() - t0, clips)

    def _accumulate(self) -> tuple[torch.Tensor, int]:
        """Forward and backward of ``optim.accumulate`` micro-batches (DDP gradient sync only on the
        last); returns the summed ``[loss, term_1, ...]`` (float32, detached) and the clip count."""
        acc = self.cfg.optim.accumulate
        sums: torch.Tensor | None = None
        clips = 0
        for micro in range(acc):
            batch = _to_device(self._next_batch(), self.device)
            clips += _batch_size(batch)
            sync = (
                self.fwd_module.no_sync() if (self.info.distributed and micro < acc - 1) else contextlib.nullcontext()
            )
            with sync:
                with self.amp_ctx():
                    terms = self.fwd(batch)
                self._check_term_names(terms)
                loss = sum(t.float() for t in terms.values())
                (loss / acc).backward()
            vals = torch.stack([loss.detach().float()] + [t.detach().float().reshape(()) for t in terms.values()])
            sums = vals if sums is None else sums + vals
        assert sums is not None
        return sums, clips

    def _check_term_names(self, terms: dict[str, torch.Tensor]) -> None:
        """The method returns the same loss terms at every step (checked in full the first time)."""
        if self._term_names is None:
            _check_terms(terms, self.model)
            self._term_names = list(terms)
        elif list(terms) != self._term_names:
            raise RuntimeError(f"loss terms changed from {self._term_names} to {list(terms)}")

    def _roll_back(self, snap: tuple[dict[str, Any], int, Any]) -> None:
        """Undo a step an interrupt cut short: data position, epoch, RNG states; gradients dropped."""
        self.loader.load_state_dict(snap[0])
        self.state.epoch = snap[1]
        ckpt_io.set_rng_state(snap[2])
        self._data_iter = None
        self.optimizer.zero_grad(set_to_none=True)

    def _reduce_losses(self, sums: torch.Tensor) -> list[float]:
        """``[loss, term_1, ...]`` averaged over micro-batches and ranks; every rank agrees whether to
        stop after this step. Raises FloatingPointError on a non-finite loss."""
        acc = self.cfg.optim.accumulate
        flag = torch.tensor([1.0 if self._stop.requested else 0.0], device=sums.device)
        vec = all_reduce_mean(torch.cat([sums / acc, flag]), self.info).cpu()
        values = vec[:-1].tolist()
        self._stop_agreed = bool(vec[-1].item() > 0)  # every rank stops after the same step
        if not math.isfinite(values[0]):
            detail = ", ".join(f"{n}={v}" for n, v in zip(self._term_names or [], values[1:]))
            raise FloatingPointError(f"non-finite loss at step {self.state.step + 1}: loss={values[0]} ({detail})")
        return values

    def _clip_gradients(self) -> float | None:
        """The total gradient norm before clipping to ``optim.grad_clip``; None when clipping is off."""
        if self.cfg.optim.grad_clip <= 0:
            return None
        return float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip))

    def _optimizer_step(self) -> float:
        """Set this step's learning rate (schedule factor of the 0-based step), step, count it; returns the lr."""
        cfg, st = self.cfg, self.state
        lr = set_lr(
            self.optimizer,
            cfg.optim.lr,
            lr_factor(st.step, cfg.schedule, total_steps=cfg.steps, steps_per_epoch=self.steps_per_epoch),
        )
        self.optimizer.step()
        st.step += 1
        return lr

    def _log_step(
        self, values: list[float], lr: float, grad_norm: float | None, dt: float, clips: int
    ) -> dict[str, Any]:
        """The step's metrics row (validation scores when due); on rank 0 appended to ``metrics.jsonl``,
        shown on the progress bar, plotted every ``curves_every`` steps and passed to ``on_step``."""
        cfg, info, st = self.cfg, self.info, self.state
        names, step = self._term_names or [], st.step
        self._step_time_ema = dt if self._step_time_ema is None else 0.9 * self._step_time_ema + 0.1 * dt
        st.elapsed = time.perf_counter() - self._session_start
        row: dict[str, Any] = {"step": step, "epoch": st.epoch, "loss": values[0]}
        row.update({n: v for n, v in zip(names, values[1:])})
        row["lr"] = lr
        if grad_norm is not None:
            row["grad_norm"] = grad_norm
        row["time"] = round(st.elapsed, 4)
        row["step_time"] = round(dt, 4)
        row["throughput/steps_per_s"] = round(1.0 / max(dt, 1e-9), 4)
        row["throughput/clips_per_s"] = round(clips * info.world_size / max(dt, 1e-9), 3)
        row["memory/peak_mib"] = round(_peak_memory_mib(self.device), 1)
        if cfg.eval.every > 0 and (step % cfg.eval.every == 0 or step == self.stop_at):
            row.update(self.validate())
        if self.is_main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            st.rows.append(row)
            self.loggers.row(row)
            self.loggers.images(step, self._val_images)
            self._val_images = {}
            if self._bar is not None:
                ema = self._step_time_ema
                self._bar.update(row, names, 1.0 / ema, clips * info.world_size / max(ema, 1e-9))
            if cfg.curves_every and step % cfg.curves_every == 0:
                plot_curves(st.rows, self.out / "curves.png", title=cfg.name)
            if self.on_step is not None:
                self.on_step(row)
        return row

    def validate(self) -> dict[str, float]:
        """DAVIS validation of the current weights on rank 0 (``val/jf``, ``val/j``, ``val/f``; ``{}``
        on the other ranks); a collective barrier. Leaves the training RNG streams untouched."""
        scores: dict[str, float] = {}
        if self.is_main:
            scores = _run_validation(self.cfg, self.model, self.out, self.state.step, self.device)
            if self.loggers:
                ev, lg = self.cfg.eval, self.cfg.log
                self._val_images = validation_images(
                    ev.davis_root,
                    self.out / "eval" / f"step-{self.state.step:08d}",
                    split=ev.split,
                    resolution=ev.resolution,
                    sequences=ev.sequences,
                    frames=lg.val_frames,
                    max_sequences=lg.val_sequences,
                )
        barrier(self.info)
        return scores

    def save(self) -> Path | None:
        """Write ``ckpt-<step>`` (weights, optimiser, :class:`TrainState`) and ``model.safetensors``;
        a collective under DDP (rank 0 writes). Returns the checkpoint folder on rank 0."""
        state = self.state_dict()
        path = None
        if self.is_main:
            path = ckpt_io.save_checkpoint(
                self.out, state.step, self.model, self.optimizer, state, keep_last=self.cfg.checkpoint.keep_last
            )
            ckpt_io.save_model_weights(self.out / "model.safetensors", self.model)
        barrier(self.info)
        return path

    def run(self) -> TrainResult:
        """Train to ``stop_at`` (periodic checkpoints, SIGINT/SIGTERM -> checkpoint and return), save
        the final checkpoint, and release the process group."""
        cfg, st = self.cfg, self.state
        try:
            start_step = st.step
            last_ckpt: Path | None = None
            interrupted = False
            if self.is_main:
                self._bar = _Progress(self.progress, self.stop_at, st.step, cfg.log_every, cfg.name)
            with _StopFlag() as stop:
                self._stop = stop
                while st.step < self.stop_at:
                    row = self.train_step()
                    if row is None:
                        interrupted = True
                        break
                    # one process: no need to agree with other ranks (a signal during on_step counts)
                    stop_now = self._stop_agreed or (not self.info.distributed and stop.requested)
                    if stop_now and st.step < self.stop_at:
                        interrupted = True
                        break
                    if cfg.checkpoint.every and st.step % cfg.checkpoint.every == 0 and st.step < self.stop_at:
                        last_ckpt = self.save()
                self._stop = _NoStop()
            if st.step > start_step or self.resumed_from is None:
                last_ckpt = self.save()
            else:
                last_ckpt = self.resumed_from
            if self.is_main:
                plot_curves(st.rows, self.out / "curves.png", title=cfg.name)
                if self._bar is not None:
                    if interrupted:
                        self._bar.log(f"interrupted: saved {last_ckpt}; continue with --resume {self.out}")
                    else:
                        self._bar.log(
                            f"done: step {st.step}, checkpoint {last_ckpt}, weights {self.out / 'model.safetensors'}"
                        )
            return TrainResult(
                out=self.out, step=st.step, interrupted=interrupted, rows=st.rows, last_checkpoint=last_ckpt
            )
        finally:
            self.close()

    def close(self) -> None:
        """Stop the progress bar and release the process group (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.loggers.close()
        shutdown(self.info)  # idempotent


def _peak_memory_mib(device: torch.device) -> float:
    """Peak memory so far in MiB: CUDA ``max_memory_allocated`` on a GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


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

    ``Trainer(cfg, out, ...).run()``. ``resume``: continue from the highest complete checkpoint in
    ``out`` (exactly; see the module doc), after checking its files against the sizes and hashes
    recorded in its ``state.json``; a damaged one stops with an error naming the file.
    ``resume_from`` (``"ckpt-00000400"`` or ``"400"``) picks an older checkpoint instead; the newer
    ones are moved to ``out/superseded/`` so that they are kept but not resumed from again.
    ``stop_at`` <= ``cfg.steps`` stops early without changing the schedule (its horizon is ``cfg.steps``).
    """
    trainer = Trainer(
        cfg,
        out,
        resume=resume,
        resume_from=resume_from,
        stop_at=stop_at,
        progress=progress,
        recipe_ref=recipe_ref,
        on_step=on_step,
    )
    return trainer.run()

"""Experiment trackers beside ``metrics.jsonl``: optional TensorBoard and Weights & Biases writers.

``metrics.jsonl`` (written by the loop, one JSON row per optimiser step) is the source of truth;
the trackers only mirror it, so a run without them loses nothing. They are chosen in the recipe
(``RunConfig.log.backends``) or on the command line (``--set log.backends=[tensorboard]``) and need
their extras: ``pip install "tritoncorr[tb]"`` (TensorBoard) or ``"tritoncorr[wandb]"``. Asking for
one that is not installed is a :class:`~tritoncorr.engine.config.ConfigError` naming the extra.

What is written, per optimiser step (rank 0 only):

* every numeric field of the metrics row under the same name, with ``train/`` in front of names
  that have no ``/`` of their own: ``train/loss``, ``train/<term>``, ``train/lr``,
  ``train/grad_norm``, ``train/step_time`` (seconds), ``throughput/steps_per_s``,
  ``throughput/clips_per_s``, ``memory/peak_mib``, ``val/jf`` ...;
* at each validation, ``val/masks/<sequence>``: a strip of a few frames with the propagated masks
  drawn over them (uint8 ``(H, N*W, 3)``, :func:`tritoncorr.visualize.overlay_strip`).
"""

from __future__ import annotations

import importlib.util
import math
import secrets
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tritoncorr.engine.config import ConfigError

BACKENDS = {"tensorboard": "tb", "wandb": "wandb"}  # backend -> the extra that installs it
NOT_LOGGED = {"step", "epoch", "time"}

__all__ = ["BACKENDS", "RunLoggers", "TensorBoardWriter", "WandbWriter", "check_backends", "tag_for"]


def tag_for(name: str) -> str:
    """The tracker tag of a metrics-row field: ``loss`` -> ``train/loss``; ``val/jf`` stays ``val/jf``."""
    return name if "/" in name else f"train/{name}"


def _missing(backend: str, module: str) -> ConfigError:
    return ConfigError(
        f"log.backends asks for {backend!r} but the {module!r} package is not installed: "
        f'pip install "tritoncorr[{BACKENDS[backend]}]" (or drop it from log.backends)'
    )


def check_backends(backends: tuple[str, ...] | list[str]) -> None:
    """Raise :class:`ConfigError` for an unknown backend or one whose package is missing (before any work)."""
    for b in backends:
        if b not in BACKENDS:
            raise ConfigError(f"log.backends: unknown backend {b!r}; choose from {sorted(BACKENDS)}")
        module = "tensorboard" if b == "tensorboard" else "wandb"
        if importlib.util.find_spec(module) is None:
            raise _missing(b, module)


class Writer(Protocol):
    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def images(self, step: int, images: dict[str, np.ndarray]) -> None: ...

    def close(self) -> None: ...


class TensorBoardWriter:
    """Event files under ``<run>/tensorboard/`` (``tensorboard --logdir <run>``), via torch's SummaryWriter."""

    def __init__(self, out: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(out) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, global_step=step)
        self.writer.flush()

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        for tag, img in images.items():
            self.writer.add_image(tag, np.asarray(img), global_step=step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbWriter:
    """A W&B run in ``<run>/wandb/`` named after the run folder; the resolved config is its config.

    ``mode``: ``online``, ``offline`` (sync later with ``wandb sync``) or ``disabled``. The run id is
    kept in ``<run>/wandb/run_id`` so that ``--resume`` continues the same W&B run.
    """

    def __init__(self, out: Path, *, name: str, project: str, mode: str, config: dict[str, Any]):
        import wandb

        out = Path(out)
        (out / "wandb").mkdir(parents=True, exist_ok=True)
        id_file = out / "wandb" / "run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id)
        self.wandb = wandb
        self.run = wandb.init(
            project=project, name=name, id=run_id, resume="allow", dir=str(out), mode=mode, config=config
        )

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        self.run.log({tag: self.wandb.Image(np.asarray(img)) for tag, img in images.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class RunLoggers:
    """The trackers of one run (possibly none): ``row(step_row)``, ``images(step, {tag: image})``, ``close()``.

    Args:
        backends: names from :data:`BACKENDS`.
        out: the run folder.
        name, project, mode: W&B run name, project and mode.
        config: the resolved run config as a dict (W&B's run config).
    """

    def __init__(
        self,
        backends,
        out: Path,
        *,
        name: str = "run",
        project: str = "tritoncorr",
        mode: str = "online",
        config: dict[str, Any] | None = None,
    ):
        check_backends(backends)
        self.writers: list[Writer] = []
        for b in dict.fromkeys(backends):  # once each, in order
            if b == "tensorboard":
                self.writers.append(TensorBoardWriter(out))
            else:
                self.writers.append(WandbWriter(out, name=name, project=project, mode=mode, config=config or {}))

    def __bool__(self) -> bool:
        return bool(self.writers)

    def row(self, row: dict[str, Any]) -> None:
        """Mirror one ``metrics.jsonl`` row (its finite numeric fields) at its ``step``."""
        if not self.writers:
            return
        values = {
            tag_for(k): float(v)
            for k, v in row.items()
            if k not in NOT_LOGGED and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        for w in self.writers:
            w.scalars(int(row["step"]), values)

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        if images:
            for w in self.writers:
                w.images(step, images)

    def close(self) -> None:
        for w in self.writers:
            w.close()
        self.writers = []


def validation_images(
    davis_root: str | Path,
    pred_dir: str | Path,
    *,
    split: str = "val",
    resolution: str = "480p",
    sequences=None,
    frames: int = 4,
    max_sequences: int = 2,
) -> dict[str, np.ndarray]:
    """``{"val/masks/<seq>": strip}`` for the first ``max_sequences`` validated sequences: ``frames``
    evenly spaced frames with the propagated masks of ``<pred_dir>/<seq>/<frame>.png`` drawn over them
    (height 240)."""
    from tritoncorr.evals.davis import DavisDataset, read_index_png
    from tritoncorr.visualize import overlay_strip

    if frames <= 0 or max_sequences <= 0:
        return {}
    ds = DavisDataset(davis_root, split, resolution, list(sequences) if sequences else None)
    out = {}
    for seq in list(ds)[:max_sequences]:
        idx = np.unique(np.linspace(0, len(seq) - 1, num=min(frames, len(seq))).round().astype(int))
        pngs = [Path(pred_dir) / seq.name / f"{seq.frame_ids[t]}.png" for t in idx]
        if not all(p.is_file() for p in pngs):
            continue
        out[f"val/masks/{seq.name}"] = overlay_strip(
            [seq.load_frame(int(t)) for t in idx], [read_index_png(p) for p in pngs], height=240
        )
    return out

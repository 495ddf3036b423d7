"""Checkpoints: safetensors for tensors, a small JSON for everything else, written atomically.

Layout of a run folder::

    <run>/config.json                 the resolved RunConfig
    <run>/metrics.jsonl               one line per step
    <run>/curves.png                  training curves
    <run>/model.safetensors           the latest weights (method state dict, e.g. ``backbone.*``)
    <run>/ckpt-00001000/model.safetensors      method state dict
    <run>/ckpt-00001000/optimizer.safetensors  optimiser tensors, keys ``state.<param index>.<name>``
    <run>/ckpt-00001000/state.json             the run's TrainState (step, epoch, data position,
                                               every rank's RNG states, layout, schedule), the
                                               optimiser's param groups and non-tensor state, and
                                               the size + SHA-256 of each tensor file

A checkpoint is written into ``<run>/.tmp-ckpt-...`` and renamed to ``ckpt-<step:08d>`` when complete
(``os.replace``), so a folder named ``ckpt-*`` with a ``state.json`` is always whole; single files are
written to a temporary name and renamed the same way. ``latest`` = the highest complete step found by
scanning the folder. A process killed at any point of a write therefore leaves the previous
checkpoint as the newest complete one.

``state.json`` records the size and SHA-256 of each tensor file (``"files"``); :func:`verify_checkpoint`
checks them before a resume, so a file truncated or damaged later (a full disk, a bad copy) is
reported with its path (:class:`CheckpointCorruptError`) instead of loading garbage. An older
checkpoint is then used only when the user names it (``tritoncorr train --resume DIR --resume-from ckpt-N``).

The non-tensor state of a run is one :class:`TrainState`; ``save_checkpoint`` writes it whole and
:func:`load_train_state` restores it whole (weights and optimiser included). State format 2 adds
the run layout (``batch_size``, ``accumulate``, ``steps_per_epoch``), ``elapsed`` and ``method`` to
format 1's keys (``step``, ``epoch``, ``loader``, ``rng``, ``world_size``, ``schedule``); a format-1
checkpoint loads with those fields unknown (``None``: not compared on resume). A checkpoint whose
weights do not fit the model (another method or architecture) raises :class:`CheckpointMismatchError`
naming the file, both methods and the first differing keys, instead of torch's key listing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

CKPT_RE = re.compile(r"^ckpt-(\d{8,})$")
FORMAT_VERSION = 2


def ckpt_name(step: int) -> str:
    return f"ckpt-{step:08d}"


class CheckpointCorruptError(ValueError):
    """A checkpoint file whose size or SHA-256 differs from what its ``state.json`` recorded."""


class CheckpointMismatchError(ValueError):
    """A checkpoint (or ``init_from`` weights) of another method or architecture than the model."""


@dataclass
class TrainState:
    """Everything a run needs to continue besides its tensors (weights, optimiser state).

    ``Trainer`` keeps one; a checkpoint's ``state.json`` is :meth:`to_dict` plus the optimiser's
    non-tensor state and the file digests.

    * ``step``: optimiser steps done (the learning rate is a function of it).
    * ``epoch``: the data epoch the next batch comes from.
    * ``loader``: ``loader.state_dict()`` (epoch, batches already yielded in it, and the settings the
      loader checks on resume: seed, world_size, batch_size, ...).
    * ``rng``: every rank's Python / NumPy / torch / CUDA RNG states, indexed by rank.
    * ``world_size``, ``batch_size`` (clips per rank and micro-batch), ``accumulate``,
      ``steps_per_epoch``: the run's layout; resuming with another one cannot be exact (``None``:
      unknown, format 1).
    * ``schedule``: ``{"name", "factor"}`` of the last step's learning rate (for reading; the lr is
      recomputed from ``step``).
    * ``elapsed``: training wall time in seconds so far (the metrics' ``time`` continues).
    * ``method``: the model's ``method_name`` (or class name), to recognise another method's checkpoint.
    * ``rows``: the metrics rows so far (rank 0); not in ``state.json``: their home is
      ``metrics.jsonl``, which a resume cuts back to ``step``.
    """

    step: int = 0
    epoch: int = 0
    loader: dict[str, Any] | None = None
    rng: list[dict[str, Any]] = field(default_factory=list)
    world_size: int = 1
    batch_size: int | None = None
    accumulate: int | None = None
    steps_per_epoch: int | None = None
    schedule: dict[str, Any] = field(default_factory=dict)
    elapsed: float | None = None
    method: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)

    _PERSISTED = (
        "step",
        "epoch",
        "loader",
        "rng",
        "world_size",
        "batch_size",
        "accumulate",
        "steps_per_epoch",
        "schedule",
        "elapsed",
        "method",
    )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready part written into ``state.json`` (everything but ``rows``)."""
        return {k: getattr(self, k) for k in self._PERSISTED}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        """Rebuild from a ``state.json`` dict (format 1 or 2; other keys are ignored)."""
        kw = {k: data[k] for k in cls._PERSISTED if k in data}
        state = cls(**kw)
        state.step, state.epoch = int(state.step), int(state.epoch)
        state.world_size = int(state.world_size or 1)
        state.rng = list(state.rng or [])
        state.schedule = dict(state.schedule or {})
        return state


def file_digest(path: Path) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"size": Path(path).stat().st_size, "sha256": h.hexdigest()}


def verify_checkpoint(ckpt: Path) -> dict[str, Any]:
    """Check every file ``state.json`` lists against its recorded size and hash; return the state.

    Raises:
        FileNotFoundError: no ``state.json`` (not a complete checkpoint).
        CheckpointCorruptError: a listed file is missing, or its size or SHA-256 differs (names the file).
    """
    ckpt = Path(ckpt)
    state_path = ckpt / "state.json"
    if not state_path.is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (no state.json)")
    try:
        state = json.loads(state_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointCorruptError(f"{state_path} is not valid JSON: {err}") from err
    for name, want in (state.get("files") or {}).items():
        path = ckpt / name
        if not path.is_file():
            raise CheckpointCorruptError(f"checkpoint file {path} is missing")
        size = path.stat().st_size
        if size != want["size"]:
            raise CheckpointCorruptError(
                f"checkpoint file {path} has {size} bytes, {want['size']} were written (truncated or damaged)"
            )
        if file_digest(path)["sha256"] != want["sha256"]:
            raise CheckpointCorruptError(
                f"checkpoint file {path} does not match the SHA-256 recorded when it was written (damaged)"
            )
    return state


# --------------------------------------------------------------------------------------- atomic IO


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _tensor_dict_for_save(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors sharing storage and non-contiguous ones: store independent copies
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in sd.items()}


def save_model_weights(path: Path, model: nn.Module) -> None:
    """Write ``model.state_dict()`` (tensors only) to ``path`` as safetensors, atomically.

    The metadata records the method, its input colour, its inference preset and its config
    (:func:`tritoncorr.engine.method.method_metadata`), so ``eval`` picks the right features.
    """
    from tritoncorr.engine.method import method_metadata

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    sd = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    save_file(_tensor_dict_for_save(sd), str(tmp), metadata={"format": "pt", **method_metadata(model)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def resolve_weights_path(path: Path) -> Path:
    """A ``.safetensors`` file, or a run / checkpoint folder -> its ``model.safetensors``."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return path / "model.safetensors"
        ck = latest_checkpoint(path)
        if ck is not None:
            return ck / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist (expected a .safetensors file or a run/checkpoint folder)"
        )
    raise FileNotFoundError(f"no model weights at {path} (expected a .safetensors file or a run/checkpoint folder)")


def resolve_weights_option(spec: str, option: str) -> Path:
    """A training option that names weights (``init_from``, ``method.teacher_weights``, ...) -> a local file.

    ``spec`` is what ``--checkpoint`` takes everywhere: a file, a run or checkpoint folder, a published
    name (``tritoncorr weights list``; downloaded and converted once), an ``https://`` URL or
    ``hf://OWNER/REPO/PATH``. Raises :class:`ConfigError` naming ``option`` when it resolves to nothing.
    """
    from tritoncorr.engine.config import ConfigError
    from tritoncorr.weights import WeightsError, resolve_checkpoint

    try:
        return resolve_weights_path(resolve_checkpoint(spec))
    except (WeightsError, FileNotFoundError) as err:
        raise ConfigError(f"{option}: {err}") from None


def load_model_weights(model: nn.Module, path: Path, *, strict: bool = True) -> tuple[list[str], list[str]]:
    """Load safetensors weights into ``model``; returns (missing, unexpected) keys (empty when strict).

    Raises :class:`CheckpointMismatchError` (naming the file) when a tensor has another shape, when
    ``strict`` and keys differ, or when no key at all matches (weights of another method).
    """
    file = resolve_weights_path(path)
    sd = load_file(str(file))
    problem = weights_mismatch(model, sd, strict=strict)
    if problem:
        raise CheckpointMismatchError(
            f"weights {file} do not fit {type(model).__name__}: {_describe_origin(file, model)}{problem}"
        )
    result = model.load_state_dict(sd, strict=strict)
    return list(result.missing_keys), list(result.unexpected_keys)


# ------------------------------------------------------------------------------------- RNG states


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as JSON-ready values."""
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], np.asarray(npst[1], dtype=np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(_unb64(state["torch"]))
    if state.get("cuda") and torch.cuda.is_available():
        cuda = [_unb64(s) for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# -------------------------------------------------------------------------------- optimiser state


def _split_optimizer_state(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    meta = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    for idx, d in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(d)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------------ checkpoints


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``run_dir`` as ``[(step, path)]`` sorted by step."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    out = []
    for p in run_dir.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(path: Path) -> Path | None:
    """``path`` itself if it is a checkpoint folder, else the run folder's highest complete checkpoint."""
    path = Path(path)
    if (path / "state.json").is_file() and CKPT_RE.match(path.name):
        return path
    ckpts = list_checkpoints(path)
    return ckpts[-1][1] if ckpts else None


def clean_temporaries(run_dir: Path) -> None:
    """Remove half-written checkpoint folders left by a crash."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        for p in run_dir.iterdir():
            if p.name.startswith(".tmp-ckpt-") or p.name.startswith(".old-ckpt-"):
                shutil.rmtree(p, ignore_errors=True)
            elif p.is_file() and p.name.startswith(".") and ".tmp-" in p.name:  # a single file's atomic write
                p.unlink(missing_ok=True)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: TrainState | dict[str, Any],
    *,
    keep_last: int = 3,
) -> Path:
    """Write ``<run_dir>/ckpt-<step:08d>/`` atomically and prune to the last ``keep_last`` checkpoints.

    ``state``: the run's :class:`TrainState` (or any JSON-ready dict); it is stored with the
    optimiser's param groups and non-tensor state in ``state.json``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / ckpt_name(step)
    tmp = run_dir / f".tmp-{ckpt_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model_weights(tmp / "model.safetensors", model)
    full_state = state.to_dict() if isinstance(state, TrainState) else dict(state)
    full_state["step"] = int(step)
    full_state["format"] = FORMAT_VERSION
    if optimizer is not None:
        tensors, meta = _split_optimizer_state(optimizer.state_dict())
        save_file(_tensor_dict_for_save(tensors), str(tmp / "optimizer.safetensors"))
        full_state["optimizer"] = meta
    full_state["files"] = {p.name: file_digest(p) for p in sorted(tmp.glob("*.safetensors"))}
    atomic_write_json(tmp / "state.json", full_state)
    _fsync_dir(tmp)
    if final.exists():  # the same step saved twice (e.g. interrupt right after a periodic save)
        old = run_dir / f".old-{ckpt_name(step)}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(run_dir)
    for _, p in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    return final


def load_checkpoint(
    ckpt: Path, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Verify (:func:`verify_checkpoint`), then load weights into ``model``, optimiser state into
    ``optimizer``; return the JSON state."""
    ckpt = Path(ckpt)
    state = verify_checkpoint(ckpt)
    if model is not None:
        path = ckpt / "model.safetensors"
        sd = load_file(str(path))
        problem = weights_mismatch(model, sd)
        if problem:
            raise CheckpointMismatchError(
                f"checkpoint {path} does not fit this run's model: {_describe_origin(path, model)}{problem}"
            )
        model.load_state_dict(sd, strict=True)
    if optimizer is not None:
        if "optimizer" not in state:
            raise ValueError(f"{ckpt} holds no optimiser state")
        tensors = load_file(str(ckpt / "optimizer.safetensors"))
        try:
            optimizer.load_state_dict(_join_optimizer_state(tensors, state["optimizer"]))
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointMismatchError(
                f"checkpoint {ckpt / 'optimizer.safetensors'} does not fit this run's "
                f"optimiser ({type(optimizer).__name__}): {err}"
            ) from None
    return state


def load_train_state(
    ckpt: Path, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None
) -> TrainState:
    """:func:`load_checkpoint` (verified weights and optimiser state) returning the :class:`TrainState`.

    Raises :class:`CheckpointMismatchError` when the checkpoint records another method than
    ``model``'s (``method_name``), before touching the model.
    """
    ckpt = Path(ckpt)
    state = TrainState.from_dict(verify_checkpoint(ckpt))
    if model is not None and state.method and state.method != model_method(model):
        raise CheckpointMismatchError(
            f"checkpoint {ckpt} was written by method {state.method!r}, this run trains "
            f"{model_method(model)!r}; resume it with its own recipe, or start this one "
            "in another --out"
        )
    load_checkpoint(ckpt, model, optimizer)
    return state


def model_method(model: nn.Module) -> str:
    """``model.method_name`` ("dul", "stt", ...) or, for modules that declare none, the class name."""
    from tritoncorr.engine.method import describe

    return describe(model).name or type(model).__name__


def weights_mismatch(model: nn.Module, sd: dict[str, torch.Tensor], *, strict: bool = True) -> str:
    """ "" when ``sd`` loads into ``model``; else a one-line summary (missing, unexpected and
    wrong-shape keys with examples). ``strict=False`` only requires matching shapes and one common key."""
    own = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} tensors of another shape (e.g. {', '.join(shapes[:2])})")
    if strict or len(missing) == len(own):
        if missing:
            parts.append(f"{len(missing)} of the model's {len(own)} keys missing (e.g. {', '.join(missing[:3])})")
        if unexpected and strict:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    return "; ".join(parts)


def _describe_origin(path: Path, model: nn.Module) -> str:
    """ "it holds a 'dul' model, this run trains 'stt': " when the file records its method."""
    try:
        from tritoncorr.engine.method import read_metadata

        theirs = read_metadata(path).get("tritoncorr.method")
    except Exception:  # noqa: BLE001 - only a better message
        theirs = None
    mine = model_method(model)
    if theirs and theirs != mine:
        return f"it holds a {theirs!r} model, this run trains {mine!r}; "
    return f"another architecture than this run's {type(model).__name__}; "

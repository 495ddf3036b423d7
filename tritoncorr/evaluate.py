"""DAVIS-2017 semi-supervised evaluation of a feature extractor by label propagation.

* :func:`evaluate_features_on_davis` is the reusable core (the CLI and the training engine's periodic
  validation call it): features of every frame -> first-frame labels propagated through the video ->
  indexed PNGs -> J&F exactly as the official toolkit, CSVs.
* :func:`eval_davis_cli` is ``tritoncorr eval davis``.

Inference follows DUL (``methods/dul.md`` section 3): frames at native resolution, ImageNet
normalisation, features L2-normalised over channels, one frame at a time; first-frame one-hot labels
(channel 0 background, channel k = object id k) bilinearly (align_corners=True) point-sampled to the
feature grid; propagated soft labels bilinearly upsampled to the annotation size, argmax over all
channels -> ids. The frame-0 output is the downsampled-then-upsampled ground truth.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tritoncorr.evals.davis import (
    GLOBAL_COLUMNS,
    VOID,
    DavisDataset,
    DavisFormatError,
    DavisScores,
    evaluate_results,
    write_palette_png,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_COLORS = ("rgb", "lab")
SYNTHETIC_DEFAULTS = dict(num_sequences=3, num_frames=12, height=240, width=432, seed=0)

__all__ = [
    "DavisScores",
    "default_davis_root",
    "eval_davis_cli",
    "evaluate_features_on_davis",
    "frame_to_tensor",
    "propagate_sequence",
    "synthetic_davis_root",
]


def frame_to_tensor(frame: np.ndarray, device: torch.device | str = "cpu", color: str = "rgb") -> torch.Tensor:
    """uint8 RGB ``(H, W, 3)`` -> float32 ``(1, 3, H, W)`` on ``device`` in the model's input colour space.

    ``color="rgb"``: ImageNet-normalised RGB (DUL, CRW, MoCo); ``"lab"``: OpenCV-float Lab normalised as
    ``((L - 50) / 50, a / 127, b / 127)`` (MAST, STT, LIIR).
    """
    if color not in INPUT_COLORS:
        raise ValueError(f"color must be one of {INPUT_COLORS}, got {color!r}")
    if color == "lab":
        from tritoncorr.data.transforms import lab_normalize, rgb_uint8_to_lab

        x = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1)
        return lab_normalize(rgb_uint8_to_lab(x)).float().unsqueeze(0)
    x = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def _resolve_config(config):
    if config is not None:
        return config
    from tritoncorr.propagation import PRESETS

    return PRESETS["dul"]


def _config_kwargs(config) -> dict:
    """Keyword arguments of ``propagate`` from a ``PropagationConfig`` (all its fields)."""
    if hasattr(config, "as_kwargs"):
        return dict(config.as_kwargs())
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    raise TypeError(f"config must be a PropagationConfig, got {type(config).__name__}")


@torch.no_grad()
def propagate_sequence(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    frames: Sequence[np.ndarray] | Callable[[int], np.ndarray],
    num_frames: int,
    first_ids: np.ndarray,
    config,
    device: torch.device | str = "cpu",
    on_frame: Callable[[int], None] | None = None,
    color: str = "rgb",
) -> Callable[[int], np.ndarray]:
    """Propagate the first-frame ids through a video.

    Args:
        features_fn: ``(1, 3, H, W)`` frame in the ``color`` space -> ``(1, C, h, w)`` features (not yet normalised).
        frames: frame ``t`` as uint8 ``(H, W, 3)``: a sequence or a loader ``t -> frame``.
        num_frames: T.
        first_ids: uint8 ``(H, W)`` object ids of frame 0 (255 = void, treated as background).
        config: a ``PropagationConfig``; besides the propagation itself its fields choose feature
            L2-normalisation (``normalize``), frame padding (``pad``: right/bottom with 0 to a multiple),
            the first-frame label encoding (``label_downsample``) and the output decoding
            (``upsample_align_corners``, ``minmax``; upsampled to the padded size, then cropped).
        device: where features and propagation live.
        on_frame: called with ``t`` after the features of frame ``t`` are computed (progress).
        color: the model's input colour space (:func:`frame_to_tensor`).

    Returns:
        ``ids_at(t) -> uint8 (H, W)``: the predicted ids of frame ``t`` (upsampled and argmaxed lazily,
        so only the ``(T, L, h, w)`` soft labels are kept in memory).
    """
    from tritoncorr.propagation import PropagationConfig, decode_labels, encode_labels, propagate

    # the preset decides: feature normalisation, frame padding, label encoding/decoding, feedback
    cfg = config if isinstance(config, PropagationConfig) else PropagationConfig(**_config_kwargs(config))
    load = frames if callable(frames) else (lambda t: frames[t])
    ids0 = np.where(first_ids == VOID, 0, first_ids).astype(np.int64)
    H, W = ids0.shape
    Hp, Wp = -(-H // cfg.pad) * cfg.pad, -(-W // cfg.pad) * cfg.pad  # LIIR: right/bottom to a multiple of 4
    n_labels = int(ids0.max()) + 1
    feats = None
    for t in range(num_frames):
        frame = load(t)
        if frame.shape[:2] != (H, W):
            raise DavisFormatError(f"frame {t} is {frame.shape[1]}x{frame.shape[0]}, the first mask is {W}x{H}")
        x = frame_to_tensor(frame, device, color)
        if (Hp, Wp) != (H, W):
            x = F.pad(x, (0, Wp - W, 0, Hp - H))  # 0 in the normalised input space (Lab: L* = 50 grey)
        f = features_fn(x)
        if f.dim() != 4 or f.shape[0] != 1:
            raise ValueError(f"features_fn must return (1, C, h, w) for one frame, got {tuple(f.shape)}")
        f = f.float()
        if cfg.normalize:
            f = F.normalize(f, dim=1)
        f = f[0]
        if feats is None:
            feats = torch.empty((num_frames, *f.shape), dtype=torch.float32, device=f.device)
        feats[t] = f
        if on_frame is not None:
            on_frame(t)
    h, w = feats.shape[-2:]
    ids0_t = torch.from_numpy(ids0).to(feats.device)
    if (Hp, Wp) != (H, W):
        ids0_t = F.pad(ids0_t, (0, Wp - W, 0, Hp - H))  # padded annotation: background
    first = encode_labels(ids0_t, n_labels, (h, w), cfg.label_downsample)
    soft = propagate(feats, first, image_size=(Hp, Wp), **cfg.as_kwargs())
    if tuple(soft.shape) != (num_frames, n_labels, h, w):
        raise RuntimeError(f"propagate returned {tuple(soft.shape)}, expected {(num_frames, n_labels, h, w)}")
    soft = soft.clone()
    soft[0] = first  # DUL: the frame-0 output is the downsampled ground truth

    def ids_at(t: int) -> np.ndarray:
        up = decode_labels(soft[t], (Hp, Wp), align_corners=cfg.upsample_align_corners, minmax=cfg.minmax)
        return up[:, :H, :W].argmax(0).to(torch.uint8).cpu().numpy()

    return ids_at


@torch.no_grad()
def evaluate_features_on_davis(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    root: str | Path,
    out: str | Path,
    split: str = "val",
    resolution: str = "480p",
    sequences: Sequence[str] | None = None,
    config=None,
    device: torch.device | str = "cpu",
    overlays: bool = False,
    progress: bool = True,
    color: str = "rgb",
) -> DavisScores:
    """Propagate the first-frame masks of every sequence with ``features_fn`` and score the result.

    Args:
        features_fn: ``images (N, 3, H, W)`` float32 on ``device`` in the ``color`` space -> ``(N, C, h, w)``;
            called with N = 1 (one frame at a time) under ``torch.no_grad()``; put the model in eval
            mode first. The output is L2-normalised over channels here.
        root: DAVIS root (every frame annotated, as J&F scoring requires).
        out: PNGs go to ``<out>/<seq>/<frame>.png``, CSVs to ``<out>``, overlays to ``<out>/overlays/<seq>/``.
        split, resolution, sequences: which sequences.
        config: ``PropagationConfig``; default ``PRESETS["dul"]``.
        device: where features and propagation run.
        overlays: also write ``<out>/overlays/<seq>/<frame>.jpg``.
        progress: rich progress bar (frames of all sequences).
        color: the model's input colour space, ``"rgb"`` (ImageNet-normalised) or ``"lab"`` (:func:`frame_to_tensor`).

    Returns:
        :class:`DavisScores` (``jf_mean``, ``j_mean``, ``f_mean``, ... and per-object rows).
    """
    config = _resolve_config(config)
    out = Path(out)
    ds = DavisDataset(root, split, resolution, sequences, require_all_masks=True)
    _config_kwargs(config)  # a bad config fails before any feature is computed
    device = torch.device(device)
    bar = _progress(progress)
    with bar:
        task = None
        if bar is not _NULL:
            task = bar.add_task("propagating", total=sum(len(s) for s in ds), seq="", seqs=f"0/{len(ds)}")
        for i, seq in enumerate(ds):
            on_frame = None
            if task is not None:
                bar.update(task, seq=seq.name, seqs=f"{i + 1}/{len(ds)}")
                on_frame = lambda t: bar.advance(task)  # noqa: E731
            ids_at = propagate_sequence(
                features_fn, seq.load_frame, len(seq), seq.load_mask(0), config, device, on_frame=on_frame,
                color=color,
            )
            for t, fid in enumerate(seq.frame_ids):
                ids = ids_at(t)
                write_palette_png(out / seq.name / f"{fid}.png", ids)
                if overlays:
                    from tritoncorr.visualize import save_overlay

                    save_overlay(out / "overlays" / seq.name / f"{fid}.jpg", seq.load_frame(t), ids)
    scores = evaluate_results(ds.root, out, split, resolution, ds.names, progress=False)
    scores.write_csvs(out)
    return scores


class _NullProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NULL = _NullProgress()


def _progress(enabled: bool):
    if not enabled:
        return _NULL
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description} sequence {task.fields[seqs]} {task.fields[seq]}"), BarColumn(),
                    MofNCompleteColumn(), TextColumn("frames"), TimeElapsedColumn())


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def _data_home() -> Path:
    from tritoncorr.data.config import data_home

    return data_home()


def default_davis_root() -> Path | None:
    """``$TRITONCORR_DATA/DAVIS`` or ``~/.cache/tritoncorr/DAVIS`` when it exists, else None."""
    candidates = []
    if os.environ.get("TRITONCORR_DATA"):
        candidates.append(Path(os.environ["TRITONCORR_DATA"]).expanduser() / "DAVIS")
    candidates.append(Path("~/.cache/tritoncorr/DAVIS").expanduser())
    for c in candidates:
        if c.is_dir():
            return c
    return None


def synthetic_davis_root(create: bool = True) -> Path:
    """The generated synthetic set (``<data home>/synthetic-davis``), written once (atomically) on first use."""
    from tritoncorr.evals.synthetic import make_synthetic_davis

    root = _data_home() / "synthetic-davis"
    if (root / "ImageSets" / "2017" / "val.txt").is_file() or not create:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-davis-", dir=root.parent))
    try:
        make_synthetic_davis(tmp, **SYNTHETIC_DEFAULTS)
        try:
            tmp.rename(root)
        except OSError:  # another process won the race, or a partial folder exists
            if not (root / "ImageSets" / "2017" / "val.txt").is_file():
                shutil.rmtree(root, ignore_errors=True)
                tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _fail(msg: str):
    import typer

    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code=2)


def _print_scores(console, scores: DavisScores, title: str) -> None:
    from rich.table import Table

    g = Table(title=f"{title}: global ({len(scores.objects)} objects)")
    row = scores.global_row()
    for c in GLOBAL_COLUMNS:
        g.add_column(c, justify="right")
    g.add_row(*(f"{row[c]:.3f}" for c in GLOBAL_COLUMNS))
    console.print(g)
    s = Table(title=f"{title}: per sequence")
    for c, j in (("Sequence", "left"), ("J-Mean", "right"), ("F-Mean", "right")):
        s.add_column(c, justify=j)
    for name, jm, fm in scores.per_sequence_rows():
        s.add_row(name, f"{jm:.3f}", f"{fm:.3f}")
    console.print(s)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        _fail(f"--device {device}: CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError:
        _fail(f"--device must be cpu, cuda or auto, got {device!r}")


def eval_davis_cli(
    *,
    root: Path | None,
    results: Path | None,
    checkpoint: Path | None,
    seed: int,
    out: Path | None,
    split: str,
    resolution: str,
    sequences: list[str] | None,
    preset: str | None,
    context: int | None,
    radius: float | None,
    topk: int | None,
    temperature: float | None,
    overlays: bool,
    device: str,
) -> DavisScores:
    """``tritoncorr eval davis``: score existing results (``--results``) or propagate with a backbone and score."""
    from rich.console import Console

    console = Console()
    sequences = list(sequences) if sequences else None
    t0 = time.perf_counter()

    if results is not None:
        if root is None:
            root = default_davis_root()
            if root is None:
                _fail("--results needs the ground truth: pass --root (no DAVIS found under $TRITONCORR_DATA/DAVIS "
                      "or ~/.cache/tritoncorr/DAVIS)")
        try:
            scores = evaluate_results(root, results, split, resolution, sequences, progress=True)
        except DavisFormatError as err:
            _fail(str(err))
        g_path, s_path = scores.write_csvs(results)
        _print_scores(console, scores, f"DAVIS-2017 {split} ({root})")
        console.print(f"wrote {g_path} and {s_path}  ({time.perf_counter() - t0:.1f} s)")
        return scores

    synthetic = False
    if root is None:
        root = default_davis_root()
        if root is None:
            root = synthetic_davis_root()
            synthetic = True
    if not Path(root).is_dir():
        _fail(f"DAVIS root {root} does not exist")

    dev = _resolve_device(device)
    from tritoncorr.methods.inference import load_feature_model

    try:
        fmodel = load_feature_model(checkpoint, seed=seed, device=dev)
    except (FileNotFoundError, ValueError, TypeError) as err:
        _fail(str(err))

    from tritoncorr.propagation import PRESETS

    if preset is None:
        preset = fmodel.preset
    if preset not in PRESETS:
        _fail(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if radius is not None:
        if float(radius) != int(radius):
            _fail(f"--radius must be a whole number of feature cells, got {radius}")
        radius = int(radius)
    overrides = {k: v for k, v in dict(context=context, radius=radius, topk=topk, temperature=temperature).items()
                 if v is not None}
    try:
        config = dataclasses.replace(PRESETS[preset], **overrides)
    except (TypeError, ValueError) as err:
        _fail(f"invalid propagation settings {overrides}: {err}")

    if out is None:
        out = Path("eval-davis") / ("synthetic" if synthetic else split)
    if synthetic:
        console.print(f"[bold yellow]No DAVIS found: evaluating on the generated SYNTHETIC set at {root}. "
                      "These are NOT DAVIS numbers.[/]")
    fields = ", ".join(f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config))
    console.print(f"DAVIS root {root} ({split}, {resolution}); model: {fmodel.description}; device {dev}",
                  soft_wrap=True)
    origin = "from the checkpoint" if preset == fmodel.preset else "set by --preset"
    console.print(f"propagation preset {preset!r} ({origin}): {fields}", soft_wrap=True)
    features_fn = fmodel.features

    try:
        scores = evaluate_features_on_davis(
            features_fn, root=root, out=out, split=split, resolution=resolution, sequences=sequences,
            config=config, device=dev, overlays=overlays, progress=True, color=fmodel.color,
        )
    except DavisFormatError as err:
        _fail(str(err))
    title = "SYNTHETIC (not DAVIS)" if synthetic else f"DAVIS-2017 {split}"
    _print_scores(console, scores, title)
    g_path, s_path = scores.csv_paths(out)
    console.print(f"results in {out} (CSVs {g_path.name}, {s_path.name}); wall time {time.perf_counter() - t0:.1f} s")
    return scores

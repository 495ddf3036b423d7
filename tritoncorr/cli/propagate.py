"""``tritoncorr propagate``: masks of frame 0 (and later frames) through a video file or frame folder
(:func:`tritoncorr.video.propagate_video`), with a progress bar in frames per second."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from tritoncorr.cli.common import fail, resolve_device
from tritoncorr.cli.options import PropagationOptions


def _fps_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class FramesPerSecond(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.2f} frames/s" if speed else "-- frames/s")

    return FramesPerSecond()


def _read_masks(console, mask_specs: list[str], source) -> dict[int, np.ndarray]:
    """``{frame: uint8 (H, W) ids}`` of the ``--mask`` specs (``PATH`` or ``FRAME:PATH``), fitted to the
    video's size; warnings printed. Exits 2 on a bad spec or file."""
    from tritoncorr.video import VideoError, fit_mask, parse_mask_spec, read_mask

    masks: dict[int, np.ndarray] = {}
    try:
        for spec in mask_specs:
            t, path = parse_mask_spec(spec)
            if t in masks:
                fail(f"two masks for frame {t}")
            if not path.is_file():
                fail(f"mask {path} does not exist")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                masks[t] = fit_mask(read_mask(path), source.size, str(path))
            for w in caught:
                console.print(f"[yellow]warning:[/] {w.message}", soft_wrap=True)
    except VideoError as err:
        fail(str(err))
    if 0 not in masks:
        fail("the first --mask must be for frame 0 (PATH or 0:PATH); later ones are FRAME:PATH")
    return masks


def _load_model(console, opts: PropagationOptions, random_init: bool, dev):
    """The feature model, preset name, propagation settings (the preset's DAVIS settings, its window in
    pixels at the model's stride) and where the preset came from, for ``tritoncorr propagate``: the
    checkpoint (None: the embedded default) or random weights with ``random_init``; bad options exit 2."""
    from tritoncorr.methods.inference import PRECISIONS, feature_stride, load_feature_model
    from tritoncorr.propagation import PRESETS, task_preset
    from tritoncorr.weights import DEFAULT_NAME

    if opts.precision not in PRECISIONS:
        fail(f"--precision must be one of {', '.join(PRECISIONS)}, got {opts.precision!r}")
    if random_init and opts.checkpoint is not None:
        fail("--random-init and --checkpoint exclude each other")
    checkpoint = DEFAULT_NAME if not random_init and opts.checkpoint is None else opts.checkpoint
    try:
        fmodel = load_feature_model(checkpoint, seed=opts.seed, device=dev, precision=opts.precision)
    except (FileNotFoundError, ValueError, TypeError) as err:
        fail(str(err))
    if random_init:
        console.print(
            "[bold yellow]warning: --random-init: using RANDOM-INIT weights (ResNet-18, seed "
            f"{opts.seed}). The masks will not follow the objects well; leave it out to use the default "
            "checkpoint, or pass --checkpoint NAME (tritoncorr weights list).[/]"
        )
    preset = opts.preset or fmodel.preset
    if preset not in PRESETS:
        fail(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = task_preset(preset, "davis", stride=feature_stride(fmodel)).config  # the preset's window in pixels
    if opts.preset is not None:
        origin = "set by --preset"
    elif random_init:
        origin = "the default for random weights"
    else:
        origin = f"from the checkpoint {checkpoint}"
    return fmodel, preset, config, origin


def propagate_cli(
    *,
    video: Path,
    mask_specs: list[str],
    opts: PropagationOptions,
    out: Path | None,
    short_side: int,
    max_frames: int | None,
    overlay: bool,
    fps: float | None,
    alpha: float,
    random_init: bool = False,
):
    """``tritoncorr propagate``: ``opts.checkpoint`` None = the embedded default
    (:data:`tritoncorr.weights.DEFAULT_NAME`); random weights (``opts.seed``) only with ``random_init``.
    Of ``opts`` it reads the weights, ``preset``, ``device`` and ``precision`` (the propagation settings
    are the preset's). Returns the :class:`~tritoncorr.video.PropagationResult`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tritoncorr.video import VideoError, open_frames, propagate_video, working_size

    console = Console()
    if not mask_specs:
        fail("--mask FIRST.png (the objects of frame 0) is required")
    if not 0 <= alpha <= 1:
        fail(f"--alpha must be in [0, 1], got {alpha}")
    try:
        source = open_frames(video, fps)
    except VideoError as err:
        fail(str(err))
    masks = _read_masks(console, mask_specs, source)

    dev = resolve_device(opts.device)
    fmodel, preset, config, origin = _load_model(console, opts, random_init, dev)
    if out is None:
        out = Path("propagate") / (video.stem or "video")
    H, W = working_size(source.size, short_side)
    n_txt = f"{source.num_frames} frames" if source.num_frames else "frame count unknown"
    console.print(
        f"video {video} ({source.size[1]}x{source.size[0]}, {source.fps:.2f} fps, {n_txt}); working size "
        f"{W}x{H}; objects {sorted({int(i) for m in masks.values() for i in np.unique(m) if i})} "
        f"(masks at frames {sorted(masks)})",
        soft_wrap=True,
    )
    console.print(f"model: {fmodel.description}; device {dev}; preset {preset!r} ({origin})", soft_wrap=True)
    total = source.num_frames
    if max_frames is not None:
        total = min(total, max_frames) if total else max_frames
    with Progress(
        TextColumn("propagating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        _fps_column(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("frames", total=total)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = propagate_video(
                    source,
                    masks,
                    fmodel.features,
                    config,
                    out,
                    color=fmodel.color,
                    short_side=short_side,
                    max_frames=max_frames,
                    device=dev,
                    overlay=overlay,
                    alpha=alpha,
                    on_frame=lambda t: bar.advance(task),
                )
        except VideoError as err:
            fail(str(err))
    for w in caught:
        console.print(f"[yellow]warning:[/] {w.message}", soft_wrap=True)
    for t in result.unused_masks:
        console.print(
            f"[yellow]warning:[/] the mask for frame {t} was not used: the video has {result.num_frames} frames"
        )
    console.print(
        f"{result.num_frames} frames in {result.seconds:.1f} s ({result.fps:.2f} frames/s); "
        f"feature grid {result.feature_grid[1]}x{result.feature_grid[0]}"
    )
    console.print(f"masks:   {result.mask_dir}/ ({result.num_frames} palette PNGs)", soft_wrap=True)
    if result.overlay is not None:
        console.print(f"overlay: {result.overlay}")
    return result

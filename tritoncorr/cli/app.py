"""The ``tritoncorr`` Typer app: every command's options, each handed to the module of :mod:`tritoncorr.cli`
that runs it.

Heavy imports (torch, triton) happen inside the commands, so ``tritoncorr --help`` is instant.

* ``tritoncorr eval davis|sweep|jhmdb|vip|ytvos`` -> :mod:`tritoncorr.cli.evaluate`
* ``tritoncorr eval compare`` -> :mod:`tritoncorr.cli.compare`
* ``tritoncorr train``       -> :mod:`tritoncorr.cli.train`
* ``tritoncorr bench``       -> :mod:`tritoncorr.cli.bench`
* ``tritoncorr weights list|download|verify`` -> :mod:`tritoncorr.cli.weights`
* ``tritoncorr convert``     -> :mod:`tritoncorr.cli.convert`
* ``tritoncorr propagate``   -> :mod:`tritoncorr.cli.propagate`

The model and propagation options of ``eval *`` and ``propagate`` are declared once, as the fields of
:class:`~tritoncorr.cli.options.PropagationOptions` (:func:`~tritoncorr.cli.options.with_options`).
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from tritoncorr import __version__
from tritoncorr.cli.options import (
    CHECKPOINT_HELP,
    DEFAULT_OPTIONS,
    SIZE_HELP,
    CacheFeatures,
    Device,
    MaskOverlays,
    Overwrite,
    PropagationOptions,
    Resolution,
    Sequences,
    Split,
    Videos,
    Workers,
    dataset_root_option,
    path_option,
    with_options,
)

app = typer.Typer(
    name="tritoncorr",
    help="Self-supervised dense video correspondence: train (DUL, STT, LIIR), propagate labels, evaluate, benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
eval_app = typer.Typer(
    help="Evaluate on a benchmark (DAVIS-2017 J&F, JHMDB PCK, VIP mIoU, YouTube-VOS export) and compare evaluations.",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")
weights_app = typer.Typer(
    help="Published checkpoints by name: list, download (into $TRITONCORR_CACHE, default ~/.cache/tritoncorr), verify.",
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")


def runs(target: str):
    """Decorator of a command whose whole body is the call of ``target`` ("module:function"), imported when
    the command runs (so ``tritoncorr --help`` imports no torch), with every argument of the command by
    keyword under its own name. The command's signature and docstring stay its options and help."""
    module, name = target.split(":")

    def decorate(command):
        @functools.wraps(command)
        def run(**kwargs) -> None:
            getattr(importlib.import_module(module), name)(**kwargs)

        return run

    return decorate


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tritoncorr {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """tritoncorr: dense video correspondence without labels."""


@eval_app.command("davis")
@with_options()
@runs("tritoncorr.cli.evaluate:eval_davis_cli")
def eval_davis(
    root: dataset_root_option(
        "DAVIS-2017 root (JPEGImages/, Annotations/, ImageSets/)",
        "DAVIS",
        "; if absent, a generated synthetic set (not DAVIS numbers)",
    ) = None,
    results: path_option(
        help="Score an existing folder of result PNGs (<seq>/<frame>.png, DAVIS palette) instead of "
        "running propagation. The two CSVs are written into this folder."
    ) = None,
    out: path_option(help="Output folder for PNGs, CSVs and overlays.") = None,
    split: Split = "val",
    resolution: Resolution = "480p",
    sequences: Sequences = None,
    opts: PropagationOptions = DEFAULT_OPTIONS,
    overlays: MaskOverlays = False,
    overwrite: Overwrite = False,
    cache_features: CacheFeatures = None,
    workers: Workers = 0,
) -> None:
    """DAVIS-2017 semi-supervised J&F, exactly as the official toolkit computes it."""


@eval_app.command("sweep")
@with_options("checkpoint", "seed", "preset", "device", "precision")
@runs("tritoncorr.cli.evaluate:eval_sweep_cli")
def eval_sweep(
    root: dataset_root_option("DAVIS-2017 root", "DAVIS") = None,
    out: path_option(help="Output folder (sweep-<split>.csv). Default: eval-sweep/<split>.") = None,
    split: Split = "val",
    resolution: Resolution = "480p",
    sequences: Sequences = None,
    opts: PropagationOptions = DEFAULT_OPTIONS,
    topk: Annotated[Optional[str], typer.Option(help="Top-k values, comma-separated (e.g. 5,10,20).")] = None,
    temperature: Annotated[Optional[str], typer.Option(help="Temperatures, comma-separated.")] = None,
    radius: Annotated[Optional[str], typer.Option(help="Radii in feature cells, comma-separated.")] = None,
    context: Annotated[Optional[str], typer.Option(help="Context lengths, comma-separated.")] = None,
    cache_features: CacheFeatures = None,
    workers: Workers = 0,
) -> None:
    """J&F over a grid of propagation settings (the product of the given values), features computed once;
    --preset is the setting the grid starts from."""


@eval_app.command("compare")
def eval_compare(
    folders: Annotated[
        list[Path],
        typer.Argument(
            help="Evaluation output folders of the same DAVIS set (tritoncorr eval davis --out); "
            "the first is the baseline."
        ),
    ],
    split: Annotated[
        Optional[str], typer.Option(help="Which per-sequence_results-<split>.csv (default: the only one).")
    ] = None,
    csv_path: path_option("--csv", help="Also write the table and statistics as CSV.") = None,
    bootstrap: Annotated[int, typer.Option(help="Paired-bootstrap resamples.")] = 10000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    allow_different_settings: Annotated[
        bool,
        typer.Option(
            "--allow-different-settings",
            help="Compare even when the folders' recorded evaluation settings differ "
            "(split, resolution, input size, precision, propagation fields); the differences are still printed.",
        ),
    ] = False,
    min_sequences: Annotated[int, typer.Option(min=1, help="No verdict below this many paired sequences.")] = 5,
    html: path_option(
        help="Also write a self-contained HTML report: per-sequence table, per-frame J curves, overlay strips of "
        "the largest wins and losses."
    ) = None,
    root: path_option(
        help="DAVIS root for the report's frames and per-frame scores (default: the one recorded in the "
        "first folder's provenance.json)."
    ) = None,
) -> None:
    """Compare evaluations sequence by sequence: paired J&F differences, standard error, bootstrap 95% interval."""
    from tritoncorr.cli.compare import compare_cli

    compare_cli(
        list(folders),
        split=split,
        csv_path=csv_path,
        n_boot=bootstrap,
        seed=seed,
        allow_different_settings=allow_different_settings,
        min_sequences=min_sequences,
        html_path=html,
        root=root,
    )


@eval_app.command("jhmdb")
@with_options()
@runs("tritoncorr.cli.evaluate:eval_jhmdb_cli")
def eval_jhmdb(
    root: dataset_root_option("JHMDB root (Rename_Images/, joint_positions/, splits/)", "JHMDB") = None,
    out: path_option(help="Output folder (pck.csv, per-clip.csv, keypoints/, overlays/).") = None,
    split: Annotated[
        int,
        typer.Option(
            help="JHMDB split (1, 2, 3): its test clips (splits/*_test_split<N>.txt); "
            "every clip when there are no split files."
        ),
    ] = 1,
    list_file: path_option(
        "--list",
        help="A CRW-style list of '<frames folder> <mat file>' lines (test.split.v2.txt) instead of the split files.",
    ) = None,
    clips: Annotated[Optional[list[str]], typer.Option("--clip", "-s", help="Only these clips (repeatable).")] = None,
    opts: PropagationOptions = DEFAULT_OPTIONS,
    size: Annotated[Optional[int], typer.Option(help=SIZE_HELP + " (320).")] = None,
    overlays: Annotated[
        bool, typer.Option(help="Also draw predicted (coloured) and true (white) joints on the frames.")
    ] = False,
    overwrite: Overwrite = False,
) -> None:
    """JHMDB pose propagation: PCK@0.1..0.5 (mean of the 15 per-joint PCKs), exactly as CRW's eval_pck.py."""


@eval_app.command("vip")
@with_options()
@runs("tritoncorr.cli.evaluate:eval_vip_cli")
def eval_vip(
    root: dataset_root_option("VIP_Fine root (Images/, Annotations/Category_ids/, lists/)", "VIP_Fine") = None,
    results: path_option(
        help="Score an existing folder of predictions (<video>/<frame>.png of category "
        "ids) instead of propagating. The CSVs are written into it."
    ) = None,
    out: path_option(help="Output folder (predictions, CSVs, overlays/).") = None,
    split: Annotated[str, typer.Option(help="lists/<split>_videos.txt")] = "val",
    videos: Videos = None,
    opts: PropagationOptions = DEFAULT_OPTIONS,
    size: Annotated[Optional[int], typer.Option(help=SIZE_HELP + " (560).")] = None,
    overlays: Annotated[bool, typer.Option(help="Also write frames with coloured parts for viewing.")] = False,
    overwrite: Overwrite = False,
) -> None:
    """VIP human-part propagation: mIoU over 20 classes (plus pixel / mean class accuracy, fwIoU), as CRW's eval_vip.py."""


@eval_app.command("ytvos")
@with_options()
@runs("tritoncorr.cli.evaluate:eval_ytvos_cli")
def eval_ytvos(
    root: path_option(
        help="YouTube-VOS valid folder (JPEGImages/, Annotations/, meta.json). Default: "
        "$TRITONCORR_DATA/YouTube-VOS/<year>/valid or the same under ~/.cache/tritoncorr."
    ) = None,
    year: Annotated[str, typer.Option(help="2018 or 2019.")] = "2018",
    out: path_option(help="Output folder (Annotations/, the zip, overlays/).") = None,
    videos: Videos = None,
    opts: PropagationOptions = DEFAULT_OPTIONS,
    size: Annotated[Optional[int], typer.Option(help=SIZE_HELP + " (native).")] = None,
    overlays: MaskOverlays = False,
    make_zip: Annotated[bool, typer.Option("--zip/--no-zip", help="Write the submission zip.")] = True,
    overwrite: Overwrite = False,
) -> None:
    """YouTube-VOS valid: export the predictions (Annotations/ and a zip) for the evaluation server; no local score."""


@app.command()
def train(
    recipe: Annotated[str, typer.Argument(help="Recipe file, optionally with a config name: recipes/dul.py[:NAME].")],
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override a config field: --set optim.lr=3e-4 (repeatable).")
    ] = None,
    steps: Annotated[Optional[int], typer.Option(help="Stop after this many optimiser steps (total).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (overrides the recipe's).")] = None,
    out: path_option(help="Output folder (checkpoints, metrics.jsonl, curves).") = None,
    resume: path_option(help="Resume from this run folder's last checkpoint.") = None,
    resume_from: Annotated[
        Optional[str],
        typer.Option(
            help="With --resume: continue from this older checkpoint (ckpt-N or N) instead of "
            "the newest, e.g. when the newest is damaged."
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and exit.")] = False,
) -> None:
    """Train a method from a recipe (single process, or several under torchrun)."""
    from tritoncorr.cli.train import train_cli

    train_cli(
        recipe=recipe,
        overrides=set_ or [],
        steps=steps,
        seed=seed,
        out=out,
        resume=resume,
        dry_run=dry_run,
        resume_from=resume_from,
    )


@app.command()
def bench(
    kernels: Annotated[
        Optional[list[str]], typer.Option("--kernel", "-k", help="Only these kernels (repeatable).")
    ] = None,
    aot: Annotated[bool, typer.Option("--aot", help="Print the ahead-of-time compile report (sm_80, sm_90).")] = False,
    json_path: path_option("--json", help="Also write the results as JSON to PATH.") = None,
    csv_path: path_option(
        "--csv", help="Append the timing rows to this CSV (default: OUT/bench.csv, OUT/bench-quick.csv with --quick)."
    ) = None,
    out: path_option(
        help="Results folder (default: ~/.cache/tritoncorr/bench, or $XDG_CACHE_HOME/tritoncorr/bench)."
    ) = None,
    quick: Annotated[
        bool,
        typer.Option(
            help="One training shape per kernel family, fwd+bwd rows, no torch.compile "
            "and no end-to-end case: the full rows' ratios in about a minute."
        ),
    ] = False,
    device: Device = "auto",
) -> None:
    """Benchmark the kernels against their PyTorch references (time, peak memory, roofline)."""
    from tritoncorr.cli.bench import bench_cli

    bench_cli(
        kernels=kernels or [], aot=aot, json_path=json_path, csv_path=csv_path, quick=quick, device=device, out=out
    )


@weights_app.command("list")
def weights_list() -> None:
    """The registry: name, method, the authors' DAVIS-2017 J&F, licence, whether it is cached, where it comes from."""
    from tritoncorr.cli.weights import weights_list_cli

    weights_list_cli()


@weights_app.command("download")
def weights_download(
    names: Annotated[list[str], typer.Argument(help="Registered names, https:// URLs or hf://OWNER/REPO/PATH.")],
) -> None:
    """Download (resumable, SHA-256 recorded and verified) and convert once; print the cached path."""
    from tritoncorr.cli.weights import weights_download_cli

    weights_download_cli(list(names))


@weights_app.command("verify")
def weights_verify(
    names: Annotated[Optional[list[str]], typer.Argument(help="Registered names (default: every cached one).")] = None,
) -> None:
    """Re-hash cached checkpoints against the SHA-256 recorded at download (and the authors' MD5 where published)."""
    from tritoncorr.cli.weights import weights_verify_cli

    weights_verify_cli(list(names or []))


@app.command()
def convert(
    src: Annotated[
        Path,
        typer.Argument(
            help="Published checkpoint (.pth / .pth.tar / .pt / .tar / .safetensors), "
            "read with torch.load(weights_only=True): no pickled code runs."
        ),
    ],
    to: Annotated[Path, typer.Option("--to", help="Output .safetensors (weights + method, input colour, preset).")],
    fmt: Annotated[
        str, typer.Option("--format", help="auto, crw, dul, stt, mast, liir, moco or torchvision.")
    ] = "auto",
    variant: Annotated[
        Optional[str], typer.Option(help="Variant of the format: stt d8 (default, stride 8) or d4 (stride 4).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List every key of the report.")] = False,
    report: path_option("--report", help="Also write the full report as JSON.") = None,
) -> None:
    """Convert a published checkpoint (CRW, DUL, STT, MAST, LIIR, MoCo v2, torchvision ResNet) to tritoncorr."""
    from tritoncorr.cli.convert import convert_cli

    convert_cli(src=src, to=to, fmt=fmt, variant=variant, verbose=verbose, report_path=report)


@app.command()
@with_options("preset", "device", "precision")
def propagate(
    video: Annotated[Path, typer.Argument(help="A video file (.mp4, .webm, .mov, .avi, ...) or a folder of frames.")],
    mask: Annotated[
        list[str],
        typer.Option(
            "--mask",
            "-m",
            help="FIRST.png: palette or binary PNG of frame 0 (several object ids "
            "allowed). Later masks as FRAME:PATH (e.g. 120:later.png) restart the objects they "
            "contain and add new ones from that frame on. Repeatable.",
        ),
    ],
    checkpoint: Annotated[
        Optional[str], typer.Option(help=CHECKPOINT_HELP + " Default: the embedded tritoncorr-stt-r18-cpu.")
    ] = None,
    opts: PropagationOptions = DEFAULT_OPTIONS,
    out: path_option(help="Output folder (masks/*.png, overlay.mp4). Default: propagate/<video name>.") = None,
    short_side: Annotated[
        int,
        typer.Option(
            help="Downscale frames whose shorter side is larger than this "
            "(0 = native resolution). Smaller is faster (about quadratically) and "
            "changes the result: see the README."
        ),
    ] = 480,
    max_frames: Annotated[Optional[int], typer.Option(help="Stop after this many frames.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random weights (--random-init).")] = 0,
    random_init: Annotated[
        bool,
        typer.Option(
            "--random-init",
            help="Random weights instead of a checkpoint (a baseline; masks will not follow objects well).",
        ),
    ] = False,
    overlay: Annotated[bool, typer.Option(help="Write overlay.mp4 (masks blended over the frames).")] = True,
    fps: Annotated[Optional[float], typer.Option(help="Frame rate of a frame folder / override the video's.")] = None,
    alpha: Annotated[float, typer.Option(help="Mask opacity in the overlay.")] = 0.5,
) -> None:
    """Propagate masks drawn on frame 0 (and optional later frames) through a video; write masks and an overlay."""
    import dataclasses

    from tritoncorr.cli.propagate import propagate_cli

    propagate_cli(
        video=video,
        mask_specs=list(mask),
        opts=dataclasses.replace(opts, checkpoint=checkpoint, seed=seed),
        out=out,
        short_side=short_side,
        max_frames=max_frames,
        overlay=overlay,
        fps=fps,
        alpha=alpha,
        random_init=random_init,
    )


if __name__ == "__main__":  # pragma: no cover
    app()

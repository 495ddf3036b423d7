"""``tritoncorr eval davis|jhmdb|vip|ytvos|sweep``: read the options, load the model and the task preset,
open the resumable output folder, run the evaluation (:mod:`tritoncorr.evaluate`, :mod:`tritoncorr.sweep`)
and print its tables. Bad input ends with one ``error:`` line and exit status 2 (:func:`~tritoncorr.cli.common.fail`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from tritoncorr.cli.common import dataset_root, fail, resolve_device
from tritoncorr.cli.options import PropagationOptions


@dataclass
class TaskSettings:
    """The loaded feature model, the resolved ``PropagationConfig``, the network input ``(H, W)`` (None:
    native) and the ``torch.device`` of one evaluation."""

    fmodel: Any
    config: Any
    input_size: tuple[int, int] | None
    device: Any


def _size_text(size: tuple[int, int] | None) -> str:
    return "native" if size is None else f"{size[1]}x{size[0]}"


def task_settings(console, opts: PropagationOptions, task: str, size: int | None = None) -> TaskSettings:
    """Load the model (its feature extractor in ``opts.precision``) and resolve the task preset with
    ``opts``' overrides (``size``: ``--size``, None = the preset's); print both. Exits 2 on bad input."""
    dev = resolve_device(opts.device)
    from tritoncorr.methods.inference import feature_stride, load_feature_model
    from tritoncorr.propagation import PRESETS, task_preset

    try:
        fmodel = load_feature_model(opts.checkpoint, seed=opts.seed, device=dev, precision=opts.precision)
    except (FileNotFoundError, ValueError, TypeError) as err:
        fail(str(err))
    name = opts.preset if opts.preset is not None else fmodel.preset
    if name not in PRESETS:
        fail(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    overrides = opts.overrides()
    if "radius" in overrides:
        if float(opts.radius) != int(opts.radius):
            fail(f"--radius must be a whole number of feature cells, got {opts.radius}")
        overrides["radius"] = int(opts.radius)
    if size is not None and size < 0:
        fail(f"--size must be >= 0 (0 = native resolution), got {size}")
    tp = task_preset(name, task, stride=feature_stride(fmodel))
    try:
        config = dataclasses.replace(tp.config, **overrides)
    except (TypeError, ValueError) as err:
        fail(f"invalid propagation settings {overrides}: {err}")
    input_size = tp.input_size if size is None else (None if size == 0 else (int(size), int(size)))
    fields = ", ".join(f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config))
    console.print(f"model: {fmodel.description}; device {dev}", soft_wrap=True)
    origin = "from the checkpoint" if opts.preset is None else "set by --preset"
    console.print(
        f"propagation preset {name!r} ({origin}) for {task}, input {_size_text(input_size)}: {fields} [{tp.source}]",
        soft_wrap=True,
    )
    return TaskSettings(fmodel, config, input_size, dev)


def record_provenance(out: Path, benchmark: str, opts: PropagationOptions, ts: TaskSettings, **settings) -> None:
    """``<out>/provenance.json``: code, versions, device, command, checkpoint SHA-256 and the evaluation
    settings (:func:`tritoncorr.provenance.write_eval_provenance`)."""
    from tritoncorr.provenance import write_eval_provenance

    write_eval_provenance(
        out,
        benchmark=benchmark,
        checkpoint=opts.checkpoint,
        model=ts.fmodel.description,
        preset=opts.preset if opts.preset is not None else ts.fmodel.preset,
        config=ts.config,
        input_size=ts.input_size,
        precision=opts.precision,
        device=ts.device,
        **settings,
    )


def open_out(
    out: Path, task: str, opts: PropagationOptions, ts: TaskSettings, overwrite: bool, settings: dict, provenance: dict
):
    """The resumable output folder of ``tritoncorr eval TASK --out OUT`` (:mod:`tritoncorr.evals.resume`),
    after writing ``provenance.json`` there (:func:`record_provenance`, with ``provenance``). The folder
    records the settings that decide the outputs (``settings``, the propagation, input size, colour,
    precision) and the checkpoint's hash. Exits 2 when OUT holds an evaluation with other settings
    (unless ``overwrite``)."""
    from tritoncorr.engine.checkpoint import resolve_weights_path
    from tritoncorr.evals.resume import EvalFolder, EvalFolderError, file_sha256

    model = (
        f"random-init seed {opts.seed}"
        if opts.checkpoint is None
        else file_sha256(resolve_weights_path(Path(opts.checkpoint)))
    )
    settings = dict(
        settings,
        propagation=dataclasses.asdict(ts.config),
        input_size=list(ts.input_size) if ts.input_size else None,
        color=ts.fmodel.color,
        precision=opts.precision,
    )
    try:
        folder = EvalFolder(out, task=task, settings=settings, checkpoint=model, overwrite=overwrite)
    except EvalFolderError as err:
        fail(str(err))
    record_provenance(out, task, opts, ts, **provenance)
    return folder


def feature_cache_for(folder: Path | None, opts: PropagationOptions, ts: TaskSettings):
    """The :class:`~tritoncorr.feature_cache.FeatureCache` under ``folder`` for these weights and settings (None: no cache)."""
    if folder is None:
        return None
    from tritoncorr.feature_cache import FeatureCache, weights_identity

    return FeatureCache(
        Path(folder),
        weights_identity(opts.checkpoint, ts.fmodel.description),
        ts.input_size,
        ts.config.pad,
        ts.config.normalize,
        ts.fmodel.color,
        opts.precision,
    )


def catch_format_errors(fn: Callable[[], Any], *errors: type[Exception]):
    """Run ``fn()``; the benchmark's format errors (and frame-size errors) exit with code 2 and the message."""
    from tritoncorr.evals.davis import DavisFormatError
    from tritoncorr.evaluate import VideoFormatError

    try:
        return fn()
    except (VideoFormatError, DavisFormatError, *errors) as err:
        fail(str(err))


def resumable(console, folder, names: Sequence[str], run: Callable[[], Any]):
    """``run()``, after saying how many of ``names`` ``folder`` already holds; Ctrl-C exits with status
    130 and says how to continue (the folder is consistent at any point: :mod:`tritoncorr.evals.resume`)."""
    done = folder.finished(names)
    if done:
        console.print(f"resuming {folder.out}: {len(done)} of {len(names)} finished, skipped", soft_wrap=True)
    try:
        return run()
    except BaseException as err:
        folder.tidy()
        if not isinstance(err, KeyboardInterrupt):
            raise
        kept = len(folder.finished(names))
        typer.echo(
            f"interrupted: {kept} of {len(names)} finished in {folder.out} are kept; rerun the same command "
            "to continue",
            err=True,
        )
        raise typer.Exit(code=130) from None


def propagate_resumably(console, folder, names: Sequence[str], ts: TaskSettings, evaluate, *errors, **kwargs):
    """``evaluate(ts.fmodel.features, config=, device=, progress=True, color=, folder=, **kwargs)`` (one of
    the runner's ``evaluate_features_on_*`` / ``export_features_on_ytvos``) with the task settings ``ts``,
    :func:`resumable` in ``folder``; the benchmark's format ``errors`` exit 2 (:func:`catch_format_errors`)."""
    return resumable(
        console,
        folder,
        names,
        lambda: catch_format_errors(
            lambda: evaluate(
                ts.fmodel.features,
                config=ts.config,
                device=ts.device,
                progress=True,
                color=ts.fmodel.color,
                folder=folder,
                **kwargs,
            ),
            *errors,
        ),
    )


def _print_davis_scores(console, scores, title: str) -> None:
    from tritoncorr.evals.davis import GLOBAL_COLUMNS

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


def _davis_root(root: Path | None, missing: str) -> Path:
    """``--root``, else the default DAVIS root (:func:`tritoncorr.evaluate.default_davis_root`); exits 2 with
    ``missing`` when there is none."""
    from tritoncorr.evaluate import default_davis_root

    root = root if root is not None else default_davis_root()
    if root is None:
        fail(missing)
    return Path(root)


def _existing(root: Path) -> Path:
    if not root.is_dir():
        fail(f"DAVIS root {root} does not exist")
    return root


def eval_davis_cli(
    *,
    root: Path | None,
    results: Path | None,
    opts: PropagationOptions,
    out: Path | None,
    split: str,
    resolution: str,
    sequences: list[str] | None,
    overlays: bool,
    overwrite: bool = False,
    cache_features: Path | None = None,
    workers: int = 0,
):
    """``tritoncorr eval davis``: score existing results (``--results``) or propagate with a backbone and score.
    ``--out`` is resumable (:mod:`tritoncorr.evals.resume`); ``overwrite`` starts it again."""
    from tritoncorr.evals.davis import DavisDataset, evaluate_results
    from tritoncorr.evaluate import default_davis_root, evaluate_features_on_davis, synthetic_davis_root

    console = Console()
    sequences = list(sequences) if sequences else None
    t0 = time.perf_counter()

    if results is not None:
        root = _davis_root(
            root,
            "--results needs the ground truth: pass --root (no DAVIS found under "
            "$TRITONCORR_DATA/DAVIS or ~/.cache/tritoncorr/DAVIS)",
        )
        scores = catch_format_errors(
            lambda: evaluate_results(root, results, split, resolution, sequences, progress=True, workers=workers)
        )
        g_path, s_path = scores.write_csvs(results)
        _print_davis_scores(console, scores, f"DAVIS-2017 {split} ({root})")
        console.print(f"wrote {g_path} and {s_path}  ({time.perf_counter() - t0:.1f} s)")
        return scores

    root = root if root is not None else default_davis_root()
    synthetic = root is None
    root = _existing(synthetic_davis_root() if synthetic else Path(root))
    out = Path(out) if out is not None else Path("eval-davis") / ("synthetic" if synthetic else split)
    if synthetic:
        console.print(
            f"[bold yellow]No DAVIS found: evaluating on the generated SYNTHETIC set at {root}. "
            "These are NOT DAVIS numbers.[/]"
        )
    console.print(f"DAVIS root {root} ({split}, {resolution})", soft_wrap=True)
    ts = task_settings(console, opts, "davis")
    names = catch_format_errors(lambda: DavisDataset(root, split, resolution, sequences, require_all_masks=True).names)
    folder = open_out(
        out,
        "davis",
        opts,
        ts,
        overwrite,
        dict(split=split, resolution=resolution, overlays=overlays),
        dict(split=split, resolution=resolution, sequences=sequences, root=str(root), synthetic=synthetic),
    )
    cache = feature_cache_for(cache_features, opts, ts)
    if cache is not None:
        console.print(f"feature cache {cache.folder}", soft_wrap=True)
    scores = propagate_resumably(
        console,
        folder,
        names,
        ts,
        evaluate_features_on_davis,
        root=root,
        out=out,
        split=split,
        resolution=resolution,
        sequences=sequences,
        overlays=overlays,
        feature_cache=cache,
        workers=workers,
    )
    _print_davis_scores(console, scores, "SYNTHETIC (not DAVIS)" if synthetic else f"DAVIS-2017 {split}")
    g_path, s_path = scores.csv_paths(out)
    console.print(f"results in {out} (CSVs {g_path.name}, {s_path.name}); wall time {time.perf_counter() - t0:.1f} s")
    return scores


def eval_sweep_cli(
    *,
    root: Path | None,
    opts: PropagationOptions,
    out: Path | None,
    split: str,
    resolution: str,
    sequences: list[str] | None,
    context: str | None,
    radius: str | None,
    topk: str | None,
    temperature: str | None,
    cache_features: Path | None,
    workers: int,
):
    """``tritoncorr eval sweep``: parse the grid, load the model, :func:`~tritoncorr.sweep.sweep_davis`, print
    and write the table."""
    from tritoncorr.sweep import SWEEP_FIELDS, check_values, grid_settings, parse_values, sweep_davis

    console = Console()
    t0 = time.perf_counter()
    try:
        values = {
            f: parse_values(v, SWEEP_FIELDS[f], f)
            for f, v in dict(topk=topk, temperature=temperature, radius=radius, context=context).items()
        }
    except ValueError as err:
        fail(str(err))
    settings = grid_settings(values)
    root = _existing(
        _davis_root(root, "no DAVIS found under $TRITONCORR_DATA/DAVIS or ~/.cache/tritoncorr/DAVIS: pass --root")
    )
    ts = task_settings(console, opts, "davis")
    try:
        check_values(values)
        for s in settings:
            dataclasses.replace(ts.config, **s)
    except (TypeError, ValueError) as err:
        fail(f"invalid propagation setting in the grid: {err}")
    out = Path(out) if out is not None else Path("eval-sweep") / split
    cache = feature_cache_for(cache_features, opts, ts)
    console.print(
        f"sweep over {len(settings)} setting(s) of {', '.join(f for f, v in values.items() if v) or 'nothing'}"
        f"; features {'from/to ' + str(cache.folder) if cache else 'computed once per sequence'}",
        soft_wrap=True,
    )
    record_provenance(
        out,
        "davis-sweep",
        opts,
        ts,
        split=split,
        resolution=resolution,
        sequences=sequences,
        root=str(root),
        grid=values,
    )
    results, ds = catch_format_errors(
        lambda: sweep_davis(
            ts.fmodel.features,
            root=root,
            split=split,
            resolution=resolution,
            sequences=sequences,
            config=ts.config,
            settings=settings,
            device=ts.device,
            color=ts.fmodel.color,
            cache=cache,
            progress=True,
            workers=workers,
        )
    )
    fields = [f for f, v in values.items() if v]
    best = max(range(len(results)), key=lambda i: results[i][1].jf_mean)
    table = Table(title=f"DAVIS-2017 {split}: J&F over {len(ds)} sequence(s), {len(results)} setting(s)")
    for f in fields:
        table.add_column(f, justify="right")
    for c in ("J&F-Mean", "J-Mean", "F-Mean", ""):
        table.add_column(c, justify="right")
    for i, (s, sc) in enumerate(results):
        table.add_row(
            *(str(s[f]) for f in fields),
            f"{sc.jf_mean:.3f}",
            f"{sc.j_mean:.3f}",
            f"{sc.f_mean:.3f}",
            "best" if i == best else "",
        )
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    g_path, o_path = out / f"sweep-{split}.csv", out / f"sweep-{split}-objects.csv"
    g_lines = [",".join(fields + ["J&F-Mean", "J-Mean", "F-Mean"])]
    g_lines += [
        ",".join([str(s[f]) for f in fields] + [f"{sc.jf_mean:.6f}", f"{sc.j_mean:.6f}", f"{sc.f_mean:.6f}"])
        for s, sc in results
    ]
    g_path.write_text("\n".join(g_lines) + "\n")
    o_lines = [",".join(fields + ["Sequence", "J-Mean", "F-Mean"])]
    o_lines += [
        ",".join([str(s[f]) for f in fields] + [name, f"{j:.6f}", f"{fm:.6f}"])
        for s, sc in results
        for name, j, fm in sc.per_sequence_rows()
    ]
    o_path.write_text("\n".join(o_lines) + "\n")
    console.print(f"wrote {g_path} and {o_path}; wall time {time.perf_counter() - t0:.1f} s", soft_wrap=True)
    return results


def eval_jhmdb_cli(
    *,
    root: Path | None,
    opts: PropagationOptions,
    out: Path | None,
    split: int,
    list_file: Path | None,
    clips: list[str] | None,
    size: int | None,
    overlays: bool,
    overwrite: bool = False,
):
    """``tritoncorr eval jhmdb``: propagate the first-frame joints of every test clip, PCK@0.1..0.5, table and CSVs.
    ``--out`` is resumable (:mod:`tritoncorr.evals.resume`)."""
    from tritoncorr.evals.jhmdb import JOINT_NAMES, JhmdbDataset, JhmdbFormatError
    from tritoncorr.evaluate import evaluate_features_on_jhmdb

    console = Console()
    t0 = time.perf_counter()
    root = dataset_root(root, "JHMDB", "JHMDB", "jhmdb")
    ds = catch_format_errors(
        lambda: JhmdbDataset(root, split=split, list_file=list_file, clips=clips or None), JhmdbFormatError
    )
    ts = task_settings(console, opts, "jhmdb", size)
    console.print(f"JHMDB root {root}: {len(ds)} clip(s), {ds.note}", soft_wrap=True)
    out = Path(out) if out is not None else Path("eval-jhmdb") / f"split{split}"
    folder = open_out(
        out, "jhmdb", opts, ts, overwrite, dict(overlays=overlays), dict(split=split, clips=clips, root=str(root))
    )
    res = propagate_resumably(
        console,
        folder,
        [c.name for c in ds.clips],
        ts,
        evaluate_features_on_jhmdb,
        JhmdbFormatError,
        dataset=ds,
        out=out,
        input_size=ts.input_size,
        overlays=overlays,
    )
    g = Table(title=f"JHMDB PCK ({res.clips} clips, {int(res.counts.sum())} joint-frames), %")
    for a in res.thresholds:
        g.add_column(f"PCK@{a:g}", justify="right")
    g.add_row(*(f"{v:.2f}" for v in res.mean))
    console.print(g)
    s = Table(title="per joint, %")
    s.add_column("Joint")
    for a in res.thresholds:
        s.add_column(f"@{a:g}", justify="right")
    for j, name in enumerate(JOINT_NAMES):
        s.add_row(name, *(f"{v:.2f}" for v in res.per_joint[j]))
    console.print(s)
    console.print(
        f"results in {out} (pck.csv, per-clip.csv, keypoints/); wall time {time.perf_counter() - t0:.1f} s",
        soft_wrap=True,
    )
    return res


def eval_vip_cli(
    *,
    root: Path | None,
    results: Path | None,
    opts: PropagationOptions,
    out: Path | None,
    split: str,
    videos: list[str] | None,
    size: int | None,
    overlays: bool,
    overwrite: bool = False,
):
    """``tritoncorr eval vip``: score existing results (``--results``) or propagate and score; mIoU table and CSVs.
    ``--out`` is resumable (:mod:`tritoncorr.evals.resume`)."""
    from tritoncorr.evals.vip import GLOBAL_COLUMNS, VIP_CLASSES, VipDataset, VipFormatError, evaluate_results
    from tritoncorr.evaluate import evaluate_features_on_vip

    console = Console()
    t0 = time.perf_counter()
    root = dataset_root(root, "VIP", "VIP_Fine", "VIP")
    ds = catch_format_errors(lambda: VipDataset(root, split, videos or None), VipFormatError)
    if results is not None:
        scores = catch_format_errors(lambda: evaluate_results(results_dir=results, dataset=ds), VipFormatError)
        out = Path(results)
    else:
        ts = task_settings(console, opts, "vip", size)
        console.print(f"VIP root {root}: {len(ds)} video(s) of {split}", soft_wrap=True)
        out = Path(out) if out is not None else Path("eval-vip") / split
        folder = open_out(
            out,
            "vip",
            opts,
            ts,
            overwrite,
            dict(split=split, overlays=overlays),
            dict(split=split, videos=videos, root=str(root)),
        )
        scores = propagate_resumably(
            console,
            folder,
            ds.names,
            ts,
            evaluate_features_on_vip,
            VipFormatError,
            dataset=ds,
            out=out,
            input_size=ts.input_size,
            overlays=overlays,
        )
    g_path, c_path = scores.write_csvs(out)
    g = Table(title=f"VIP {split}: {len(ds)} videos, {scores.frames} frames")
    for c in GLOBAL_COLUMNS:
        g.add_column(c, justify="right")
    row = scores.global_row()
    g.add_row(*(f"{row[c]:.4f}" for c in GLOBAL_COLUMNS))
    console.print(g)
    s = Table(title="per class")
    for c, j in (("Class", "left"), ("IoU", "right"), ("Acc", "right")):
        s.add_column(c, justify=j)
    for i, name in enumerate(VIP_CLASSES):
        s.add_row(name, f"{scores.class_iou[i]:.4f}", f"{scores.class_accuracy[i]:.4f}")
    console.print(s)
    console.print(
        f"results in {out} (CSVs {g_path.name}, {c_path.name}); wall time {time.perf_counter() - t0:.1f} s",
        soft_wrap=True,
    )
    return scores


def eval_ytvos_cli(
    *,
    root: Path | None,
    year: str,
    opts: PropagationOptions,
    out: Path | None,
    videos: list[str] | None,
    size: int | None,
    overlays: bool,
    make_zip: bool,
    overwrite: bool = False,
):
    """``tritoncorr eval ytvos``: export ``Annotations/`` and the server zip; there is no local score.
    ``--out`` is resumable (:mod:`tritoncorr.evals.resume`)."""
    from tritoncorr.evals.ytvos import YEARS, YtvosDataset, YtvosFormatError
    from tritoncorr.evaluate import export_features_on_ytvos

    console = Console()
    t0 = time.perf_counter()
    if str(year) not in YEARS:
        fail(f"--year must be one of {', '.join(YEARS)}, got {year!r}")
    root = dataset_root(root, f"YouTube-VOS {year} valid", f"YouTube-VOS/{year}/valid", f"YouTube-VOS-{year}/valid")
    ds = catch_format_errors(lambda: YtvosDataset(root, videos or None), YtvosFormatError)
    ts = task_settings(console, opts, "ytvos", size)
    console.print(f"YouTube-VOS {year} root {root}: {len(ds)} video(s)", soft_wrap=True)
    for note in ds.notes:
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True)
    out = Path(out) if out is not None else Path("eval-ytvos") / f"{year}-valid"
    folder = open_out(
        out,
        "ytvos",
        opts,
        ts,
        overwrite,
        dict(overlays=overlays, year=str(year)),
        dict(split=str(year), videos=videos, root=str(root)),
    )
    res = propagate_resumably(
        console,
        folder,
        [v.name for v in ds],
        ts,
        export_features_on_ytvos,
        YtvosFormatError,
        dataset=ds,
        out=out,
        year=str(year),
        input_size=ts.input_size,
        overlays=overlays,
        make_zip=make_zip,
    )
    t = Table(title=f"YouTube-VOS {year} valid export")
    for c in ("Videos", "Frames", "Objects", "Annotations", "Zip"):
        t.add_column(c)
    t.add_row(
        str(res.videos),
        str(res.frames),
        str(res.objects),
        str(res.annotations),
        str(res.zip_path) if res.zip_path else "-",
    )
    console.print(t)
    console.print(
        f"[bold]No local score[/]: the YouTube-VOS {year} valid ground truth is held by the evaluation "
        f"server; upload {res.zip_path or res.annotations} to the YouTube-VOS {year} CodaLab competition. "
        f"Wall time {time.perf_counter() - t0:.1f} s",
        soft_wrap=True,
    )
    return res

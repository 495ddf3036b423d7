"""``tritoncorr eval sweep``: DAVIS J&F over a grid of propagation settings from one set of features.

The features of a sequence do not depend on the propagation settings, so the sweep computes them
once (or reads them from ``--cache-features``, :mod:`tritoncorr.feature_cache`), then for every
setting of the grid propagates, decodes and scores the sequence in memory (no PNGs), exactly as
``tritoncorr eval davis`` scores them (:func:`tritoncorr.evals.davis.score_sequence`). The grid is
the product of the values given per field, e.g. ``--topk 5,10,20 --temperature 0.05,0.1``
(6 settings); fields not given keep the preset's value.

Result: one J&F table (one row per setting, the best marked) and ``sweep-<split>.csv`` with the
global metrics of each setting; per-setting per-object scores in ``sweep-<split>-objects.csv``.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

SWEEP_FIELDS = {"topk": int, "temperature": float, "radius": int, "context": int}

__all__ = ["SWEEP_FIELDS", "grid_settings", "parse_values", "sweep_davis", "eval_sweep_cli"]


def parse_values(text: str | None, cast, name: str) -> list:
    """``"5,10,20"`` -> ``[5, 10, 20]`` (``cast`` each); None -> ``[]``. A bad value is a ValueError naming ``name``."""
    if text is None or str(text).strip() == "":
        return []
    out = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            v = float(part) if cast is int else cast(part)
            if cast is int:
                if v != int(v):
                    raise ValueError
                v = int(v)
        except ValueError:
            raise ValueError(f"--{name}: {part!r} is not a {cast.__name__} (give a comma-separated list, e.g. 5,10)") from None
        out.append(v)
    return list(dict.fromkeys(out))


def check_values(values: dict[str, list]) -> None:
    """Ranges the propagation accepts (checked before any feature is computed); ValueError names the field."""
    from tritoncorr.kernels.knn_propagate import MAX_RADIUS, MAX_TOPK

    limits = {"topk": (1, MAX_TOPK), "radius": (0, MAX_RADIUS), "context": (1, None)}
    for f, vals in values.items():
        for v in vals:
            if f == "temperature" and not v > 0:
                raise ValueError(f"temperature={v} must be > 0")
            if f in limits:
                lo, hi = limits[f]
                if v < lo or (hi is not None and v > hi):
                    raise ValueError(f"{f}={v} must be in {lo}..{hi if hi is not None else 'inf'}")


def grid_settings(values: dict[str, list]) -> list[dict[str, Any]]:
    """The product of the given values per field (fields with no values are left out): a list of
    ``{field: value}``, first field varying slowest; ``[{}]`` when nothing is given."""
    fields = [f for f, v in values.items() if v]
    return [dict(zip(fields, combo)) for combo in itertools.product(*(values[f] for f in fields))]


@torch.no_grad()
def sweep_davis(features_fn, *, root, split: str = "val", resolution: str = "480p", sequences=None, config,
                settings: list[dict[str, Any]], device="cpu", color: str = "rgb", cache=None, progress: bool = True,
                workers: int = 0):
    """Score every setting (``config`` with each dict of ``settings`` replaced) on the DAVIS sequences.

    Returns:
        a list of ``(setting, DavisScores)`` in the order of ``settings``.
    """
    from tritoncorr.evals.davis import DavisDataset, DavisScores, score_sequence, scoring_pool
    from tritoncorr.evaluate import MaskCodec, VideoProgress, propagate_labels, sequence_features

    configs = [dataclasses.replace(config, **s) for s in settings]  # invalid settings fail before any work
    ds = DavisDataset(root, split, resolution, sequences, require_all_masks=True)
    objects: list[list] = [[] for _ in settings]
    pool = scoring_pool(workers, len(ds) * len(settings))
    pending: list[tuple[int, Any, int]] = []
    try:
        # per frame: features once, then propagation, decoding and scoring per setting
        with VideoProgress(progress, [len(s) for s in ds], label="sweep", passes=1 + 3 * len(settings)) as bar:
            for seq in ds:
                bar.start(seq.name)
                codec = MaskCodec(seq.load_mask(0))
                vf = sequence_features(features_fn, seq.name, seq.load_frame, len(seq), codec.size, config=config,
                                       device=device, color=color, cache=cache, bar=bar)
                gt = seq.load_masks()
                for k, cfg in enumerate(configs):
                    bar.stage(f"setting {k + 1}/{len(configs)}: propagating")
                    prop = propagate_labels(vf, codec, cfg, on_frame=bar.frame)
                    bar.frame()
                    bar.stage(f"setting {k + 1}/{len(configs)}: decoding")
                    pred = np.stack([prop.decode(t) for t in range(1, len(seq) - 1)]) if len(seq) > 2 else \
                        np.zeros((0, *seq.size), np.uint8)
                    bar.advance(len(seq))
                    del prop
                    if pool is not None:
                        pending.append((k, pool.submit(score_sequence, seq.name, gt, pred), len(seq)))
                    else:
                        bar.stage(f"setting {k + 1}/{len(configs)}: scoring")
                        objects[k].extend(score_sequence(seq.name, gt, pred))
                        bar.advance(len(seq))
                del vf
            bar.stage("scoring")
            for k, fut, n in pending:
                objects[k].extend(fut.result())
                bar.advance(n)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if pool is not None:  # keep the sequences' order within each setting
        order = {name: i for i, name in enumerate(ds.names)}
        for objs in objects:
            objs.sort(key=lambda o: (order[o.sequence], o.object_id))
    return [(s, DavisScores(objs, split=split)) for s, objs in zip(settings, objects)], ds


def eval_sweep_cli(*, root: Path | None, checkpoint: Path | None, seed: int, out: Path | None, split: str,
                   resolution: str, sequences: list[str] | None, preset: str | None, context: str | None,
                   radius: str | None, topk: str | None, temperature: str | None, device: str, precision: str,
                   cache_features: Path | None, workers: int):
    """``tritoncorr eval sweep``: parse the grid, load the model, :func:`sweep_davis`, print and write the table."""
    from rich.console import Console
    from rich.table import Table

    from tritoncorr.evals.davis import DavisFormatError
    from tritoncorr.evaluate import (_fail, _record_provenance, _task_settings, default_davis_root,
                                     feature_cache_for)

    console = Console()
    t0 = time.perf_counter()
    try:
        values = {f: parse_values(v, SWEEP_FIELDS[f], f)
                  for f, v in dict(topk=topk, temperature=temperature, radius=radius, context=context).items()}
    except ValueError as err:
        _fail(str(err))
    settings = grid_settings(values)
    if root is None:
        root = default_davis_root()
        if root is None:
            _fail("no DAVIS found under $TRITONCORR_DATA/DAVIS or ~/.cache/tritoncorr/DAVIS: pass --root")
    if not Path(root).is_dir():
        _fail(f"DAVIS root {root} does not exist")
    fmodel, config, _, dev = _task_settings(
        console, task="davis", checkpoint=checkpoint, seed=seed, device=device, preset=preset, context=None,
        radius=None, topk=None, temperature=None, size=None, precision=precision)
    try:
        check_values(values)
        for s in settings:
            dataclasses.replace(config, **s)
    except (TypeError, ValueError) as err:
        _fail(f"invalid propagation setting in the grid: {err}")
    out = Path(out) if out is not None else Path("eval-sweep") / split
    cache = feature_cache_for(cache_features, checkpoint, fmodel, config, None, precision)
    console.print(f"sweep over {len(settings)} setting(s) of {', '.join(f for f, v in values.items() if v) or 'nothing'}"
                  f"; features {'from/to ' + str(cache.folder) if cache else 'computed once per sequence'}",
                  soft_wrap=True)
    _record_provenance(out, "davis-sweep", checkpoint, fmodel, preset, config, None, precision, dev, split=split,
                       resolution=resolution, sequences=sequences, root=str(root), grid=values)
    try:
        results, ds = sweep_davis(fmodel.features, root=root, split=split, resolution=resolution,
                                  sequences=sequences, config=config, settings=settings, device=dev,
                                  color=fmodel.color, cache=cache, progress=True, workers=workers)
    except DavisFormatError as err:
        _fail(str(err))
    fields = [f for f, v in values.items() if v]
    best = max(range(len(results)), key=lambda i: results[i][1].jf_mean)
    table = Table(title=f"DAVIS-2017 {split}: J&F over {len(ds)} sequence(s), {len(results)} setting(s)")
    for f in fields:
        table.add_column(f, justify="right")
    for c in ("J&F-Mean", "J-Mean", "F-Mean", ""):
        table.add_column(c, justify="right")
    for i, (s, sc) in enumerate(results):
        table.add_row(*(str(s[f]) for f in fields), f"{sc.jf_mean:.3f}", f"{sc.j_mean:.3f}", f"{sc.f_mean:.3f}",
                      "best" if i == best else "")
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    g_path, o_path = out / f"sweep-{split}.csv", out / f"sweep-{split}-objects.csv"
    g_lines = [",".join(fields + ["J&F-Mean", "J-Mean", "F-Mean"])]
    g_lines += [",".join([str(s[f]) for f in fields] + [f"{sc.jf_mean:.6f}", f"{sc.j_mean:.6f}", f"{sc.f_mean:.6f}"])
                for s, sc in results]
    g_path.write_text("\n".join(g_lines) + "\n")
    o_lines = [",".join(fields + ["Sequence", "J-Mean", "F-Mean"])]
    o_lines += [",".join([str(s[f]) for f in fields] + [name, f"{j:.6f}", f"{fm:.6f}"])
                for s, sc in results for name, j, fm in sc.per_sequence_rows()]
    o_path.write_text("\n".join(o_lines) + "\n")
    console.print(f"wrote {g_path} and {o_path}; wall time {time.perf_counter() - t0:.1f} s", soft_wrap=True)
    return results

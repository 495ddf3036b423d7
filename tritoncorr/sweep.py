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
from typing import Any

import numpy as np
import torch

SWEEP_FIELDS = {"topk": int, "temperature": float, "radius": int, "context": int}

__all__ = ["SWEEP_FIELDS", "check_values", "grid_settings", "parse_values", "sweep_davis"]


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
            raise ValueError(
                f"--{name}: {part!r} is not a {cast.__name__} (give a comma-separated list, e.g. 5,10)"
            ) from None
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
def sweep_davis(
    features_fn,
    *,
    root,
    split: str = "val",
    resolution: str = "480p",
    sequences=None,
    config,
    settings: list[dict[str, Any]],
    device="cpu",
    color: str = "rgb",
    cache=None,
    progress: bool = True,
    workers: int = 0,
):
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
                vf = sequence_features(
                    features_fn, seq, codec.size, config=config, device=device, color=color, cache=cache, bar=bar
                )
                gt = seq.load_masks()
                for k, cfg in enumerate(configs):
                    bar.stage(f"setting {k + 1}/{len(configs)}: propagating")
                    prop = propagate_labels(vf, codec, cfg, on_frame=bar.frame)
                    bar.frame()
                    bar.stage(f"setting {k + 1}/{len(configs)}: decoding")
                    pred = (
                        np.stack([prop.decode(t) for t in range(1, len(seq) - 1)])
                        if len(seq) > 2
                        else np.zeros((0, *seq.size), np.uint8)
                    )
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

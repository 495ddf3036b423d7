"""Training curves from ``metrics.jsonl`` with matplotlib: one panel per series.

Panels, in order: the total ``loss``, each named loss term, the learning rate, the gradient norm,
the step time, throughput (steps/s, clips/s), peak memory (MiB) and the validation scores
(``val/*``). Every panel has a step axis and a y label with its unit; noisy training series are
drawn raw (light) with an exponential moving average over them (dark, the smoothing named in the
legend); the learning rate and validation scores are drawn as they are. Non-finite values are
skipped. Drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

NOT_SERIES = {"step", "time", "epoch"}
UNITS = {
    "lr": "learning rate",
    "grad_norm": "gradient L2 norm",
    "step_time": "seconds per step",
    "throughput/steps_per_s": "steps / s",
    "throughput/clips_per_s": "clips / s",
    "memory/peak_mib": "MiB",
    "val/jf": "J&F",
    "val/j": "J (region IoU)",
    "val/f": "F (boundary)",
}
RAW_SERIES = {"lr", "memory/peak_mib"}  # drawn as they are, no smoothing


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl`` (a truncated last line is ignored)."""
    rows = []
    p = Path(path)
    if not p.is_file():
        return rows
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _order(name: str) -> tuple[int, str]:
    if name == "loss":
        return (0, name)
    if name.startswith("val/"):
        return (5, name)
    if name.startswith("memory/"):
        return (4, name)
    if name.startswith("throughput/") or name == "step_time":
        return (3, name)
    if name in ("lr", "grad_norm"):
        return (2, name)
    return (1, name)


def series_from_rows(rows: Iterable[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """``{name: [(step, value), ...]}`` in panel order (loss, terms, lr, grad norm, speed, memory, val)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        step = r.get("step")
        if step is None:
            continue
        for k, v in r.items():
            if k in NOT_SERIES or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if math.isfinite(v):
                out.setdefault(k, []).append((float(step), float(v)))
    return {k: out[k] for k in sorted(out, key=_order)}


def ema(values: list[float], alpha: float) -> list[float]:
    """Exponential moving average ``m_t = alpha m_{t-1} + (1 - alpha) v_t``, started at the first value."""
    out, m = [], None
    for v in values:
        m = v if m is None else alpha * m + (1 - alpha) * v
        out.append(m)
    return out


def smoothing_for(n: int) -> float:
    """The EMA weight for ``n`` points: about 20 points of memory, none for short series."""
    return min(0.98, max(0.0, 1.0 - 20.0 / n)) if n > 1 else 0.0


def unit_of(name: str) -> str:
    """The y-axis label of a series (loss terms: ``loss``)."""
    return UNITS.get(name, "loss" if not name.startswith(("val/", "throughput/", "memory/")) else name)


def plot_curves(rows: list[dict[str, Any]] | Path, out_png: Path, title: str = "") -> Path:
    """Draw the curves of ``rows`` (or a metrics.jsonl path) to ``out_png`` (written atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not isinstance(rows, list):
        rows = read_metrics(Path(rows))
    series = series_from_rows(rows)
    n = max(len(series), 1)
    cols = 2 if n > 1 else 1
    nrows = (n + cols - 1) // cols
    fig = Figure(figsize=(6.0 * cols, 3.2 * nrows + (0.4 if title else 0)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax in axes[len(series) :]:
        ax.set_axis_off()
    if not series:
        axes[0].text(0.5, 0.5, "no metrics yet", ha="center", va="center", transform=axes[0].transAxes)
    for ax, (name, pts) in zip(axes, series.items()):
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        ax.set_title(f"{name}   (last {ys[-1]:.4g})", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(unit_of(name))
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        alpha = smoothing_for(len(ys))
        if name.startswith("val/") or name in RAW_SERIES or alpha == 0.0:
            ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3, color="tab:red", lw=1.5)
        else:
            ax.plot(xs, ys, color="tab:blue", alpha=0.3, lw=0.8, label="raw")
            ax.plot(xs, ema(ys, alpha), color="tab:blue", lw=1.8, label=f"EMA {alpha:.2f}")
            ax.legend(loc="best", fontsize=8, frameon=False)
        if name == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, out_png)
    return out_png

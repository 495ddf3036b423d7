"""Training curves drawn with PIL (no matplotlib): one panel per series of ``metrics.jsonl``.

Panels: the total ``loss``, each named loss term, ``lr`` and, when present, ``val/jf``. Raw values
are drawn light, an exponential moving average dark; non-finite values are skipped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from PIL import Image, ImageDraw, ImageFont

NOT_SERIES = {"step", "time", "epoch", "step_time"}
PANEL_W, PANEL_H = 520, 300
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 70, 16, 30, 36


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


def series_from_rows(rows: Iterable[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """``{name: [(step, value), ...]}`` with ``loss`` first, ``lr`` and ``val/*`` last."""
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

    def order(name: str) -> tuple[int, str]:
        if name == "loss":
            return (0, name)
        if name.startswith("val/"):
            return (3, name)
        if name in ("lr", "grad_norm"):
            return (2, name)
        return (1, name)

    return {k: out[k] for k in sorted(out, key=order)}


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.2e}"
    return f"{v:.4g}"


def _ema(values: list[float], alpha: float) -> list[float]:
    out, m = [], None
    for v in values:
        m = v if m is None else alpha * m + (1 - alpha) * v
        out.append(m)
    return out


def _panel(draw: ImageDraw.ImageDraw, x0: int, y0: int, name: str, pts: list[tuple[float, float]], font) -> None:
    left, top = x0 + MARGIN_L, y0 + MARGIN_T
    right, bottom = x0 + PANEL_W - MARGIN_R, y0 + PANEL_H - MARGIN_B
    draw.rectangle([left, top, right, bottom], outline=(90, 90, 90))
    last = pts[-1][1] if pts else float("nan")
    draw.text((left, y0 + 8), f"{name}   (last {_fmt(last)})", fill=(0, 0, 0), font=font)
    if not pts:
        return
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    xmin, xmax = min(xs), max(xs)
    ymin, ymax = min(ys), max(ys)
    if xmax == xmin:
        xmax = xmin + 1
    if ymax == ymin:
        pad = abs(ymin) * 0.05 or 1.0
        ymin, ymax = ymin - pad, ymax + pad
    pad = (ymax - ymin) * 0.05
    ymin, ymax = ymin - pad, ymax + pad

    def tx(x: float) -> float:
        return left + (x - xmin) / (xmax - xmin) * (right - left)

    def ty(y: float) -> float:
        return bottom - (y - ymin) / (ymax - ymin) * (bottom - top)

    for i in range(5):  # grid and y labels
        yv = ymin + (ymax - ymin) * i / 4
        yy = ty(yv)
        draw.line([left, yy, right, yy], fill=(228, 228, 228))
        draw.text((x0 + 4, yy - 6), _fmt(yv), fill=(60, 60, 60), font=font)
    xticks = sorted({int(round(xmin + (xmax - xmin) * i / 4)) for i in range(5)})
    for xv in xticks:  # x labels at integer steps
        xx = tx(xv)
        draw.line([xx, bottom, xx, bottom + 4], fill=(90, 90, 90))
        label = f"{int(round(xv))}"
        draw.text((xx - 3 * len(label), bottom + 8), label, fill=(60, 60, 60), font=font)
    draw.text((right - 30, bottom + 20), "step", fill=(60, 60, 60), font=font)
    line = [(tx(x), ty(y)) for x, y in pts]
    if len(line) == 1 or name.startswith("val/"):
        for px, py in line:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=(200, 60, 40))
    if len(line) > 1:
        if name.startswith("val/") or name == "lr":
            draw.line(line, fill=(200, 60, 40), width=2)
        else:
            draw.line(line, fill=(160, 190, 230), width=1)
            alpha = min(0.98, max(0.0, 1.0 - 20.0 / len(pts)))
            smooth = _ema(ys, alpha)
            draw.line([(tx(x), ty(y)) for x, y in zip(xs, smooth)], fill=(20, 70, 160), width=2)


def plot_curves(rows: list[dict[str, Any]] | Path, out_png: Path, title: str = "") -> Path:
    """Draw the curves of ``rows`` (or a metrics.jsonl path) to ``out_png`` (written atomically)."""
    if not isinstance(rows, list):
        rows = read_metrics(Path(rows))
    series = series_from_rows(rows)
    n = max(len(series), 1)
    cols = 2 if n > 1 else 1
    nrows = (n + cols - 1) // cols
    head = 28 if title else 0
    img = Image.new("RGB", (cols * PANEL_W, nrows * PANEL_H + head), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    if title:
        draw.text((10, 8), title, fill=(0, 0, 0), font=font)
    if not series:
        draw.text((20, head + 20), "no metrics yet", fill=(0, 0, 0), font=font)
    for i, (name, pts) in enumerate(series.items()):
        _panel(draw, (i % cols) * PANEL_W, head + (i // cols) * PANEL_H, name, pts, font)
    out_png = Path(out_png)
    tmp = out_png.with_name(f".{out_png.name}.tmp-{os.getpid()}.png")
    img.save(tmp)
    os.replace(tmp, out_png)
    return out_png

"""A self-contained HTML report of ``tritoncorr eval compare A B [C ...] --html report.html``.

One file, nothing fetched at view time (no script, no stylesheet, no font from elsewhere; every
image is an embedded PNG ``data:`` URI):

* the settings check and the paired statistics of each folder against the first (the baseline):
  mean J&F difference, standard error, seeded bootstrap 95% interval, wins/losses, verdict;
* the per-sequence table: J&F of every folder and the paired difference to the baseline, one row
  per sequence (``<tr class="seq">``), coloured by the sign of the difference;
* a matplotlib chart of the per-sequence differences with the bootstrap interval of their mean;
* per-frame J curves (region IoU averaged over a sequence's objects, frames 1 .. T-2 as the
  toolkit scores them), one panel per sequence, one line per folder, computed from the result PNGs
  and the DAVIS ground truth;
* for the largest wins and losses of each folder against the baseline, an overlay strip of a few
  frames: ground truth, baseline and the other folder, one row each.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from tritoncorr.compare import ComparisonError, PairedComparison

STRIP_FRAMES = 4
STRIP_SEQUENCES = 2  # largest wins and as many largest losses, per compared folder

__all__ = ["per_frame_j", "write_report"]


def _png_uri(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fig_uri(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _sequence_dir(folder: Path, seq: str) -> Path | None:
    """``<folder>/<seq>`` or, for a sharded evaluation, ``<folder>/<shard>/<seq>``."""
    if (folder / seq).is_dir():
        return folder / seq
    for shard in sorted(p for p in folder.iterdir() if p.is_dir()):
        if (shard / seq).is_dir():
            return shard / seq
    return None


def _predictions(folder: Path, seq, frame_ids) -> np.ndarray:
    from tritoncorr.evals.davis import read_index_png

    d = _sequence_dir(folder, seq.name)
    if d is None:
        raise ComparisonError(f"{folder}: no result PNGs for sequence {seq.name!r} (expected {folder / seq.name}/)")
    out = []
    for fid in frame_ids:
        p = d / f"{fid}.png"
        if not p.is_file():
            raise ComparisonError(f"{p}: result PNG missing (the report reads each folder's <sequence>/<frame>.png)")
        out.append(read_index_png(p))
    return np.stack(out)


def per_frame_j(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """J per frame averaged over the objects: ``gt`` ``(T, H, W)`` ground truth of all frames (255 void),
    ``pred`` ``(T, H, W)``; frames 1 .. T-2 as the toolkit scores them -> ``(T - 2,)``."""
    from tritoncorr.evals.davis import VOID, jaccard

    g = np.where(gt == VOID, 0, gt)
    n_obj = int(g[0].max())
    g, p = g[1:-1], pred[1:-1]
    if n_obj == 0:
        return np.full(len(g), np.nan)
    return np.mean([jaccard(g == k, p == k) for k in range(1, n_obj + 1)], axis=0)


def _settings(folder: Path) -> dict[str, Any]:
    from tritoncorr.compare import _provenances

    for _, rec in _provenances(folder):
        if rec and rec.get("eval"):
            return rec["eval"]
    return {}


def _dataset(folders: list[Path], split: str | None, root: Path | None, sequences: list[str]):
    from tritoncorr.evals.davis import DavisDataset, DavisFormatError

    ev = _settings(folders[0])
    root = Path(root) if root is not None else (Path(ev["root"]) if ev.get("root") else None)
    if root is None or not root.is_dir():
        raise ComparisonError(
            f"the report needs the DAVIS frames and ground truth: pass --root (the root recorded in "
            f"{folders[0]}/provenance.json is {ev.get('root')!r})"
        )
    try:
        return DavisDataset(
            root, split or ev.get("split") or "val", ev.get("resolution") or "480p", sequences, require_all_masks=True
        )
    except DavisFormatError as err:
        raise ComparisonError(str(err)) from None


def _diff_chart(seqs: list[str], results: list[PairedComparison], labels: list[str]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 0.45 * len(seqs) + 2), 3.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(results), 1)
    x = np.arange(len(seqs))
    for k, (r, lab) in enumerate(zip(results, labels)):
        d = dict(zip(r.sequences, r.diffs))
        vals = np.array([d.get(s, np.nan) for s in seqs])
        ax.bar(
            x + (k - (len(results) - 1) / 2) * width,
            vals,
            width,
            label=f"{lab} - A",
            color=[("tab:green" if v > 0 else "tab:red") for v in np.nan_to_num(vals)],
            alpha=0.5 + 0.4 / (k + 1),
        )
        if r.enough:
            ax.axhspan(r.ci_low, r.ci_high, color=f"C{k}", alpha=0.15, label=f"95% interval of the mean ({lab})")
        ax.axhline(r.mean, color=f"C{k}", lw=1, ls="--")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, seqs, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("J&F difference to A")
    ax.set_title("paired J&F differences per sequence")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(True, axis="y", alpha=0.3)
    return _fig_uri(fig)


def _j_curves(names: list[str], curves: dict[str, list[np.ndarray]], labels: list[str]) -> str:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    cols = 3
    rows = (len(names) + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    for ax, name in zip(axes, names):
        for k, (j, lab) in enumerate(zip(curves[name], labels)):
            ax.plot(np.arange(1, len(j) + 1), j, color=f"C{k}", lw=1.4, label=f"{lab} (mean {np.nanmean(j):.3f})")
        ax.set_title(name, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("frame")
        ax.set_ylabel("J (IoU)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, frameon=False, loc="lower left")
    return _fig_uri(fig)


def _strip(seq, preds: list[np.ndarray], frames: int = STRIP_FRAMES) -> np.ndarray:
    """Rows: ground truth, then each prediction; ``frames`` evenly spaced frames; height 160 each."""
    from tritoncorr.visualize import overlay_strip

    idx = (
        np.unique(np.linspace(1, len(seq) - 2, num=frames).round().astype(int)) if len(seq) > 2 else np.arange(len(seq))
    )
    imgs = [seq.load_frame(int(t)) for t in idx]
    rows = [overlay_strip(imgs, [seq.load_mask(int(t)) for t in idx], height=160)]
    rows += [overlay_strip(imgs, [p[t] for t in idx], height=160) for p in preds]
    gap = np.full((6, rows[0].shape[1], 3), 255, np.uint8)
    out = [rows[0]]
    for r in rows[1:]:
        out += [gap, r]
    return np.concatenate(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:0.9em}th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f4f4f4}
td.win{color:#13702b;font-weight:600}td.loss{color:#b01c1c;font-weight:600}tr.mean td{font-weight:700;border-top:2px solid #999}
.note{color:#8a5a00}.bad{color:#b01c1c}code{background:#f4f4f4;padding:1px 4px}img{max-width:100%}
figure{margin:12px 0}figcaption{font-size:0.9em;color:#555}
"""


def _summary_table(labels: list[str], results: list[PairedComparison], n_boot: int, seed: int) -> list[str]:
    """HTML of the paired-difference table: one row per folder after the baseline ``A``."""
    e = html.escape
    parts: list[str] = []
    parts.append(
        f"<h2>Paired differences against [A]</h2><p>Bootstrap over sequences: {n_boot} resamples, "
        f"seed {seed}; 95% percentile interval of the mean difference.</p>"
    )
    parts.append(
        '<table id="summary"><thead><tr><th></th><th>n</th><th>mean diff</th><th>std err</th>'
        "<th>95% interval</th><th>P(better)</th><th>wins/losses</th><th>verdict</th></tr></thead><tbody>"
    )
    for lab, r in zip(labels[1:], results):
        if r.enough:
            verdict = f"{lab} {r.verdict}" + (" than A" if r.verdict in ("better", "worse") else "")
            ci, pb = f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]", f"{r.p_better:.3f}"
        else:
            verdict = f"no verdict: only {len(r.sequences)} paired sequence(s), at least {r.min_sequences} are needed"
            ci = pb = "-"
        se = f"{r.se:.4f}" if np.isfinite(r.se) else "-"
        parts.append(
            f"<tr><td>[{lab}]</td><td>{len(r.sequences)}</td><td>{r.mean:+.4f}</td><td>{se}</td>"
            f"<td>{ci}</td><td>{pb}</td><td>{r.wins}/{r.losses}</td><td>{e(verdict)}</td></tr>"
        )
    parts.append("</tbody></table>")
    return parts


def _sequence_table(
    labels: list[str], seqs: list[str], scores: list[dict[str, float]], results: list[PairedComparison]
) -> list[str]:
    """HTML of the J&F table: one row per sequence (each folder's score and its difference to ``A``), then the means."""
    e = html.escape
    parts: list[str] = []
    parts.append('<h2>J&amp;F per sequence</h2><table id="sequences"><thead><tr><th>sequence</th>')
    for i, lab in enumerate(labels):
        parts.append(f"<th>[{lab}] J&amp;F</th>" + (f"<th>{lab} - A</th>" if i else ""))
    parts.append("</tr></thead><tbody>")
    for s in seqs:
        cells = []
        for i, sc in enumerate(scores):
            cells.append(f"<td>{sc[s]:.3f}</td>" if s in sc else "<td>-</td>")
            if i:
                if s in sc and s in scores[0]:
                    d = sc[s] - scores[0][s]
                    cls = "win" if d > 0 else "loss" if d < 0 else ""
                    cells.append(f'<td class="{cls}">{d:+.3f}</td>')
                else:
                    cells.append("<td>-</td>")
        parts.append(f'<tr class="seq"><td>{e(s)}</td>{"".join(cells)}</tr>')
    mean_cells = []
    for i, sc in enumerate(scores):
        mean_cells.append(f"<td>{np.mean(list(sc.values())):.3f}</td>")
        if i:
            mean_cells.append(f"<td>{results[i - 1].mean:+.3f}</td>")
    parts.append(f'<tr class="mean"><td>mean</td>{"".join(mean_cells)}</tr></tbody></table>')
    return parts


def _win_loss_strips(ds, labels: list[str], results: list[PairedComparison], preds: dict) -> list[str]:
    """HTML of the largest wins and losses of each folder against ``A``: ground truth, ``A`` and the folder, as strips."""
    e = html.escape
    parts: list[str] = []
    parts.append("<h2>Largest wins and losses</h2>")
    by_name = {s.name: s for s in ds}
    for k, (lab, r) in enumerate(zip(labels[1:], results), start=1):
        order = np.argsort(r.diffs)
        picks = [("win", i) for i in order[::-1][:STRIP_SEQUENCES] if r.diffs[i] > 0]
        picks += [("loss", i) for i in order[:STRIP_SEQUENCES] if r.diffs[i] < 0]
        for kind, i in picks:
            name = r.sequences[i]
            strip = _strip(by_name[name], [preds[name][0], preds[name][k]])
            parts.append(
                f'<figure><img alt="{kind} {e(name)}" src="{_png_uri(strip)}"><figcaption>{kind} of '
                f"[{lab}] on <b>{e(name)}</b> ({r.diffs[i]:+.3f} J&amp;F): rows = ground truth, [A], "
                f"[{lab}]</figcaption></figure>"
            )
        if not picks:
            parts.append(f"<p>[{lab}] and [A] score alike on every sequence.</p>")
    return parts


def write_report(
    path: str | Path,
    folders: list[Path],
    scores: list[dict[str, float]],
    results: list[PairedComparison],
    *,
    split: str | None = None,
    root: Path | None = None,
    settings_diffs: list[str] | None = None,
    n_boot: int = 10000,
    seed: int = 0,
) -> Path:
    """Write the report (see the module docstring) to ``path`` and return it.

    Args:
        folders: the evaluation folders, the first is the baseline ``A``.
        scores: ``{sequence: J&F}`` of each folder (:func:`tritoncorr.compare.read_sequence_scores`).
        results: the paired comparison of each later folder with the first.
        split, root: DAVIS split and root for frames and ground truth (default: the first folder's
            ``provenance.json``).
        settings_diffs: the differences of recorded settings (printed at the top).

    Raises:
        ComparisonError: no DAVIS root, or a folder without the result PNGs of a sequence.
    """
    folders = [Path(f) for f in folders]
    labels = [chr(65 + i) for i in range(len(folders))]
    seqs = sorted(set().union(*scores))
    common = sorted(set.intersection(*(set(s) for s in scores)))
    ds = _dataset(folders, split, root, common)
    curves: dict[str, list[np.ndarray]] = {}
    preds: dict[str, list[np.ndarray]] = {}
    for seq in ds:
        gt = seq.load_masks()
        ids = seq.mask_ids
        preds[seq.name] = [_predictions(f, seq, ids) for f in folders]
        curves[seq.name] = [per_frame_j(gt, p) for p in preds[seq.name]]

    e = html.escape
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>tritoncorr eval compare</title>'
        f"<style>{_CSS}</style></head><body>",
        "<h1>tritoncorr eval compare</h1><ul>",
    ]
    for lab, f in zip(labels, folders):
        parts.append(f"<li><b>[{lab}]</b> <code>{e(str(f))}</code>{' (baseline)' if lab == 'A' else ''}</li>")
    parts.append("</ul>")
    if settings_diffs:
        parts.append('<p class="bad">The recorded evaluation settings differ (compared anyway):</p><ul>')
        parts += [f'<li class="bad">{e(d)}</li>' for d in settings_diffs]
        parts.append("</ul>")

    parts += _summary_table(labels, results, n_boot, seed)
    parts += _sequence_table(labels, seqs, scores, results)
    parts.append(
        f'<figure><img alt="paired differences per sequence" src="{_diff_chart(common, results, labels[1:])}">'
        "<figcaption>Bars: each sequence's J&amp;F difference to A; dashed line: their mean; band: the "
        "bootstrap 95% interval of the mean.</figcaption></figure>"
    )
    names = [s.name for s in ds]
    parts.append(
        "<h2>Per-frame J</h2>"
        f'<figure><img alt="per-frame J curves" src="{_j_curves(names, curves, labels)}">'
        "<figcaption>Region similarity J (IoU) per frame, averaged over each sequence's objects, frames "
        "1 .. T-2 (the frames the toolkit scores).</figcaption></figure>"
    )

    parts += _win_loss_strips(ds, labels, results, preds)
    parts.append("</body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts), encoding="utf-8")
    return path

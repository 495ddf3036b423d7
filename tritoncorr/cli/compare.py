"""``tritoncorr eval compare A B [C ...]``: the per-sequence J&F table and the paired statistics of
:mod:`tritoncorr.compare` (the first folder is the baseline), optionally as CSV and an HTML report."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from tritoncorr.cli.common import fail
from tritoncorr.compare import (
    MIN_SEQUENCES,
    ComparisonError,
    PairedComparison,
    check_settings,
    paired_comparison,
    read_sequence_scores,
)


def _verdict_text(r: PairedComparison, i: int) -> str:
    if r.verdict == "no verdict":
        return f"no verdict (n < {r.min_sequences})"
    return f"{chr(65 + i)} {r.verdict}" + (" than A" if r.verdict in ("better", "worse") else "")


def _check_settings(console, folders: list[Path], allow_different_settings: bool) -> list[str]:
    """Print the notes and the differences of the folders' recorded settings; exits 2 on differences
    unless ``allow_different_settings``. Returns the differences."""
    diffs, notes = check_settings(folders)
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    if diffs:
        head = "the evaluation settings differ" + (
            " (compared anyway: --allow-different-settings)" if allow_different_settings else ""
        )
        console.print(f"[{'yellow' if allow_different_settings else 'red'}]{head}:[/]", soft_wrap=True)
        for d in diffs:
            console.print(f"  {d}", highlight=False, soft_wrap=True)
        if not allow_different_settings:
            fail(
                "refusing to compare evaluations made with different settings; rerun them alike, or pass "
                "--allow-different-settings"
            )
    return diffs


def _print_table(
    console, names: list[str], seqs: list[str], scores: list[dict[str, float]], results: list[PairedComparison]
) -> None:
    """J&F per sequence of every folder, with each folder's difference to the first and the means."""
    from rich.table import Table

    table = Table(title="J&F per sequence (first column = baseline)")
    table.add_column("sequence")
    for i, n in enumerate(names):
        table.add_column(f"[{chr(65 + i)}] {n}", justify="right")
        if i:
            table.add_column(f"{chr(65 + i)}-A", justify="right")
    for s in seqs:
        cells = []
        for i, sc in enumerate(scores):
            cells.append(f"{sc[s]:.3f}" if s in sc else "-")
            if i:
                cells.append(f"{sc[s] - scores[0][s]:+.3f}" if s in sc and s in scores[0] else "-")
        table.add_row(s, *cells)
    mean_cells = []
    for i, sc in enumerate(scores):
        mean_cells.append(f"{np.mean(list(sc.values())):.3f}")
        if i:
            mean_cells.append(f"{results[i - 1].mean:+.3f}")
    table.add_row("[bold]mean[/bold]", *mean_cells)
    console.print(table)


def _print_summary(console, results: list[PairedComparison], n_boot: int, seed: int) -> None:
    """The paired statistics of each folder against the first, then one sentence each."""
    from rich.table import Table

    summary = Table(title=f"paired differences vs [A] (bootstrap {n_boot}, seed {seed})")
    for col in ("", "n", "mean diff", "std err", "95% interval", "P(better)", "wins/losses", "verdict"):
        summary.add_column(col, justify="right" if col not in ("", "verdict") else "left")
    for i, r in enumerate(results, start=1):
        se = f"{r.se:.4f}" if math.isfinite(r.se) else "-"
        ci = f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]" if r.enough else "-"
        summary.add_row(
            f"[{chr(65 + i)}]",
            str(len(r.sequences)),
            f"{r.mean:+.4f}",
            se,
            ci,
            f"{r.p_better:.3f}" if r.enough else "-",
            f"{r.wins}/{r.losses}",
            _verdict_text(r, i),
        )
    console.print(summary)
    for i, r in enumerate(results, start=1):
        if not r.enough:
            console.print(
                f"[{chr(65 + i)}] vs [A]: [bold]no verdict[/bold]: only {len(r.sequences)} paired "
                f"sequence(s), at least {r.min_sequences} are needed (a bootstrap over so few sequences "
                f"says nothing; evaluate more sequences, e.g. all of davis-dev). Mean J&F difference "
                f"{r.mean:+.4f}.",
                highlight=False,
                soft_wrap=True,
            )
            continue
        console.print(
            f"[{chr(65 + i)}] vs [A] over {len(r.sequences)} sequences: mean J&F difference {r.mean:+.4f} "
            f"(95% interval [{r.ci_low:+.4f}, {r.ci_high:+.4f}], better in {r.p_better:.1%} of resamples): "
            f"{_verdict_text(r, i)}",
            highlight=False,
            soft_wrap=True,
        )


def _write_csv(
    csv_path: Path, names: list[str], seqs: list[str], scores: list[dict[str, float]], results: list[PairedComparison]
) -> None:
    """The J&F table, an empty row, then one row of statistics per compared folder."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sequence"] + names)
        for s in seqs:
            w.writerow([s] + [f"{sc[s]:.6f}" if s in sc else "" for sc in scores])
        w.writerow([])
        w.writerow(
            [
                "compared",
                "baseline",
                "n",
                "mean_diff",
                "std_err",
                "ci_low",
                "ci_high",
                "p_better",
                "wins",
                "losses",
                "verdict",
            ]
        )
        for n, r in zip(names[1:], results):
            w.writerow(
                [
                    n,
                    names[0],
                    len(r.sequences),
                    f"{r.mean:.6f}",
                    f"{r.se:.6f}",
                    f"{r.ci_low:.6f}",
                    f"{r.ci_high:.6f}",
                    f"{r.p_better:.4f}",
                    r.wins,
                    r.losses,
                    r.verdict,
                ]
            )


def compare_cli(
    folders: list[Path],
    *,
    split: str | None,
    csv_path: Path | None,
    n_boot: int,
    seed: int,
    allow_different_settings: bool = False,
    min_sequences: int = MIN_SEQUENCES,
    html_path: Path | None = None,
    root: Path | None = None,
) -> list[PairedComparison]:
    """``tritoncorr eval compare``: print the per-sequence table and the paired statistics (first = baseline);
    ``html_path``: also write the self-contained HTML report (:mod:`tritoncorr.report`)."""
    from rich.console import Console

    console = Console()
    if len(folders) < 2:
        fail("give at least two evaluation folders (the first is the baseline)")
    diffs = _check_settings(console, folders, allow_different_settings)
    try:
        scores = [read_sequence_scores(f, split) for f in folders]
        results = [
            paired_comparison(scores[0], s, n_boot=n_boot, seed=seed, min_sequences=min_sequences) for s in scores[1:]
        ]
    except ComparisonError as err:
        fail(str(err))
    names = [str(f) for f in folders]
    seqs = sorted(set().union(*scores))
    _print_table(console, names, seqs, scores, results)
    _print_summary(console, results, n_boot, seed)
    if html_path is not None:
        from tritoncorr.report import write_report

        try:
            write_report(
                html_path,
                folders,
                scores,
                results,
                split=split,
                root=root,
                settings_diffs=diffs,
                n_boot=n_boot,
                seed=seed,
            )
        except ComparisonError as err:
            fail(str(err))
        console.print(f"wrote {html_path}")
    if csv_path is not None:
        _write_csv(Path(csv_path), names, seqs, scores, results)
        console.print(f"wrote {csv_path}")
    return results

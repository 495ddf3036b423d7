"""Paired comparison of DAVIS evaluations: ``tritoncorr eval compare A B [C ...]``.

One J&F from one sequence proves nothing (random initialisations alone span 0.50-0.70 on a single
DAVIS sequence), so models are compared sequence by sequence on the same set:

* per sequence, J&F = mean over its objects of ``(J-Mean + F-Mean) / 2``, read from the toolkit's
  ``per-sequence_results-<split>.csv`` that ``tritoncorr eval davis`` writes (rows ``<seq>_<obj>``);
* for each folder after the first, the paired differences ``d_s = JF_other(s) - JF_first(s)`` over the
  sequences both hold, their mean, the standard error ``sd(d) / sqrt(n)``, and a seeded paired
  bootstrap (resampling sequences with replacement) giving a 95% percentile interval of the mean and
  the fraction of resampled means above 0 (how often the other folder comes out better);
* verdict: "better" / "worse" when the 95% interval excludes 0, otherwise "no clear difference";
  no verdict at all below :data:`MIN_SEQUENCES` paired sequences (a bootstrap over 1-4 values
  says nothing: with one sequence the interval has zero width and the standard error is undefined).

Before comparing, the evaluation settings recorded in each folder's ``provenance.json``
(:mod:`tritoncorr.provenance`: benchmark, split, resolution, input size, precision, every
propagation field) must agree; folders whose settings differ are refused, with the list of
differences, unless ``allow_different_settings`` (``--allow-different-settings``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["MIN_SEQUENCES", "ComparisonError", "PairedComparison", "check_settings", "read_sequence_scores",
           "paired_comparison", "compare_cli"]

MIN_SEQUENCES = 5


class ComparisonError(ValueError):
    """An evaluation folder that cannot be compared (no CSV, no common sequence); the message names it."""


def _per_sequence_csv(folder: Path, split: str | None) -> Path:
    folder = Path(folder)
    if folder.is_file() and folder.name.startswith("per-sequence_results-"):
        return folder
    if not folder.is_dir():
        raise ComparisonError(f"{folder}: not an evaluation folder (it does not exist)")
    if split is not None:
        path = folder / f"per-sequence_results-{split}.csv"
        if not path.is_file():
            raise ComparisonError(f"{folder}: no per-sequence_results-{split}.csv (run tritoncorr eval davis first)")
        return path
    found = sorted(folder.glob("per-sequence_results-*.csv"))
    if not found:
        raise ComparisonError(f"{folder}: no per-sequence_results-<split>.csv (run tritoncorr eval davis first)")
    if len(found) > 1:
        raise ComparisonError(f"{folder}: several splits ({', '.join(p.name for p in found)}); choose one with --split")
    return found[0]


def read_sequence_scores(folder: str | Path, split: str | None = None) -> dict[str, float]:
    """``{sequence: J&F}`` from an evaluation folder (or its per-sequence CSV).

    J&F of a sequence is the mean over its objects of ``(J-Mean + F-Mean) / 2``. A folder without a
    CSV of its own whose sub-folders are evaluations (a set evaluated in shards, e.g. one
    ``eval davis -s SEQ --out DIR/SEQ`` per sequence) gives the union of theirs; a sequence scored
    in two shards is an error.
    """
    folder = Path(folder)
    if folder.is_dir() and not list(folder.glob("per-sequence_results-*.csv")):
        shards = sorted(p for p in folder.iterdir() if p.is_dir() and list(p.glob("per-sequence_results-*.csv")))
        if shards:
            merged: dict[str, float] = {}
            for shard in shards:
                for seq, jf in read_sequence_scores(shard, split).items():
                    if seq in merged:
                        raise ComparisonError(f"{folder}: sequence {seq!r} is scored in two shards (one is {shard})")
                    merged[seq] = jf
            return merged
    return _read_csv(_per_sequence_csv(folder, split))


def _read_csv(path: Path) -> dict[str, float]:
    per_seq: dict[str, list[float]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"Sequence", "J-Mean", "F-Mean"} - set(reader.fieldnames or [])
        if missing:
            raise ComparisonError(f"{path}: missing columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            name, _, obj = row["Sequence"].rpartition("_")
            if not name or not obj.isdigit():
                raise ComparisonError(f"{path}:{line}: sequence {row['Sequence']!r} is not '<sequence>_<object id>'")
            try:
                j, fm = float(row["J-Mean"]), float(row["F-Mean"])
            except ValueError:
                raise ComparisonError(f"{path}:{line}: J-Mean/F-Mean are not numbers: {row}") from None
            per_seq.setdefault(name, []).append((j + fm) / 2)
    if not per_seq:
        raise ComparisonError(f"{path}: no rows")
    return {s: float(np.mean(v)) for s, v in per_seq.items()}


@dataclass
class PairedComparison:
    """Paired differences ``other - baseline`` over the common sequences (see the module docstring)."""

    sequences: list[str]
    diffs: np.ndarray
    mean: float
    se: float
    ci_low: float
    ci_high: float
    p_better: float
    wins: int
    losses: int
    min_sequences: int = MIN_SEQUENCES

    @property
    def enough(self) -> bool:
        """Whether there are enough paired sequences for a verdict."""
        return len(self.sequences) >= self.min_sequences

    @property
    def verdict(self) -> str:
        if not self.enough:
            return "no verdict"
        if self.ci_low > 0:
            return "better"
        if self.ci_high < 0:
            return "worse"
        return "no clear difference"


def paired_comparison(baseline: dict[str, float], other: dict[str, float], *, n_boot: int = 10000,
                      seed: int = 0, min_sequences: int = MIN_SEQUENCES) -> PairedComparison:
    """Compare ``other`` with ``baseline`` sequence by sequence (seeded paired bootstrap, 95% interval);
    the verdict needs ``min_sequences`` paired sequences."""
    common = sorted(set(baseline) & set(other))
    if not common:
        raise ComparisonError("the two evaluations share no sequence")
    d = np.array([other[s] - baseline[s] for s in common], dtype=np.float64)
    n = len(d)
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(int(n_boot), n))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return PairedComparison(common, d, float(d.mean()), se, float(lo), float(hi), float((means > 0).mean()),
                            int((d > 0).sum()), int((d < 0).sum()), int(min_sequences))


def _provenances(folder: Path) -> list[tuple[Path, dict | None]]:
    """``(folder, provenance)`` of an evaluation folder, or of each of its shards (see :func:`read_sequence_scores`)."""
    from tritoncorr.provenance import read_provenance

    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    if folder.is_dir() and not list(folder.glob("per-sequence_results-*.csv")):
        shards = sorted(p for p in folder.iterdir() if p.is_dir() and list(p.glob("per-sequence_results-*.csv")))
        if shards:
            return [(p, read_provenance(p)) for p in shards]
    return [(folder, read_provenance(folder))]


def check_settings(folders: list[Path]) -> tuple[list[str], list[str]]:
    """Compare the recorded evaluation settings of ``folders`` (and of the shards inside each) with
    the first one's. Returns ``(differences, notes)``: ``"B vs A: propagation.topk: 10 -> 5"`` lines,
    and notes about folders that record no settings (they cannot be checked)."""
    from tritoncorr.provenance import settings_differences

    records = [(i, p, rec) for i, f in enumerate(folders) for p, rec in _provenances(Path(f))]
    notes = [f"{p}: no provenance.json with evaluation settings; its settings cannot be checked"
             for _, p, rec in records if not (rec or {}).get("eval")]
    with_settings = [(i, p, rec) for i, p, rec in records if (rec or {}).get("eval")]
    diffs = []
    if with_settings:
        i0, p0, ref = with_settings[0]
        for i, p, rec in with_settings[1:]:
            for d in settings_differences(ref, rec):
                diffs.append(f"[{chr(65 + i)}] {p} vs [{chr(65 + i0)}] {p0}: {d}")
    return diffs, notes


def _verdict_text(r: PairedComparison, i: int) -> str:
    if r.verdict == "no verdict":
        return f"no verdict (n < {r.min_sequences})"
    return f"{chr(65 + i)} {r.verdict}" + (" than A" if r.verdict in ("better", "worse") else "")


def compare_cli(folders: list[Path], *, split: str | None, csv_path: Path | None, n_boot: int, seed: int,
                allow_different_settings: bool = False, min_sequences: int = MIN_SEQUENCES,
                html_path: Path | None = None, root: Path | None = None) -> list[PairedComparison]:
    """``tritoncorr eval compare``: print the per-sequence table and the paired statistics (first = baseline);
    ``html_path``: also write the self-contained HTML report (:mod:`tritoncorr.report`)."""
    import typer
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if len(folders) < 2:
        console.print("[red]error:[/red] give at least two evaluation folders (the first is the baseline)")
        raise typer.Exit(code=2)
    diffs, notes = check_settings(folders)
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    if diffs:
        head = "the evaluation settings differ" + (" (compared anyway: --allow-different-settings)"
                                                  if allow_different_settings else "")
        console.print(f"[{'yellow' if allow_different_settings else 'red'}]{head}:[/]", soft_wrap=True)
        for d in diffs:
            console.print(f"  {d}", highlight=False, soft_wrap=True)
        if not allow_different_settings:
            console.print("[red]error:[/red] refusing to compare evaluations made with different settings; "
                          "rerun them alike, or pass --allow-different-settings", soft_wrap=True)
            raise typer.Exit(code=2)
    try:
        scores = [read_sequence_scores(f, split) for f in folders]
        results = [paired_comparison(scores[0], s, n_boot=n_boot, seed=seed, min_sequences=min_sequences)
                   for s in scores[1:]]
    except ComparisonError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    names = [str(f) for f in folders]
    seqs = sorted(set().union(*scores))
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

    summary = Table(title=f"paired differences vs [A] (bootstrap {n_boot}, seed {seed})")
    for col in ("", "n", "mean diff", "std err", "95% interval", "P(better)", "wins/losses", "verdict"):
        summary.add_column(col, justify="right" if col not in ("", "verdict") else "left")
    for i, r in enumerate(results, start=1):
        se = f"{r.se:.4f}" if math.isfinite(r.se) else "-"
        ci = f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]" if r.enough else "-"
        summary.add_row(f"[{chr(65 + i)}]", str(len(r.sequences)), f"{r.mean:+.4f}", se, ci,
                        f"{r.p_better:.3f}" if r.enough else "-", f"{r.wins}/{r.losses}", _verdict_text(r, i))
    console.print(summary)
    for i, r in enumerate(results, start=1):
        if not r.enough:
            console.print(f"[{chr(65 + i)}] vs [A]: [bold]no verdict[/bold]: only {len(r.sequences)} paired "
                          f"sequence(s), at least {r.min_sequences} are needed (a bootstrap over so few sequences "
                          f"says nothing; evaluate more sequences, e.g. all of davis-dev). Mean J&F difference "
                          f"{r.mean:+.4f}.", highlight=False, soft_wrap=True)
            continue
        console.print(f"[{chr(65 + i)}] vs [A] over {len(r.sequences)} sequences: mean J&F difference {r.mean:+.4f} "
                      f"(95% interval [{r.ci_low:+.4f}, {r.ci_high:+.4f}], better in {r.p_better:.1%} of resamples): "
                      f"{_verdict_text(r, i)}", highlight=False, soft_wrap=True)
    if html_path is not None:
        from tritoncorr.report import write_report

        try:
            write_report(html_path, folders, scores, results, split=split, root=root, settings_diffs=diffs,
                         n_boot=n_boot, seed=seed)
        except ComparisonError as err:
            console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        console.print(f"wrote {html_path}")

    if csv_path is not None:
        csv_path = Path(csv_path)
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sequence"] + names)
            for s in seqs:
                w.writerow([s] + [f"{sc[s]:.6f}" if s in sc else "" for sc in scores])
            w.writerow([])
            w.writerow(["compared", "baseline", "n", "mean_diff", "std_err", "ci_low", "ci_high", "p_better",
                        "wins", "losses", "verdict"])
            for n, r in zip(names[1:], results):
                w.writerow([n, names[0], len(r.sequences), f"{r.mean:.6f}", f"{r.se:.6f}", f"{r.ci_low:.6f}",
                            f"{r.ci_high:.6f}", f"{r.p_better:.4f}", r.wins, r.losses, r.verdict])
        console.print(f"wrote {csv_path}")
    return results

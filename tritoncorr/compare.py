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

__all__ = [
    "MIN_SEQUENCES",
    "ComparisonError",
    "PairedComparison",
    "check_settings",
    "read_sequence_scores",
    "paired_comparison",
]

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


def paired_comparison(
    baseline: dict[str, float],
    other: dict[str, float],
    *,
    n_boot: int = 10000,
    seed: int = 0,
    min_sequences: int = MIN_SEQUENCES,
) -> PairedComparison:
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
    return PairedComparison(
        common,
        d,
        float(d.mean()),
        se,
        float(lo),
        float(hi),
        float((means > 0).mean()),
        int((d > 0).sum()),
        int((d < 0).sum()),
        int(min_sequences),
    )


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
    notes = [
        f"{p}: no provenance.json with evaluation settings; its settings cannot be checked"
        for _, p, rec in records
        if not (rec or {}).get("eval")
    ]
    with_settings = [(i, p, rec) for i, p, rec in records if (rec or {}).get("eval")]
    diffs = []
    if with_settings:
        i0, p0, ref = with_settings[0]
        for i, p, rec in with_settings[1:]:
            for d in settings_differences(ref, rec):
                diffs.append(f"[{chr(65 + i)}] {p} vs [{chr(65 + i0)}] {p0}: {d}")
    return diffs, notes

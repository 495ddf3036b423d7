"""``tritoncorr eval compare``: per-sequence J&F from the toolkit CSVs and the paired statistics."""

from __future__ import annotations

import numpy as np
import pytest
from cli_runs import run_cli

from tritoncorr.compare import ComparisonError, paired_comparison, read_sequence_scores


def _write(folder, rows, split="val"):
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["Sequence,J-Mean,F-Mean"] + [f"{s},{j:.3f},{f:.3f}" for s, j, f in rows]
    (folder / f"per-sequence_results-{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_sequence_jf_is_the_mean_over_objects(tmp_path):
    a = _write(tmp_path / "a", [("bear_1", 0.8, 0.6), ("dogs-jump_1", 0.5, 0.5), ("dogs-jump_2", 0.3, 0.1)])
    sc = read_sequence_scores(a)
    assert sc == pytest.approx({"bear": 0.7, "dogs-jump": 0.35})


def test_paired_statistics_match_direct_computation():
    rng = np.random.default_rng(1)
    base = {f"s{i}": float(v) for i, v in enumerate(rng.uniform(0.4, 0.8, 10))}
    shift = rng.normal(0.05, 0.02, 10)
    other = {s: base[s] + float(d) for s, d in zip(sorted(base), shift)}
    r = paired_comparison(base, other, n_boot=4000, seed=3)
    d = np.array([other[s] - base[s] for s in sorted(base)])
    assert r.mean == pytest.approx(d.mean()) and r.se == pytest.approx(d.std(ddof=1) / np.sqrt(10))
    assert r.ci_low < r.mean < r.ci_high and r.ci_low > 0 and r.verdict == "better"
    assert r.wins == int((d > 0).sum()) and r.p_better > 0.99
    again = paired_comparison(base, other, n_boot=4000, seed=3)
    assert (again.ci_low, again.ci_high) == (r.ci_low, r.ci_high)  # seeded
    # the reverse comparison mirrors it; pure noise gives no verdict
    rev = paired_comparison(other, base, n_boot=4000, seed=3)
    assert rev.verdict == "worse" and rev.mean == pytest.approx(-r.mean)
    noise = {s: base[s] + float(e) for s, e in zip(sorted(base), [0.05, -0.05] * 5)}
    assert paired_comparison(base, noise, n_boot=4000).verdict == "no clear difference"


def test_only_common_sequences_are_paired():
    r = paired_comparison({"a": 0.5, "b": 0.6, "c": 0.1}, {"a": 0.7, "b": 0.6, "d": 0.9}, n_boot=100)
    assert r.sequences == ["a", "b"] and r.mean == pytest.approx(0.1)
    with pytest.raises(ComparisonError, match="no sequence"):
        paired_comparison({"a": 0.5}, {"b": 0.5})


def test_cli_table_csv_and_errors(tmp_path):
    a = _write(tmp_path / "init", [(f"s{i}_1", 0.5, 0.5) for i in range(5)])
    b = _write(tmp_path / "trained", [(f"s{i}_1", 0.6 + 0.01 * i, 0.6) for i in range(5)])
    out = tmp_path / "cmp.csv"
    r = run_cli("eval", "compare", a, b, "--csv", out, "--bootstrap", "500")
    assert "B better than A" in r.output and "s4" in r.output
    text = out.read_text()
    assert "s0,0.500000,0.600000" in text and "better" in text
    r = run_cli("eval", "compare", a, tmp_path / "nope", exit_code=2)
    assert "nope" in r.output and "does not exist" in r.output
    _write(tmp_path / "init", [("s0_1", 0.5, 0.5)], split="train")
    r = run_cli("eval", "compare", a, b, exit_code=2)
    assert "--split" in r.output
    run_cli("eval", "compare", a, b, "--split", "val")


def test_sharded_evaluations_are_merged(tmp_path):
    _write(tmp_path / "run" / "bear", [("bear_1", 0.8, 0.6)])
    _write(tmp_path / "run" / "boat", [("boat_1", 0.4, 0.2)])
    (tmp_path / "run" / "overlays").mkdir()  # not an evaluation: ignored
    assert read_sequence_scores(tmp_path / "run") == pytest.approx({"bear": 0.7, "boat": 0.3})
    _write(tmp_path / "run" / "again", [("boat_1", 0.5, 0.5)])
    with pytest.raises(ComparisonError, match="two shards"):
        read_sequence_scores(tmp_path / "run")

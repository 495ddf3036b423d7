"""A propagation sweep from one set of features vs one ``eval davis`` run per setting, side by side.

    python benchmarks/eval_sweep.py --root ../shared/data/davis-dev -s bear -s hike --precision bf16 \\
        --topk 5,10,20 --temperature 0.05,0.1 --out /tmp/sweep-bench

Runs, each as a fresh single-threaded (``OMP_NUM_THREADS=1``) ``tritoncorr`` process:

1. ``tritoncorr eval sweep`` over the grid (features computed once per sequence, kept in memory);
2. ``tritoncorr eval davis`` once per setting of the grid (features, propagation, PNGs, scoring).

The cost of each is its CPU time (user + system, from ``os.wait4``), which does not depend on how
busy the machine is; wall times are printed too. ``--parallel`` starts all processes at once (their
CPU times stay comparable; only the wall times stretch). Prints the totals side by side and their
ratio, checks that every setting's J&F is the same both ways, and writes ``<out>/eval_sweep.json``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _start(cmd: list[str], log: Path) -> tuple[subprocess.Popen, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env), time.perf_counter()


def _wait(proc: subprocess.Popen, t0: float, log: Path) -> tuple[float, float]:
    """(CPU seconds user + system, wall seconds) of a started process; a failure names its log."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(proc.args)} failed ({proc.returncode}); see {log}")
    return usage.ru_utime + usage.ru_stime, time.perf_counter() - t0


def _command(subcommand: str, common: list[str], topk: str, temperature: str, out: Path) -> list[str]:
    """``tritoncorr eval <subcommand>`` with the shared options and one grid (sweep) or setting (davis)."""
    exe = [sys.executable, "-m", "tritoncorr.cli", "eval", subcommand]
    return [*exe, *common, "--topk", topk, "--temperature", temperature, "--out", str(out)]


def _run(jobs: list[tuple[str, list[str]]], out: Path, parallel: bool) -> dict[str, tuple[float, float]]:
    """``{job: (CPU s, wall s)}``; the jobs run one after the other, or all at once with ``parallel``."""
    times: dict[str, tuple[float, float]] = {}
    if parallel:
        started = [(name, *_start(cmd, out / f"{name}.log")) for name, cmd in jobs]
        for name, proc, t0 in started:
            times[name] = _wait(proc, t0, out / f"{name}.log")
            print(f"{name}: {times[name][0]:.1f} CPU s, {times[name][1]:.1f} wall s", flush=True)
    else:
        for name, cmd in jobs:
            times[name] = _wait(*_start(cmd, out / f"{name}.log"), out / f"{name}.log")
            print(f"{name}: {times[name][0]:.1f} CPU s, {times[name][1]:.1f} wall s", flush=True)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("-s", "--sequence", action="append", default=[])
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--checkpoint", default="", help="weights for every run (default: random init, seed 0)")
    ap.add_argument("--topk", default="5,10,20")
    ap.add_argument("--temperature", default="0.05,0.1")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parallel", action="store_true", help="start every process at once (on a shared machine)")
    args = ap.parse_args()
    common = ["--root", args.root, *(x for s in args.sequence for x in ("-s", s))]
    common += ["--precision", args.precision, "--device", "cpu"]
    common += ["--checkpoint", args.checkpoint] if args.checkpoint else []
    args.out.mkdir(parents=True, exist_ok=True)
    grid = list(itertools.product(args.topk.split(","), args.temperature.split(",")))

    jobs = [("sweep", _command("sweep", common, args.topk, args.temperature, args.out / "sweep"))]
    jobs += [(f"plain-k{k}-t{t}", _command("davis", common, k, t, args.out / f"plain-k{k}-t{t}")) for k, t in grid]
    times = _run(jobs, args.out, args.parallel)
    with open(args.out / "sweep" / "sweep-val.csv") as f:
        sweep_jf = {(r["topk"], r["temperature"]): float(r["J&F-Mean"]) for r in csv.DictReader(f)}
    plain_jf = {}
    for k, t in grid:
        with open(args.out / f"plain-k{k}-t{t}" / "global_results-val.csv") as f:
            plain_jf[(k, t)] = float(next(csv.DictReader(f))["J&F-Mean"])
    plain_cpu = sum(times[f"plain-k{k}-t{t}"][0] for k, t in grid)
    sweep_cpu = times["sweep"][0]
    same = all(abs(plain_jf[g] - sweep_jf[g]) < 5e-4 for g in grid)  # the CSV rounds to 3 decimals
    print(f"\n{'setting':>22} {'J&F plain':>10} {'J&F sweep':>10}")
    for g in grid:
        print(f"{'topk=' + g[0] + ' tau=' + g[1]:>22} {plain_jf[g]:>10.3f} {sweep_jf[g]:>10.3f}")
    print(
        f"\n{len(grid)} plain runs: {plain_cpu:.1f} CPU s; one sweep: {sweep_cpu:.1f} CPU s; "
        f"speed-up {plain_cpu / sweep_cpu:.2f}x; J&F identical per setting: {same}"
    )
    summary = {
        "sequences": args.sequence,
        "precision": args.precision,
        "checkpoint": args.checkpoint or "random init",
        "grid": [list(g) for g in grid],
        "cpu_s": {n: c for n, (c, w) in times.items()},
        "wall_s": {n: w for n, (c, w) in times.items()},
        "plain_total_cpu_s": plain_cpu,
        "sweep_cpu_s": sweep_cpu,
        "speedup_cpu": plain_cpu / sweep_cpu,
        "parallel": args.parallel,
        "jf_sweep": {f"{k},{t}": v for (k, t), v in sweep_jf.items()},
        "jf_plain": {f"{k},{t}": v for (k, t), v in plain_jf.items()},
        "identical": same,
    }
    (args.out / "eval_sweep.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""End-to-end ``eval davis`` work of two versions of tritoncorr, side by side in one run.

The ``eval_davis`` family of ``tritoncorr bench`` compares providers of *this* checkout. To see how
much faster a change made the whole thing, this script runs the same generated video (the bench's
``_video``: a panning smooth scene, an ellipse as the first mask, DUL's protocol) through
``tritoncorr.evaluate.propagate_sequence`` of each given source tree (a checkout or ``git worktree``
of another commit) in its own subprocess, alternating the trees, and reports the median time per
tree, the ratio to the first tree, and whether the predicted masks are identical::

    git worktree add /tmp/before 5cee6cd          # the commit before the CPU-speed issue
    python benchmarks/eval_davis_versions.py --tree /tmp/before --tree . --precision fp32 --precision bf16

Each ``--precision`` other than fp32 is run only on trees whose ``load_feature_model`` accepts it.
A tree's ``kernels/`` and ``evals/`` are mapped to ``tritoncorr.kernels`` / ``tritoncorr.evals`` as
the package does (pyproject ``package-dir``), and the editable install of this checkout is kept out
of the child's import path, so every tree runs only its own code.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_CHILD = r"""
import importlib.util, inspect, json, sys, time, hashlib
tree, video, precision, reps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path = [tree] + [p for p in sys.path if "__editable__" not in p]
import tritoncorr
for name in ("kernels", "evals"):
    spec = importlib.util.spec_from_file_location(f"tritoncorr.{name}", f"{tree}/{name}/__init__.py",
                                                  submodule_search_locations=[f"{tree}/{name}"])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[f"tritoncorr.{name}"] = mod
    spec.loader.exec_module(mod)
import numpy as np, torch
from tritoncorr.evaluate import propagate_sequence
from tritoncorr.methods.inference import load_feature_model
from tritoncorr.propagation import PRESETS
assert tritoncorr.__file__.startswith(tree), tritoncorr.__file__
data = np.load(video)
frames, mask = list(data["frames"]), data["mask"]
kwargs = {} if precision == "fp32" else {"precision": precision}
if "precision" not in inspect.signature(load_feature_model).parameters and kwargs:
    print(json.dumps({"skipped": f"load_feature_model has no precision= here"})); sys.exit(0)
model = load_feature_model(None, seed=0, device="cpu", **kwargs)
times = []
with torch.no_grad():
    for _ in range(reps + 1):  # the first run is a warm-up
        t0 = time.perf_counter()
        ids_at = propagate_sequence(model.features, frames, len(frames), mask, PRESETS["dul"], "cpu")
        ids = [ids_at(i) for i in range(len(frames))]
        times.append(time.perf_counter() - t0)
digest = hashlib.sha256(np.stack(ids).tobytes()).hexdigest()[:16]
knn_file = sys.modules["tritoncorr.kernels.knn_propagate"].__file__
assert knn_file.startswith(tree), knn_file
print(json.dumps({"times": times[1:], "masks": digest, "file": tritoncorr.__file__, "kernels": knn_file}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--tree", action="append", required=True, help="source tree (repeatable; the first is the baseline)"
    )
    ap.add_argument("--precision", action="append", default=None, help="fp32 (default) and/or bf16 (repeatable)")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", type=int, nargs=2, default=(480, 854), metavar=("H", "W"))
    ap.add_argument("--reps", type=int, default=2, help="timed runs per tree and precision (after one warm-up)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tritoncorr.bench.eval_davis import _video

    frames, mask = _video(args.frames, *args.size)
    precisions = args.precision or ["fp32"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "video.npz"
        np.savez(video, frames=np.stack(frames), mask=mask)
        for precision in precisions:
            for tree in args.tree:
                tree_path = str(Path(tree).resolve())
                out = subprocess.run(
                    [sys.executable, "-c", _CHILD, tree_path, str(video), precision, str(args.reps)],
                    capture_output=True,
                    text=True,
                )
                if out.returncode != 0:
                    raise SystemExit(f"error: {tree_path} ({precision}) failed:\n{out.stderr[-3000:]}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row.update(tree=tree_path, precision=precision)
                results.append(row)
                print(json.dumps(row), flush=True)
    base = next(r for r in results if "times" in r)
    base_s = statistics.median(base["times"])
    print(f"\n{args.frames} frames {args.size[1]}x{args.size[0]}, DUL protocol, random-init R18, CPU")
    print(f"{'tree':60s} {'precision':9s} {'median s':>9s} {'frames/s':>9s} {'speed-up':>9s}  masks")
    for r in results:
        if "times" not in r:
            print(f"{r['tree'][-60:]:60s} {r['precision']:9s} {'skipped: ' + r['skipped']}")
            continue
        t = statistics.median(r["times"])
        same = "same as baseline" if r["masks"] == base["masks"] else f"differ ({r['masks']})"
        print(f"{r['tree'][-60:]:60s} {r['precision']:9s} {t:9.1f} {args.frames / t:9.2f} {base_s / t:8.2f}x  {same}")
    if args.json:
        args.json.write_text(json.dumps({"frames": args.frames, "size": list(args.size), "results": results}, indent=2))


if __name__ == "__main__":
    main()

"""Peak memory and speed of ``tritoncorr propagate`` on a long generated video vs a short one.

``tritoncorr propagate`` streams: it keeps features and labels only for the frames the preset's
reference policy can still use, so its peak memory must not grow with the video. This script writes
two generated videos (:func:`tritoncorr.video.write_synthetic_video`, the same clip, ``--short`` and
``--long`` frames), runs the command on each in a fresh process (the whole command: decoding,
features, propagation, one palette PNG per frame and the overlay video) and compares the peak
resident memory (``ru_maxrss``; on CUDA also ``torch.cuda.max_memory_allocated``). It fails (exit 1)
when the long run's peak exceeds ``--max-ratio`` (1.5) times the short one's.

``--baseline`` also runs the whole-video path for contrast (every frame's features in one
``(T, C, h, w)`` tensor, then :func:`tritoncorr.propagation.propagate`), whose memory grows with T.

    python benchmarks/propagate_memory.py                      # 100 vs 2,000 frames, 96x128, CPU
    python benchmarks/propagate_memory.py --device cuda --size 240x432 --baseline

Results are appended to ``benchmarks/results/propagate_memory.jsonl`` (one JSON object per run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
import numpy as np
import torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from tritoncorr.video import open_frames, synthetic_video_frame
dev = torch.device(args["device"])
if args["mode"] == "stream":
    from tritoncorr.cli.options import PropagationOptions
    from tritoncorr.cli.propagate import propagate_cli
    opts = PropagationOptions(checkpoint=args["checkpoint"], preset=args["preset"], device=args["device"])
    res = propagate_cli(video=__import__("pathlib").Path(args["video"]), mask_specs=[args["mask"]], opts=opts,
                        out=__import__("pathlib").Path(args["out"]), short_side=0, max_frames=None, overlay=True,
                        fps=None, alpha=0.5)
    n, secs = res.num_frames, res.seconds
else:  # the whole-video path: all features in memory, then propagate()
    import torch.nn.functional as F
    from tritoncorr.evaluate import propagate_sequence
    from tritoncorr.methods.inference import load_feature_model
    from tritoncorr.propagation import PRESETS
    fm = load_feature_model(args["checkpoint"], device=dev)
    it = open_frames(args["video"]).frames()
    def load(t):  # called in order 0, 1, ...
        return next(it)
    first = synthetic_video_frame(0, tuple(args["size"]))[1]
    t0 = time.perf_counter()
    ids_at = propagate_sequence(fm.features, load, args["frames"], first, PRESETS[args["preset"] or fm.preset],
                                device=dev, color=fm.color)
    for t in range(args["frames"]):
        ids_at(t)
    n, secs = args["frames"], time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
cuda = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
print("RESULT " + json.dumps({"frames": n, "seconds": secs, "rss_peak": peak, "cuda_peak": cuda}))
"""


def run_child(params: dict) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(params["threads"]))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(params)], capture_output=True, text=True, env=env, cwd=str(ROOT)
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"child run failed ({params['mode']}, {params['frames']} frames)")
    return json.loads(line[len("RESULT ") :])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", type=int, default=100, help="frames of the short video")
    ap.add_argument("--long", type=int, default=2000, help="frames of the long video")
    ap.add_argument("--size", default="96x128", help="HxW of the generated frames")
    ap.add_argument("--preset", default=None, help="propagation preset (default: the model's)")
    ap.add_argument(
        "--checkpoint", default=None, help="weights (default: random init; speed/memory do not depend on them)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-ratio", type=float, default=1.5)
    ap.add_argument("--baseline", action="store_true", help="also run the whole-video path for contrast")
    ap.add_argument("--keep", default=None, help="keep the videos and outputs in this folder")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "propagate_memory.jsonl"))
    a = ap.parse_args(argv)
    h, w = (int(v) for v in a.size.lower().split("x"))

    from tritoncorr.evals.davis import write_palette_png

    from tritoncorr.video import synthetic_video_frame, write_synthetic_video

    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="propagate-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    mask = work / "first.png"
    write_palette_png(mask, synthetic_video_frame(0, (h, w))[1])
    rows = []
    for n in (a.short, a.long):
        video = work / f"clip{n}.mp4"
        if not video.is_file():
            write_synthetic_video(video, n, (h, w))
        modes = ["stream", "whole"] if a.baseline else ["stream"]
        for mode in modes:
            params = dict(
                mode=mode,
                video=str(video),
                mask=str(mask),
                checkpoint=a.checkpoint,
                preset=a.preset,
                out=str(work / f"out-{mode}-{n}"),
                device=a.device,
                threads=a.threads,
                frames=n,
                size=[h, w],
            )
            r = run_child(params)
            r.update(mode=mode, size=[h, w])
            rows.append(r)
            cuda = f", CUDA peak {r['cuda_peak'] / 2**20:.0f} MiB" if r["cuda_peak"] is not None else ""
            print(
                f"{mode:6s} {n:5d} frames: peak RSS {r['rss_peak'] / 2**20:7.0f} MiB{cuda}, "
                f"{r['frames'] / r['seconds']:.2f} frames/s ({r['seconds']:.1f} s)",
                flush=True,
            )
    s = next(r for r in rows if r["mode"] == "stream" and r["frames"] == a.short)
    lg = next(r for r in rows if r["mode"] == "stream" and r["frames"] == a.long)
    ratio = lg["rss_peak"] / s["rss_peak"]
    cuda_ratio = (lg["cuda_peak"] / s["cuda_peak"]) if s["cuda_peak"] else None
    ok = ratio <= a.max_ratio and (cuda_ratio is None or cuda_ratio <= a.max_ratio)
    msg = f"peak RSS {a.long} / {a.short} frames = {ratio:.3f}"
    if cuda_ratio is not None:
        msg += f", CUDA peak ratio {cuda_ratio:.3f}"
    print(f"{msg} (limit {a.max_ratio}): {'OK' if ok else 'FAIL'}")
    import torch

    record = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        host=platform.node(),
        device=a.device,
        gpu=torch.cuda.get_device_name() if a.device.startswith("cuda") else None,
        torch=torch.__version__,
        threads=a.threads,
        preset=a.preset,
        checkpoint=a.checkpoint,
        rows=rows,
        rss_ratio=ratio,
        cuda_ratio=cuda_ratio,
        ok=ok,
    )
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    with open(a.results, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"appended to {a.results}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

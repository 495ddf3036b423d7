"""Propagate a DAVIS first-frame mask through its clip with tritoncorr.VideoPredictor and score each frame.

    python examples/predict_davis_clip.py                                  # ../shared/data/davis-mini car-shadow
    python examples/predict_davis_clip.py --root /data/DAVIS --sequence dog --checkpoint dul-ytvos

Reads ``<root>/JPEGImages/480p/<sequence>/`` and ``<root>/Annotations/480p/<sequence>/00000.png``
(DAVIS layout), propagates every object of the first mask with the predictor's API
(``init_state``, ``add_new_mask`` per object, ``propagate_in_video``), prints the IoU of each object on
every frame that has a ground-truth mask, and writes the predicted masks as palette PNGs to ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from tritoncorr import VideoPredictor


def main(argv: list[str] | None = None) -> float:
    here = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=here.parent / "shared" / "data" / "davis-mini")
    p.add_argument("--sequence", default="car-shadow")
    p.add_argument("--checkpoint", default=None, help="name, path or URL (default: the embedded checkpoint)")
    p.add_argument("--short-side", type=int, default=480)
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("predict-davis-clip"))
    args = p.parse_args(argv)

    frames = args.root / "JPEGImages" / "480p" / args.sequence
    annotations = args.root / "Annotations" / "480p" / args.sequence
    first = np.array(Image.open(sorted(annotations.glob("*.png"))[0]))

    predictor = VideoPredictor.from_pretrained(args.checkpoint, short_side=args.short_side)
    state = predictor.init_state(frames)
    for obj_id in (int(i) for i in np.unique(first) if i not in (0, 255)):
        predictor.add_new_mask(state, frame_idx=0, obj_id=obj_id, mask=first == obj_id)

    args.out.mkdir(parents=True, exist_ok=True)
    names = sorted(f.stem for f in frames.glob("*.jpg"))
    ious = []
    for t, obj_ids, masks in predictor.propagate_in_video(
        state, max_frame_num_to_track=None if args.max_frames is None else args.max_frames - 1
    ):
        ids = np.zeros(masks.shape[1:], np.uint8)
        for obj_id, m in zip(obj_ids, masks):
            ids[m] = obj_id
        img = Image.fromarray(ids, mode="P")
        img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128] + [255] * (256 * 3 - 15))
        img.save(args.out / f"{names[t]}.png")
        gt_path = annotations / f"{names[t]}.png"
        if t > 0 and gt_path.is_file():
            gt = np.array(Image.open(gt_path))
            for obj_id, m in zip(obj_ids, masks):
                g = gt == obj_id
                ious.append(float((m & g).sum()) / max(1, float((m | g).sum())))
                print(f"frame {t:3d} object {obj_id}: IoU {ious[-1]:.3f}")
    mean = float(np.mean(ious)) if ious else float("nan")
    print(f"mean IoU over {len(ious)} object-frames: {mean:.3f}; masks in {args.out}/")
    return mean


if __name__ == "__main__":
    main()

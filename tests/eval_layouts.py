"""Writers of tiny benchmark folders in the official layouts (JHMDB, VIP, YouTube-VOS), for the eval tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from tritoncorr.evals.davis import write_palette_png
from tritoncorr.evals.jhmdb import write_mat
from tritoncorr.evals.synthetic import synthetic_clip


def make_jhmdb(
    root: Path, clips=(("catch", "clip_a", 4), ("run", "clip_b", 3)), size=(36, 48), seed=0, split_files: bool = True
) -> Path:
    """``Rename_Images/<action>/<clip>/0000k.png``, ``joint_positions/.../joint_positions.mat``
    (``pos_img`` 1-based, joints wandering inside the frame), ``splits/<action>_test_split1.txt``
    listing the clip as test (2) and a made-up training clip (1)."""
    rng = np.random.default_rng(seed)
    h, w = size
    for k, (action, clip, n) in enumerate(clips):
        frames, _ = synthetic_clip(n, h, w, seed=seed + k)
        d = root / "Rename_Images" / action / clip
        d.mkdir(parents=True, exist_ok=True)
        for t in range(n):
            Image.fromarray(frames[t]).save(d / f"{t + 1:05d}.png")
        base = np.stack([rng.uniform(4, w - 4, 15), rng.uniform(4, h - 4, 15)])
        pos = base[:, :, None] + rng.normal(0, 1.0, (2, 15, n)).cumsum(-1)
        write_mat(
            root / "joint_positions" / action / clip / "joint_positions.mat",
            {"pos_img": pos + 1, "pos_world": pos / 100},
        )
        if split_files:
            (root / "splits").mkdir(parents=True, exist_ok=True)
            with open(root / "splits" / f"{action}_test_split1.txt", "a") as f:
                f.write(f"{clip}.avi 2\nsome_training_clip_{k}.avi 1\n")
    return root


def make_vip(root: Path, videos=(("videos1", 4), ("videos7", 3)), size=(40, 30), seed=0, ignore: bool = True) -> Path:
    """``Images/<video>/<frame>.jpg``, ``Annotations/Category_ids/<video>/<frame>.png`` (grayscale ids:
    the synthetic objects become part classes 2, 13, 19; a border of 255 when ``ignore``), ``lists/val_videos.txt``."""
    h, w = size
    (root / "lists").mkdir(parents=True, exist_ok=True)
    classes = np.array([0, 2, 13, 19, 5, 7, 9], dtype=np.uint8)
    for k, (video, n) in enumerate(videos):
        frames, masks = synthetic_clip(n, h, w, seed=seed + 10 + k, num_objects=3)
        for t in range(n):
            name = f"{(t + 1) * 25:012d}"
            img_dir, ann_dir = root / "Images" / video, root / "Annotations" / "Category_ids" / video
            img_dir.mkdir(parents=True, exist_ok=True)
            ann_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frames[t]).save(img_dir / f"{name}.jpg", quality=95)
            ids = classes[masks[t]]
            if ignore:
                ids[0, :] = 255
            Image.fromarray(ids, mode="L").save(ann_dir / f"{name}.png")
    (root / "lists" / "val_videos.txt").write_text("".join(f"{v}\n" for v, _ in videos))
    return root


def make_ytvos(root: Path, size=(32, 40), seed=0) -> Path:
    """A YouTube-VOS ``valid`` folder: video ``a`` (6 frames 00000, 00005, ...) with object 1 from frame
    0 and object 2 first annotated at frame 00010; video ``b`` (4 frames) with object 3 from frame
    00005 only. ``meta.json`` lists each object's frames, with gaps (frames missing from the lists)."""
    h, w = size
    meta = {"videos": {}}
    specs = {"a": (6, {1: 0, 2: 2}), "b": (4, {3: 1})}
    for k, (video, (n, starts)) in enumerate(specs.items()):
        frames, masks = synthetic_clip(n, h, w, seed=seed + 20 + k, num_objects=len(starts))
        names = [f"{5 * t:05d}" for t in range(n)]
        (root / "JPEGImages" / video).mkdir(parents=True, exist_ok=True)
        for t in range(n):
            Image.fromarray(frames[t]).save(root / "JPEGImages" / video / f"{names[t]}.jpg", quality=95)
        objs = {}
        for j, (oid, t0) in enumerate(sorted(starts.items())):
            objs[oid] = (t0, masks == j + 1)
        for t0 in sorted(set(starts.values())):
            ids = np.zeros((h, w), np.uint8)
            for oid, (s, m) in objs.items():
                if s == t0:
                    ids[m[t0]] = oid
            write_palette_png(root / "Annotations" / video / f"{names[t0]}.png", ids)
        meta["videos"][video] = {
            "objects": {
                str(oid): {"category": "thing", "frames": [names[t] for t in range(s, n) if t != n - 2]}
                for oid, (s, _) in objs.items()
            }
        }
    (root / "meta.json").write_text(json.dumps(meta))
    return root

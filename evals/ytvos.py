"""YouTube-VOS (2018 / 2019 ``valid``): reader and the export the evaluation server expects.

There is no local score: the ground truth of ``valid`` is held by the CodaLab server. The export
writes ``<out>/Annotations/<video>/<frame>.png`` (indexed PNGs, the annotations' palette) for every
frame of ``JPEGImages/<video>/`` and zips them as ``Annotations/<video>/<frame>.png`` entries, the
layout the server takes.

Objects first appear mid-video: ``Annotations/<video>/<frame>.png`` exists only for the frames where
new objects appear. Each object starts at the first annotation PNG that contains it (the other ids
of that PNG count as background there). The video is propagated once, from its first annotated
frame, by :func:`tritoncorr.predictor.track_objects`, the mechanism of ``tritoncorr propagate`` and
:class:`tritoncorr.VideoPredictor`: at a frame where objects start, their masks are pasted over the
prediction and that frame becomes the anchor those objects are predicted from (DUL's
``infer_vos.py`` scheme, ``dul.md`` section 3.7). Frames before the first annotation are written
empty. (Until this version each group of objects was propagated separately from its first frame
and the groups merged by an argmax over their probabilities; see the README for the change.)

``meta.json`` (``{"videos": {video: {"objects": {id: {"category": ..., "frames": [...]}}}}}``) names
the videos to export and their objects; its frame lists need not be complete (frames it leaves out
are exported all the same, frames it lists without a JPEG are reported and ignored). A listed
object that no annotation PNG contains is an error; objects found only in the PNGs are exported and
reported.

Layout read: ``<root>/JPEGImages/<video>/<frame>.jpg``, ``<root>/Annotations/<video>/<frame>.png``,
``<root>/meta.json`` (``<root>`` = the ``valid`` folder).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tritoncorr.evals.davis import VideoFrames

YEARS = ("2018", "2019")


class YtvosFormatError(ValueError):
    """A YouTube-VOS folder or ``meta.json`` that does not follow the expected layout."""


@dataclass
class YtvosVideo(VideoFrames):
    """One video: frames (sorted by name), annotation PNGs by frame index, objects and their first frames."""

    name: str
    frames: list[Path]
    annotations: dict[int, Path]
    starts: dict[int, int]  # object id -> index of its first annotated frame
    categories: dict[int, str]
    size: tuple[int, int]
    format_error = YtvosFormatError

    def load_annotation(self, t: int) -> np.ndarray:
        """uint8 ``(H, W)`` object ids of annotated frame ``t``."""
        return _read_annotation(self.annotations[t], self.size)

    def groups(self) -> dict[int, list[int]]:
        """First frame -> the object ids that start there (sorted)."""
        out: dict[int, list[int]] = {}
        for oid, t in sorted(self.starts.items()):
            out.setdefault(t, []).append(oid)
        return dict(sorted(out.items()))

    def palette(self) -> list[int] | None:
        """The palette of the first annotation PNG (None when it has none)."""
        from tritoncorr.evals.davis import load_image

        im = load_image(self.annotations[min(self.annotations)], YtvosFormatError, "annotation")
        pal = im.getpalette() if im.mode == "P" else None
        return None if pal is None else (list(pal) + [0] * 768)[:768]


def _read_annotation(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    from tritoncorr.evals.davis import DavisFormatError, read_index_png

    try:
        ids = read_index_png(path)
    except DavisFormatError as err:
        raise YtvosFormatError(str(err)) from err
    if size is not None and ids.shape != tuple(size):
        raise YtvosFormatError(
            f"{path}: annotation size {ids.shape[1]}x{ids.shape[0]} differs from the frame size {size[1]}x{size[0]}"
        )
    return ids


class YtvosDataset:
    """The YouTube-VOS ``valid`` layout under ``root`` (see the module docstring).

    Attributes:
        videos: the :class:`YtvosVideo` of every video in ``meta.json`` (or of ``videos``).
        notes: what did not match between ``meta.json``, the frames and the annotations.

    Raises:
        YtvosFormatError: naming the folder or file and the problem.
    """

    def __init__(self, root: str | Path, videos: Sequence[str] | None = None):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise YtvosFormatError(f"YouTube-VOS root {root} does not exist or is not a folder")
        img_dir, ann_dir, meta_path = root / "JPEGImages", root / "Annotations", root / "meta.json"
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise YtvosFormatError(f"YouTube-VOS root {root}: missing folder {d}")
        if not meta_path.is_file():
            raise YtvosFormatError(f"YouTube-VOS root {root}: missing {meta_path}")
        from tritoncorr.evals.davis import read_text

        try:
            meta = json.loads(read_text(meta_path, YtvosFormatError))
        except (json.JSONDecodeError, RecursionError) as err:
            raise YtvosFormatError(f"{meta_path}: not valid JSON: {err}") from err
        if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
            raise YtvosFormatError(f'{meta_path}: expected {{"videos": {{<video>: {{"objects": ...}}}}}}')
        from tritoncorr.evals.davis import plain_names, select_names

        listed = plain_names(sorted(meta["videos"]), meta_path, YtvosFormatError)
        self.notes: list[str] = []
        if videos:
            listed = select_names(listed, videos, "video", meta_path, YtvosFormatError)
        else:
            extra = sorted(p.name for p in img_dir.iterdir() if p.is_dir() and p.name not in meta["videos"])
            if extra:
                self.notes.append(f"{len(extra)} folder(s) in {img_dir} not in meta.json, skipped (e.g. {extra[:3]})")
        if not listed:
            raise YtvosFormatError(f"{meta_path} lists no video")
        self.root, self.meta_path = root, meta_path
        self.videos = [self._scan(v, meta["videos"][v], img_dir / v, ann_dir / v) for v in listed]

    def _scan(self, name: str, entry, img: Path, ann: Path) -> YtvosVideo:
        from tritoncorr.evals.davis import frame_folder, image_size

        where = f"{self.meta_path} video {name!r}"
        objects = entry.get("objects") if isinstance(entry, dict) else None
        if not isinstance(objects, dict):
            raise YtvosFormatError(f"{where}: expected an 'objects' mapping")
        frames = frame_folder(name, "video", "is in meta.json", img, ann, YtvosFormatError)
        index = {p.stem: t for t, p in enumerate(frames)}
        annotations = {}
        for p in sorted(ann.glob("*.png")):
            if p.stem not in index:
                raise YtvosFormatError(f"video {name!r}: annotation {p} has no frame {img / (p.stem + '.jpg')}")
            annotations[index[p.stem]] = p
        if not annotations:
            raise YtvosFormatError(f"video {name!r}: no .png annotation in {ann}")
        size = image_size(frames[0], YtvosFormatError)
        starts: dict[int, int] = {}
        for t, p in sorted(annotations.items()):
            ids = _read_annotation(p, size)
            for oid in np.unique(ids).tolist():
                if oid not in (0, 255) and oid not in starts:
                    starts[oid] = t
        categories: dict[int, str] = {}
        missing_frames = 0
        for key, obj in objects.items():
            try:
                oid = int(key)
            except (TypeError, ValueError):
                raise YtvosFormatError(f"{where}: object id {key!r} is not an integer") from None
            obj = obj if isinstance(obj, dict) else {}
            categories[oid] = str(obj.get("category", ""))
            listed = [f for f in obj.get("frames", []) if isinstance(f, str)]
            known = [index[f] for f in listed if f in index]
            missing_frames += len(listed) - len(known)
            if oid not in starts:
                raise YtvosFormatError(
                    f"video {name!r}: object {oid} (meta.json) appears in no annotation PNG in {ann}"
                )
            if known and min(known) != starts[oid]:
                self.notes.append(
                    f"video {name!r}: object {oid} is first annotated in {frames[starts[oid]].name}, "
                    f"meta.json lists it from {frames[min(known)].stem}"
                )
        if missing_frames:
            self.notes.append(
                f"video {name!r}: meta.json lists {missing_frames} frame(s) without a JPEG in {img} (ignored)"
            )
        extra = sorted(set(starts) - set(categories))
        if extra:
            self.notes.append(f"video {name!r}: object(s) {extra} in the annotations but not in meta.json (exported)")
        return YtvosVideo(
            name=name, frames=frames, annotations=annotations, starts=starts, categories=categories, size=size
        )

    def __len__(self) -> int:
        return len(self.videos)

    def __iter__(self):
        return iter(self.videos)


# ----------------------------------------------------------------------------------------------
# Merging and writing
# ----------------------------------------------------------------------------------------------


def write_indexed_png(path: Path, ids: np.ndarray, palette: list[int] | None = None) -> Path:
    """uint8 ids as an indexed PNG with ``palette`` (default the DAVIS / YouTube-VOS palette)."""
    from tritoncorr.evals.davis import davis_palette

    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8))
    im.putpalette(palette if palette is not None else davis_palette())
    im.save(path)
    return path


def zip_annotations(out: Path, zip_path: Path, videos: Sequence[str] | None = None) -> Path:
    """Zip ``<out>/Annotations/<video>/*.png`` (of ``videos``, default all) as ``Annotations/<video>/<frame>.png``
    entries (atomic write)."""
    tmp = zip_path.with_name(zip_path.name + ".partial")
    folders = (
        [out / "Annotations" / v for v in videos]
        if videos is not None
        else sorted(p for p in (out / "Annotations").iterdir() if p.is_dir())
    )
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for folder in sorted(folders):
            for p in sorted(folder.glob("*.png")):
                zf.write(p, p.relative_to(out).as_posix())
    os.replace(tmp, zip_path)
    return zip_path


@dataclass
class YtvosExport:
    """What was written."""

    annotations: Path
    zip_path: Path | None
    videos: int
    frames: int
    objects: int
    notes: list[str] = field(default_factory=list)


__all__ = [
    "YEARS",
    "YtvosDataset",
    "YtvosExport",
    "YtvosFormatError",
    "YtvosVideo",
    "write_indexed_png",
    "zip_annotations",
]

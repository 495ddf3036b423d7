"""Video sources: list the videos of a dataset, their frame counts, and read given frames.

A source holds ``names`` (one per video), ``num_frames`` (native frame count), ``fps`` (native rate,
0.0 when unknown) and ``read(video, indices) -> uint8 (len(indices), H, W, 3)`` RGB frames in the
order asked. Sources are cheap to pickle (DataLoader workers) and open files only inside ``read``.
Videos that cannot be listed/probed are left out with a warning naming the file and recorded in
``source.skipped``; ``read`` raises on unreadable data (the loader turns that into a skip).

Sources:

* :class:`FrameFolderSource` (``"frames"``): ``<root>/<video>/*.jpg`` (or ``.jpeg/.png``),
  ``<root>/JPEGImages/<video>/``, ``<root>/JPEGImages/480p/<video>/``; frames sorted by file name.
* :class:`VideoFileSource` (``"video"``): ``.mp4/.webm/.avi/.mkv/.mov`` files under ``root``
  (recursive). Frame count and rate come from stream metadata; a constant-frame-rate stream whose
  metadata is consistent maps frame ``i`` to ``pts = start + i * ticks_per_frame``; otherwise
  (variable rate, or no frame count, as in WebM) the packet timestamps are read once (demux only, no
  decoding) and cached. Reading seeks to the keyframe before the first wanted frame and decodes only
  up to the last one (a fresh seek for frames more than ``SEEK_GAP`` frames apart).
* :class:`HFSource` (``"hf"``): a Hugging Face ``datasets`` dataset (``load_from_disk`` folder,
  ``load_dataset`` path, or a hub id). Expected schema, one row per video, one of:

  - ``frames``: a list of images, each an ``Image`` feature value, raw encoded bytes (JPEG/PNG),
    ``{"bytes": ..., "path": ...}`` or a file path (relative paths are taken under ``root``);
  - ``video``: an encoded video file as bytes, ``{"bytes", "path"}`` or a path.

  The column is chosen by ``DataConfig.hf_column`` or found by those names. Streaming datasets are
  handled by :class:`tritoncorr.data.loader.StreamingClipLoader`.
* :class:`SyntheticSource` (``"synthetic"``): ``tritoncorr.evals.synthetic.synthetic_clip``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tritoncorr.data.config import DataConfig

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
VIDEO_EXTS = (".mp4", ".webm", ".avi", ".mkv", ".mov")
SEEK_GAP = 64  # wanted frames further apart than this (in frames) get their own seek


class DataSourceError(ValueError):
    """The configured data source cannot be used (missing folder, no readable video, bad dataset);
    the message names the path. ``tritoncorr train`` reports it as a one-line error."""


class SourceWarning(UserWarning):
    """A video or frame that could not be read and was skipped."""


class NamedSource:
    """What every training source (clips or images) has: its ``root``, the ``names`` of its items (videos
    or images, one each), the names it ``skipped`` as unreadable, and a ``kind`` for caches and messages."""

    kind = "base"

    def __init__(self, root: str) -> None:
        self.root = str(root)
        self.names: list[str] = []
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.names)


class ClipSource(NamedSource):
    """Base class of the video sources. Subclasses fill ``names``, ``num_frames``, ``fps`` and implement ``read``."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.num_frames: list[int] = []
        self.fps: list[float] = []

    def read(self, video: int, indices: Sequence[int]) -> np.ndarray:
        """Frames ``indices`` (native indices, any order) of video ``video``: uint8 ``(n, H, W, 3)``."""
        raise NotImplementedError

    def identity(self, video: int) -> str:
        """A string that changes whenever video ``video``'s frames may change (caches key on it):
        the source kind, the name and, for files, their size and modification time."""
        name = self.names[video]
        p = Path(name)
        stamp = ""
        if p.exists():
            st = p.stat()
            stamp = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        return f"{self.kind}|{name}|{self.num_frames[video]}|{stamp}"

    def _skip(self, name: str, why: str) -> None:
        warnings.warn(f"skipping {name}: {why}", SourceWarning, stacklevel=3)
        self.skipped.append(name)

    def _check_indices(self, video: int, indices: Sequence[int]) -> list[int]:
        n = self.num_frames[video]
        idx = [int(i) for i in indices]
        if any(i < 0 or i >= n for i in idx):
            raise IndexError(f"frame indices {idx} out of range for {self.names[video]} ({n} frames)")
        return idx


def _stack(frames: list[np.ndarray], name: str) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"{name}: frames of different sizes {sorted(shapes)}")
    return np.stack(frames)


def _decode_image(data: bytes | str, name: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data) as im:
        im.load()
        arr = np.asarray(im.convert("RGB"))
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{name}: not an RGB image")
    return arr


# ----------------------------------------------------------------------------------------------
# Frame folders
# ----------------------------------------------------------------------------------------------


def frame_folder_root(root: str | os.PathLike) -> Path:
    """The folder holding one sub-folder per video (DAVIS/YouTube-VOS layouts)."""
    r = Path(root)
    for cand in (r / "JPEGImages" / "480p", r / "JPEGImages"):
        if cand.is_dir():
            return cand
    return r


class FrameFolderSource(ClipSource):
    """Folders of frame images, one folder per video (see module docstring)."""

    kind = "frames"

    def __init__(self, root: str) -> None:
        super().__init__(root)
        base = frame_folder_root(root)
        if not base.is_dir():
            raise DataSourceError(f"frame-folder root {root!r} is not a folder (looked at {base})")
        self.frame_paths: list[list[str]] = []
        for d in sorted(p for p in base.iterdir() if p.is_dir()):
            files = sorted(str(f) for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
            if not files:
                continue
            self.names.append(str(d))
            self.frame_paths.append(files)
            self.num_frames.append(len(files))
            self.fps.append(0.0)

    def read(self, video: int, indices: Sequence[int]) -> np.ndarray:
        idx = self._check_indices(video, indices)
        frames = []
        for i in idx:
            path = self.frame_paths[video][i]
            try:
                frames.append(_decode_image(path, path))
            except Exception as e:  # noqa: BLE001 - report the file, whatever PIL raised
                raise OSError(f"cannot read frame {path}: {e}") from e
        return _stack(frames, self.names[video])


# ----------------------------------------------------------------------------------------------
# Video files (PyAV)
# ----------------------------------------------------------------------------------------------


def probe_video(open_fn: Callable[[], Any], force_index: bool = False) -> dict:
    """Frame count, rate and the frame-index -> pts rule of the first video stream.

    ``open_fn()`` returns an ``av`` container. Returns ``{"num_frames", "fps", "start", "step",
    "pts"}``: with ``step`` (ticks per frame, constant-rate streams whose metadata agrees) frame ``i``
    has ``pts = start + i * step`` and ``pts`` is None; otherwise ``pts`` is the sorted list of the
    stream's packet timestamps (one demux pass, no decoding) and ``num_frames = len(pts)``;
    ``force_index=True`` always builds that list.
    """
    with open_fn() as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        vs = container.streams.video[0]
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        tb = vs.time_base
        fps = float(rate) if rate else 0.0
        start = int(vs.start_time) if vs.start_time is not None else 0
        frames = int(vs.frames or 0)
        if rate and tb and frames > 0 and not force_index:
            step = 1 / (Fraction(rate) * Fraction(tb))
            dur = vs.duration
            if step.denominator == 1 and (dur is None or abs(int(dur) - frames * int(step)) <= int(step)):
                return {"num_frames": frames, "fps": fps, "start": start, "step": int(step), "pts": None}
        pts = sorted(int(p.pts) for p in container.demux(vs) if p.pts is not None and p.size > 0)
        if not pts:
            raise ValueError("no frames")
        return {"num_frames": len(pts), "fps": fps, "start": pts[0], "step": None, "pts": pts}


def decode_video_frames(open_fn: Callable[[], Any], info: dict, indices: Sequence[int], name: str) -> np.ndarray:
    """Decode frames ``indices`` (native, any order) by seeking; uint8 ``(n, H, W, 3)`` RGB.

    Equal to the frames a full decode yields at those positions (same decoder, same conversion).
    Falls back to decoding from the start when a seek does not deliver a wanted frame.
    """
    idx = [int(i) for i in indices]
    if info["pts"] is not None:
        pts_of = {i: info["pts"][i] for i in set(idx)}
    else:
        pts_of = {i: info["start"] + i * info["step"] for i in set(idx)}
    wanted = sorted(set(pts_of.values()))
    gap_ticks = SEEK_GAP * (info["step"] or _median_step(info["pts"]))
    groups: list[list[int]] = [[wanted[0]]]
    for p in wanted[1:]:
        if p - groups[-1][-1] <= gap_ticks:
            groups[-1].append(p)
        else:
            groups.append([p])
    got: dict[int, np.ndarray] = {}
    with open_fn() as container:
        vs = container.streams.video[0]
        for group in groups:
            _decode_group(container, vs, group, got, seek=True)
        missing = [p for p in wanted if p not in got]
        if missing:  # the seek landed after a wanted frame, or timestamps are odd: decode from the start
            container.seek(0, stream=vs, backward=True, any_frame=False)
            _decode_group(container, vs, missing, got, seek=False)
    missing = [i for i in idx if pts_of[i] not in got]
    if missing:
        raise ValueError(f"{name}: frames {missing} could not be decoded")
    return np.stack([got[pts_of[i]] for i in idx])


def _median_step(pts: list[int] | None) -> int:
    if not pts or len(pts) < 2:
        return 1
    return max(1, int(np.median(np.diff(pts))))


def _decode_group(container, vs, group: list[int], got: dict, seek: bool) -> None:
    todo = set(group) - set(got)
    if not todo:
        return
    if seek:
        container.seek(int(min(todo)), stream=vs, backward=True, any_frame=False)
    last = max(todo)
    for frame in container.decode(vs):
        p = frame.pts
        if p is None:
            continue
        if p in todo:
            got[p] = frame.to_ndarray(format="rgb24")
            todo.discard(p)
            if not todo:
                break
        if p > last:
            break


class _ProbeCache:
    """JSON cache of probe results keyed by ``path`` and validated by size and mtime."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.data: dict[str, dict] = {}
        self.dirty = False
        if path and os.path.exists(path):
            try:
                with open(path) as f:
                    self.data = json.load(f)
            except (OSError, ValueError):
                warnings.warn(f"ignoring unreadable probe cache {path}", SourceWarning, stacklevel=2)

    @staticmethod
    def _stamp(file: str) -> list[int]:
        st = os.stat(file)
        return [st.st_size, st.st_mtime_ns]

    def get(self, file: str) -> dict | None:
        entry = self.data.get(file)
        if entry is not None and entry.get("stamp") == self._stamp(file):
            return entry["info"]
        return None

    def put(self, file: str, info: dict) -> None:
        with self.lock:
            self.data[file] = {"stamp": self._stamp(file), "info": info}
            self.dirty = True

    def save(self) -> None:
        if self.path and self.dirty:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            tmp = f"{self.path}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(self.data, f)
            os.replace(tmp, self.path)


class VideoFileSource(ClipSource):
    """Video files under ``root`` decoded with PyAV (see module docstring)."""

    kind = "video"

    def __init__(self, root: str, probe_cache: str = "", probe_threads: int = 4) -> None:
        super().__init__(root)
        r = Path(root)
        if r.is_file() and r.suffix.lower() in VIDEO_EXTS:
            files = [str(r)]
        elif r.is_dir():
            files = sorted(str(p) for p in r.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file())
        else:
            raise DataSourceError(f"video root {root!r} is neither a folder nor a video file")
        cache = _ProbeCache(probe_cache)

        def probe(file: str):
            try:
                info = cache.get(file)
                if info is None:
                    info = probe_video(functools.partial(_open_av, file))
                    cache.put(file, info)
                return info, None
            except Exception as e:  # noqa: BLE001 - any failure means: skip this file
                return None, f"{type(e).__name__}: {e}"

        with ThreadPoolExecutor(max_workers=max(1, probe_threads)) as pool:
            results = list(pool.map(probe, files))
        cache.save()
        self.infos: list[dict] = []
        for file, (info, err) in zip(files, results):
            if info is None:
                self._skip(file, f"cannot probe video ({err})")
                continue
            self.names.append(file)
            self.infos.append(info)
            self.num_frames.append(info["num_frames"])
            self.fps.append(info["fps"])

    def read(self, video: int, indices: Sequence[int]) -> np.ndarray:
        idx = self._check_indices(video, indices)
        file = self.names[video]
        opener = functools.partial(_open_av, file)
        try:
            return decode_video_frames(opener, self.infos[video], idx, file)
        except ValueError:
            if self.infos[video]["pts"] is not None:
                raise
            # the constant-rate rule did not match the file's timestamps: index them once and retry
            info = probe_video(opener, force_index=True)
            if info["num_frames"] != self.num_frames[video]:
                raise
            self.infos[video] = info
            return decode_video_frames(opener, info, idx, file)


def _open_av(src):
    import av

    return av.open(src, mode="r")


def _open_av_bytes(data: bytes):
    import av

    return av.open(io.BytesIO(data), mode="r")


# ----------------------------------------------------------------------------------------------
# Hugging Face datasets
# ----------------------------------------------------------------------------------------------


def load_hf_dataset(root: str, split: str, streaming: bool):
    """``load_from_disk`` for a saved folder, else ``load_dataset(root, split=, streaming=)``."""
    import datasets

    p = Path(root)
    if p.is_dir() and (
        (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists()
    ):
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"HF dataset {root!r} has no split {split!r} (has {list(ds)})")
            ds = ds[split]
        if streaming:
            ds = ds.to_iterable_dataset(num_shards=max(1, min(64, len(ds))))
        return ds
    return datasets.load_dataset(root, split=split, streaming=streaming)


def hf_column(columns: Sequence[str], wanted: str, root: str) -> tuple[str, str]:
    """``(column, kind)`` with kind "frames" or "video"."""
    if wanted:
        if wanted not in columns:
            raise ValueError(f"HF dataset {root!r} has no column {wanted!r} (columns: {list(columns)})")
        kind = "frames" if wanted in ("frames", "images") or "frame" in wanted or "image" in wanted else "video"
        return wanted, kind
    for name, kind in (("frames", "frames"), ("images", "frames"), ("video", "video"), ("mp4", "video")):
        if name in columns:
            return name, kind
    raise ValueError(
        f"HF dataset {root!r}: no 'frames' (list of images) or 'video' column (columns: {list(columns)}); "
        "set DataConfig.hf_column"
    )


def _hf_payload(value: Any, base: Path | None) -> bytes | str:
    """Bytes or a path from one cell (bytes, path string, {"bytes", "path"} dict, or a PIL image)."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        if base is not None and not os.path.isabs(value) and (base / value).exists():
            return str(base / value)
        return value
    if hasattr(value, "save"):  # a decoded PIL image
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"unsupported cell type {type(value).__name__}")


class HFSource(ClipSource):
    """A map-style Hugging Face dataset, one row per video (see module docstring for the schema)."""

    kind = "hf"

    def __init__(self, root: str, split: str = "train", column: str = "", dataset=None) -> None:
        super().__init__(root)
        ds = dataset if dataset is not None else load_hf_dataset(root, split, streaming=False)
        self.column, self.col_kind = hf_column(ds.column_names, column, root)
        self.ds = ds.select_columns([self.column]).with_format("arrow")
        self.base = Path(root) if Path(root).is_dir() else None
        self.rows: list[int] = []
        self.infos: list[dict | None] = []
        if self.col_kind == "frames":
            import pyarrow.compute as pc

            row = 0
            for batch in self.ds.iter(batch_size=256):
                for n in pc.list_value_length(batch[self.column]).to_pylist():
                    self._add(row, int(n or 0), None)
                    row += 1
        else:
            for row in range(len(self.ds)):
                name = f"{root}[{row}]"
                try:
                    payload = self._cell(row)
                    info = probe_video(functools.partial(_open_payload, payload))
                except Exception as e:  # noqa: BLE001
                    self._skip(name, f"cannot probe video ({type(e).__name__}: {e})")
                    continue
                self._add(row, info["num_frames"], info)

    def _add(self, row: int, n: int, info: dict | None) -> None:
        self.rows.append(row)
        self.names.append(f"{self.root}[{row}]")
        self.num_frames.append(n)
        self.fps.append(info["fps"] if info else 0.0)
        self.infos.append(info)

    def _cell(self, row: int):
        value = self.ds[row][self.column][0].as_py()
        if self.col_kind == "frames":
            return value
        return _hf_payload(value, self.base)

    def read(self, video: int, indices: Sequence[int]) -> np.ndarray:
        idx = self._check_indices(video, indices)
        name = self.names[video]
        cell = self._cell(self.rows[video])
        if self.col_kind == "frames":
            return _stack([_decode_image(_hf_payload(cell[i], self.base), f"{name} frame {i}") for i in idx], name)
        return decode_video_frames(functools.partial(_open_payload, cell), self.infos[video], idx, name)


def _open_payload(payload: bytes | str):
    return _open_av_bytes(payload) if isinstance(payload, (bytes, bytearray)) else _open_av(payload)


def read_hf_example(example: dict, column: str, kind: str, indices_fn, base: Path | None, name: str):
    """Streaming helper: decode one example. ``indices_fn(num_frames, fps) -> native indices or None``.

    Returns ``(frames uint8 (n, H, W, 3), indices)`` or ``None`` when the video is too short.
    """
    value = example[column]
    if kind == "frames":
        n = len(value)
        idx = indices_fn(n, 0.0)
        if idx is None:
            return None
        return _stack([_decode_image(_hf_payload(value[i], base), f"{name} frame {i}") for i in idx], name), idx
    payload = _hf_payload(value, base)
    info = probe_video(functools.partial(_open_payload, payload))
    idx = indices_fn(info["num_frames"], info["fps"])
    if idx is None:
        return None
    return decode_video_frames(functools.partial(_open_payload, payload), info, idx, name), idx


# ----------------------------------------------------------------------------------------------
# Synthetic
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _synthetic(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    from tritoncorr.evals.synthetic import synthetic_clip

    frames, _ = synthetic_clip(num_frames, height, width, seed)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.shape != (num_frames, height, width, 3):
        raise ValueError(
            f"synthetic_clip returned {frames.dtype} {frames.shape}, expected uint8 {(num_frames, height, width, 3)}"
        )
    return frames


class SyntheticSource(ClipSource):
    """``videos`` generated clips of ``frames`` frames, ``size = (H, W)``; video ``i`` uses seed ``seed + i``."""

    kind = "synthetic"

    def __init__(self, videos: int, frames: int, size: tuple[int, int], seed: int = 0) -> None:
        super().__init__("synthetic")
        self.size = (int(size[0]), int(size[1]))
        self.seed = int(seed)
        for i in range(videos):
            self.names.append(f"synthetic[{i}]")
            self.num_frames.append(int(frames))
            self.fps.append(0.0)

    def identity(self, video: int) -> str:
        return f"{super().identity(video)}|{self.size}|{self.seed + video}"

    def read(self, video: int, indices: Sequence[int]) -> np.ndarray:
        idx = self._check_indices(video, indices)
        frames = _synthetic(self.num_frames[video], self.size[0], self.size[1], self.seed + video)
        return frames[idx].copy()


def build_source(cfg: DataConfig) -> ClipSource:
    """The map-style source described by ``cfg`` (not for ``hf_streaming``)."""
    if cfg.source == "frames":
        return FrameFolderSource(cfg.root)
    if cfg.source == "video":
        return VideoFileSource(cfg.root, probe_cache=cfg.probe_cache)
    if cfg.source == "hf":
        return HFSource(cfg.root, cfg.hf_split, cfg.hf_column)
    if cfg.source == "synthetic":
        return SyntheticSource(cfg.synthetic_videos, cfg.synthetic_frames, cfg.synthetic_size, cfg.synthetic_seed)
    raise ValueError(f"unknown source {cfg.source!r}")

"""VIP human-part propagation: reader, the confusion histogram and mIoU as CRW's ``eval_vip.py`` computes them.

Protocol (CRW ``code/eval/eval_vip.py``, ``code/data/vos.py``; ``docs/methods/dul.md`` section 4.2):

* 20 classes (background, hat, hair, sun-glasses, upper-clothes, dress, coat, socks, pants,
  gloves, scarf, skirt, torso-skin, face, right/left arm, right/left leg, right/left shoe);
* the first frame's category ids are propagated (label set = the ids present in the first frame,
  CRW's ``make_lbl_set``; ids outside 0..19, e.g. 255, count as background there); frames are
  resized to 560 x 560 (the CRW-paper protocol; STT's too), predictions decoded at that size and
  brought back to the annotation size with nearest resizing;
* one confusion histogram ``hist[gt, pred]`` accumulated over every scored frame of every video
  (``fast_hist``: ground-truth pixels outside ``[0, 20)``, e.g. 255, are ignored); a prediction of
  another size than its ground truth is resized to it with PIL nearest first;
* from the histogram: overall pixel accuracy ``sum(diag) / sum``, mean class accuracy
  ``nanmean(diag / gt_c)``, **mean IoU** ``nanmean(diag / (gt_c + pred_c - diag))`` (the reported
  number), frequency-weighted IoU ``sum(freq_c * IoU_c)`` over classes with ``freq_c > 0``;
  printed and written as fractions, as ``eval_vip.py`` prints them.

Scored frames: every frame that has a ground-truth PNG, the first one included (CRW writes and
scores the first frame's decoded labels too). Differences, named: predictions with ids >= 20
abort with a message (``eval_vip.py`` stops in a debugger); CRW resizes the first label image to
560 x 560 with OpenCV's default bilinear interpolation (the NEAREST flag lands in the ``dst``
argument), which invents intermediate ids at part borders; here the label map is resized with
nearest (:class:`tritoncorr.evaluate.MaskCodec`).

Layout read (``VIP_Fine``): ``<root>/Images/<video>/<frame>.jpg``, ``<root>/Annotations/Category_ids/<video>/<frame>.png``
(8-bit category ids; ``<root>/Category_ids/`` is accepted too, CRW's ``DATA`` folder),
``<root>/lists/<split>_videos.txt`` (one video per line). Predictions are written as 8-bit
grayscale PNGs of category ids, ``<out>/<video>/<frame>.png`` (what ``eval_vip.py`` reads).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tritoncorr.evals.davis import VideoFrames

NUM_CLASSES = 20
VIP_CLASSES = (
    "background",
    "hat",
    "hair",
    "sun-glasses",
    "upper-clothes",
    "dress",
    "coat",
    "socks",
    "pants",
    "gloves",
    "scarf",
    "skirt",
    "torso-skin",
    "face",
    "right-arm",
    "left-arm",
    "right-leg",
    "left-leg",
    "right-shoe",
    "left-shoe",
)
GLOBAL_COLUMNS = ("Pixel-Acc", "Mean-Acc", "mIoU", "fwIoU")


class VipFormatError(ValueError):
    """A VIP folder, list or result that does not follow the expected layout."""


# ----------------------------------------------------------------------------------------------
# Reader
# ----------------------------------------------------------------------------------------------


def _read_ids(path: Path, what: str) -> np.ndarray:
    from tritoncorr.evals.davis import DavisFormatError, read_index_png

    try:
        return read_index_png(path)
    except DavisFormatError as err:
        raise VipFormatError(str(err).replace("mask", what)) from err


@dataclass
class VipVideo(VideoFrames):
    """One video: its frames (sorted by name) and the category-id PNGs of the frames that have one."""

    name: str
    frames: list[Path]
    labels: dict[str, Path]
    size: tuple[int, int]
    format_error = VipFormatError

    def has_label(self, t: int) -> bool:
        return self.frames[t].stem in self.labels

    def load_label(self, t: int) -> np.ndarray:
        """uint8 ``(H, W)`` category ids of frame ``t`` (values >= 20 are ignored in scoring)."""
        path = self.labels[self.frames[t].stem]
        ids = _read_ids(path, "category-id PNG")
        if ids.shape != self.size:
            raise VipFormatError(
                f"{path}: label size {ids.shape[1]}x{ids.shape[0]} differs from the frame size "
                f"{self.size[1]}x{self.size[0]}"
            )
        return ids


class VipDataset:
    """The VIP layout under ``root`` (see the module docstring).

    Raises:
        VipFormatError: naming the folder or file and the problem.
    """

    def __init__(self, root: str | Path, split: str = "val", videos: Sequence[str] | None = None):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise VipFormatError(f"VIP root {root} does not exist or is not a folder")
        img_dir = root / "Images"
        if not img_dir.is_dir():
            raise VipFormatError(f"VIP root {root}: missing folder {img_dir}")
        ann_dir = next((d for d in (root / "Annotations" / "Category_ids", root / "Category_ids") if d.is_dir()), None)
        if ann_dir is None:
            raise VipFormatError(f"VIP root {root}: missing folder {root / 'Annotations' / 'Category_ids'}")
        list_file = root / "lists" / f"{split}_videos.txt"
        if not list_file.is_file():
            raise VipFormatError(f"VIP root {root}: missing list {list_file}")
        from tritoncorr.evals.davis import plain_names, read_text, select_names

        text = read_text(list_file, VipFormatError)
        listed = plain_names(
            list(dict.fromkeys(ln.strip() for ln in text.splitlines() if ln.strip())), list_file, VipFormatError
        )
        if not listed:
            raise VipFormatError(f"{list_file} lists no video")
        listed = select_names(listed, videos, "video", list_file, VipFormatError)
        self.root, self.split, self.annotations = root, split, ann_dir
        self.videos = [self._scan(v, img_dir / v, ann_dir / v) for v in listed]

    @staticmethod
    def _scan(name: str, img: Path, ann: Path) -> VipVideo:
        from tritoncorr.evals.davis import frame_folder, image_size

        frames = frame_folder(name, "video", "is listed", img, ann, VipFormatError)
        labels = {p.stem: p for p in sorted(ann.glob("*.png"))}
        if frames[0].stem not in labels:
            raise VipFormatError(
                f"video {name!r}: no category-id PNG {ann / (frames[0].stem + '.png')} for the first frame"
            )
        stems = {p.stem for p in frames}
        orphans = [n for n in labels if n not in stems]
        if orphans:
            raise VipFormatError(f"video {name!r}: annotations without a frame in {img}: {orphans[:5]}")
        return VipVideo(name=name, frames=frames, labels=labels, size=image_size(frames[0], VipFormatError))

    def __len__(self) -> int:
        return len(self.videos)

    def __iter__(self):
        return iter(self.videos)

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.videos]


# ----------------------------------------------------------------------------------------------
# Metrics (eval_vip.py)
# ----------------------------------------------------------------------------------------------


def fast_hist(gt: np.ndarray, pred: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """int64 ``(n, n)`` histogram of ``(gt, pred)`` pairs over the pixels with ``0 <= gt < n``."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt shape {gt.shape} != pred shape {pred.shape}")
    keep = (gt >= 0) & (gt < n)
    p = pred[keep].astype(np.int64)
    if p.size and (p.min() < 0 or p.max() >= n):
        raise ValueError(f"predicted ids must lie in 0..{n - 1}, got range [{p.min()}, {p.max()}]")
    return np.bincount(n * gt[keep].astype(np.int64) + p, minlength=n * n).reshape(n, n)


def frame_histogram(gt: np.ndarray, pred: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """:func:`fast_hist` after resizing ``pred`` to ``gt``'s size with PIL nearest when they differ."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if pred.shape != gt.shape:
        pred = np.asarray(Image.fromarray(pred.astype(np.uint8)).resize((gt.shape[1], gt.shape[0]), Image.NEAREST))
    return fast_hist(gt, pred, n)


@dataclass
class VipScores:
    """Scores from an accumulated histogram ``hist[gt, pred]`` (int64 ``(n, n)``), ``frames`` scored."""

    hist: np.ndarray
    frames: int = 0

    def _div(self, a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(a, dtype=np.float64) / np.asarray(b, dtype=np.float64)

    @property
    def pixel_accuracy(self) -> float:
        return float(self._div(np.diag(self.hist).sum(), self.hist.sum()))

    @property
    def class_accuracy(self) -> np.ndarray:
        return self._div(np.diag(self.hist), self.hist.sum(1))

    @property
    def mean_accuracy(self) -> float:
        return _nanmean(self.class_accuracy)

    @property
    def class_iou(self) -> np.ndarray:
        d = np.diag(self.hist)
        return self._div(d, self.hist.sum(1) + self.hist.sum(0) - d)

    @property
    def mean_iou(self) -> float:
        return _nanmean(self.class_iou)

    @property
    def fw_iou(self) -> float:
        freq = self._div(self.hist.sum(1), self.hist.sum())
        iou = self.class_iou
        return float((freq[freq > 0] * iou[freq > 0]).sum())

    def global_row(self) -> dict[str, float]:
        return dict(zip(GLOBAL_COLUMNS, (self.pixel_accuracy, self.mean_accuracy, self.mean_iou, self.fw_iou)))

    def csv_paths(self, folder: str | Path) -> tuple[Path, Path]:
        folder = Path(folder)
        return folder / "global_results-vip.csv", folder / "per-class_results-vip.csv"

    def write_csvs(self, folder: str | Path) -> tuple[Path, Path]:
        """``global_results-vip.csv`` (Pixel-Acc, Mean-Acc, mIoU, fwIoU) and ``per-class_results-vip.csv``
        (Class, IoU, Acc, GT-Pixels), fractions with 4 decimals (NaN for classes absent everywhere)."""
        g_path, c_path = self.csv_paths(folder)
        g_path.parent.mkdir(parents=True, exist_ok=True)
        row = self.global_row()
        g_path.write_text(",".join(GLOBAL_COLUMNS) + "\n" + ",".join(f"{row[c]:.4f}" for c in GLOBAL_COLUMNS) + "\n")
        with c_path.open("w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["Class", "IoU", "Acc", "GT-Pixels"])
            for i, name in enumerate(VIP_CLASSES[: self.hist.shape[0]]):
                wr.writerow(
                    [name, f"{self.class_iou[i]:.4f}", f"{self.class_accuracy[i]:.4f}", int(self.hist[i].sum())]
                )
        return g_path, c_path


def _nanmean(x: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(x))


def read_prediction(path: Path) -> np.ndarray:
    """A prediction PNG of category ids (grayscale or indexed) as uint8 ``(H, W)``."""
    if not path.is_file():
        raise VipFormatError(
            f"result {path} not found: results must be PNGs <results>/<video>/<frame>.png of "
            "category ids, named as the annotation frames"
        )
    return _read_ids(path, "prediction")


def evaluate_results(
    root: str | Path | None = None,
    results_dir: str | Path = ".",
    split: str = "val",
    videos: Sequence[str] | None = None,
    *,
    dataset: VipDataset | None = None,
) -> VipScores:
    """Score ``<results_dir>/<video>/<frame>.png`` against every annotated frame (``eval_vip.py``)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise VipFormatError(f"results folder {results_dir} does not exist")
    ds = dataset if dataset is not None else VipDataset(root, split, videos)
    hist = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    n = 0
    for v in ds:
        h, k = video_histogram(results_dir, v)
        hist += h
        n += k
    return VipScores(hist, frames=n)


def video_histogram(results_dir: Path, v: VipVideo) -> tuple[np.ndarray, int]:
    """``(hist, frames)``: the confusion histogram of ``<results_dir>/<video>/*.png`` over ``v``'s annotated frames."""
    hist = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    n = 0
    for t in range(len(v)):
        if not v.has_label(t):
            continue
        path = Path(results_dir) / v.name / f"{v.frames[t].stem}.png"
        try:
            hist += frame_histogram(v.load_label(t), read_prediction(path))
        except ValueError as err:
            if isinstance(err, VipFormatError):
                raise
            raise VipFormatError(f"{path}: {err}") from err
        n += 1
    return hist, n


# ----------------------------------------------------------------------------------------------
# Predictions
# ----------------------------------------------------------------------------------------------


def write_prediction(path: Path, ids: np.ndarray) -> Path:
    """uint8 ids as an 8-bit grayscale PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8)).save(path)
    return path


__all__ = [
    "GLOBAL_COLUMNS",
    "NUM_CLASSES",
    "VIP_CLASSES",
    "VipDataset",
    "VipFormatError",
    "VipScores",
    "VipVideo",
    "evaluate_results",
    "fast_hist",
    "frame_histogram",
    "read_prediction",
    "video_histogram",
    "write_prediction",
]

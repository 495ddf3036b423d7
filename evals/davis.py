"""DAVIS-2017 semi-supervised evaluation: reader, J and F metrics, statistics, CSVs, palette PNGs.

The numbers equal those of the official toolkit (``davisvideochallenge/davis2017-evaluation``,
``evaluation_method.py --task semi-supervised``):

* ground truth: every annotated frame is read; 255 is void and set to background (the void map is
  not used in the semi-supervised branch); the number of objects is the largest id in the first
  frame; object ``k`` is the binary mask ``ids == k``.
* the first and the last frame of every sequence are excluded from all metrics.
* results: ``<results>/<seq>/<frame>.png`` for the same frame names; the number of predicted objects
  is the largest id over the evaluated frames; fewer than the ground truth are zero-padded, more is
  an error.
* J = region IoU (1 when the union is empty); F = boundary F-measure with tolerance
  ``ceil(0.008 * image diagonal)`` pixels (disk dilation, ``cv2.dilate`` + ``skimage.morphology.disk``
  semantics, re-implemented here in numpy).
* per object: Mean = nanmean, Recall = fraction of frames > 0.5, Decay = mean of the first minus
  mean of the last of 4 bins over ``linspace(1, n, 5)``; global numbers average over all objects of
  all sequences; J&F-Mean = (J-Mean + F-Mean) / 2.

Layout read: ``<root>/JPEGImages/<res>/<seq>/*.jpg``, ``<root>/Annotations/<res>/<seq>/*.png`` (indexed
"P" PNGs with object ids, 255 = void; DAVIS-2016 binary 0/255 masks are read as one object),
``<root>/ImageSets/2017/<split>.txt``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

RESOLUTIONS = ("480p", "Full-Resolution")
VOID = 255
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")


class DavisFormatError(ValueError):
    """A DAVIS folder or result folder that does not follow the expected layout or content."""


# ----------------------------------------------------------------------------------------------
# Palette and PNG / JPEG I/O
# ----------------------------------------------------------------------------------------------


def davis_palette() -> list[int]:
    """The DAVIS / PASCAL-VOC colour map as a flat list of 768 ints (index 0 black, 1 dark red, ...)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal.extend((r, g, b))
    return pal


_PALETTE = davis_palette()


def write_palette_png(path: str | Path, ids: np.ndarray) -> Path:
    """Write object ids ``(H, W)`` (integers 0..255) as an indexed PNG with the DAVIS palette."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"ids must be (H, W), got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"ids must lie in 0..255, got range [{ids.min()}, {ids.max()}]")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette(_PALETTE)
    im.save(path)
    return path


# Decompression bombs: a small file can declare a huge image. PIL's own limit (a warning above it, an
# error above twice it) is set here deliberately, and every reader checks the declared size against it
# before decoding: 36 Mpx is far above any benchmark frame (DAVIS Full-Resolution: 8.3 Mpx), and bounds
# the work a few hundred bytes can cause (the fuzzing found a 300-byte PNG decoding to 60 Mpx).
MAX_IMAGE_PIXELS = 6144 * 6144  # 36 Mpx: 8K UHD (7680 x 4320) fits
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def load_image(path: str | Path, error: type[Exception] | None = None, what: str = "image", mode: str | None = None):
    """Open, size-check and decode an image file; every failure is ``error`` naming the file.

    ``mode``: convert to it (e.g. "RGB") after decoding. PIL reports corrupt data with many exception
    types (OSError, SyntaxError, ValueError, EOFError, struct.error, DecompressionBombError, ...); all
    of them become ``error(f"cannot read {what} {path}: ...")`` (default :class:`DavisFormatError`).
    """
    error = error or DavisFormatError
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS or w < 1 or h < 1:
                raise error(
                    f"cannot read {what} {path}: it declares {w}x{h} pixels (more than the "
                    f"{MAX_IMAGE_PIXELS} allowed, or none): refusing to decode it"
                )
            im.load()
            return im.convert(mode) if mode and im.mode != mode else im.copy()
    except error:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001 - PIL's decoders raise many types for corrupt files
        raise error(f"cannot read {what} {path}: {type(err).__name__}: {err}") from err


def read_text(path: str | Path, error: type[Exception] | None = None) -> str:
    """A UTF-8 text file (split and list files, ``meta.json``); unreadable or not UTF-8 is ``error`` naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise (error or DavisFormatError)(f"cannot read {path} as UTF-8 text: {err}") from err


def plain_names(names: Sequence[str], listing: str | Path, error: type[Exception] | None = None) -> list[str]:
    """``names`` (sequences / videos a split file or ``meta.json`` lists), each checked to be one plain
    folder name: ``..``, ``.``, a path with ``/`` or ``\\`` or an absolute one would lead the reader
    out of the dataset root, so it is ``error`` naming ``listing``."""
    for name in names:
        if name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
            raise (error or DavisFormatError)(
                f"{listing} lists {name!r}, which is not a folder name inside the dataset"
            )
    return list(names)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as uint8 ``(H, W, 3)`` RGB; a :class:`DavisFormatError` names a corrupt file."""
    return np.array(load_image(path, DavisFormatError, "image", "RGB"))


def read_video_frame(path: str | Path, size: tuple[int, int], error: type[Exception]) -> np.ndarray:
    """:func:`read_rgb` of one frame of a video whose frames are all ``size = (H, W)``; an unreadable
    file or another size raises ``error`` (the benchmark's format error) naming the file."""
    try:
        img = read_rgb(path)
    except DavisFormatError as err:
        raise error(str(err)) from err
    if img.shape[:2] != tuple(size):
        raise error(f"{path}: size {img.shape[1]}x{img.shape[0]} differs from the video's {size[1]}x{size[0]}")
    return img


class VideoFrames:
    """The frames of one video of a benchmark reader, for a dataclass with ``frames`` (sorted by name) and
    ``size`` ``(H, W)`` fields; ``format_error`` (class attribute) is its benchmark's format error."""

    frames: list[Path]
    size: tuple[int, int]
    format_error: type[Exception] = DavisFormatError

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def frame_ids(self) -> list[str]:
        """Frame names without extension, the names the outputs use."""
        return [p.stem for p in self.frames]

    def load_frame(self, t: int) -> np.ndarray:
        """Frame ``t`` as uint8 ``(H, W, 3)`` RGB (:func:`read_video_frame`)."""
        return read_video_frame(self.frames[t], self.size, self.format_error)


def read_index_png(path: str | Path) -> np.ndarray:
    """Read an indexed ("P") or grayscale ("L") PNG as uint8 ``(H, W)`` raw values.

    An RGB PNG whose three channels are equal (R = G = B = id, what CRW's ``test.py`` writes for VIP)
    is read as that index map; an RGB PNG whose channels differ is a :class:`DavisFormatError`.
    """
    im = load_image(path, DavisFormatError, "mask")
    if im.mode not in ("P", "L", "1", "RGB"):
        raise DavisFormatError(
            f"{path}: mask must be an indexed ('P') or grayscale ('L') PNG of object ids, got mode {im.mode!r}"
        )
    arr = np.array(im)
    if im.mode == "RGB":
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise DavisFormatError(
                f"{path}: an RGB mask must have equal channels (R = G = B = id, as CRW writes them); this "
                "one has coloured pixels: save the ids as an indexed ('P') or grayscale ('L') PNG"
            )
        arr = arr[..., 0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return arr.astype(np.uint8, copy=False)


def unknown_names(unknown: Sequence[str], known: Sequence[str]) -> str:
    """``['doggo'] (did you mean 'dog'?)``: unknown sequence / video names with close matches."""
    import difflib

    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
        if close:
            hints.append(f"{name!r}: did you mean {' or '.join(repr(c) for c in close)}?")
    return f"{list(unknown)}" + (f" ({'; '.join(hints)})" if hints else "")


def select_names(
    listed: Sequence[str], wanted: Sequence[str] | None, what: str, where, error: type[Exception]
) -> list[str]:
    """``listed`` restricted to the names in ``wanted``, in ``listed``'s order (all of it when ``wanted`` is
    empty). A wanted name that is not listed raises ``error``: ``"<what>(s) [...] not listed in <where>"``,
    with close matches (:func:`unknown_names`)."""
    if not wanted:
        return list(listed)
    unknown = [name for name in wanted if name not in listed]
    if unknown:
        raise error(f"{what}(s) {unknown_names(unknown, listed)} not listed in {where}")
    keep = set(wanted)
    return [name for name in listed if name in keep]


def frame_folder(name: str, what: str, listed: str, img: Path, ann: Path, error: type[Exception]) -> list[Path]:
    """The ``.jpg`` frames (sorted by name) of the video ``name`` (a ``what``: ``"sequence"``, ``"video"``)
    in ``img``, after checking that ``img`` and its annotation folder ``ann`` exist; ``listed`` says where
    the name comes from (``"is listed in the split"``). A missing folder or no frame raises ``error``."""
    if not img.is_dir():
        raise error(f"{what} {name!r} {listed} but {img} does not exist")
    frames = sorted(img.glob("*.jpg"))
    if not frames:
        raise error(f"{what} {name!r}: no .jpg frames in {img}")
    if not ann.is_dir():
        raise error(f"{what} {name!r}: missing annotation folder {ann}")
    return frames


def image_size(path: Path, error: type[Exception] | None = None) -> tuple[int, int]:
    """``(H, W)`` of an image from its header (:func:`_image_size`); a corrupt header raises ``error``
    (the benchmark's format error; default :class:`DavisFormatError`) naming the file."""
    try:
        return _image_size(path)
    except DavisFormatError as err:
        if error is None:
            raise
        raise error(str(err)) from err


def _image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image from its header; corrupt headers raise :class:`DavisFormatError`."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many types for corrupt headers
        raise DavisFormatError(f"cannot read {path}: {type(err).__name__}: {err}") from err
    if w * h > MAX_IMAGE_PIXELS or w < 1 or h < 1:
        raise DavisFormatError(
            f"cannot read {path}: it declares {w}x{h} pixels (more than the {MAX_IMAGE_PIXELS} allowed, or none)"
        )
    return h, w


# ----------------------------------------------------------------------------------------------
# Reader
# ----------------------------------------------------------------------------------------------


@dataclass
class DavisSequence:
    """One sequence: frame JPEGs and annotation PNGs (sorted by name, as the toolkit globs them)."""

    name: str
    frames: list[Path]
    masks: list[Path]
    size: tuple[int, int]  # (H, W)
    binary: bool = False  # DAVIS-2016 style 0/255 masks read as object 1

    @property
    def frame_ids(self) -> list[str]:
        """Frame names without extension (``00000`` ...), the names result PNGs must use."""
        return [p.stem for p in self.frames]

    @property
    def mask_ids(self) -> list[str]:
        return [p.stem for p in self.masks]

    def __len__(self) -> int:
        return len(self.frames)

    def load_frame(self, t: int) -> np.ndarray:
        """Frame ``t`` as uint8 ``(H, W, 3)`` RGB."""
        img = read_rgb(self.frames[t])
        if img.shape[:2] != self.size:
            raise DavisFormatError(f"{self.frames[t]}: size {img.shape[:2]} differs from the sequence's {self.size}")
        return img

    def load_mask(self, t: int) -> np.ndarray:
        """Annotation ``t`` as uint8 ``(H, W)`` object ids, 255 = void (binary masks -> 0/1)."""
        m = read_index_png(self.masks[t])
        if m.shape != self.size:
            raise DavisFormatError(f"{self.masks[t]}: mask size {m.shape} differs from the frame size {self.size}")
        if self.binary:
            bad = (m != 0) & (m != 255)
            if bad.any():
                raise DavisFormatError(
                    f"{self.masks[t]}: sequence {self.name!r} has binary (0/255) masks but this one has value "
                    f"{int(m[bad][0])}"
                )
            m = (m == 255).astype(np.uint8)
        return m

    def load_masks(self) -> np.ndarray:
        """All annotations as uint8 ``(T_masks, H, W)`` object ids (255 = void)."""
        return np.stack([self.load_mask(t) for t in range(len(self.masks))])

    def num_objects(self) -> int:
        """Number of objects as the toolkit counts them: the largest id in the first mask (void excluded)."""
        m = self.load_mask(0)
        m = np.where(m == VOID, 0, m)
        return int(m.max()) if m.size else 0


class DavisDataset:
    """The DAVIS-2017 layout under ``root``.

    Args:
        root: folder with ``JPEGImages/``, ``Annotations/`` and ``ImageSets/2017/``.
        split: name of ``ImageSets/2017/<split>.txt``.
        resolution: ``"480p"`` or ``"Full-Resolution"``.
        sequences: evaluate only these (each must be listed in the split file).
        require_all_masks: every frame needs an annotation (scoring); otherwise the first frame's
            annotation suffices (semi-supervised propagation).

    Raises:
        DavisFormatError: naming the folder or file and the problem.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        resolution: str = "480p",
        sequences: Sequence[str] | None = None,
        *,
        require_all_masks: bool = True,
    ):
        root = Path(root).expanduser()
        if resolution not in RESOLUTIONS:
            raise DavisFormatError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        if not root.is_dir():
            raise DavisFormatError(f"DAVIS root {root} does not exist or is not a folder")
        img_dir = root / "JPEGImages" / resolution
        ann_dir = root / "Annotations" / resolution
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise DavisFormatError(f"DAVIS root {root}: missing folder {d}")
        split_file = root / "ImageSets" / "2017" / f"{split}.txt"
        if not split_file.is_file():
            raise DavisFormatError(f"DAVIS root {root}: missing split file {split_file}")
        listed = plain_names([ln.strip() for ln in read_text(split_file).splitlines() if ln.strip()], split_file)
        if not listed:
            raise DavisFormatError(f"split file {split_file} lists no sequence")
        # The toolkit keys sequences by name (duplicates collapse), keeping the file order.
        listed = list(dict.fromkeys(listed))
        listed = select_names(listed, sequences, "sequence", split_file, DavisFormatError)
        self.root, self.split, self.resolution = root, split, resolution
        self.require_all_masks = require_all_masks
        self.sequences: list[DavisSequence] = [self._scan(name, img_dir, ann_dir) for name in listed]
        self._by_name = {s.name: s for s in self.sequences}

    def _scan(self, name: str, img_dir: Path, ann_dir: Path) -> DavisSequence:
        seq_img, seq_ann = img_dir / name, ann_dir / name
        frames = frame_folder(name, "sequence", "is listed in the split", seq_img, seq_ann, DavisFormatError)
        masks = sorted(seq_ann.glob("*.png"))
        if not masks:
            raise DavisFormatError(
                f"sequence {name!r}: no .png annotation in {seq_ann} (the first frame's is required)"
            )
        if len(masks) > len(frames):
            raise DavisFormatError(
                f"sequence {name!r}: {len(masks)} annotations in {seq_ann} but only {len(frames)} frames in {seq_img}"
            )
        if self.require_all_masks and len(masks) != len(frames):
            raise DavisFormatError(
                f"sequence {name!r}: {len(frames)} frames in {seq_img} but {len(masks)} annotations in {seq_ann}; "
                "scoring needs an annotation for every frame"
            )
        if masks[0].stem != frames[0].stem:
            raise DavisFormatError(
                f"sequence {name!r}: the first annotation {masks[0].name} does not match the first frame {frames[0].name}"
            )
        frame_stems = {p.stem for p in frames}
        orphans = [m.name for m in masks if m.stem not in frame_stems]
        if orphans:
            raise DavisFormatError(f"sequence {name!r}: annotations without a frame in {seq_img}: {orphans[:5]}")
        size = _image_size(frames[0])
        for p in frames[1:] + masks:
            s = _image_size(p)
            if s != size:
                raise DavisFormatError(
                    f"sequence {name!r}: {p} is {s[1]}x{s[0]} but {frames[0].name} is {size[1]}x{size[0]} (W x H)"
                )
        first = read_index_png(masks[0])
        vals = np.unique(first)
        binary = bool(vals.max() == 255 and np.isin(vals, (0, 255)).all())
        return DavisSequence(name=name, frames=frames, masks=masks, size=size, binary=binary)

    def __len__(self) -> int:
        return len(self.sequences)

    def __iter__(self):
        return iter(self.sequences)

    def __getitem__(self, name: str) -> DavisSequence:
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sequences]


# ----------------------------------------------------------------------------------------------
# Metrics (toolkit semantics)
# ----------------------------------------------------------------------------------------------


def jaccard(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None):
    """Region similarity J (IoU) of boolean masks.

    Args:
        gt, pred: ``(H, W)`` or ``(T, H, W)``, same shape (cast to bool).
        void: optional pixels to ignore, same shape.

    Returns:
        float for ``(H, W)``, float64 array ``(T,)`` for ``(T, H, W)``; 1 where the union is empty.
    """
    gt, pred = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool)
    if gt.shape != pred.shape:
        raise ValueError(f"jaccard: gt shape {gt.shape} != pred shape {pred.shape}")
    if gt.ndim not in (2, 3):
        raise ValueError(f"jaccard expects (H, W) or (T, H, W) masks, got shape {gt.shape}")
    keep = np.ones_like(gt) if void is None else ~np.asarray(void).astype(bool)
    inter = np.sum(gt & pred & keep, axis=(-2, -1))
    union = np.sum((gt | pred) & keep, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        j = inter / union
    if gt.ndim == 2:
        return 1.0 if union == 0 else float(j)
    j = np.asarray(j, dtype=np.float64)
    j[union == 0] = 1.0
    return j


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel boundary map of a binary mask ``(H, W)`` -> bool ``(H, W)`` (toolkit ``_seg2bmap``).

    A pixel is on the boundary when it differs from its east, south or south-east neighbour; in the
    last row only the east neighbour counts, in the last column only the south one, and the
    bottom-right pixel is never a boundary.
    """
    seg = np.asarray(seg).astype(bool)
    if seg.ndim != 2:
        raise ValueError(f"seg2bmap expects an (H, W) mask, got shape {seg.shape}")
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """``skimage.morphology.disk(radius)``: uint8 ``(2r+1, 2r+1)`` with 1 where ``dx^2 + dy^2 <= r^2``."""
    r = _int_radius(radius)
    ax = np.arange(-r, r + 1)
    return ((ax[None, :] ** 2 + ax[:, None] ** 2) <= r * r).astype(np.uint8)


def _int_radius(radius) -> int:
    r = float(radius)
    if r < 0 or r != math.floor(r):
        raise ValueError(f"disk radius must be a non-negative integer, got {radius!r}")
    return int(r)


def dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of ``mask`` ``(H, W)`` by a disk: equals ``cv2.dilate(mask, disk(radius))``.

    Pixels outside the image do not contribute (OpenCV's default border for dilation). Computed as
    horizontal runs per disk row (``r + 1`` horizontal dilations, ``2r + 1`` shifted ORs).
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"dilate_disk expects an (H, W) mask, got shape {m.shape}")
    r = _int_radius(radius)
    h, w = m.shape
    # horiz[k] = m dilated by the segment [-k, k] along x.
    horiz = [m]
    for k in range(1, r + 1):
        prev = horiz[-1].copy()
        if k < w:
            prev[:, k:] |= m[:, :-k]
            prev[:, :-k] |= m[:, k:]
        horiz.append(prev)
    out = np.zeros_like(m)
    for dy in range(-r, r + 1):
        half = math.isqrt(r * r - dy * dy)
        src = horiz[half]
        # out[y] |= src[y + dy] (the structuring element is symmetric)
        if dy >= 0:
            if dy < h:
                out[: h - dy] |= src[dy:]
        else:
            if -dy < h:
                out[-dy:] |= src[: h + dy]
    return out


def _f_measure(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None, bound_th: float) -> float:
    pred = pred.astype(bool)
    gt = gt.astype(bool)
    if void is not None:
        keep = ~void.astype(bool)
        pred, gt = pred & keep, gt & keep
    bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*pred.shape))
    fg_b = seg2bmap(pred)
    gt_b = seg2bmap(gt)
    fg_dil = dilate_disk(fg_b, bound_pix)
    gt_dil = dilate_disk(gt_b, bound_pix)
    n_fg = int(fg_b.sum())
    n_gt = int(gt_b.sum())
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = float((fg_b & gt_dil).sum()) / n_fg
        recall = float((gt_b & fg_dil).sum()) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def f_boundary(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008, void: np.ndarray | None = None):
    """Contour accuracy F of boolean masks (toolkit ``db_eval_boundary``).

    Args:
        gt, pred: ``(H, W)`` or ``(T, H, W)``, same shape.
        bound_th: tolerance; < 1 means a fraction of the image diagonal (``ceil`` to pixels), >= 1 pixels.
        void: optional pixels to ignore (removed from both masks before taking boundaries).

    Returns:
        float for ``(H, W)``, float64 array ``(T,)`` for ``(T, H, W)``.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"f_boundary: gt shape {gt.shape} != pred shape {pred.shape}")
    if gt.ndim == 2:
        return _f_measure(pred, gt, void, bound_th)
    if gt.ndim != 3:
        raise ValueError(f"f_boundary expects (H, W) or (T, H, W) masks, got shape {gt.shape}")
    out = np.zeros(gt.shape[0], dtype=np.float64)
    for t in range(gt.shape[0]):
        out[t] = _f_measure(pred[t], gt[t], None if void is None else np.asarray(void)[t], bound_th)
    return out


def db_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Mean (nanmean), Recall (fraction > 0.5) and Decay of per-frame values ``(n,)``.

    Decay: the frames are split into 4 bins at ``round(linspace(1, n, 5)) - 1`` (bins share their
    end points as in the toolkit); Decay = nanmean(first bin) - nanmean(last bin). The toolkit casts
    the bin indices to uint8, which wraps past 256 frames; here they are int64 (identical results for
    n <= 256, i.e. every DAVIS sequence).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"db_statistics expects a non-empty 1-D array, got shape {v.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(v))
        recall = float(np.nanmean(v > 0.5))
        ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.int64)
        bins = [v[ids[i] : ids[i + 1] + 1] for i in range(4)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


@dataclass
class ObjectScore:
    """Per-frame J and F of one object over the evaluated frames (first and last excluded)."""

    sequence: str
    object_id: int
    j: np.ndarray
    f: np.ndarray
    j_mean: float = field(init=False)
    j_recall: float = field(init=False)
    j_decay: float = field(init=False)
    f_mean: float = field(init=False)
    f_recall: float = field(init=False)
    f_decay: float = field(init=False)

    def __post_init__(self) -> None:
        self.j_mean, self.j_recall, self.j_decay = db_statistics(self.j)
        self.f_mean, self.f_recall, self.f_decay = db_statistics(self.f)

    @property
    def name(self) -> str:
        """``<seq>_<objid>`` as in the toolkit's per-sequence CSV."""
        return f"{self.sequence}_{self.object_id}"


def _object_average(attr: str) -> property:
    """A :class:`DavisScores` property: the mean of ``ObjectScore.<attr>`` over all objects (NaN if none)."""

    def average(self: DavisScores) -> float:
        if not self.objects:
            return float("nan")
        return float(np.mean([getattr(o, attr) for o in self.objects]))

    return property(average, doc=f"Mean of the objects' ``{attr}`` (NaN without objects).")


@dataclass
class DavisScores:
    """Per-object scores and the global metrics (averages over all objects of all sequences)."""

    objects: list[ObjectScore]
    split: str = "val"

    j_mean = _object_average("j_mean")
    j_recall = _object_average("j_recall")
    j_decay = _object_average("j_decay")
    f_mean = _object_average("f_mean")
    f_recall = _object_average("f_recall")
    f_decay = _object_average("f_decay")

    @property
    def jf_mean(self) -> float:
        return (self.j_mean + self.f_mean) / 2.0

    def global_row(self) -> dict[str, float]:
        vals = (self.jf_mean, self.j_mean, self.j_recall, self.j_decay, self.f_mean, self.f_recall, self.f_decay)
        return dict(zip(GLOBAL_COLUMNS, vals))

    def per_sequence_rows(self) -> list[tuple[str, float, float]]:
        return [(o.name, o.j_mean, o.f_mean) for o in self.objects]

    def csv_paths(self, folder: str | Path) -> tuple[Path, Path]:
        folder = Path(folder)
        return folder / f"global_results-{self.split}.csv", folder / f"per-sequence_results-{self.split}.csv"

    def write_csvs(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``global_results-<split>.csv`` and ``per-sequence_results-<split>.csv`` into ``folder``.

        Format as the toolkit's pandas ``to_csv(index=False, float_format="%.3f")``: a header line,
        floats with 3 decimals, NaN as an empty field.
        """
        g_path, s_path = self.csv_paths(folder)
        g_path.parent.mkdir(parents=True, exist_ok=True)
        row = self.global_row()
        g_lines = [",".join(GLOBAL_COLUMNS), ",".join(_fmt(row[c]) for c in GLOBAL_COLUMNS)]
        g_path.write_text("\n".join(g_lines) + "\n")
        s_lines = [",".join(SEQUENCE_COLUMNS)]
        s_lines += [f"{_csv_str(n)},{_fmt(j)},{_fmt(f)}" for n, j, f in self.per_sequence_rows()]
        s_path.write_text("\n".join(s_lines) + "\n")
        return g_path, s_path


def _fmt(x: float) -> str:
    return "" if x is None or np.isnan(x) else "%.3f" % x


def _csv_str(s: str) -> str:
    if any(c in s for c in ',"\n\r'):
        return '"' + s.replace('"', '""') + '"'
    return s


def score_sequence(name: str, gt_ids: np.ndarray, pred_ids: np.ndarray) -> list[ObjectScore]:
    """Score one sequence.

    Args:
        name: sequence name (for rows and errors).
        gt_ids: uint8 ``(T, H, W)`` ground-truth ids of ALL frames (255 = void).
        pred_ids: ``(T - 2, H, W)`` predicted ids of the evaluated frames (first and last excluded).

    Returns:
        one :class:`ObjectScore` per ground-truth object (ids 1..n, n = max id of the first frame).
    """
    gt_ids = np.asarray(gt_ids)
    pred_ids = np.asarray(pred_ids)
    if gt_ids.ndim != 3 or gt_ids.shape[0] < 3:
        raise DavisFormatError(
            f"sequence {name!r}: scoring needs at least 3 annotated frames (first and last are excluded), "
            f"got shape {gt_ids.shape}"
        )
    gt = np.where(gt_ids == VOID, 0, gt_ids)
    n_obj = int(gt[0].max())
    gt = gt[1:-1]
    if pred_ids.shape != gt.shape:
        raise DavisFormatError(f"sequence {name!r}: predictions have shape {pred_ids.shape}, ground truth {gt.shape}")
    n_pred = int(pred_ids.max()) if pred_ids.size else 0
    if n_pred > n_obj:
        raise DavisFormatError(
            f"sequence {name!r}: the predictions contain object id {n_pred} but the ground truth has only "
            f"{n_obj} object(s) in its first frame"
        )
    out = []
    for k in range(1, n_obj + 1):
        g = gt == k
        p = pred_ids == k  # ids above n_pred never occur: zero padding
        out.append(ObjectScore(name, k, jaccard(g, p), f_boundary(g, p)))
    return out


def read_results(results_dir: str | Path, seq: DavisSequence, frame_ids: Sequence[str]) -> np.ndarray:
    """Predicted ids ``(len(frame_ids), H, W)`` from ``<results_dir>/<seq>/<frame>.png``."""
    folder = Path(results_dir) / seq.name
    out = np.zeros((len(frame_ids), *seq.size), dtype=np.uint8)
    for i, fid in enumerate(frame_ids):
        p = folder / f"{fid}.png"
        if not p.is_file():
            raise DavisFormatError(
                f"result {p} not found: results must be indexed PNGs <results>/<sequence>/<frame>.png "
                "named as the annotation frames"
            )
        m = read_index_png(p)
        if m.shape != seq.size:
            raise DavisFormatError(
                f"result {p} is {m.shape[1]}x{m.shape[0]}, the annotations are {seq.size[1]}x{seq.size[0]}"
            )
        out[i] = m
    return out


def evaluate_results(
    root: str | Path,
    results_dir: str | Path,
    split: str = "val",
    resolution: str = "480p",
    sequences: Sequence[str] | None = None,
    progress: bool | Callable[[str], None] = False,
    workers: int = 0,
) -> DavisScores:
    """Score a folder of result PNGs against the ground truth (``evaluation_method.py`` semantics).

    Args:
        root: DAVIS root.
        results_dir: ``<results_dir>/<seq>/<frame>.png`` indexed PNGs.
        split, resolution, sequences: which sequences (see :class:`DavisDataset`).
        progress: True for a rich progress bar, or a callable receiving each sequence name (once it is scored).
        workers: score the sequences in this many processes (as vos-benchmark does); 0 or 1: in this one.
            The result does not depend on it (same objects, same order).

    Returns:
        :class:`DavisScores`.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise DavisFormatError(f"results folder {results_dir} does not exist")
    ds = DavisDataset(root, split, resolution, sequences, require_all_masks=True)
    objects: list[ObjectScore] = []
    pool = scoring_pool(workers, len(ds))
    if pool is not None:
        with pool:
            futures = [pool.submit(score_results, results_dir, seq) for seq in ds.sequences]
            for _seq, fut in zip(_iterate(ds.sequences, progress, "scoring"), futures):  # the bar follows the results
                objects.extend(fut.result())
        return DavisScores(objects, split=split)
    for seq in _iterate(ds.sequences, progress, "scoring"):
        objects.extend(score_results(results_dir, seq))
    return DavisScores(objects, split=split)


def scoring_pool(workers: int, jobs: int):
    """A process pool of ``min(workers, jobs)`` workers for scoring, or None when that is fewer than 2.

    Started with ``spawn``: the parent may hold torch threads, which ``fork`` does not copy safely.
    """
    if workers < 2 or jobs < 2:
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=min(workers, jobs), mp_context=multiprocessing.get_context("spawn"))


def score_results(results_dir: str | Path, seq: DavisSequence) -> list[ObjectScore]:
    """:func:`score_sequence` of ``<results_dir>/<seq>/*.png`` against ``seq``'s ground truth."""
    ids = seq.mask_ids[1:-1]
    pred = read_results(results_dir, seq, ids) if len(ids) else np.zeros((0, *seq.size), np.uint8)
    return score_sequence(seq.name, seq.load_masks(), pred)


def objects_to_json(objects: Sequence[ObjectScore]) -> list[dict]:
    """Per-object J and F (exact floats, NaN kept) for a resumable folder's record."""
    return [{"sequence": o.sequence, "object_id": o.object_id, "j": o.j.tolist(), "f": o.f.tolist()} for o in objects]


def objects_from_json(rows: Sequence[dict]) -> list[ObjectScore]:
    return [
        ObjectScore(r["sequence"], int(r["object_id"]), np.asarray(r["j"], np.float64), np.asarray(r["f"], np.float64))
        for r in rows
    ]


def _iterate(seqs: Iterable[DavisSequence], progress, label: str):
    seqs = list(seqs)
    if callable(progress):
        for s in seqs:
            yield s
            progress(s.name)  # once the caller is done with it
        return
    if not progress:
        yield from seqs
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(f"{label} {{task.fields[seq]}}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as bar:
        task = bar.add_task(label, total=len(seqs), seq="")
        for s in seqs:
            bar.update(task, seq=s.name)
            yield s
            bar.advance(task)


__all__ = [
    "DavisDataset",
    "DavisFormatError",
    "DavisScores",
    "DavisSequence",
    "GLOBAL_COLUMNS",
    "ObjectScore",
    "RESOLUTIONS",
    "SEQUENCE_COLUMNS",
    "davis_palette",
    "db_statistics",
    "dilate_disk",
    "disk",
    "evaluate_results",
    "f_boundary",
    "jaccard",
    "read_index_png",
    "read_results",
    "read_rgb",
    "read_video_frame",
    "score_results",
    "score_sequence",
    "scoring_pool",
    "seg2bmap",
    "write_palette_png",
]

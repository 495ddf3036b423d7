"""JHMDB pose propagation: reader, the 15-joint label encoding and decoding, PCK, as CRW computes them.

The protocol is CRW's (ajabri/videowalk ``code/data/jhmdb.py``, ``code/utils/test_utils.py``
``process_pose``, ``code/eval/eval_pck.py``; ``docs/methods/dul.md`` section 4.3):

* joints: ``pos_img`` of ``joint_positions.mat`` ``(2, 15, T)`` (x, y per joint and frame, MATLAB
  1-based pixels) minus 1; frames resized to ``input_size`` (320 x 320, aspect ignored);
* encoding (:func:`joint_heatmaps`): joint coordinates scaled to feature cells,
  ``x * W_in / W / stride`` (C:JH:229-266); each joint is an unnormalised Gaussian, sigma 0.5
  cells, drawn as a ``6 sigma + 1`` (4 x 4) patch at ``int(x - 3 sigma)`` .. ``int(x + 3 sigma + 1)``
  with Python ``int`` truncation, peak 1 (:func:`draw_gaussian`, CRW's ``draw_labelmap_np``); one
  channel per joint, plus a background channel first, 1 where every joint channel is exactly 0;
* decoding (:func:`decode_joints`, CRW ``process_pose``): drop the background channel; per joint
  the top-3 feature cells by propagated mass (``torch.topk`` over the flattened grid), their
  masses normalised to sum 1, the weighted mean of their ``(x, y)`` cell coordinates; joints whose
  channel has no mass get -1. Cell coordinates become pixels as ``x / feat_res * W`` with
  ``feat_res = W_in / stride`` (40 for 320 / 8; ``eval_pck.py`` hard-codes 40), in float32 as the
  dumped predictions are;
* PCK (:func:`pck`, ``eval_pck.py``): a predicted joint with ``x < 0`` is invisible and skipped;
  frame 0 is skipped; per frame the normaliser is ``0.6 * ||(max_x, max_y) - (min_x, min_y)||``
  over the ground-truth coordinates of the joints visible in the *prediction* (min starts at 1e6,
  max at -1); a joint is correct when distance / normaliser ``<= alpha``; per-joint PCK pools all
  (clip, frame) pairs of the joint, in percent; the reported number is the mean over the 15
  per-joint PCKs, for alpha in 0.1 .. 0.5.

Differences, named: a joint that is never evaluated (every prediction invisible) makes
``eval_pck.py`` divide by zero; here its PCK is NaN and the mean is over the other joints. When
the ``.mat`` holds a different number of frames than the folder, the first ``min`` frames are
scored (``eval_pck.py`` would index past the prediction). STT evaluates JHMDB differently
(sigma 4 px Gaussians at full resolution, top-5 of the upsampled heatmaps, ``stt.md`` 4.4); that
variant is not implemented: every method is scored with CRW's protocol.

Layout read (the JHMDB release):

* ``<root>/Rename_Images/<action>/<clip>/00001.png ...`` (frames, sorted by number);
* ``<root>/joint_positions/<action>/<clip>/joint_positions.mat`` (MATLAB v5; read by
  :func:`read_mat`, no SciPy needed);
* split files ``<root>/splits/<action>_test_split<N>.txt`` (or directly under ``<root>``), lines
  ``<clip>.avi 1|2`` with 2 = test (split 1's test part is the 268 clips CRW and STT evaluate); or
  a CRW-style list (``test.split.v2.txt``) of ``<frames folder> <mat file>`` lines; without split
  files every clip found is evaluated.
"""

from __future__ import annotations

import csv
import math
import re
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tritoncorr.evals.davis import read_text

NUM_JOINTS = 15
JOINT_NAMES = (
    "neck",
    "belly",
    "face",
    "right_shoulder",
    "left_shoulder",
    "right_hip",
    "left_hip",
    "right_elbow",
    "left_elbow",
    "right_knee",
    "left_knee",
    "right_wrist",
    "left_wrist",
    "right_ankle",
    "left_ankle",
)
# parent of each joint for drawing the skeleton (the pairs of CRW's ``vis_pose``; the neck's parent is the belly)
SKELETON_PARENTS = (1, 0, 0, 0, 0, 1, 1, 3, 4, 5, 6, 7, 8, 9, 10)
PCK_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
SIGMA = 0.5
TOPK = 3


class JhmdbFormatError(ValueError):
    """A JHMDB folder, split list or ``.mat`` file that does not follow the expected layout."""


# ----------------------------------------------------------------------------------------------
# MATLAB v5 MAT-files (numeric arrays only)
# ----------------------------------------------------------------------------------------------

_MI_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_MI_MATRIX, _MI_COMPRESSED = 14, 15
# A compressed element may not expand beyond this (JHMDB's joint_positions.mat: a few KB).
MAX_MAT_ELEMENT_BYTES = 64 << 20
_MX_DTYPES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}


def _element(buf: bytes, pos: int, bo: str, path) -> tuple[int, bytes, int]:
    """One data element at ``pos``: (type, payload, position of the next element)."""
    if pos + 8 > len(buf):
        raise JhmdbFormatError(f"{path}: truncated MAT-file (element header at byte {pos})")
    (word,) = struct.unpack_from(bo + "I", buf, pos)
    if word >> 16:  # small data element: 2 bytes size, 2 bytes type, up to 4 bytes of data
        mtype, nbytes = word & 0xFFFF, word >> 16
        if nbytes > 4:
            raise JhmdbFormatError(f"{path}: malformed MAT-file (small element of {nbytes} bytes at byte {pos})")
        return mtype, buf[pos + 4 : pos + 4 + nbytes], pos + 8
    mtype, nbytes = struct.unpack_from(bo + "II", buf, pos)
    start, end = pos + 8, pos + 8 + nbytes
    if end > len(buf):
        raise JhmdbFormatError(f"{path}: truncated MAT-file (element of {nbytes} bytes at byte {pos})")
    nxt = end if mtype == _MI_COMPRESSED else start + (nbytes + 7) // 8 * 8
    return mtype, buf[start:end], nxt


def _matrix(body: bytes, bo: str, path) -> tuple[str, np.ndarray | None]:
    """Name and value of an miMATRIX element (None for non-numeric classes: cells, structs, chars, sparse)."""
    pos = 0
    t, flags, pos = _element(body, pos, bo, path)
    if t != 6 or len(flags) < 8:
        raise JhmdbFormatError(f"{path}: malformed MAT-file (array flags)")
    word = struct.unpack_from(bo + "I", flags, 0)[0]
    cls, is_complex, is_logical = word & 0xFF, bool(word & 0x800), bool(word & 0x200)
    t, dims_b, pos = _element(body, pos, bo, path)
    if t != 5:
        raise JhmdbFormatError(f"{path}: malformed MAT-file (array dimensions)")
    if len(dims_b) % 4:
        raise JhmdbFormatError(f"{path}: malformed MAT-file (array dimensions of {len(dims_b)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(dims_b, dtype=bo + "i4"))
    if any(d < 0 for d in dims):
        raise JhmdbFormatError(f"{path}: malformed MAT-file (negative dimensions {dims})")
    t, name_b, pos = _element(body, pos, bo, path)
    name = name_b.decode("latin-1")
    if cls not in _MX_DTYPES:
        return name, None
    parts = []
    for _ in range(2 if is_complex else 1):
        t, data, pos = _element(body, pos, bo, path)
        if t not in _MI_DTYPES:
            raise JhmdbFormatError(f"{path}: variable {name!r} has unsupported data type {t}")
        parts.append(np.frombuffer(data, dtype=bo + _MI_DTYPES[t]).astype(_MX_DTYPES[cls]))
    arr = parts[0] if not is_complex else parts[0] + 1j * parts[1]
    if arr.size != math.prod(dims):
        raise JhmdbFormatError(f"{path}: variable {name!r} holds {arr.size} values for dimensions {dims}")
    arr = arr.reshape(dims, order="F")
    return name, arr.astype(bool) if is_logical else arr


def read_mat(path: str | Path) -> dict[str, np.ndarray]:
    """The numeric arrays of a MATLAB v5 MAT-file (compressed or not), by variable name.

    Arrays keep MATLAB's shape (column-major data reshaped with ``order="F"``), as
    ``scipy.io.loadmat`` returns them. Cells, structs, strings and sparse matrices are skipped.

    Raises:
        JhmdbFormatError: not a v5 MAT-file (v7.3 HDF5 files are named as such), or corrupt.
    """
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as err:
        raise JhmdbFormatError(f"cannot read {path}: {err}") from err
    if buf.startswith(b"MATLAB 7.3"):
        raise JhmdbFormatError(f"{path}: MATLAB v7.3 (HDF5) MAT-files are not supported; save it with -v7 or -v6")
    if len(buf) < 128 or not buf.startswith(b"MATLAB 5.0 MAT-file"):
        raise JhmdbFormatError(f"{path}: not a MATLAB 5 MAT-file")
    bo = {b"IM": "<", b"MI": ">"}.get(buf[126:128])
    if bo is None:
        raise JhmdbFormatError(f"{path}: MAT-file header has no endian indicator")
    out: dict[str, np.ndarray] = {}
    pos = 128
    while pos + 8 <= len(buf):
        mtype, body, pos = _element(buf, pos, bo, path)
        if mtype == _MI_COMPRESSED:
            z = zlib.decompressobj()
            try:
                body = z.decompress(body, MAX_MAT_ELEMENT_BYTES)
            except zlib.error as err:
                raise JhmdbFormatError(f"{path}: corrupt compressed MAT-file element: {err}") from err
            if z.unconsumed_tail:
                raise JhmdbFormatError(
                    f"{path}: a compressed MAT-file element expands beyond {MAX_MAT_ELEMENT_BYTES} bytes (a zip bomb?)"
                )
            mtype, body, _ = _element(body, 0, bo, path)
        if mtype == _MI_MATRIX and body:
            try:
                name, arr = _matrix(body, bo, path)
            except JhmdbFormatError:
                raise
            except (ValueError, TypeError, struct.error) as err:  # sizes that do not fit the data or dtype
                raise JhmdbFormatError(f"{path}: malformed MAT-file variable ({type(err).__name__}: {err})") from err
            if arr is not None:
                out[name] = arr
    return out


def write_mat(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write real numeric arrays as an uncompressed little-endian MATLAB v5 MAT-file (2-D or more each).

    Enough to generate JHMDB-layout test data; :func:`read_mat` and ``scipy.io.loadmat`` read it.
    """
    classes = {v: k for k, v in _MX_DTYPES.items()}
    mi = {v: k for k, v in _MI_DTYPES.items()}

    def elem(mtype: int, data: bytes) -> bytes:
        return struct.pack("<II", mtype, len(data)) + data + b"\0" * (-len(data) % 8)

    out = bytearray(
        b"MATLAB 5.0 MAT-file, written by tritoncorr".ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    )
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.ndim < 2:
            a = a.reshape(1, -1)
        code = a.dtype.str[1:]
        if code not in classes:
            a, code = a.astype("f8"), "f8"
        body = elem(6, struct.pack("<II", classes[code], 0))
        body += elem(5, np.asarray(a.shape, dtype="<i4").tobytes())
        body += elem(1, name.encode("ascii"))
        body += elem(mi[code], np.asfortranarray(a).astype("<" + code).tobytes(order="F"))
        out += elem(_MI_MATRIX, body)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))
    return path


def read_joints(path: str | Path) -> np.ndarray:
    """``pos_img - 1`` of a ``joint_positions.mat``: float64 ``(2, 15, T)`` 0-based pixel x, y."""
    mat = read_mat(path)
    if "pos_img" not in mat:
        raise JhmdbFormatError(f"{path}: no 'pos_img' variable (found {sorted(mat)})")
    if np.iscomplexobj(mat["pos_img"]):
        raise JhmdbFormatError(f"{path}: 'pos_img' is complex, expected real pixel coordinates")
    pos = np.asarray(mat["pos_img"], dtype=np.float64)
    if pos.ndim == 2:
        pos = pos[..., None]
    if pos.ndim != 3 or pos.shape[:2] != (2, NUM_JOINTS):
        raise JhmdbFormatError(f"{path}: 'pos_img' must be (2, {NUM_JOINTS}, T), got {pos.shape}")
    return pos - 1


# ----------------------------------------------------------------------------------------------
# Reader
# ----------------------------------------------------------------------------------------------


def _frame_number(p: Path) -> int:
    try:
        return int(p.name.split(".")[0])
    except ValueError as err:
        raise JhmdbFormatError(f"{p}: JHMDB frames are named by number (00001.png ...)") from err


@dataclass
class JhmdbClip:
    """One clip: its frames (sorted by number, as CRW sorts them) and its joint file."""

    name: str  # "<action>/<clip>"
    frames: list[Path]
    mat: Path
    size: tuple[int, int]  # (H, W) of the first frame

    def __len__(self) -> int:
        return len(self.frames)

    def load_frame(self, t: int) -> np.ndarray:
        """Frame ``t`` as uint8 ``(H, W, 3)`` RGB."""
        from tritoncorr.evals.davis import read_rgb

        return read_rgb(self.frames[t])

    def joints(self) -> np.ndarray:
        """Ground truth float64 ``(2, 15, T_mat)``: 0-based pixel x, y (``pos_img - 1``)."""
        return read_joints(self.mat)


def _split_clips(root: Path, split: int) -> list[tuple[str, str]] | None:
    """(action, clip) of the test part of split ``split`` from the JHMDB split files, None if there are none."""
    files = []
    for d in (root / "splits", root):
        if d.is_dir():
            files = sorted(d.glob(f"*_test_split{split}.txt"))
            if files:
                break
    if not files:
        return None
    out = []
    for f in files:
        action = f.name[: -len(f"_test_split{split}.txt")]
        for n, line in enumerate(read_text(f, JhmdbFormatError).splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("1", "2"):
                raise JhmdbFormatError(f"{f}:{n}: expected '<clip>.avi 1|2', got {line!r}")
            if parts[1] == "2":
                out.append((action, re.sub(r"\.avi$", "", parts[0])))
    return out


class JhmdbDataset:
    """The JHMDB layout under ``root`` (see the module docstring).

    Args:
        root: folder with ``Rename_Images/`` and ``joint_positions/``.
        split: 1, 2 or 3: the test part of that split (when split files exist; else every clip).
        list_file: a CRW-style list of ``<frames folder> <mat file>`` lines instead of the split
            files (relative paths are taken from ``root``).
        clips: evaluate only these (``<action>/<clip>`` or ``<clip>``).

    Attributes:
        note: how the clips were chosen (printed by the CLI).

    Raises:
        JhmdbFormatError: naming the folder or file and the problem.
    """

    def __init__(
        self,
        root: str | Path,
        split: int | None = 1,
        list_file: str | Path | None = None,
        clips: Sequence[str] | None = None,
    ):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise JhmdbFormatError(f"JHMDB root {root} does not exist or is not a folder")
        img_root, mat_root = root / "Rename_Images", root / "joint_positions"
        pairs: list[tuple[str, Path, Path]] = []
        if list_file is not None:
            list_file = Path(list_file)
            if not list_file.is_file():
                raise JhmdbFormatError(f"list file {list_file} does not exist")
            for n, line in enumerate(read_text(list_file, JhmdbFormatError).splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise JhmdbFormatError(f"{list_file}:{n}: expected '<frames folder> <mat file>', got {line!r}")
                d, m = (Path(p) if Path(p).is_absolute() else root / p for p in parts)
                pairs.append((f"{d.parent.name}/{d.name}", d, m))
            self.note = f"clips listed in {list_file}"
        else:
            for d in (img_root, mat_root):
                if not d.is_dir():
                    raise JhmdbFormatError(f"JHMDB root {root}: missing folder {d}")
            listed = _split_clips(root, split) if split is not None else None
            if listed is None:
                listed = sorted(
                    (a.name, c.name) for a in img_root.iterdir() if a.is_dir() for c in a.iterdir() if c.is_dir()
                )
                self.note = (
                    "every clip under Rename_Images/ (no split files)"
                    if split is not None
                    else "every clip under Rename_Images/"
                )
            else:
                self.note = f"split {split}, test part ({root / 'splits'})"
            pairs = [(f"{a}/{c}", img_root / a / c, mat_root / a / c / "joint_positions.mat") for a, c in listed]
        if clips:
            want = set(clips)
            unknown = [c for c in clips if not any(c in (name, name.split("/")[-1]) for name, _, _ in pairs)]
            if unknown:
                from tritoncorr.evals.davis import unknown_names

                known = [n for name, _, _ in pairs for n in (name, name.split("/")[-1])]
                raise JhmdbFormatError(
                    f"clip(s) {unknown_names(unknown, known)} not in the evaluated list ({self.note})"
                )
            pairs = [p for p in pairs if p[0] in want or p[0].split("/")[-1] in want]
        if not pairs:
            raise JhmdbFormatError(f"JHMDB root {root}: no clip to evaluate ({self.note})")
        self.root = root
        self.clips = [self._scan(*p) for p in pairs]

    @staticmethod
    def _scan(name: str, folder: Path, mat: Path) -> JhmdbClip:
        if not folder.is_dir():
            raise JhmdbFormatError(f"clip {name!r}: frame folder {folder} does not exist")
        frames = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".png"), key=_frame_number)
        if not frames:
            raise JhmdbFormatError(f"clip {name!r}: no .png frames in {folder}")
        if not mat.is_file():
            raise JhmdbFormatError(f"clip {name!r}: missing joint file {mat}")
        from tritoncorr.evals.davis import image_size

        return JhmdbClip(name=name, frames=frames, mat=mat, size=image_size(frames[0], JhmdbFormatError))

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self):
        return iter(self.clips)


# ----------------------------------------------------------------------------------------------
# Label encoding and decoding (CRW)
# ----------------------------------------------------------------------------------------------


def draw_gaussian(heat: np.ndarray, x: float, y: float, sigma: float = SIGMA) -> np.ndarray:
    """Draw an unnormalised Gaussian (peak 1) into ``heat`` ``(h, w)`` in place, as CRW's ``draw_labelmap_np``.

    The ``(6 sigma + 1)``-wide patch spans ``int(x - 3 sigma)`` .. ``int(x + 3 sigma + 1)`` (Python
    ``int``: truncation toward zero, so the patch of a joint between -1 and 1.5 cells is shifted);
    its centre is cell ``size // 2`` of the patch; the patch overwrites (not max) the map and is
    clipped at the borders; a patch entirely outside leaves the map unchanged.
    """
    h, w = heat.shape
    x0, y0 = int(x - 3 * sigma), int(y - 3 * sigma)
    x1, y1 = int(x + 3 * sigma + 1), int(y + 3 * sigma + 1)
    if x0 >= w or y0 >= h or x1 < 0 or y1 < 0:
        return heat
    size = 6 * sigma + 1
    r = np.arange(0, size, 1, dtype=np.float64)
    c = size // 2
    g = np.exp(-((r[None, :] - c) ** 2 + (r[:, None] - c) ** 2) / (2 * sigma**2))
    gx = max(0, -x0), min(x1, w) - x0
    gy = max(0, -y0), min(y1, h) - y0
    ix = max(0, x0), min(x1, w)
    iy = max(0, y0), min(y1, h)
    heat[iy[0] : iy[1], ix[0] : ix[1]] = g[gy[0] : gy[1], gx[0] : gx[1]]
    return heat


def joints_to_cells(
    joints: np.ndarray, size: tuple[int, int], input_size: tuple[int, int], stride: tuple[int, int]
) -> np.ndarray:
    """Pixel joints ``(2, J)`` of a ``size = (H, W)`` frame -> feature-cell coordinates, CRW's
    ``x * W_in / W / stride_x`` and ``y * H_in / H / stride_y`` (float64, in that order of operations)."""
    (hh, ww), (hi, wi), (sy, sx) = size, input_size, stride
    out = np.array(joints, dtype=np.float64, copy=True)
    out[0] = out[0] * float(wi) / float(ww) / sx
    out[1] = out[1] * float(hi) / float(hh) / sy
    return out


def joint_heatmaps(cells: np.ndarray, grid: tuple[int, int], sigma: float = SIGMA) -> np.ndarray:
    """CRW's first-frame labels: float32 ``(J + 1, h, w)``, channel 0 the background (1 where every
    joint channel is exactly 0), channel ``1 + j`` the Gaussian of joint ``j`` at ``cells[:, j]``."""
    h, w = (int(s) for s in grid)
    n = cells.shape[1]
    heat = np.zeros((n, h, w), dtype=np.float64)
    for j in range(n):
        draw_gaussian(heat[j], float(cells[0, j]), float(cells[1, j]), sigma)
    heat = heat.astype(np.float32)
    bg = (heat.sum(0) == 0).astype(np.float32)
    return np.concatenate([bg[None], heat], axis=0)


def decode_joints(soft, topk: int = TOPK):
    """Propagated ``(J + 1, h, w)`` labels (torch) -> ``(2, J)`` float32 cell coordinates (x, y), CRW's
    ``process_pose``: background dropped, top-``topk`` cells per joint, masses normalised, weighted
    mean of the cell coordinates; -1 for a joint with no mass."""
    import torch

    pred = soft.float().permute(1, 2, 0)[..., 1:]  # (h, w, J), the layout CRW decodes
    w = pred.shape[1]
    flat = pred.flatten(0, 1)
    k = min(flat.shape[0], topk)
    vals, idx = torch.topk(flat, k=k, dim=0)
    vals = vals / vals.sum(0)[None]
    xx, yy = idx % w, idx // w
    coord = torch.stack([(xx * vals).sum(0), (yy * vals).sum(0)], dim=0)
    coord[:, flat.sum(0) == 0] = -1
    return coord


def cells_to_pixels(cells: np.ndarray, size: tuple[int, int], feat_res: tuple[float, float]) -> np.ndarray:
    """Cell coordinates ``(2, J)`` -> float32 pixels ``x / feat_res_x * W`` (``eval_pck.py`` with
    ``feat_res = W_in / stride``); negative (missing) joints stay -1."""
    (hh, ww), (fy, fx) = size, feat_res
    c = np.asarray(cells, dtype=np.float32)
    out = np.empty_like(c)
    out[0] = c[0] / float(fx) * float(ww)
    out[1] = c[1] / float(fy) * float(hh)
    out[:, c[0] < 0] = -1
    return out


class JointsCodec:
    """First-frame joints <-> propagated heat maps, for :func:`tritoncorr.evaluate.propagate_labels`.

    Args:
        joints: float ``(2, J)`` 0-based pixel coordinates of frame 0 (``pos_img - 1``).
        sigma: Gaussian sigma in feature cells (CRW: 0.5).
        topk: cells averaged per joint when decoding (CRW: 3).

    ``decode`` returns float32 ``(2, J)`` pixel coordinates of the frame, -1 for a missing joint.
    The stride is ``round(padded input / grid)`` per axis (8 for 320 x 320 -> 40 x 40).
    """

    def __init__(self, joints: np.ndarray, sigma: float = SIGMA, topk: int = TOPK):
        joints = np.asarray(joints, dtype=np.float64)
        if joints.ndim != 2 or joints.shape[0] != 2:
            raise ValueError(f"joints must be (2, J), got {joints.shape}")
        self.joints, self.sigma, self.topk = joints, float(sigma), int(topk)
        self.num_labels = joints.shape[1] + 1

    @staticmethod
    def _stride(geometry) -> tuple[int, int]:
        (hp, wp), (h, w) = geometry.padded_size, geometry.grid
        return max(1, round(hp / h)), max(1, round(wp / w))

    def encode(self, geometry, config=None, device=None):
        import torch

        cells = joints_to_cells(self.joints, geometry.size, geometry.input_size, self._stride(geometry))
        return torch.from_numpy(joint_heatmaps(cells, geometry.grid, self.sigma)).to(device or "cpu")

    def decode(self, soft, geometry, config=None) -> np.ndarray:
        sy, sx = self._stride(geometry)
        (hi, wi) = geometry.input_size
        cells = decode_joints(soft, self.topk).cpu().numpy()
        return cells_to_pixels(cells, geometry.size, (hi / sy, wi / sx))


# ----------------------------------------------------------------------------------------------
# PCK (eval_pck.py)
# ----------------------------------------------------------------------------------------------


@dataclass
class PCKResult:
    """PCK in percent.

    Attributes:
        thresholds: the alphas.
        per_joint: float64 ``(J, A)``, NaN for a joint never evaluated.
        counts: int ``(J,)`` evaluated (clip, frame) pairs per joint.
        clips: number of clips.
    """

    thresholds: tuple[float, ...]
    per_joint: np.ndarray
    counts: np.ndarray
    clips: int = 0
    per_clip: list[tuple[str, np.ndarray]] = field(default_factory=list)

    @property
    def mean(self) -> np.ndarray:
        """``(A,)``: the mean over joints of the per-joint PCK (the reported numbers); NaN joints left out."""
        out = np.empty(self.per_joint.shape[1])
        for a in range(out.size):  # one contiguous column at a time: eval_pck.py's summation order
            col = np.ascontiguousarray(self.per_joint[:, a])
            ok = ~np.isnan(col)
            out[a] = np.mean(col[ok]) if ok.any() else np.nan
        return out

    def row(self) -> dict[str, float]:
        return {f"PCK@{a:g}": float(v) for a, v in zip(self.thresholds, self.mean)}

    def csv_path(self, folder: str | Path) -> Path:
        return Path(folder) / "pck.csv"

    def write_csv(self, folder: str | Path) -> Path:
        """``<folder>/pck.csv``: one row per joint and a final ``mean`` row (PCK in percent, 2 decimals)."""
        path = self.csv_path(folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["Joint", "N"] + [f"PCK@{a:g}" for a in self.thresholds])
            for j, name in enumerate(JOINT_NAMES[: self.per_joint.shape[0]]):
                wr.writerow([name, int(self.counts[j])] + [f"{v:.2f}" for v in self.per_joint[j]])
            wr.writerow(["mean", int(self.counts.sum())] + [f"{v:.2f}" for v in self.mean])
        return path


def normalised_distances(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One clip's normalised distances as ``eval_pck.py`` computes them.

    Args:
        gt: ``(2, J, T)`` ground-truth pixels (``pos_img - 1``).
        pred: ``(2, J, T)`` predicted pixels (a joint with ``x < 0`` is invisible).

    Returns:
        ``dist (J, T)`` float64 distance / normaliser (``inf``/``nan`` where the normaliser is 0, as
        numpy gives them) and ``evaluated (J, T)`` bool: visible in the prediction and not frame 0.
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred)
    if gt.shape != pred.shape or gt.ndim != 3 or gt.shape[0] != 2:
        raise ValueError(f"gt and pred must both be (2, J, T), got {gt.shape} and {pred.shape}")
    vis = ~(pred[0] < 0)  # (J, T)
    gx = np.where(vis, gt[0], np.nan)
    gy = np.where(vis, gt[1], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN frames: no visible joint
        minx = np.fmin(1e6, np.nanmin(gx, axis=0))
        miny = np.fmin(1e6, np.nanmin(gy, axis=0))
        maxx = np.fmax(-1.0, np.nanmax(gx, axis=0))
        maxy = np.fmax(-1.0, np.nanmax(gy, axis=0))
    bx, by = maxx - minx, maxy - miny
    box = 0.6 * np.sqrt(bx * bx + by * by)  # (T,)
    p = pred.astype(np.float64)
    dx, dy = p[0] - gt[0], p[1] - gt[1]
    d = np.sqrt(dx * dx + dy * dy)
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = d / box[None, :]
    evaluated = vis.copy()
    evaluated[:, 0] = False
    return dist, evaluated


def pck(
    gts: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    thresholds: Sequence[float] = PCK_THRESHOLDS,
    names: Sequence[str] | None = None,
) -> PCKResult:
    """PCK over clips, ``eval_pck.py``'s ``computePCK`` (see the module docstring).

    Args:
        gts, preds: per clip ``(2, J, T)`` pixels; ``T`` may differ between clips, not within one.
        thresholds: the alphas.
        names: clip names for the per-clip numbers (``PCKResult.per_clip``).
    """
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground truths for {len(preds)} predictions")
    if not gts:
        raise ValueError("pck needs at least one clip")
    n_joints = np.asarray(gts[0]).shape[1]
    pooled: list[list[np.ndarray]] = [[] for _ in range(n_joints)]
    per_clip = []
    thr = np.asarray(thresholds, dtype=np.float64)
    for i, (gt, pred) in enumerate(zip(gts, preds)):
        dist, ev = normalised_distances(gt, pred)
        if dist.shape[0] != n_joints:
            raise ValueError(f"clip {i} has {dist.shape[0]} joints, clip 0 has {n_joints}")
        for j in range(n_joints):
            pooled[j].append(dist[j][ev[j]])
        if names is not None:
            d = np.concatenate([dist[j][ev[j]] for j in range(n_joints)])
            per_clip.append(
                (names[i], 100.0 * (d[:, None] <= thr[None]).mean(0) if d.size else np.full(len(thr), np.nan))
            )
    per_joint = np.full((n_joints, len(thr)), np.nan)
    counts = np.zeros(n_joints, dtype=np.int64)
    for j in range(n_joints):
        d = np.concatenate(pooled[j])
        counts[j] = d.size
        if d.size:
            per_joint[j] = 100.0 * (d[:, None] <= thr[None]).sum(0) / d.size
    return PCKResult(tuple(float(a) for a in thresholds), per_joint, counts, clips=len(gts), per_clip=per_clip)


def write_per_clip_csv(path: str | Path, result: PCKResult) -> Path:
    """``Clip,PCK@0.1,...``: each clip's PCK pooled over its joints and frames (for looking, not reported)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["Clip"] + [f"PCK@{a:g}" for a in result.thresholds])
        for name, vals in result.per_clip:
            wr.writerow([name] + [f"{v:.2f}" for v in vals])
    return path


__all__ = [
    "JOINT_NAMES",
    "JhmdbClip",
    "JhmdbDataset",
    "JhmdbFormatError",
    "JointsCodec",
    "NUM_JOINTS",
    "PCKResult",
    "PCK_THRESHOLDS",
    "SKELETON_PARENTS",
    "cells_to_pixels",
    "decode_joints",
    "draw_gaussian",
    "joint_heatmaps",
    "joints_to_cells",
    "normalised_distances",
    "pck",
    "read_joints",
    "read_mat",
    "write_per_clip_csv",
    "write_mat",
]

"""Every reader of outside files, fed generated and mutated inputs (issue 25; docs/RELIABILITY.md).

Each input must end in a result or in the reader's documented error type with the file (or the
option) named in the message: never another exception, a hang (``TIME_LIMIT`` seconds per input) or a
huge allocation (decompression bombs are refused from their declared sizes). Inputs: structured
generators (images of every PIL mode and several formats, MAT-files, dataset layouts with odd and
non-UTF-8 names, safetensors headers and metadata, ``--set`` overrides, recipe files, video
containers of several codecs) and byte-level mutations of valid seeds (bit flips, overwritten bytes,
truncation, insertions, absurd 32-bit header values, duplicated regions; PNG chunk CRCs optionally
repaired so that the mutation reaches the decoder).

The default suite runs ``QUICK`` inputs per reader; ``pytest -m fuzz`` runs ``FUZZ`` (10,000, or
``TRITONCORR_FUZZ_EXAMPLES``) and, with ``TRITONCORR_FUZZ_REPORT=FILE``, writes per-reader counts and
seconds as JSON (every 100 inputs and at exit).
"""

from __future__ import annotations

import atexit
import io
import json
import os
import signal
import struct
import tempfile
import time
import zlib
from collections import defaultdict
from pathlib import Path

import av  # noqa: F401 - imported here, outside the timed inputs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import tritoncorr.methods.inference  # noqa: F401
from tritoncorr.engine.registry import registered_names

QUICK = 25
FUZZ = int(os.environ.get("TRITONCORR_FUZZ_EXAMPLES", 10_000))
TIME_LIMIT = float(os.environ.get("TRITONCORR_FUZZ_TIME_LIMIT", 60.0))  # seconds per input (wall clock, shared machine)
REPO = Path(__file__).resolve().parents[1]

registered_names()  # import the registry's methods here, outside the timed inputs

STATS: dict[str, dict[str, float]] = defaultdict(lambda: {"inputs": 0, "result": 0, "error": 0, "seconds": 0.0})


def _write_report() -> None:
    path = os.environ.get("TRITONCORR_FUZZ_REPORT")
    if path and STATS:
        Path(path).write_text(json.dumps(STATS, indent=2) + "\n")


atexit.register(_write_report)


class Hang(BaseException):
    """An input that ran past TIME_LIMIT (BaseException: no reader's ``except Exception`` hides it)."""


def _alarm(signum, frame):
    raise Hang(f"an input ran longer than {TIME_LIMIT} s")


def check(reader: str, run, errors: tuple[type[BaseException], ...], names: list[str]) -> None:
    """Run ``run()``; a result or one of ``errors`` naming one of ``names`` passes, anything else fails."""
    st_ = STATS[reader]
    st_["inputs"] += 1
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT)
    t0 = time.perf_counter()
    try:
        run()
        st_["result"] += 1
    except errors as err:
        msg = str(err)
        assert any(n in msg for n in names), f"{reader}: {type(err).__name__} names none of {names}: {msg}"
        st_["error"] += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        st_["seconds"] += time.perf_counter() - t0
        if st_["inputs"] % 100 == 0:
            _write_report()  # a long run that is stopped still leaves its counts


def check_file(reader: str, name: str, data: bytes, read, errors: tuple[type[BaseException], ...]) -> None:
    """``check`` of ``read(path)`` on ``data`` written to a file ``name`` in a fresh temporary folder; an error
    must name the path."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        check(reader, lambda: read(path), errors, [str(path)])


def cases(strategy):
    """Two tests from one body: a short one for the default suite and the ``fuzz`` one."""

    def wrap(body):
        common = dict(deadline=None, database=None, print_blob=True, suppress_health_check=list(HealthCheck))

        @settings(max_examples=QUICK, **common)
        @given(strategy)
        def quick(x):
            body(x)

        @pytest.mark.fuzz
        @settings(max_examples=FUZZ, **common)
        @given(strategy)
        def fuzz(x):
            body(x)

        quick.__name__ = f"test_{body.__name__}"
        fuzz.__name__ = f"test_{body.__name__}_fuzz"
        quick.__doc__ = fuzz.__doc__ = body.__doc__
        return quick, fuzz

    return wrap


# ----------------------------------------------------------------------------------------------
# Mutations
# ----------------------------------------------------------------------------------------------

ABSURD = (b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00", b"\x80\x00\x00\x00", b"\x00\x00\x01\x00")
mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "cut", "insert", "absurd", "dup"]),
        st.integers(0, 1 << 24),
        st.binary(min_size=1, max_size=8),
    ),
    min_size=0,
    max_size=5,
)


def mutate(data: bytes, muts) -> bytes:
    b = bytearray(data)
    for op, pos, val in muts:
        if not b:
            break
        i = pos % len(b)
        if op == "flip":
            b[i] ^= 1 << (val[0] % 8)
        elif op == "set":
            b[i : i + len(val)] = val
        elif op == "cut":
            del b[i:]
        elif op == "insert":
            b[i:i] = val * (1 + val[0] % 64)
        elif op == "absurd":
            b[i : i + 4] = ABSURD[val[0] % len(ABSURD)]
        else:
            j = (pos * 7 + val[0]) % len(b)
            b[i:i] = b[j : j + 4 * (1 + val[0] % 64)]
    return bytes(b)


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute each PNG chunk's CRC (as far as the chunk structure parses), so mutations reach the decoder."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    b = bytearray(data)
    pos = 8
    while pos + 12 <= len(b):
        (n,) = struct.unpack(">I", b[pos : pos + 4])
        end = pos + 8 + n
        if end + 4 > len(b):
            break
        b[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(b[pos + 4 : end])) & 0xFFFFFFFF)
        pos = end + 4
    return bytes(b)


def png_declaring(width: int, height: int, mode_byte: int = 3, depth: int = 8, idat: bytes = b"") -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (valid CRCs) with little or no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, mode_byte, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if mode_byte == 3:
        out += chunk(b"PLTE", bytes(range(48)))
    return out + chunk(b"IDAT", zlib.compress(idat or b"\x00" * 64)) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------------------------
# Images: mask PNGs (read_mask, read_index_png) and decompression bombs
# ----------------------------------------------------------------------------------------------

MODES = ("P", "L", "1", "RGB", "RGBA", "LA", "I", "I;16", "F", "CMYK", "PA")
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")


@st.composite
def image_files(draw) -> bytes:
    mode = draw(st.sampled_from(MODES))
    w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    kind = draw(st.sampled_from(["random", "few", "binary"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = Image.new("RGB", (w, h))
    if kind == "random":
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    elif kind == "few":
        colours = rng.integers(0, 256, (draw(st.integers(1, 6)), 3), dtype=np.uint8)
        arr = colours[rng.integers(0, len(colours), (h, w))]
    else:
        arr = (rng.random((h, w)) > 0.5)[..., None].repeat(3, 2).astype(np.uint8) * 255
    base = Image.fromarray(arr)
    try:
        img = base.convert(mode) if mode not in ("I;16", "PA") else base.convert("L").convert(mode)
    except ValueError:
        img = base.convert("L")
    fmt = draw(st.sampled_from(FORMATS))
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="PNG")
    data = mutate(buf.getvalue(), draw(mutations))
    return fix_png_crcs(data) if draw(st.booleans()) else data


def _image_readers(data: bytes, reader: str) -> None:
    from tritoncorr.evals.davis import DavisFormatError, read_index_png

    from tritoncorr.video import VideoError, read_mask

    if reader == "read_mask":
        check_file("mask images: read_mask (propagate --mask)", "mask.png", data, read_mask, (VideoError,))
    else:
        check_file(
            "mask images: read_index_png (DAVIS / VIP / YouTube-VOS annotations and results)",
            "mask.png",
            data,
            read_index_png,
            (DavisFormatError,),
        )


@cases(st.tuples(image_files(), st.sampled_from(["read_mask", "read_index_png"])))
def mask_images(x):
    """Mask images of every PIL mode and several formats, mutated."""
    _image_readers(*x)


test_mask_images, test_mask_images_fuzz = mask_images


@cases(
    st.tuples(
        st.integers(1, 2**31 - 1),
        st.integers(1, 2**31 - 1),
        st.sampled_from([0, 2, 3, 4, 6]),
        st.sampled_from(["read_mask", "read_index_png", "read_rgb"]),
    )
)
def bombs(x):
    """PNG headers declaring up to 2^31 x 2^31 pixels over a few bytes of data: refused before decoding."""
    from tritoncorr.evals.davis import DavisFormatError, read_index_png, read_rgb

    from tritoncorr.video import VideoError, read_mask

    w, h, colour, reader = x
    data = png_declaring(w, h, colour, 8 if colour != 3 else 8)
    fn = {"read_mask": read_mask, "read_rgb": read_rgb, "read_index_png": read_index_png}[reader]
    check_file(
        "decompression bombs (declared sizes up to 2^31 x 2^31)", "bomb.png", data, fn, (VideoError, DavisFormatError)
    )


test_bombs, test_bombs_fuzz = bombs


def test_bomb_is_refused_from_its_declared_size_before_decoding(tmp_path):
    from tritoncorr.evals.davis import MAX_IMAGE_PIXELS, DavisFormatError, read_index_png

    assert Image.MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS  # set deliberately
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(60000, 60000, 0, idat=b"\x00" * 1000))
    with pytest.raises(DavisFormatError, match=r"bomb.png: DecompressionBombError: Image size \(3600000000 pixels\)"):
        read_index_png(path)  # PIL refuses it while opening (over twice its limit)
    path.write_bytes(png_declaring(7000, 7000, 0, idat=b"\x00" * 1000))
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(DavisFormatError, match="declares 7000x7000 pix"):
        read_index_png(path)  # between the limit and twice it: our check, before decoding


# ----------------------------------------------------------------------------------------------
# MAT v5 (JHMDB joints)
# ----------------------------------------------------------------------------------------------


def _mat_seed(compressed: bool, frames: int, seed: int) -> bytes:
    from tritoncorr.evals.jhmdb import write_mat

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as d:
        data = write_mat(
            Path(d) / "j.mat", {"pos_img": rng.random((2, 15, frames)) * 50 + 1, "scale": rng.random((1, frames))}
        ).read_bytes()
    if compressed:  # wrap each top-level element in a miCOMPRESSED element, as MATLAB -v7 writes
        out, pos = bytearray(data[:128]), 128
        while pos + 8 <= len(data):
            _, n = struct.unpack_from("<II", data, pos)
            el = data[pos : pos + 8 + n + (-n % 8)]
            z = zlib.compress(el)
            out += struct.pack("<II", 15, len(z)) + z
            pos += len(el)
        data = bytes(out)
    return data


_BOMB: list[bytes] = []


def _zip_bomb() -> bytes:
    """80 MiB of zeros, zlib-compressed (about 80 KB), made once."""
    if not _BOMB:
        _BOMB.append(zlib.compress(b"\x00" * (80 << 20), 9))
    return _BOMB[0]


@st.composite
def mat_files(draw) -> bytes:
    data = _mat_seed(draw(st.booleans()), draw(st.integers(1, 6)), draw(st.integers(0, 1000)))
    if draw(st.integers(0, 19)) == 0:  # a zip bomb: a compressed element expanding past the limit
        z = _zip_bomb()
        data = data[:128] + struct.pack("<II", 15, len(z)) + z
    return mutate(data, draw(mutations))


@cases(mat_files())
def mat_files_(data):
    """MATLAB v5 MAT-files (plain and compressed), mutated, plus zlib bombs."""
    from tritoncorr.evals.jhmdb import JhmdbFormatError, read_joints

    check_file(
        "MAT v5 reader: read_joints (JHMDB joint_positions.mat)",
        "joint_positions.mat",
        data,
        read_joints,
        (JhmdbFormatError,),
    )


test_mat_files, test_mat_files_fuzz = mat_files_


# ----------------------------------------------------------------------------------------------
# Dataset layouts: VIP and YouTube-VOS (meta.json)
# ----------------------------------------------------------------------------------------------

names = st.one_of(
    st.sampled_from(["v1", "v2", "videos1", "a", "b", "..", ".", "", "x y", "ü", "a/b"]),
    st.text(min_size=1, max_size=6),
    st.binary(min_size=1, max_size=4),
)


def _fsname(n) -> bytes:
    return n if isinstance(n, bytes) else n.encode("utf-8", "surrogateescape")


@st.composite
def file_bytes(draw, size: tuple[int, int] | None = None) -> bytes:
    """An image file (usually of ``size`` = (w, h), so that frames and labels fit), garbage or nothing."""
    kind = draw(st.sampled_from(["png-l", "png-l", "png-p", "png-p", "jpg", "jpg", "garbage", "empty", "rgb"]))
    w, h = size if size and draw(st.integers(0, 7)) else (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    if kind in ("garbage", "empty"):
        return b"" if kind == "empty" else draw(st.binary(max_size=64))
    buf = io.BytesIO()
    arr = rng.integers(0, 25, (h, w), dtype=np.uint8)
    if kind == "jpg":
        Image.fromarray(arr * 10).convert("RGB").save(buf, format="JPEG")
    elif kind == "rgb":
        Image.fromarray(np.stack([arr] * 3, -1)).save(buf, format="PNG")
    else:
        Image.fromarray(arr, mode="L").convert("P" if kind == "png-p" else "L").save(buf, format="PNG")
    return mutate(buf.getvalue(), draw(mutations)) if draw(st.integers(0, 3)) == 0 else buf.getvalue()


def _put(root: Path, rel: list[bytes], data: bytes | None) -> None:
    """Create ``root/rel`` (bytes components, possibly non-UTF-8) as a file (or a folder when data is None)."""
    if any(c in (b"", b".", b"..") or b"/" in c or b"\x00" in c for c in rel):
        return
    p = os.path.join(os.fsencode(root), *rel)
    try:
        if data is None:
            os.makedirs(p, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(data)
    except (OSError, ValueError):
        pass


def check_layout(reader: str, name: str, entries, read, errors: tuple[type[BaseException], ...]) -> None:
    """``check`` of ``read(root)`` on a folder ``name`` made in a fresh temporary folder from ``entries``
    (``(rel, data)`` pairs, put in order as ``_put`` does); an error must name the folder."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / name
        root.mkdir()
        for rel, data in entries:
            _put(root, rel, data)
        check(reader, lambda: read(root), errors, [str(root)])


@st.composite
def vip_layouts(draw):
    videos = draw(st.lists(st.one_of(st.sampled_from(["v1", "v2", "v3"]), names), min_size=0, max_size=3))
    listed = (
        list(dict.fromkeys(videos))
        if draw(st.booleans())
        # mostly a consistent list
        else draw(st.lists(st.one_of(st.sampled_from(videos) if videos else names, names), max_size=4))
    )
    list_text = b"\n".join(_fsname(v) for v in listed) + draw(st.sampled_from([b"", b"\n", b"\n\n  \n"]))
    files = []
    size = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    for v in videos:
        for t in sorted(draw(st.lists(st.integers(0, 200), min_size=1, max_size=3, unique=True))):
            stem = f"{t * 25:012d}".encode()
            files.append(
                ([b"Images", _fsname(v), stem + draw(st.sampled_from([b".jpg", b".png"]))], draw(file_bytes(size)))
            )
            if draw(st.integers(0, 3)):
                files.append(([b"Annotations", b"Category_ids", _fsname(v), stem + b".png"], draw(file_bytes(size))))
    return list_text, files, draw(st.integers(0, 3)) > 0


@cases(vip_layouts())
def vip_layouts_(x):
    """VIP folders: lists with odd / non-UTF-8 names, missing and damaged frames and labels."""
    from tritoncorr.evals.vip import VipDataset, VipFormatError

    list_text, files, has_list = x
    entries = []
    if has_list:
        entries = [
            ([b"lists", b"val_videos.txt"], list_text),
            ([b"Images"], None),
            ([b"Annotations", b"Category_ids"], None),
        ]

    def read(root):
        for v in VipDataset(root):
            v.load_frame(0)
            for t in range(len(v)):
                if v.has_label(t):
                    v.load_label(t)

    check_layout("VIP layout: VipDataset + frames + labels", "VIP", entries + files, read, (VipFormatError,))


test_vip_layouts, test_vip_layouts_fuzz = vip_layouts_

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8,
)


@st.composite
def ytvos_layouts(draw):
    videos = draw(st.lists(st.one_of(st.sampled_from(["a", "b"]), names), min_size=0, max_size=3))
    meta: dict = {"videos": {}}
    files = []
    size = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    for v in videos:
        frames = sorted(draw(st.lists(st.integers(0, 40), min_size=1, max_size=3, unique=True)))
        objs = {}
        for oid in draw(st.lists(st.sampled_from(["1", "2", "1", "x", "0", "255"]), max_size=2, unique=True)):
            objs[oid] = {"category": "cat", "frames": [f"{t * 5:05d}" for t in frames[: draw(st.integers(0, 3))]]}
        key = v if isinstance(v, str) else v.decode("latin-1")
        meta["videos"][key] = {"objects": objs}
        for t in frames:
            stem = f"{t * 5:05d}".encode()
            files.append(([b"JPEGImages", _fsname(v), stem + b".jpg"], draw(file_bytes(size))))
            if draw(st.integers(0, 3)):
                files.append(([b"Annotations", _fsname(v), stem + b".png"], draw(file_bytes(size))))
    kind = draw(st.sampled_from(["meta", "meta", "meta", "mutated", "json", "none"]))
    if kind == "meta":
        text = json.dumps(meta).encode()
    elif kind == "mutated":
        text = mutate(json.dumps(meta).encode(), draw(mutations))
    elif kind == "json":
        text = json.dumps(draw(json_values)).encode()
    else:
        text = None
    return text, files


@cases(ytvos_layouts())
def ytvos_layouts_(x):
    """YouTube-VOS valid folders: meta.json generated, mutated or arbitrary JSON; odd names; damaged files."""
    from tritoncorr.evals.ytvos import YtvosDataset, YtvosFormatError

    text, files = x
    entries = [([b"JPEGImages"], None), ([b"Annotations"], None)]
    if text is not None:
        entries.append(([b"meta.json"], text))

    def read(root):
        for v in YtvosDataset(root):
            v.load_frame(0)
            v.palette()
            for t in sorted(v.groups()):
                v.load_annotation(t)

    check_layout(
        "YouTube-VOS layout + meta.json: YtvosDataset + frames + annotations",
        "valid",
        entries + files,
        read,
        (YtvosFormatError,),
    )


test_ytvos_layouts, test_ytvos_layouts_fuzz = ytvos_layouts_


# ----------------------------------------------------------------------------------------------
# safetensors checkpoints: headers and metadata
# ----------------------------------------------------------------------------------------------

DTYPES = ["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "X9"]


@st.composite
def safetensors_files(draw) -> bytes:
    from tritoncorr.engine.registry import registered_names

    kind = draw(st.sampled_from(["structured", "valid-mutated", "header-json"]))
    if kind == "valid-mutated":
        import torch
        from safetensors.torch import save as st_save

        meta = {"tritoncorr.method": "dul"} if draw(st.booleans()) else {}
        if draw(st.booleans()):
            meta["tritoncorr.method_config"] = json.dumps({"__class__": "dul", "key_dim": 8, "head_hidden": 8})
        data = st_save({"w": torch.zeros(draw(st.integers(0, 4)), 2), "b": torch.ones(3)}, metadata=meta or None)
        return mutate(data, draw(mutations))
    tensors = {}
    offset = 0
    for i in range(draw(st.integers(0, 3))):
        shape = draw(st.lists(st.integers(0, 2**40) if draw(st.booleans()) else st.integers(0, 5), max_size=3))
        n = draw(st.integers(0, 64))
        start = draw(st.sampled_from([offset, 0, 2**62, -1]))
        tensors[f"t{i}"] = {"dtype": draw(st.sampled_from(DTYPES)), "shape": shape, "data_offsets": [start, start + n]}
        offset += n
    cfg = {"__class__": draw(st.sampled_from([*registered_names(), "os:system", "x", "", "dul"]))}
    for k in draw(
        st.lists(st.sampled_from(["key_dim", "head_hidden", "channels", "depth", "nope", "temperature"]), max_size=3)
    ):
        cfg[k] = draw(json_values)
    meta = {"tritoncorr.method": draw(st.text(max_size=4))}
    if draw(st.booleans()):
        meta["tritoncorr.method_config"] = json.dumps(cfg) if draw(st.booleans()) else draw(st.text(max_size=20))
    header: dict = dict(tensors)
    if draw(st.booleans()):
        header["__metadata__"] = meta if draw(st.booleans()) else draw(json_values)
    if kind == "header-json":
        raw = json.dumps(draw(json_values)).encode()
    else:
        raw = json.dumps(header).encode()
    declared = len(raw) if draw(st.integers(0, 4)) else draw(st.sampled_from([0, 7, 2**63 - 1, len(raw) + 100]))
    return struct.pack("<Q", declared % 2**64) + raw + draw(st.binary(max_size=offset + 8))


@cases(safetensors_files())
def safetensors_(data):
    """safetensors files: absurd header lengths, dtypes, shapes and offsets; metadata naming any class."""
    from tritoncorr.methods.inference import load_feature_model

    check_file(
        "safetensors header + metadata: load_feature_model",
        "model.safetensors",
        data,
        load_feature_model,
        (ValueError, FileNotFoundError),
    )


test_safetensors, test_safetensors_fuzz = safetensors_


# ----------------------------------------------------------------------------------------------
# --set values and recipe files
# ----------------------------------------------------------------------------------------------


def _field_paths(obj, prefix=""):
    import dataclasses

    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            yield prefix + f.name
            yield from _field_paths(v, prefix + f.name + ".")
        else:
            yield prefix + f.name


def _template():
    from tritoncorr.data.config import DataConfig
    from tritoncorr.engine.config import RunConfig
    from tritoncorr.methods.dul import DULConfig

    return RunConfig(method=DULConfig(), data=DataConfig())


FIELDS = sorted(_field_paths(_template()))
odd_values = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "nan",
            "inf",
            "-inf",
            "1e400",
            "-0",
            "()",
            "[1,2",
            "none",
            "None",
            "true",
            "0x10",
            "1_000",
            "'a'",
            "",
            "9" * 400,
            "1,2,3",
            "(1, 2)",
            "\udcff",
            "é",
        ]
    ),
)


@cases(
    st.lists(st.tuples(st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)), odd_values), min_size=1, max_size=3)
)
def set_values(overrides):
    """``--set key=value`` with every field of a DUL run and odd values (NaN, 1e400, unbalanced brackets, ...)."""
    from tritoncorr.engine.config import ConfigError, apply_overrides

    texts = [f"{k}={v}" for k, v in overrides]

    def run():
        cfg = apply_overrides(_template(), texts)
        cfg.validate()
        cfg.data.validate()

    keys = [t.partition("=")[0].strip() for t in texts]  # the option as parse_override reads it
    check(
        "--set values: apply_overrides + validate",
        run,
        (ConfigError, ValueError),
        keys + [k.split(".")[-1] for k in keys] + ["override", "invalid run config", "DataConfig."],
    )


test_set_values, test_set_values_fuzz = set_values

RECIPE_BODIES = [
    "def default():\n    return RunConfig(method=ToyMethodConfig(), data=ToyDataConfig())\n",
    "def default():\n    return 3\n",
    "def default():\n    return None\n",
    "def default():\n    raise KeyError('x')\n",
    "def default(x):\n    return x\n",
    "default = 7\n",
    "def other():\n    return RunConfig()\n",
    "def default():\n    return RunConfig(method=ToyMethodConfig(), data=ToyDataConfig(), steps='x')\n",
    "import nonexistent_module_xyz\n",
    "def default():\n    return RunConfig(method=object())\n",
    "def default():\n    raise SystemExit(3)\n",
    "def default():\n    return RunConfig(method=ToyMethodConfig(), data=ToyDataConfig(), optim=5)\n",
]
RECIPE_HEADER = (
    "from tritoncorr.engine.config import RunConfig\nfrom toy_method import ToyDataConfig, ToyMethodConfig\n\n"
)


@cases(st.tuples(st.sampled_from(RECIPE_BODIES), mutations, st.sampled_from(["", ":default", ":other", ":nope"])))
def recipe_files(x):
    """Recipe files: functions returning or raising anything, missing names, byte-mutated source."""
    from tritoncorr.engine.config import ConfigError
    from tritoncorr.engine.recipe import load_recipe

    body, muts, name = x
    source = (RECIPE_HEADER + body).encode()
    data = mutate(source, muts) if muts else source
    check_file(
        "recipe files: load_recipe", "recipe.py", data, lambda path: load_recipe(f"{path}{name}"), (ConfigError,)
    )


test_recipe_files, test_recipe_files_fuzz = recipe_files


# ----------------------------------------------------------------------------------------------
# Video containers
# ----------------------------------------------------------------------------------------------

_SEEDS: dict[str, bytes] = {}


def _video_seed(kind: str) -> bytes:
    """Small videos of several containers and codecs (made once): mp4 (H.264, index at the end or at
    the start), mkv, avi (MPEG-4), gif, webm (VP8), a variable-frame-rate mp4 and a rotated one."""
    if kind in _SEEDS:
        return _SEEDS[kind]

    suffix, codec, options, rate = {
        "mp4": (".mp4", "libx264", {}, 25),
        "mp4-faststart": (".mp4", "libx264", {"movflags": "faststart"}, 25),
        "mkv": (".mkv", "libx264", {}, 25),
        "avi": (".avi", "mpeg4", {}, 25),
        "gif": (".gif", "gif", {}, 10),
        "webm": (".webm", "libvpx", {}, 25),
        "vfr": (".mp4", "libx264", {}, 1000),
        "rotated": (".mp4", "libx264", {}, 25),
    }[kind]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"v{suffix}"
        try:
            with av.open(str(path), "w", options=options) as out:
                s = out.add_stream(codec, rate=rate)
                s.width, s.height = 32, 24
                s.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
                if kind == "rotated":
                    s.metadata["rotate"] = "90"
                pts = 0
                for _ in range(6):
                    frame = av.VideoFrame.from_ndarray(
                        rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), format="rgb24"
                    )
                    if kind == "vfr":
                        pts += int(rng.integers(10, 200))
                        frame.pts = pts
                    for p in s.encode(frame):
                        out.mux(p)
                for p in s.encode():
                    out.mux(p)
            data = path.read_bytes()
        except Exception:  # noqa: BLE001 - an encoder this PyAV build lacks: use the plain mp4
            data = _video_seed("mp4") if kind != "mp4" else b""
    _SEEDS[kind] = data
    return data


VIDEO_KINDS = ["mp4", "mp4-faststart", "mkv", "avi", "gif", "webm", "vfr", "rotated"]


@cases(st.tuples(st.sampled_from(VIDEO_KINDS), st.sampled_from(["keep", "empty", "half", "mutate"]), mutations))
def video_containers(x):
    """Video files of several containers and codecs: whole, zero-length, cut in half, mutated."""
    from tritoncorr.video import VIDEO_SUFFIXES, VideoError, open_frames

    kind, how, muts = x
    data = _video_seed(kind)
    data = {"keep": data, "empty": b"", "half": data[: len(data) // 2]}.get(how, mutate(data, muts))
    suffix = {"mkv": ".mkv", "avi": ".avi", "gif": ".gif", "webm": ".webm"}.get(kind, ".mp4")
    assert suffix in VIDEO_SUFFIXES

    def decode(path):
        src = open_frames(path)
        for i, frame in enumerate(src.frames()):
            assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
            if i > 64:
                break

    check_file("video containers: open_frames + decoding (propagate)", f"clip{suffix}", data, decode, (VideoError,))


test_video_containers, test_video_containers_fuzz = video_containers


# ----------------------------------------------------------------------------------------------
# Regressions: what the fuzzing found (each was another exception, a message without the file, or
# an unbounded allocation)
# ----------------------------------------------------------------------------------------------


def test_list_files_that_are_not_utf8_are_format_errors(tmp_path):
    from tritoncorr.evals.davis import DavisDataset, DavisFormatError
    from tritoncorr.evals.synthetic import make_synthetic_davis
    from tritoncorr.evals.vip import VipDataset, VipFormatError
    from tritoncorr.evals.ytvos import YtvosDataset, YtvosFormatError

    vip = tmp_path / "VIP"
    for d in ("lists", "Images", "Annotations/Category_ids"):
        (vip / d).mkdir(parents=True)
    (vip / "lists" / "val_videos.txt").write_bytes(b"\x80videos1\n")  # was a UnicodeDecodeError
    with pytest.raises(VipFormatError, match="val_videos.txt as UTF-8"):
        VipDataset(vip)
    davis = make_synthetic_davis(tmp_path / "D", num_sequences=1, num_frames=3, height=16, width=16)
    (davis / "ImageSets" / "2017" / "val.txt").write_bytes(b"\xffsynth\n")
    with pytest.raises(DavisFormatError, match="val.txt as UTF-8"):
        DavisDataset(davis)
    yt = tmp_path / "valid"
    for d in ("JPEGImages", "Annotations"):
        (yt / d).mkdir(parents=True)
    (yt / "meta.json").write_bytes(b'{"videos": {"\xff": {}}}')
    with pytest.raises(YtvosFormatError, match="meta.json as UTF-8"):
        YtvosDataset(yt)


def test_recipe_values_of_the_wrong_type_and_sys_exit_are_errors_naming_the_recipe(tmp_path):
    from tritoncorr.engine.config import ConfigError
    from tritoncorr.engine.recipe import load_recipe

    path = tmp_path / "r.py"
    path.write_text(RECIPE_HEADER + RECIPE_BODIES[7])  # steps='x': was a TypeError from validate()
    with pytest.raises(ConfigError, match=rf"recipe {path}:default: invalid run config: steps must be int, got 'x'"):
        load_recipe(str(path))
    path.write_text(RECIPE_HEADER + RECIPE_BODIES[10])  # raise SystemExit(3): escaped load_recipe
    with pytest.raises(ConfigError, match=rf"recipe {path}:\d+: default\(\) failed: SystemExit: 3"):
        load_recipe(str(path))
    path.write_text(RECIPE_HEADER + RECIPE_BODIES[9])  # method=object(): the message lacked the file
    with pytest.raises(ConfigError, match=rf"recipe {path}:default: invalid run config: method must be"):
        load_recipe(str(path))


def test_a_plain_safetensors_without_matching_keys_names_the_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    from tritoncorr.methods.inference import load_feature_model

    path = tmp_path / "odd.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match=rf"checkpoint {path}: no checkpoint key matched"):
        load_feature_model(path)


def test_absurd_sizes_in_checkpoint_metadata_fail_before_any_allocation(tmp_path):
    import torch
    from safetensors.torch import save_file

    from tritoncorr.methods.inference import load_feature_model

    path = tmp_path / "huge.safetensors"
    cfg = {"__class__": "dul", "key_dim": 2**31, "head_hidden": 2**31}
    save_file({"w": torch.zeros(1)}, str(path), metadata={"tritoncorr.method_config": json.dumps(cfg)})
    with pytest.raises(ValueError, match=rf"checkpoint {path}: its method config DULConfig cannot be built \(checked"):
        load_feature_model(path)  # was an attempt to allocate 4 TB
    cfg.update(key_dim=2**20, head_hidden=8)  # buildable, but not what the file holds
    save_file({"w": torch.zeros(1)}, str(path), metadata={"tritoncorr.method_config": json.dumps(cfg)})
    with pytest.raises(ValueError, match=rf"checkpoint {path} does not fit its recorded method config DULConfig"):
        load_feature_model(path)


def test_a_mat_zip_bomb_is_refused(tmp_path):
    from tritoncorr.evals.jhmdb import JhmdbFormatError, read_joints

    path = tmp_path / "joint_positions.mat"
    z = _zip_bomb()
    path.write_bytes(_mat_seed(False, 2, 0)[:128] + struct.pack("<II", 15, len(z)) + z)
    with pytest.raises(JhmdbFormatError, match="expands beyond 67108864 bytes"):
        read_joints(path)


@pytest.mark.parametrize("name", ["/", "..", "../VIP", "/etc", "a/b"])
def test_a_listed_name_that_leaves_the_dataset_root_is_refused(tmp_path, name):
    """A VIP list naming '/' made the reader scan the file system root (the error named '/', not the list)."""
    from tritoncorr.evals.vip import VipDataset, VipFormatError

    vip = tmp_path / "VIP"
    for d in ("lists", "Images", "Annotations/Category_ids"):
        (vip / d).mkdir(parents=True)
    (vip / "lists" / "val_videos.txt").write_text(name + "\n")
    with pytest.raises(VipFormatError, match=f"val_videos.txt lists {name!r}, which is not a folder name"):
        VipDataset(vip)


def test_mat_variables_whose_sizes_do_not_fit_their_data_are_format_errors(tmp_path):
    """Found by the fuzzing: dimensions of 6 bytes / data of 7 bytes raised numpy's ValueError."""
    from tritoncorr.evals.jhmdb import JhmdbFormatError, read_joints

    good = _mat_seed(False, 2, 0)
    path = tmp_path / "joint_positions.mat"
    # the first variable's dimensions element: type 5 (miINT32), 12 bytes (3 dims) -> 6 bytes
    at = good.index(struct.pack("<II", 5, 12))
    path.write_bytes(good[:at] + struct.pack("<II", 5, 6) + good[at + 8 :])
    with pytest.raises(JhmdbFormatError, match="joint_positions.mat: malformed MAT-file"):
        read_joints(path)
    path.write_bytes(good[: at + 8] + struct.pack("<i", -2) + good[at + 12 :])  # a negative dimension
    with pytest.raises(JhmdbFormatError, match="joint_positions.mat: malformed MAT-file"):
        read_joints(path)

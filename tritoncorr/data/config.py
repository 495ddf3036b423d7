"""Configuration of the training-clip pipeline (sources, clip sampling, augmentation, loading).

One :class:`DataConfig` describes where clips come from and how they are cut and augmented. The
defaults are DUL's YouTube-VOS setting (dul.md §2.2) on the synthetic source, so that a config
built with no arguments runs anywhere (no data on disk needed).

Method settings (for recipes):

=======  ==========================================================================================
DUL      ``clip_len=5, frame_gap=2 (YT-VOS JPEGs) or 10, order="shuffled", crop="random",
         short_side=(256, 320), hflip=True, color="rgb"``; Kinetics/TrackingNet: ``short_side=(256,
         256), crop="center"``.
STT      ``clip_len=2, frame_gap=1, order="ordered", crop="resized", area_range=(0.6, 1.0),
         aspect_range=(1.5, 2.0), hflip=True, color="lab"`` (the teacher's ImageNet-RGB input is a
         second view the method builds; see stt.md §3.2).
LIIR     ``clip_len=2, order="ordered", crop="full", hflip=False, color="lab"`` (whole frame resized
         to S x S, no crop, no flip: liir.md §2.1).
=======  ==========================================================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SOURCES = ("frames", "video", "hf", "synthetic")
ORDERS = ("shuffled", "ordered")
CROPS = ("random", "center", "resized", "full")
COLORS = ("rgb", "lab")


def data_homes() -> list[Path]:
    """Where datasets are looked for, in order: ``$TRITONCORR_DATA`` (when set), then ``~/.cache/tritoncorr``."""
    env = os.environ.get("TRITONCORR_DATA")
    return ([Path(env).expanduser()] if env else []) + [Path("~/.cache/tritoncorr").expanduser()]


def data_home() -> Path:
    """Where datasets live (and generated ones are written): ``$TRITONCORR_DATA``, else ``~/.cache/tritoncorr``."""
    return data_homes()[0]


def find_dataset(*names: str) -> Path | None:
    """The first existing folder ``<home>/<name>`` over :func:`data_homes` and then ``names``
    (e.g. ``"VIP_Fine", "VIP"``), else None."""
    for home in data_homes():
        for name in names:
            if (home / name).is_dir():
                return home / name
    return None


def dataset_path(*parts: str) -> str:
    """``data_home() / parts`` as a string, for recipes' default data roots (e.g. ``"YouTube-VOS", "train"``)."""
    return str(data_home().joinpath(*parts))


def unused_source_options(cfg) -> list[tuple[str, str]]:
    """``(field, why)`` for each option set on ``cfg`` that its ``source`` never reads (issue 25: a
    ``--set data.root=...`` on a synthetic source was silently ignored). Checked: ``root`` on the
    synthetic source; ``hf_column`` / ``hf_streaming`` on a source other than ``"hf"``."""
    out: list[tuple[str, str]] = []
    if cfg.source == "synthetic" and cfg.root:
        out.append(
            (
                "root",
                "source='synthetic' generates its data and reads no files; to train on this folder "
                "also set data.source (e.g. --set data.source=video), or drop data.root",
            )
        )
    if cfg.source != "hf" and (cfg.hf_column or cfg.hf_streaming):
        name = "hf_column" if cfg.hf_column else "hf_streaming"
        out.append((name, f"only source='hf' reads it, this source is {cfg.source!r}"))
    return out


def field_error(cfg, name: str, why: str):
    """The error of a bad data field: ``ConfigError("data.<name>=<value>: <why>")``."""
    from tritoncorr.engine.config import ConfigError

    return ConfigError(f"data.{name}={getattr(cfg, name)!r}: {why}")


def check_source(cfg, sources: tuple[str, ...]) -> None:
    """The checks every data config (clips and images) makes first: ``source`` is one of ``sources``, a
    source other than ``"synthetic"`` has a ``root``, and no option is set that the source never reads
    (:func:`unused_source_options`). Raises :func:`field_error`'s ``ConfigError``."""
    if cfg.source not in sources:
        raise field_error(cfg, "source", f"must be one of {sources}")
    if cfg.source != "synthetic" and not cfg.root:
        raise field_error(
            cfg, "root", f"source={cfg.source!r} needs a root (a folder, dataset path or hub id: --set data.root=PATH)"
        )
    unused = unused_source_options(cfg)
    if unused:
        raise field_error(cfg, *unused[0])


@dataclass
class DataConfig:
    """Where training clips come from and how they are sampled and augmented.

    Sources (``source``):

    * ``"frames"``: ``root`` is a folder of frame folders in DAVIS / YouTube-VOS layout:
      ``<root>/<video>/*.jpg``, ``<root>/JPEGImages/<video>/*.jpg`` or
      ``<root>/JPEGImages/480p/<video>/*.jpg`` (also .jpeg/.png). Frames are ordered by file name.
    * ``"video"``: ``root`` is a folder (searched recursively) of ``.mp4/.webm/.avi/.mkv/.mov`` files,
      decoded with PyAV by seeking to the clip.
    * ``"hf"``: ``root`` is a Hugging Face dataset: a ``save_to_disk`` folder, a local dataset
      folder/script understood by ``datasets.load_dataset``, or a hub id (needs network). See
      :mod:`tritoncorr.data.sources` for the expected columns.
    * ``"synthetic"``: generated clips (``tritoncorr.evals.synthetic.synthetic_clip``).

    Clip sampling (DUL's ``DataVideo``): ``window = min(n, frame_gap * clip_len)``,
    ``gap = window // clip_len``, start uniform so the clip fits, then a random permutation of the
    ``clip_len`` frames when ``order == "shuffled"``. Videos with fewer than ``clip_len`` frames are
    dropped. ``gap_choices`` (with ``gap_probs``, default uniform) replaces ``frame_gap`` by a gap drawn
    per sample from those values (MAST / LIIR's stride k in {2, 5, 8} with p = 0.4, 0.4, 0.2; liir.md
    §2.1). ``target_fps > 0`` (video sources only) first resamples the video's timeline at that
    rate (nearest native frame), then applies the gap; rates above the native one use native frames.

    Spatial pipeline (same random parameters for all frames of a clip): ``crop="random"`` resizes the
    shorter side to an integer drawn uniformly from ``short_side[0] .. short_side[1] - 1`` (exactly
    ``short_side[0]`` when the two are equal), aspect kept, then takes a random ``crop_size`` square;
    ``"center"`` does the same resize then a centre crop; ``"resized"`` is STT's random resized crop
    (area fraction ``~U(area_range)``, aspect w/h log-uniform in ``aspect_range``, 20 tries, fallback
    centre square) resized to ``crop_size`` squared ignoring aspect; ``"full"`` resizes the whole frame
    to ``crop_size`` squared (LIIR). Then a whole-clip horizontal flip with p = 0.5 when ``hflip``.
    ``color="rgb"``: ImageNet-normalised RGB; ``"lab"``: OpenCV-float Lab normalised as
    ``((L - 50) / 50, a / 127, b / 127)``.

    Decoding cache (``cache_dir``, ``cache_short_side``): every video is decoded once, its frames
    resized to that shorter side and kept as ``.npy`` files in ``cache_dir``, so that seeking and
    decoding large videos does not dominate a CPU step (:mod:`tritoncorr.data.cache`).
    """

    source: str = "synthetic"
    root: str = ""
    hf_split: str = "train"
    hf_streaming: bool = False
    hf_column: str = ""  # "" = auto: "frames" (list of images) or "video" (bytes / path / {"bytes","path"})
    clip_len: int = 5
    frame_gap: int = 2
    gap_choices: tuple[int, ...] = ()  # () = always frame_gap; else a gap drawn per sample from these
    gap_probs: tuple[float, ...] = ()  # probabilities of gap_choices (() = uniform)
    target_fps: float = 0.0
    order: str = "shuffled"
    batch_size: int = 16
    num_workers: int = 2
    prefetch_factor: int = 2
    pin_memory: bool = False
    crop_size: int = 256
    short_side: tuple[int, int] = (256, 320)
    crop: str = "random"
    area_range: tuple[float, float] = (0.6, 1.0)
    aspect_range: tuple[float, float] = (1.5, 2.0)
    hflip: bool = True
    color: str = "rgb"
    synthetic_videos: int = 8
    synthetic_frames: int = 12
    synthetic_size: tuple[int, int] = (96, 128)
    synthetic_seed: int = 0
    probe_cache: str = ""  # JSON file caching per-video frame counts / timestamps ("" = in memory only)
    max_retries: int = 8  # a sample whose video cannot be read is replaced by another video, this many tries
    cache_dir: str = ""  # decode every video once, downscaled, into this folder (tritoncorr.data.cache); "" = off
    cache_short_side: int = 0  # shorter side of the cached frames (needs cache_dir)

    def validate(self) -> "DataConfig":
        """Check field values; returns ``self``. Raises ``ConfigError`` (a ``ValueError``) naming the bad field."""

        def bad(field: str, why: str):
            return field_error(self, field, why)

        check_source(self, SOURCES)
        if self.order not in ORDERS:
            raise bad("order", f"must be one of {ORDERS}")
        if self.crop not in CROPS:
            raise bad("crop", f"must be one of {CROPS}")
        if self.color not in COLORS:
            raise bad("color", f"must be one of {COLORS}")
        for name in ("clip_len", "frame_gap", "batch_size", "crop_size", "max_retries"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be >= 1")
        if self.gap_choices:
            if any(int(g) < 1 for g in self.gap_choices):
                raise bad("gap_choices", "every gap must be >= 1")
            if self.gap_probs and (
                len(self.gap_probs) != len(self.gap_choices)
                or any(p < 0 for p in self.gap_probs)
                or abs(sum(self.gap_probs) - 1.0) > 1e-6
            ):
                raise bad("gap_probs", f"must be {len(self.gap_choices)} non-negative numbers summing to 1")
        elif self.gap_probs:
            raise bad("gap_probs", "needs gap_choices")
        if self.num_workers < 0:
            raise bad("num_workers", "must be >= 0")
        if self.prefetch_factor < 1:
            raise bad("prefetch_factor", "must be >= 1")
        if self.target_fps < 0:
            raise bad("target_fps", "must be >= 0 (0 = native rate)")
        if self.target_fps > 0 and self.source in ("frames", "synthetic"):
            raise bad("target_fps", f"needs timestamps; source={self.source!r} has none (use frame_gap)")
        lo, hi = self.short_side
        if not (1 <= lo <= hi):
            raise bad("short_side", "must be (lo, hi) with 1 <= lo <= hi")
        if self.crop in ("random", "center") and lo < self.crop_size:
            raise bad("short_side", f"lo={lo} is smaller than crop_size={self.crop_size}")
        a0, a1 = self.area_range
        if not (0 < a0 <= a1 <= 1):
            raise bad("area_range", "must satisfy 0 < lo <= hi <= 1")
        r0, r1 = self.aspect_range
        if not (0 < r0 <= r1):
            raise bad("aspect_range", "must satisfy 0 < lo <= hi")
        if self.cache_dir:
            if self.source == "hf" and self.hf_streaming:
                raise bad("cache_dir", "a streamed dataset cannot be cached (set hf_streaming=False)")
            need = self.short_side[1] if self.crop in ("random", "center") else self.crop_size
            if self.cache_short_side < need:
                raise bad("cache_short_side", f"must be >= {need} (the largest size crop={self.crop!r} resizes to)")
        if self.synthetic_videos < 1 or self.synthetic_frames < 1:
            raise bad("synthetic_videos", "synthetic_videos and synthetic_frames must be >= 1")
        return self

"""A cache of per-frame features for propagation sweeps (``eval davis|sweep --cache-features DIR``).

The features of a video depend on the weights, the network input (size, padding, colour space),
the precision and whether they are L2-normalised, but not on the propagation settings (top-k,
temperature, radius, context, references ...). So they are computed once and stored:

    DIR/<key>/<sequence>.safetensors     "feats": (T, C, h, w)
    DIR/<key>/key.json                   what the key stands for (human-readable)

``key`` is the first 16 hex digits of the SHA-256 of :meth:`FeatureCache.identity`: the weights'
identity (the checkpoint file's SHA-256, or the description of seeded random weights), input size,
padding, normalisation, colour space and precision. A file also records its frame count, frame
size and feature geometry in its metadata and is ignored (recomputed and rewritten) when they do not
match the video. Features are stored as float32, or bfloat16 when the precision is bf16 (then the
features are bf16 values already, so nothing is lost); they are read back as float32.
Writes are atomic (a temporary file renamed), so an interrupted run leaves no half file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["FeatureCache"]


@dataclass(frozen=True)
class FeatureCache:
    """Per-sequence features under ``root/<key>/`` (see the module docstring).

    Args:
        root: the cache folder (created on first write).
        weights: identity of the weights: a checkpoint's SHA-256 or the random-init description.
        input_size: ``(H', W')`` network input or None (native).
        pad, normalize: the propagation config's frame padding and feature L2-normalisation.
        color: the model's input colour space.
        precision: ``fp32`` or ``bf16``.
    """

    root: Path
    weights: str
    input_size: tuple[int, int] | None
    pad: int
    normalize: bool
    color: str
    precision: str

    def identity(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "input_size": list(self.input_size) if self.input_size else None,
            "pad": int(self.pad),
            "normalize": bool(self.normalize),
            "color": self.color,
            "precision": self.precision,
        }

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def folder(self) -> Path:
        return Path(self.root) / self.key

    def path(self, sequence: str) -> Path:
        return self.folder / f"{sequence}.safetensors"

    def load(self, sequence: str, num_frames: int, size: tuple[int, int]):
        """The cached :class:`~tritoncorr.evaluate.VideoFeatures` of ``sequence`` (None when absent or stale)."""
        from safetensors import safe_open

        from tritoncorr.evaluate import FrameGeometry, VideoFeatures

        path = self.path(sequence)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                geo = json.loads(meta.get("geometry", "{}"))
                if int(meta.get("num_frames", -1)) != num_frames or tuple(geo.get("size", ())) != tuple(size):
                    return None
                feats = f.get_tensor("feats").float()
        except Exception:  # unreadable (safetensors raises its own SafetensorError): recomputed and rewritten
            return None
        g = FrameGeometry(tuple(geo["size"]), tuple(geo["input_size"]), tuple(geo["padded_size"]), tuple(geo["grid"]))
        if feats.shape[0] != num_frames or tuple(feats.shape[-2:]) != g.grid:
            return None
        return VideoFeatures(feats, g)

    def save(self, sequence: str, video) -> Path:
        """Store ``video`` (:class:`~tritoncorr.evaluate.VideoFeatures`) for ``sequence`` (atomically)."""
        from safetensors.torch import save_file

        g = video.geometry
        self.folder.mkdir(parents=True, exist_ok=True)
        key_file = self.folder / "key.json"
        if not key_file.is_file():
            key_file.write_text(json.dumps(self.identity(), indent=2) + "\n")
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        meta = {
            "num_frames": str(len(video)),
            "identity": json.dumps(self.identity()),
            "geometry": json.dumps(
                {
                    "size": list(g.size),
                    "input_size": list(g.input_size),
                    "padded_size": list(g.padded_size),
                    "grid": list(g.grid),
                }
            ),
        }
        path = self.path(sequence)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file({"feats": video.feats.detach().to("cpu", dtype).contiguous()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path


def weights_identity(checkpoint: str | Path | None, description: str) -> str:
    """A checkpoint's SHA-256 (run folders resolved to their weights), or ``description`` for random weights."""
    if checkpoint is None:
        return description
    from tritoncorr.engine.checkpoint import resolve_weights_path
    from tritoncorr.evals.resume import file_sha256

    return file_sha256(resolve_weights_path(Path(checkpoint)))

"""A cache of decoded, downscaled frames, so that video decoding does not dominate a CPU training step.

Seeking into a 720p H.264 file and decoding two frames costs about 0.6 s on one core of the 2-core
development machine (``../shared/data/videos/01_dog.mp4``), several times a CPU-recipe step.
:class:`CachedSource` wraps any map-style :class:`~tritoncorr.data.sources.ClipSource`: the first time a
video is needed (in the main process, before training starts) all its frames are decoded once in
order, resized so that the shorter side is ``short_side`` (bilinear, antialiased: the same resize the
augmentation uses) and written as one uint8 ``(T, h, w, 3)`` ``.npy`` file; afterwards
:meth:`CachedSource.read` is a memory-mapped slice (data-loader workers share the page cache).

Cache files live in ``cache_dir`` under a key of the video's identity
(:meth:`~tritoncorr.data.sources.ClipSource.identity`: kind, name, frame count and, for files, path,
size and modification time) and ``short_side``, so a changed file or another size is decoded again. Files are written atomically
(temporary name + rename), so an interrupted fill leaves no truncated cache.

The cached frames replace the originals: the augmentation then resizes from ``short_side`` instead of
the native size (two resamplings instead of one). Choose ``short_side`` at least as large as the
largest size the augmentation asks for (``DataConfig.validate`` checks it).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tritoncorr.data.sources import ClipSource

__all__ = ["CachedSource", "cache_key"]


def cache_key(source: ClipSource, video: int, short_side: int) -> str:
    """A file-name-safe key of the video's identity (:meth:`ClipSource.identity`) and the cached size."""
    digest = hashlib.sha1(f"{source.identity(video)}|{short_side}".encode()).hexdigest()[:16]
    return f"{Path(source.names[video]).stem[:40]}-{short_side}-{digest}"


def _downscale(frames: np.ndarray, short_side: int) -> np.ndarray:
    """uint8 ``(n, H, W, 3)`` -> shorter side ``short_side`` (never upscaled), uint8 ``(n, h, w, 3)``."""
    from tritoncorr.data.transforms import resize_shorter_side

    h, w = frames.shape[1:3]
    if min(h, w) <= short_side:
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    return resize_shorter_side(x, short_side).permute(0, 2, 3, 1).contiguous().numpy()


class CachedSource(ClipSource):
    """``source`` with every video decoded once to ``short_side`` and served from ``cache_dir``.

    ``names``, ``num_frames`` and ``fps`` are the wrapped source's; :meth:`read` returns uint8
    ``(n, h, w, 3)`` at the cached size. ``progress`` shows a rich progress bar while filling.
    """

    def __init__(self, source: ClipSource, cache_dir: str | os.PathLike, short_side: int, *,
                 chunk: int = 64, progress: bool = True) -> None:
        super().__init__(source.root)
        if short_side < 1:
            raise ValueError(f"cache short side must be >= 1, got {short_side}")
        self.inner = source
        self.kind = f"cached-{source.kind}"
        self.names, self.num_frames, self.fps = list(source.names), list(source.num_frames), list(source.fps)
        self.skipped = source.skipped
        self.short_side = int(short_side)
        self.dir = Path(cache_dir).expanduser()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.paths = [self.dir / f"{cache_key(source, v, self.short_side)}.npy" for v in range(len(self.names))]
        self._maps: dict[int, np.ndarray] = {}
        self._fill(chunk, progress)

    def _fill(self, chunk: int, progress: bool) -> None:
        todo = [v for v, p in enumerate(self.paths) if not p.is_file()]
        if not todo:
            return
        from rich.progress import Progress

        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"caching {len(todo)} videos at short side {self.short_side}",
                                total=sum(self.num_frames[v] for v in todo))
            for v in todo:
                n = self.num_frames[v]
                parts = []
                for s in range(0, n, chunk):
                    parts.append(_downscale(self.inner.read(v, range(s, min(n, s + chunk))), self.short_side))
                    bar.advance(task, len(parts[-1]))
                frames = np.concatenate(parts)
                tmp = self.paths[v].with_name(f".{self.paths[v].name}.tmp-{os.getpid()}")
                with open(tmp, "wb") as f:
                    np.save(f, frames)
                os.replace(tmp, self.paths[v])

    def read(self, video: int, indices: Sequence[int]) -> np.ndarray:
        idx = self._check_indices(video, indices)
        frames = self._maps.get(video)
        if frames is None:
            frames = np.load(self.paths[video], mmap_mode="r")
            if frames.shape[0] != self.num_frames[video]:
                raise ValueError(f"cache file {self.paths[video]} holds {frames.shape[0]} frames, "
                                 f"{self.names[video]} has {self.num_frames[video]}: delete it to rebuild")
            self._maps[video] = frames
        return np.ascontiguousarray(frames[idx])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"] = {}  # memory maps are reopened in each data-loader worker
        state["inner"] = None  # workers read the cache files only
        return state

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
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tritoncorr.data.sources import ClipSource, SourceWarning

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

    ``names``, ``num_frames`` and ``fps`` are the wrapped source's, except that a video whose last
    frames cannot be decoded keeps the decodable ones (``num_frames`` shrinks, with a
    :class:`SourceWarning`) and one with none is dropped; :meth:`read` returns uint8 ``(n, h, w, 3)`` at
    the cached size. ``progress`` shows a rich progress bar while filling.
    """

    def __init__(
        self,
        source: ClipSource,
        cache_dir: str | os.PathLike,
        short_side: int,
        *,
        chunk: int = 64,
        progress: bool = True,
    ) -> None:
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
        self._finish()

    def _fill(self, chunk: int, progress: bool) -> None:
        todo = [v for v, p in enumerate(self.paths) if not p.is_file()]
        if not todo:
            return
        from rich.progress import Progress

        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(
                f"caching {len(todo)} videos at short side {self.short_side}",
                total=sum(self.num_frames[v] for v in todo),
            )
            for v in todo:
                n = self.num_frames[v]
                parts = []
                for s in range(0, n, chunk):
                    part = self._read_prefix(v, list(range(s, min(n, s + chunk))))
                    if len(part):
                        parts.append(_downscale(part, self.short_side))
                    bar.advance(task, min(n, s + chunk) - s)
                    if len(part) < min(n, s + chunk) - s:
                        break
                got = sum(len(p) for p in parts)
                if got < n:
                    warnings.warn(
                        f"{self.names[v]}: only the first {got} of {n} frames could be decoded; using those",
                        SourceWarning,
                        stacklevel=2,
                    )
                if got == 0:
                    continue
                frames = np.concatenate(parts)
                tmp = self.paths[v].with_name(f".{self.paths[v].name}.tmp-{os.getpid()}")
                with open(tmp, "wb") as f:
                    np.save(f, frames)
                os.replace(tmp, self.paths[v])

    def _read_prefix(self, video: int, idx: list[int]) -> np.ndarray:
        """Frames ``idx`` (consecutive), or the longest decodable prefix of them (a video whose last
        frames do not decode, although its header counts them)."""
        try:
            return self.inner.read(video, idx)
        except (ValueError, OSError):
            frames = []
            for i in idx:
                try:
                    frames.append(self.inner.read(video, [i])[0])
                except (ValueError, OSError):
                    break
            if not frames:
                return np.zeros((0, 1, 1, 3), np.uint8)
            return np.stack(frames)

    def _finish(self) -> None:
        """Frame counts from the cache files; videos without any decodable frame are dropped."""
        keep = [v for v, p in enumerate(self.paths) if p.is_file()]
        for v, p in enumerate(self.paths):
            if not p.is_file():
                self._skip(self.names[v], "no frame could be decoded")
        counts = {v: int(np.load(self.paths[v], mmap_mode="r").shape[0]) for v in keep}
        self.names = [self.names[v] for v in keep]
        self.fps = [self.fps[v] for v in keep]
        self.paths = [self.paths[v] for v in keep]
        self.num_frames = [counts[v] for v in keep]

    def read(self, video: int, indices: Sequence[int]) -> np.ndarray:
        idx = self._check_indices(video, indices)
        frames = self._maps.get(video)
        if frames is None:
            frames = np.load(self.paths[video], mmap_mode="r")
            self._maps[video] = frames
        return np.ascontiguousarray(frames[idx])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"] = {}  # memory maps are reopened in each data-loader worker
        state["inner"] = None  # workers read the cache files only
        return state

"""The clip pipeline: sources (frame folders, PyAV video, HF datasets, synthetic), clip sampling, the
loader's determinism / resume / DDP sharding, and skipping of unreadable data."""

from __future__ import annotations

import io
import itertools
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tritoncorr.data import sampler as S
from tritoncorr.data.config import DataConfig
from tritoncorr.data.loader import build_clip_loader
from tritoncorr.data.sources import FrameFolderSource, HFSource, SourceWarning, SyntheticSource, VideoFileSource
from tritoncorr.data.transforms import imagenet_denormalize, lab_denormalize

SMALL = dict(crop_size=16, short_side=(18, 22), batch_size=2)


def _frames(n: int, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    """Distinct, smooth frames (encode well, easy to tell apart)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for t in range(n):
        phase = rng.uniform(0, 6.28, 3)
        img = [127 + 100 * np.sin(xx / 5.0 + yy / 7.0 + 0.4 * t + phase[c]) for c in range(3)]
        out.append(np.stack(img, -1).astype(np.uint8))
    return np.stack(out)


def _write_video(
    path: Path,
    frames: np.ndarray,
    codec: str = "libx264",
    rate: int = 25,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
) -> Path:
    import av

    with av.open(str(path), "w") as out:
        st = out.add_stream(codec, rate=rate)
        st.width, st.height = frames.shape[2], frames.shape[1]
        st.pix_fmt = "yuv420p"
        if codec == "libx264":
            st.options = {"g": "6", "bf": "2", "crf": "18"}
        if time_base is not None:
            st.codec_context.time_base = time_base
            st.time_base = time_base
        for i, a in enumerate(frames):
            fr = av.VideoFrame.from_ndarray(a, format="rgb24")
            if pts is not None:
                fr.pts = pts[i]
                fr.time_base = time_base
            for p in st.encode(fr):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path


def _full_decode(path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


def _frame_folders(
    root: Path, videos: int, frames: int, ext: str = ".png", layout: str = "JPEGImages/480p"
) -> list[np.ndarray]:
    clips = []
    for v in range(videos):
        clip = SyntheticSource(1, frames, (24, 32), seed=v).read(0, range(frames))
        d = root / layout / f"vid{v:02d}"
        d.mkdir(parents=True)
        for t, img in enumerate(clip):
            Image.fromarray(img).save(d / f"{t:05d}{ext}")
        clips.append(clip)
    return clips


def _batches(loader, n: int | None = None) -> list[dict]:
    """The first ``n`` batches of one pass over ``loader`` (all of them when ``n`` is None)."""
    return list(itertools.islice(loader, n))


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x["video"], y["video"])
        assert torch.equal(x["frame_index"], y["frame_index"])
        assert torch.equal(x["frames"], y["frames"])


# ----------------------------------------------------------------------------------------------
# Clip sampling and the epoch plan
# ----------------------------------------------------------------------------------------------


def test_clip_indices_follow_dul_rules():
    rng = np.random.default_rng(0)
    for n in (5, 7, 9, 10, 11, 37):
        for _ in range(30):
            idx = S.clip_indices(n, 5, 2, rng, order="ordered")
            gap = min(n, 10) // 5
            assert np.all(np.diff(idx) == gap) and idx[0] >= 0 and idx[-1] < n
            sh = S.clip_indices(n, 5, 2, rng, order="shuffled")
            assert np.all(np.diff(np.sort(sh)) == gap) and len(set(sh.tolist())) == 5
    assert S.clip_indices(4, 5, 2, rng) is None
    starts = {int(S.clip_indices(12, 5, 2, rng, order="ordered")[0]) for _ in range(300)}
    assert starts == set(range(12 - 8))  # start uniform in 0 .. n - 1 - 4*gap
    orders = {tuple(np.argsort(S.clip_indices(30, 3, 2, rng))) for _ in range(200)}
    assert len(orders) == 6  # every permutation of 3 frames occurs


def test_target_fps_timeline():
    tl = S.timeline(300, 30.0, 10.0)
    assert tl[:4].tolist() == [0, 3, 6, 9] and tl[-1] <= 299 and len(tl) == 100
    assert S.timeline(10, 25.0, 0.0).tolist() == list(range(10))
    assert S.timeline(10, 25.0, 50.0).tolist() == list(range(10))  # never upsample
    idx = S.clip_indices(300, 5, 2, np.random.default_rng(1), order="ordered", fps=30.0, target_fps=10.0)
    assert np.all(np.diff(idx) == 6)  # gap 2 at 10 fps = 6 native frames


def test_epoch_plan_sharding_is_disjoint_and_balanced():
    for world in (1, 2, 3):
        parts = [S.epoch_batches(23, 2, seed=5, epoch=1, rank=r, world_size=world) for r in range(world)]
        flat = [sorted(v for b in p for v in b) for p in parts]
        assert len({len(p) for p in parts}) == 1  # equal batch counts on every rank
        allv = [v for f in flat for v in f]
        assert len(allv) == len(set(allv))  # disjoint
        assert len(parts[0]) == (23 // world) // 2
    assert S.epoch_batches(23, 2, 5, 1, 0, 1) != S.epoch_batches(23, 2, 5, 2, 0, 1)  # reshuffled per epoch
    with pytest.raises(ValueError, match="rank"):
        S.rank_slice(np.arange(4), 2, 2)


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["", "JPEGImages", "JPEGImages/480p"])
def test_frame_folder_source_layouts(tmp_path, layout):
    clips = _frame_folders(tmp_path, 2, 6, layout=layout)
    src = FrameFolderSource(str(tmp_path))
    assert len(src) == 2 and src.num_frames == [6, 6]
    np.testing.assert_array_equal(src.read(1, [4, 0, 2]), clips[1][[4, 0, 2]])
    with pytest.raises(IndexError):
        src.read(0, [6])


@pytest.mark.parametrize("kind", ["mp4", "webm", "vfr"])
def test_video_seek_equals_full_decode(tmp_path, kind):
    frames = _frames(40)
    if kind == "mp4":  # constant rate, GOP 6 with B-frames: metadata path (pts = start + i * step)
        path = _write_video(tmp_path / "a.mp4", frames)
    elif kind == "webm":  # no frame count in the metadata: packet-timestamp index
        path = _write_video(tmp_path / "a.webm", frames, codec="libvpx")
    else:  # variable frame rate: irregular timestamps
        steps = np.random.default_rng(0).integers(18, 45, 40)
        pts = np.concatenate([[0], np.cumsum(steps)[:-1]]).tolist()
        path = _write_video(tmp_path / "a.mp4", frames, rate=30, pts=pts, time_base=Fraction(1, 600))
    src = VideoFileSource(str(tmp_path))
    info = src.infos[0]
    assert src.num_frames == [40]
    assert (info["step"] is not None) == (kind == "mp4")
    full = _full_decode(path)
    assert len(full) == 40
    rng = np.random.default_rng(1)
    for _ in range(8):
        idx = rng.choice(40, size=5, replace=False)
        np.testing.assert_array_equal(src.read(0, idx), full[idx])  # same decoder: bit-exact
    np.testing.assert_array_equal(src.read(0, [39, 0]), full[[39, 0]])
    if kind == "mp4":  # a wrong constant-rate rule falls back to the timestamp index
        src.infos[0]["step"] += 1
        np.testing.assert_array_equal(src.read(0, [37, 5]), full[[37, 5]])
        assert src.infos[0]["pts"] is not None
    # decoded frame i is encoded frame i (lossy, so: the closest source frame is frame i)
    err = np.abs(full[:, None].astype(np.int16) - frames[None].astype(np.int16)).mean(axis=(2, 3, 4))
    assert np.array_equal(err.argmin(axis=1), np.arange(40))


def test_probe_cache_roundtrip(tmp_path):
    (tmp_path / "v").mkdir()
    _write_video(tmp_path / "v" / "a.webm", _frames(12), codec="libvpx")
    cache = tmp_path / "probe.json"
    a = VideoFileSource(str(tmp_path / "v"), probe_cache=str(cache))
    assert cache.exists()
    b = VideoFileSource(str(tmp_path / "v"), probe_cache=str(cache))
    assert a.infos == b.infos and b.num_frames == [12]


def test_corrupt_video_is_skipped(tmp_path):
    _write_video(tmp_path / "good.mp4", _frames(12))
    (tmp_path / "bad.mp4").write_bytes(b"\x00not a video" * 100)
    with pytest.warns(SourceWarning, match="bad.mp4"):
        src = VideoFileSource(str(tmp_path))
    assert len(src) == 1 and src.skipped == [str(tmp_path / "bad.mp4")]
    with pytest.warns(SourceWarning, match="bad.mp4"):
        loader = build_clip_loader(
            DataConfig(source="video", root=str(tmp_path), num_workers=0, **{**SMALL, "batch_size": 1}), seed=0
        )
    assert loader.skipped == 1 and len(_batches(loader)) == 1


def test_truncated_video_read_raises(tmp_path):
    """A file whose header probes fine but whose data is cut: reading the missing part raises
    (the loader then skips it), the intact part still decodes."""
    import av

    with av.open(str(tmp_path / "t.mp4"), "w", options={"movflags": "faststart"}) as out:  # header first
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 32, 24, "yuv420p"
        st.options = {"g": "6", "bf": "2"}
        for a in _frames(40):
            for p in st.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    data = (tmp_path / "t.mp4").read_bytes()
    (tmp_path / "t.mp4").write_bytes(data[: len(data) // 2])
    src = VideoFileSource(str(tmp_path))
    assert src.num_frames == [40]
    assert src.read(0, [1, 2]).shape == (2, 24, 32, 3)
    with pytest.raises(ValueError):
        src.read(0, [35, 38])


def test_unreadable_frame_is_skipped_and_replaced(tmp_path):
    _frame_folders(tmp_path, 4, 6)
    bad = tmp_path / "JPEGImages/480p/vid02"
    for f in bad.iterdir():
        f.write_bytes(b"garbage")
    cfg = DataConfig(source="frames", root=str(tmp_path), num_workers=0, **SMALL)
    loader = build_clip_loader(cfg, seed=0)
    with pytest.warns(SourceWarning, match="vid02"):
        batches = _batches(loader)
    assert loader.skipped == 1 and len(batches) == 2
    videos = torch.cat([b["video"] for b in batches]).tolist()
    assert 2 not in videos and all(b["frames"].shape == (2, 5, 3, 16, 16) for b in batches)
    # the replacement is deterministic: a second loader gives the same batches
    with pytest.warns(SourceWarning):
        again = _batches(build_clip_loader(cfg, seed=0))
    _assert_same(batches, again)


def test_empty_and_too_short_datasets_raise(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        build_clip_loader(DataConfig(source="video", root=str(tmp_path / "empty")), seed=0)
    with pytest.raises(ValueError, match="empty"):
        build_clip_loader(DataConfig(source="frames", root=str(tmp_path / "empty")), seed=0)
    _frame_folders(tmp_path / "short", 3, 4)
    with pytest.raises(ValueError, match=r"short.*too short|too short.*short"):
        build_clip_loader(DataConfig(source="frames", root=str(tmp_path / "short"), clip_len=5), seed=0)
    with pytest.raises(ValueError, match="no full batch"):
        build_clip_loader(DataConfig(source="frames", root=str(tmp_path / "short"), clip_len=2, batch_size=4), seed=0)
    with pytest.raises(ValueError, match="data.crop"):
        DataConfig(crop="zoom").validate()
    with pytest.raises(ValueError, match="target_fps"):
        DataConfig(source="frames", root="x", target_fps=5).validate()


def _hf_dataset(tmp_path: Path, kind: str):
    datasets = pytest.importorskip("datasets")
    clips = [_frames(n, seed=i) for i, n in enumerate((7, 9, 3, 8, 10))]
    if kind == "frames":

        def png(a):
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG")
            return buf.getvalue()

        ds = datasets.Dataset.from_dict({"frames": [[png(f) for f in c] for c in clips], "id": list(range(5))})
        ds = ds.cast_column("frames", datasets.List(datasets.Image()))
    else:
        paths = [_write_video(tmp_path / f"v{i}.mp4", c) for i, c in enumerate(clips)]
        if kind == "video":  # encoded bytes in the table
            ds = datasets.Dataset.from_dict({"video": [p.read_bytes() for p in paths]})
        else:  # paths relative to the dataset folder
            ds = datasets.Dataset.from_dict({"video": [f"clips/{p.name}" for p in paths]})
    ds.save_to_disk(str(tmp_path / "hf"))
    if kind == "video_path":
        (tmp_path / "hf" / "clips").mkdir()
        for i in range(len(clips)):
            (tmp_path / "hf" / "clips" / f"v{i}.mp4").write_bytes((tmp_path / f"v{i}.mp4").read_bytes())
    return clips


@pytest.mark.parametrize("kind", ["frames", "video", "video_path"])
def test_hf_source(tmp_path, kind):
    clips = _hf_dataset(tmp_path, kind)
    src = HFSource(str(tmp_path / "hf"))
    assert src.num_frames == [len(c) for c in clips]
    got = src.read(1, [5, 0, 8])
    if kind == "frames":
        np.testing.assert_array_equal(got, clips[1][[5, 0, 8]])
    else:
        np.testing.assert_array_equal(got, _full_decode(tmp_path / "v1.mp4")[[5, 0, 8]])
    loader = build_clip_loader(DataConfig(source="hf", root=str(tmp_path / "hf"), num_workers=0, **SMALL), seed=0)
    assert len(loader.dataset) == 4 and len(loader) == 2  # the 3-frame video is too short
    b = next(iter(loader))
    assert b["frames"].shape == (2, 5, 3, 16, 16)


def test_hf_streaming_deterministic_and_resumable(tmp_path):
    _hf_dataset(tmp_path, "frames")
    cfg = DataConfig(
        source="hf", root=str(tmp_path / "hf"), hf_streaming=True, num_workers=0, **{**SMALL, "batch_size": 1}
    )
    a = _batches(build_clip_loader(cfg, seed=3))
    assert len(a) == 4 and a[0]["frames"].shape == (1, 5, 3, 16, 16)
    b = _batches(build_clip_loader(DataConfig(**{**cfg.__dict__, "num_workers": 2}), seed=3))
    _assert_same(a, b)
    loader = build_clip_loader(cfg, seed=3)
    _batches(loader, 2)
    state = loader.state_dict()
    resumed = build_clip_loader(cfg, seed=3)
    resumed.load_state_dict(state)
    _assert_same(a[2:], _batches(resumed))
    # the next epoch is reshuffled
    assert resumed.epoch == 1
    nxt = _batches(resumed)
    assert len(nxt) == 4
    assert not all(torch.equal(x["frames"], y["frames"]) for x, y in zip(a, nxt))


def test_streaming_loaders_refuse_an_empty_stream_alike():
    """Clips and images: the same error class and message for an HF stream with no example."""
    datasets = pytest.importorskip("datasets")
    from tritoncorr.data.images import ImageDataConfig, StreamingImageLoader
    from tritoncorr.data.sources import DataSourceError
    from tritoncorr.data.streaming import StreamingClipLoader

    def empty():
        return datasets.IterableDataset.from_generator(lambda: iter(()))

    assert empty().features is None  # the loaders must look at the first example to learn the columns
    clip_cfg = DataConfig(source="hf", root="user/empty-set", hf_streaming=True, num_workers=0, **SMALL)
    image_cfg = ImageDataConfig(source="hf", root="user/empty-set", hf_streaming=True, num_workers=0, crop_size=16)
    for loader, cfg in ((StreamingClipLoader, clip_cfg), (StreamingImageLoader, image_cfg)):
        with pytest.raises(DataSourceError, match=r"HF dataset 'user/empty-set' \(split 'train'\) is empty"):
            loader(cfg, seed=0, dataset=empty())


# ----------------------------------------------------------------------------------------------
# The loader
# ----------------------------------------------------------------------------------------------


def _synthetic_cfg(**kw) -> DataConfig:
    base = dict(
        source="synthetic", synthetic_videos=9, synthetic_frames=8, synthetic_size=(24, 32), num_workers=0, **SMALL
    )
    base.update(kw)
    return DataConfig(**base)


def test_synthetic_loader_batches():
    pytest.importorskip("tritoncorr.evals.synthetic")
    loader = build_clip_loader(_synthetic_cfg(), seed=0)
    assert len(loader) == 4
    batches = _batches(loader)
    assert len(batches) == 4 and loader.epoch == 1 and loader.batch == 0
    for b in batches:
        assert set(b) == {"frames", "video", "frame_index"}
        assert b["frames"].dtype == torch.float32 and b["frames"].shape == (2, 5, 3, 16, 16)
        assert b["video"].dtype == torch.int64 and b["frame_index"].dtype == torch.int64
        assert b["frame_index"].shape == (2, 5)
        rgb = imagenet_denormalize(b["frames"])
        assert rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5
    videos = torch.cat([b["video"] for b in batches]).tolist()
    assert len(set(videos)) == 8  # one clip per video per epoch, drop_last drops one of the nine
    lab = build_clip_loader(_synthetic_cfg(color="lab", crop="full", order="ordered"), seed=0)
    x = lab_denormalize(next(iter(lab))["frames"])
    assert 0 <= x[:, :, 0].min() and x[:, :, 0].max() <= 100.01
    assert torch.all(torch.diff(next(iter(lab))["frame_index"], dim=1) > 0)


def test_loader_content_matches_source(tmp_path):
    """No crop/flip: the batch is the source's frames at frame_index, resized and normalised."""
    clips = _frame_folders(tmp_path, 2, 6)
    cfg = DataConfig(
        source="frames",
        root=str(tmp_path),
        num_workers=0,
        crop="full",
        crop_size=32,
        hflip=False,
        batch_size=1,
        clip_len=3,
    )
    for b in build_clip_loader(cfg, seed=1):
        v = int(b["video"][0])
        ref = torch.from_numpy(clips[v][b["frame_index"][0].numpy()]).permute(0, 3, 1, 2).float() / 255
        ref = torch.nn.functional.interpolate(ref, size=(32, 32), mode="bilinear", align_corners=False, antialias=False)
        # uint8 resizing rounds to grey levels
        torch.testing.assert_close(imagenet_denormalize(b["frames"][0]), ref, atol=1.01 / 255, rtol=0)


def test_loader_determinism_workers_and_resume():
    pytest.importorskip("tritoncorr.evals.synthetic")
    cfg = _synthetic_cfg()
    a = _batches(build_clip_loader(cfg, seed=7))
    _assert_same(a, _batches(build_clip_loader(cfg, seed=7)))
    _assert_same(a, _batches(build_clip_loader(_synthetic_cfg(num_workers=2), seed=7)))
    other = _batches(build_clip_loader(cfg, seed=8))
    assert not all(torch.equal(x["frames"], y["frames"]) for x, y in zip(a, other))
    # resume mid-epoch: a fresh loader continues with exactly the remaining batches
    loader = build_clip_loader(cfg, seed=7)
    _batches(loader, 2)
    state = loader.state_dict()
    assert state["epoch"] == 0 and state["batch"] == 2
    resumed = build_clip_loader(_synthetic_cfg(num_workers=2), seed=7)
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # the usual training loop call keeps the resume position
    _assert_same(a[2:], _batches(resumed))
    # the next epoch differs (new permutation and new clips) and is reproducible via set_epoch
    e1 = _batches(resumed)
    assert [x["video"].tolist() for x in e1] != [x["video"].tolist() for x in a]
    again = build_clip_loader(cfg, seed=7)
    again.set_epoch(1)
    _assert_same(e1, _batches(again))


def test_loader_ddp_shards_are_disjoint():
    pytest.importorskip("tritoncorr.evals.synthetic")
    cfg = _synthetic_cfg()
    single = {v for b in _batches(build_clip_loader(cfg, seed=1)) for v in b["video"].tolist()}
    seen = []
    for rank in range(2):
        loader = build_clip_loader(cfg, seed=1, rank=rank, world_size=2)
        assert len(loader) == 2
        seen.append([v for b in _batches(loader) for v in b["video"].tolist()])
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) == len(seen[1]) == 4
    assert set(seen[0]) | set(seen[1]) <= set(range(9)) and single <= set(range(9))


# ----------------------------------------------------------------------------------------------
# Real data (skipped cleanly without ../shared/data)
# ----------------------------------------------------------------------------------------------


@pytest.mark.data
def test_shared_videos(shared_data, tmp_path):
    # two of the shared clips (the folder holds 20; probing them all is not this test's point)
    root = tmp_path / "videos"
    root.mkdir()
    for name in ("aquarium.mp4", "kitten.mp4"):
        (root / name).symlink_to(shared_data / "videos" / name)
    src = VideoFileSource(str(root))
    names = [Path(n).name for n in src.names]
    assert names == ["aquarium.mp4", "kitten.mp4"]
    assert src.num_frames == [227, 149]
    assert src.infos[0]["step"] == 1001 and src.infos[1]["pts"] is not None  # kitten has irregular timestamps
    full = _full_decode(shared_data / "videos" / "kitten.mp4")
    idx = [140, 3, 77, 78, 36]
    np.testing.assert_array_equal(src.read(1, idx), full[idx])
    cfg = DataConfig(source="video", root=str(root), num_workers=0, target_fps=10.0, **SMALL)
    b = next(iter(build_clip_loader(cfg, seed=0)))
    assert b["frames"].shape == (2, 5, 3, 16, 16)
    gaps = torch.diff(b["frame_index"].sort(dim=1).values, dim=1)
    assert torch.all((gaps >= 5) & (gaps <= 7))  # gap 2 at 10 fps of ~30 fps video


@pytest.mark.data
def test_shared_davis_frames(shared_data):
    src = FrameFolderSource(str(shared_data / "davis-mini"))
    assert [Path(n).name for n in src.names] == ["car-shadow"] and src.num_frames == [40]
    assert src.read(0, [0]).shape == (1, 480, 854, 3)
    cfg = DataConfig(
        source="frames",
        root=str(shared_data / "davis-mini"),
        num_workers=0,
        batch_size=1,
        crop_size=64,
        short_side=(64, 80),
    )
    b = next(iter(build_clip_loader(cfg, seed=0)))
    assert b["frames"].shape == (1, 5, 3, 64, 64)


# ----------------------------------------------------------------------------------------------
# Decoded-frame cache
# ----------------------------------------------------------------------------------------------


def test_cached_source_serves_downscaled_frames_and_reuses_files(tmp_path):
    from tritoncorr.data.cache import CachedSource
    from tritoncorr.data.sources import SyntheticSource
    from tritoncorr.data.transforms import resize_shorter_side

    inner = SyntheticSource(3, 7, (48, 80), 0)
    cached = CachedSource(inner, tmp_path / "cache", 24, chunk=3, progress=False)
    assert cached.num_frames == inner.num_frames and len(list((tmp_path / "cache").glob("*.npy"))) == 3
    idx = [6, 0, 3]
    want = resize_shorter_side(torch.from_numpy(inner.read(1, idx)).permute(0, 3, 1, 2), 24).permute(0, 2, 3, 1)
    got = cached.read(1, idx)
    assert got.shape == (3, 24, 40, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want.numpy())
    with pytest.raises(IndexError):
        cached.read(0, [7])

    # a second source finds the files and decodes nothing
    class Boom(SyntheticSource):
        def read(self, video, indices):
            raise AssertionError("decoded again")

    again = CachedSource(Boom(3, 7, (48, 80), 0), tmp_path / "cache", 24, progress=False)
    np.testing.assert_array_equal(again.read(1, idx), got)
    import pickle

    np.testing.assert_array_equal(pickle.loads(pickle.dumps(again)).read(2, [1]), cached.read(2, [1]))
    # another generator seed has the same names but other frames: its own cache files
    other = CachedSource(SyntheticSource(3, 7, (48, 80), 5), tmp_path / "cache", 24, progress=False)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 6
    assert not np.array_equal(other.read(1, idx), got)


def test_cache_config_validation_and_loader(tmp_path):
    """crop="full" resizes to crop_size (16), so the cache must keep a shorter side >= 16; every video is cached."""
    cache = tmp_path / "c"
    with pytest.raises(ValueError, match="cache_short_side"):
        _synthetic_cfg(clip_len=2, crop="full", cache_dir=str(cache), cache_short_side=8).validate()
    cfg = _synthetic_cfg(clip_len=2, crop="full", cache_dir=str(cache), cache_short_side=20)
    b = next(iter(build_clip_loader(cfg, seed=0)))
    assert b["frames"].shape == (2, 2, 3, 16, 16)
    assert len(list(cache.glob("*.npy"))) == cfg.synthetic_videos


def test_cache_keeps_the_decodable_prefix(tmp_path):
    from tritoncorr.data.cache import CachedSource
    from tritoncorr.data.sources import SourceWarning, SyntheticSource

    class TailBroken(SyntheticSource):
        """Video 0's last two frames do not decode; video 1 decodes nothing (as pillow.mp4's tail)."""

        def read(self, video, indices):
            idx = list(indices)
            if (video == 0 and max(idx) >= 5) or video == 1:
                raise ValueError("frames could not be decoded")
            return super().read(video, idx)

    with pytest.warns(SourceWarning):
        c = CachedSource(TailBroken(3, 7, (20, 30), 0), tmp_path / "c", 20, chunk=4, progress=False)
    assert c.num_frames == [5, 7] and len(c) == 2 and len(c.skipped) == 1
    np.testing.assert_array_equal(c.read(0, [4]), SyntheticSource(3, 7, (20, 30), 0).read(0, [4]))


def test_clip_and_image_loaders_reject_the_same_data_alike(tmp_path):
    """One plan/iteration (data/planned.py) behind both loaders: the same checks, the same errors."""
    from tritoncorr.data.images import ImageDataConfig
    from tritoncorr.data.sources import DataSourceError
    from tritoncorr.engine.config import ConfigError

    errors = []
    for build in (
        lambda: build_clip_loader(DataConfig(source="synthetic", synthetic_videos=3, batch_size=4), seed=0),
        lambda: ImageDataConfig(source="synthetic", synthetic_images=3, batch_size=4).build_loader(seed=0),
    ):
        with pytest.raises(ConfigError) as info:
            build()
        errors.append(str(info.value))
    assert all("usable" in e and "give no full batch of 4 per rank with world_size=1" in e for e in errors), errors
    (tmp_path / "empty").mkdir()
    for build in (
        lambda: build_clip_loader(DataConfig(source="video", root=str(tmp_path / "empty")), seed=0),
        lambda: ImageDataConfig(source="video", root=str(tmp_path / "empty")).build_loader(seed=0),
    ):
        with pytest.raises(DataSourceError, match=str(tmp_path / "empty")):
            build()

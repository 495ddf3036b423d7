"""End-to-end benchmark of ``tritoncorr eval davis``'s work on one video: features of every frame,
first-frame labels propagated through the video, decoded masks (kernel ``eval_davis``).

A generated DAVIS-like sequence (a smooth random scene panning across 480 x 854 frames with a little
noise, an ellipse as the first mask; the content hardly changes the cost, but no two frames are
equal), DUL's protocol (random-init ResNet-18 stride 8, layer4, frame 0 + 20 previous frames, disc
radius 12, top-10, tau 0.05). Providers:

* ``"tritoncorr"``: :func:`tritoncorr.evaluate.propagate_sequence` with float32 features (the
  papers' protocol; distinct context frames scored once, windowed tiles on CPU / the Triton
  kernel on CUDA);
* ``"tritoncorr-bf16"``: the same with the feature extractor under bfloat16 autocast
  (``--precision bf16``);
* ``"repeated-slots"``: the same float32 features and the same kernel path, but every context
  slot scored (frame 0 repeated while ``t < 20``), as before distinct frames were scored once;
* ``"crw"``: the same float32 features, then CRW's propagation: every context slot in a dense
  affinity of chunks of 100 queries with the -1e10 mask
  (:func:`~tritoncorr.kernels.knn_propagate.knn_propagate_dense`), the reference provider.

The time is of the whole video (``T`` frames): frames/s = ``T / time``; the row's ``shape`` names
``T``. Not part of ``--quick``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tritoncorr.bench.core import BenchCase

FRAMES = 24  # > 21: both the early frames (frame 0 repeated) and a full context are timed


def _video(t: int, h: int, w: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``t`` frames of a smooth random scene panning 2 px per frame, with a little per-frame noise (no two
    frames are equal, as in a real video: identical frames would make exact score ties everywhere,
    which real features never have), and an ellipse as the first mask."""
    g = torch.Generator().manual_seed(0)
    pan = 2 * t
    base = torch.rand(1, 3, h // 16 + 1, (w + pan) // 16 + 1, generator=g)
    scene = F.interpolate(base, size=(h, w + pan), mode="bilinear", align_corners=False)[0]
    frames = []
    for i in range(t):
        img = (scene[:, :, 2 * i : 2 * i + w] + 0.02 * torch.randn(3, h, w, generator=g)).clamp(0, 1)
        frames.append((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    yy, xx = np.mgrid[:h, :w]
    mask = (((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 5)) ** 2 < 1).astype(np.uint8)
    return frames, mask


def _ours_factory(device: torch.device, t: int, h: int, w: int, precision: str):
    def factory():
        from tritoncorr.evaluate import propagate_sequence
        from tritoncorr.methods.inference import load_feature_model
        from tritoncorr.propagation import PRESETS

        frames, mask = _video(t, h, w)
        model = load_feature_model(None, seed=0, device=device, precision=precision)

        @torch.no_grad()
        def run():
            ids_at = propagate_sequence(model.features, frames, t, mask, PRESETS["dul"], device)
            return [ids_at(i) for i in range(t)]

        return run

    return factory


def _slots_factory(device: torch.device, t: int, h: int, w: int, dense: bool):
    """Propagation over every context slot: CRW's dense affinity (``dense``) or our kernel path."""

    def factory():
        from tritoncorr.evaluate import frame_to_tensor
        from tritoncorr.kernels.knn_propagate import KnnSearch, knn_propagate, knn_propagate_dense
        from tritoncorr.methods.inference import load_feature_model
        from tritoncorr.propagation import PRESETS, channel_argmax, context_indices, decode_labels, encode_labels

        cfg = PRESETS["dul"]
        kw = dict(radius=cfg.radius, topk=cfg.topk, temperature=cfg.temperature, window=cfg.window, unrestricted=1)
        search = KnnSearch(**kw)
        frames, mask = _video(t, h, w)
        model = load_feature_model(None, seed=0, device=device)

        @torch.no_grad()
        def run():
            feats = torch.cat([F.normalize(model.features(frame_to_tensor(f, device)), dim=1) for f in frames])
            labels = [encode_labels(torch.from_numpy(mask).to(device), 2, tuple(feats.shape[-2:]))]
            for i in range(1, t):
                sel = context_indices(i, cfg.context)
                args = (feats[i], feats[sel], torch.stack([labels[s] for s in sel]))
                labels.append(knn_propagate_dense(*args, search) if dense else knn_propagate(*args, **kw))
            return [
                channel_argmax(decode_labels(lab, (h, w), align_corners=True)).to(torch.uint8).cpu().numpy()
                for lab in labels
            ]

        return run

    return factory


def propagation_case(device: torch.device, t: int, h: int, w: int) -> BenchCase:
    """The case for a ``t``-frame generated video of ``h x w`` pixels (every provider)."""
    shape = f"DUL protocol, T={t} frames {w}x{h}, R18 stride 8, context 20, r 12, top-10"
    providers = {
        "tritoncorr": _ours_factory(device, t, h, w, "fp32"),
        "tritoncorr-bf16": _ours_factory(device, t, h, w, "bf16"),
        "repeated-slots": _slots_factory(device, t, h, w, dense=False),
        "crw": _slots_factory(device, t, h, w, dense=True),
    }
    return BenchCase("eval_davis", shape, "fwd", providers)


def cases(device: torch.device, quick: bool) -> list[BenchCase]:
    """One case: a ``FRAMES``-frame video at 480 x 854; none when ``quick`` (an end-to-end run of
    minutes on a CPU: ``tritoncorr bench -k eval_davis``)."""
    if quick:
        return []
    return [propagation_case(device, FRAMES, 480, 854)]

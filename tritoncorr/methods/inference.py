"""Which features a checkpoint gives at inference: checkpoint metadata and the feature-model loader.

Every method module (DUL, STT, LIIR, MoCo) fulfils the method contract
(:class:`tritoncorr.engine.method.DescribedMethod`): ``features(images)``, ``method_name``,
``input_color`` (``"rgb"`` or ``"lab"``, :func:`tritoncorr.evaluate.frame_to_tensor`),
``inference_preset`` (a key of :data:`tritoncorr.propagation.PRESETS`) and ``config``.
:func:`~tritoncorr.engine.method.method_metadata` (re-exported here) turns them into the string
metadata the engine writes into every ``model.safetensors`` and ``init.safetensors``.
:func:`load_feature_model` reads a checkpoint back:

* a tritoncorr training checkpoint (metadata ``tritoncorr.method_config``): the method is rebuilt
  from its recorded config (:meth:`for_inference` of the config when it has one, so that e.g. STT
  does not need its teacher file) and loaded strictly; features, colour and preset come from it;
* any other ``.safetensors`` (a plain backbone, e.g. DUL/CRW weights saved by
  :func:`tritoncorr.models.loading.save_backbone_weights`): the DUL/CRW ResNet-18 stride 8, ``layer4``,
  ImageNet RGB, preset ``"dul"`` (the behaviour ``tritoncorr eval davis`` always had);
* no checkpoint: that backbone with random weights of the given seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tritoncorr.engine.method import METADATA_KEYS, describe, inference_config, method_metadata, read_metadata

__all__ = ["FeatureModel", "METADATA_KEYS", "method_metadata", "read_metadata", "load_feature_model"]


@dataclass
class FeatureModel:
    """A model ready for label propagation.

    Attributes:
        module: the ``nn.Module`` (eval mode, on ``device``).
        features: ``images (1, 3, H, W)`` in ``color`` space -> ``(1, C, h, w)`` float32 features.
        color: ``"rgb"`` or ``"lab"``.
        preset: the default propagation preset (a key of ``PRESETS``).
        method: ``"dul"``, ``"stt"``, ``"liir"``, ``"moco"``, or ``"backbone"`` for a plain ResNet.
        description: one line for the console (what was loaded and how).
        stride: the features' output stride, measured by :func:`feature_stride` (0 = not yet measured).
    """

    module: nn.Module
    features: Callable[[torch.Tensor], torch.Tensor]
    color: str
    preset: str
    method: str
    description: str
    stride: int = 0


def _plain_backbone(seed: int) -> nn.Module:
    from tritoncorr.models import dul_backbone

    torch.manual_seed(seed)
    return dul_backbone()


PRECISIONS = ("fp32", "bf16")


def _with_precision(
    module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device, precision: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward`` as is (``"fp32"``), or under ``torch.autocast(bfloat16)`` in channels-last layout
    (``"bf16"``: convolutions and matmuls in bfloat16 with float32 accumulation; measured here, a
    ResNet-18 stride-8 forward at 480x854 on one CPU thread with AMX: 6.1 s fp32, 1.5 s bf16
    channels-last, 3.0 s bf16 contiguous). The features come back as float32 either way;
    propagation is unchanged."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} must be one of {PRECISIONS}")
    if precision == "fp32":
        return lambda x: forward(x).float()
    module.to(memory_format=torch.channels_last)

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = forward(x.contiguous(memory_format=torch.channels_last))
        return out.float().contiguous()

    return features


def _backbone_model(model: nn.Module, device: torch.device, description: str, precision: str) -> FeatureModel:
    model.eval().to(device)
    features = _with_precision(model, lambda x: model(x)["layer4"], device, precision)
    return FeatureModel(model, features, "rgb", "dul", "backbone", description)


def _check_shapes_before_building(config, path: Path) -> None:
    """Build ``config`` on the meta device (no memory; every method of the library builds there) and
    compare its weights with the tensors the file declares, so that a file recording absurd sizes
    fails before anything is allocated."""
    from safetensors import safe_open

    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in config.build().state_dict().items()}
    except Exception as err:  # noqa: BLE001 - e.g. sizes whose storage overflows
        raise ValueError(
            f"checkpoint {path}: its method config {type(config).__name__} cannot be built (checked "
            f"without allocating, on the meta device): {type(err).__name__}: {err}"
        ) from err
    with safe_open(str(path), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    missing = [k for k in expected if k not in shapes]
    wrong = [f"{k} {shapes[k]} vs {expected[k]}" for k in expected if k in shapes and shapes[k] != expected[k]]
    if missing or wrong:
        raise ValueError(
            f"checkpoint {path} does not fit its recorded method config {type(config).__name__}: "
            f"{len(missing)} weights missing (e.g. {missing[:4]}), {len(wrong)} of another shape "
            f"(e.g. {wrong[:2]})"
        )


def feature_stride(fmodel: FeatureModel, size: int = 64) -> int:
    """The model's output stride, measured: ``size / h`` for the features ``(1, C, h, w)`` of one grey
    ``(1, 3, size, size)`` image on the model's device (one small forward; ``size`` a multiple of 16).
    :func:`load_feature_model` measures it once and keeps it in ``fmodel.stride``."""
    if fmodel.stride:
        return fmodel.stride
    device = next(iter(fmodel.module.parameters()), torch.zeros(())).device
    with torch.no_grad():
        h = fmodel.features(torch.zeros(1, 3, size, size, device=device)).shape[-2]
    if h < 1 or size % h:
        raise ValueError(f"{fmodel.description}: a {size}x{size} image gives {h} feature rows, not a whole stride")
    fmodel.stride = size // h
    return fmodel.stride


def load_feature_model(
    checkpoint: str | Path | None, *, seed: int = 0, device: torch.device | str = "cpu", precision: str = "fp32"
) -> FeatureModel:
    """:func:`_load_feature_model`, with the features' stride measured (``FeatureModel.stride``)."""
    fmodel = _load_feature_model(checkpoint, seed=seed, device=device, precision=precision)
    feature_stride(fmodel)
    return fmodel


def _load_feature_model(
    checkpoint: str | Path | None, *, seed: int = 0, device: torch.device | str = "cpu", precision: str = "fp32"
) -> FeatureModel:
    """Load ``checkpoint`` (a ``.safetensors`` file, a run / checkpoint folder, a published name, an
    ``https://`` URL or ``hf://OWNER/REPO/PATH``: :func:`tritoncorr.weights.resolve_checkpoint`) for inference.

    ``precision``: ``"fp32"`` (the protocol of the papers) or ``"bf16"`` (the feature extractor under
    bfloat16 autocast, propagation stays float32; J&F 0.787 bf16 vs 0.788 fp32 on bear at random init,
    docs/DUL_CPU.md; speed in benchmarks/results/README.md).

    Raises:
        FileNotFoundError: no weights at ``checkpoint``.
        ValueError: unreadable file, a method that cannot be rebuilt, or weights that do not fit it
            (the message names the file); :class:`tritoncorr.weights.WeightsError` (a ``ValueError``):
            an unknown name, a failed download or a hash mismatch.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} must be one of {PRECISIONS}")
    note = "" if precision == "fp32" else f"; features in {precision}"
    if checkpoint is None:
        return _backbone_model(
            _plain_backbone(seed),
            device,
            f"ResNet-18 stride 8 (DUL/CRW), layer4, random init (seed {seed}){note}",
            precision,
        )
    from tritoncorr.engine.checkpoint import resolve_weights_path
    from tritoncorr.weights import resolve_checkpoint

    path = resolve_weights_path(resolve_checkpoint(checkpoint))
    meta = read_metadata(path)
    if "tritoncorr.method_config" not in meta:
        from tritoncorr.models.loading import load_backbone_weights

        model = _plain_backbone(seed)
        report = load_backbone_weights(model, path)
        return _backbone_model(
            model, device, f"ResNet-18 stride 8 (DUL/CRW), layer4, {path}: {report.summary()}{note}", precision
        )

    from safetensors.torch import load_file

    from tritoncorr.engine.config import ConfigError, dataclass_from_dict

    try:
        config = dataclass_from_dict(
            json.loads(meta["tritoncorr.method_config"]), f"checkpoint {path}: metadata tritoncorr.method_config"
        )
    except ConfigError as err:
        raise ValueError(str(err)) from err
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"checkpoint {path}: cannot rebuild its method from the metadata: {err}") from err
    try:
        config = inference_config(config)
        _check_shapes_before_building(config, path)
        torch.manual_seed(seed)
        model = config.build()
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - a recorded config with values its method cannot build
        raise ValueError(
            f"checkpoint {path}: its method config {type(config).__name__} cannot be built: {type(err).__name__}: {err}"
        ) from err
    state = load_file(str(path), device="cpu")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ValueError(
            f"checkpoint {path} lacks {len(result.missing_keys)} weights of its method "
            f"{type(model).__name__} (e.g. {result.missing_keys[:4]})"
        )
    model.eval().to(device)
    features = _with_precision(model, model.features, device, precision)

    info = describe(model)
    method = meta.get("tritoncorr.method", info.name or "?")
    color = meta.get("tritoncorr.input_color", info.color)
    preset = meta.get("tritoncorr.preset", info.preset)
    extra = f", ignored {len(result.unexpected_keys)} non-inference tensors" if result.unexpected_keys else ""
    return FeatureModel(
        model,
        features,
        color,
        preset,
        method,
        f"{method} ({type(model).__name__}) from {path}{extra}; input {color}{note}",
    )

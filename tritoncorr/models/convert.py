"""Published checkpoints -> tritoncorr feature models (``tritoncorr convert``).

A published checkpoint is read with ``torch.load(weights_only=True)`` (tensors and plain containers;
no pickled code runs), its state dict is found inside the container, the format is detected from the
key names (or given), every key is mapped to our layout or dropped with a reason, and the result is
written as a ``.safetensors`` whose metadata records the method, its input colour and its inference
preset (:func:`tritoncorr.engine.method.method_metadata`), so that ``tritoncorr eval davis
--checkpoint DST.safetensors`` and ``tritoncorr propagate`` rebuild the same features.

The converted module is :class:`ConvertedModel`: our :class:`~tritoncorr.models.resnet.ResNet`
configured like the original network (strides, stem pooling, padding mode, widths), cut after the
stage the method reads its features from, plus, where the original has them, LIIR's additive stem
position embedding and MAST/LIIR's 3x3 ``post_convolution`` head. Its ``features(images)`` equal the
original model's inference features on the same input (tests/test_convert.py checks each format
against a transcription of the official forward).

Formats (official model definitions read for the facts; code tags are the repositories' paths):

===========  ================================  ==================================  ===============================  =====  ========
format       container / key prefix             network                             features                         input  preset
===========  ================================  ==================================  ===============================  =====  ========
crw          ``model`` / ``encoder.model.``     R18, layer3+4 stride 1, max-pool,   ``layer3`` (layer4 removed,       rgb    crw
             (videowalk code/model.py,          **reflect** padding (resnet.py      arguments.py ``remove_layers``)
             utils/__init__.py make_encoder)    ``modify``)
dul          ``model`` / ``module.fast_net.``   R18, layer3+4 stride 1, max-pool,   ``layer4`` ("res4", TEST.KEY)    rgb    dul
             ``backbone.`` (models/*.py)        zero padding
stt          ``state_dict`` / ``backbone.``     mmcv ResNet (``convN.conv`` /       ``layer3`` (``out_indices=(2,)``) lab    stt
             (vcl/models/backbones/resnet.py)   ``convN.bn``), test configs: d8
                                                strides (1,2,2,1) no pool; d4
                                                (1,1,1,1) 3x3/2 avg pool
mast         ``state_dict`` / ``module.``       ResNet18 of models/submodule.py     ``post_convolution(layer4)``     lab    mast
             ``feature_extraction.`` (``left``/ (no pool, layer2 stride 2, widths    (3x3 conv 256->64, bias)
             ``shortcut`` blocks)               64,128,256,256)
liir         ``state_dict`` / ``module.``       models/resnet.py ResNet_hr: as      ``post_convolution(layer4)``     lab    liir
             ``feature_extraction.``            MAST + ``pos_embed1`` (1,64,G,G)     with the stem embedding
                                                bicubic-resized, added after the     (``ape=True``)
                                                stem
moco         ``state_dict`` / ``module.``       torchvision R50 (or R18)            ``layer3``, no stem pool (STT's  rgb    stt
             ``encoder_q.``                                                         d8 test of its teachers, as
                                                                                    :class:`tritoncorr.methods.moco.MoCo`)
torchvision  plain state dict                   torchvision R18/R34/R50             ``layer3`` with layer3 stride 1   rgb    crw
                                                                                    (CRW's ImageNet baseline)
===========  ================================  ==================================  ===============================  =====  ========

Dropped on purpose (listed in the report with the reason): heads used only in training (CRW
``selfsim_fc``, DUL ``emb_q``, MoCo ``encoder_q.fc``, LIIR ``conv_semantic(_k)``), momentum / teacher
encoders (MoCo ``encoder_k``, STT ``backbone_t``), queues and memory banks, ImageNet classifiers
(``fc``) and the stages after the feature stage. A key that no rule covers is reported as
*unmapped*; a model weight that the checkpoint lacks is an error (``num_batches_tracked``, absent from
old torchvision files and unused at inference, is filled with 0 and reported).

CRW's released checkpoint stores some convolutions as ``convN.1.weight``; CRW's own test.py renames
them to ``convN.weight``, and so does this converter (reported as renamed).

Safe loading: ``torch.load(weights_only=True)`` with a short allowlist of data-only types that
published training checkpoints carry besides tensors: ``argparse.Namespace`` (CRW's ``args``),
numpy scalars, dtypes and arrays (scores). Anything else (a pickled class, a function call) makes
the file unreadable and conversion is refused with a message naming the offending global.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tritoncorr.models.heads import resize_embedding
from tritoncorr.models.resnet import DEPTHS, STAGES, ResNet

__all__ = [
    "FORMATS",
    "VARIANTS",
    "ConvertError",
    "ConvertReport",
    "ConvertedConfig",
    "ConvertedModel",
    "convert_checkpoint",
    "convert_state_dict",
    "default_config",
    "detect_format",
    "find_state_dict",
    "read_checkpoint",
]

FORMATS = ("crw", "dul", "stt", "mast", "liir", "moco", "torchvision")
#: Variants of a format (the first is the default): STT's stride-8 and stride-4 test networks.
VARIANTS: dict[str, tuple[str, ...]] = {"stt": ("d8", "d4")}
METHOD_NAMES = {
    "crw": "crw",
    "dul": "dul",
    "stt": "stt",
    "mast": "mast",
    "liir": "liir",
    "moco": "moco",
    "torchvision": "torchvision",
}
TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar", ".ckpt", ".bin")


class ConvertError(ValueError):
    """A checkpoint that cannot be converted (unreadable, unknown format, missing weights)."""


# ----------------------------------------------------------------------------------------------
# The converted model
# ----------------------------------------------------------------------------------------------


@dataclass
class ConvertedConfig:
    """The network a converted checkpoint describes (recorded in its metadata; ``build()`` rebuilds it).

    Attributes:
        method: where it came from (a key of ``FORMATS``), written as ``tritoncorr.method``.
        depth, strides, pool, padding_mode, widths: :class:`~tritoncorr.models.resnet.ResNet` arguments.
        feature_stage: the stage ``features`` reads (stages after it are not built).
        stem_embedding: side G of an additive stem position embedding ``(1, 64, G, G)`` (LIIR's
            ``pos_embed1``, bicubic-resized to the stem size); 0 = none.
        head_channels: output channels of a ``head_kernel`` x ``head_kernel`` conv with bias on the
            feature stage (MAST/LIIR ``post_convolution``); 0 = none.
        color: input colour of ``features``: "rgb" (ImageNet-normalised) or "lab" (normalised Lab).
        preset: inference preset (a key of :data:`tritoncorr.propagation.PRESETS`).
        variant: the format's variant (STT "d8"/"d4"), "" when the format has none.
    """

    method: str = "torchvision"
    depth: int = 18
    strides: tuple[int, ...] = (1, 2, 1, 1)
    pool: str = "max"
    padding_mode: str = "zeros"
    widths: tuple[int, ...] = (64, 128, 256, 512)
    feature_stage: str = "layer3"
    stem_embedding: int = 0
    head_channels: int = 0
    head_kernel: int = 3
    color: str = "rgb"
    preset: str = "crw"
    variant: str = ""

    def __post_init__(self) -> None:
        if self.feature_stage not in STAGES:
            raise ValueError(f"ConvertedConfig.feature_stage must be one of {STAGES}, got {self.feature_stage!r}")
        if self.color not in ("rgb", "lab"):
            raise ValueError(f"ConvertedConfig.color must be 'rgb' or 'lab', got {self.color!r}")
        if self.stem_embedding < 0 or self.head_channels < 0 or self.head_kernel < 1 or self.head_kernel % 2 == 0:
            raise ValueError("ConvertedConfig: stem_embedding/head_channels must be >= 0 and head_kernel odd >= 1")

    def build(self) -> ConvertedModel:
        return ConvertedModel(self)

    def describe(self) -> str:
        """One line: the network and its features."""
        parts = [
            f"ResNet-{self.depth} strides {tuple(self.strides)}",
            f"stem pool {self.pool}",
            f"{self.padding_mode} padding",
        ]
        if tuple(self.widths[:3]) != (64, 128, 256) or self.widths[3] != 512:
            parts.append(f"widths {tuple(self.widths)}")
        feat = self.feature_stage
        if self.stem_embedding:
            feat = f"{feat} with a {self.stem_embedding}x{self.stem_embedding} stem position embedding"
        if self.head_channels:
            feat = f"{self.head_kernel}x{self.head_kernel} conv head -> {self.head_channels} ch on {feat}"
        return f"{', '.join(parts)}; features: {feat}; input {self.color}; preset {self.preset!r}"


class ConvertedModel(nn.Module):
    """A published network rebuilt on our ResNet: ``features(images (N, 3, H, W)) -> (N, C, h, w)``.

    Submodules: ``backbone`` (:class:`ResNet` built up to ``config.feature_stage``), optional
    ``pos_embed`` ``(1, 64, G, G)`` (added to the stem output after a bicubic resize) and optional
    ``head`` (conv with bias). Inference only: ``forward`` raises (there is no training loss).
    """

    def __init__(self, config: ConvertedConfig | None = None):
        super().__init__()
        cfg = self.config = config or ConvertedConfig()
        self.backbone = ResNet(
            depth=cfg.depth,
            strides=tuple(cfg.strides),
            pool=cfg.pool,
            padding_mode=cfg.padding_mode,
            out_stages=(cfg.feature_stage,),
            widths=tuple(cfg.widths),
        )
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, 64, cfg.stem_embedding, cfg.stem_embedding)) if cfg.stem_embedding else None
        )
        self.head = None
        if cfg.head_channels:
            cin = self.backbone.channels[cfg.feature_stage]
            self.head = nn.Conv2d(cin, cfg.head_channels, cfg.head_kernel, padding=cfg.head_kernel // 2, bias=True)

    @property
    def method_name(self) -> str:
        return self.config.method

    @property
    def input_color(self) -> str:
        return self.config.color

    @property
    def inference_preset(self) -> str:
        return self.config.preset

    def _stem_hook(self, x: torch.Tensor) -> torch.Tensor:
        return x + resize_embedding(self.pos_embed, tuple(x.shape[-2:])).to(x.dtype)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in ``config.color`` space -> the original model's inference features ``(N, C, h, w)``."""
        hook = self._stem_hook if self.pos_embed is not None else None
        f = self.backbone(images, stem_hook=hook)[self.config.feature_stage]
        return f if self.head is None else self.head(f)

    def forward(self, batch):  # pragma: no cover - the engine never trains a converted model
        raise RuntimeError("a converted checkpoint is for inference only: call features(images)")


def default_config(fmt: str, variant: str | None = None) -> ConvertedConfig:
    """The network of ``fmt`` (before depth/width inference from the checkpoint's shapes)."""
    if fmt not in FORMATS:
        raise ConvertError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    variants = VARIANTS.get(fmt, ())
    if variant and variant not in variants:
        raise ConvertError(
            f"format {fmt!r} has " + (f"variants {variants}" if variants else "no variants") + f", got {variant!r}"
        )
    variant = variant or (variants[0] if variants else "")
    m = METHOD_NAMES[fmt]
    if fmt == "crw":
        return ConvertedConfig(
            m,
            strides=(1, 2, 1, 1),
            pool="max",
            padding_mode="reflect",
            feature_stage="layer3",
            color="rgb",
            preset="crw",
        )
    if fmt == "dul":
        return ConvertedConfig(m, strides=(1, 2, 1, 1), pool="max", feature_stage="layer4", color="rgb", preset="dul")
    if fmt == "stt":
        if variant == "d4":
            return ConvertedConfig(
                m, strides=(1, 1, 1, 1), pool="avg", feature_stage="layer3", color="lab", preset="stt", variant="d4"
            )
        return ConvertedConfig(
            m, strides=(1, 2, 2, 1), pool="none", feature_stage="layer3", color="lab", preset="stt", variant="d8"
        )
    if fmt in ("mast", "liir"):
        # LIIR's backbone is MAST's plus a learned 128 x 128 position embedding added to the stem
        return ConvertedConfig(
            m,
            strides=(1, 2, 1, 1),
            pool="none",
            widths=(64, 128, 256, 256),
            feature_stage="layer4",
            head_channels=64,
            stem_embedding=128 if fmt == "liir" else 0,
            color="lab",
            preset=fmt,
        )
    if fmt == "moco":
        return ConvertedConfig(
            m, depth=50, strides=(1, 2, 2, 1), pool="none", feature_stage="layer3", color="rgb", preset="stt"
        )
    return ConvertedConfig(m, strides=(1, 2, 1, 1), pool="max", feature_stage="layer3", color="rgb", preset="crw")


# ----------------------------------------------------------------------------------------------
# Reading a checkpoint safely
# ----------------------------------------------------------------------------------------------


def _safe_globals() -> list:
    """Data-only globals that published checkpoints carry besides tensors (see the module docstring)."""
    import argparse

    import numpy as np

    items: list = [argparse.Namespace]
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        items += [(scalar, f"{mod}.scalar"), (_reconstruct, f"{mod}._reconstruct")]
    items += [np.dtype, np.ndarray]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        items += [
            getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and isinstance(getattr(dtypes, n), type)
        ]
    return items


def _container_kind(path: Path) -> str | None:
    """``"zip"`` (torch.save's format), ``"pickle"`` (the legacy one: a pickle protocol 2+ header) or
    None, from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return None


def read_checkpoint(path: str | Path) -> Any:
    """The object stored in a published checkpoint (``.pth``, ``.pth.tar``, ``.pt``, ``.tar``, ``.ckpt``,
    ``.bin`` via ``torch.load(weights_only=True)``; ``.safetensors`` via safetensors).

    Raises:
        FileNotFoundError: no such file.
        ConvertError: the file is not a readable checkpoint, or it needs more than tensors and plain
            containers to unpickle (the message names the global it asked for; nothing was executed).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as err:
            raise ConvertError(f"cannot read {path} as safetensors: {err}") from err
    kind = _container_kind(path)
    if kind is None:
        raise ConvertError(
            f"{path} is not a checkpoint: it is neither a PyTorch file (zip archive or pickle) nor "
            "safetensors (its first bytes match none of them; a truncated or damaged download?)"
        )
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        msg = str(err)
        m = re.search(r"(?:Unsupported global|Unsupported operand)[^\n]*", msg)
        why = m.group(0) if m else msg.strip().splitlines()[-1] if msg.strip() else type(err).__name__
        if "weights_only" in msg or "Unsupported" in msg or "pickle" in type(err).__name__.lower():
            raise ConvertError(
                f"refusing to load {path}: it needs more than tensors and plain containers to unpickle ({why}). "
                "tritoncorr reads checkpoints only with torch.load(weights_only=True), which never runs pickled "
                "code. If you trust the file, re-save just its state dict, e.g. "
                "torch.save(torch.load(SRC, weights_only=False)['state_dict'], 'plain.pth'), and convert that."
            ) from err
        raise ConvertError(f"cannot read checkpoint {path}: {why}") from err


CONTAINER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "net", "network", "weights")


def find_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], str, list[tuple[str, str]]]:
    """The tensor state dict inside a checkpoint object.

    Returns ``(state_dict, container, other)``: ``container`` is the key path it was found under
    ("" when ``obj`` is the state dict itself, e.g. ``"model"`` for CRW/DUL, ``"state_dict"`` for MAST,
    LIIR, MoCo, mmcv); ``other`` lists ``(key, type name)`` of the entries that are not tensors
    (optimizer state, epoch, args, ...), which are not converted.
    """
    if not isinstance(obj, Mapping):
        raise ConvertError(f"the checkpoint holds a {type(obj).__name__}, not a state dict or a dict containing one")
    path = ""
    cur: Mapping = obj
    other: list[tuple[str, str]] = []
    for _ in range(3):  # e.g. {"state_dict": {...}} or {"model": {"state_dict": ...}}
        n_tensors = sum(isinstance(v, torch.Tensor) for v in cur.values())
        inner = next((k for k in CONTAINER_KEYS if isinstance(cur.get(k), Mapping) and cur[k]), None)
        if n_tensors or inner is None:
            break
        other += [(f"{path}{k}", type(v).__name__) for k, v in cur.items() if k != inner]
        path = f"{path}{inner}."
        cur = cur[inner]
    sd: dict[str, torch.Tensor] = {}
    for k, v in cur.items():
        if not isinstance(k, str):
            raise ConvertError(f"state dict keys must be strings, got {k!r}")
        if isinstance(v, torch.Tensor):
            sd[k] = v
        else:
            other.append((f"{path}{k}", type(v).__name__))
    if not sd:
        raise ConvertError(
            "no tensors found in the checkpoint (looked at the top level and under "
            f"{CONTAINER_KEYS}); top-level keys: {sorted(map(str, obj))[:12]}"
        )
    return sd, path.rstrip("."), other


# ----------------------------------------------------------------------------------------------
# Formats: detection and key maps
# ----------------------------------------------------------------------------------------------


def _strip_parallel(keys: list[str]) -> str:
    """``"module."`` when every key carries DataParallel/DDP's prefix, else ''."""
    return "module." if keys and all(k.startswith("module.") for k in keys) else ""


def detect_format(keys: list[str]) -> tuple[str, str]:
    """``(format, evidence)`` from the key names (DataParallel ``module.`` already stripped or not).

    Raises:
        ConvertError: no format matches; the message shows some keys.
    """
    ks = [k.removeprefix("module.") for k in keys]
    has = lambda pat: next((k for k in ks if re.search(pat, k)), None)
    rules = (
        ("mast", r"^feature_extraction\.layer\d\.\d+\.left\.0\.weight$", "MAST's ResidualBlock keys ('left.0')"),
        (
            "liir",
            r"^feature_extraction\.(pos_embed1|layer\d\.\d+\.conv1\.weight)$",
            "LIIR's 'feature_extraction.' ResNet_hr keys",
        ),
        ("stt", r"(^|\.)conv1\.conv\.weight$", "mmcv ConvModule keys ('conv1.conv.weight')"),
        ("moco", r"^encoder_q\.", "MoCo's query encoder ('encoder_q.')"),
        ("dul", r"^fast_net\.backbone\.", "DUL's 'fast_net.backbone.'"),
        ("crw", r"^encoder\.model\.", "CRW's 'encoder.model.'"),
        ("torchvision", r"^layer1\.0\.conv1\.weight$", "torchvision ResNet keys at the top level"),
    )
    for fmt, pat, why in rules:
        k = has(pat)
        if k is not None:
            return fmt, f"{why}, e.g. {k!r}"
    sample = ", ".join(sorted(ks)[:8])
    raise ConvertError(
        f"cannot tell the checkpoint's format from its keys ({len(ks)} tensors, e.g. {sample}); "
        f"pass --format one of {FORMATS}"
    )


_TV = re.compile(r"^(conv1\.weight|bn1\.\w+|layer\d\.\d+\.(conv\d\.weight|bn\d\.\w+|downsample\.[01]\.\w+))$")
_MMCV = (
    (re.compile(r"^conv1\.conv\.weight$"), r"conv1.weight"),
    (re.compile(r"^conv1\.bn\.(\w+)$"), r"bn1.\1"),
    (re.compile(r"^(layer\d\.\d+)\.conv(\d)\.conv\.weight$"), r"\1.conv\2.weight"),
    (re.compile(r"^(layer\d\.\d+)\.conv(\d)\.bn\.(\w+)$"), r"\1.bn\2.\3"),
    (re.compile(r"^(layer\d\.\d+)\.downsample\.conv\.weight$"), r"\1.downsample.0.weight"),
    (re.compile(r"^(layer\d\.\d+)\.downsample\.bn\.(\w+)$"), r"\1.downsample.1.\2"),
)
_MAST = (
    (re.compile(r"^conv1\.0\.weight$"), r"conv1.weight"),
    (re.compile(r"^conv1\.1\.(\w+)$"), r"bn1.\1"),
    (re.compile(r"^(layer\d\.\d+)\.left\.0\.weight$"), r"\1.conv1.weight"),
    (re.compile(r"^(layer\d\.\d+)\.left\.1\.(\w+)$"), r"\1.bn1.\2"),
    (re.compile(r"^(layer\d\.\d+)\.left\.3\.weight$"), r"\1.conv2.weight"),
    (re.compile(r"^(layer\d\.\d+)\.left\.4\.(\w+)$"), r"\1.bn2.\2"),
    (re.compile(r"^(layer\d\.\d+)\.shortcut\.0\.weight$"), r"\1.downsample.0.weight"),
    (re.compile(r"^(layer\d\.\d+)\.shortcut\.1\.(\w+)$"), r"\1.downsample.1.\2"),
)
_CRW_WRAPPED = re.compile(r"(conv[12])\.1\.weight$")


@dataclass(frozen=True)
class _Spec:
    prefix: str  # trunk prefix in the source
    layout: str  # "tv", "mmcv" or "mast"
    extra: tuple[tuple[str, str], ...] = ()  # exact source key (after prefix stripping) or "prefix*" -> our key/prefix
    drops: tuple[tuple[str, str], ...] = ()  # source key prefix -> reason


_SPECS: dict[str, _Spec] = {
    "crw": _Spec("encoder.model.", "tv", drops=(("selfsim_fc.", "CRW's node projection head (training only)"),)),
    "dul": _Spec(
        "fast_net.backbone.",
        "tv",
        drops=(("fast_net.emb_q.", "DUL's 128-d key MLP (training only; DUL evaluates res4 = layer4)"),),
    ),
    "stt": _Spec(
        "backbone.",
        "mmcv",
        drops=(("backbone_t.", "STT's step-1 teacher (training only)"), ("iteration", "STT's iteration counter")),
    ),
    "mast": _Spec(
        "feature_extraction.",
        "mast",
        extra=(("post_convolution.*", "head.*"),),
        drops=(("colorizer.", "MAST's colorizer buffers"),),
    ),
    "liir": _Spec(
        "feature_extraction.",
        "tv",
        extra=(("feature_extraction.pos_embed1", "pos_embed"), ("post_convolution.*", "head.*")),
        drops=(
            ("conv_semantic_k.", "LIIR's momentum stride-8 head (training only)"),
            ("conv_semantic.", "LIIR's stride-8 semantic head (training only)"),
            ("colorizer.", "LIIR's memory queue buffers (training only)"),
        ),
    ),
    "moco": _Spec(
        "encoder_q.",
        "tv",
        drops=(
            ("encoder_q.fc.", "MoCo's projection MLP (training only)"),
            ("encoder_k.", "MoCo's momentum key encoder (training only)"),
            ("queue", "MoCo's negative-key queue"),
        ),
    ),
    "torchvision": _Spec("", "tv", drops=(("fc.", "the ImageNet classifier"),)),
}


def _map_trunk(rest: str, layout: str) -> str | None:
    if layout == "tv":
        return rest if _TV.match(rest) else None
    for pat, rep in _MMCV if layout == "mmcv" else _MAST:
        if pat.match(rest):
            return pat.sub(rep, rest)
    return None


@dataclass
class ConvertReport:
    """What :func:`convert_state_dict` did (every source tensor is in exactly one of mapped / renamed / dropped / unmapped).

    Attributes:
        format: the format used; ``detected``: whether it was detected (``evidence`` says from what).
        container: where the state dict sat in the file ("" = top level); ``stripped``: the
            DataParallel prefix removed from every key ("module." or "").
        mapped: ``(source key, our key)`` where only the wrapper prefix changed.
        renamed: ``(source key, our key)`` where the layout differs (mmcv / MAST blocks, heads, ...).
        dropped: ``(source key, reason)`` left out on purpose.
        unmapped: source keys that no rule covers (also left out).
        filled: our keys the source lacks that were set to defaults (only ``num_batches_tracked``).
        other: ``(key, type)`` of non-tensor entries of the file (optimizer, epoch, args, ...).
        config: the network written into the output's metadata.
    """

    format: str
    detected: bool
    evidence: str
    container: str = ""
    stripped: str = ""
    mapped: list[tuple[str, str]] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)
    config: ConvertedConfig | None = None
    source: str = ""
    destination: str = ""

    def summary(self) -> str:
        how = "detected" if self.detected else "given"
        parts = [
            f"format {self.format} ({how})",
            f"{len(self.mapped)} mapped",
            f"{len(self.renamed)} renamed",
            f"{len(self.dropped)} dropped",
        ]
        if self.unmapped:
            parts.append(f"{len(self.unmapped)} UNMAPPED")
        if self.filled:
            parts.append(f"{len(self.filled)} filled with defaults")
        return ", ".join(parts)

    def dropped_by_reason(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for k, why in self.dropped:
            out.setdefault(why, []).append(k)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["config"] = dataclasses.asdict(self.config) if self.config is not None else None
        return d


def _infer_arch(sd: Mapping[str, torch.Tensor], cfg: ConvertedConfig) -> ConvertedConfig:
    """Depth, widths, embedding and head sizes from the mapped (our-layout) tensors."""
    blocks: dict[int, set[int]] = {}
    bottleneck = False
    for k in sd:
        m = re.match(r"^backbone\.layer(\d)\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
            bottleneck |= k.endswith(".conv3.weight")
    counts = tuple(len(blocks[i]) for i in sorted(blocks))
    if not counts or sorted(blocks) != list(range(1, len(counts) + 1)):
        raise ConvertError(f"the checkpoint's ResNet stages are incomplete (found layers {sorted(blocks)})")
    kind = "bottleneck" if bottleneck else "basic"
    depth = next((d for d, (kd, nb) in DEPTHS.items() if kd == kind and tuple(nb[: len(counts)]) == counts), None)
    if depth is None:
        raise ConvertError(
            f"unsupported ResNet: {kind} blocks per stage {counts} (supported: "
            + ", ".join(f"ResNet-{d} {kd} {nb}" for d, (kd, nb) in DEPTHS.items())
            + ")"
        )
    widths = list(cfg.widths)
    for i in range(1, len(counts) + 1):
        w = sd.get(f"backbone.layer{i}.0.conv1.weight")
        if w is not None:
            widths[i - 1] = int(w.shape[0])
    changes: dict[str, Any] = dict(depth=depth, widths=tuple(widths))
    if "pos_embed" in sd:
        pe = sd["pos_embed"]
        if pe.dim() != 4 or pe.shape[0] != 1 or pe.shape[1] != 64 or pe.shape[2] != pe.shape[3]:
            raise ConvertError(f"stem position embedding of shape {tuple(pe.shape)}: expected (1, 64, G, G)")
        changes["stem_embedding"] = int(pe.shape[2])
    elif cfg.stem_embedding:
        changes["stem_embedding"] = 0  # (e.g. a LIIR-layout file without pos_embed1: no embedding)
    if "head.weight" in sd:
        hw = sd["head.weight"]
        changes["head_channels"], changes["head_kernel"] = int(hw.shape[0]), int(hw.shape[-1])
    return dataclasses.replace(cfg, **changes)


# CRW's make_encoder (videowalk code/utils): args.model_type "scratch" is ResNet-18 with every padded
# conv in reflect mode (the released model), "scratch_zeropad" the same network with zero padding.
CRW_PADDING = {"scratch": "reflect", "scratch_zeropad": "zeros"}


def crw_padding(obj: Any) -> str:
    """The padding mode of a CRW checkpoint: from its recorded ``args.model_type`` (an
    ``argparse.Namespace`` or a dict), ``"reflect"`` when it records none (the released model)."""
    args = obj.get("args") if isinstance(obj, Mapping) else None
    model_type = args.get("model_type") if isinstance(args, Mapping) else getattr(args, "model_type", None)
    if model_type is None:
        return CRW_PADDING["scratch"]
    if model_type not in CRW_PADDING:
        raise ConvertError(
            f"the CRW checkpoint records args.model_type={model_type!r}; tritoncorr converts {', '.join(CRW_PADDING)}"
        )
    return CRW_PADDING[model_type]


def convert_state_dict(obj: Any, fmt: str = "auto", variant: str | None = None) -> tuple[ConvertedModel, ConvertReport]:
    """Map a published checkpoint object (or a plain state dict) to a :class:`ConvertedModel`.

    Args:
        obj: what :func:`read_checkpoint` returned, or a state dict.
        fmt: ``"auto"`` (detect from the keys) or one of ``FORMATS``.
        variant: a variant of the format (``VARIANTS``; STT: ``"d8"`` default or ``"d4"``).

    Returns:
        ``(model, report)``: the model in eval mode with every weight loaded.

    Raises:
        ConvertError: unknown format, unsupported architecture, or weights the model needs that the
            checkpoint lacks (listed), or shape mismatches.
    """
    sd, container, other = find_state_dict(obj)
    keys = list(sd)
    stripped = _strip_parallel(keys)
    if fmt == "auto":
        fmt, evidence = detect_format(keys)
        detected = True
    elif fmt in FORMATS:
        detected, evidence = False, "given"
    else:
        raise ConvertError(f"unknown format {fmt!r}; choose auto or one of {FORMATS}")
    base = default_config(fmt, variant)  # a bad variant fails here, before any mapping
    if fmt == "crw":
        base = dataclasses.replace(base, padding_mode=crw_padding(obj))
    spec = _SPECS[fmt]
    report = ConvertReport(fmt, detected, evidence, container, stripped, other=other)
    names = {k: k[len(stripped) :] for k in keys}
    prefix = spec.prefix
    if prefix and not any(n.startswith(prefix) for n in names.values()):
        prefix = ""  # e.g. a bare backbone state dict in the format's layout

    cand: dict[str, tuple[str, str]] = {}  # our key -> (source key, "mapped" | "renamed")
    for src, name in names.items():
        drop = next((why for p, why in spec.drops if name.startswith(p)), None)
        if drop is not None:
            report.dropped.append((src, drop))
            continue
        target, kind = None, "mapped"
        for pat, rep in spec.extra:
            if pat.endswith("*") and name.startswith(pat[:-1]):
                target, kind = rep[:-1] + name[len(pat) - 1 :], "renamed"
            elif name == pat:
                target, kind = rep, "renamed"
        if target is None and name.startswith(prefix):
            rest = name[len(prefix) :]
            if fmt == "crw" and _CRW_WRAPPED.search(rest):
                rest, kind = _CRW_WRAPPED.sub(r"\1.weight", rest), "renamed"
            ours = _map_trunk(rest, spec.layout)
            if ours is not None:
                kind = "mapped" if (ours == rest and kind == "mapped") else "renamed"
                target = "backbone." + ours
        if target is None:
            report.unmapped.append(src)
            continue
        if target in cand:
            raise ConvertError(f"two checkpoint keys map to {target!r}: {cand[target][0]!r} and {src!r}")
        cand[target] = (src, kind)

    if not any(t.startswith("backbone.") for t in cand):
        try:
            guess = f"; its keys look like {detect_format(keys)[0]!r}"
        except ConvertError:
            guess = ""
        raise ConvertError(
            f"no key of the checkpoint fits the {fmt} layout (e.g. {', '.join(report.unmapped[:4])})"
            f"{guess}: check --format"
        )
    cfg = _infer_arch({t: sd[s] for t, (s, _) in cand.items()}, base)
    model = cfg.build().eval()
    model_sd = model.state_dict()
    last = STAGES.index(cfg.feature_stage)
    to_load: dict[str, torch.Tensor] = {}
    mismatch = []
    for target, (src, kind) in cand.items():
        m = re.match(r"^backbone\.layer(\d)\.", target)
        if m and int(m.group(1)) - 1 > last:
            report.dropped.append(
                (
                    src,
                    f"layer{m.group(1)}: after the feature stage {cfg.feature_stage} ({fmt}'s features do not use it)",
                )
            )
            continue
        if target not in model_sd:
            report.unmapped.append(src)
            continue
        if tuple(sd[src].shape) != tuple(model_sd[target].shape):
            mismatch.append(f"{src} {tuple(sd[src].shape)} -> {target} {tuple(model_sd[target].shape)}")
            continue
        to_load[target] = sd[src]
        (report.mapped if kind == "mapped" else report.renamed).append((src, target))
    if mismatch:
        raise ConvertError(f"{len(mismatch)} shape mismatches (format {fmt}): " + "; ".join(mismatch[:6]))
    missing = [k for k in model_sd if k not in to_load]
    report.filled = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing:
        raise ConvertError(
            f"the checkpoint lacks {len(missing)} weights that the {fmt} network needs "
            f"({cfg.describe()}): {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else "")
        )
    with torch.no_grad():
        for k, v in to_load.items():
            model_sd[k].copy_(v.to(model_sd[k].dtype))
        for k in report.filled:
            model_sd[k].zero_()
    report.config = cfg
    report.unmapped.sort()
    return model, report


def convert_checkpoint(
    src: str | Path, dst: str | Path, fmt: str = "auto", variant: str | None = None
) -> ConvertReport:
    """Read ``src`` (published checkpoint), convert it (:func:`convert_state_dict`) and write ``dst``
    (``.safetensors`` with the method / colour / preset / network metadata). Returns the report."""
    from safetensors.torch import save_file

    from tritoncorr.engine.method import method_metadata

    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise ConvertError(f"--to must be a .safetensors file, got {dst}")
    model, report = convert_state_dict(read_checkpoint(src), fmt, variant)
    meta = method_metadata(model)
    meta["tritoncorr.converted_from"] = report.format
    meta["tritoncorr.source"] = src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = dst.with_name(dst.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(dst)
    report.source, report.destination = str(src), str(dst)
    return report

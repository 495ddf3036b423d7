"""``tritoncorr convert`` (tritoncorr/models/convert.py).

For every format a checkpoint is built the way the official code saves it (container, wrapper
prefixes, heads, teachers, queues, optimizer state, args), from a TRANSCRIPTION of the official model
definition written here independently of tritoncorr's ResNet (torchvision's ResNet as CRW/DUL/MoCo
subclass and modify it, MAST's ``submodule.ResNet18``, LIIR's ``ResNet_hr``, STT's mmcv ResNet with
``ConvModule`` blocks). The converted file is loaded back through
:func:`tritoncorr.methods.inference.load_feature_model` (what ``eval davis`` and ``propagate`` do) and
its features must equal the transcription's inference forward on the same input. BatchNorm statistics
are randomised so that a wrong mapping cannot pass.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_runs import run_cli
from torch import nn

from tritoncorr.methods.inference import load_feature_model, read_metadata
from tritoncorr.models.convert import (
    FORMATS,
    ConvertError,
    convert_checkpoint,
    convert_state_dict,
    detect_format,
    read_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ----------------------------------------------------------------------------------------------
# Transcriptions of the official networks
# ----------------------------------------------------------------------------------------------


class TVBasic(nn.Module):
    """torchvision.models.resnet.BasicBlock."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class TVBottleneck(nn.Module):
    """torchvision.models.resnet.Bottleneck (stride in the 3x3 conv)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


class TVResNet(nn.Module):
    """torchvision.models.resnet.ResNet (the classifier included), with a forward that stops at a stage."""

    def __init__(self, block, layers, widths=(64, 128, 256, 512), strides=(1, 2, 2, 2)):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (n, w, s) in enumerate(zip(layers, widths, strides)):
            setattr(self, f"layer{i + 1}", self._make(block, w, n, s))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3] * block.expansion, 1000)

    def _make(self, block, planes, n, stride):
        ds = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            ds = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, ds)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward_to(self, x, stage, pool=True):
        x = self.relu(self.bn1(self.conv1(x)))
        if pool and self.maxpool is not None:
            x = self.maxpool(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            if f"layer{i}" == stage:
                return x


def tv_resnet(depth: int) -> TVResNet:
    if depth == 18:
        return TVResNet(TVBasic, (2, 2, 2, 2))
    return TVResNet(TVBottleneck, (3, 4, 6, 3))


def crw_modify(net: TVResNet, padding: str = "") -> TVResNet:
    """videowalk code/resnet.py ResNet.modify: every conv of layer3/layer4 stride 1; padding mode on
    every conv with padding > 0; fc/avgpool removed."""
    for name in ("layer3", "layer4"):
        for m in getattr(net, name).modules():
            if isinstance(m, nn.Conv2d):
                m.stride = (1, 1)
    if padding:
        for m in net.modules():
            if isinstance(m, nn.Conv2d) and sum(m.padding) > 0:
                m.padding_mode = padding
    return net


class MASTBlock(nn.Module):
    """MAST models/submodule.py ResidualBlock."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.left = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.left(x) + self.shortcut(x))


class MASTResNet18(nn.Module):
    """MAST models/submodule.py ResNet18(in_ch=3)."""

    def __init__(self):
        super().__init__()
        self.inchannel = 64
        self.conv1 = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.layer1 = self._make(64, 1)
        self.layer2 = self._make(128, 2)
        self.layer3 = self._make(256, 1)
        self.layer4 = self._make(256, 1)

    def _make(self, c, stride):
        layers = []
        for s in (stride, 1):
            layers.append(MASTBlock(self.inchannel, c, s))
            self.inchannel = c
        return nn.Sequential(*layers)

    def forward(self, x):
        return self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))


class MASTModel(nn.Module):
    """MAST models/mast.py MAST: feature_extraction + post_convolution (the colorizer has no weights)."""

    def __init__(self):
        super().__init__()
        self.feature_extraction = MASTResNet18()
        self.post_convolution = nn.Conv2d(256, 64, 3, 1, 1)

    def features(self, x):
        return self.post_convolution(self.feature_extraction(x))


class LIIRResNetHR(nn.Module):
    """LIIR_pytorch models/resnet.py ResNet_hr (BasicBlock, SyncBatchNorm -> BatchNorm here)."""

    def __init__(self):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.pos_embed1 = nn.Parameter(torch.zeros(1, 64, 128, 128))
        self.layer1 = TVResNet._make(self, TVBasic, 64, 2, 1)
        self.layer2 = TVResNet._make(self, TVBasic, 128, 2, 2)
        self.layer3 = TVResNet._make(self, TVBasic, 256, 2, 1)
        self.layer4 = TVResNet._make(self, TVBasic, 256, 2, 1)

    def forward(self, x, ape=False):
        x = self.relu(self.bn1(self.conv1(x)))
        pe = F.interpolate(self.pos_embed1, size=(x.size(2), x.size(3)), mode="bicubic")
        if ape:
            x = x + pe
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class LIIRModel(nn.Module):
    """LIIR_pytorch models/mast_momen.py MAST: inference features post_convolution(feature_extraction(x, ape=True))."""

    def __init__(self):
        super().__init__()
        self.feature_extraction = LIIRResNetHR()
        self.post_convolution = nn.Conv2d(256, 64, 3, 1, 1)
        self.conv_semantic = nn.Conv2d(256, 128, 3, 2, 1)
        self.conv_semantic_k = nn.Conv2d(256, 128, 3, 2, 1)

    def features(self, x):
        return self.post_convolution(self.feature_extraction(x, ape=True))


class ConvModule(nn.Module):
    """mmcv.cnn.ConvModule with conv -> norm ('bn') -> optional ReLU."""

    def __init__(self, cin, cout, k, stride=1, padding=0, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU(inplace=True) if act else None

    def forward(self, x):
        x = self.bn(self.conv(x))
        return x if self.activate is None else self.activate(x)


class MMBasic(nn.Module):
    """Spa-then-Temp vcl/models/backbones/resnet.py BasicBlock."""

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = ConvModule(inplanes, planes, 3, stride, 1)
        self.conv2 = ConvModule(planes, planes, 3, 1, 1, act=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        idt = x if self.downsample is None else self.downsample(x)
        return self.relu(out + idt)


class MMResNet(nn.Module):
    """Spa-then-Temp's mmcv ResNet (depth 18): ``conv1`` ConvModule stem, ``pool`` by ``pool_type``,
    ``make_res_layer`` stages, forward returning the ``out_indices`` stage."""

    def __init__(self, strides=(1, 2, 2, 1), out_index=2, pool_type="none"):
        super().__init__()
        self.conv1 = ConvModule(3, 64, 7, 2, 3)
        self.pool = {"max": nn.MaxPool2d(3, 2, 1), "mean": nn.AvgPool2d(3, 2, 1)}.get(pool_type)
        self.out_index = out_index
        inplanes = 64
        for i, s in enumerate(strides):
            planes = 64 * 2**i
            ds = ConvModule(inplanes, planes, 1, s, act=False) if (s != 1 or inplanes != planes) else None
            setattr(self, f"layer{i + 1}", nn.Sequential(MMBasic(inplanes, planes, s, ds), MMBasic(planes, planes)))
            inplanes = planes

    def forward(self, x):
        x = self.conv1(x)
        if self.pool is not None:
            x = self.pool(x)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            if i == self.out_index:
                return x


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights AND BatchNorm statistics (so a wrong mapping changes the features)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for name, p in module.named_parameters():
            if "pos_embed" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module.eval()


def prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


def _input(seed: int = 1, h: int = 44, w: int = 60) -> torch.Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _convert_and_load(tmp_path, ckpt_obj, fmt="auto", variant=None, name="src.pth"):
    src = tmp_path / name
    torch.save(ckpt_obj, src)
    dst = tmp_path / "converted.safetensors"
    report = convert_checkpoint(src, dst, fmt, variant)
    return report, load_feature_model(dst), dst


def _assert_features(fmodel, reference, x):
    with torch.no_grad():
        got = fmodel.features(x)
        want = reference(x)
    assert got.shape == want.shape, (got.shape, want.shape)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# One test per format
# ----------------------------------------------------------------------------------------------


def test_crw(tmp_path):
    # make_encoder('scratch'): resnet18, modify(padding='reflect'), remove layer4 (test default)
    enc = randomize(crw_modify(tv_resnet(18), padding="reflect"))
    sd = prefixed({k: v for k, v in enc.state_dict().items() if not k.startswith("fc.")}, "encoder.model.")
    # the released checkpoint wraps some convs as convN.1.weight (test.py renames them back)
    for k in [k for k in sd if k.endswith("layer2.0.conv1.weight") or k.endswith("layer1.1.conv2.weight")]:
        sd[k.replace(".weight", ".1.weight")] = sd.pop(k)
    sd["selfsim_fc.0.weight"] = torch.randn(128, 512)
    sd["selfsim_fc.0.bias"] = torch.randn(128)
    ckpt = {
        "model": sd,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
        "epoch": 9,
        "args": argparse.Namespace(model_type="scratch", remove_layers=[], temp=0.05),
    }
    report, fm, dst = _convert_and_load(tmp_path, ckpt)
    assert (report.format, report.detected, report.container) == ("crw", True, "model")
    assert (fm.method, fm.preset, fm.color) == ("crw", "crw", "rgb")
    assert report.config.padding_mode == "reflect" and report.config.feature_stage == "layer3"
    renamed = dict(report.renamed)
    assert renamed["encoder.model.layer2.0.conv1.1.weight"] == "backbone.layer2.0.conv1.weight"
    dropped = dict(report.dropped)
    assert "selfsim_fc.0.weight" in dropped and "encoder.model.layer4.0.conv1.weight" in dropped
    assert not report.unmapped
    assert {k for k, _ in report.other} >= {"optimizer", "epoch", "args"}
    _assert_features(fm, lambda x: enc.forward_to(x, "layer3"), _input())
    # the padding mode matters: the same weights with zero padding give other features
    zero = crw_modify(tv_resnet(18))
    zero.load_state_dict(enc.state_dict())
    with torch.no_grad():
        assert not torch.allclose(fm.features(_input()), zero.eval().forward_to(_input(), "layer3"), atol=1e-3)
    meta = read_metadata(dst)
    assert meta["tritoncorr.method"] == "crw" and meta["tritoncorr.preset"] == "crw"
    assert meta["tritoncorr.converted_from"] == "crw"


@pytest.mark.parametrize("model_type, padding", [("scratch", "reflect"), ("scratch_zeropad", "zeros")])
def test_crw_model_type_decides_the_padding(tmp_path, model_type, padding):
    """CRW's make_encoder builds 'scratch' with reflect padding and 'scratch_zeropad' with zero padding;
    the converted features equal those of CRW's encoder built the way the checkpoint records."""
    enc = randomize(crw_modify(tv_resnet(18), padding="reflect" if padding == "reflect" else ""), seed=21)
    other = crw_modify(tv_resnet(18), padding="" if padding == "reflect" else "reflect")
    other.load_state_dict(enc.state_dict())
    sd = prefixed({k: v for k, v in enc.state_dict().items() if not k.startswith("fc.")}, "encoder.model.")
    ckpt = {"model": sd, "args": argparse.Namespace(model_type=model_type, remove_layers=[])}
    report, fm, _ = _convert_and_load(tmp_path, ckpt)
    assert report.config.padding_mode == padding
    _assert_features(fm, lambda x: enc.forward_to(x, "layer3"), _input())
    with torch.no_grad():
        assert not torch.allclose(fm.features(_input()), other.eval().forward_to(_input(), "layer3"), atol=1e-3)
    # a dict instead of a Namespace records it too; an unknown model type is refused by name
    ckpt["args"] = {"model_type": model_type}
    assert _convert_and_load(tmp_path, ckpt)[0].config.padding_mode == padding
    ckpt["args"] = argparse.Namespace(model_type="timecycle")
    with pytest.raises(ConvertError, match="model_type='timecycle'"):
        _convert_and_load(tmp_path, ckpt)


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    """Random bytes are not 'a pickle that needs trust': the message says it is no checkpoint at all."""
    src = tmp_path / "weights.pth"
    src.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(ConvertError, match="is not a checkpoint") as info:
        convert_checkpoint(src, tmp_path / "out.safetensors")
    assert "trust" not in str(info.value) and str(src) in str(info.value)
    r = run_cli("convert", src, "--to", tmp_path / "out.safetensors", exit_code=2)
    assert "is not a checkpoint" in r.output and "Traceback" not in r.output


def test_dul(tmp_path):
    # models/resnet18.py: modify() (layer3/4 stride 1), zero padding; Net.backbone + emb_q MLP; Framework.fast_net
    bb = randomize(crw_modify(tv_resnet(18)), seed=2)
    sd = prefixed({k: v for k, v in bb.state_dict().items() if not k.startswith("fc.")}, "module.fast_net.backbone.")
    head = nn.Sequential()
    head.add_module("conv1", nn.Conv2d(512, 512, 1))
    head.add_module("bn1", nn.BatchNorm2d(512))
    head.add_module("conv2", nn.Conv2d(512, 128, 1))
    sd.update(prefixed(head.state_dict(), "module.fast_net.emb_q."))
    ckpt = {"model": sd, "opt": {"state": {}, "param_groups": []}, "score": np.float64(0.674), "epoch": 41}
    report, fm, _ = _convert_and_load(tmp_path, ckpt)
    assert report.format == "dul" and report.stripped == "module."
    assert (fm.method, fm.preset, fm.color) == ("dul", "dul", "rgb")
    assert len(report.mapped) == sum(1 for k in sd if "backbone" in k)
    assert all(why.startswith("DUL's 128-d key MLP") for _, why in report.dropped)
    _assert_features(fm, lambda x: bb.forward_to(x, "layer4"), _input(3))


@pytest.mark.parametrize("variant", ["d8", "d4"])
def test_stt(tmp_path, variant):
    # configs/test/res18_d8.py: strides (1, 2, 2, 1), out_indices (2,), pool none;
    # res18_d4.py: strides (1, 1, 1, 1), pool 'mean'. The checkpoint is the training Framework's
    # (student strides (1, 2, 2, 4) -- the weights do not depend on strides) with its teacher.
    train_student = randomize(MMResNet(strides=(1, 2, 2, 4)), seed=4)
    if variant == "d8":
        test_net = MMResNet(strides=(1, 2, 2, 1), pool_type="none")
    else:
        test_net = MMResNet(strides=(1, 1, 1, 1), pool_type="mean")
    test_net.load_state_dict(train_student.state_dict())
    test_net.eval()
    teacher = MMResNet(strides=(1, 2, 2, 2), pool_type="max")
    sd = prefixed(train_student.state_dict(), "backbone.")
    sd.update(prefixed(teacher.state_dict(), "backbone_t."))
    sd["iteration"] = torch.tensor(1000.0)
    ckpt = {
        "meta": {"epoch": 800, "iter": 100, "mmcv_version": "1.3.18", "config": "model = dict(...)"},
        "state_dict": sd,
        "optimizer": {"backbone": {"state": {}, "param_groups": []}},
    }
    report, fm, _ = _convert_and_load(tmp_path, ckpt, variant=None if variant == "d8" else variant)
    assert report.format == "stt" and report.config.variant == variant
    assert (fm.method, fm.preset, fm.color) == ("stt", "stt", "lab")
    assert (
        dict(report.renamed)["backbone.layer2.0.downsample.bn.running_var"]
        == "backbone.layer2.0.downsample.1.running_var"
    )
    assert dict(report.renamed)["backbone.conv1.bn.weight"] == "backbone.bn1.weight"
    assert not report.unmapped
    _assert_features(fm, test_net, _input(5))


def test_mast(tmp_path):
    net = randomize(MASTModel(), seed=6)
    ckpt = {"epoch": 12, "state_dict": prefixed(net.state_dict(), "module.")}
    report, fm, _ = _convert_and_load(tmp_path, ckpt, name="checkpoint.pt")
    assert report.format == "mast"
    assert (fm.method, fm.preset, fm.color) == ("mast", "mast", "lab")
    assert report.config.widths == (64, 128, 256, 256) and report.config.head_channels == 64
    assert (
        dict(report.renamed)["module.feature_extraction.layer2.0.shortcut.1.running_mean"]
        == "backbone.layer2.0.downsample.1.running_mean"
    )
    assert dict(report.renamed)["module.post_convolution.bias"] == "head.bias"
    assert not report.unmapped and not report.dropped
    _assert_features(fm, net.features, _input(7))


def test_liir(tmp_path):
    net = randomize(LIIRModel(), seed=8)
    sd = prefixed(net.state_dict(), "module.")
    sd["module.colorizer.feats_queue"] = torch.zeros(12, 128, 32, 32)
    sd["module.colorizer.refs_queue"] = torch.zeros(12)
    sd["module.colorizer.flag"] = torch.zeros(1)
    report, fm, _ = _convert_and_load(tmp_path, {"epoch": 3, "state_dict": sd})
    assert report.format == "liir"
    assert (fm.method, fm.preset, fm.color) == ("liir", "liir", "lab")
    assert report.config.stem_embedding == 128
    assert dict(report.renamed)["module.feature_extraction.pos_embed1"] == "pos_embed"
    reasons = report.dropped_by_reason()
    assert any("semantic" in r for r in reasons) and any("queue" in r for r in reasons)
    assert not report.unmapped
    _assert_features(fm, net.features, _input(9))
    # the stem embedding is part of the features (a model without it differs)
    with torch.no_grad():
        plain = net.post_convolution(net.feature_extraction(_input(9), ape=False))
        assert not torch.allclose(fm.features(_input(9)), plain, atol=1e-3)


def test_moco_resnet50(tmp_path):
    q = randomize(tv_resnet(50), seed=10)
    mlp = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 128))
    sd = prefixed({k: v for k, v in q.state_dict().items() if not k.startswith("fc.")}, "module.encoder_q.")
    sd.update(prefixed(mlp.state_dict(), "module.encoder_q.fc."))
    sd.update({k.replace("encoder_q", "encoder_k"): v for k, v in sd.items()})
    sd["module.queue"] = torch.randn(128, 64)
    sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    ckpt = {"epoch": 800, "arch": "resnet50", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}
    report, fm, _ = _convert_and_load(tmp_path, ckpt, name="moco_v2_800ep_pretrain.pth.tar")
    assert report.format == "moco" and report.config.depth == 50
    assert (fm.method, fm.preset, fm.color) == ("moco", "stt", "rgb")
    reasons = report.dropped_by_reason()
    assert any("momentum key encoder" in r for r in reasons) and any("projection MLP" in r for r in reasons)
    # STT's d8 test of a MoCo teacher: no stem pool, strides (1, 2, 2, 1), layer3
    _assert_features(fm, lambda x: q.forward_to(x, "layer3", pool=False), _input(11, 32, 40))


def test_torchvision_resnet18_old_file_without_num_batches_tracked(tmp_path):
    tv = randomize(tv_resnet(18), seed=12)
    sd = {k: v for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked")}
    report, fm, _ = _convert_and_load(tmp_path, sd, name="resnet18-5c106cde.pth")
    assert report.format == "torchvision" and report.container == ""
    assert (fm.method, fm.preset, fm.color) == ("torchvision", "crw", "rgb")
    assert report.filled and all(k.endswith("num_batches_tracked") for k in report.filled)
    assert {"fc.weight", "fc.bias"} <= {k for k, _ in report.dropped}
    ref = crw_modify(tv_resnet(18))
    ref.load_state_dict(tv.state_dict())
    _assert_features(fm, lambda x: ref.eval().forward_to(x, "layer3"), _input(13))


# ----------------------------------------------------------------------------------------------
# Safety, detection, the report
# ----------------------------------------------------------------------------------------------


class _Evil:
    """A pickle that would run code (touch a file) when unpickled."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_pickle_that_would_execute_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(64, 3, 7, 7)}, "payload": _Evil(marker)}, src)
    with pytest.raises(ConvertError, match="refusing to load"):
        read_checkpoint(src)
    with pytest.raises(ConvertError, match="weights_only"):
        convert_checkpoint(src, tmp_path / "out.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_every_unmapped_key_is_reported(tmp_path):
    bb = randomize(crw_modify(tv_resnet(18)), seed=14)
    sd = prefixed({k: v for k, v in bb.state_dict().items() if not k.startswith("fc.")}, "module.fast_net.backbone.")
    extra = ["module.fast_net.new_head.weight", "module.fast_net.backbone.layer2.0.se.fc.weight", "module.temperature"]
    for k in extra:
        sd[k] = torch.zeros(3)
    _, report = convert_state_dict({"model": sd})
    assert sorted(report.unmapped) == sorted(extra)
    assert "3 UNMAPPED" in report.summary()
    n = len(report.mapped) + len(report.renamed) + len(report.dropped) + len(report.unmapped)
    assert n == len(sd)


def test_cli_prints_the_report(tmp_path):
    bb = randomize(crw_modify(tv_resnet(18)), seed=15)
    sd = prefixed({k: v for k, v in bb.state_dict().items() if not k.startswith("fc.")}, "module.fast_net.backbone.")
    sd["module.fast_net.mystery.weight"] = torch.zeros(2)
    torch.save({"model": sd}, tmp_path / "dul.pth")
    out = tmp_path / "dul.safetensors"
    res = run_cli("convert", tmp_path / "dul.pth", "--to", out, "--report", tmp_path / "r.json", env={"COLUMNS": "200"})
    assert "format: dul" in res.output and "module.fast_net.mystery.weight" in res.output
    assert out.is_file() and (tmp_path / "r.json").is_file()
    bad = run_cli("convert", tmp_path / "dul.pth", "--to", out, "--format", "mast", exit_code=2)
    assert "fits the mast layout" in bad.output and "look like 'dul'" in bad.output
    missing = run_cli("convert", tmp_path / "nope.pth", "--to", out, exit_code=2)
    assert "does not exist" in missing.output


def test_detection_and_errors():
    assert detect_format(["module.encoder_q.conv1.weight"])[0] == "moco"
    assert detect_format(["backbone.layer1.0.conv1.conv.weight", "backbone.conv1.conv.weight"])[0] == "stt"
    assert detect_format(["conv1.weight", "layer1.0.conv1.weight", "fc.weight"])[0] == "torchvision"
    with pytest.raises(ConvertError, match="cannot tell"):
        detect_format(["foo.bar"])
    with pytest.raises(ConvertError, match="variants"):
        convert_state_dict({"conv1.weight": torch.zeros(1)}, "stt", "d16")
    with pytest.raises(ConvertError, match="not a state dict"):
        convert_state_dict([torch.zeros(1)])
    assert set(FORMATS) == {"crw", "dul", "stt", "mast", "liir", "moco", "torchvision"}

"""Backbones (tritoncorr/models/resnet.py) and heads (tritoncorr/models/heads.py): output strides and
shapes of the configurations the methods use, channel counts, torchvision key layout, reflect padding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tritoncorr.models.heads import ConvHead, MLPHead
from tritoncorr.models.resnet import ResNet, dul_backbone, resnet18, resnet34, resnet50

# torchvision.models.resnet18().state_dict() keys without fc.weight / fc.bias (122 - 2), in order
TORCHVISION_RESNET18_KEYS = [
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "layer1.0.conv1.weight",
    "layer1.0.bn1.weight",
    "layer1.0.bn1.bias",
    "layer1.0.bn1.running_mean",
    "layer1.0.bn1.running_var",
    "layer1.0.bn1.num_batches_tracked",
    "layer1.0.conv2.weight",
    "layer1.0.bn2.weight",
    "layer1.0.bn2.bias",
    "layer1.0.bn2.running_mean",
    "layer1.0.bn2.running_var",
    "layer1.0.bn2.num_batches_tracked",
    "layer1.1.conv1.weight",
    "layer1.1.bn1.weight",
    "layer1.1.bn1.bias",
    "layer1.1.bn1.running_mean",
    "layer1.1.bn1.running_var",
    "layer1.1.bn1.num_batches_tracked",
    "layer1.1.conv2.weight",
    "layer1.1.bn2.weight",
    "layer1.1.bn2.bias",
    "layer1.1.bn2.running_mean",
    "layer1.1.bn2.running_var",
    "layer1.1.bn2.num_batches_tracked",
    "layer2.0.conv1.weight",
    "layer2.0.bn1.weight",
    "layer2.0.bn1.bias",
    "layer2.0.bn1.running_mean",
    "layer2.0.bn1.running_var",
    "layer2.0.bn1.num_batches_tracked",
    "layer2.0.conv2.weight",
    "layer2.0.bn2.weight",
    "layer2.0.bn2.bias",
    "layer2.0.bn2.running_mean",
    "layer2.0.bn2.running_var",
    "layer2.0.bn2.num_batches_tracked",
    "layer2.0.downsample.0.weight",
    "layer2.0.downsample.1.weight",
    "layer2.0.downsample.1.bias",
    "layer2.0.downsample.1.running_mean",
    "layer2.0.downsample.1.running_var",
    "layer2.0.downsample.1.num_batches_tracked",
    "layer2.1.conv1.weight",
    "layer2.1.bn1.weight",
    "layer2.1.bn1.bias",
    "layer2.1.bn1.running_mean",
    "layer2.1.bn1.running_var",
    "layer2.1.bn1.num_batches_tracked",
    "layer2.1.conv2.weight",
    "layer2.1.bn2.weight",
    "layer2.1.bn2.bias",
    "layer2.1.bn2.running_mean",
    "layer2.1.bn2.running_var",
    "layer2.1.bn2.num_batches_tracked",
    "layer3.0.conv1.weight",
    "layer3.0.bn1.weight",
    "layer3.0.bn1.bias",
    "layer3.0.bn1.running_mean",
    "layer3.0.bn1.running_var",
    "layer3.0.bn1.num_batches_tracked",
    "layer3.0.conv2.weight",
    "layer3.0.bn2.weight",
    "layer3.0.bn2.bias",
    "layer3.0.bn2.running_mean",
    "layer3.0.bn2.running_var",
    "layer3.0.bn2.num_batches_tracked",
    "layer3.0.downsample.0.weight",
    "layer3.0.downsample.1.weight",
    "layer3.0.downsample.1.bias",
    "layer3.0.downsample.1.running_mean",
    "layer3.0.downsample.1.running_var",
    "layer3.0.downsample.1.num_batches_tracked",
    "layer3.1.conv1.weight",
    "layer3.1.bn1.weight",
    "layer3.1.bn1.bias",
    "layer3.1.bn1.running_mean",
    "layer3.1.bn1.running_var",
    "layer3.1.bn1.num_batches_tracked",
    "layer3.1.conv2.weight",
    "layer3.1.bn2.weight",
    "layer3.1.bn2.bias",
    "layer3.1.bn2.running_mean",
    "layer3.1.bn2.running_var",
    "layer3.1.bn2.num_batches_tracked",
    "layer4.0.conv1.weight",
    "layer4.0.bn1.weight",
    "layer4.0.bn1.bias",
    "layer4.0.bn1.running_mean",
    "layer4.0.bn1.running_var",
    "layer4.0.bn1.num_batches_tracked",
    "layer4.0.conv2.weight",
    "layer4.0.bn2.weight",
    "layer4.0.bn2.bias",
    "layer4.0.bn2.running_mean",
    "layer4.0.bn2.running_var",
    "layer4.0.bn2.num_batches_tracked",
    "layer4.0.downsample.0.weight",
    "layer4.0.downsample.1.weight",
    "layer4.0.downsample.1.bias",
    "layer4.0.downsample.1.running_mean",
    "layer4.0.downsample.1.running_var",
    "layer4.0.downsample.1.num_batches_tracked",
    "layer4.1.conv1.weight",
    "layer4.1.bn1.weight",
    "layer4.1.bn1.bias",
    "layer4.1.bn1.running_mean",
    "layer4.1.bn1.running_var",
    "layer4.1.bn1.num_batches_tracked",
    "layer4.1.conv2.weight",
    "layer4.1.bn2.weight",
    "layer4.1.bn2.bias",
    "layer4.1.bn2.running_mean",
    "layer4.1.bn2.running_var",
    "layer4.1.bn2.num_batches_tracked",
]
# a few torchvision resnet18 parameter shapes
TORCHVISION_RESNET18_SHAPES = {
    "conv1.weight": (64, 3, 7, 7),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer3.1.bn2.running_var": (256,),
    "layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "layer4.1.conv2.weight": (512, 512, 3, 3),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _shapes(model: nn.Module, h: int, w: int) -> dict[str, tuple[int, ...]]:
    model.eval()
    with torch.no_grad():
        return {k: tuple(v.shape) for k, v in model(torch.randn(1, 3, h, w)).items()}


def test_torchvision_key_layout():
    sd = resnet18().state_dict()
    assert len(TORCHVISION_RESNET18_KEYS) == 120
    assert list(sd) == TORCHVISION_RESNET18_KEYS
    for k, shape in TORCHVISION_RESNET18_SHAPES.items():
        assert tuple(sd[k].shape) == shape, k
    # the stride changes of DUL / MAST do not change any key or shape
    sd_dul = dul_backbone().state_dict()
    assert list(sd_dul) == TORCHVISION_RESNET18_KEYS
    assert all(sd_dul[k].shape == sd[k].shape for k in sd)


def test_dul_backbone_stride8():
    net = dul_backbone(out_stages=("layer3", "layer4"))
    assert _shapes(net, 64, 64) == {"layer3": (1, 256, 8, 8), "layer4": (1, 512, 8, 8)}
    assert net.stride_of("layer4") == 8 and net.stride_of("layer2") == 8
    # DAVIS 480p frame: 480 -> 60, 854 -> 427 -> 214 -> 107 (dul.md §2.1)
    big = dul_backbone().eval().to("meta")  # shapes only: no compute for a full DAVIS frame
    assert tuple(big(torch.empty(1, 3, 480, 854, device="meta"))["layer4"].shape) == (1, 512, 60, 107)
    # the strides sit in the first block only (layer3/layer4 have none, downsample 1x1 follows)
    assert net.layer2[0].conv1.stride == (2, 2) and net.layer3[0].conv1.stride == (1, 1)
    assert net.layer3[0].downsample[0].stride == (1, 1)


def test_stt_student_strides():
    net = resnet18(strides=(1, 2, 2, 4), pool="none", out_stages=("layer2", "layer3", "layer4"))
    assert _shapes(net, 64, 64) == {"layer2": (1, 128, 16, 16), "layer3": (1, 256, 8, 8), "layer4": (1, 512, 2, 2)}
    assert [net.stride_of(s) for s in ("layer2", "layer3", "layer4")] == [4, 8, 32]
    assert isinstance(net.maxpool, nn.Identity)


def test_mast_liir_stride4_widths():
    net = resnet18(strides=(1, 2, 1, 1), pool="none", widths=(64, 128, 256, 256), out_stages=("layer4",))
    assert _shapes(net, 64, 48) == {"layer4": (1, 256, 16, 12)}
    assert net.stride_of("layer4") == 4 and net.channels["layer4"] == 256
    assert tuple(net.layer4[0].conv1.weight.shape) == (256, 256, 3, 3)
    assert net.layer4[0].downsample is None  # 256 -> 256 at stride 1: identity shortcut


def test_deeper_channel_counts_and_partial_builds():
    r34 = resnet34(out_stages=("layer1", "layer4"))
    assert [len(getattr(r34, s)) for s in ("layer1", "layer2", "layer3", "layer4")] == [3, 4, 6, 3]
    assert _shapes(r34, 64, 64) == {"layer1": (1, 64, 16, 16), "layer4": (1, 512, 2, 2)}
    r50 = resnet50(strides=(1, 2, 2, 4), pool="none", out_stages=("layer2", "layer3"))
    assert r50.channels == {"layer1": 256, "layer2": 512, "layer3": 1024}
    assert not hasattr(r50, "layer4")  # stages after the last requested one are not built
    assert _shapes(r50, 32, 32) == {"layer2": (1, 512, 8, 8), "layer3": (1, 1024, 4, 4)}
    assert tuple(r50.layer2[0].conv2.stride) == (2, 2) and tuple(r50.layer2[0].conv1.stride) == (1, 1)  # v1.5
    assert "layer1.0.conv3.weight" in r50.state_dict() and "layer1.0.downsample.0.weight" in r50.state_dict()


def test_avg_pool_stem():
    net = resnet18(pool="avg", out_stages=("layer1",))
    assert isinstance(net.maxpool, nn.AvgPool2d) and _shapes(net, 32, 32) == {"layer1": (1, 64, 8, 8)}


def test_reflect_padding():
    net = resnet18(padding_mode="reflect", out_stages=("layer1",))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1]
    assert convs and all(m.padding_mode == "reflect" for m in convs)
    # a constant image stays constant through a reflect-padded conv, not through a zero-padded one
    x = torch.ones(1, 3, 16, 16)
    with torch.no_grad():
        y = net.conv1(x)
        z = resnet18(out_stages=("layer1",)).conv1(x)
    assert torch.allclose(y, y[..., 4:5, 4:5].expand_as(y), atol=1e-5)
    assert not torch.allclose(z, z[..., 4:5, 4:5].expand_as(z), atol=1e-5)


def test_init_is_torchvision_default():
    net = resnet18(out_stages=("layer1",))
    assert torch.all(net.bn1.weight == 1) and torch.all(net.bn1.bias == 0)
    w = net.layer1[0].conv1.weight  # kaiming normal fan_out: std = sqrt(2 / (64 * 9))
    assert w.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"depth": 101}, "depth must be one of"),
        ({"strides": (1, 2, 2)}, "strides must be 4 positive integers"),
        ({"pool": "min"}, "pool must be"),
        ({"padding_mode": "circular"}, "padding_mode must be"),
        ({"out_stages": ("layer5",)}, "out_stages must be a non-empty subset"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResNet(**kwargs)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"ResNet input must be \(N, 3, H, W\)"):
        resnet18(out_stages=("layer1",))(torch.randn(1, 1, 16, 16))


def test_heads():
    head = MLPHead(512, 512, 128)
    keys = list(head.state_dict())
    assert keys[:2] == ["fc1.weight", "fc1.bias"] and "bn.running_mean" in keys and keys[-1] == "fc2.bias"
    y = head(torch.randn(2, 512, 5, 7))
    assert y.shape == (2, 128, 5, 7)
    yn = MLPHead(16, 8, 4, normalize=True)(torch.randn(2, 16, 3, 3))
    torch.testing.assert_close(yn.norm(dim=1), torch.ones(2, 3, 3))
    assert ConvHead(256, 64)(torch.randn(1, 256, 16, 12)).shape == (1, 64, 16, 12)
    assert ConvHead(256, 128, stride=2)(torch.randn(1, 256, 64, 64)).shape == (1, 128, 32, 32)
    assert ConvHead(8, 4, stride=2)(torch.randn(1, 8, 7, 5)).shape == (1, 4, 4, 3)
    with pytest.raises(ValueError, match=r"MLPHead expects \(N, 512, h, w\)"):
        head(torch.randn(1, 256, 4, 4))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ConvHead(8, 4, kernel_size=2)

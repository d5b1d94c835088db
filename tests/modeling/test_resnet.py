"""ResNet backbone: output names, channels and strides, deep stem, dilation, freezing."""
import pytest
import torch
from torch import nn

from dl_lib.config import get_cfg
from dl_lib.layers import FrozenBatchNorm2d
from dl_lib.modeling import BACKBONE_REGISTRY, ResNet, build_backbone


def _check_shapes(backbone, x):
    out = backbone(x)
    shape = backbone.output_shape()
    assert list(out) == list(shape)
    for name, feat in out.items():
        s = shape[name]
        assert feat.shape[1] == s.channels, name
        assert feat.shape[-2:] == (-(-x.shape[-2] // s.stride), -(-x.shape[-1] // s.stride)), name
    return out


@pytest.mark.parametrize("depth,channels", [("resnet18", [64, 128, 256, 512]), ("resnet50", [256, 512, 1024, 2048])])
def test_channels_and_strides(depth, channels):
    net = ResNet(depth).eval()
    shape = net.output_shape()
    assert [shape[f].channels for f in ["res2", "res3", "res4", "res5"]] == channels
    assert [shape[f].stride for f in ["res2", "res3", "res4", "res5"]] == [4, 8, 16, 32]
    assert net.size_divisibility == 32
    with torch.no_grad():
        _check_shapes(net, torch.randn(1, 3, 64, 96))


@pytest.mark.parametrize("output_stride,strides", [(16, [4, 8, 16, 16]), (8, [4, 8, 8, 8])])
def test_dilation_keeps_resolution(output_stride, strides):
    net = ResNet("resnet18", output_stride=output_stride).eval()
    assert [net.output_shape()[f].stride for f in ["res2", "res3", "res4", "res5"]] == strides
    with torch.no_grad():
        out = _check_shapes(net, torch.randn(1, 3, 64, 64))
    assert out["res5"].shape[-1] == 64 // output_stride
    dilations = {m.dilation for m in net.layer4.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}
    assert max(dilations)[0] == 32 // output_stride


def test_deep_stem_width_and_torchvision_names():
    plain = ResNet("resnet18")
    assert "conv1.weight" in plain.state_dict() and "layer4.1.bn2.running_var" in plain.state_dict()
    deep = ResNet("resnet18", deep_stem=True, width=32, out_features=["stem", "res2", "res3"])
    convs = [m for m in deep.stem.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3 and convs[-1].out_channels == 32
    assert not hasattr(deep, "layer4") and not hasattr(deep, "conv1")  # unused parts are not built
    with torch.no_grad():
        out = _check_shapes(deep.eval(), torch.randn(2, 3, 40, 72))
    assert out["res3"].shape[1] == 64


def test_zero_init_residual_starts_as_identity_branch():
    net = ResNet("resnet18")
    assert torch.all(net.layer1[0].bn2.weight == 0)
    assert not torch.all(ResNet("resnet18", zero_init_residual=False).layer1[0].bn2.weight == 0)


def test_freeze_at():
    net = ResNet("resnet18", freeze_at=2)
    assert isinstance(net.bn1, FrozenBatchNorm2d) and isinstance(net.layer1[0].bn1, FrozenBatchNorm2d)
    assert not any(p.requires_grad for p in net.conv1.parameters())
    assert not any(p.requires_grad for p in net.layer1.parameters())
    assert all(p.requires_grad for p in net.layer2.parameters())
    out = net.train()(torch.randn(2, 3, 32, 32))
    out["res5"].sum().backward()
    assert net.conv1.weight.grad is None and net.layer2[0].conv1.weight.grad is not None


def test_bad_arguments_name_the_key():
    with pytest.raises(ValueError, match="OUTPUT_STRIDE"):
        ResNet("resnet18", output_stride=4)
    with pytest.raises(ValueError, match="MODEL.BACKBONE.NAME"):
        ResNet("resnet19")
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        ResNet("resnet18", out_features=["res6"])


def test_build_from_config_registry():
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "resnet34"
    cfg.MODEL.BACKBONE.NORM = "GN"
    cfg.MODEL.BACKBONE.OUTPUT_STRIDE = 16
    net = build_backbone(cfg)
    assert len(net.layer3) == 6 and isinstance(net.bn1, nn.GroupNorm)
    assert net.output_shape()["res5"].stride == 16
    assert "resnet101" in BACKBONE_REGISTRY
    cfg.MODEL.BACKBONE.NAME = "resnet_missing"
    with pytest.raises(KeyError, match="MODEL.BACKBONE.NAME.*resnet18"):
        build_backbone(cfg)

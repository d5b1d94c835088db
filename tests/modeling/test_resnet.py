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


def test_stem_width_for_the_deep_stem_imagenet_files():
    # PSPNet / MFARANet deep stems: 64, 64, 128 channels, then res2 starts from 128 channels.
    net = ResNet("resnet18", deep_stem=True, stem_width=128, out_features=["stem", "res2"])
    convs = [m for m in net.stem.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128]
    assert net.layer1[0].downsample[0].weight.shape == (64, 128, 1, 1)
    assert net.output_shape()["stem"].channels == 128
    with torch.no_grad():
        _check_shapes(net.eval(), torch.randn(1, 3, 32, 32))
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.DEEP_STEM = True
    cfg.MODEL.BACKBONE.STEM_WIDTH = 128
    assert build_backbone(cfg).stem[6].out_channels == 128
    cfg.MODEL.BACKBONE.STEM_WIDTH = 0  # = WIDTH
    assert build_backbone(cfg).stem[6].out_channels == 64


@pytest.mark.parametrize("file_key,our_key", [
    ("conv1.weight", "conv1.weight"),         # torchvision: our plain-stem names
    ("layer3.1.bn2.bias", "layer3.1.bn2.bias"),
])
def test_convert_pretrained_torchvision_keeps_names_drops_fc(file_key, our_key):
    out = ResNet.convert_pretrained({file_key: torch.zeros(1), "fc.weight": torch.zeros(1),
                                     "bn1.weight": torch.zeros(1)})
    assert our_key in out and "fc.weight" not in out and "bn1.weight" in out


@pytest.mark.parametrize("keys,expected", [
    # semseg resnet50_v2: top-level conv1..3 / bn1..3
    (["conv1.weight", "bn1.weight", "conv2.weight", "bn2.bias", "conv3.weight", "bn3.running_var",
      "layer1.0.conv1.weight"],
     ["stem.0.weight", "stem.1.weight", "stem.3.weight", "stem.4.bias", "stem.6.weight",
      "stem.7.running_var", "layer1.0.conv1.weight"]),
    # SFNet / MFARANet resnet18-deep-inplane128: Sequential conv1 and a 128-channel bn1
    (["conv1.0.weight", "conv1.1.bias", "conv1.3.weight", "conv1.4.weight", "conv1.6.weight",
      "bn1.running_mean", "layer1.0.bn1.weight"],
     ["stem.0.weight", "stem.1.bias", "stem.3.weight", "stem.4.weight", "stem.6.weight",
      "stem.7.running_mean", "layer1.0.bn1.weight"]),
    # whole MFARANet / PSPNet models: layer0.*
    (["layer0.0.0.weight", "layer0.0.4.bias", "layer0.1.weight", "channel_changes.0.0.weight"],
     ["stem.0.weight", "stem.4.bias", "stem.7.weight", "channel_changes.0.0.weight"]),
    (["layer0.0.weight", "layer0.7.bias", "ppm.features.0.1.weight"],
     ["stem.0.weight", "stem.7.bias", "ppm.features.0.1.weight"]),
])
def test_convert_pretrained_deep_stem_layouts(keys, expected):
    out = ResNet.convert_pretrained({k: torch.zeros(1) for k in keys})
    assert list(out) == expected

"""MFARANet's encoder through the library's ResNet: the deep stem (128 channels), conv2 of res4 /
res5 dilated with the strides kept (output stride 32), and the ImageNet file
``resnet18-deep-inplane128`` (and a whole released model) loaded through ``MODEL.PRETRAINED``."""
import os

import pytest
import torch

from dl_lib.checkpoint import find_backbone, load_pretrained_backbone
from dl_lib.config import config_from_delta
from dl_lib.modeling import ResNet, build_model
from dl_lib.modeling.mfaranet import backbone_config
from mfaranet_original_reference import random_state_dict, read_key_dump

HERE = os.path.dirname(__file__)
DUMP = read_key_dump(os.path.join(HERE, "mfaranet_keys.txt"))
MAIN = next(v for k, v in DUMP.items() if k.startswith("MFARANet (model_MFARANet.py)"))


def test_stage_dilations_keep_the_strides():
    net = ResNet("resnet18", deep_stem=True, stem_width=128, stage_dilations=(1, 1, 2, 4),
                 zero_init_residual=False).eval()
    assert net.output_shape()["res5"].stride == 32
    for stage, d in [(net.layer3, 2), (net.layer4, 4)]:
        for block in stage:
            assert block.conv2.dilation == (d, d) and block.conv2.padding == (d, d)
            assert block.conv2.stride == (1, 1) and block.conv1.dilation == (1, 1)
        assert stage[0].conv1.stride == (2, 2) and stage[0].downsample[0].stride == (2, 2)
    with torch.no_grad():
        out = net(torch.randn(1, 3, 128, 64))
    assert [tuple(out[f].shape[-2:]) for f in ["res2", "res3", "res4", "res5"]] == [
        (32, 16), (16, 8), (8, 4), (4, 2)]
    plain = ResNet("resnet18", deep_stem=True, stem_width=128, zero_init_residual=False)
    plain.load_state_dict(net.state_dict())  # same tensors: a receptive-field change only
    x = torch.randn(1, 3, 128, 64)
    with torch.no_grad():
        assert not torch.allclose(plain.eval()(x)["res5"], net(x)["res5"])


def test_stage_dilations_on_bottlenecks_and_errors():
    net = ResNet("resnet50", deep_stem=True, stem_width=128, stage_dilations=(1, 1, 2, 4))
    conv2 = net.layer3[0].conv2  # the Bottleneck's strided 3x3 keeps its stride
    assert conv2.stride == (2, 2) and conv2.dilation == (2, 2) and conv2.padding == (2, 2)
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 2048, 2, 2)
    with pytest.raises(ValueError, match="OUTPUT_STRIDE"):
        ResNet("resnet18", output_stride=16, stage_dilations=(1, 1, 2, 4))
    with pytest.raises(ValueError, match="STAGE_DILATIONS"):
        ResNet("resnet18", stage_dilations=(1, 2))


def _mfaranet_cfg(**model):
    return config_from_delta(dict(MODEL=dict(META_ARCHITECTURE="MFARANet",
                                             BACKBONE=backbone_config("r18_deep_stem"), **model)),
                             family="mfaranet")


def test_imagenet_deep_stem_file_through_model_pretrained(tmp_path):
    """``resnet18-deep-inplane128.pth`` (SFNet's ImageNet backbone): a ResNet's top level with
    the deep stem as the Sequential ``conv1`` (0, 1, 3, 4, 6) + ``bn1``, and ``fc``. Its tensors
    are the backbone part of the key dump (the original builds layer0 from conv1 and bn1)."""
    backbone = {k: v for k, v in MAIN.items() if k.startswith(("layer0.", "layer1.", "layer2.",
                                                              "layer3.", "layer4."))}
    names = {"layer0.0.": "conv1.", "layer0.1.": "bn1."}
    shapes = {}
    for key, shape in backbone.items():
        for old, new in names.items():
            if key.startswith(old):
                key = new + key[len(old):]
        shapes[key] = shape
    shapes["fc.weight"], shapes["fc.bias"] = (1000, 512), (1000,)
    sd = random_state_dict(shapes, seed=7)
    assert sd["conv1.6.weight"].shape == (128, 64, 3, 3) and sd["bn1.weight"].shape == (128,)
    path = tmp_path / "resnet18-deep-inplane128.pth"
    torch.save(sd, path)

    cfg = _mfaranet_cfg(PRETRAINED=str(path))
    model = build_model(cfg)
    # what the trainer calls for MODEL.PRETRAINED
    report = load_pretrained_backbone(find_backbone(model), cfg.MODEL.PRETRAINED)
    assert report.fraction == 1.0 and report.mismatched == [] and report.missing == []
    ours = model.backbone.state_dict()
    assert torch.equal(ours["stem.0.weight"], sd["conv1.0.weight"])
    assert torch.equal(ours["stem.6.weight"], sd["conv1.6.weight"])
    assert torch.equal(ours["stem.7.running_var"], sd["bn1.running_var"])
    assert torch.equal(ours["layer4.1.conv2.weight"], sd["layer4.1.conv2.weight"])


def test_released_model_as_model_pretrained(tmp_path):
    """A whole released MFARANet (``layer0.0.*`` stem) initialises the backbone alone."""
    sd = random_state_dict(MAIN, seed=8)
    torch.save({"epoch": 200, "state_dict": {"module." + k: v for k, v in sd.items()}},
               tmp_path / "released.pth")
    model = build_model(_mfaranet_cfg())
    report = load_pretrained_backbone(find_backbone(model), str(tmp_path / "released.pth"))
    assert report.fraction == 1.0
    assert torch.equal(model.backbone.stem.state_dict()["7.weight"], sd["layer0.1.weight"])

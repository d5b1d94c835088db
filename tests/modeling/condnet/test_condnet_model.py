"""CondNet hosts, segmentor, parameter counts and mmseg checkpoints (reference condnet.md
sections 1, 9; key dump copied from shared/docs/reference/keys/condnet_keys.txt)."""
import os

import pytest
import torch

from dl_lib.checkpoint import Checkpointer
from dl_lib.config import config_from_delta
from dl_lib.modeling.condnet import (CondFCNHead, CondNet, CondSepASPPHead, FCNHead,
                                     backbone_config, convert_mmseg, to_mmseg)

KEYS = os.path.join(os.path.dirname(__file__), "condnet_keys.txt")


def _cfg(depth=50, num_classes=150, tiny=False, **condnet):
    backbone = backbone_config(depth)
    if tiny:
        backbone.update(WIDTH=8, STEM_WIDTH=8)
        condnet = dict(dict(CHANNELS=16, DILATIONS=[1, 2, 3], LOW_LEVEL_CHANNELS=4,
                            AUX_CHANNELS=8), **condnet)
    return config_from_delta(dict(MODEL=dict(META_ARCHITECTURE="CondNet", DEVICE="cpu",
                                             BACKBONE=backbone, CONDNET=condnet,
                                             SEM_SEG_HEAD=dict(NUM_CLASSES=num_classes))),
                             family="condnet")


def _build(cfg):
    return CondNet(**CondNet.from_config(cfg))


def _dump():
    rows = [line.rstrip("\n").split("\t") for line in open(KEYS) if "\t" in line]
    return {k: eval(s) for k, s in rows}  # shapes written as Python tuples


@pytest.mark.parametrize("depth,num_classes,total", [
    (50, 150, 83_166_098), (101, 150, 102_158_226), (50, 59, 59_147_649), (101, 59, 78_139_777)])
def test_parameter_counts(depth, num_classes, total):
    with torch.device("meta"):
        model = _build(_cfg(depth, num_classes))
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.backbone.parameters()) == (23_527_264 if depth == 50
                                                                   else 42_519_392)


def test_state_dict_matches_key_dump_and_converts_back():
    with torch.device("meta"):
        model = _build(_cfg(50, 150))
    ours = model.state_dict()
    mmseg = to_mmseg(ours)
    assert len(mmseg) == 426  # "total state_dict entries: 426"
    dump = _dump()
    assert len(dump) > 150
    for key, shape in dump.items():
        assert key in mmseg, key
        assert tuple(mmseg[key].shape) == shape, key
    back = convert_mmseg(mmseg)
    assert set(back) == set(ours)
    assert all(back[k] is ours[k] for k in ours)


def test_backbone_v1c_d8_contract():
    model = _build(_cfg(50, 150, CHANNELS=8, DILATIONS=[1, 2], AUX_HEAD=False))
    b = model.backbone
    assert [b.stem[i].out_channels for i in (0, 3, 6)] == [32, 32, 64]
    assert b.layer3[0].conv2.dilation == (1, 1) and b.layer3[1].conv2.dilation == (2, 2)
    assert b.layer4[0].conv2.dilation == (2, 2) and b.layer4[2].conv2.dilation == (4, 4)
    with torch.no_grad():
        out = b.eval()(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 256, 16, 16), "res3": (1, 512, 8, 8), "res4": (1, 1024, 8, 8),
        "res5": (1, 2048, 8, 8)}


@pytest.mark.parametrize("head,stride,cls", [("sep_aspp", 4, CondSepASPPHead),
                                             ("aspp", 8, CondSepASPPHead), ("fcn", 8, CondFCNHead)])
def test_hosts_shapes(head, stride, cls):
    torch.manual_seed(0)
    model = _build(_cfg(tiny=True, num_classes=5, HEAD=head)).eval()
    assert isinstance(model.head, cls) and isinstance(model.aux_head, FCNHead)
    assert model.output_stride == stride
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        logits, guidance, aux = model.forward_outputs(x, with_aux=True)
    assert logits.shape == guidance.shape == (2, 5, 64 // stride, 48 // stride)
    assert aux.shape == (2, 5, 8, 6)
    assert model.predict_logits(x).shape == (2, 5, 64, 48)
    if head == "aspp":
        assert not hasattr(model.head, "c1_bottleneck")
        assert model.head.aspp_modules[1].dilation == (2, 2)
    if head == "sep_aspp":
        assert model.head.aspp_modules[1].depthwise_conv.groups == 256  # res5 of width 8: 8 * 8 * 4


def test_training_losses_and_plain_classifier():
    torch.manual_seed(0)
    model = _build(_cfg(tiny=True, num_classes=5)).train()
    inputs = [{"image": torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8),
               "sem_seg": torch.randint(0, 5, (32, 32))} for _ in range(2)]
    inputs[0]["sem_seg"][:4] = 255
    losses = model(inputs)
    assert set(losses) == {"loss_sem_seg", "loss_guidance", "loss_aux"}
    sum(losses.values()).backward()
    assert model.head.classifier.filter_project.weight.grad.abs().sum() > 0
    assert model.aux_head.conv_seg.weight.grad.abs().sum() > 0
    plain = _build(_cfg(tiny=True, num_classes=5, CLASSIFIER="plain", AUX_HEAD=False)).train()
    assert set(plain(inputs)) == {"loss_sem_seg"}
    ohem = _build(_cfg(tiny=True, num_classes=5, OHEM_THRESH=0.7, OHEM_MIN_KEPT=50)).train()
    assert torch.isfinite(ohem(inputs)["loss_sem_seg"])


def test_mmseg_checkpoint_loads_strictly_with_the_same_output(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(tiny=True, num_classes=5, KERNEL_LAYOUT="original")
    src = _build(cfg).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "condnet_mmseg.pth"
    torch.save({"meta": {"mmseg_version": "0.x", "CLASSES": list("abcde")},
                "state_dict": to_mmseg(src.state_dict())}, path)
    dst = _build(cfg).eval()
    Checkpointer(dst).load(str(path), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst.predict_logits(x), src.predict_logits(x))
    # a file with a foreign top-level key is refused by name
    bad = dict(to_mmseg(src.state_dict()), **{"neck.conv.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="neck.conv.weight"):
        convert_mmseg(bad)


def test_pretrained_v1c_layouts(tmp_path):
    from dl_lib.checkpoint import load_pretrained_backbone

    torch.manual_seed(0)
    cfg = _cfg(tiny=True, num_classes=5)
    src = _build(cfg)
    backbone_sd = src.backbone.state_dict()
    # open-mmlab resnet*_v1c: stem.{0,1,3,4,6,7}, layerX.Y.*, fc.* (ImageNet classifier)
    imagenet = dict(backbone_sd, **{"fc.weight": torch.zeros(10, 64), "fc.bias": torch.zeros(10)})
    torch.save({"meta": {}, "state_dict": imagenet}, tmp_path / "v1c.pth")
    # a whole mmseg model: backbone.* + heads
    torch.save({"meta": {}, "state_dict": to_mmseg(src.state_dict())}, tmp_path / "whole.pth")
    for name in ("v1c.pth", "whole.pth"):
        dst = _build(cfg)
        assert not torch.equal(dst.backbone.stem[0].weight, src.backbone.stem[0].weight)
        load_pretrained_backbone(dst.backbone, str(tmp_path / name))
        for key, value in dst.backbone.state_dict().items():
            torch.testing.assert_close(value, backbone_sd[key], msg=f"{name}: {key}")


def test_convert_checkpoint_tool_converts_mmseg_files(tmp_path):
    import importlib.util

    here = os.path.abspath(__file__)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(here))))
    spec = importlib.util.spec_from_file_location(
        "convert_checkpoint_condnet", os.path.join(repo, "tools", "convert_checkpoint.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    torch.manual_seed(0)
    cfg = _cfg(tiny=True, num_classes=5, KERNEL_LAYOUT="original")
    src = _build(cfg)
    torch.save({"meta": {}, "state_dict": to_mmseg(src.state_dict())}, tmp_path / "m.pth")
    result = tool.convert_file(str(tmp_path / "m.pth"), _build(cfg))
    assert result["converter"] == "condnet_mmseg"
    ours = src.state_dict()
    assert set(result["model"]) == set(ours)
    assert all(torch.equal(result["model"][k], ours[k]) for k in ours)
    # the same file into a model with another class count does not fit, and says so
    with pytest.raises(tool.ConversionError, match="another shape"):
        tool.convert_file(str(tmp_path / "m.pth"), _build(_cfg(tiny=True, num_classes=6)))


def test_checkpoints_record_the_kernel_layout(tmp_path):
    from dl_lib.checkpoint import architecture_of

    model = _build(_cfg(tiny=True, num_classes=5, KERNEL_LAYOUT="original"))
    assert architecture_of(model) == {"MODEL.CONDNET.KERNEL_LAYOUT": "original"}
    Checkpointer(model, save_dir=str(tmp_path)).save("m")
    saved = torch.load(tmp_path / "m.pth", weights_only=False)
    assert saved["architecture"] == {"MODEL.CONDNET.KERNEL_LAYOUT": "original"}
    assert architecture_of(_build(_cfg(tiny=True, num_classes=5, CLASSIFIER="plain"))) == {}

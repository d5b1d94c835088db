"""ACoSP's PSPNet-50 and SegNet against the original's key/shape dump (reference acosp.md 1.1,
1.2, 2.1): parameter counts, names and shapes (through the converters), dilations, output
stride, channel-mask coverage and kept-channel totals, losses and learning-rate groups."""
import math

import pytest
import torch
import torch.nn.functional as F

from dl_lib.config import config_from_delta
from dl_lib.modeling import build_model
from dl_lib.modeling.acosp import backbone_config, pspnet50, pspnet101, segnet, segnet_narrow
from dl_lib.modeling.acosp.convert import convert_pspnet, convert_segnet, to_original
from dl_lib.modeling.pruning import attach_channel_masks, channel_masks

from acosp_key_dump import PSPNET50, SEGNET, dump_line

pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def acosp_cfg(arch="ACoSPPSPNet", **delta):
    model = dict(META_ARCHITECTURE=arch, DEVICE="cpu", **delta.pop("MODEL", {}))
    if arch == "ACoSPPSPNet":
        model.setdefault("BACKBONE", backbone_config("resnet50"))
    return config_from_delta(dict(MODEL=model, **delta), family=["pruning", "acosp"])


def test_pspnet50_parameter_counts_of_the_original():
    # Reference 1.1: 49,080,038 with aux (2,364,691), 46,715,347 without; 150 / 21 classes.
    m = pspnet50(19)
    assert n_params(m) == 49_080_038
    assert n_params(m.head.aux) == 2_364_691
    assert n_params(pspnet50(19, aux=False)) == 46_715_347
    assert n_params(pspnet50(150)) == 49_180_908
    assert n_params(pspnet50(21, aux=False)) == 46_716_373
    built = build_model(acosp_cfg(MODEL=dict(SEM_SEG_HEAD=dict(NUM_CLASSES=19))))
    assert n_params(built) == 49_080_038
    assert n_params(build_model(acosp_cfg(MODEL=dict(ACOSP=dict(AUX_WEIGHT=0.0))))) == 46_715_347


def test_pspnet50_names_and_shapes_are_the_originals():
    ours = {k: tuple(v.shape) for k, v in pspnet50(19).state_dict().items()}
    assert len(ours) == 370
    converted = convert_pspnet({"module." + k: torch.zeros(s) for k, s in PSPNET50.items()})
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours
    assert set(to_original(pspnet50(19).state_dict())) == set(PSPNET50)


def test_pspnet50_dilations_and_output_stride():
    m = pspnet50(19)
    for line_key in ("layer3.0.conv2", "layer3.1.conv2", "layer4.0.conv2", "layer4.1.conv2",
                     "layer3.0.downsample.0", "layer4.0.conv1"):
        line = dump_line(line_key + ":")
        conv = m.backbone.get_submodule(line_key)
        want = " ".join(f"{n}={v}" for n, v in (("k", conv.kernel_size), ("s", conv.stride),
                                                ("d", conv.dilation), ("p", conv.padding)))
        assert line.strip() == f"{line_key}: {want}", line
    with torch.no_grad():
        feats = m.eval().backbone(torch.randn(1, 3, 57, 57))
    # (57 + 2 - 3) // 2 + 1 = 29 -> max-pool 15 -> stride 2 in layer2: 8; res4/res5 stay at 8.
    assert feats["res4"].shape == (1, 1024, 8, 8) and feats["res5"].shape == (1, 2048, 8, 8)


def test_pspnet101_builds():
    m = pspnet101(19, aux=False)
    # ResNet-101 adds 17 bottlenecks of 1024 channels to res4: 17 * 1,117,184 parameters.
    assert n_params(m) == 46_715_347 + 17 * (256 * 1024 + 256 * 256 * 9 + 1024 * 256 + 2 * (256 + 256 + 1024))


def test_segnet_parameter_counts_names_and_shapes():
    s = segnet(19)
    assert n_params(s) == 29_454_009
    assert n_params(segnet(11)) == 29_449_377
    ours = {k: tuple(v.shape) for k, v in s.state_dict().items()}
    assert len(ours) == 182
    converted = convert_segnet({k: torch.zeros(sh) for k, sh in SEGNET.items()})
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours
    assert n_params(build_model(acosp_cfg("ACoSPSegNet"))) == 29_454_009


@pytest.mark.parametrize("sparsity,kept", [(0.5, 14784), (0.75, 7392), (0.875, 3696),
                                           (0.9375, 1880)])
def test_pspnet50_masks_and_kept_channels(sparsity, kept):
    # Reference 2.1 / 9: 61 masks (all convs but cls.4, aux.4); kept out-channels of 29,568.
    cfg = acosp_cfg(MODEL=dict(PRUNING=dict(ENABLED=True, SPARSITY=sparsity)))
    masks = channel_masks(build_model(cfg))
    assert len(masks) == 61
    assert sum(m.channels for m in masks.values()) == 29568
    assert sum(m.k for m in masks.values()) == kept
    paths = {m.conv_path for m in masks.values()}
    assert "head.cls.4" not in paths and "head.aux.4" not in paths
    assert {"backbone.stem.0", "backbone.layer1.0.downsample.0", "head.ppm.features.3.1",
            "head.cls.0", "head.aux.0"} <= paths


def test_pspnet50_mask_keys_are_the_originals_after_conversion():
    m = pspnet50(19)
    attach_channel_masks(m, 0.75, placement="original")
    keys = set(to_original(m.state_dict()))
    for key in ("layer1.0.conv1.0.weight", "layer1.0.conv1.1.weight", "ppm.features.0.1.0.weight",
                "ppm.features.0.1.1.weight", "cls.0.0.weight", "cls.4.weight", "layer0.6.1.weight"):
        assert key in keys, key
    # k per layer at s = 0.75 (dump): stem 16/64, 16/64, 32/128; PPM 128/512; cls.0 128; aux.0 64.
    ks = {mm.conv_path: (mm.k, mm.channels) for mm in channel_masks(m).values()}
    assert ks["backbone.stem.0"] == (16, 64) and ks["backbone.stem.6"] == (32, 128)
    assert ks["backbone.layer1.0.conv3"] == (64, 256)
    assert ks["head.ppm.features.2.1"] == (128, 512)
    assert ks["head.cls.0"] == (128, 512) and ks["head.aux.0"] == (64, 256)


def test_segnet_masks_and_floor():
    s = segnet(19)
    attach_channel_masks(s, 0.9375, placement="original")
    masks = channel_masks(s)
    assert len(masks) == 25
    assert "head.up1.convs.1.cbr_unit.0" not in {m.conv_path for m in masks.values()}
    # The dump's SegNet @0.9375 list: (name, k, C) with the floor of 8 for 64/128 channels.
    listed = dump_line("SegNet @0.9375:")
    for name, k, c in [("down1.conv1.cbr_unit.0", 8, 64), ("down3.conv2.cbr_unit.0", 16, 256),
                       ("up5.convs.0.cbr_unit.0", 32, 512), ("up1.convs.0.cbr_unit.0", 8, 64)]:
        assert f"('{name}.1', {k}, {c})" in listed
        ours = "backbone." + name if name.startswith("down") else "head." + name
        got = next(m for m in masks.values() if m.conv_path == ours)
        assert (got.k, got.channels) == (k, c) == (max(math.ceil(c / 16), 8), c)
    assert "head.up1.convs.0.cbr_unit.0.1.weight" in s.state_dict()


def _inputs(n, h, w, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
             "sem_seg": torch.randint(0, classes, (h, w), generator=g), "height": h, "width": w}
            for _ in range(n)]


def test_pspnet_training_losses_and_eval_outputs():
    torch.manual_seed(0)
    m = pspnet50(5)
    batch = _inputs(2, 33, 41, 5)
    m.train()
    torch.manual_seed(1)
    losses = m(batch)
    assert set(losses) == {"loss_sem_seg", "loss_aux"}
    # The same computation by hand: one backbone pass, both heads, 0.4 x the aux CE.
    torch.manual_seed(1)
    images = torch.stack([(d["image"].float() - m.pixel_mean) / m.pixel_std for d in batch])
    targets = torch.stack([d["sem_seg"] for d in batch])
    feats = m.backbone(images)
    up = dict(size=(33, 41), mode="bilinear", align_corners=True)
    main = F.interpolate(m.head.cls(m.head.ppm(feats["res5"])), **up)
    aux = F.interpolate(m.head.aux(feats["res4"]), **up)
    torch.testing.assert_close(losses["loss_sem_seg"], F.cross_entropy(main, targets,
                                                                      ignore_index=255))
    torch.testing.assert_close(losses["loss_aux"], 0.4 * F.cross_entropy(aux, targets,
                                                                        ignore_index=255))
    m.eval()
    with torch.no_grad():
        out = m(batch[:1])
    assert out[0]["sem_seg"].shape == (5, 33, 41)
    assert m.param_lr_multiplier("backbone.layer1.0.conv1.weight") == 1.0
    assert m.param_lr_multiplier("head.ppm.features.0.1.weight") == 10.0


def test_segnet_narrow_trains_and_eval_sizes():
    s = segnet_narrow(4)
    assert [s.backbone.get_submodule(f"down{i}").conv1.cbr_unit[0].out_channels
            for i in range(1, 6)] == [8, 16, 32, 64, 64]
    s.train()
    losses = s(_inputs(2, 37, 50, 4))
    assert set(losses) == {"loss_sem_seg"} and losses["loss_sem_seg"].requires_grad
    losses["loss_sem_seg"].backward()
    s.eval()
    with torch.no_grad():
        out = s(_inputs(1, 37, 50, 4))[0]["sem_seg"]
    # The last unit keeps the original's BN + ReLU: the class scores are non-negative.
    assert out.shape == (4, 37, 50) and float(out.min()) >= 0.0
    assert s.param_lr_multiplier("head.up1.convs.0.cbr_unit.0.weight") == 1.0

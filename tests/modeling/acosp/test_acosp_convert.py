"""The original's checkpoints (semseg/ACoSP layout; DataParallel ``module.`` keys) load strictly
through the Checkpointer (``MODEL.WEIGHTS``) via the registered converters: dense, hard-masked
(``X.0.weight`` / ``X.1.mask``) and soft-masked (``X.1.weight`` logits + the cached ``X.1.mask``)
files written with random weights from the key dump. A masked model computes the original's
conv -> mask -> BN: checked against the dense model with the masks applied by forward hooks."""
import math

import pytest
import torch

from dl_lib.checkpoint import Checkpointer, find_converter
from dl_lib.config import config_from_delta
from dl_lib.modeling import build_model
from dl_lib.modeling.acosp import backbone_config, pspnet18, segnet_narrow
from dl_lib.modeling.acosp.convert import recover_temperature
from dl_lib.modeling.pruning import channel_keep_masks, channel_masks

from acosp_key_dump import PSPNET50, SEGNET, masked_layout, random_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")

PSP_UNPRUNABLE = ("cls.4", "aux.4")
SEG_UNPRUNABLE = ("up1.convs.1.cbr_unit.0",)


def cfg_of(arch, classes=19, **pruning):
    model = dict(META_ARCHITECTURE=arch, DEVICE="cpu", SEM_SEG_HEAD=dict(NUM_CLASSES=classes),
                 PRUNING=dict(pruning, PLACEMENT="original") if pruning else {})
    if arch == "ACoSPPSPNet":
        model["BACKBONE"] = backbone_config("resnet50")
    return config_from_delta(dict(MODEL=model), family=["pruning", "acosp"])


def save_original(sd, path):
    """tool/train.py's format: the DDP model's state dict (``module.``) plus epoch/optimizer."""
    torch.save({"epoch": 200, "state_dict": {"module." + k: v for k, v in sd.items()},
                "optimizer": {}}, path)
    return str(path)


def ours(key: str) -> str:
    for a, b in (("layer0.", "backbone.stem."), ("ppm.", "head.ppm."), ("cls.", "head.cls."),
                 ("aux.", "head.aux."), ("down", "backbone.down"), ("up", "head.up")):
        if key.startswith(a):
            return b + key[len(a):]
    return "backbone." + key  # layer1..4


def keep8(sparsity):
    return lambda c: max(math.ceil((1 - sparsity) * c), 8)


def test_converters_are_registered_for_the_models():
    psp = {"module." + k: None for k in PSPNET50}
    seg = {"module." + k: None for k in SEGNET}
    p, s = pspnet18(19, aux=False), segnet_narrow(19)
    assert find_converter(psp, p).name == "acosp_pspnet"
    assert find_converter(seg, s).name == "acosp_segnet"
    assert find_converter(psp, s) is None and find_converter(seg, p) is None
    assert find_converter(p.state_dict(), p) is None  # our own names: no conversion


def test_dense_pspnet_file_loads_strictly(tmp_path):
    sd = random_state_dict(PSPNET50, seed=1)
    model = build_model(cfg_of("ACoSPPSPNet"))
    Checkpointer(model).load(save_original(sd, tmp_path / "psp.pth"), strict=True)
    got = model.state_dict()
    for key in ("layer0.6.weight", "layer0.7.running_var", "layer1.0.downsample.0.weight",
                "layer4.2.conv3.weight", "ppm.features.3.1.weight", "cls.0.weight",
                "cls.4.bias", "aux.4.weight"):
        torch.testing.assert_close(got[ours(key)], sd[key], rtol=0, atol=0)


def _hooked_dense(model, masks, convert):
    """Multiply each listed conv's output by its mask (the original's MaskingSequential)."""
    for name, mask in masks.items():
        model.get_submodule(convert(name)).register_forward_hook(
            lambda mod, inp, out, m=mask: out * m.view(1, -1, 1, 1))
    return model


@pytest.mark.parametrize("hard", [True, False])
def test_masked_segnet_files_load_and_compute_the_originals(tmp_path, hard):
    dense = random_state_dict(SEGNET, seed=2)
    masked, masks = masked_layout(dense, SEG_UNPRUNABLE, keep8(0.75),
                                  soft_temperature=None if hard else 0.05, seed=3)
    model = build_model(cfg_of("ACoSPSegNet", ENABLED=True, SPARSITY=0.75, HARD_MASKS=hard))
    Checkpointer(model).load(save_original(masked, tmp_path / "seg.pth"), strict=True)
    assert len(channel_masks(model)) == 25
    if hard:
        keep = channel_keep_masks(model)
        for name, mask in masks.items():
            assert torch.equal(keep[ours(name)], mask > 0.5)
    else:
        for name, mask in masks.items():
            layer = model.get_submodule(ours(name) + ".1")
            assert float(layer.temperature) == pytest.approx(0.05, rel=1e-3)
            torch.testing.assert_close(layer.current_mask(), mask, atol=1e-5, rtol=1e-4)
    reference = build_model(cfg_of("ACoSPSegNet"))
    reference.load_state_dict({ours(k): v for k, v in dense.items()})
    _hooked_dense(reference, masks, ours)
    x = torch.randn(1, 3, 32, 48)
    model.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.predict_logits(x), reference.predict_logits(x),
                                   atol=1e-4, rtol=1e-4)


def test_hard_masked_pspnet_file_loads_strictly(tmp_path):
    dense = random_state_dict(PSPNET50, seed=4)
    masked, masks = masked_layout(dense, PSP_UNPRUNABLE, keep8(0.875), seed=5)
    assert len(masks) == 61
    assert "layer1.0.conv1.0.weight" in masked and "layer1.0.conv1.1.mask" in masked
    model = build_model(cfg_of("ACoSPPSPNet", ENABLED=True, SPARSITY=0.875, HARD_MASKS=True))
    Checkpointer(model).load(save_original(masked, tmp_path / "psp_masked.pth"), strict=True)
    keep = channel_keep_masks(model)
    assert sum(int(k.sum()) for k in keep.values()) == 3696
    for name, mask in masks.items():
        assert torch.equal(keep[ours(name)], mask > 0.5), name
    assert model.architecture() == {"MODEL.PRUNING.HARD_MASKS": True}
    reference = build_model(cfg_of("ACoSPPSPNet"))
    reference.load_state_dict({ours(k): v for k, v in dense.items()})
    _hooked_dense(reference, masks, ours)
    x = torch.randn(1, 3, 33, 33)
    model.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.predict_logits(x), reference.predict_logits(x),
                                   atol=1e-4, rtol=1e-4)


def test_recover_temperature_from_a_cached_mask():
    w = torch.randn(64, generator=torch.Generator().manual_seed(0))
    z = (w - w.mean()) / w.std()
    x0 = torch.quantile(z, 0.75)
    for t in (1.0, 0.25, 0.01):
        assert recover_temperature(w, torch.sigmoid((z - x0) / t)) == pytest.approx(t, rel=1e-4)
    # Saturated (hard-like) masks carry no temperature: the final one.
    assert recover_temperature(w, (z > x0).float()) == 1e-3

"""MODEL.BACKBONE.STEM_CHANNELS: the width of stem_1 and stem_2 (the original's 64 by default),
which the FLOPs counts follow: the paper count by its formula, the corrected count as executed."""
import pytest
import torch

from dl_lib.analysis import CostTracker
from dl_lib.config import config_from_delta
from dl_lib.modeling import build_model
from dl_lib.modeling.dynamic_routing import DynamicNetwork
from dl_lib.modeling.dynamic_routing import flops as fl

H, W, C0 = 64, 96, 8


def _net(stem_channels=None, gate_on=False):
    torch.manual_seed(0)
    kw = {} if stem_channels is None else dict(stem_channels=stem_channels)
    return DynamicNetwork(layer_num=3, cell_num_list=[2, 3, 4], init_channel=C0, gate_on=gate_on,
                          skip_mode="subbatch", **kw).eval()


def test_default_is_the_originals_64_and_the_key_reaches_the_stem():
    assert _net().stem.stem_1.weight.shape == (64, 3, 3, 3)
    cfg = config_from_delta(dict(MODEL=dict(
        DEVICE="cpu", META_ARCHITECTURE="DynamicRoutingSegmentor",
        BACKBONE=dict(LAYER_NUM=3, INIT_CHANNEL=C0, STEM_CHANNELS=16))), family="dynamic_routing")
    stem = build_model(cfg).backbone.stem
    assert stem.mid_channels == 16
    assert [tuple(p.shape) for p in (stem.stem_1.weight, stem.stem_2[0].weight, stem.stem_2[1].weight,
                                     stem.stem_3[0].weight, stem.stem_3[1].weight)] == [
        (16, 3, 3, 3), (16, 1, 3, 3), (16, 16, 1, 1), (16, 1, 3, 3), (C0, 16, 1, 1)]


def test_paper_count_follows_the_stem_width():
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        _, wide = _net(64).forward_with_cost(x)
        _, narrow = _net(16).forward_with_cost(x)
    # fix network (no gates): everything but the stem is the same
    saved = fl.stem_paper(H, W, 64, C0) - fl.stem_paper(H, W, 16, C0)
    assert saved > 0
    assert float(wide.real[0] - narrow.real[0]) == pytest.approx(saved, rel=1e-6)
    assert float(wide.expt[0]) == pytest.approx(float(narrow.expt[0]), rel=1e-6)  # stem not budgeted


def test_corrected_count_is_what_runs_at_a_narrow_stem():
    net = _net(16, gate_on=True)
    x = torch.randn(2, 3, H, W)
    with torch.no_grad(), CostTracker(net, ["dynamic_routing"], num_images=2) as tracker:
        _, cost = net.forward_with_cost(x)
    executed = [c["dynamic_routing"] * 1e3 for c in tracker.per_image()]  # GFLOPs -> MFLOPs
    assert executed == pytest.approx(cost.real_tracked.tolist(), rel=1e-6)


def test_stem_channels_below_one_is_refused():
    with pytest.raises(ValueError, match="STEM_CHANNELS=0"):
        _net(0)

"""Parameter and FLOP counts of a small network against hand-computed numbers, per convention."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dl_lib.analysis import count_parameters, flop_count, flop_table, parameter_table

H, W = 6, 10  # output spatial size of every conv below (padding keeps it)


class SmallNet(nn.Module):
    """conv 3->8 k3 (bias) + BN + ReLU + conv 8->4 k1 (no bias) + global pool + linear 4->5."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 4, 1, bias=False))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.pool(self.body(x)).flatten(1))


HW = H * W
CONV1_MACS = 3 * 3 * 3 * 8 * HW      # k*k*Cin*Cout*H*W
CONV2_MACS = 8 * 4 * HW
FC_MACS = 4 * 5
ALL_MACS = CONV1_MACS + CONV2_MACS + FC_MACS


def test_parameters_by_hand():
    m = SmallNet()
    m.fc.weight.requires_grad_(False)
    pc = count_parameters(m)
    conv1, bn, conv2, fc = 3 * 8 * 9 + 8, 2 * 8, 8 * 4, 4 * 5 + 5
    assert pc.total == conv1 + bn + conv2 + fc
    assert pc.trainable == pc.total - 20
    assert pc.by_module["body"] == conv1 + bn + conv2
    assert pc.by_module["body.0"] == conv1 and pc.by_module["fc"] == fc
    assert "body.0" in parameter_table(m)


def test_gmac_by_hand():
    r = flop_count(SmallNet(), input_size=(H, W), convention="gmac")
    assert r.raw == ALL_MACS
    assert r.total == pytest.approx(ALL_MACS / 1e9)
    assert r.by_module["body.0"] == pytest.approx(CONV1_MACS / 1e9)
    assert r.by_module["body"] == pytest.approx((CONV1_MACS + CONV2_MACS) / 1e9)
    assert r.by_module["fc"] == pytest.approx(FC_MACS / 1e9)
    # BN and ReLU run but are not multiply-adds: listed, not counted
    names = " ".join(r.unsupported_ops)
    assert "relu" in names and "batch_norm" in names


def test_hrnet_by_hand():
    r = flop_count(SmallNet(), input_size=(H, W), convention="hrnet")
    assert r.raw == ALL_MACS  # conv (no bias) + linear only
    assert r.total == pytest.approx(ALL_MACS / 2 ** 30)
    assert r.unsupported_ops == {}


def test_dynamic_routing_by_hand():
    r = flop_count(SmallNet(), input_size=(H, W), convention="dynamic_routing")
    conv1 = (3 * 3 * 3 + 1) * 8 * HW   # + bias
    bn = 2 * 8 * HW                    # affine BN: 2 per element
    relu = 8 * HW
    conv2 = 8 * 4 * HW
    pool = 4 * HW                      # adaptive pool: 1 per input element
    fc = (4 + 1) * 5
    assert r.by_module["body.1"] == pytest.approx(bn / 1e9)
    assert r.raw == conv1 + bn + relu + conv2 + pool + fc
    assert r.total == pytest.approx(r.raw / 1e9)


def test_groups_batch_and_functional_ops():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
            self.w = nn.Parameter(torch.randn(8, 3, 1, 1))

        def forward(self, x):
            y = self.dw(F.conv2d(x, self.w))          # functional conv: gmac sees it, hooks do not
            y = y.flatten(2)                          # N x 8 x HW
            return torch.bmm(y, y.transpose(1, 2))    # N x 8 x 8: 8*8*HW MACs per image

    m = Functional()
    per_image = 3 * 8 * HW + 9 * 8 * HW + 8 * 8 * HW
    assert flop_count(m, (H, W), "gmac", batch=2).raw == 2 * per_image
    assert flop_count(m, (H, W), "hrnet", batch=2).raw == 2 * 9 * 8 * HW


def test_predict_logits_preferred_and_mode_restored():
    class WithPredict(SmallNet):
        def forward(self, batched_inputs):  # the detectron2 contract takes a list of dicts
            raise AssertionError("flop_count must call predict_logits")

        def predict_logits(self, x):
            return self.body(x)

    m = WithPredict().train()
    r = flop_count(m, (H, W), "gmac")
    assert r.raw == CONV1_MACS + CONV2_MACS
    assert m.training
    # predict_logits is a method call on the root, not a module call: the per-module counts must
    # still be keyed by named_modules() names
    assert r.by_module["body"] == pytest.approx((CONV1_MACS + CONV2_MACS) / 1e9)
    assert r.by_module["body.0"] == pytest.approx(CONV1_MACS / 1e9)
    assert r.by_module["body.3"] == pytest.approx(CONV2_MACS / 1e9)
    rows = _table_rows(flop_table(r, max_depth=1))
    assert set(rows) == {"model", "body", "fc"}  # fc has parameters but did not run
    body_params = 3 * 8 * 9 + 8 + 2 * 8 + 8 * 4
    assert rows["body"] == [str(body_params), f"{(CONV1_MACS + CONV2_MACS) / 1e9:.4g}"]
    assert rows["fc"][1] == ""
    rows = _table_rows(flop_table(r, max_depth=2))
    assert rows["body.0"][1] == f"{CONV1_MACS / 1e9:.4g}"
    assert rows["body.3"][1] == f"{CONV2_MACS / 1e9:.4g}"


def _table_rows(table: str) -> dict:
    """A pipe table -> {module name: [cells after the name]} (header and rule rows dropped)."""
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_unknown_convention():
    with pytest.raises(ValueError, match="unknown convention"):
        flop_count(SmallNet(), (H, W), "mmcv")

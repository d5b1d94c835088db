"""The library's FLOPs counter sees the class-centre matmul and the dynamic einsum classifier,
and gives the reference's GMACs (condnet.md section 5) on a meta-device model."""
import pytest
import torch

from dl_lib.analysis.flops import flop_count
from dl_lib.config import config_from_delta
from dl_lib.modeling.condnet import CondNet, ConditionalClassifier, backbone_config


class _Logits(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)[0]


def test_counter_counts_centres_and_dynamic_classifier():
    c, k, h, w = 16, 5, 8, 6
    m = _Logits(ConditionalClassifier(c, k))
    n = h * w
    guidance, centres, dynamic = k * c * n, k * c * n, k * c * n
    generator = (k * (c + 1)) * c          # grouped 1×1: each output sees one C-dim centre
    r = flop_count(m, inputs=torch.randn(1, c, h, w))
    assert r.raw == guidance + centres + dynamic + generator
    assert not any("einsum" in op or "bmm" in op for op in r.unsupported_ops)


@pytest.mark.parametrize("depth,gmacs", [(50, 179.8), (101, 257.4)])
def test_gmacs_at_512(depth, gmacs):
    cfg = config_from_delta(dict(MODEL=dict(META_ARCHITECTURE="CondNet", DEVICE="meta",
                                            BACKBONE=backbone_config(depth),
                                            SEM_SEG_HEAD=dict(NUM_CLASSES=150))),
                            family="condnet")
    with torch.device("meta"):
        model = CondNet(**CondNet.from_config(cfg))
    r = flop_count(model, (512, 512))
    assert r.total == pytest.approx(gmacs, rel=0.01)
    assert "aux_head" not in r.by_module or r.by_module["aux_head"] == 0
    # class centres + dynamic classifier: 2 · K·C·N at stride 4 (N = 128²), about 2.5 GMAC
    assert r.by_module["head.classifier"] * 1e9 == pytest.approx(
        2 * 150 * 512 * 128 ** 2 + 150 * 512 * 128 ** 2 + 76950 * 512, rel=1e-6)

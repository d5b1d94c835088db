"""dl_flops prints a model's own count (the "flops" of its eval outputs) next to the tracker's
tables: dynamic routing's paper, corrected and expected GFLOPs, on the same input."""
import re
import textwrap

import pytest
import torch

from dl_lib.tools.flops import main, model_counts

CONFIG = """
from dl_lib.config import config_from_delta
config = config_from_delta(dict(
    MODEL=dict(DEVICE="cpu", META_ARCHITECTURE="DynamicRoutingSegmentor",
               BACKBONE=dict(LAYER_NUM=3, INIT_CHANNEL=8, NORM="BN"),
               SEM_SEG_HEAD=dict(NUM_CLASSES=5, NORM="BN"), GATE=dict(FIXED_VALUE=1.0)),
    INPUT=dict(FIX_SIZE_FOR_FLOPS=[64, 96])), family="dynamic_routing")
"""

NET = """
import dl_lib.modeling.dynamic_routing  # noqa: F401
from dl_lib.modeling import build_model as _build_model

def build_model(cfg):
    return _build_model(cfg)
"""


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "Dynamic" / "Tiny"
    d.mkdir(parents=True)
    (d / "config.py").write_text(textwrap.dedent(CONFIG))
    (d / "net.py").write_text(textwrap.dedent(NET))
    return d


def _printed(out, name):
    m = re.search(rf"^\| {name}\s*\|\s*([0-9.e+-]+)", out, re.M)
    assert m, f"{name} not in:\n{out}"
    return float(m.group(1))


def test_dynamic_routing_counts_printed_next_to_the_tracker(folder, capsys):
    assert main(["--playground", str(folder), "--convention", "dynamic_routing"]) == 0
    out = capsys.readouterr().out
    assert "Convention: dynamic_routing" in out
    assert "The model's own count" in out
    # every route forced open: the counts do not depend on the random input; compare with a run
    from dl_lib import playground

    _, model = playground.build(str(folder))
    model.eval()
    with torch.no_grad():
        model.forward_logits(torch.randn(1, 3, 64, 96))
    cost = model.last_cost
    for name, value in (("real_gflops", cost.real), ("real_corrected_gflops", cost.real_corrected),
                        ("expt_gflops", cost.expt)):
        assert _printed(out, name) == pytest.approx(float(value[0]) / 1e3, rel=1e-5)
    # the tracker's dynamic_routing total is the tracked part of the corrected count
    total = float(re.search(r"^Total: ([0-9.e+-]+)", out, re.M).group(1))
    assert total == pytest.approx(float(cost.real_tracked[0]) / 1e3, rel=1e-5)


def test_models_without_own_counts_print_none():
    class Plain(torch.nn.Module):
        pixel_mean = torch.zeros(3, 1, 1)
        pixel_std = torch.ones(3, 1, 1)

        def preprocess_images(self, batched_inputs):  # the list-of-dicts contract
            raise AssertionError("not called")

        def forward(self, batched_inputs):
            return [{"sem_seg": torch.zeros(2, 4, 4)} for _ in batched_inputs]

    assert model_counts(Plain(), torch.zeros(2, 3, 4, 4)) is None
    assert model_counts(torch.nn.Conv2d(3, 2, 1), torch.zeros(1, 3, 4, 4)) is None

    class Counted(Plain):
        def forward(self, batched_inputs):
            return [{"sem_seg": torch.zeros(2, 4, 4), "flops": float(i)}
                    for i, _ in enumerate(batched_inputs)]

    assert model_counts(Counted(), torch.zeros(2, 3, 4, 4)) == [{"flops": 0.0}, {"flops": 1.0}]

"""``MODEL.GATE.RUN_ZERO_FED_CELLS``: a cell whose input routes are all closed routes of cells that
ran. The original runs it on an all-zero input (its closed routes are zero tensors; BN biases make
the output non-zero, reference section 2.5); by default ours skips it (issue point 4). With the
switch on, in every skip mode, a mixed batch gives the original's logits (``original_reference.py``)
image by image, and the FLOPs counts charge the cell as the original's counter does (section 3.3).

The network: 6 layers of width 8, the keep route of cell 3.3 closed for both images and the down
route of 3.2 closed for image 1 only, so that cell 4.3 is fed only by closed routes for image 1.
"""
import pytest
import torch

from dl_lib.config import config_from_delta
from dl_lib.modeling import build_model
from dl_lib.modeling.dynamic_routing import flops as fl
from dl_lib.modeling.dynamic_routing.convert import STEM_INPUT_CONV

from original_reference import original_logits

SKIP_MODES = ("dense", "subbatch", "per_image")
ZERO_FED = "4.3"  # scale 3 of layer 4: inputs down(3.2) and keep(3.3); routes keep and up
MIXED = 1  # image 0 reaches 4.3 by down(3.2); image 1 only by closed routes


def _config(run_zero_fed_cells):
    return config_from_delta(dict(MODEL=dict(
        META_ARCHITECTURE="DynamicRoutingSegmentor", DEVICE="cpu",
        PIXEL_MEAN=[123.675, 116.28, 103.53], PIXEL_STD=[1.0, 1.0, 1.0],
        BACKBONE=dict(LAYER_NUM=6, INIT_CHANNEL=8, NORM="BN"),
        GATE=dict(RUN_ZERO_FED_CELLS=run_zero_fed_cells),
        SEM_SEG_HEAD=dict(NUM_CLASSES=5, NORM="BN"))), family="dynamic_routing")


def _original_layout(model):
    """Our state dict in the original's names, stem back to BGR input (the converter's inverse)."""
    sd = {("sem_seg_head." + k[5:] if k.startswith("head.") else k): v.detach().clone()
          for k, v in model.state_dict().items()}
    sd[STEM_INPUT_CONV] = sd[STEM_INPUT_CONV].flip(1)
    return sd


@pytest.fixture(scope="module")
def network():
    """(model with the switch off, its weights in the original layout, two RGB 64x64 images)."""
    torch.manual_seed(0)
    model = build_model(_config(False)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-zero biases: zeros in, non-zero out
                last = name.endswith(("op.3.norm", "res_up.1.norm", "res_down.1.norm"))
                m.weight.copy_((0.1 + 0.2 * torch.rand(m.weight.shape, generator=gen)) if last else
                               (0.6 + 0.6 * torch.rand(m.weight.shape, generator=gen)))
                m.bias.copy_(0.2 * (torch.rand(m.bias.shape, generator=gen) - 0.5))
                m.running_mean.copy_(0.2 * (torch.rand(m.running_mean.shape, generator=gen) - 0.5))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
        cells = model.backbone.cells_dict()
        # what 4.3 makes of zeros is its BNs' biases: large enough to matter in the logits
        cells[ZERO_FED].cell_ops._ops[0].op[3].norm.bias.add_(1.0)
        # Gates tanh(1.5) whatever the input (open unless closed below): the costs of the cells
        # after 4.3 do not move with their inputs, so the count's change is 4.3's alone.
        for cell in cells.values():
            cell.gate_conv_beta[2].weight.zero_()
        cells["3.3"].gate_conv_beta[2].bias[0] = -50.0  # keep of 3.3 closed for both images
    images = [(128 + 100 * torch.rand(3, 64, 64, generator=gen) - 50 * i).round().to(torch.uint8)
              for i in range(2)]
    # down of 3.2 open for image 0, closed for image 1: its pre-activation w . pool + b is +1 / -1
    pooled = []
    hook = cells["3.2"].gate_conv_beta[1].register_forward_hook(
        lambda mod, inp, out: pooled.extend(out.flatten(1)))
    run(model, images, "dense")
    hook.remove()
    d = pooled[0] - pooled[1]
    with torch.no_grad():
        last = cells["3.2"].gate_conv_beta[2]
        last.weight[-1] = (2 * d / d.dot(d)).view_as(last.weight[-1])
        last.bias[-1] = -(pooled[0] + pooled[1]).dot(d) / d.dot(d)
    return model, _original_layout(model), images


def run(model, images, mode, batch=True):
    """Eval outputs of ``images`` (as one batch, or one image per forward) in skip mode ``mode``."""
    model.backbone.skip_mode = mode
    with torch.no_grad():
        inputs = [{"image": im, "height": 64, "width": 64} for im in images]
        return model(inputs) if batch else [model([i])[0] for i in inputs]


def rel_err(ours, ref):
    return float((ours - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module")
def originals(network):
    _, sd, images = network
    return [original_logits(sd, im.flip(0).float()) for im in images]


def test_the_network_has_one_cell_fed_only_by_closed_routes(originals):
    recs = [rec for _, rec in originals]
    assert recs[0].zero_input_cells == [] and recs[MIXED].zero_input_cells == [ZERO_FED]
    assert recs[0].gates["3.2"][-1] > 0.5 and recs[MIXED].gates["3.2"][-1] == 0
    # on zeros, its gates open (BN biases): the original runs its cell op and both routes
    assert bool((recs[MIXED].gates[ZERO_FED] > 0.5).all()) and not recs[MIXED].skipped


@pytest.mark.parametrize("mode", SKIP_MODES)
def test_default_skips_the_cell_switch_gives_the_original_logits(network, originals, mode):
    model, sd, images = network
    ours_rule, _ = original_logits(sd, images[MIXED].flip(0).float(), absent_when_closed=True)
    try:
        for batch in (True, False):
            off = [o["sem_seg"] for o in run(model, images, mode, batch)]
            assert rel_err(off[0], originals[0][0][0]) < 1e-4  # no zero-fed cell: the same
            assert rel_err(off[MIXED], ours_rule[0]) < 1e-4
            assert rel_err(off[MIXED], originals[MIXED][0][0]) > 1e-3  # the deviation
            model.backbone.run_zero_fed_cells = True
            on = [o["sem_seg"] for o in run(model, images, mode, batch)]
            model.backbone.run_zero_fed_cells = False
            for i in range(2):
                assert rel_err(on[i], originals[i][0][0]) < 1e-4, (mode, batch, i)
    finally:
        model.backbone.run_zero_fed_cells = False


def test_the_config_key_sets_the_switch():
    assert _config(False).MODEL.GATE.RUN_ZERO_FED_CELLS is False  # the family's default
    model = build_model(_config(True))
    assert model.backbone.run_zero_fed_cells is True


def test_cost_of_the_zero_fed_cell_as_the_original_counts_it(network, originals):
    """Switch on: image 1 adds the cell op of 4.3 (its gates open on zeros) and its keep and up
    routes (charged to 5.3 and 5.2) to the real count, max(g) * op + g_keep * keep + g_up * up to
    the expected count (its gate was charged already); the same in every mode; image 0 unchanged."""
    model, _, images = network
    g = originals[MIXED][1].gates[ZERO_FED]  # keep, up
    h = w = 2  # 64x64 input: stem 16x16, scale 3 (width 64) 2x2
    body, keep, up = fl.sep_conv(h, w, 64), fl.keep_route(h, w, 64), fl.up_route(h, w, 64)
    costs = {}
    try:
        for on in (False, True):
            model.backbone.run_zero_fed_cells = on
            for mode in SKIP_MODES:
                costs[on, mode] = [o["flops"] for o in run(model, images, mode)]
    finally:
        model.backbone.run_zero_fed_cells = False
    for on in (False, True):
        for mode in SKIP_MODES[1:]:
            for i in range(2):
                for key, v in costs[on, "dense"][i].items():
                    assert costs[on, mode][i][key] == pytest.approx(v, rel=1e-6), (on, mode, i, key)
    off, on_ = costs[False, "subbatch"], costs[True, "subbatch"]
    assert on_[0] == pytest.approx(off[0], rel=1e-9)
    assert (on_[MIXED]["real_gflops"] - off[MIXED]["real_gflops"]) * 1e3 == pytest.approx(
        body + keep + up, rel=1e-5)
    expected = float(g.max()) * body + float(g[0]) * keep + float(g[1]) * up
    assert (on_[MIXED]["expt_gflops"] - off[MIXED]["expt_gflops"]) * 1e3 == pytest.approx(
        expected, rel=1e-5)
    # what runs (the corrected count) grows by at least the gate network, cell op and routes
    assert (on_[MIXED]["real_corrected_gflops"] - off[MIXED]["real_corrected_gflops"]) * 1e3 > body + keep + up

"""The FLOPs budget loss ``LOSS_WEIGHT * warm * (expected / FLOPS_ALL - LOSS_MU)^2`` (reference
section 3.4): its value and its gradient w.r.t. the gate biases against the formula and the chain
rule computed here, the warm-up schedule, and FLOPS_ALL (given, or derived from the batch's size).

The tiny network's gates are made input-independent (last gate conv weights 0), so each gate is
``max(0, tanh(bias))`` and the expected count is a closed-form function of the biases: the sum
over cells of ``max_k g_k * F_cell`` plus, over consumed routes, ``g_r * F_r``.
"""
import math

import pytest
import torch
from test_routing_flops import Net, f_route, f_sep, name_of, producers, routes_of

from dl_lib.config import config_from_delta
from dl_lib.modeling.dynamic_routing import DynamicRoutingSegmentor, dynamic_routing_layer16

NET = Net(layers=4, cells=(2, 3, 4, 4), c0=8, height=32, width=32)


def tiny_model(biases, **budget):
    torch.manual_seed(0)
    model = dynamic_routing_layer16(layer_num=NET.layers, cell_num_list=list(NET.cells),
                                    init_channel=NET.c0, norm="BN", num_classes=5)
    with torch.no_grad():
        for name, cell in model.backbone.cells():
            cell.gate_conv_beta[2].weight.zero_()
            cell.gate_conv_beta[2].bias.copy_(torch.tensor(biases[name]))
    model.budget.update(dict(constrain=True, loss_weight=0.8, loss_mu=0.1, flops_all=0.0,
                             unupdate_rate=0.4, warm_up=True, warm_up_rate=0.02), **budget)
    return model.train()


def random_biases(seed=0):
    """Distinct biases per route, about a quarter of them closed (negative)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for l in range(-1, NET.layers):
        for c in ([0] if l == -1 else range(NET.cells[l])):
            n = len(routes_of(l, c, NET))
            out[name_of(l, c)] = (torch.rand(n, generator=g) * 3 - 0.75).tolist()
    return out


def batch(height=NET.height, width=NET.width, n=2):
    torch.manual_seed(1)
    return [{"image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8),
             "sem_seg": torch.randint(0, 5, (height, width))} for _ in range(n)]


def expected_and_gradient(biases, net=NET):
    """Expected MFLOPs of one image (training: every route runs) and dE/d(bias) per cell/route."""
    gate = {k: [max(0.0, math.tanh(b)) for b in v] for k, v in biases.items()}
    dgate = {k: [(1 - math.tanh(b) ** 2) if b > 0 else 0.0 for b in v] for k, v in biases.items()}
    grad = {k: [0.0] * len(v) for k, v in biases.items()}
    expt = 0.0
    for l in range(0, net.layers):
        for c in range(net.cells[l]):
            h, w = net.height // 4 >> c, net.width // 4 >> c
            ch, name = net.c0 << c, name_of(l, c)
            g = gate[name]
            k = max(range(len(g)), key=g.__getitem__)
            expt += g[k] * f_sep(h, w, ch)
            grad[name][k] += dgate[name][k] * f_sep(h, w, ch)
            for pl, pc, route in producers(l, c, net):  # the route's cost, charged here
                pname = name_of(pl, pc)
                ri = routes_of(pl, pc, net).index(route)
                ph, pw = net.height // 4 >> pc, net.width // 4 >> pc
                cost = f_route(route, ph, pw, net.c0 << pc)
                expt += gate[pname][ri] * cost
                grad[pname][ri] += dgate[pname][ri] * cost
    return expt, grad


def expected_all_open(net=NET):
    return expected_and_gradient({k: [50.0] * len(v) for k, v in random_biases().items()}, net)[0]


def test_budget_loss_value_and_gradient_match_the_formula():
    biases = random_biases()
    model = tiny_model(biases, flops_all=7.5)
    model.set_training_progress(50, 100)  # past UNUPDATE_RATE + WARM_UP_RATE: warm = 1
    losses = model(batch())
    expt, dexpt = expected_and_gradient(biases)
    weight, mu, flops_all = 0.8, 0.1, 7.5
    want = weight * (expt / flops_all - mu) ** 2
    assert float(losses["loss_budget"].detach()) == pytest.approx(want, rel=1e-5)
    assert losses["expt_gflops"] == pytest.approx(expt / 1e3, rel=1e-5)
    assert losses["budget_ratio"] == pytest.approx(expt / flops_all, rel=1e-5)

    cells = model.backbone.cells_dict()
    params = [cells[name].gate_conv_beta[2].bias for name in biases]
    grads = torch.autograd.grad(losses["loss_budget"], params)
    outer = weight * 2 * (expt / flops_all - mu) / flops_all
    closed = 0
    for name, got in zip(biases, grads):
        want_grad = [outer * d for d in dexpt[name]]
        assert got.tolist() == pytest.approx(want_grad, rel=1e-4, abs=1e-7), name
        closed += sum(b <= 0 for b in biases[name])
    assert closed > 0  # closed gates are in the test: their gradient is exactly 0


def test_warm_up_schedule():
    model = tiny_model(random_biases(), flops_all=7.5)
    warm = {}
    for it in (0, 39, 40, 41, 42, 50, 99):
        model.set_training_progress(it, 100)
        warm[it] = model.budget_warm()
    assert warm[0] == warm[39] == 0.0  # before UNUPDATE_RATE
    assert warm[40] == 0.0 and warm[41] == pytest.approx(0.5) and warm[42] == pytest.approx(1.0)
    assert warm[50] == warm[99] == 1.0
    model.budget["warm_up"] = False
    model.set_training_progress(40, 100)
    assert model.budget_warm() == 1.0
    model.set_training_progress(39, 100)
    assert model.budget_warm() == 0.0

    # the loss follows: absent before UNUPDATE_RATE, times warm during the ramp
    model.budget["warm_up"] = True
    expt, _ = expected_and_gradient(random_biases())
    with torch.no_grad():
        model.set_training_progress(39, 100)
        assert "loss_budget" not in model(batch())
        model.set_training_progress(41, 100)
        half = float(model(batch())["loss_budget"])
        model.budget["constrain"] = False
        model.set_training_progress(50, 100)
        assert "loss_budget" not in model(batch())
    assert half == pytest.approx(0.5 * 0.8 * (expt / 7.5 - 0.1) ** 2, rel=1e-5)


@pytest.mark.parametrize("height,width", [(32, 32), (64, 32)])
def test_flops_all_derived_from_the_batch_size(height, width):
    biases = random_biases()
    model = tiny_model(biases, flops_all=0.0)
    model.set_training_progress(50, 100)
    with torch.no_grad():
        losses = model(batch(height, width))
    net = Net(layers=4, cells=(2, 3, 4, 4), c0=8, height=height, width=width)
    expt, _ = expected_and_gradient(biases, net)
    flops_all = expected_all_open(net)
    assert model.backbone.expected_all_open(height, width) == pytest.approx(flops_all, rel=1e-9)
    assert losses["budget_ratio"] == pytest.approx(expt / flops_all, rel=1e-5)
    assert float(losses["loss_budget"]) == pytest.approx(0.8 * (expt / flops_all - 0.1) ** 2,
                                                         rel=1e-5)


def test_layer16_flops_all_at_768():
    """Reference section 3.3: Layer16's expected count with every route open at a 768x768 crop is
    26,892 (26,891.7), the number the original's FLOPS_ALL = 26300 approximates."""
    model = dynamic_routing_layer16(norm="BN")
    assert round(model.backbone.expected_all_open(768, 768), 1) == 26_891.7
    assert round(model.backbone.expected_all_open(1024, 2048)) == 95_615


def test_budget_keys_reach_the_model():
    cfg = config_from_delta(dict(MODEL=dict(
        META_ARCHITECTURE="DynamicRoutingSegmentor",
        BACKBONE=dict(LAYER_NUM=4, INIT_CHANNEL=8, NORM="BN"), SEM_SEG_HEAD=dict(NORM="BN"),
        BUDGET=dict(CONSTRAIN=True, LOSS_WEIGHT=0.5, LOSS_MU=0.2, FLOPS_ALL=123.0,
                    UNUPDATE_RATE=0.3, WARM_UP=False, WARM_UP_RATE=0.05))),
        family="dynamic_routing")
    model = DynamicRoutingSegmentor(**DynamicRoutingSegmentor.from_config(cfg))
    assert model.budget == dict(constrain=True, loss_weight=0.5, loss_mu=0.2, flops_all=123.0,
                                unupdate_rate=0.3, warm_up=False, warm_up_rate=0.05)

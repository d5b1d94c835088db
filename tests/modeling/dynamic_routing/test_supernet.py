"""The routing supernet's structure against the original's facts (reference sections 1-2): cells
per layer, the routes of every cell and what it sums, parameter counts and state-dict keys of
Layer16/Layer33, the soft gate, SMALL_GATE's input, and scheduled drop path."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from dl_lib.modeling.dynamic_routing import (DynamicNetwork, dynamic_routing_layer16,
                                             dynamic_routing_layer33, soft_gate)
from dl_lib.modeling.dynamic_routing.dynamic_routing import MixedOp

KEY_DUMP = os.path.join(os.path.dirname(__file__), "dynamic_routing_layer16_keys.txt")
CELL_LISTS = {16: [2, 3, 4] + [4] * 13, 33: [2, 3, 4] + [4] * 30}


def expected_cell(l: int, c: int, L: int, n_l: int):
    """Reference 1.2, written out: (output routes in gate order, inputs summed) of cell c of
    layer l; inputs are (route, producing cell) of layer l-1 ("init" for layer 0)."""
    last = l == L - 1
    routes = ["keep"]
    if c > 0 and not last:
        routes.append("up")
    if c < 3 and not last:
        routes.append("down")
    if l == 0:
        return routes, {0: [("keep", 0)], 1: [("down", 0)]}[c]
    inputs = []
    if c > 0:  # from the cell above in resolution (its down route)
        inputs.append(("down", c - 1))
    if not (l <= 2 and c == n_l - 1):  # the newest scale of layers 0-2 has no keep input
        inputs.append(("keep", c))
    if (c < n_l - 1) if l > 2 else (c < n_l - 2):  # from the cell below (its up route)
        inputs.append(("up", c + 1))
    return routes, inputs


@pytest.mark.parametrize("layers", [16, 33])
def test_cells_and_routes_follow_the_reference_table(layers):
    net = DynamicNetwork(layer_num=layers, cell_num_list=CELL_LISTS[layers], init_channel=4)
    rows = net.all_cell_list
    assert [len(r) for r in rows] == CELL_LISTS[layers]
    assert sum(len(r) for r in rows) == {16: 61, 33: 129}[layers]
    init = net.init_layer
    assert (init.allow_up, init.allow_down, init.gate_num) == (False, True, 2)
    assert init.gate_conv_beta[2].out_channels == 2
    for l, row in enumerate(rows):
        for c, cell in enumerate(row):
            routes, _ = expected_cell(l, c, layers, len(row))
            assert list(cell.route_index) == routes, (l, c)
            assert cell.gate_num == len(routes) and cell.gate_conv_beta[2].out_channels == len(routes)
            # gate order: keep, up, down last
            assert cell.route_index["keep"] == 0
            if "down" in routes:
                assert cell.route_index["down"] == len(routes) - 1
            assert cell.channels == 4 * 2 ** c


@pytest.mark.parametrize("layers", [16, 33])
def test_each_cell_sums_exactly_its_reference_inputs(layers):
    """With every gate 1, the input X of each cell (what its cell operation sees) equals the sum
    of the route outputs the table names, each computed from the producing cell's modules."""
    torch.manual_seed(0)
    net = DynamicNetwork(layer_num=layers, cell_num_list=CELL_LISTS[layers], init_channel=4)
    net.eval()
    net.force_gates(1.0)
    xs, routes = {}, {}
    hooks = []
    for name, cell in net.cells():
        hooks.append(cell.cell_ops.register_forward_hook(
            lambda m, inp, out, name=name: xs.__setitem__(name, inp[0].clone())))
        hooks.append(cell.res_keep.register_forward_hook(
            lambda m, inp, out, name=name: routes.__setitem__((name, "keep"), out.clone())))
        if cell.allow_up:
            hooks.append(cell.res_up.register_forward_hook(
                lambda m, inp, out, name=name: routes.__setitem__(
                    (name, "up"), F.interpolate(out, scale_factor=2, mode="bilinear",
                                                align_corners=False))))
        if cell.allow_down:
            hooks.append(cell.res_down.register_forward_hook(
                lambda m, inp, out, name=name: routes.__setitem__((name, "down"), out.clone())))
    with torch.no_grad():
        net(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    for l, row in enumerate(net.all_cell_list):
        prev = (lambda c: "init") if l == 0 else (lambda c, l=l: f"{l - 1}.{c}")
        for c in range(len(row)):
            _, inputs = expected_cell(l, c, layers, len(row))
            want = sum(routes[prev(src), route] for route, src in inputs)
            torch.testing.assert_close(xs[f"{l}.{c}"], want, rtol=1e-5, atol=1e-5,
                                       msg=f"cell {l}.{c} should sum {inputs}")
    # the outputs are the last layer's keep routes
    assert len(net.all_cell_list[-1]) == 4


def test_layer16_parameters_and_keys_match_the_original():
    model = dynamic_routing_layer16(norm="BN")
    assert sum(p.numel() for p in model.parameters()) == 17_784_968
    with open(KEY_DUMP) as f:
        lines = [ln.split("\t") for ln in f if ln.strip() and not ln.startswith("#")]
    want = {k.replace("sem_seg_head.", "head.", 1): tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
            for k, shape, _ in lines}
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(want) == 1932
    assert set(got) == set(want)
    assert got == want


@pytest.mark.slow
def test_layer33_parameter_count():
    model = dynamic_routing_layer33(norm="BN")
    assert sum(p.numel() for p in model.parameters()) == 38_871_666


def test_soft_gate_is_max0_tanh_with_zero_gradient_when_closed():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.3, 1.5, 4.0], requires_grad=True)
    g = soft_gate(x)
    want = torch.clamp(torch.tanh(x.detach()), min=0)
    torch.testing.assert_close(g, want)
    assert float(g[4].detach()) == pytest.approx(math.tanh(1.5))  # GATE_INIT_BIAS 1.5 -> 0.905
    g.sum().backward()
    grad = x.grad
    assert grad[0] == 0 and grad[1] == 0  # closed: no gradient to reopen it
    torch.testing.assert_close(grad[3:], 1 - torch.tanh(x.detach()[3:]) ** 2)


def _tiny_net(**kw):
    return DynamicNetwork(layer_num=4, cell_num_list=[2, 3, 4, 4], init_channel=8, **kw)


@pytest.mark.parametrize("small", [False, True])
def test_gate_values_and_small_gate_input_size(small):
    torch.manual_seed(0)
    net = _tiny_net(small_gate=small, gate_init_bias=0.7).eval()
    cell = net.all_cell_list[1][1]  # scale 1/8, 3 gates
    x = torch.randn(2, cell.channels, 16, 20)
    seen = {}
    hook = cell.gate_conv_beta.register_forward_hook(
        lambda m, inp, out: seen.update(inp=inp[0], out=out))
    with torch.no_grad():
        g = cell.gates(x)
    hook.remove()
    assert g.shape == (2, 3)
    torch.testing.assert_close(g, torch.clamp(torch.tanh(seen["out"].flatten(1)), min=0))
    if small:  # a quarter per side, bilinear, no corner alignment
        assert tuple(seen["inp"].shape[-2:]) == (4, 5)
        torch.testing.assert_close(seen["inp"], F.interpolate(x, scale_factor=0.25, mode="bilinear",
                                                              align_corners=False))
    else:
        assert seen["inp"] is x
    # the gate bias sets the gates of an input the first conv maps to zero
    with torch.no_grad():
        g0 = cell.gates(torch.zeros(1, cell.channels, 16, 20))
    # zero input -> BN (initial stats) -> ReLU -> 0: only the bias is left
    torch.testing.assert_close(g0, torch.full((1, 3), math.tanh(0.7)))
    # same parameters with or without the small gate (checkpoint-compatible)
    assert sum(p.numel() for p in _tiny_net(small_gate=True).parameters()) == \
        sum(p.numel() for p in _tiny_net().parameters())


def test_drop_path_only_in_training_with_the_scheduled_keep_probability(monkeypatch):
    torch.manual_seed(0)
    net = _tiny_net(drop_prob=0.3)
    seen = []
    original = MixedOp.forward

    def record(self, x, keep_prob=1.0):
        seen.append(keep_prob)
        return original(self, x, keep_prob)

    monkeypatch.setattr(MixedOp, "forward", record)
    x = torch.randn(2, 3, 64, 64)
    net.train()
    net.step_rate = 0.5
    net(x)
    # init cell: no drop path; layer l of L: 1 - progress * (l+1)/L * DROP_PROB
    want = [1.0] + [1 - 0.5 * (l + 1) / 4 * 0.3 for l, n in enumerate([2, 3, 4, 4]) for _ in range(n)]
    assert seen == pytest.approx(want)
    seen.clear()
    net.eval()
    with torch.no_grad():
        net(x)
    assert seen and all(p == 1.0 for p in seen)
    # DROP_PROB <= 1e-4 is off
    seen.clear()
    off = _tiny_net(drop_prob=1e-5).train()
    off.step_rate = 1.0
    off(x)
    assert all(p == 1.0 for p in seen)


def test_drop_path_drops_or_rescales_whole_samples():
    torch.manual_seed(0)
    op = MixedOp(8, "BN").train()
    x = torch.randn(64, 8, 6, 6)
    y_full = op._ops[0](x)
    torch.manual_seed(1)
    y = op(x, keep_prob=0.6)
    dropped = [(y[i] - x[i]).abs().max() < 1e-6 for i in range(64)]
    for i in range(64):
        if not dropped[i]:  # kept samples are rescaled by 1/keep
            torch.testing.assert_close(y[i] - x[i], y_full[i] / 0.6, rtol=1e-4, atol=1e-4)
    assert 10 < sum(dropped) < 45  # ~40% of 64 dropped


@pytest.mark.parametrize("drop_prob", [1.0, 1.5, -0.1])
def test_drop_prob_outside_0_1_is_refused(drop_prob):
    # keep = 1 - progress * (l+1)/L * DROP_PROB would reach 0 (a division by zero) or exceed 1
    with pytest.raises(ValueError, match="DROP_PROB"):
        DynamicNetwork(layer_num=3, cell_num_list=[2, 3, 4], init_channel=8, drop_prob=drop_prob)

"""Real skipping at inference: per image, a closed route is not computed, a cell whose gates all
close passes its input on, a cell none of whose inputs is open does not run (nor its gate
network), and the logits equal dense computation with the closed gates zeroed, image by image
in a mixed batch; forced gates (MODEL.GATE.FIXED_VALUE, a routes dict or file)."""
import json
from collections import defaultdict

import pytest
import torch

from dl_lib.config import get_cfg
from dl_lib.modeling.dynamic_routing import DynamicRoutingSegmentor, dynamic_routing_layer16, soft_gate
from dl_lib.modeling.dynamic_routing.config import add_dynamic_routing_config

THR = 1e-4
SHIFT = {"keep": 0, "up": -1, "down": 1}
IDLE_CELL, IDENTITY_CELL = "2.3", "3.1"


def settle_batch_norms(model, x):
    """BN statistics from x, so activations keep a trained network's scale."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model.forward_logits(x)
    model.eval()


@pytest.fixture(scope="module")
def mixed():
    """A narrow supernet whose images take different routes, and a batch of 4 images."""
    torch.manual_seed(0)
    model = dynamic_routing_layer16(norm="BN", init_channel=8, layer_num=6,
                                    cell_num_list=[2, 3, 4, 4, 4, 4], num_classes=5)
    x = torch.cat([torch.randn(1, 3, 64, 128) * s + o
                   for s, o in [(40, 0), (80, 30), (20, -40), (60, 10)]])
    settle_batch_norms(model, x)
    # Each route's gate bias puts its threshold between the images' gate logits, so that it
    # closes for k of the 4 images (k drawn per route); a few passes, as closing routes changes
    # the inputs of later cells.
    g = torch.Generator().manual_seed(3)
    cells = model.backbone.cells_dict()
    ks = {name: torch.randint(0, 5, (cell.gate_num,), generator=g) for name, cell in cells.items()}
    for _ in range(3):
        logits = raw_gates(model, x, logits=True)
        for name, cell in cells.items():
            bias = cell.gate_conv_beta[2].bias.data
            z = torch.sort(logits[name] - bias, dim=0).values
            for r, k in enumerate(ks[name].tolist()):
                bias[r] = 2.0 - z[0, r] if k == 0 else (-z[-1, r] - 2.0 if k == 4 else
                                                       -(z[k - 1, r] + z[k, r]) / 2)
        # 1.2 sends nothing down: 2.3 (whose only input that is) is idle for every image
        cells["1.2"].gate_conv_beta[2].bias.data = torch.tensor([50.0, 50.0, -50.0])
        cells[IDENTITY_CELL].gate_conv_beta[2].bias.data.fill_(-50.0)  # identity for every image
    return model, x


def raw_gates(model, x, logits=False):
    """Every cell's gates (or their logits) for every image (dense mode runs every gate network)."""
    seen, hooks = {}, []
    act = (lambda z: z) if logits else soft_gate
    for name, cell in model.backbone.cells():
        hooks.append(cell.gate_conv_beta.register_forward_hook(
            lambda m, inp, out, name=name: seen.__setitem__(name, act(out.flatten(1)))))
    model.backbone.skip_mode = "dense"
    with torch.no_grad():
        model.forward_logits(x)
    for h in hooks:
        h.remove()
    model.backbone.skip_mode = "subbatch"
    return seen


def expected_activity(model, gates):
    """From the gate values and the route rules alone: per cell, the images where it is active
    (some input route open), where its body runs, and per route where it is computed."""
    net = model.backbone
    n = next(iter(gates.values())).shape[0]
    active, runs, computed, carries = {}, {}, {}, {}
    order = [(-1, "init", net.init_layer, 0)] + [
        (l, f"{l}.{c}", cell, c) for l, row in enumerate(net.all_cell_list) for c, cell in enumerate(row)]
    for l, name, cell, c in order:
        if l == -1:
            act = [True] * n
        else:
            prev = "init" if l == 0 else None
            sources = [(("init" if prev else f"{l - 1}.{c2}"), r)
                       for c2 in range(len(net.layout[l - 1]) if l > 0 else 1)
                       for r in (net.init_layer if prev else net.all_cell_list[l - 1][c2]).route_index
                       if c2 + SHIFT[r] == c]
            act = [any(carries[s][i] for s in sources) for i in range(n)]
        g = gates[name]
        run = [act[i] and float(g[i].sum()) > THR for i in range(n)]
        active[name], runs[name] = act, run
        for r, k in cell.route_index.items():
            computed[name, r] = [run[i] and float(g[i, k]) > THR for i in range(n)]
            carries[name, r] = [computed[name, r][i] or (r == "keep" and act[i] and not run[i])
                                for i in range(n)]
    return active, runs, computed


def count_calls(model):
    """Hooks recording the batch size of every call of each cell's gate network, cell op and
    route modules."""
    calls, hooks = defaultdict(list), []
    for name, cell in model.backbone.cells():
        mods = {"gate": cell.gate_conv_beta, "body": cell.cell_ops, "keep": cell.res_keep}
        if cell.allow_up:
            mods["up"] = cell.res_up
        if cell.allow_down:
            mods["down"] = cell.res_down
        for what, mod in mods.items():
            hooks.append(mod.register_forward_hook(
                lambda m, inp, out, key=(name, what): calls[key].append(inp[0].shape[0])))
    return calls, hooks


def run(model, x, mode):
    model.backbone.skip_mode = mode
    model.backbone.record_gates = True
    try:
        with torch.no_grad():
            logits = model.forward_logits(x)
    finally:
        model.backbone.skip_mode = "subbatch"
        model.backbone.record_gates = False
    return logits, model.last_cost


def test_the_batch_is_mixed(mixed):
    model, x = mixed
    active, runs, computed = expected_activity(model, raw_gates(model, x))
    assert not any(active[IDLE_CELL]) and any(active[IDENTITY_CELL]) and not any(runs[IDENTITY_CELL])
    mixed_routes = [k for k, v in computed.items() if any(v) and not all(v)]
    assert len(mixed_routes) >= 5, "images should take different routes"
    route_sets = {tuple(v[i] for v in computed.values()) for i in range(x.shape[0])}
    assert len(route_sets) >= 3
    assert any(any(v) and not all(v) for v in runs.values())  # a cell that runs for some only
    assert any(any(v) and not all(v) for v in active.values())  # active for some images only


@pytest.mark.parametrize("mode", ["subbatch", "per_image"])
def test_skipping_equals_dense_per_image_in_a_mixed_batch(mixed, mode):
    model, x = mixed
    dense, cost_d = run(model, x, "dense")
    sparse, cost_s = run(model, x, mode)
    scale = dense.abs().max()
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-4 * float(scale))
    for name in ("expt", "real", "real_corrected", "real_tracked"):
        torch.testing.assert_close(getattr(cost_s, name), getattr(cost_d, name), rtol=1e-5, atol=1e-6)
    for name, g in cost_d.gates.items():  # the gates of cells that ran (0 where idle)
        torch.testing.assert_close(cost_s.gates[name], g, rtol=1e-5, atol=1e-6)
    # each image alone gives its row of the batch
    for i in range(x.shape[0]):
        alone, cost_1 = run(model, x[i:i + 1], "subbatch")
        torch.testing.assert_close(alone[0], dense[i], rtol=1e-4, atol=1e-4 * float(scale))
        assert float(cost_1.real_corrected[0]) == pytest.approx(float(cost_d.real_corrected[i]), rel=1e-5)


def test_dense_reference_zeroes_closed_routes():
    """Dense with every gate forced to 0 except the keep routes at scale 1/4: only the stride-4
    chain runs; the other scales receive nothing, so their features are exactly 0."""
    torch.manual_seed(0)
    model = dynamic_routing_layer16(norm="BN", init_channel=8, layer_num=4, cell_num_list=[2, 3, 4, 4],
                                    num_classes=3).eval()
    net = model.backbone
    routes = {"init": {"keep": 1.0, "down": 0.0}}
    routes.update({name: {"keep": 1.0, **{r: 0.0 for r in cell.route_index if r != "keep"}}
                   for name, cell in net.cells() if name.endswith(".0")})
    net.force_gates(0.0, routes)
    x = torch.randn(2, 3, 64, 64)
    for mode in ("dense", "subbatch"):
        net.skip_mode = mode
        with torch.no_grad():
            feats = net(x)
        assert feats["layer_0"].abs().sum() > 0
        for c in (1, 2, 3):
            assert feats[f"layer_{c}"].abs().max() == 0, (mode, c)


@pytest.mark.parametrize("mode", ["subbatch", "per_image"])
def test_what_is_skipped_does_not_run(mixed, mode):
    model, x = mixed
    n = x.shape[0]
    active, runs, computed = expected_activity(model, raw_gates(model, x))
    calls, hooks = count_calls(model)
    try:
        run(model, x, mode)
    finally:
        for h in hooks:
            h.remove()
    for name, cell in model.backbone.cells():
        want = {"gate": active[name], "body": runs[name]}
        want.update({r: computed[name, r] for r in cell.route_index})
        for what, images in want.items():
            k = sum(images)
            if mode == "subbatch":  # one call on the images that need it
                expect = [k] if k else []
            else:  # one call per image
                expect = [1] * k
            assert calls[name, what] == expect, (name, what, images)
    assert not calls[IDLE_CELL, "gate"] and not calls[IDENTITY_CELL, "body"]
    assert n == 4


def test_dense_runs_everything(mixed):
    model, x = mixed
    calls, hooks = count_calls(model)
    try:
        run(model, x, "dense")
    finally:
        for h in hooks:
            h.remove()
    for name, cell in model.backbone.cells():
        for what in ["gate", "body"] + list(cell.route_index):
            assert calls[name, what] == [4], (name, what)


# ---------------------------------------------------------------- forced gates
def tiny():
    torch.manual_seed(0)
    model = dynamic_routing_layer16(norm="BN", init_channel=8, layer_num=4,
                                    cell_num_list=[2, 3, 4, 4], num_classes=3)
    settle_batch_norms(model, torch.randn(2, 3, 64, 64) * 50)
    return model


def test_fixed_value_forces_every_gate_and_skips_the_gate_networks():
    model = tiny()
    x = torch.randn(2, 3, 64, 64)
    model.backbone.force_gates(1.0)
    calls, hooks = count_calls(model)
    forced, cost = run(model, x, "subbatch")
    for h in hooks:
        h.remove()
    assert all(not calls[name, "gate"] for name, _ in model.backbone.cells())
    assert all(bool((g == 1).all()) for g in cost.gates.values())
    # the same as learned gates that are all exactly 1
    model.backbone.force_gates()
    for _, cell in model.backbone.cells():
        cell.gate_conv_beta[2].bias.data.fill_(50.0)
    learned, _ = run(model, x, "subbatch")
    torch.testing.assert_close(forced, learned)
    # forcing applies at inference only: training computes the gates
    model.backbone.force_gates(0.0)
    model.train()
    calls, hooks = count_calls(model)
    model.forward_logits(x)
    for h in hooks:
        h.remove()
    assert all(calls[name, "gate"] == [2] for name, _ in model.backbone.cells())


def test_forced_routes_dict_file_and_config(tmp_path):
    model = tiny()
    net = model.backbone
    net.force_gates(routes={"1.1": {"keep": 1.0, "up": 0.0, "down": 0.5}})
    cells = net.cells_dict()
    assert cells["1.1"].forced_gates.tolist() == [1.0, 0.0, 0.5]
    assert cells["1.0"].forced_gates is None  # unnamed cells keep their learned gates
    with torch.no_grad():
        model.forward_logits(torch.randn(1, 3, 64, 64))
    net.force_gates(0.25, {"init": {"down": 1.0}})
    assert cells["init"].forced_gates.tolist() == [0.25, 1.0]
    assert cells["3.2"].forced_gates.tolist() == [0.25]
    net.force_gates()
    assert all(c.forced_gates is None for c in cells.values())

    with pytest.raises(KeyError, match="no cell '9.9'"):
        net.force_gates(routes={"9.9": {"keep": 1.0}})
    with pytest.raises(KeyError, match=r"cell '1\.0' has routes \['down', 'keep'\], not \['up'\]"):
        net.force_gates(routes={"1.0": {"up": 1.0}})
    with pytest.raises(ValueError, match=r"only some routes.*\['up', 'down'\]"):
        net.force_gates(routes={"1.1": {"keep": 1.0}})

    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"routes": {"0.1": {"keep": 1.0, "up": 0.0, "down": 0.0}}}))
    cfg = get_cfg()
    add_dynamic_routing_config(cfg)
    cfg.MODEL.BACKBONE.merge_from_list(["LAYER_NUM", 4, "INIT_CHANNEL", 8, "NORM", "BN"])
    cfg.MODEL.GATE.ROUTES_FILE = str(path)
    cfg.MODEL.GATE.FIXED_VALUE = 1.0
    built = DynamicRoutingSegmentor(**DynamicRoutingSegmentor.from_config(cfg))
    bcells = built.backbone.cells_dict()
    assert bcells["0.1"].forced_gates.tolist() == [1.0, 0.0, 0.0]
    assert bcells["2.1"].forced_gates.tolist() == [1.0, 1.0, 1.0]
    cfg.MODEL.GATE.ROUTES_FILE = str(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="MODEL.GATE.ROUTES_FILE"):
        DynamicRoutingSegmentor.from_config(cfg)

"""FLOPs of the routing network: the original's count ("real", paper), the expected count ("expt",
differentiable) and the corrected count ("real_corrected", what runs).

1. A tiny supernet (4 layers, INIT_CHANNEL 8, 64x128 input) on a mixed batch whose images take
   different routes, against sums this file computes itself from the reference's formulas
   (``dynamic_routing.md`` sections 3.1-3.3): cells and routes are enumerated here, not read
   from the model.
2. The corrected count equals what a CostTracker sees run, per image, when cells and routes are
   skipped on sub-batches (the cost_scope bookkeeping).
3. The published whole-network totals (reference section 3.3 table) and per-cell constants
   (section 3.2) at 1024x2048 and 768x768, through the model's own forward at those sizes: the
   feature maps are only shapes there (:class:`ShapesOnly`), so Layer33 costs seconds.

How the tiny batch takes different routes: image 1 is the mean pixel (0 after normalisation).
Every convolution of the network is bias-free and BN at initialisation maps 0 to 0, so all its
features are exactly 0 and each gate is ``max(0, tanh(bias))``; images 0 and 2 are random, and
a gate whose last-conv weights are +-1e4 saturates to 1 or 0 for them. The gate biases and
weights below therefore fix every gate of every image.
"""
import functools
import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from dl_lib.analysis import CostTracker
from dl_lib.modeling.dynamic_routing import dynamic_routing_layer16, dynamic_routing_layer33

M = 1e-6  # MFLOPs
LAYERS, CELLS, C0, NUM_CLASSES = 4, [2, 3, 4, 4], 8, 19
H, W = 64, 128
THR = 1e-4

# ------------------------------------------------------------------ the tiny network's gates
# Per cell, per route: "O" open (bias 1.5), "X" closed (bias -1), "A" open for the random images
# and closed for the zero image (weights +1e4, bias -0.5), "B" the opposite (weights -1e4, bias
# 0.5). Cell 1.2 is forced (force_gates) instead.
DESIGN = {
    "init": {"keep": "O", "down": "A"},
    "0.0": {"keep": "O", "down": "O"},
    "0.1": {"keep": "A", "up": "O", "down": "A"},
    "1.0": {"keep": "O", "down": "X"},
    "1.1": {"keep": "B", "up": "B", "down": "X"},  # random images: all closed -> passes X on
    "2.0": {"keep": "O", "down": "A"},
    "2.1": {"keep": "O", "up": "X", "down": "O"},
    "2.2": {"keep": "A", "up": "O", "down": "X"},
    "2.3": {"keep": "O", "up": "B"},
    "3.0": {"keep": "O"},
    "3.1": {"keep": "A"},
    "3.2": {"keep": "O"},
    "3.3": {"keep": "B"},
}
FORCED = {"1.2": {"keep": 1.0, "up": 0.0, "down": 1.0}}
BIAS = {"O": 1.5, "X": -1.0, "A": -0.5, "B": 0.5}
WEIGHT = {"O": 0.0, "X": 0.0, "A": 1e4, "B": -1e4}
ZERO_IMAGE = 1


def gate_value(kind: str, zero_image: bool) -> float:
    t = lambda v: max(0.0, math.tanh(v))  # noqa: E731
    if kind in "OX":
        return t(BIAS[kind])
    if kind == "A":
        return 0.0 if zero_image else 1.0
    return t(BIAS["B"]) if zero_image else 0.0


# ------------------------------------------------------------------ the supernet, enumerated here
@dataclass
class Net:
    layers: int = LAYERS
    cells: Tuple[int, ...] = tuple(CELLS)
    c0: int = C0
    height: int = H
    width: int = W
    num_classes: int = NUM_CLASSES
    not_run: Tuple[str, ...] = tuple(FORCED)  # cells whose gate network does not run (forced)


TINY = Net()


def routes_of(l: int, c: int, net: Net = TINY) -> List[str]:
    """Output routes of cell (l, c) in gate order (l = -1: the init cell)."""
    if l == -1:
        return ["keep", "down"]
    last = l == net.layers - 1
    up = ["up"] if c > 0 and not last else []
    return ["keep"] + up + (["down"] if c < 3 and not last else [])


def name_of(l: int, c: int) -> str:
    return "init" if l == -1 else f"{l}.{c}"


def producers(l: int, c: int, net: Net = TINY) -> List[Tuple[int, int, str]]:
    """(layer, cell, route) of the routes that cell (l, c) sums."""
    if l == 0:
        return [(-1, 0, "keep")] if c == 0 else [(-1, 0, "down")]
    prev = range(net.cells[l - 1])
    out = []
    if c in prev:
        out.append((l - 1, c, "keep"))
    if c - 1 in prev and "down" in routes_of(l - 1, c - 1, net):
        out.append((l - 1, c - 1, "down"))
    if c + 1 in prev and "up" in routes_of(l - 1, c + 1, net):
        out.append((l - 1, c + 1, "up"))
    return out


def size(c: int, net: Net = TINY) -> Tuple[int, int]:
    return net.height // 4 >> c, net.width // 4 >> c


# The reference's primitives (section 3.1-3.2), MFLOPs.
def f_sep(h, w, ch):
    return h * w * (2 * ch * ch + 23 * ch) * M


def f_cbr(h, w, ci, co):  # 1x1 conv + BN (2/element) + ReLU at the output size h x w
    return (ci * co + 3 * co) * h * w * M


def f_gate(h, w, ch, n):
    return f_cbr(h, w, ch, ch // 2) + h * w * (ch // 2) * M + (ch // 2) * n * M


def f_route(route, h, w, ch):
    if route == "keep":
        return ch * h * w * M
    if route == "up":
        return ch * h * w * M + f_cbr(h, w, ch, ch // 2)
    return ch * h * w * M + f_cbr(h // 2, w // 2, ch, 2 * ch)


def f_stem(h1, w1, h2, w2, out):
    mid = 64
    return ((27 * mid + 3 * mid) * h1 * w1 + 9 * mid * h1 * w1 + (mid * mid + 3 * mid) * h1 * w1 +
            9 * mid * h2 * w2 + (mid * out + 3 * out) * h2 * w2) * M


def decoder_channels(net: Net = TINY):
    ins = [net.c0 << c for c in range(4)]
    return ins, [ins[0]] + [c // 2 for c in ins[1:]]


def expected_costs(gates: Dict[str, List[List[float]]], n: int, net: Net = TINY):
    """Per image: (paper, expected, corrected, corrected-tracked-part) MFLOPs, simulated here.

    ``gates[name][i]``: cell ``name``'s gate values (gate order) for image i."""
    ins, outs = decoder_channels(net)
    H, W, K = net.height, net.width, net.num_classes  # noqa: N806
    h0, w0 = size(0, net)
    per_image = []
    for i in range(n):
        real = f_stem(H // 2, W // 2, H // 4, W // 4, net.c0)
        stem1 = ((H - 3) // 2 + 1, (W - 3) // 2 + 1)
        tracked = f_stem(*stem1, h0, w0, net.c0)
        expt = extra = 0.0
        # pieces[(l, c)] = list of (producer's gate on it, paper cost) for image i
        pieces = {(0, 0): [], (0, 1): []}
        carried = {}  # (l, c, route) -> (gate, paper cost) if data reaches the consumer
        for l in range(-1, net.layers):
            for c in ([0] if l == -1 else range(net.cells[l])):
                ch, (h, w) = net.c0 << c, size(c, net)
                names = routes_of(l, c, net)
                incoming = [(1.0, 0.0)] if l == -1 else [
                    carried[p] for p in producers(l, c, net) if p in carried]
                g = gates[name_of(l, c)][i]
                active = bool(incoming)
                runs = active and sum(g) > THR
                if l >= 0:  # the original counts no init cell
                    real += f_gate(h, w, ch, len(names))  # charged even where it did not run
                    real += runs * f_sep(h, w, ch) + sum((gr > THR) * cost for gr, cost in incoming)
                    expt += active * max(g) * f_sep(h, w, ch)
                    expt += sum(gr * cost for gr, cost in incoming)
                if active and name_of(l, c) not in net.not_run:  # the gate network ran
                    tracked += f_gate(h, w, ch, len(names)) + len(names) * M  # + its bias
                if active:
                    extra += (len(incoming) - 1) * h * w * ch * M  # summing the inputs
                if runs:
                    tracked += f_sep(h, w, ch)
                    extra += h * w * ch * M  # the residual add of the cell op
                for k, route in enumerate(names):
                    if runs and g[k] > THR:
                        tracked += f_route(route, h, w, ch)
                        # the gate product, and the up route's bilinear x2 (4 per output)
                        if route == "up":
                            extra += (4 + 1) * 4 * h * w * (ch // 2) * M
                        elif route == "down":
                            extra += (h // 2) * (w // 2) * 2 * ch * M
                        else:
                            extra += h * w * ch * M
                        carried[(l, c, route)] = (g[k], f_route(route, h, w, ch))
                    elif route == "keep" and active and not runs:
                        carried[(l, c, route)] = (g[k], f_route(route, h, w, ch))  # X passed on
        # decoder: paper at h x h (height for width) without the predictor bias
        real += sum(f_cbr(h0 >> j, h0 >> j, ci, co) for j, (ci, co) in enumerate(zip(ins, outs)))
        real += 9 * outs[0] * K * h0 * h0 * M
        tracked += sum(f_cbr(*size(j, net), ci, co) for j, (ci, co) in enumerate(zip(ins, outs)))
        tracked += (9 * outs[0] + 1) * K * h0 * w0 * M
        for j in range(1, 4):  # upsample level j to level j-1 (4 per output), add the feature
            hj, wj = size(j - 1, net)
            extra += 5 * hj * wj * outs[j] * M
        extra += 4 * H * W * K * M  # the final x4 resize
        per_image.append((real, expt, tracked + extra, tracked))
    return per_image


# ------------------------------------------------------------------ building the tiny network
def tiny_model(skip_mode="subbatch", small_gate=False):
    torch.manual_seed(0)
    model = dynamic_routing_layer16(layer_num=LAYERS, cell_num_list=CELLS, init_channel=C0,
                                    norm="BN", num_classes=NUM_CLASSES, skip_mode=skip_mode,
                                    small_gate=small_gate)
    cells = model.backbone.cells_dict()
    for name, design in DESIGN.items():
        last = cells[name].gate_conv_beta[2]
        assert list(cells[name].route_index) == list(design)  # our enumeration = the model's
        with torch.no_grad():
            for route, k in cells[name].route_index.items():
                last.weight[k].fill_(WEIGHT[design[route]])
                last.bias[k] = BIAS[design[route]]
    model.backbone.force_gates(routes=FORCED)
    model.backbone.record_gates = True
    return model.eval()


def tiny_batch(height=H, width=W):
    torch.manual_seed(1)
    x = torch.randn(3, 3, height, width)
    x[ZERO_IMAGE] = 0.0
    return x


def design_gates(n=3):
    gates = {}
    for name, design in DESIGN.items():
        gates[name] = [[gate_value(k, i == ZERO_IMAGE) for k in design.values()] for i in range(n)]
    for name, values in FORCED.items():
        gates[name] = [list(values.values()) for _ in range(n)]
    return gates


def run_tiny(skip_mode="subbatch"):
    model = tiny_model(skip_mode)
    with torch.no_grad():
        model.forward_logits(tiny_batch())
    return model, model.last_cost


@pytest.mark.parametrize("skip_mode", ["subbatch", "per_image", "dense"])
def test_tiny_supernet_counts_match_hand_computed_sums(skip_mode):
    model, cost = run_tiny(skip_mode)
    gates = design_gates()
    # the design took hold: every gate that ran has the value it was built for (idle cells: 0)
    for name, per_image in cost.gates.items():
        for i in range(3):
            got = per_image[i].tolist()
            if any(got):
                assert got == pytest.approx(gates[name][i], abs=1e-6), (name, i)
    want = expected_costs(gates, 3)
    # the images really differ (mixed batch): otherwise this would not test per-image counts
    assert len({round(w[0], 3) for w in want}) >= 2 and len({round(w[2], 3) for w in want}) >= 2
    for i, (real, expt, corrected, tracked) in enumerate(want):
        assert float(cost.real[i]) == pytest.approx(real, rel=1e-6), ("real", i)
        assert float(cost.expt[i]) == pytest.approx(expt, rel=1e-5), ("expt", i)
        assert float(cost.real_corrected[i]) == pytest.approx(corrected, rel=1e-6), ("corrected", i)
        assert float(cost.real_tracked[i]) == pytest.approx(tracked, rel=1e-6), ("tracked", i)


def test_eval_outputs_carry_the_three_counts_in_gflops():
    model = tiny_model()
    x = tiny_batch()
    # RGB 0-255 images that normalise to x (image 1: exactly the mean pixel)
    inputs = [{"image": x[i] * model.pixel_std + model.pixel_mean, "height": H, "width": W}
              for i in range(3)]
    with torch.no_grad():
        out = model(inputs)
    want = expected_costs(design_gates(), 3)
    for i, (real, expt, corrected, _) in enumerate(want):
        f = out[i]["flops"]
        assert f["real_gflops"] == pytest.approx(real / 1e3, rel=1e-5)
        assert f["expt_gflops"] == pytest.approx(expt / 1e3, rel=1e-5)
        assert f["real_corrected_gflops"] == pytest.approx(corrected / 1e3, rel=1e-5)


# ------------------------------------------------------------------ corrected = executed
@pytest.mark.parametrize("skip_mode,small_gate", [
    ("subbatch", False), ("per_image", False), ("subbatch", True)])
def test_corrected_tracked_part_equals_the_executed_count_per_image(skip_mode, small_gate):
    model = tiny_model(skip_mode, small_gate)
    # SMALL_GATE runs the gates at 1/4 size: 128 x 256 keeps the stride-32 gates at 1 x 2
    x = tiny_batch(*((2 * H, 2 * W) if small_gate else (H, W)))
    with torch.no_grad(), CostTracker(model, ["dynamic_routing"], num_images=3) as tracker:
        model.forward_logits(x)
    executed = [c["dynamic_routing"] * 1e3 for c in tracker.per_image()]  # GFLOPs -> MFLOPs
    tracked = model.last_cost.real_tracked.tolist()
    # images 0 and 2 take one route set (a non-contiguous sub-batch), image 1 another
    assert executed[0] == pytest.approx(executed[2]) and abs(executed[0] - executed[1]) > 0.1
    assert executed == pytest.approx(tracked, rel=1e-6)
    assert tracker.unsupported("dynamic_routing") == {}


# ------------------------------------------------------------------ published totals
class ShapesOnly(TorchDispatchMode):
    """Runs a forward with every large tensor as a shape only: an ATen op on a tensor of at least
    ``big`` elements is evaluated on the meta device and returns an uninitialised tensor of the
    right size and strides; small ops (gates, the per-image cost sums) run for real. The model's
    own code runs at the true shapes, without the arithmetic of its feature maps. Only meaningful
    where no decision reads a large tensor's values (here: gates forced)."""

    def __init__(self, big: int = 1 << 14):
        super().__init__()
        self.big, self._meta_out = big, {}

    @staticmethod
    def _tensors(args, kwargs):
        for a in list(args) + list(kwargs.values()):
            for t in (a if isinstance(a, (list, tuple)) else (a,)):
                if isinstance(t, torch.Tensor):
                    yield t

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if all(t.numel() < self.big for t in self._tensors(args, kwargs)):
            return func(*args, **kwargs)
        def describe(a):
            return (tuple(a.shape), a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a

        key = (func, repr(tree_map(describe, (args, kwargs))))
        out = self._meta_out.get(key)
        if out is None:  # meta kernels are slow Python; the network repeats few shapes
            meta = lambda a: a.to("meta") if isinstance(a, torch.Tensor) else a  # noqa: E731
            out = self._meta_out[key] = func(*tree_map(meta, args), **tree_map(meta, kwargs))
        if all(o.numel() < self.big for o in tree_leaves(out) if isinstance(o, torch.Tensor)):
            return func(*args, **kwargs)  # a small result of a large input: compute it
        if func._schema.is_mutable and isinstance(out, torch.Tensor):
            return args[0]  # in place (relu_, index_add_): the input is the result
        return tree_map(lambda o: torch.empty_strided(o.shape, o.stride(), dtype=o.dtype)
                        if isinstance(o, torch.Tensor) else o, out)


@functools.lru_cache(maxsize=None)
def all_open_cost(build, height, width, **kw):
    """(model, RoutingCost of one image at height x width with every gate forced to 1: the
    reference's measurement, gates forced ~1); cached, several tests read the same runs."""
    model = build(norm="BN", **kw).eval()
    if model.backbone.gate_on:
        model.backbone.force_gates(1.0)
    with torch.no_grad(), ShapesOnly():
        model.forward_logits(torch.empty(1, 3, height, width))
    return model, model.last_cost


@pytest.fixture(scope="module", autouse=True)
def _free_cached_models():
    yield
    all_open_cost.cache_clear()  # the full-size models hold hundreds of MB


def test_shapes_only_gives_the_real_forward_costs():
    """The trick changes no count: the tiny network's costs with shapes only = a real forward."""
    model, cost = run_tiny()
    with torch.no_grad(), ShapesOnly(big=1 << 10):
        model.backbone.force_gates(1.0)  # decisions must not read a shape-only tensor
        model.forward_logits(tiny_batch())
        fake = model.last_cost
    model.backbone.force_gates(1.0)
    with torch.no_grad():
        model.forward_logits(tiny_batch())
    real = model.last_cost
    for name in ("real", "expt", "real_corrected", "real_tracked"):
        assert getattr(fake, name).tolist() == pytest.approx(getattr(real, name).tolist(), rel=1e-6)


# Reference section 3.3: (real full gate, real SMALL_GATE, expected) MFLOPs, every route open.
PUBLISHED = {
    ("layer16", 1024, 2048): (118_085, 102_270, 95_615),
    ("layer16", 768, 768): (33_607, 29_159, 26_892),
    ("layer33", 1024, 2048): (244_622, 211_192, 203_363),
    ("layer33", 768, 768): (69_195, 59_793, 57_196),
}
BUILD = {"layer16": dynamic_routing_layer16, "layer33": dynamic_routing_layer33}


@pytest.mark.parametrize("variant", [
    "layer16", pytest.param("layer33", marks=pytest.mark.slow)])
def test_published_totals_all_routes_open(variant):
    for (v, height, width), (full, small, expected) in PUBLISHED.items():
        if v != variant:
            continue
        model, cost = all_open_cost(BUILD[v], height, width)
        assert round(float(cost.real[0])) == full, (v, height, width)
        assert round(float(cost.expt[0])) == expected, (v, height, width)
        # FLOPS_ALL default: the same expected count, from the model's shapes-only formula
        assert round(cost.expt_all) == expected
        _, cost_small = all_open_cost(BUILD[v], height, width, small_gate=True)
        assert round(float(cost_small.real[0])) == small, (v, height, width, "small gate")
        assert round(float(cost_small.expt[0])) == expected


def test_layer16_breakdown_and_fix_network_at_1024x2048():
    """Reference section 3.3: stem 4194.3, head (as counted) 1406.4, gates 16,869.5; the no-gate
    Fix network by the same counter 118,085 - 16,869.5 = 101.2 GFLOPs."""
    model, cost = all_open_cost(dynamic_routing_layer16, 1024, 2048)
    _, fix = all_open_cost(dynamic_routing_layer16, 1024, 2048, gate_on=False)
    assert float(cost.real[0] - fix.real[0]) == pytest.approx(16_869.5, abs=0.1)
    assert round(float(fix.real[0]) / 1e3, 1) == 101.2
    assert float(fix.expt[0]) == pytest.approx(float(cost.expt[0]), rel=1e-6)
    # the head as the original costs it (h x h) and at its true 256 x 512 (corrected)
    sizes = [(256 >> i, 512 >> i) for i in range(4)]
    paper, tracked, _ = model.head.cost(sizes, (1024, 2048))
    assert round(paper, 1) == 1406.4
    assert tracked == pytest.approx(2 * paper + 256 * 512 * 19 * M, rel=1e-9)  # + predictor bias
    paper_768, _, _ = model.head.cost([(192 >> i, 192 >> i) for i in range(4)], (768, 768))
    assert round(paper_768, 1) == 791.1


@pytest.mark.parametrize("height,width", [(1024, 2048), (768, 768)])
def test_layer16_all_open_counts_match_the_enumeration(height, width):
    """All three counts of Layer16 at full size, against this file's enumeration of its 61
    cells: the paper count (with its bugs) and the corrected one (stem at 511 x 1023, init cell,
    decoder at 256 x 512, interpolations and additions; forced gates run no gate network)."""
    net = Net(layers=16, cells=(2, 3, 4) + (4,) * 13, c0=64, height=height, width=width,
              not_run=("init",) + tuple(f"{l}.{c}" for l in range(16) for c in range(4)))
    gates = {name_of(l, c): [[1.0] * len(routes_of(l, c, net))]
             for l in range(-1, 16) for c in ([0] if l == -1 else range(net.cells[l]))}
    real, expt, corrected, tracked = expected_costs(gates, 1, net)[0]
    _, cost = all_open_cost(dynamic_routing_layer16, height, width)
    assert float(cost.real[0]) == pytest.approx(real, rel=1e-6)
    assert float(cost.expt[0]) == pytest.approx(expt, rel=1e-6)
    assert float(cost.real_corrected[0]) == pytest.approx(corrected, rel=1e-6)
    assert float(cost.real_tracked[0]) == pytest.approx(tracked, rel=1e-6)


# Reference section 3.2 (Layer16 per-cell constants, MFLOPs; measured on the original):
# (height, width, scale, C, cell op, gate full, gate small, keep, up, down); None = no such route
CONSTANTS = [
    (1024, 2048, 0, 64, 1266.68, 285.21, 17.83, 8.39, None, 289.41),
    (1024, 2048, 1, 128, 1170.21, 276.82, 17.30, 4.19, 278.92, 278.92),
    (1024, 2048, 2, 256, 1121.98, 272.63, 17.04, 2.10, 273.68, 273.68),
    (1024, 2048, 3, 512, 1097.86, 270.53, 16.91, 1.05, 271.06, None),
    (768, 768, 0, 64, 356.25, 80.22, 5.01, 2.36, None, 81.40),
    (768, 768, 3, 512, 308.77, 76.09, 4.76, 0.29, 76.23, None),
]


@pytest.mark.parametrize("row", CONSTANTS, ids=lambda r: f"{r[0]}x{r[1]}-s{r[2]}")
def test_per_cell_constants(row):
    from dl_lib.modeling.dynamic_routing import flops as fl

    height, width, s, c, op, gate, gate_small, keep, up, down = row
    h, w = height // 4 >> s, width // 4 >> s
    gate_num = 2 if s in (0, 3) else 3  # a layer >= 3 cell: keep + down / up (+ both)
    assert round(fl.sep_conv(h, w, c), 2) == op
    assert round(fl.gate(h, w, c, gate_num), 2) == gate
    assert round(fl.gate(h // 4, w // 4, c, gate_num), 2) == gate_small
    assert round(fl.keep_route(h, w, c), 2) == keep
    if up is not None:
        assert round(fl.up_route(h, w, c), 2) == up
    if down is not None:
        assert round(fl.down_route(h, w, c), 2) == down


def test_stem_constants():
    from dl_lib.modeling.dynamic_routing import flops as fl

    assert round(fl.stem_paper(1024, 2048), 1) == 4194.3
    assert round(fl.stem_paper(768, 768), 2) == 1179.65

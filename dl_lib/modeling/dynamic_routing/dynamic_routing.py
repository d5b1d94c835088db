"""Dynamic routing for semantic segmentation (Li et al., CVPR 2020): a supernet of cells at strides
4..32 whose routes are opened per image by soft conditional gates, trained with a FLOPs budget.

    image -> stem (stride 4) -> init cell -> LAYER_NUM layers of cells -> 4 features -> decoder

A cell at scale s (stride 4*2^s, width INIT_CHANNEL*2^s) sums the routes that reach it (X), runs
``H = SepConv3x3(X) + X`` and sends up to three routes to the next layer, each times its gate:
``keep = g_keep * ReLU(H)`` (same scale), ``up`` (1x1 to half width, bilinear x2) and ``down``
(strided 1x1 to double width). The gates are ``max(0, tanh(.))`` of a small network on X; a cell
whose gates all close passes X on unchanged.

Inference really skips (``MODEL.GATE.SKIP_MODE``): a route whose gate is closed is not computed,
a cell none of whose input routes is open is not computed (its gate network neither), and this
per image. "subbatch" runs each cell on the images of the batch that need it, "per_image" runs
the images one by one, "dense" computes everything and zeroes what is closed (the reference the
tests compare with). Training computes every route (the gates multiply them), as the original.
``MODEL.GATE.RUN_ZERO_FED_CELLS`` runs, as the original, a cell whose input routes are all closed
routes of cells that ran, on zeros (its output is not zero: BN biases), in every mode.

Module names follow the original's state dict (``backbone.stem.stem_1``,
``backbone.all_cell_list.<layer>.<cell>.{cell_ops._ops.0.op.<i>,res_up.1,res_down.1,
gate_conv_beta.<i>}``, ``backbone.init_layer``); only the decoder is ``head.`` instead of
``sem_seg_head.`` (``convert.py`` renames it, and flips the stem to RGB input).

FLOPs per image, in MFLOPs internally and GFLOPs in outputs: ``expt`` (differentiable, the budget
loss's), ``real`` (the original's count, with its bugs, for published numbers) and
``real_corrected`` (what runs); see ``flops.py``.
"""
import json
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dl_lib.analysis import cost_scope
from dl_lib.layers import Conv2d, get_norm, prefers_channels_last
from dl_lib.modeling import META_ARCH_REGISTRY, Backbone, SemanticSegmentor

from . import flops as fl

__all__ = ["VARIANTS", "DynamicStem", "SepConv", "MixedOp", "Cell", "DynamicNetwork",
           "DynamicRoutingDecoder", "DynamicRoutingSegmentor", "RoutingCost", "soft_gate",
           "cell_layout", "dynamic_routing_layer16", "dynamic_routing_layer33"]

# The released backbones (cells per layer open scales 1/4, 1/8, 1/16, then all four).
VARIANTS = {
    "layer16": dict(layer_num=16, cell_num_list=[2, 3, 4] + [4] * 13),
    "layer33": dict(layer_num=33, cell_num_list=[2, 3, 4] + [4] * 30),
}
CELL_OPS = ("sep_conv_3x3", "skip_connect")
STEM_MID_CHANNELS = 64  # the original's whatever INIT_CHANNEL is; MODEL.BACKBONE.STEM_CHANNELS
ROUTE_NAMES = ("keep", "up", "down")


def soft_gate(x: torch.Tensor) -> torch.Tensor:
    """``max(0, tanh(x))``: a gate in [0, 1) that is exactly 0 (closed) for x <= 0."""
    return F.relu(torch.tanh(x))


def small_gate_size(h: int, w: int) -> Tuple[int, int]:
    """Size of a small gate's input: a quarter of the cell's (at least 1 pixel)."""
    return max(math.floor(h * 0.25), 1), max(math.floor(w * 0.25), 1)


def _conv_bn_relu(c_in: int, c_out: int, norm: str, stride: int = 1) -> Conv2d:
    return Conv2d(c_in, c_out, 1, stride=stride, bias=False, norm=get_norm(norm, c_out),
                  activation=nn.ReLU(inplace=True))


def _depthwise(c: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c, c, 3, stride=stride, padding=1, groups=c, bias=False)


# ------------------------------------------------------------------------------------ blocks
class DynamicStem(nn.Module):
    """3x3 s2 conv (no padding, as the original: H -> (H-1)//2) + BN + ReLU, then two separable
    blocks (depthwise 3x3, pointwise 1x1 + BN + ReLU), the second with stride 2: stride 4.
    ``mid_channels``: width of stem_1 and stem_2 (the original's 64)."""

    def __init__(self, out_channels: int, norm: str, separable: bool = True,
                 mid_channels: int = STEM_MID_CHANNELS):
        super().__init__()
        mid = self.mid_channels = int(mid_channels)
        self.stem_1 = Conv2d(3, mid, 3, stride=2, bias=False, norm=get_norm(norm, mid),
                             activation=nn.ReLU(inplace=True))
        if separable:
            self.stem_2 = nn.Sequential(_depthwise(mid), _conv_bn_relu(mid, mid, norm))
            self.stem_3 = nn.Sequential(_depthwise(mid, 2), _conv_bn_relu(mid, out_channels, norm))
        else:
            self.stem_2 = Conv2d(mid, mid, 3, padding=1, bias=False, norm=get_norm(norm, mid),
                                 activation=nn.ReLU(inplace=True))
            self.stem_3 = Conv2d(mid, out_channels, 3, stride=2, padding=1, bias=False,
                                 norm=get_norm(norm, out_channels), activation=nn.ReLU(inplace=True))
        self.separable = separable
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """-> (stride-4 features, (h, w) of stem_1's output, for the corrected count)."""
        x = self.stem_1(x)
        stem1_hw = tuple(x.shape[-2:])
        return self.stem_3(self.stem_2(x)), stem1_hw


class SepConv(nn.Module):
    """``op``: depthwise 3x3 -> 1x1 + BN + ReLU -> depthwise 3x3 -> 1x1 + BN (no leading ReLU)."""

    def __init__(self, channels: int, norm: str):
        super().__init__()
        c = channels
        self.op = nn.Sequential(_depthwise(c), _conv_bn_relu(c, c, norm), _depthwise(c),
                                Conv2d(c, c, 1, bias=False, norm=get_norm(norm, c)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class MixedOp(nn.Module):
    """Sum of the cell operations: ``SepConv(x) + x``; drop path (training) on the SepConv."""

    def __init__(self, channels: int, norm: str, cell_type: Sequence[str] = CELL_OPS):
        super().__init__()
        if tuple(cell_type) != CELL_OPS:
            raise ValueError(f"MODEL.BACKBONE.CELL_TYPE={list(cell_type)}: only {list(CELL_OPS)} "
                             "(the operations of every published experiment) is implemented")
        self._ops = nn.ModuleList([SepConv(channels, norm), nn.Identity()])

    def forward(self, x: torch.Tensor, keep_prob: float = 1.0) -> torch.Tensor:
        y = self._ops[0](x)
        if keep_prob < 1.0:  # scheduled drop path, per sample, rescaled to keep the expectation
            mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=y.dtype).bernoulli_(keep_prob)
            y = y * (mask / keep_prob)
        return y + self._ops[1](x)


class Cell(nn.Module):
    """One node of the routing space: aggregated input X -> gates, H = MixedOp(X), routes.

    Gate order (``gate_conv_beta`` outputs): keep, then up (if ``allow_up``), then down (if
    ``allow_down``) last.
    """

    def __init__(self, channels: int, allow_up: bool, allow_down: bool, norm: str, *,
                 gate_on: bool = True, small_gate: bool = False, gate_init_bias: float = 1.5,
                 cell_type: Sequence[str] = CELL_OPS):
        super().__init__()
        c = channels
        self.channels, self.allow_up, self.allow_down = c, allow_up, allow_down
        self.gate_num = 1 + int(allow_up) + int(allow_down)
        self.gate_on, self.small_gate = gate_on, small_gate
        self.cell_ops = MixedOp(c, norm, cell_type)
        self.res_keep = nn.ReLU()
        if allow_up:
            self.res_up = nn.Sequential(nn.ReLU(), _conv_bn_relu(c, c // 2, norm))
        if allow_down:
            self.res_down = nn.Sequential(nn.ReLU(), _conv_bn_relu(c, 2 * c, norm, stride=2))
        if gate_on:
            self.gate_conv_beta = nn.Sequential(
                _conv_bn_relu(c, c // 2, norm), nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(c // 2, self.gate_num, 1, bias=True))
        self.gate_init_bias = gate_init_bias
        # Inference-only forced gate values (gate order), set by DynamicNetwork.force_gates.
        self.forced_gates: Optional[torch.Tensor] = None
        self.route_index = {"keep": 0}
        if allow_up:
            self.route_index["up"] = 1
        if allow_down:
            self.route_index["down"] = self.gate_num - 1

    def gates_run(self) -> bool:
        """Whether computing the gates runs the gate network (not forced, gates on)."""
        return self.gate_on and not (self.forced_gates is not None and not self.training)

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """N x C x h x w -> N x gate_num gate values in [0, 1)."""
        if self.forced_gates is not None and not self.training:
            return self.forced_gates.to(x.dtype).expand(x.shape[0], -1)
        if not self.gate_on:
            return x.new_ones(x.shape[0], self.gate_num)
        if self.small_gate:
            if min(x.shape[-2:]) >= 4:
                x = F.interpolate(x, scale_factor=0.25, mode="bilinear", align_corners=False)
            else:  # under 4 pixels (stride-32 cells of a 64-pixel input): 1 pixel, not an error
                x = F.interpolate(x, size=small_gate_size(*x.shape[-2:]), mode="bilinear",
                                  align_corners=False)
        return soft_gate(self.gate_conv_beta(x).flatten(1))

    def keep(self, h: torch.Tensor) -> torch.Tensor:
        return self.res_keep(h)

    def up(self, h: torch.Tensor) -> torch.Tensor:
        y = self.res_up(h)
        return F.interpolate(y, size=(2 * y.shape[-2], 2 * y.shape[-1]), mode="bilinear",
                             align_corners=False)

    def down(self, h: torch.Tensor) -> torch.Tensor:
        return self.res_down(h)

    def route_fn(self, name: str):
        return {"keep": self.keep, "up": self.up, "down": self.down}[name]


def cell_layout(layer_num: int, cell_num_list: Sequence[int], max_scale: int = 3):
    """Per layer, per cell (scale): ``(allow_up, allow_down)`` with the original's rules, checked
    so that every route a cell sends has a cell to receive it."""
    if len(cell_num_list) < layer_num:
        raise ValueError(f"MODEL.BACKBONE.CELL_NUM_LIST has {len(cell_num_list)} entries; "
                         f"LAYER_NUM={layer_num} needs one per layer")
    nums = [int(n) for n in cell_num_list[:layer_num]]
    layout = []
    for l, n in enumerate(nums):
        last = l == layer_num - 1
        row = [(c > 0 and not last, c < max_scale and not last) for c in range(n)]
        if not last:
            nxt = nums[l + 1]
            for c, (_, down) in enumerate(row):
                if down and c + 1 >= nxt:
                    raise ValueError(
                        f"MODEL.BACKBONE.CELL_NUM_LIST {nums}: cell {c} of layer {l} sends a route "
                        f"down to scale {c + 1}, which layer {l + 1} (with {nxt} cells) lacks; a "
                        "layer may have at most one more cell than the previous one")
            if nxt > n + 1 or nxt < n:
                raise ValueError(f"MODEL.BACKBONE.CELL_NUM_LIST {nums}: layer {l + 1} has {nxt} "
                                 f"cells after {n}; cells per layer may only stay or grow by one")
        layout.append(row)
    if nums[0] > 2:
        raise ValueError(f"MODEL.BACKBONE.CELL_NUM_LIST {nums}: layer 0 has {nums[0]} cells but "
                         "the init cell (stride 4) only reaches scales 1/4 and 1/8")
    return layout


# ------------------------------------------------------------------------------------ routes
@dataclass
class Route:
    """A route's output for some images of the batch: ``x`` (n x C x h x w) for the images
    ``images`` (batch indices; None = all, in order), times the producer's gate ``gate`` (n),
    whose paper cost ``cost`` (MFLOPs) is charged to the receiving cell."""
    x: torch.Tensor
    images: Optional[List[int]]
    gate: torch.Tensor
    cost: float
    # dense path: which images the route carries data for (a closed cell's identity pass-through
    # carries X although its keep gate is closed); None = all of them (sparse pieces, training)
    open: Optional[torch.Tensor] = None
    # dense path: images whose producing cell ran (a closed route is then the original's zero
    # tensor, not absent: run_zero_fed_cells); None = all of them
    ran: Optional[torch.Tensor] = None


@dataclass
class RoutingCost:
    """Per-image FLOPs of one forward (MFLOPs, N-vectors) and, if recorded, the gates.

    ``real_tracked`` is the part of ``real_corrected`` that module hooks see (convolutions, norms,
    activations, pooling); the rest is interpolation and element-wise work.
    """
    expt: torch.Tensor
    real: torch.Tensor
    real_corrected: torch.Tensor
    real_tracked: torch.Tensor
    expt_all: float = 0.0  # expected MFLOPs of one image with every route open, at this size
    gates: Dict[str, torch.Tensor] = field(default_factory=dict)  # cell -> N x gate_num (0: not run)


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _select(x: torch.Tensor, positions: List[int], n: int) -> torch.Tensor:
    """Rows ``positions`` (sorted) of x (n rows): x itself for all of them, a view for a run of
    consecutive rows, else one gather (which keeps x's memory format)."""
    if len(positions) == n:
        return x
    a, b = positions[0], positions[-1] + 1
    if b - a == len(positions):
        return x[a:b]
    return x[torch.tensor(positions, device=x.device)]


def _add_rows(acc: Optional[torch.Tensor], rows: List[int], y: torch.Tensor, m: int,
              like: torch.Tensor) -> torch.Tensor:
    """``acc[rows] += y`` (acc: m rows; None = zeros), in place where autograd allows it."""
    if acc is None:
        acc = like.new_zeros((m,) + tuple(y.shape[1:]))
        if _channels_last(y):
            acc = acc.contiguous(memory_format=torch.channels_last)
    if len(rows) == m:
        return acc.add_(y) if not torch.is_grad_enabled() else acc + y
    idx = torch.tensor(rows, device=y.device)
    if torch.is_grad_enabled():
        return acc.index_add(0, idx, y)
    return acc.index_add_(0, idx, y)


@dataclass
class _Piece:
    """Sparse inference: a route's output for the images ``images`` (sorted batch indices), each
    already times its gate ``gates`` (floats); ``cost``: the route's paper MFLOPs. ``x`` None:
    the route is closed for these images but its cell ran (the original's zero tensor; only
    emitted with ``run_zero_fed_cells``)."""
    x: Optional[torch.Tensor]
    images: List[int]
    gates: List[float]
    cost: float


# ------------------------------------------------------------------------------------ backbone
class DynamicNetwork(Backbone):
    """The routing supernet: ``forward(x)`` -> ``{"layer_0": ..., "layer_3": ...}`` (strides
    4..32); ``forward_with_cost(x)`` also returns the :class:`RoutingCost` of each image."""

    def __init__(self, *, layer_num: int, cell_num_list: Sequence[int], init_channel: int = 64,
                 max_stride: int = 32, norm: str = "BN", separable_stem: bool = True,
                 drop_prob: float = 0.0, gate_on: bool = True, small_gate: bool = False,
                 gate_init_bias: float = 1.5, skip_threshold: float = 1e-4,
                 skip_mode: str = "per_image", cell_type: Sequence[str] = CELL_OPS,
                 run_zero_fed_cells: bool = False, stem_channels: int = STEM_MID_CHANNELS):
        super().__init__()
        if stem_channels < 1:
            raise ValueError(f"MODEL.BACKBONE.STEM_CHANNELS={stem_channels} must be >= 1 "
                             "(the original's 64)")
        max_scale = int(round(math.log2(max_stride // 4)))
        if 4 * 2 ** max_scale != max_stride or max_scale < 1:
            raise ValueError(f"MODEL.BACKBONE.MAX_STRIDE={max_stride} must be 4 * 2^k (8, 16, 32)")
        if not 0.0 <= drop_prob < 1.0:
            # keep = 1 - progress * (l+1)/L * DROP_PROB reaches 0 at the end of training otherwise
            raise ValueError(f"MODEL.BACKBONE.DROP_PROB={drop_prob} must be in [0, 1) (the original's "
                             "long schedule uses 0.3)")
        if skip_mode not in ("subbatch", "per_image", "dense"):
            raise ValueError(f"MODEL.GATE.SKIP_MODE={skip_mode!r}: choose subbatch, per_image or dense")
        self.layer_num, self.max_scale, self.max_stride = layer_num, max_scale, max_stride
        self.init_channel, self.drop_prob = init_channel, float(drop_prob)
        self.skip_threshold, self.skip_mode = float(skip_threshold), skip_mode
        # Inference: also run a cell whose input routes are all closed routes of cells that ran,
        # on zeros, as the original does (MODEL.GATE.RUN_ZERO_FED_CELLS); False skips it.
        self.run_zero_fed_cells = bool(run_zero_fed_cells)
        self.gate_on, self.small_gate = gate_on, small_gate
        self.layout = cell_layout(layer_num, cell_num_list, max_scale)
        kw = dict(gate_on=gate_on, small_gate=small_gate, gate_init_bias=gate_init_bias,
                  cell_type=cell_type)
        # Registration order as the original (stem, cells, init cell): the state dict's order.
        self.stem = DynamicStem(init_channel, norm, separable_stem, stem_channels)
        self.all_cell_list = nn.ModuleList(
            nn.ModuleList(Cell(init_channel * 2 ** c, up, down, norm, **kw)
                          for c, (up, down) in enumerate(row)) for row in self.layout)
        self.init_layer = Cell(init_channel, False, True, norm, **kw)
        self.step_rate = 0.0  # training progress in [0, 1], for the drop-path schedule
        self.record_gates = False  # keep every cell's gates in RoutingCost.gates (visualisation)
        self._hw0 = (0, 0)  # stride-4 feature size of the current forward
        n_last = len(self.layout[-1])
        self._out_features = [f"layer_{c}" for c in range(n_last)]
        self._out_feature_channels = {f"layer_{c}": init_channel * 2 ** c for c in range(n_last)}
        self._out_feature_strides = {f"layer_{c}": 4 * 2 ** c for c in range(n_last)}
        self._init_weights(gate_init_bias)

    @property
    def size_divisibility(self) -> int:
        return self.max_stride

    @classmethod
    def convert_pretrained(cls, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``MODEL.PRETRAINED``: the released ImageNet Layer16-Fix / Layer33-Fix files (and our
        own DynamicNetwork state dicts) -> this class's names; see ``convert.py``."""
        from .convert import convert_pretrained_backbone  # convert.py imports this module

        return convert_pretrained_backbone(state_dict)

    def _init_weights(self, gate_bias: float) -> None:
        # The original's kaiming_init_module: Kaiming-normal (fan_in, relu), conv biases 0, BN 1/0,
        # and the gates' last bias GATE_INIT_BIAS (tanh(1.5) = 0.905: routes start open).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for _, cell in self.cells():
            if cell.gate_on:
                nn.init.constant_(cell.gate_conv_beta[2].bias, gate_bias)

    # ---------------------------------------------------------------- names and forcing
    def cells(self):
        """``(name, cell)`` for the init cell ("init") and every ``"<layer>.<cell>"``."""
        yield "init", self.init_layer
        for l, row in enumerate(self.all_cell_list):
            for c, cell in enumerate(row):
                yield f"{l}.{c}", cell

    def cells_dict(self) -> Dict[str, Cell]:
        return dict(self.cells())

    def force_gates(self, value: Optional[float] = None,
                    routes: Optional[Dict[str, Dict[str, float]]] = None) -> None:
        """Force gates at inference: every gate to ``value``, then the cells named in ``routes``
        (``{"3.1": {"keep": 1, "up": 0, "down": 0.5}}``; unnamed routes keep ``value`` or stay
        learned). ``force_gates()`` restores the learned gates."""
        cells = self.cells_dict()
        for cell in cells.values():
            cell.forced_gates = None if value is None else torch.full((cell.gate_num,), float(value))
        for name, values in (routes or {}).items():
            if name not in cells:
                raise KeyError(f"forced routes: no cell {name!r}; cells are 'init' and "
                               f"'<layer>.<cell>' such as '0.0' .. '{self.layer_num - 1}.3'")
            cell = cells[name]
            bad = set(values) - set(cell.route_index)
            if bad:
                raise KeyError(f"forced routes: cell {name!r} has routes {sorted(cell.route_index)}, "
                               f"not {sorted(bad)}")
            g = cell.forced_gates
            if g is None:
                g = torch.full((cell.gate_num,), float("nan"))
            g = g.clone()
            for route, v in values.items():
                g[cell.route_index[route]] = float(v)
            cell.forced_gates = g
        for name, cell in cells.items():
            if cell.forced_gates is not None and torch.isnan(cell.forced_gates).any():
                missing = [r for r, i in cell.route_index.items() if math.isnan(cell.forced_gates[i])]
                raise ValueError(f"forced routes: cell {name!r} is given only some routes; also "
                                 f"give {missing} (or MODEL.GATE.FIXED_VALUE for all others)")

    # ---------------------------------------------------------------- costs of one cell
    def _cell_costs(self, cell: Cell, h: int, w: int):
        c = cell.channels
        gate_hw = (h // 4, w // 4) if cell.small_gate else (h, w)
        return dict(body=fl.sep_conv(h, w, c),
                    gate=fl.gate(*gate_hw, c, cell.gate_num) if cell.gate_on else 0.0,
                    keep=fl.keep_route(h, w, c), up=fl.up_route(h, w, c),
                    down=fl.down_route(h, w, c))

    def _gate_corrected(self, cell: Cell, h: int, w: int) -> Tuple[float, float]:
        """(tracked, interpolation) MFLOPs of running a cell's gate network at h x w."""
        if not cell.gates_run():
            return 0.0, 0.0
        c = cell.channels
        if cell.small_gate:
            h4, w4 = small_gate_size(h, w)
            return fl.gate(h4, w4, c, cell.gate_num) + cell.gate_num * fl.M, fl.interpolation(h4, w4, c)
        return fl.gate(h, w, c, cell.gate_num) + cell.gate_num * fl.M, 0.0

    def expected_all_open(self, height: int, width: int) -> float:
        """Expected MFLOPs of one image with every gate 1 (cell ops + consumed routes), for an
        input of ``height`` x ``width``: the default FLOPS_ALL of the budget loss."""
        h, w = (height - 1) // 2, (width - 1) // 2
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        costs = self._cell_costs(self.init_layer, h, w)
        total = costs["keep"] + costs["down"]
        for l, row in enumerate(self.all_cell_list):
            for c, cell in enumerate(row):
                k = self._cell_costs(cell, -(-h // 2 ** c), -(-w // 2 ** c))
                total += k["body"]
                if l < self.layer_num - 1:
                    total += k["keep"] + cell.allow_up * k["up"] + cell.allow_down * k["down"]
        return total

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.forward_with_cost(x)[0]

    def forward_with_cost(self, x: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], RoutingCost]:
        n = x.shape[0]
        if not self.training and self.skip_mode == "per_image" and n > 1:
            feats, costs = [], []
            for i in range(n):
                self._image_ids = [i]  # cost scopes inside name image i of the whole batch
                try:
                    with cost_scope([i]):
                        f, c = self._forward(x[i:i + 1], sparse=True)
                finally:
                    self._image_ids = None
                feats.append(f)
                costs.append(c)
            out = {k: torch.cat([f[k] for f in feats]) for k in feats[0]}
            cat = lambda name: torch.cat([getattr(c, name) for c in costs])  # noqa: E731
            gates = {k: torch.cat([c.gates[k] for c in costs]) for k in costs[0].gates}
            return out, RoutingCost(cat("expt"), cat("real"), cat("real_corrected"),
                                    cat("real_tracked"), costs[0].expt_all, gates)
        return self._forward(x, sparse=not self.training and self.skip_mode != "dense")

    def _cost_scope(self, images: List[int]):
        """cost_scope of these images of the current forward's batch, as indices of the whole
        batch (per_image mode runs one image at a time)."""
        ids = getattr(self, "_image_ids", None)
        return cost_scope(images if ids is None else [ids[i] for i in images])

    def _forward(self, x: torch.Tensor, sparse: bool):
        if sparse:
            return self._forward_sparse(x)
        n = x.shape[0]
        thr = self.skip_threshold
        hard = not self.training  # closed gates are exactly closed; idle cells produce nothing
        zeros = lambda: x.new_zeros(n)  # noqa: E731
        expt, real, tracked, extra = zeros(), zeros(), zeros(), zeros()
        gate_record: Dict[str, torch.Tensor] = {}

        stem, stem1_hw = self.stem(x)
        h0, w0 = stem.shape[-2:]
        self._hw0 = (h0, w0)
        real += fl.stem_paper(x.shape[-2], x.shape[-1], self.stem.mid_channels, self.init_channel)
        tracked += fl.stem_corrected(stem1_hw, (h0, w0), self.stem.mid_channels, self.init_channel)

        # Routes reaching each scale of the next layer.
        incoming: Dict[int, List[Route]] = {0: [Route(stem, None, x.new_ones(n), 0.0)]}
        cells = [("init", self.init_layer, 0, -1)] + [
            (f"{l}.{c}", cell, c, l) for l, row in enumerate(self.all_cell_list)
            for c, cell in enumerate(row)]
        layer_of = {}
        for name, cell, c, l in cells:
            layer_of.setdefault(l, []).append((name, cell, c))
        outputs: Dict[int, List[Route]] = {}
        for l in range(-1, self.layer_num):
            nxt: Dict[int, List[Route]] = {}
            last = l == self.layer_num - 1
            keep_prob = 1.0
            if self.training and l >= 0 and self.drop_prob > 1e-4:
                keep_prob = 1.0 - self.step_rate * (l + 1) / self.layer_num * self.drop_prob
            for name, cell, c in layer_of[l]:
                routes = incoming.get(c, [])
                step = self._cell_sparse if sparse else self._cell_dense
                out, acc = step(cell, routes, n, thr, hard, keep_prob, counted=l >= 0)
                expt += acc["expt"]
                real += acc["real"]
                tracked += acc["tracked"]
                extra += acc["extra"]
                if self.record_gates:
                    gate_record[name] = acc["gates"].detach()
                for route_name, pieces in out.items():
                    dest = c + {"keep": 0, "up": -1, "down": 1}[route_name]
                    (outputs if last else nxt).setdefault(dest, []).extend(pieces)
            incoming = nxt

        feats = {}
        for c in range(len(self.layout[-1])):
            feats[f"layer_{c}"] = self._assemble(outputs.get(c, []), n, x, c, (h0, w0))
        corrected = tracked + extra
        return feats, RoutingCost(expt, real, corrected, tracked,
                                  self.expected_all_open(x.shape[-2], x.shape[-1]), gate_record)

    def _assemble(self, pieces: List[Route], n: int, like: torch.Tensor, c: int, hw0) -> torch.Tensor:
        """The full N-image tensor of a scale from route pieces (zeros where none arrived)."""
        if len(pieces) == 1 and pieces[0].images is None:
            return pieces[0].x
        h, w = -(-hw0[0] // 2 ** c), -(-hw0[1] // 2 ** c)
        shape = (n, self.init_channel * 2 ** c, h, w)
        fmt = torch.channels_last if prefers_channels_last(like.device) else torch.contiguous_format
        out = like.new_zeros(shape).contiguous(memory_format=fmt)
        for p in pieces:
            if p.images is None:
                out = out + p.x
            else:
                out.index_add_(0, torch.tensor(p.images, device=out.device), p.x)
        return out

    # -- dense: every image, every route; closed routes are multiplied by 0 -----------------
    def _cell_dense(self, cell: Cell, routes: List[Route], n: int, thr: float, hard: bool,
                    keep_prob: float, counted: bool):
        x = routes[0].x
        for r in routes[1:]:
            x = x + r.x
        h, w = x.shape[-2:]
        k = self._cell_costs(cell, h, w)
        g = cell.gates(x)
        closed = g.sum(1) <= thr
        # a cell is idle for an image none of whose input routes is open (hard mode only)
        opened = torch.stack([torch.ones_like(closed) if r.open is None else r.open for r in routes])
        active = opened.any(0) if hard else torch.ones_like(closed)
        if hard and self.run_zero_fed_cells:  # closed routes of cells that ran feed it zeros
            ran = [r.ran for r in routes if r.ran is not None]
            if ran:
                active = active | torch.stack(ran).any(0)
        runs = active & ~closed
        hbody = cell.cell_ops(x, keep_prob)
        out: Dict[str, List[Route]] = {}
        for route, i in cell.route_index.items():
            gi = g[:, i]
            if hard:
                gi = gi * ((gi > thr) & runs).to(gi.dtype)
            y = cell.route_fn(route)(hbody) * gi.view(-1, 1, 1, 1).to(hbody.dtype)
            open_ = (gi > thr) if hard else None
            if route == "keep" and bool((closed & active).any()):
                # identity of the images whose gates all closed (rare: skip two full passes)
                y = y + (closed & active).view(-1, 1, 1, 1).to(x.dtype) * x
            if route == "keep":
                if hard:
                    open_ = open_ | (closed & active)
            out[route] = [Route(y, None, gi, k[route], open_, runs if hard else None)]
        acc = dict(expt=torch.zeros_like(g[:, 0]), real=torch.zeros_like(g[:, 0]),
                   tracked=torch.zeros_like(g[:, 0]), extra=torch.zeros_like(g[:, 0]),
                   gates=g * active.view(-1, 1).to(g.dtype))
        if counted:
            acc["expt"] = (active.to(g.dtype) * g.max(1).values * k["body"] +
                           sum(r.gate * r.cost for r in routes))
            acc["real"] = (runs.to(g.dtype) * k["body"] + k["gate"] +
                           sum((r.gate > thr).to(g.dtype) * r.cost for r in routes))
        # Dense computing runs everything; its "corrected" cost is what the sparse path would run.
        n_in = opened.to(g.dtype).sum(0)
        acc["tracked"], acc["extra"] = self._corrected(cell, g, active, runs, n_in, thr, h, w)
        return out, acc

    @staticmethod
    def _route_corrected(cell: Cell, h: int, w: int) -> Dict[str, Tuple[float, float]]:
        """Route -> (tracked, extra: interpolation and the gate product) MFLOPs of one image."""
        c, hw = cell.channels, h * w * fl.M
        h2, w2 = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        return {
            "keep": (fl.keep_route(h, w, c), hw * c),
            "up": (fl.up_route(h, w, c), fl.interpolation(2 * h, 2 * w, c // 2) + 4 * hw * (c // 2)),
            "down": (fl.relu(h, w, c) + (2 * c * c + 3 * 2 * c) * h2 * w2 * fl.M, 2 * c * h2 * w2 * fl.M),
        }

    def _corrected(self, cell: Cell, g: torch.Tensor, active: torch.Tensor, runs: torch.Tensor,
                   n_in: torch.Tensor, thr: float, h: int, w: int):
        """(tracked, extra) MFLOPs per image of what runs for this cell when skipping: the gate
        network where the cell is active, the cell op and the open routes where it runs."""
        c = cell.channels
        a, r = active.to(g.dtype), runs.to(g.dtype)
        gate_tracked, gate_extra = self._gate_corrected(cell, h, w)
        hw = h * w * fl.M
        tracked = a * gate_tracked + r * fl.sep_conv(h, w, c)
        # summing the inputs, the cell op's residual add
        extra = a * (gate_extra + (n_in - 1).clamp(min=0) * hw * c) + r * hw * c
        route_costs = self._route_corrected(cell, h, w)
        for route, i in cell.route_index.items():
            open_ = r * (g[:, i] > thr).to(g.dtype)
            tracked = tracked + open_ * route_costs[route][0]
            extra = extra + open_ * route_costs[route][1]
        return tracked, extra

    # -- sparse (inference): each route and cell runs on the images that need it -------------
    # Decisions and costs are Python numbers (one ``tolist()`` of a cell's gates): tensor
    # bookkeeping per cell would cost more than the small cells it lets us skip.
    def _forward_sparse(self, x: torch.Tensor):
        n = x.shape[0]
        thr = self.skip_threshold
        tot = {k: [0.0] * n for k in ("expt", "real", "tracked", "extra")}
        gate_record: Dict[str, torch.Tensor] = {}

        stem, stem1_hw = self.stem(x)
        h0, w0 = stem.shape[-2:]
        self._hw0 = (h0, w0)
        stem_real = fl.stem_paper(x.shape[-2], x.shape[-1], self.stem.mid_channels, self.init_channel)
        stem_tracked = fl.stem_corrected(stem1_hw, (h0, w0), self.stem.mid_channels, self.init_channel)
        for i in range(n):
            tot["real"][i] += stem_real
            tot["tracked"][i] += stem_tracked

        # Pieces of the routes reaching each scale of the next layer.
        incoming: Dict[int, List[_Piece]] = {0: [_Piece(stem, list(range(n)), [1.0] * n, 0.0)]}
        outputs: Dict[int, List[_Piece]] = {}
        rows = [(-1, [("init", self.init_layer, 0)])] + [
            (l, [(f"{l}.{c}", cell, c) for c, cell in enumerate(row)])
            for l, row in enumerate(self.all_cell_list)]
        for l, row in rows:
            nxt: Dict[int, List[_Piece]] = {}
            for name, cell, c in row:
                out = self._sparse_cell(name, cell, incoming.get(c, []), n, thr, tot, gate_record,
                                        counted=l >= 0)
                for route_name, pieces in out.items():
                    dest = c + {"keep": 0, "up": -1, "down": 1}[route_name]
                    (outputs if l == self.layer_num - 1 else nxt).setdefault(dest, []).extend(pieces)
            incoming = nxt

        feats = {f"layer_{c}": self._assemble_sparse(outputs.get(c, []), n, stem, c, (h0, w0))
                 for c in range(len(self.layout[-1]))}
        tracked = stem.new_tensor(tot["tracked"])
        return feats, RoutingCost(stem.new_tensor(tot["expt"]), stem.new_tensor(tot["real"]),
                                  tracked + stem.new_tensor(tot["extra"]), tracked,
                                  self.expected_all_open(x.shape[-2], x.shape[-1]), gate_record)

    def _sparse_cell(self, name: str, cell: Cell, pieces: List[_Piece], n: int, thr: float,
                     tot: Dict[str, List[float]], gate_record: Dict[str, torch.Tensor],
                     counted: bool) -> Dict[str, List[_Piece]]:
        """Run ``cell`` on the images that reach it; add their costs to ``tot``; -> the pieces
        of its open routes ({"keep": [...], "up": [...], "down": [...]})."""
        k = self._cell_constants(cell, *self._cell_hw(cell))
        real, expt, tracked, extra = tot["real"], tot["expt"], tot["tracked"], tot["extra"]
        if counted:  # the original charges every cell's gate, even where it did not run
            for i in range(n):
                real[i] += k["gate"]
        pieces = [p for p in pieces if p.images]
        zero_fed = [i for p in pieces if p.x is None for i in p.images]  # run_zero_fed_cells
        pieces = [p for p in pieces if p.x is not None]
        if not pieces and not zero_fed:  # no input route open: the cell and its gates do not run
            if self.record_gates:
                gate_record[name] = torch.zeros(n, cell.gate_num)
            return {}
        if len(pieces) == 1 and not zero_fed:
            members = pieces[0].images
        else:
            members = sorted(set(zero_fed).union(*(p.images for p in pieces)))
        m = len(members)
        pos = {img: j for j, img in enumerate(members)}

        # X of the member images: the sum of their incoming pieces (whole ones first)
        x = None
        for p in sorted(pieces, key=lambda p: len(p.images) != m):
            if x is None and len(p.images) == m:
                x = p.x
            else:
                x = _add_rows(x, [pos[i] for i in p.images], p.x, m, p.x)
        if x is None:  # only images fed by closed routes: the original's all-zero input
            weight = cell.cell_ops._ops[0].op[1].weight
            x = weight.new_zeros((m, cell.channels) + self._cell_hw(cell))
            if prefers_channels_last(x.device):
                x = x.contiguous(memory_format=torch.channels_last)
        with self._cost_scope(members):
            g = cell.gates(x)
        gl = g.tolist()
        if self.record_gates:
            rec = g.detach().new_zeros(n, cell.gate_num)
            rec[torch.tensor(members)] = g.detach()
            gate_record[name] = rec

        # per-image costs: incoming routes, the gate network, the cell op and routes where it runs
        n_in = [0] * m
        for p in pieces:
            for i, gv in zip(p.images, p.gates):
                n_in[pos[i]] += 1
                if counted:
                    expt[i] += gv * p.cost
                    if gv > thr:
                        real[i] += p.cost
        body_rows, ident_rows = [], []
        route_index = list(cell.route_index.items())
        for j, gj in enumerate(gl):
            i = members[j]
            runs = sum(gj) > thr
            if counted:
                expt[i] += max(gj) * k["body"]
            tracked[i] += k["gate_tracked"]
            extra[i] += k["gate_extra"] + max(n_in[j] - 1, 0) * k["hwc"]
            if not runs:
                ident_rows.append(j)
                continue
            body_rows.append(j)
            if counted:
                real[i] += k["body"]
            tracked[i] += k["sep"]
            extra[i] += k["hwc"]
            for route, ri in route_index:
                if gj[ri] > thr:
                    tracked[i] += k["route_tracked"][route]
                    extra[i] += k["route_extra"][route]

        out: Dict[str, List[_Piece]] = {}
        if ident_rows:  # all gates closed: X passes on as the keep route
            out["keep"] = [_Piece(_select(x, ident_rows, m), [members[j] for j in ident_rows],
                                  [gl[j][0] for j in ident_rows], k["keep"])]
        if not body_rows:
            return out
        body_images = [members[j] for j in body_rows]
        with self._cost_scope(body_images):
            hb = cell.cell_ops(_select(x, body_rows, m))
        nb = len(body_rows)
        for route, ri in route_index:
            sel = [q for q, j in enumerate(body_rows) if gl[j][ri] > thr]
            if self.run_zero_fed_cells and len(sel) < nb:  # closed, but this cell ran
                shut = [body_images[q] for q, j in enumerate(body_rows) if gl[j][ri] <= thr]
                out.setdefault(route, []).append(_Piece(None, shut, [0.0] * len(shut), k[route]))
            if not sel:
                continue
            images = [body_images[q] for q in sel]
            gates = [gl[body_rows[q]][ri] for q in sel]
            with self._cost_scope(images):
                y = cell.route_fn(route)(_select(hb, sel, nb))
            if torch.is_grad_enabled():  # eval with autograd on: gradients reach the gates
                rows_ = [body_rows[q] for q in sel]
                gcol = g[:, ri] if len(rows_) == m else g[torch.tensor(rows_), ri]
                y = y * gcol.view(-1, 1, 1, 1).to(y.dtype)
            elif len(gates) == 1:
                y.mul_(gates[0])
            else:
                y.mul_(y.new_tensor(gates).view(-1, 1, 1, 1))
            out.setdefault(route, []).append(_Piece(y, images, gates, k[route]))
        return out

    def _assemble_sparse(self, pieces: List[_Piece], n: int, like: torch.Tensor, c: int,
                         hw0) -> torch.Tensor:
        """The full N-image tensor of output scale ``c`` from its pieces (zeros where none)."""
        pieces = [p for p in pieces if p.images and p.x is not None]
        if len(pieces) == 1 and len(pieces[0].images) == n:
            return pieces[0].x
        out = None
        for p in sorted(pieces, key=lambda p: len(p.images) != n):
            if out is None and len(p.images) == n:
                out = p.x
            else:
                out = _add_rows(out, p.images, p.x, n, p.x)
        if out is None:
            h, w = -(-hw0[0] // 2 ** c), -(-hw0[1] // 2 ** c)
            out = like.new_zeros((n, self.init_channel * 2 ** c, h, w))
            if _channels_last(like):
                out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _cell_constants(self, cell: Cell, h: int, w: int) -> dict:
        """A cell's per-image MFLOPs at h x w (paper and corrected pieces), cached per size."""
        cache = self.__dict__.setdefault("_constants_cache", {})
        key = (id(cell), h, w, cell.gates_run())
        k = cache.get(key)
        if k is None:
            k = dict(self._cell_costs(cell, h, w))
            k["gate_tracked"], k["gate_extra"] = self._gate_corrected(cell, h, w)
            k["sep"] = fl.sep_conv(h, w, cell.channels)
            k["hwc"] = h * w * cell.channels * fl.M
            routes = self._route_corrected(cell, h, w)
            k["route_tracked"] = {r: v[0] for r, v in routes.items()}
            k["route_extra"] = {r: v[1] for r, v in routes.items()}
            cache[key] = k
        return k

    def _cell_hw(self, cell: Cell) -> Tuple[int, int]:
        """Feature size of a cell in the current forward (stride-4 size / 2^scale, rounded up)."""
        s = int(round(math.log2(cell.channels // self.init_channel)))
        h0, w0 = self._hw0
        return -(-h0 // 2 ** s), -(-w0 // 2 ** s)


# ------------------------------------------------------------------------------------ head
class DynamicRoutingDecoder(nn.Module):
    """Top-down decoder: ``p = dec3(f3)``, then ``p = dec_i(up2(p) + f_i)`` for i = 2, 1, 0, and a
    3x3 predictor with bias; logits at stride 4. ``dec_i``: 1x1 + BN + ReLU, ``C_i -> C_i/2``
    (``C_0 -> C_0``)."""

    output_stride = 4

    def __init__(self, in_channels: Sequence[int], num_classes: int, norm: str):
        super().__init__()
        outs = [in_channels[0]] + [c // 2 for c in in_channels[1:]]
        self.in_channels, self.out_channels = list(in_channels), outs
        self.num_classes = num_classes
        self.layer_decoder_list = nn.ModuleList(
            _conv_bn_relu(ci, co, norm) for ci, co in zip(in_channels, outs))
        self.predictor = nn.Conv2d(outs[0], num_classes, 3, padding=1, bias=True)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        feats = [features[f"layer_{i}"] for i in range(len(self.layer_decoder_list))]
        p = None
        for i in reversed(range(len(feats))):
            if p is not None:
                p = F.interpolate(p, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
                p = p + feats[i]
            p = self.layer_decoder_list[i](feats[i] if p is None else p)
        return self.predictor(p)

    def cost(self, sizes: Sequence[Tuple[int, int]], out_hw: Tuple[int, int]) -> Tuple[float, float, float]:
        """(paper, tracked, extra) MFLOPs of one image with level sizes ``sizes``."""
        paper = fl.head_paper(sizes[0][0], self.in_channels, self.out_channels, self.num_classes)
        tracked = (sum(fl.conv_bn_relu(h, w, ci, co) for (h, w), ci, co in
                       zip(sizes, self.in_channels, self.out_channels)) +
                   fl.conv(sizes[0][0], sizes[0][1], self.out_channels[0], self.num_classes, 3, bias=True))
        corrected = fl.head_corrected(sizes, self.in_channels, self.out_channels, self.num_classes, out_hw)
        return paper, tracked, corrected - tracked


# ------------------------------------------------------------------------------------ model
def budget_loss(expt: torch.Tensor, flops_all: float, mu: float, weight: float, warm: float) -> torch.Tensor:
    """``weight * warm * (mean(expt) / flops_all - mu)^2`` (expt: per-image expected MFLOPs)."""
    return weight * warm * (expt.mean() / flops_all - mu) ** 2


def load_routes_file(path: str) -> Dict[str, Dict[str, float]]:
    """``{"<layer>.<cell>" or "init": {"keep": g, "up": g, "down": g}}`` from a JSON file (the
    whole file, or its ``"routes"`` entry as written by ``routes.save_routes``)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise FileNotFoundError(f"MODEL.GATE.ROUTES_FILE={path!r} cannot be read ({e.strerror}); "
                                "give a JSON file of forced gates or '' for none") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"MODEL.GATE.ROUTES_FILE={path!r} is not valid JSON ({e}); expected "
                         '{"3.1": {"keep": 1.0, "up": 0.0, "down": 0.0}, ...}') from e
    routes = data.get("routes", data) if isinstance(data, dict) else None
    if not isinstance(routes, dict) or not all(isinstance(v, dict) for v in routes.values()):
        raise ValueError(f"MODEL.GATE.ROUTES_FILE={path!r}: expected an object mapping cells to "
                         '{"keep": g, "up": g, "down": g}, e.g. {"3.1": {"keep": 1.0, "down": 0.0}}')
    return routes


@META_ARCH_REGISTRY.register()
class DynamicRoutingSegmentor(SemanticSegmentor):
    """:class:`DynamicNetwork` + :class:`DynamicRoutingDecoder`, cross-entropy (ignore 255, labels
    padded with it) plus the FLOPs budget loss.

    Training outputs also log ``real_gflops`` / ``expt_gflops`` (the original's count, per-image
    mean) and ``budget_ratio``; eval outputs carry ``"flops"``: ``real_gflops`` (the original's
    count), ``real_corrected_gflops`` (what ran) and ``expt_gflops`` per image.
    """

    def __init__(self, *, backbone: DynamicNetwork, head: DynamicRoutingDecoder,
                 budget: Optional[dict] = None, gate_lr_multiplier: float = 0.0, **kwargs):
        super().__init__(backbone=backbone, head=head, **kwargs)
        self.budget = {**dict(constrain=False, loss_weight=0.0, loss_mu=0.0, flops_all=0.0,
                              unupdate_rate=0.4, warm_up=True, warm_up_rate=0.02), **(budget or {})}
        self.gate_lr_multiplier = float(gate_lr_multiplier)
        self.step_rate = 0.0
        self.last_cost: Optional[RoutingCost] = None

    @classmethod
    def from_config(cls, cfg) -> dict:
        b, g, bud = cfg.MODEL.BACKBONE, cfg.MODEL.GATE, cfg.MODEL.BUDGET
        backbone = DynamicNetwork(
            layer_num=b.LAYER_NUM, cell_num_list=b.CELL_NUM_LIST, init_channel=b.INIT_CHANNEL,
            max_stride=b.MAX_STRIDE, norm=b.NORM, separable_stem=b.SEPT_STEM, drop_prob=b.DROP_PROB,
            gate_on=g.GATE_ON, small_gate=g.SMALL_GATE, gate_init_bias=g.GATE_INIT_BIAS,
            skip_threshold=g.SKIP_THRESHOLD, skip_mode=g.SKIP_MODE, cell_type=b.CELL_TYPE,
            run_zero_fed_cells=g.RUN_ZERO_FED_CELLS, stem_channels=b.STEM_CHANNELS)
        if g.FIXED_VALUE >= 0 or g.ROUTES_FILE:
            backbone.force_gates(g.FIXED_VALUE if g.FIXED_VALUE >= 0 else None,
                                 load_routes_file(g.ROUTES_FILE) if g.ROUTES_FILE else None)
        channels = [backbone.output_shape()[f].channels for f in backbone._out_features]
        head = DynamicRoutingDecoder(channels, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
                                     cfg.MODEL.SEM_SEG_HEAD.NORM)
        budget = dict(constrain=bud.CONSTRAIN, loss_weight=bud.LOSS_WEIGHT, loss_mu=bud.LOSS_MU,
                      flops_all=bud.FLOPS_ALL, unupdate_rate=bud.UNUPDATE_RATE,
                      warm_up=bud.WARM_UP, warm_up_rate=bud.WARM_UP_RATE)
        return dict(backbone=backbone, head=head, budget=budget,
                    gate_lr_multiplier=cfg.SOLVER.OPTIMIZER.GATE_LR_MULTI,
                    pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD,
                    ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                    loss_weight=cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT)

    # ---------------------------------------------------------------- trainer hooks
    def set_training_progress(self, iteration: int, max_iter: int) -> None:
        """Called by the trainer before each step: drop path and budget follow ``iter/max_iter``."""
        self.step_rate = iteration / max(max_iter, 1)
        self.backbone.step_rate = self.step_rate

    def param_lr_multiplier(self, name: str) -> float:
        """The optimizer multiplies the learning rate of parameter ``name`` by this
        (``SOLVER.OPTIMIZER.GATE_LR_MULTI`` for the gate networks, as the original)."""
        if self.gate_lr_multiplier > 0 and "gate_conv" in name:
            return self.gate_lr_multiplier
        return 1.0

    def budget_warm(self) -> float:
        """Budget loss factor now: 0 before UNUPDATE_RATE of training, then a linear ramp."""
        bud = self.budget
        if not bud["constrain"] or self.step_rate < bud["unupdate_rate"]:
            return 0.0
        if not bud["warm_up"]:
            return 1.0
        return min(1.0, (self.step_rate - bud["unupdate_rate"]) / max(bud["warm_up_rate"], 1e-12))

    # ---------------------------------------------------------------- forward
    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        if prefers_channels_last(x.device):
            x = x.contiguous(memory_format=torch.channels_last)
        feats, cost = self.backbone.forward_with_cost(x)
        logits = self.head(feats)
        sizes = [tuple(feats[f].shape[-2:]) for f in self.backbone._out_features]
        paper, tracked, extra = self.head.cost(sizes, tuple(x.shape[-2:]))
        cost.real = cost.real + paper
        cost.real_tracked = cost.real_tracked + tracked
        cost.real_corrected = cost.real_corrected + tracked + extra
        self.last_cost = cost
        return logits

    def forward(self, batched_inputs: List[dict]):
        images, image_sizes = self.preprocess_images(batched_inputs)
        logits = self.forward_logits(images)
        cost = self.last_cost
        if self.training:
            targets = self.preprocess_targets(batched_inputs, images.shape[-2:])
            losses = self.losses(logits, targets)
            flops_all = self.budget["flops_all"] if self.budget["flops_all"] > 0 else cost.expt_all
            ratio = cost.expt.mean() / flops_all
            warm = self.budget_warm()
            if warm > 0:
                losses["loss_budget"] = budget_loss(cost.expt, flops_all, self.budget["loss_mu"],
                                                    self.budget["loss_weight"], warm)
            losses.update(real_gflops=float(cost.real.detach().mean()) / 1e3,
                          expt_gflops=float(cost.expt.detach().mean()) / 1e3,
                          budget_ratio=float(ratio.detach()))
            return losses
        results = self.postprocess(logits, images.shape[-2:], image_sizes, batched_inputs)
        for i, r in enumerate(results):
            r["flops"] = {"real_gflops": float(cost.real[i]) / 1e3,
                          "real_corrected_gflops": float(cost.real_corrected[i]) / 1e3,
                          "expt_gflops": float(cost.expt[i]) / 1e3}
            if cost.gates:
                r["gates"] = {name: g[i].tolist() for name, g in cost.gates.items()}
        return results


# ------------------------------------------------------------------------------------ constructors
def _build(variant: str, **kwargs) -> DynamicRoutingSegmentor:
    num_classes = kwargs.pop("num_classes", 19)
    norm = kwargs.get("norm", "BN")
    backbone = DynamicNetwork(**{**VARIANTS[variant], **kwargs})
    channels = [backbone.output_shape()[f].channels for f in backbone._out_features]
    return DynamicRoutingSegmentor(
        backbone=backbone, head=DynamicRoutingDecoder(channels, num_classes, norm),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[1.0, 1.0, 1.0])


def dynamic_routing_layer16(**kwargs) -> DynamicRoutingSegmentor:
    """Layer16 (17,784,968 parameters at INIT_CHANNEL 64 with gates, 19 classes)."""
    return _build("layer16", **kwargs)


def dynamic_routing_layer33(**kwargs) -> DynamicRoutingSegmentor:
    """Layer33 (38,871,666 parameters)."""
    return _build("layer33", **kwargs)

"""Real compression of a hard-masked network: ``compress(model, example_input) -> smaller model``.

The network is traced with ``torch.fx`` through the model's ``compression_forward(x)`` if it has
one (every output, training-only branches such as an aux head included), else ``forward_logits``
(a ``SemanticSegmentor``'s batch handling stays out), else ``predict_logits``, else ``forward``; a
masked branch that is not traced (an aux head) is left dense and unmasked: fit for inference only.
Every tensor gets a per-channel *state*:
alive, or dead with a known constant value (a channel a hard mask zeroed is 0; through the
original placement's BN it is ``(0 - mu) * gamma / sigma + beta``, through ReLU ``max(., 0)``;
adds add constants, concatenations concatenate, pooling and resizing keep them). Tensors that
must share one channel layout in the unchanged forward code (a conv's output through its mask,
BN, ReLU, every add of a residual stream, a max-pool's values and indices and the max-unpool that
uses them) form a *channel space*; a space keeps the channels some consumer outside it reads:

* a conv reads only the alive channels of its input; the constants of the others are folded into
  its bias (``channels.FoldedConv2d`` when the conv zero-pads a spatial kernel, so the borders are
  exact too, else a plain bias) - the chain-input removal of reference section 3;
* a max-unpool turns a nonzero constant into a non-constant map (the constant at the argmax
  positions, 0 elsewhere), so such channels stay (exact; the original placement only - after BN
  they are 0 and go);
* a residual stream keeps the union of its masks' channels; with masks tied per stream
  (``tie_stream_masks``) that is one mask's k, with independent masks more, and with the
  residual convs excluded from pruning all of them. A kept channel that one contributor masks
  is computed as the masked network does: its conv row (original placement) or BN channel
  (after BN) becomes exactly zero.
* anything else (an op this module does not know) keeps every channel of its inputs.

Every module keeps its path (masks are unwrapped: ``X.0`` -> ``X``), so the result loads into the
same builder with ``MODEL.PRUNING.CHANNELS`` = ``channel_config_of(result)``.
BatchNorm is taken in eval mode (running statistics), as at inference.
"""
import copy
import logging
import operator
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .channels import CHANNELS_ATTR, FoldedConv2d, _resized_conv, _resized_norm, format_entry
from .mask_layer import ChannelMask

__all__ = ["compress", "channel_spaces", "stream_mask_groups", "tie_stream_masks",
           "CompressError"]

logger = logging.getLogger(__name__)


class CompressError(RuntimeError):
    pass


def _norm_types():
    from dl_lib.layers.norm import FrozenBatchNorm2d

    return (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)


_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.SiLU,
                      nn.GELU, nn.Dropout, nn.Dropout2d, nn.Identity)
_ZERO_PRESERVING = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Dropout, nn.Dropout2d, nn.Identity,
                    nn.Tanh, nn.SiLU, nn.GELU, nn.Hardswish)
_SPATIAL_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample,
                    nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d)
_POINTWISE_FUNCS = {F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.leaky_relu, torch.sigmoid,
                    F.sigmoid, torch.tanh, F.gelu, F.silu, F.hardswish, F.dropout, F.dropout2d}
_SPATIAL_FUNCS = {F.interpolate, F.upsample, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone"}


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (ChannelMask, nn.Conv2d) + _norm_types()):
            return True
        return super().is_leaf_module(m, qualname)


# What is traced, first found: a model's ``compression_forward(x)`` (every output, training-only
# branches such as an aux head included, e.g. ``(logits, aux_logits)``), ``forward_logits``,
# ``predict_logits``; else ``forward``.
_TRACED_METHODS = ("compression_forward", "forward_logits", "predict_logits")


class _LogitsRoot(nn.Module):
    """Traces ``model.forward_logits(x)`` or ``model.predict_logits(x)`` (N x 3 x H x W
    normalised -> logits)."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.m = model
        self.method = method

    def forward(self, x):
        return getattr(self.m, self.method)(x)


class _State:
    """Channel state of one tensor: ``alive`` bool (C,), ``const`` float64 (C,) (dead channels)."""

    def __init__(self, alive: torch.Tensor, const: torch.Tensor):
        self.alive, self.const = alive, const

    @staticmethod
    def full(channels: int) -> "_State":
        return _State(torch.ones(channels, dtype=torch.bool),
                      torch.zeros(channels, dtype=torch.float64))


class _UnionFind:
    def __init__(self):
        self.parent: Dict[Any, Any] = {}

    def find(self, a):
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _channels_of(meta) -> Optional[int]:
    if meta is None or not hasattr(meta, "shape"):
        return None
    return int(meta.shape[1]) if len(meta.shape) == 4 else None


class _Analysis:
    """The traced graph with states, channel spaces and their layouts (see the module doc)."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor):
        self.model = model
        method = next((m for m in _TRACED_METHODS if hasattr(model, m)), None)
        use_logits = method is not None
        root = _LogitsRoot(model, method) if use_logits else model
        self.prefix = "m." if use_logits else ""
        try:
            graph = _Tracer().trace(root)
        except Exception as e:  # noqa: BLE001  (fx raises many kinds)
            raise CompressError(f"compress: torch.fx could not trace {type(model).__name__}"
                                f"{'.' + method if use_logits else ''} ({type(e).__name__}: "
                                f"{e}); make the forward traceable (no data-dependent Python "
                                "control flow)") from e
        self.gm = fx.GraphModule(root, graph)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                ShapeProp(self.gm).propagate(example_input)
        finally:
            model.train(was_training)
        self.modules = dict(self.gm.named_modules())
        self.state: Dict[Any, Any] = {}
        self.uf = _UnionFind()
        self.kind: Dict[fx.Node, str] = {}
        self.demand: Dict[Any, torch.Tensor] = {}  # space root key -> bool (C,)
        self.cats: List[fx.Node] = []
        self.masks: List[fx.Node] = []
        self.convs: List[fx.Node] = []
        self.norms: List[fx.Node] = []
        self._run()

    # ---- helpers -----------------------------------------------------------------------------
    def _meta(self, node):
        return node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None

    def _is_tensor(self, a) -> bool:
        return isinstance(a, fx.Node) and a in self.state and isinstance(self.state[a], _State)

    def _force(self, key, channels: Optional[torch.Tensor] = None):
        """Demand channels (default all) of the space of ``key``."""
        st = self.state[key] if not isinstance(key, tuple) else self.state[key[0]][key[1]]
        want = torch.ones_like(st.alive) if channels is None else channels
        root = key
        prev = self.demand.get(root)
        self.demand[root] = want.clone() if prev is None else (prev | want)

    def _opaque(self, node, tensor_inputs):
        for a in tensor_inputs:
            self._force(a)
        c = _channels_of(self._meta(node))
        if c is not None:
            self.state[node] = _State.full(c)
            self._force(node)

    @staticmethod
    def _apply_const(fn, st: _State) -> _State:
        with torch.no_grad():
            value = fn(st.const.float().view(1, -1, 1, 1)).reshape(-1).double()
        return _State(st.alive.clone(), value)

    def _link(self, a, b):
        self.uf.union(a, b)

    # ---- the passes --------------------------------------------------------------------------
    def _run(self):
        for node in self.gm.graph.nodes:
            self._visit(node)
        self._layouts()

    def _visit(self, node: fx.Node):
        meta = self._meta(node)
        op = node.op
        tensor_args = [a for a in node.all_input_nodes if self._is_tensor(a)]
        if op == "placeholder":
            c = _channels_of(meta)
            if c is not None:
                self.state[node] = _State.full(c)
                self._force(node)
            return
        if op == "get_attr":
            return
        if op == "output":
            for a in node.all_input_nodes:
                if self._is_tensor(a):
                    self._force(a)
            return
        if op == "call_module":
            m = self.modules[node.target]
            x = node.args[0] if node.args else None
            if isinstance(m, nn.Conv2d) and type(m) in (nn.Conv2d, FoldedConv2d) \
                    and m.groups == 1 and m.padding_mode == "zeros" and self._is_tensor(x):
                self.state[node] = _State.full(m.out_channels)
                self.kind[node] = "conv"
                self.convs.append(node)
                return
            if isinstance(m, ChannelMask) and self._is_tensor(x):
                st = self.state[x]
                keep = m.keep_mask().cpu()
                self.state[node] = _State(st.alive & keep, torch.where(keep, st.const,
                                                                       torch.zeros_like(st.const)))
                self.kind[node] = "mask"
                self.masks.append(node)
                self._link(x, node)
                return
            if isinstance(m, _norm_types() + _POINTWISE_MODULES) and self._is_tensor(x) \
                    and len(tensor_args) == 1:
                was = m.training
                m.eval()
                try:
                    self.state[node] = self._apply_const(m, self.state[x])
                finally:
                    m.train(was)
                if isinstance(m, _norm_types()):
                    self.kind[node] = "norm"
                    self.norms.append(node)
                self._link(x, node)
                return
            if isinstance(m, nn.MaxPool2d) and self._is_tensor(x):
                self._pool(node, x, bool(m.return_indices))
                return
            if isinstance(m, nn.AvgPool2d) and self._is_tensor(x) and (
                    not m.count_include_pad or m.padding in (0, (0, 0))):
                self._same(node, x)
                return
            if isinstance(m, _SPATIAL_MODULES) and self._is_tensor(x):
                self._same(node, x)
                return
            if isinstance(m, nn.MaxUnpool2d) and len(node.args) >= 2:
                self._unpool(node, node.args[0], node.args[1])
                return
            self._opaque(node, tensor_args)
            return
        target = node.target
        if op == "call_function" and target is operator.getitem:
            src, idx = node.args[0], node.args[1]
            if isinstance(src, fx.Node) and isinstance(self.state.get(src), tuple) \
                    and isinstance(idx, int):
                self.state[node] = self.state[src][idx]
                self._link((src, idx), node)
                return
            if self._is_tensor(src) and _keeps_channels(idx):
                self._same(node, src)
                return
            self._opaque(node, tensor_args)
            return
        if op == "call_function" and target in (torch.cat, torch.concat):
            tensors = node.args[0] if node.args else node.kwargs.get("tensors")
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if isinstance(tensors, (list, tuple)) and dim in (1, -3) \
                    and all(self._is_tensor(t) for t in tensors):
                parts = [self.state[t] for t in tensors]
                self.state[node] = _State(torch.cat([p.alive for p in parts]),
                                          torch.cat([p.const for p in parts]))
                self.kind[node] = "cat"
                self.cats.append(node)
                return
            self._opaque(node, tensor_args)
            return
        if op == "call_function" and target in (operator.add, torch.add, operator.iadd,
                                                operator.sub, torch.sub) \
                and len(node.args) == 2 and not node.kwargs:
            a, b = node.args
            sign = -1.0 if target in (operator.sub, torch.sub) else 1.0
            if self._is_tensor(a) and self._is_tensor(b) and \
                    self.state[a].alive.shape == self.state[b].alive.shape and \
                    tuple(self._meta(a).shape) == tuple(self._meta(b).shape):
                sa, sb = self.state[a], self.state[b]
                self.state[node] = _State(sa.alive | sb.alive, sa.const + sign * sb.const)
                self._link(a, node)
                self._link(b, node)
                return
            if self._is_tensor(a) and isinstance(b, (int, float)):
                st = self.state[a]
                self.state[node] = _State(st.alive.clone(), st.const + sign * b)
                self._link(a, node)
                return
            self._opaque(node, tensor_args)
            return
        if op == "call_function" and target in (operator.mul, torch.mul, operator.truediv) \
                and len(node.args) == 2 and self._is_tensor(node.args[0]) \
                and isinstance(node.args[1], (int, float)):
            st = self.state[node.args[0]]
            factor = node.args[1] if target is not operator.truediv else 1.0 / node.args[1]
            self.state[node] = _State(st.alive.clone(), st.const * factor)
            self._link(node.args[0], node)
            return
        if op == "call_function" and target in _POINTWISE_FUNCS and tensor_args \
                and node.args and self._is_tensor(node.args[0]) and len(tensor_args) == 1:
            args, kwargs = node.args[1:], dict(node.kwargs)
            kwargs.pop("inplace", None)
            if target in (F.dropout, F.dropout2d):
                self.state[node] = self._apply_const(lambda t: t, self.state[node.args[0]])
            else:
                fn = {F.relu_: F.relu, torch.relu_: torch.relu}.get(target, target)
                self.state[node] = self._apply_const(lambda t: fn(t, *args, **kwargs),
                                                     self.state[node.args[0]])
            self._link(node.args[0], node)
            return
        if op == "call_function" and target in _SPATIAL_FUNCS and node.args \
                and self._is_tensor(node.args[0]) and len(tensor_args) == 1:
            self._same(node, node.args[0])
            return
        if op == "call_function" and target is F.max_pool2d and node.args \
                and self._is_tensor(node.args[0]):
            self._pool(node, node.args[0], bool(node.kwargs.get("return_indices", False)))
            return
        if op == "call_function" and target is F.max_unpool2d and len(node.args) >= 2:
            self._unpool(node, node.args[0], node.args[1])
            return
        if op == "call_method" and node.target in _POINTWISE_METHODS and node.args \
                and self._is_tensor(node.args[0]) and len(tensor_args) == 1:
            name = node.target.rstrip("_")
            fn = (lambda t: t) if name in ("contiguous", "clone") else getattr(torch, name)
            self.state[node] = self._apply_const(fn, self.state[node.args[0]])
            self._link(node.args[0], node)
            return
        if (op == "call_method" and node.target in ("size", "dim")) or (
                op == "call_function" and target is getattr and len(node.args) > 1
                and node.args[1] in ("shape", "dtype", "device", "ndim")):
            return  # shape queries read no channel
        if not tensor_args:
            c = _channels_of(meta)
            if c is not None:  # a tensor from nothing (torch.zeros(...)): every channel alive
                self.state[node] = _State.full(c)
                self._force(node)
            return
        self._opaque(node, tensor_args)

    def _same(self, node, x):
        st = self.state[x]
        self.state[node] = _State(st.alive.clone(), st.const.clone())
        self._link(x, node)

    def _pool(self, node, x, with_indices: bool):
        st = self.state[x]
        values = _State(st.alive.clone(), st.const.clone())
        if not with_indices:
            self.state[node] = values
            self._link(x, node)
            return
        indices = _State.full(st.alive.numel())
        self.state[node] = (values, indices)
        self._link(x, (node, 0))
        self._link(x, (node, 1))

    def _unpool(self, node, x, indices):
        if not (self._is_tensor(x) and self._is_tensor(indices)):
            self._opaque(node, [a for a in (x, indices) if self._is_tensor(a)])
            return
        st = self.state[x]
        # A nonzero constant is scattered to the argmax positions: no longer a constant.
        nonzero = ~st.alive & (st.const != 0)
        self.state[node] = _State(st.alive | nonzero, torch.where(nonzero, torch.zeros_like(
            st.const), st.const))
        self._link(x, node)
        self._link(indices, node)
        self._force(x, nonzero)

    # ---- layouts -----------------------------------------------------------------------------
    def _state_of(self, key) -> _State:
        return self.state[key[0]][key[1]] if isinstance(key, tuple) else self.state[key]

    def _layouts(self):
        spaces: Dict[Any, List[Any]] = {}
        keys = []
        for node, st in self.state.items():
            if isinstance(st, tuple):
                keys += [(node, i) for i in range(len(st))]
            else:
                keys.append(node)
        for key in keys:
            spaces.setdefault(self.uf.find(key), []).append(key)
        self.spaces = spaces
        for root, members in spaces.items():
            sizes = {self._state_of(k).alive.numel() for k in members}
            if len(sizes) != 1:
                names = [str(k[0] if isinstance(k, tuple) else k) for k in members[:6]]
                raise CompressError(f"compress: tensors {names} share a channel layout but have "
                                    f"{sorted(sizes)} channels")
        layout: Dict[Any, torch.Tensor] = {}
        for root, members in spaces.items():
            want = torch.zeros(self._state_of(members[0]).alive.numel(), dtype=torch.bool)
            for k in members:
                if k in self.demand:
                    want |= self.demand[k]
            layout[root] = want
        # Conv inputs: their alive channels.
        for node in self.convs:
            x = node.args[0]
            layout[self.uf.find(x)] |= self.state[x].alive
        # Concatenations: the output's layout is the inputs' layouts side by side; what the
        # output's space needs flows back into the inputs until nothing changes.
        for _ in range(len(self.cats) + 2):
            changed = False
            for node in self.cats:
                tensors = node.args[0] if node.args else node.kwargs.get("tensors")
                out_root = self.uf.find(node)
                offset = 0
                for t in tensors:
                    c = self.state[t].alive.numel()
                    r = self.uf.find(t)
                    part = layout[out_root][offset:offset + c]
                    new = layout[r] | part
                    if not torch.equal(new, layout[r]):
                        layout[r], changed = new, True
                    offset += c
                joined = torch.cat([layout[self.uf.find(t)] for t in tensors])
                if not torch.equal(joined, layout[out_root]):
                    layout[out_root], changed = joined, True
            if not changed:
                break
        self.layout = layout

    def layout_of(self, key) -> torch.Tensor:
        return self.layout[self.uf.find(key)]

    # ---- queries -----------------------------------------------------------------------------
    def module_path(self, node: fx.Node) -> str:
        target = node.target
        return target[len(self.prefix):] if target.startswith(self.prefix) else target


def _keeps_channels(idx) -> bool:
    """An index ``t[idx]`` that leaves dim 1 of an N x C x H x W tensor whole."""
    if not isinstance(idx, tuple):
        return False
    if idx and idx[0] is Ellipsis:
        return len(idx) <= 3 and Ellipsis not in idx[1:]
    return len(idx) >= 2 and all(isinstance(i, slice) and i == slice(None) for i in idx[:2]) \
        and Ellipsis not in idx


def _zero_target(an: _Analysis, node: fx.Node) -> fx.Node:
    """The conv or norm node whose channels must become exactly 0 where the mask ``node`` cuts."""
    x = node.args[0]
    while True:
        if len(x.users) != 1:
            raise CompressError(f"compress: the tensor masked by {an.module_path(node)} is also "
                                "read unmasked; cannot remove the mask")
        kind = an.kind.get(x)
        if kind in ("conv", "norm"):
            return x
        if x.op == "call_module" and isinstance(an.modules[x.target], _ZERO_PRESERVING):
            x = x.args[0]
            continue
        if x.op == "call_function" and x.target in (F.relu, torch.relu, F.dropout, F.dropout2d):
            x = x.args[0]
            continue
        raise CompressError(f"compress: mask {an.module_path(node)} follows a {x.op} {x.target} "
                            "(not a conv or BatchNorm); cannot remove it")


def channel_spaces(model: nn.Module, example_input: torch.Tensor) -> _Analysis:
    """The analysis of a (masked) model: states, spaces and layouts (for tests and tools)."""
    return _Analysis(model, example_input)


def stream_mask_groups(model: nn.Module, example_input: torch.Tensor) -> List[List[str]]:
    """Lists of the ``conv_path`` of the masks that cut one channel space (a residual stream:
    a stage's ``conv3`` and ``downsample`` masks), those with more than one mask."""
    an = _Analysis(model, example_input)
    groups: Dict[Any, List[str]] = {}
    for node in an.masks:
        groups.setdefault(an.uf.find(node), []).append(an.modules[node.target].conv_path)
    return [g for g in groups.values() if len(g) > 1]


def tie_stream_masks(model: nn.Module, example_input: torch.Tensor) -> List[List[str]]:
    """Make the masks of every residual stream one mask (in place): they share the first one's
    logits (soft) or 0/1 mask (hard), so the stream keeps k channels. Returns the groups."""
    from .pruner import channel_masks

    masks = channel_masks(model)
    groups = stream_mask_groups(model, example_input)
    for group in groups:
        first = masks[group[0]]
        for path in group[1:]:
            other = masks[path]
            if other.channels != first.channels or other.is_hard != first.is_hard:
                raise CompressError(f"tie_stream_masks: {path} and {group[0]} differ "
                                    f"({other.channels} vs {first.channels} channels)")
            other.k = first.k
            if first.is_hard:
                other._buffers["mask"] = first.mask
            else:
                holder = first._parameters if "weight" in first._parameters else first._buffers
                target = other._parameters if "weight" in other._parameters else other._buffers
                target.pop("weight")
                (other._parameters if holder is first._parameters else other._buffers)[
                    "weight"] = holder["weight"]
                other.learnable = first.learnable
    return groups


def _unwrap_masks(model: nn.Module) -> Dict[str, str]:
    """Replace every ``Sequential(X, mask)`` / ``Sequential(mask, X)`` by ``X`` and any other
    mask by Identity; returns {masked path of X: unmasked path}."""
    moved: Dict[str, str] = {}
    for path, module in list(model.named_modules()):
        if not isinstance(module, nn.Sequential) or len(module) != 2:
            continue
        kinds = [isinstance(m, ChannelMask) for m in module]
        if sum(kinds) != 1:
            continue
        keep_index = kinds.index(False)
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        parent._modules[name] = module[keep_index]
        moved[f"{path}.{keep_index}"] = path
    for path, module in list(model.named_modules()):
        if isinstance(module, ChannelMask):
            parent_path, _, name = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            parent._modules[name] = nn.Identity()
    return moved


def _map_path(path: str, moved: Dict[str, str]) -> str:
    # Innermost first: a path can only pass through unwrapped Sequentials of the attach surgery.
    for src in sorted(moved, key=len, reverse=True):
        if path == src or path.startswith(src + "."):
            return moved[src] + path[len(src):]
    return path


@torch.no_grad()
def compress(model: nn.Module, example_input: Optional[torch.Tensor] = None, *,
             inplace: bool = False) -> nn.Module:
    """A dense network without the channels the hard masks of ``model`` remove.

    ``example_input``: N x 3 x H x W (default 1 x 3 x 65 x 65 on the model's device) to trace
    shapes with. Returns the compressed model (a copy unless ``inplace``) with its
    ``MODEL.PRUNING.CHANNELS`` entries recorded (``channels.channel_config_of``).
    """
    from .pruner import channel_masks

    masks = channel_masks(model)
    soft = [p for p, m in masks.items() if not m.is_hard]
    if soft:
        raise CompressError(f"compress: {len(soft)} masks are still soft ({soft[:3]}...): run "
                            "pruning.to_hard_masks(model) first (the kept channels would be the "
                            "current top-k)")
    if not inplace:
        model = copy.deepcopy(model)
    if example_input is None:
        p = next(iter(model.parameters()))
        example_input = torch.randn(1, 3, 65, 65, device=p.device, dtype=p.dtype)
    an = _Analysis(model, example_input)

    called = [an.module_path(n) for n in an.gm.graph.nodes if n.op == "call_module"]
    mask_paths = {path for path, m in model.named_modules() if isinstance(m, ChannelMask)}
    traced_masks = {an.module_path(n) for n in an.masks}
    for path in sorted(mask_paths - traced_masks):
        inside = [c for c in called if path.startswith(c + ".")]
        if inside:
            raise CompressError(f"compress: mask {path} runs inside {inside[0]} "
                                f"({type(model.get_submodule(inside[0])).__name__}), which this "
                                "analysis treats as one op; cannot compress it")
        logger.warning(f"compress: mask {path} does not run in the traced forward (a training-"
                       "only branch such as an aux head?): that branch is left dense and "
                       "unmasked, and is not adapted to its compressed input (compress for "
                       "inference)")
    zero_rows: Dict[fx.Node, torch.Tensor] = {}
    for node in an.masks:
        cut = an.layout_of(node) & ~an.modules[node.target].keep_mask().cpu()
        if cut.any():
            target = _zero_target(an, node)
            zero_rows[target] = zero_rows.get(target, torch.zeros_like(cut)) | cut

    new_modules: Dict[str, Tuple[nn.Module, str]] = {}
    for node in an.convs:
        path = node.target
        if path in new_modules:
            raise CompressError(f"compress: conv {an.module_path(node)} runs more than once")
        conv = an.modules[path]
        x = node.args[0]
        lin = an.layout_of(x)
        lout = an.layout_of(node)
        in_state = an.state[x]
        removed = ~lin
        if (in_state.alive & removed).any():
            raise CompressError(f"compress: internal: alive input channels of "
                                f"{an.module_path(node)} removed")
        w = conv.weight.detach()
        const = torch.where(removed & ~in_state.alive, in_state.const,
                            torch.zeros_like(in_state.const)).to(torch.float64)
        fold = (w.double() * const.view(1, -1, 1, 1)).sum(dim=1, keepdim=True)  # Cout x 1 x kh x kw
        has_fold = bool((fold != 0).any())
        spatial_pad = any(p > 0 for p in _pair(conv.padding)) and any(
            k > 1 for k in conv.kernel_size)
        if isinstance(conv, FoldedConv2d):
            fold = fold + conv.fold_kernel.double()
            has_fold = True
        # "fold": exact at zero-padded borders; "bias": a constant (no padding on the kernel).
        use_fold = has_fold and (spatial_pad or isinstance(conv, FoldedConv2d))
        kind = "fold" if use_fold else ("bias" if has_fold and conv.bias is None else "")
        new = _resized_conv(conv, int(lin.sum()), int(lout.sum()), kind)
        weight = w[lout][:, lin].clone()
        bias = conv.bias.detach().double().clone() if conv.bias is not None else \
            torch.zeros(conv.out_channels, dtype=torch.float64, device=w.device)
        if has_fold and not use_fold:
            bias = bias + fold.sum(dim=(1, 2, 3))
        zero = zero_rows.get(node)
        if zero is not None:
            weight[zero[lout].to(weight.device)] = 0
            bias[zero.to(bias.device)] = 0
            fold[zero.to(fold.device)] = 0
        new.weight.copy_(weight)
        if new.bias is not None:
            new.bias.copy_(bias[lout].to(new.bias.dtype))
        if kind == "fold":
            new.fold_kernel.copy_(fold[lout].to(new.fold_kernel.dtype))
        new.train(conv.training)
        new_modules[path] = (new, kind)

    for node in an.norms:
        path = node.target
        if path in new_modules:
            raise CompressError(f"compress: norm {an.module_path(node)} runs more than once")
        norm = an.modules[path]
        keep = an.layout_of(node)
        new = _resized_norm(norm, int(keep.sum()))
        names = ("weight", "bias", "running_mean", "running_var")
        for name in names:
            src = getattr(norm, name, None)
            dst = getattr(new, name, None)
            if src is not None and dst is not None:
                dst.copy_(src.detach()[keep.to(src.device)])
        if hasattr(norm, "num_batches_tracked") and norm.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(norm.num_batches_tracked)
        zero = zero_rows.get(node)
        if zero is not None:
            z = zero[keep]
            new.weight[z] = 0
            new.bias[z] = 0
            if getattr(new, "running_mean", None) is not None:
                new.running_mean[z] = 0
                new.running_var[z] = 1
        new.train(norm.training)
        new_modules[path] = (new, "")

    moved = _unwrap_masks(model)
    entries = []
    old_sizes = {}
    for masked_path, (new, kind) in new_modules.items():
        path = _map_path(masked_path[len(an.prefix):], moved)
        old = model.get_submodule(path)
        old_sizes[path] = old
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        parent._modules[name] = new
        if isinstance(new, nn.Conv2d):
            changed = (new.in_channels, new.out_channels) != (old.in_channels, old.out_channels) \
                or kind
            if changed:
                entries.append(format_entry(path, new.in_channels, new.out_channels, kind))
        else:
            if new.num_features != old.num_features:
                entries.append(format_entry(path, new.num_features, new.num_features))
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    entries.sort(key=lambda e: order.get(e.partition("=")[0], 0))
    setattr(model, CHANNELS_ATTR, entries)
    logger.info(f"compress: {len(entries)} modules resized")
    return model


def _pair(v) -> Tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

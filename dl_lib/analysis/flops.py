"""FLOP counting under named conventions, so a number can be compared with the paper it came from.

Three conventions (every count is for the whole batch; ``batch=1`` is the usual report):

``"gmac"``
    Plain multiply-accumulates / 1e9: convolutions (groups included), linear layers, matmul/bmm,
    attention (``scaled_dot_product_attention``). Counted at the ATen level by
    ``torch.utils.flop_counter.FlopCounterMode`` (2 per MAC, divided by 2 here), so functional
    calls are seen too. Not counted: bias adds, normalisation, activations, element-wise ops,
    pooling, interpolation; the ops seen but not counted are listed in ``unsupported_ops``.
``"hrnet"``
    HRNet's ``get_model_summary`` (also used by the anytime/ADP-C papers): forward hooks on
    modules whose class name contains ``"Conv"`` (``numel(weight) * H_out * W_out``) and on
    ``nn.Linear`` (``numel(weight)`` per output row); nothing else (no bias, BN, ReLU, add,
    upsample); divided by 2^30. HRNetV2-W48 at 1024x2048 gives 696.2 under this rule.
``"dynamic_routing"``
    DynamicRouting's ``cal_op_flops``: conv ``(k_h*k_w*C_in/groups + bias) * C_out * H_out * W_out``,
    BN ``2`` per output element (``1`` if not affine; other norms likewise), ReLU-like
    activations 1 per element, pooling ``k_h*k_w`` per output element (adaptive pooling: 1 per
    input element), linear ``(in + bias) * out``; bilinear upsampling and element-wise adds are
    omitted; divided by 1e9 (the repo's "MFLOPs / 1e3").

The hook conventions only see ``nn.Module`` calls: functional ``F.relu``/``F.conv2d`` inside a
``forward`` are invisible to them (the ``"gmac"`` counter sees them). Leaf modules that execute
but are not handled by the convention are listed in ``unsupported_ops`` by class name.
"""
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from .params import count_parameters
from .table import module_table

__all__ = ["FlopResult", "flop_count", "flop_table", "CONVENTIONS"]

# convention -> (divisor, unit label)
CONVENTIONS: Dict[str, Tuple[float, str]] = {
    "gmac": (1e9, "GMACs (conv/linear/matmul multiply-adds, 1e9)"),
    "hrnet": (float(2 ** 30), "GFLOPs (HRNet summary: conv/linear MACs / 2^30)"),
    "dynamic_routing": (1e9, "GFLOPs (DynamicRouting: MACs + bias + BN + ReLU, 1e9)"),
}


@dataclass
class FlopResult:
    """Outcome of :func:`flop_count`.

    ``total``: the count in ``unit``; ``by_module``: module name (``named_modules()`` names,
    ``""`` = whole model) -> count in ``unit`` of that module and its children; ``unsupported_ops``:
    op or module-class name -> number of calls that executed but were not counted;
    ``raw``: the integer count before dividing (MACs or the convention's per-op count).
    """

    total: float
    unit: str
    by_module: Dict[str, float]
    unsupported_ops: Dict[str, int]
    convention: str = "gmac"
    input_size: Tuple[int, int] = (0, 0)
    batch: int = 1
    raw: int = 0
    params: Dict[str, int] = field(default_factory=dict)
    modules: List[str] = field(default_factory=list)  # named_modules() order, for tables

    def __str__(self):
        return (f"{self.total:.6g} {self.unit} at input {self.batch}x3x{self.input_size[0]}x"
                f"{self.input_size[1]} (convention {self.convention!r})")


# ---------------------------------------------------------------------------------------------
# per-module rules of the hook conventions; each returns the count of one call, or None when
# the module is not handled by the convention


def _out_tensor(output) -> Optional[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _hrnet_rule(m: nn.Module, inputs, output) -> Optional[int]:
    out = _out_tensor(output)
    if out is None:
        return None
    w = getattr(m, "weight", None)
    if isinstance(m, nn.Linear):
        return m.weight.numel() * (out.numel() // m.out_features)
    if "Conv" in type(m).__name__ and isinstance(w, torch.Tensor) and w.dim() >= 3:
        # numel(W) * prod(output spatial) per image; HRNet's summary assumes batch 1, we scale by N
        return w.numel() * math.prod(out.shape[2:]) * out.shape[0]
    return None


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
          nn.modules.instancenorm._InstanceNorm)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SiLU, nn.GELU,
                nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                   nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
# executed but free by every convention (no arithmetic worth counting, or omitted on purpose)
_FREE = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout3d, nn.Flatten, nn.Unflatten,
         nn.Upsample, nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d, nn.Softmax,
         nn.LogSoftmax, nn.PixelShuffle, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d)


def _is_norm(m: nn.Module) -> bool:
    # class-name match also catches FrozenBatchNorm2d / NaiveSyncBatchNorm that do not subclass _BatchNorm
    return isinstance(m, _NORMS) or "BatchNorm" in type(m).__name__ or "Norm" in type(m).__name__


def _dynamic_routing_rule(m: nn.Module, inputs, output) -> Optional[int]:
    out = _out_tensor(output)
    if out is None:
        return None
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        x = inputs[0]
        per_in = math.prod(m.kernel_size) * (m.out_channels // m.groups)
        return x.numel() * per_in + (out.numel() if m.bias is not None else 0)
    if isinstance(m, nn.modules.conv._ConvNd):
        per_out = math.prod(m.kernel_size) * (m.in_channels // m.groups) + (m.bias is not None)
        return per_out * out.numel()
    if isinstance(m, nn.Linear):
        return (m.in_features + (m.bias is not None)) * out.numel()
    if _is_norm(m):
        affine = getattr(m, "affine", getattr(m, "elementwise_affine", True))
        return (2 if affine else 1) * out.numel()
    if isinstance(m, _ACTIVATIONS):
        return out.numel()
    if isinstance(m, _POOLS):
        k = m.kernel_size
        k = (k,) * (out.dim() - 2) if isinstance(k, int) else tuple(k)
        return math.prod(k) * out.numel()
    if isinstance(m, _ADAPTIVE_POOLS):
        return inputs[0].numel()
    return None


_HOOK_RULES: Dict[str, Callable] = {"hrnet": _hrnet_rule, "dynamic_routing": _dynamic_routing_rule}


def _is_deliberately_free(convention: str, m: nn.Module) -> bool:
    if isinstance(m, _FREE):
        return True
    if convention == "hrnet":
        # the HRNet summary ignores everything but conv/linear by design; only parameterised
        # leaves it cannot price (embeddings, attention, ...) are worth flagging
        return _is_norm(m) or not any(True for _ in m.parameters(recurse=False))
    return False


def _count_with_hooks(model: nn.Module, run: Callable[[], None], convention: str):
    rule = _HOOK_RULES[convention]
    names = {id(m): n for n, m in model.named_modules()}
    per_module: Dict[str, int] = {}
    unsupported: Counter = Counter()

    def hook(m, inputs, output):
        name = names.get(id(m))
        if name is None:
            return
        n = rule(m, inputs, output)
        if n is None:
            is_leaf = next(m.children(), None) is None
            if is_leaf and not _is_deliberately_free(convention, m):
                unsupported[type(m).__name__] += 1
            return
        # credit the count to the module and all its ancestors ("a.b" -> "a.b", "a", "")
        parts = name.split(".") if name else []
        for i in range(len(parts), -1, -1):
            key = ".".join(parts[:i])
            per_module[key] = per_module.get(key, 0) + int(n)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return per_module, dict(unsupported)


# ATen ops that move or reshape memory: seen by the dispatcher but not arithmetic
_MEMORY_OPS = {
    "view", "_unsafe_view", "reshape", "_reshape_alias", "t", "transpose", "permute", "expand",
    "clone", "copy_", "detach", "contiguous", "slice", "select", "unsqueeze", "squeeze",
    "as_strided", "alias", "_to_copy", "to", "empty", "empty_like", "empty_strided", "zeros",
    "zeros_like", "ones", "ones_like", "full", "full_like", "new_empty", "new_zeros", "new_ones",
    "new_full", "lift_fresh", "lift_fresh_copy", "split", "split_with_sizes", "unbind", "cat",
    "stack", "flatten", "fill_", "zero_", "arange", "scalar_tensor", "_local_scalar_dense",
    "is_same_size", "constant_pad_nd", "narrow", "chunk", "expand_as", "view_as", "unfold",
    "index_select", "repeat", "_unsafe_index", "detach_", "resize_", "set_", "randn", "rand",
}


class _OpRecorder(TorchDispatchMode):
    """Counts every ATen op that runs under it (by overload packet name)."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func.overloadpacket] += 1
        return func(*args, **(kwargs or {}))


def _count_gmac(model: nn.Module, run: Callable[[], None]):
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    with FlopCounterMode(display=False) as counter:
        with _OpRecorder() as rec:
            run()
    root_prefix = type(model).__name__
    per_module: Dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        # keys are "<RootClass>.<qualified name>", with " (k)" appended to repeated calls
        key = re.sub(r" \(\d+\)$", "", key)
        if key == root_prefix:
            name = ""
        elif key.startswith(root_prefix + "."):
            name = key[len(root_prefix) + 1:]
        else:
            continue
        # FlopCounterMode counts 2 per multiply-add
        per_module[name] = per_module.get(name, 0) + sum(ops.values()) // 2
    per_module[""] = counter.get_total_flops() // 2
    unsupported = {str(op).replace("aten.", "aten::"): n for op, n in rec.calls.items()
                   if op not in flop_registry and op.__name__ not in _MEMORY_OPS}
    return per_module, unsupported


def flop_count(model: nn.Module, input_size: Sequence[int] = (1024, 2048),
               convention: str = "gmac", batch: int = 1,
               inputs: Optional[torch.Tensor] = None) -> FlopResult:
    """Count the cost of one forward pass of ``model`` on a ``batch x 3 x H x W`` input.

    The model runs in eval mode under ``torch.no_grad()`` (its train/eval mode is restored
    afterwards) on a random normal tensor on the device of its first parameter, called as
    ``model.predict_logits(x)`` if it has that method, else ``model(x)``. ``inputs`` replaces
    the random tensor (then ``input_size``/``batch`` are read from it).

    Returns a :class:`FlopResult` with ``total`` in the convention's unit (see the module doc).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"flop_count: unknown convention {convention!r}; choose one of "
                         f"{', '.join(CONVENTIONS)}")
    if inputs is None:
        if len(input_size) != 2:
            raise ValueError(f"flop_count: input_size must be (H, W), got {tuple(input_size)!r}")
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        inputs = torch.randn(batch, 3, int(input_size[0]), int(input_size[1]), device=device,
                             dtype=dtype)
    batch, (h, w) = inputs.shape[0], inputs.shape[-2:]
    call = model.predict_logits if hasattr(model, "predict_logits") else model

    def run():
        call(inputs)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if convention == "gmac":
                per_module, unsupported = _count_gmac(model, run)
            else:
                per_module, unsupported = _count_with_hooks(model, run, convention)
    finally:
        model.train(was_training)
    divisor, unit = CONVENTIONS[convention]
    raw = int(per_module.get("", 0))
    return FlopResult(
        total=raw / divisor, unit=unit,
        by_module={k: v / divisor for k, v in per_module.items()},
        unsupported_ops=unsupported, convention=convention, input_size=(int(h), int(w)),
        batch=int(batch), raw=raw, params=count_parameters(model).by_module,
        modules=[n for n, _ in model.named_modules()])


def flop_table(result: FlopResult, max_depth: int = 3, model: Optional[nn.Module] = None) -> str:
    """A tabulate table "module | #params | <convention>" down to ``max_depth`` nesting levels.

    Rows follow ``model.named_modules()`` order (recorded in the result, or from ``model``)."""
    names = model if model is not None else (
        result.modules or list(dict.fromkeys([""] + list(result.params) + list(result.by_module))))
    title = result.unit.split(" (")[0]
    return module_table(names, {"#params": result.params, title: result.by_module},
                        max_depth=max_depth, fmt={title: lambda v: f"{v:.4g}"})

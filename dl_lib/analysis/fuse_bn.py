"""Fold eval-mode batch norms into the convolutions that feed them (``dl_bench --fuse-bn``).

    fused, report = fuse_batch_norms(model, example)   # a copy; ``model`` is unchanged
    print(report)   # "folded 42 of 42 norm layers", and why any was left

A norm ``y = (x - mean) / sqrt(var + eps) * gamma + beta`` (``nn.BatchNorm*`` in eval mode,
``nn.SyncBatchNorm``, ``dl_lib.layers.FrozenBatchNorm2d``) applied to the output of a convolution
``x = W * z + b`` is the convolution ``W' * z + b'`` with ``W' = W * s`` and
``b' = (b - mean) * s + beta`` per output channel, ``s = gamma / sqrt(var + eps)``: exact up to
float rounding. The norm is then replaced by ``nn.Identity``.

Which norm follows which convolution is read from one forward pass on ``example`` (not from the
module tree, which does not say it: a ResNet block's ``bn1`` follows ``conv1`` only by its
``forward``): a norm is folded when its input is the output of a convolution op whose weight is a
module's ``weight`` parameter, that convolution ran once, the norm ran once, and nothing but the
norm read the convolution's output (a residual branch reading it would change otherwise). Every
norm left unfused is listed with the reason. The folded model is checked against the original on
``example`` before it is returned.
"""
import copy
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["FuseReport", "FuseError", "fuse_batch_norms", "is_norm_to_fold"]

_CONV_OPS = {torch.ops.aten.convolution.default, torch.ops.aten.conv2d.default,
             torch.ops.aten._convolution.default}


class FuseError(RuntimeError):
    """Folding changed the model's outputs (a convolution that ignores its ``bias``, ...)."""


@dataclass
class FuseReport:
    """``folded``: norm module name -> convolution module name it went into; ``left``: norm
    module name -> why it was not folded (it still runs); ``max_abs_diff``: largest difference
    between the folded and the original outputs on the example input."""

    folded: Dict[str, str] = field(default_factory=dict)
    left: Dict[str, str] = field(default_factory=dict)
    max_abs_diff: float = 0.0

    def __str__(self):
        n = len(self.folded) + len(self.left)
        lines = [f"folded {len(self.folded)} of {n} norm layers into their convolutions "
                 f"(max |difference| of the outputs {self.max_abs_diff:.3g})"]
        lines += [f"  left {name}: {why}" for name, why in self.left.items()]
        return "\n".join(lines)


def is_norm_to_fold(m: nn.Module) -> bool:
    """A per-channel affine norm with fixed statistics: eval-mode BatchNorm / SyncBatchNorm with
    running statistics, or FrozenBatchNorm2d."""
    from dl_lib.layers.norm import FrozenBatchNorm2d

    if isinstance(m, FrozenBatchNorm2d):
        return True
    return (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
            and m.running_var is not None)


def _call(model: nn.Module, x: torch.Tensor):
    return model.predict_logits(x) if hasattr(model, "predict_logits") else model(x)


class _Recorder(TorchDispatchMode):
    """Which op produced each tensor, and who read it outside the norm being run."""

    def __init__(self):
        super().__init__()
        self.keep: List[torch.Tensor] = []  # strong references: ids stay unique during the run
        self.produced_by_conv: Dict[int, Tuple[int, int]] = {}  # id(out) -> (weight ptr, call)
        self.reads: Dict[int, int] = {}  # id(tensor) -> ops reading it outside a running norm
        self.conv_calls: Dict[int, int] = {}  # weight data_ptr -> number of convolution calls
        self.inside_norm = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if not self.inside_norm:
            for t in inputs:
                self.reads[id(t)] = self.reads.get(id(t), 0) + 1
        self.keep += inputs
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.keep += outs
        if func in _CONV_OPS and len(outs) == 1:
            transposed = func is not torch.ops.aten.conv2d.default and bool(args[6])
            if not transposed:
                ptr = args[1].data_ptr()
                self.conv_calls[ptr] = self.conv_calls.get(ptr, 0) + 1
                self.produced_by_conv[id(outs[0])] = (ptr, self.conv_calls[ptr])
        return out


def _find_pairs(model: nn.Module, example: torch.Tensor
                ) -> Tuple[Dict[str, str], Dict[str, str]]:
    """norm name -> conv name for the foldable pairs, and norm name -> reason for the others."""
    convs = {}  # weight data_ptr -> conv module name
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter) and w.dim() >= 3 and isinstance(m, nn.modules.conv._ConvNd):
            convs[w.data_ptr()] = name
    norms = {name: m for name, m in model.named_modules() if is_norm_to_fold(m)}
    rec = _Recorder()
    seen: Dict[str, List[torch.Tensor]] = {name: [] for name in norms}
    handles = []
    for name, m in norms.items():
        def pre(mod, args, name=name):
            seen[name].append(args[0] if args else None)
            rec.inside_norm += 1

        def post(mod, args, out):
            rec.inside_norm -= 1

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.no_grad(), rec:
            _call(model, example)
    finally:
        for h in handles:
            h.remove()
    pairs, left = {}, {}
    for name in norms:
        calls = seen[name]
        if not calls:
            left[name] = "did not run on the example input"
            continue
        if len(calls) > 1:
            left[name] = f"ran {len(calls)} times"
            continue
        x = calls[0]
        src = rec.produced_by_conv.get(id(x)) if isinstance(x, torch.Tensor) else None
        if src is None:
            left[name] = "its input is not the output of a convolution"
            continue
        ptr, _ = src
        if ptr not in convs:
            left[name] = "the convolution before it does not use a module's weight parameter"
        elif rec.conv_calls[ptr] > 1:
            left[name] = f"convolution {convs[ptr]} ran {rec.conv_calls[ptr]} times"
        elif rec.reads.get(id(x), 0) > 0:
            left[name] = (f"the output of {convs[ptr]} is also read elsewhere "
                          f"({rec.reads[id(x)]} other op(s))")
        else:
            pairs[name] = convs[ptr]
    return pairs, left


@torch.no_grad()
def _fold(conv: nn.modules.conv._ConvNd, norm: nn.Module) -> None:
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps) if norm.weight is not None \
        else torch.rsqrt(norm.running_var + norm.eps)
    shift = norm.bias if norm.bias is not None else torch.zeros_like(scale)
    w = conv.weight
    b = conv.bias if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype,
                                                                device=w.device)
    # in float64, then back: the folded weights are as exact as the dtype allows
    s64 = scale.double()
    new_w = (w.double() * s64.view(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
    new_b = ((b.double() - norm.running_mean.double()) * s64 + shift.double()).to(w.dtype)
    conv.weight.copy_(new_w)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_b, requires_grad=w.requires_grad)
    else:
        conv.bias.copy_(new_b)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def _max_abs_diff(a, b) -> float:
    fa = [t for t in tree_flatten(a)[0] if isinstance(t, torch.Tensor)]
    fb = [t for t in tree_flatten(b)[0] if isinstance(t, torch.Tensor)]
    if len(fa) != len(fb):
        return float("inf")
    return max([(x.float() - y.float()).abs().max().item() for x, y in zip(fa, fb)] or [0.0])


def fuse_batch_norms(model: nn.Module, example: torch.Tensor, inplace: bool = False,
                     rtol: float = 1e-3
                     ) -> Tuple[nn.Module, FuseReport]:
    """Fold every norm that directly follows a convolution into it (see the module doc).

    Args:
        model: put in eval mode (its norms must use running statistics).
        example: an input the model runs on (``model.predict_logits(x)`` if it has that method,
            else ``model(x)``); a small size is enough.
        inplace: change ``model`` itself instead of a deep copy.
        rtol: the check: max |folded - original| on ``example`` must be at most ``rtol`` times
            the largest |original output| (float32 rounding is ~1e-6 of it).

    Returns ``(folded model, FuseReport)``; raises :class:`FuseError` when the check fails.
    """
    model.eval()
    with torch.no_grad():
        reference = _call(model, example)
    target = model if inplace else copy.deepcopy(model)
    pairs, left = _find_pairs(target, example)
    for norm_name, conv_name in pairs.items():
        _fold(target.get_submodule(conv_name), target.get_submodule(norm_name))
        _set_module(target, norm_name, nn.Identity())
    with torch.no_grad():
        folded = _call(target, example)
    diff = _max_abs_diff(folded, reference)
    scale = max([t.abs().max().item() for t in tree_flatten(reference)[0]
                 if isinstance(t, torch.Tensor)] or [1.0])
    report = FuseReport(folded=pairs, left=left, max_abs_diff=diff)
    if not diff <= rtol * max(scale, 1e-12):
        raise FuseError(f"fuse_batch_norms: the folded model's outputs differ from the original's "
                        f"by {diff:.3g} (outputs up to {scale:.3g}); a convolution among "
                        f"{sorted(set(pairs.values()))[:5]} may not use its bias parameter. Run "
                        "without --fuse-bn.")
    return target, report

"""Fold eval-mode BatchNorm into the convolution before it: the inference rewrite that keeps the
outputs (to float rounding) and saves BN's pass over every feature map.

BN in eval mode is ``y = x * a + s`` per channel (``a = gamma / sqrt(var + eps)``,
``s = beta - mean * a``); after a convolution ``x = W * in + b`` that is a convolution with
``W' = a W`` and ``b' = a b + s``. On a compressed ACoSP network (channels of 8-100 feature maps
at 90 x 90) BN was 9-10% of the forward (``benchmarks/compression.py`` profile), on a dense one
about 1%.

Which BN follows which convolution is read from a ``torch.fx`` trace of the method inference runs
(``compression_forward``, ``forward_logits``, ``predict_logits`` or ``forward``, the first the
model has), so any forward code works as long as it traces; a pair is folded only when the
conv's output feeds nothing but that BN and each of the two modules runs once. Convolutions with
their BN inside (``dl_lib.layers.Conv2d(norm=...)``) are folded without tracing. Only plain
``nn.Conv2d`` (and ``dl_lib.layers.Conv2d``, the pruning's ``FoldedConv2d``) are rewritten:
subclasses with their own forward (ADP-C's masked convs fold their BN themselves) are left alone.

The result is for inference only: the folded BNs become ``nn.Identity`` (the state dict
changes; save the model before folding) and training it would train the folded weights.
"""
from typing import List, Optional, Tuple

import torch
from torch import fx, nn

from dl_lib.layers.norm import FrozenBatchNorm2d
from dl_lib.layers.wrappers import Conv2d as WrapperConv2d

__all__ = ["fold_batchnorm"]

_TRACED_METHODS = ("compression_forward", "forward_logits", "predict_logits")


def _conv_types():
    from dl_lib.layers.pointwise_conv import PointwiseConv2d

    from .pruning.channels import FoldedConv2d

    return (nn.Conv2d, WrapperConv2d, FoldedConv2d, PointwiseConv2d)


def _is_foldable_norm(m: nn.Module) -> bool:
    if isinstance(m, FrozenBatchNorm2d):
        return True
    # Without running statistics BN normalises with the batch's, even in eval: not affine.
    return (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.running_mean is not None and not m.training)


def _is_foldable_conv(m: nn.Module) -> bool:
    return type(m) in _conv_types() and (type(m) is not WrapperConv2d or
                                         (m.norm is None and m.activation is None))


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: nn.Module) -> None:
    var = norm.running_var.double()
    scale = (var + norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -norm.running_mean.double() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    w = conv.weight
    conv.weight.copy_((w.double() * scale.view(-1, 1, 1, 1)).to(w.dtype))
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    new_bias = (bias * scale + shift).to(w.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=w.requires_grad)
    else:
        conv.bias.copy_(new_bias)
    fold_kernel = getattr(conv, "fold_kernel", None)
    if fold_kernel is not None:  # FoldedConv2d: its border term passes through BN's scale too
        fold_kernel.copy_((fold_kernel.double() * scale.view(-1, 1, 1, 1)).to(fold_kernel.dtype))
        conv._fold_cache = None


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, _conv_types()) or isinstance(m, nn.modules.batchnorm._BatchNorm) \
                or isinstance(m, FrozenBatchNorm2d):
            return True
        return super().is_leaf_module(m, qualname)


class _Root(nn.Module):
    def __init__(self, model: nn.Module, method: Optional[str]):
        super().__init__()
        self.m = model
        self.method = method

    def forward(self, x):
        return getattr(self.m, self.method)(x) if self.method else self.m(x)


def _traced_pairs(model: nn.Module, method: Optional[str]) -> List[Tuple[str, str]]:
    if method is None:
        method = next((m for m in _TRACED_METHODS if hasattr(model, m)), None)
    root = _Root(model, method)
    try:
        graph = _Tracer().trace(root)
    except Exception as e:  # noqa: BLE001 - any tracing failure: say which method and why
        raise RuntimeError(
            f"fold_batchnorm: torch.fx cannot trace {type(model).__name__}."
            f"{method or 'forward'} ({type(e).__name__}: {e}); pass method= a traceable "
            "method, or fold the pairs yourself with torch.nn.utils.fuse_conv_bn_eval") from e
    calls = [n for n in graph.nodes if n.op == "call_module"]
    count = {}
    for n in calls:
        count[n.target] = count.get(n.target, 0) + 1
    pairs = []
    for n in calls:
        norm = root.get_submodule(n.target)
        src = n.args[0] if n.args else None
        if not (_is_foldable_norm(norm) and isinstance(src, fx.Node) and src.op == "call_module"):
            continue
        conv = root.get_submodule(src.target)
        if (_is_foldable_conv(conv) and len(src.users) == 1 and count[src.target] == 1
                and count[n.target] == 1 and conv.out_channels == norm.num_features):
            pairs.append((src.target[len("m."):], n.target[len("m."):]))
    return pairs


def fold_batchnorm(model: nn.Module, method: Optional[str] = None) -> List[Tuple[str, str]]:
    """Folds every eval-mode BN that directly follows a convolution into it, in place; the BN
    becomes ``nn.Identity``. ``model`` must be in eval mode. ``method``: the method to trace
    (default: see the module doc). Returns the folded (conv path, BN path) pairs."""
    if model.training:
        raise ValueError("fold_batchnorm: the model is in training mode; call model.eval() "
                         "first (folding uses BN's running statistics)")
    folded = []
    for path, m in model.named_modules():
        if type(m) is WrapperConv2d and m.norm is not None and _is_foldable_norm(m.norm):
            _fold(m, m.norm)
            m.norm = None
            folded.append((path, f"{path}.norm" if path else "norm"))
    for conv_path, norm_path in _traced_pairs(model, method):
        _fold(model.get_submodule(conv_path), model.get_submodule(norm_path))
        parent_path, _, name = norm_path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        parent._modules[name] = nn.Identity()
        folded.append((conv_path, norm_path))
    return folded

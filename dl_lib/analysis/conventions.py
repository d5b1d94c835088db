"""What each FLOP convention counts, so a number can be compared with the paper it came from.

Three conventions; every rule gives the count of one call for its whole batch, or, for a masked
convolution, one count per image of that batch:

``"gmac"``
    Plain multiply-accumulates / 1e9: convolutions (groups included), linear layers, matmul/bmm,
    attention (``scaled_dot_product_attention``). Counted at the ATen level with the formulas of
    ``torch.utils.flop_counter`` (2 per MAC, halved here), so functional calls are seen too; a
    masked convolution (``dl_lib.layers.masked_conv2d`` / ``MaskedConv2d``) counts its active
    output positions only. Not counted: bias adds, normalisation, activations, element-wise ops,
    pooling, interpolation; the ops seen but not counted are listed in ``unsupported_ops``.
``"hrnet"``
    HRNet's ``get_model_summary`` (also used by the anytime/ADP-C papers): forward hooks on
    modules whose class name contains ``"Conv"`` (``numel(weight) * H_out * W_out``; a
    ``MaskedConv2d`` with a mask: ``numel(weight) * active positions``) and on ``nn.Linear``
    (``numel(weight)`` per output row); nothing else (no bias, BN, ReLU, add, upsample); divided
    by 2^30. HRNetV2-W48 at 1024x2048 gives 696.2 under this rule.
``"dynamic_routing"``
    DynamicRouting's ``cal_op_flops``: conv ``(k_h*k_w*C_in/groups + bias) * C_out * H_out * W_out``
    (a masked conv: times its active positions instead of ``H_out * W_out``), BN ``2`` per output
    element (``1`` if not affine; other norms likewise), ReLU-like activations 1 per element,
    pooling ``k_h*k_w`` per output element (adaptive pooling: 1 per input element), linear
    ``(in + bias) * out``; bilinear upsampling and element-wise adds are omitted; divided by 1e9
    (the repo's "MFLOPs / 1e3").

The hook conventions only see ``nn.Module`` calls: functional ``F.relu``/``F.conv2d`` (and the
functional ``masked_conv2d``) inside a ``forward`` are invisible to them (the ``"gmac"`` counter
sees them). Leaf modules that execute but are not handled by the convention are listed in
``unsupported_ops`` by class name.
"""
import math
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

__all__ = ["CONVENTIONS", "HOOK_RULES", "MEMORY_OPS", "active_per_image", "is_deliberately_free",
           "module_mask"]

# convention -> (divisor, unit label)
CONVENTIONS: Dict[str, Tuple[float, str]] = {
    "gmac": (1e9, "GMACs (conv/linear/matmul multiply-adds, 1e9)"),
    "hrnet": (float(2 ** 30), "GFLOPs (HRNet summary: conv/linear MACs / 2^30)"),
    "dynamic_routing": (1e9, "GFLOPs (DynamicRouting: MACs + bias + BN + ReLU, 1e9)"),
}

# A rule's count: the batch total, or a list with one count per image of the call's batch.
Count = Union[int, List[int]]


def active_per_image(mask: torch.Tensor) -> List[int]:
    """Active (non-zero) positions of each image of an N x 1 x Ho x Wo mask -> N ints."""
    return [int(v) for v in torch.count_nonzero(mask.reshape(mask.shape[0], -1), dim=1).tolist()]


def module_mask(m: nn.Module, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    """The mask a ``MaskedConv2d`` call ran with (second forward argument, ``mask=`` or the
    module's ``_mask``); None for other modules and for a MaskedConv2d running densely."""
    from dl_lib.layers.masked_conv import MaskedConv2d  # lazy: dl_lib.layers imports this package

    if not isinstance(m, MaskedConv2d):
        return None
    mask = args[1] if len(args) > 1 else kwargs.get("mask")
    return m._mask if mask is None else mask


def _out_tensor(output) -> Optional[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _hrnet_rule(m: nn.Module, args, kwargs, output) -> Optional[Count]:
    out = _out_tensor(output)
    if out is None:
        return None
    w = getattr(m, "weight", None)
    if isinstance(m, nn.Linear):
        return m.weight.numel() * (out.numel() // m.out_features)
    if "Conv" in type(m).__name__ and isinstance(w, torch.Tensor) and w.dim() >= 3:
        mask = module_mask(m, args, kwargs)
        if mask is not None:
            return [w.numel() * a for a in active_per_image(mask)]
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


def _dynamic_routing_rule(m: nn.Module, args, kwargs, output) -> Optional[Count]:
    out = _out_tensor(output)
    if out is None:
        return None
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        x = args[0]
        per_in = math.prod(m.kernel_size) * (m.out_channels // m.groups)
        return x.numel() * per_in + (out.numel() if m.bias is not None else 0)
    if isinstance(m, nn.modules.conv._ConvNd):
        per_out = math.prod(m.kernel_size) * (m.in_channels // m.groups) + (m.bias is not None)
        mask = module_mask(m, args, kwargs)
        if mask is not None:
            return [per_out * m.out_channels * a for a in active_per_image(mask)]
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
        return args[0].numel()
    return None


# convention -> rule(module, args, kwargs, output) -> Count or None (module not handled)
HOOK_RULES: Dict[str, Callable] = {"hrnet": _hrnet_rule, "dynamic_routing": _dynamic_routing_rule}


def is_deliberately_free(convention: str, m: nn.Module) -> bool:
    """True if a leaf ``m`` that a hook convention does not price should not be flagged."""
    if isinstance(m, _FREE):
        return True
    if convention == "hrnet":
        # the HRNet summary ignores everything but conv/linear by design; only parameterised
        # leaves it cannot price (embeddings, attention, ...) are worth flagging
        return _is_norm(m) or not any(True for _ in m.parameters(recurse=False))
    return False


# ATen ops that move or reshape memory: seen by the dispatcher but not arithmetic
MEMORY_OPS = {
    "view", "_unsafe_view", "reshape", "_reshape_alias", "t", "transpose", "permute", "expand",
    "clone", "copy_", "detach", "contiguous", "slice", "select", "unsqueeze", "squeeze",
    "as_strided", "alias", "_to_copy", "to", "empty", "empty_like", "empty_strided", "zeros",
    "zeros_like", "ones", "ones_like", "full", "full_like", "new_empty", "new_zeros", "new_ones",
    "new_full", "lift_fresh", "lift_fresh_copy", "split", "split_with_sizes", "unbind", "cat",
    "stack", "flatten", "fill_", "zero_", "arange", "scalar_tensor", "_local_scalar_dense",
    "is_same_size", "constant_pad_nd", "narrow", "chunk", "expand_as", "view_as", "unfold",
    "index_select", "repeat", "_unsafe_index", "detach_", "resize_", "set_", "randn", "rand",
}

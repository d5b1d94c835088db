"""Cost of a masked convolution: its active output positions x the MACs of one position.

Two ways in, giving the same numbers:

- :func:`counted_as_masked_conv` decorates the Python entry points of ``dl_lib.layers``
  (``masked_conv2d`` and its in-place variant): under an active :class:`CostTracker` the call
  reports ``numel(weight) x active positions`` per image and the ATen ops it runs inside are not
  counted again, so the sparse kernel and the dense fallback (``F.conv2d * mask``, also the
  pure-PyTorch path without ``dl_lib._C``) cost the same;
- a FLOP formula for the compiled ops ``dl_lib::masked_conv2d`` / ``dl_lib::masked_conv2d_out``,
  registered with ``torch.utils.flop_counter`` (so a plain ``FlopCounterMode`` counts active
  positions) and with the tracker (for direct ``torch.ops`` calls).
"""
import functools
import inspect
from typing import Callable, List

import torch

from . import cost_tracker
from .conventions import active_per_image

__all__ = ["counted_as_masked_conv", "masked_conv_macs"]

# compiled ops with the schema (input, weight, bias, mask, stride_h, ...)
_OP_NAMES = ("masked_conv2d", "masked_conv2d_out")


def masked_conv_macs(weight: torch.Tensor, mask: torch.Tensor) -> List[int]:
    """MACs per image: ``numel(weight)`` (= O * C/groups * kh * kw, the MACs of one output
    position) x the active positions of each image of the N x 1 x Ho x Wo ``mask``."""
    per_position = weight.numel()
    return [per_position * a for a in active_per_image(mask)]


def counted_as_masked_conv(fn: Callable) -> Callable:
    """Decorator for a function ``fn(input, weight, bias, mask, ...)`` computing a masked conv."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tracker = cost_tracker._ACTIVE
        if tracker is None or "gmac" not in tracker.conventions:
            return fn(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        with tracker.reporting_op(("gmac",)):
            out = fn(*args, **kwargs)
            macs = masked_conv_macs(bound.arguments["weight"], bound.arguments["mask"])
        tracker._credit("gmac", macs)
        return out

    return wrapper


def _op_macs_per_image(args, kwargs) -> List[int]:
    return masked_conv_macs(args[1], args[3])


def _op_flops(input, weight, bias, mask, *args, out_val=None, **kwargs) -> int:
    # FlopCounterMode counts 2 FLOPs per multiply-add
    return 2 * sum(masked_conv_macs(weight, mask))


def _register_op_formulas() -> None:
    from dl_lib._ext import has_compiled_ops
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    if not has_compiled_ops():
        return
    for name in _OP_NAMES:
        if not hasattr(torch.ops.dl_lib, name):  # an older build of dl_lib._C
            continue
        packet = getattr(torch.ops.dl_lib, name)
        cost_tracker.register_per_image_formula(packet, _op_macs_per_image)
        if packet not in flop_registry:
            register_flop_formula(packet, get_raw=True)(_op_flops)


_register_op_formulas()

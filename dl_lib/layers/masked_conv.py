"""Sparse masked convolution: ``conv2d`` evaluated only where a mask on the output grid is set.

``masked_conv2d(input, weight, bias, mask, ...)`` equals ``F.conv2d(input, weight, bias, ...)`` at
the active positions of ``mask`` and is 0 elsewhere; the work (and time, on CPU) scales with the
number of active positions. It calls the compiled op ``torch.ops.dl_lib.masked_conv2d`` (CPU
kernels in ``csrc/masked_conv/cpu``, CUDA kernels in ``csrc/masked_conv/cuda``, autograd in
``csrc/masked_conv/autograd``) and falls back to the dense reference
(:func:`dl_lib.layers.masked_conv_reference.masked_conv2d_dense`) when ``dl_lib._C`` is missing or
has no kernel for the device/dtype (e.g. float16 on CPU).

Gradients flow to input, weight and bias (positions outside the mask contribute nothing); the
mask gets none. For soft masks or double backward use the dense reference.

``masked_conv2d(..., out=t)`` is the "keep" variant (``torch.ops.dl_lib.masked_conv2d_out``): it
writes the active positions into ``t`` and leaves the others as they are (no zero fill), for
models that fill skipped positions from elsewhere; ``t`` gets grad_output at the inactive
positions.

Under ``torch.autocast`` the op computes in the autocast dtype where a kernel has it (CUDA fp16 /
bf16) and otherwise in float32 (the CPU kernels), and returns the dtype ``F.conv2d`` would.

Fast paths want channels_last (NHWC) inputs: the output keeps the input's memory format, and on
the CPU an NCHW input costs a transposing copy (the dense fallback then switches earlier, see
``masked_conv_policy.BREAK_EVEN_NCHW``; models should follow
:func:`~dl_lib.layers.masked_conv_policy.prefers_channels_last`).
"""
import contextlib
import inspect
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from dl_lib._ext import compiled_with_cuda, has_compiled_ops
from dl_lib.analysis.masked_cost import counted_as_masked_conv

from .masked_conv_checks import check_conv_args, check_devices
from .masked_conv_policy import input_layout, policy_device, use_dense
from .masked_conv_reference import masked_conv2d_dense, masked_conv2d_keep

__all__ = ["masked_conv2d", "MaskedConv2d"]

IntPair = Union[int, Sequence[int]]

_HAS_OPS = has_compiled_ops()
# Evaluated once here: calling the op under torch.compile would trace it.
_HAS_CUDA_OPS = _HAS_OPS and compiled_with_cuda()
_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


if _HAS_OPS:

    def _memory_format(t: torch.Tensor) -> torch.memory_format:
        # The kernels write their dense results in the input's memory format.
        from torch._prims_common import suggest_memory_format

        return suggest_memory_format(t)

    def _check_fake_devices(input, **tensors):
        # A meta (or fake) tensor among real ones dispatches here, not to a kernel that checks.
        for name, t in tensors.items():
            torch._check(t is None or t.device == input.device,
                         lambda: f"masked_conv2d: {name} is on {t.device} but input is on "
                                 f"{input.device}; move it with {name}.to(input.device)")

    @torch.library.register_fake("dl_lib::masked_conv2d")
    def _masked_conv2d_fake(input, weight, bias, mask, stride_h, stride_w, pad_h, pad_w,
                            dilation_h, dilation_w, groups):
        _check_fake_devices(input, weight=weight, bias=bias, mask=mask)
        torch._check(input.dim() == 4, lambda: "masked_conv2d: input must be 4-D")
        torch._check(weight.dim() == 4, lambda: "masked_conv2d: weight must be 4-D")
        n, _, h, w = input.shape
        out_ch, _, kh, kw = weight.shape
        ho = (h + 2 * pad_h - dilation_h * (kh - 1) - 1) // stride_h + 1
        wo = (w + 2 * pad_w - dilation_w * (kw - 1) - 1) // stride_w + 1
        return torch.empty((n, out_ch, ho, wo), dtype=input.dtype, device=input.device,
                           memory_format=_memory_format(input))

    @torch.library.register_fake("dl_lib::_masked_conv2d_backward")
    def _masked_conv2d_backward_fake(grad_output, input, weight, mask, stride_h, stride_w, pad_h,
                                     pad_w, dilation_h, dilation_w, groups, output_mask):
        _check_fake_devices(input, grad_output=grad_output, weight=weight, mask=mask)
        grad_input = grad_weight = grad_bias = None
        if output_mask[0]:
            grad_input = torch.empty_like(input, memory_format=_memory_format(input))
        if output_mask[1]:
            grad_weight = torch.empty_like(weight, memory_format=torch.contiguous_format)
        if output_mask[2]:
            grad_bias = weight.new_empty((weight.shape[0],))
        return grad_input, grad_weight, grad_bias

    @torch.library.register_fake("dl_lib::masked_conv2d_out")
    def _masked_conv2d_out_fake(input, weight, bias, mask, stride_h, stride_w, pad_h, pad_w,
                                dilation_h, dilation_w, groups, out):
        _check_fake_devices(input, weight=weight, bias=bias, mask=mask, out=out)
        return None  # mutates out, returns nothing


def _has_kernel(input: torch.Tensor, dtype: Optional[torch.dtype] = None) -> bool:
    """Whether a compiled kernel runs ``input``'s device and ``dtype`` (default: its own)."""
    dtype = input.dtype if dtype is None else dtype
    if not _HAS_OPS:
        return False
    if input.device.type == "cpu":
        return dtype in _CPU_DTYPES
    if input.device.type == "cuda":
        return _HAS_CUDA_OPS and dtype in _CUDA_DTYPES
    return False


def _autocast_dtype(input: torch.Tensor) -> Optional[torch.dtype]:
    """The autocast dtype of ``input``'s device when autocast is on there, else None."""
    device_type = input.device.type
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


class _MaskedConv2dKeep(torch.autograd.Function):
    """``masked_conv2d_out`` with gradients: input/weight/bias as the masked op, and the previous
    values of ``out`` receive grad_output at the inactive positions.

    ``out`` is the first argument: when it is a view, autograd wraps this node in CopySlices,
    which routes the node's first gradient to the view's base (with ``out`` fourth, the base
    got grad_input and input got nothing).
    """

    @staticmethod
    def forward(ctx, out, input, weight, bias, mask, stride, padding, dilation, groups):
        torch.ops.dl_lib.masked_conv2d_out(input, weight, bias, mask, stride[0], stride[1],
                                           padding[0], padding[1], dilation[0], dilation[1],
                                           groups, out)
        ctx.mark_dirty(out)
        ctx.save_for_backward(input, weight, mask)
        ctx.conv_args = (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
                         groups)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, mask = ctx.saved_tensors
        need_out, *need = ctx.needs_input_grad
        output_mask = [need[0], need[1], ctx.has_bias and need[2]]
        grad_input = grad_weight = grad_bias = grad_out = None
        if any(output_mask):
            grad_input, grad_weight, grad_bias = torch.ops.dl_lib._masked_conv2d_backward(
                grad_output, input, weight, mask, *ctx.conv_args, output_mask)
        if need_out:
            grad_out = grad_output.masked_fill(mask, 0)
        return grad_out, grad_input, grad_weight, grad_bias, None, None, None, None, None


def _check_out(out: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, out_hw) -> None:
    expected = (input.shape[0], weight.shape[0], out_hw[0], out_hw[1])
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"masked_conv2d: out must have the convolution's output shape (N, O, "
                         f"Ho, Wo) = {expected}, got {got}")
    if out.dtype != input.dtype or out.device != input.device:
        raise TypeError(f"masked_conv2d: out must be a {input.dtype} tensor on {input.device} "
                        f"like input, got {out.dtype} on {out.device}; allocate it with "
                        f"input.new_empty(...) or cast it")


def _keep_dense(input, weight, bias, mask, out, stride, padding, dilation, groups,
                all_active: bool = False) -> torch.Tensor:
    """Dense convolution into ``out`` at the active positions (fallback of the keep variant)."""
    y = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    if all_active:
        return out.copy_(y)
    if torch.is_grad_enabled() and (y.requires_grad or out.requires_grad):
        return out.copy_(torch.where(mask, y, out))  # differentiable in y and out
    return torch.where(mask, y, out, out=out)


def _masked_conv2d_autocast(input, weight, bias, mask, stride, padding, dilation, groups,
                            dense_fallback, out, dtype) -> torch.Tensor:
    """masked_conv2d under autocast: computes in ``dtype`` where a kernel has it, else in float32,
    and returns ``dtype`` like ``F.conv2d`` would (``out``'s dtype for the keep variant)."""
    if out is not None:
        compute = out.dtype
    elif not _HAS_OPS or _has_kernel(input, dtype):
        compute = dtype
    else:
        compute = torch.float32  # e.g. CPU bf16: the sparse float32 kernel, then a cast

    def cast(t):
        # Autocast leaves float64 alone and casts the other float types.
        if t is None or not t.is_floating_point() or t.dtype == torch.float64:
            return t
        return t.to(compute)

    result_dtype = dtype if input.dtype != torch.float64 else input.dtype
    # The undecorated function: a cost tracker's wrapper already counts this call once.
    inner = inspect.unwrap(masked_conv2d)
    with torch.autocast(input.device.type, enabled=False):
        y = inner(cast(input), cast(weight), cast(bias), mask, stride, padding, dilation,
                  groups, dense_fallback=dense_fallback, out=out)
    return y if out is not None or y.dtype == result_dtype else y.to(result_dtype)


def _prepare_mask(mask: torch.Tensor, input: torch.Tensor, out_hw) -> torch.Tensor:
    """Check ``mask`` against the output grid and return it as a contiguous bool tensor."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"masked_conv2d: mask must be a tensor, got {type(mask).__name__}")
    expected = (input.shape[0], 1, out_hw[0], out_hw[1])
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"masked_conv2d: mask must have shape (N, 1, Ho, Wo) = {expected} (the output grid "
            f"of this convolution), got {tuple(mask.shape)}. Resize it with "
            f"dl_lib.layers.resize_mask(mask, {tuple(out_hw)}).")
    if mask.device != input.device:
        raise ValueError(
            f"masked_conv2d: mask is on {mask.device} but input is on {input.device}; move it "
            f"with mask.to(input.device).")
    if mask.dtype == torch.bool:
        return mask.contiguous()
    if mask.is_complex() or not (mask.is_floating_point() or mask.dtype in (
            torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"masked_conv2d: mask must be bool or hold 0/1 values, got {mask.dtype}")
    if not torch.compiler.is_compiling() and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(
            f"masked_conv2d: a {mask.dtype} mask must hold only 0 and 1 (a hard mask); got other "
            f"values. Threshold it (mask > t) or, for a soft mask, use the dense path "
            f"F.conv2d(...) * mask.")
    return (mask.detach() != 0).contiguous()


# Under an active dl_lib.analysis.CostTracker: costs its active positions, whichever path runs.
@counted_as_masked_conv
def masked_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  mask: torch.Tensor, stride: IntPair = 1, padding: IntPair = 0,
                  dilation: IntPair = 1, groups: int = 1,
                  dense_fallback: bool = False,
                  out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """2-D convolution computed only at the active positions of ``mask``.

    Args:
        input: N x C x H x W (any memory format; channels_last is fastest).
        weight: O x C/groups x kh x kw, same dtype and device as ``input``.
        bias: O, or None.
        mask: N x 1 x Ho x Wo on the output grid, bool or 0/1 values.
        stride, padding, dilation: int or (h, w) pair, as in ``F.conv2d`` (zero padding).
        groups: as in ``F.conv2d``.
        dense_fallback: if True, run ``F.conv2d(...) * mask`` when the mask's density is above
            the layer's break-even point for this input's layout and this CPU's ISA
            (``masked_conv_policy``); costs one host sync for the density.
        out: optional N x O x Ho x Wo tensor of the input's dtype and device (any memory
            format): the active positions are written into it, the others keep their values
            (no zero fill); it is returned, and gets grad_output at the inactive positions.
            A leaf that requires grad cannot be written in place (pass a clone).

    Returns:
        N x O x Ho x Wo: ``F.conv2d(...)`` at active positions, 0 elsewhere (``out``'s values
        there with ``out``). Under ``torch.autocast``: the autocast dtype. On the CPU an
        output of 1 MiB or more takes its storage from a cache of freed outputs (a fresh
        multi-megabyte block costs a page fault per 4 KiB, more than the sparse compute at low
        density); the cache holds at most ``DL_LIB_MASKED_CONV_POOL_MB`` MiB (default 256, 0
        turns it off), ``torch.ops.dl_lib._masked_conv2d_output_pool(True)`` frees it, and such
        outputs cannot be resized in place.

    Raises:
        ValueError / TypeError naming the argument, its value and the fix, before anything runs
        (``masked_conv_checks``): 0 input channels, channels not divisible by ``groups``, stride
        or dilation < 1, negative padding, a kernel larger than the padded input, weight / bias
        / mask / out on another device or (weight, bias, out) of another dtype than ``input``.
    """
    # Every argument is checked before any path runs (masked_conv_checks.py).
    check_devices(input, weight, bias, mask, out)
    autocast_dtype = _autocast_dtype(input)
    if autocast_dtype is not None:
        return _masked_conv2d_autocast(input, weight, bias, mask, stride, padding, dilation,
                                       groups, dense_fallback, out, autocast_dtype)
    stride, padding, dilation, out_hw = check_conv_args(input, weight, bias, stride, padding,
                                                        dilation, groups)
    mask = _prepare_mask(mask, input, out_hw)
    if out is not None:
        _check_out(out, input, weight, out_hw)
    if dense_fallback and not torch.compiler.is_compiling():
        # One count (a bool reduction, ~20 us for a 256x512 mask) gives both the density and
        # whether the fallback may skip zeroing; a float mean plus mask.all() cost ~6x that.
        active = int(torch.count_nonzero(mask))
        density = active / mask.numel() if mask.numel() else 0.0
        # The backward breaks even at lower densities: training uses its own thresholds.
        training = torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad)
        if use_dense(weight, groups, density, policy_device(input.device), training,
                     input_layout(input)):
            if out is not None:
                return _keep_dense(input, weight, bias, mask, out, stride, padding, dilation,
                                   groups, all_active=active == mask.numel())
            return masked_conv2d_dense(input, weight, bias, mask, stride, padding, dilation,
                                       groups, all_active=active == mask.numel())
    if out is not None:
        if not _has_kernel(input):
            return out.copy_(masked_conv2d_keep(input, weight, bias, mask, out, stride, padding,
                                                dilation, groups))
        return _MaskedConv2dKeep.apply(out, input, weight, bias, mask, stride, padding, dilation,
                                       groups)
    if not _has_kernel(input):
        return masked_conv2d_dense(input, weight, bias, mask, stride, padding, dilation, groups)
    return torch.ops.dl_lib.masked_conv2d(input, weight, bias, mask, stride[0], stride[1],
                                          padding[0], padding[1], dilation[0], dilation[1],
                                          groups)


class MaskedConv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes only the active positions of a mask on its output grid.

    Same constructor, parameters and state_dict as ``nn.Conv2d``. Without a mask it is exactly
    ``nn.Conv2d``. A mask is given per call (``forward(x, mask)``), set persistently
    (``set_mask`` / ``clear_mask``) or for a block (``with conv.masked(mask): ...``); it must be
    N x 1 x Ho x Wo (see :func:`dl_lib.layers.resize_mask` to get one from another resolution).

    With ``dense_fallback`` (default True) the layer runs ``F.conv2d(...) * mask`` when the
    mask's density is above the measured break-even point of this layer kind
    (``dl_lib.layers.masked_conv_policy``). Non-zero padding modes ('reflect', ...) and string
    paddings are applied with ``F.pad`` before the masked convolution.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Plain attributes (not buffers): the state_dict stays identical to nn.Conv2d's.
        self._mask: Optional[torch.Tensor] = None
        self.dense_fallback = True

    def set_mask(self, mask: Optional[torch.Tensor]) -> None:
        """Use ``mask`` (N x 1 x Ho x Wo) for the following forwards; None computes densely."""
        self._mask = mask

    def clear_mask(self) -> None:
        self._mask = None

    @contextlib.contextmanager
    def masked(self, mask: Optional[torch.Tensor]):
        """Context manager: ``with conv.masked(mask): y = conv(x)``."""
        previous = self._mask
        self._mask = mask
        try:
            yield self
        finally:
            self._mask = previous

    def forward(self, input: torch.Tensor, mask: Optional[torch.Tensor] = None,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``input`` N x C x H x W, ``mask`` N x 1 x Ho x Wo (or the set one); with ``out`` (N x
        O x Ho x Wo) the active positions are written into it and the rest kept (see
        :func:`masked_conv2d`)."""
        mask = self._mask if mask is None else mask
        if mask is None:
            y = super().forward(input)
            return y if out is None else out.copy_(y)
        x, padding = input, self.padding
        if isinstance(self.padding, str) or self.padding_mode != "zeros":
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(input, self._reversed_padding_repeated_twice, mode=mode)
            padding = (0, 0)
        return masked_conv2d(x, self.weight, self.bias, mask, self.stride, padding, self.dilation,
                             self.groups, dense_fallback=self.dense_fallback, out=out)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", dense_fallback={self.dense_fallback}"

"""Argument checks of :func:`dl_lib.layers.masked_conv2d`, before any kernel or fallback runs.

Each bad argument is one clear error naming the argument, its value and the fix, whichever path
would run (compiled kernel, dense fallback, the reference without ``dl_lib._C``): a
``ValueError`` for a bad value or shape, a ``TypeError`` for a wrong type or dtype, a
``ValueError`` for a tensor on another device than the input. The compiled ops check the same
with the same words (``csrc/masked_conv/check_args.cpp``), so direct ``torch.ops.dl_lib.*`` calls
are safe too; keep the two in step.

Only shapes, dtypes and devices are read (no tensor data): the checks are free and trace under
``torch.compile``.
"""
import operator
from typing import Optional, Sequence, Tuple, Union

import torch

__all__ = ["check_devices", "check_conv_args", "int_pair"]

IntPair = Union[int, Sequence[int]]


def int_pair(name: str, value: IntPair) -> Tuple[int, int]:
    """``value`` (an int or a pair of ints) as an (h, w) pair; a TypeError naming ``name`` else."""
    items = (value, value) if not isinstance(value, (tuple, list, torch.Size)) else tuple(value)
    try:
        if len(items) != 2 or any(isinstance(v, bool) for v in items):
            raise TypeError
        return operator.index(items[0]), operator.index(items[1])  # numpy ints are fine
    except TypeError:
        raise TypeError(f"masked_conv2d: {name} must be an int or a pair of ints (h, w), got "
                        f"{value!r}") from None


def check_devices(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  mask: torch.Tensor, out: Optional[torch.Tensor]) -> None:
    """input, weight 4-D tensors; weight, bias, mask and out tensors on the input's device."""
    for name, t in (("input", input), ("weight", weight), ("mask", mask)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"masked_conv2d: {name} must be a tensor, got {type(t).__name__}")
    for name, t in (("bias", bias), ("out", out)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"masked_conv2d: {name} must be a tensor or None, got "
                            f"{type(t).__name__}")
    if input.dim() != 4:
        raise ValueError(f"masked_conv2d: input must be 4-D (N x C x H x W), got shape "
                         f"{tuple(input.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"masked_conv2d: weight must be 4-D (O x C/groups x kh x kw), got shape "
                         f"{tuple(weight.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("mask", mask), ("out", out)):
        if t is not None and t.device != input.device:
            raise ValueError(f"masked_conv2d: {name} is on {t.device} but input is on "
                             f"{input.device}; move it with {name}.to(input.device)")


def _check_dtype(name: str, t: Optional[torch.Tensor], input: torch.Tensor) -> None:
    if t is not None and t.dtype != input.dtype:
        raise TypeError(f"masked_conv2d: {name} dtype {t.dtype} differs from input dtype "
                        f"{input.dtype}; cast it with {name}.to(input.dtype)")


def check_conv_args(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    stride: IntPair, padding: IntPair, dilation: IntPair, groups: int,
                    ) -> Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int], Tuple[int, int]]:
    """Checks dtypes, options, channels and the kernel's fit (after :func:`check_devices`).

    Args: as :func:`dl_lib.layers.masked_conv2d` (input N x C x H x W, weight O x C/groups x kh
        x kw, bias O or None).
    Returns: ``(stride, padding, dilation, (Ho, Wo))`` as int pairs.
    """
    _check_dtype("weight", weight, input)
    _check_dtype("bias", bias, input)
    stride, padding = int_pair("stride", stride), int_pair("padding", padding)
    dilation = int_pair("dilation", dilation)
    if min(stride) <= 0:
        raise ValueError(f"masked_conv2d: stride must be positive, got {stride}; use stride >= 1")
    if min(dilation) <= 0:
        raise ValueError(f"masked_conv2d: dilation must be positive, got {dilation}; use "
                         f"dilation >= 1 (1 = no dilation)")
    if min(padding) < 0:
        raise ValueError(f"masked_conv2d: padding must be >= 0, got {padding}; crop the input "
                         f"instead of padding negatively")
    if not isinstance(groups, int) or isinstance(groups, bool):
        raise TypeError(f"masked_conv2d: groups must be an int, got {groups!r}")
    if groups <= 0:
        raise ValueError(f"masked_conv2d: groups must be positive, got {groups}; use groups >= 1")
    n, c, h, w = input.shape
    o, cg, kh, kw = weight.shape
    if c == 0:
        raise ValueError(f"masked_conv2d: input has 0 channels (shape {tuple(input.shape)}); a "
                         f"convolution needs at least one input channel")
    if c % groups:
        raise ValueError(f"masked_conv2d: input channels ({c}) must be divisible by groups "
                         f"({groups}); use a groups value that divides {c}")
    if o % groups:
        raise ValueError(f"masked_conv2d: weight.shape[0] ({o} output channels) must be "
                         f"divisible by groups ({groups})")
    if cg * groups != c:
        raise ValueError(f"masked_conv2d: weight.shape[1] must be input channels / groups = "
                         f"{c} / {groups} = {c // groups}, got weight of shape "
                         f"{tuple(weight.shape)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != o):
        raise ValueError(f"masked_conv2d: bias must be 1-D with weight.shape[0] = {o} values, "
                         f"got shape {tuple(bias.shape)}")
    if kh == 0 or kw == 0:
        raise ValueError(f"masked_conv2d: weight has an empty kernel (shape "
                         f"{tuple(weight.shape)})")
    span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    padded = (h + 2 * padding[0], w + 2 * padding[1])
    if span[0] > padded[0] or span[1] > padded[1]:
        need = tuple(max(p, -(-(s - size) // 2)) for p, s, size in zip(padding, span, (h, w)))
        raise ValueError(
            f"masked_conv2d: the kernel {kh} x {kw} (dilation {dilation[0]} x {dilation[1]}, so "
            f"it spans {span[0]} x {span[1]} pixels) is larger than the padded input "
            f"{padded[0]} x {padded[1]} (input {h} x {w}, padding {padding[0]} x {padding[1]}); "
            f"pad the input more (padding >= {need}), or use a smaller kernel or dilation")
    out_hw = ((padded[0] - span[0]) // stride[0] + 1, (padded[1] - span[1]) // stride[1] + 1)
    return stride, padding, dilation, out_hw

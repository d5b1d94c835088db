"""Pure-PyTorch references of the sparse masked convolution.

Both compute ``conv2d(input, weight, bias, ...)`` at the active positions of ``mask`` (on the
output grid) and 0 elsewhere, and are differentiable in input, weight and bias:

* :func:`masked_conv2d_dense`: dense ``F.conv2d`` times the mask. The oracle of the tests, the
  fallback when ``dl_lib._C`` is missing, and the "dense fallback" above the break-even density.
* :func:`masked_conv2d_gather`: gather the im2col rows of the active positions, ``bmm`` with the
  grouped weights, scatter (the algorithm of the compiled kernels, in Python; slow, see
  docs/reference/sparse_conv_anchors.md §4.2).

Shapes: input N x C x H x W, weight O x C/groups x kh x kw, bias O or None,
mask N x 1 x Ho x Wo (bool or 0/1), output N x O x Ho x Wo.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["masked_conv2d_dense", "masked_conv2d_keep", "masked_conv2d_gather",
           "conv_output_size"]

IntPair = Union[int, Sequence[int]]


def _pair(v: IntPair) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {v}")
    return v


def conv_output_size(size: Sequence[int], kernel_size: IntPair, stride: IntPair = 1,
                     padding: IntPair = 0, dilation: IntPair = 1) -> Tuple[int, int]:
    """(Ho, Wo) of a convolution of an input of spatial ``size`` (H, W); < 1 where the dilated
    kernel does not fit the padded input (:func:`masked_conv2d` refuses those)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel_size, stride, padding, dilation))
    if min(sh, sw, dh, dw) <= 0:
        # Not a bare ZeroDivisionError (stride 0) or a silently wrong size (negative values).
        raise ValueError(f"conv_output_size: stride {(sh, sw)} and dilation {(dh, dw)} must be "
                         f"positive; use values >= 1")
    h, w = size
    return ((h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)


def masked_conv2d_dense(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        mask: torch.Tensor, stride: IntPair = 1, padding: IntPair = 0,
                        dilation: IntPair = 1, groups: int = 1,
                        all_active: Optional[bool] = None) -> torch.Tensor:
    """Dense convolution, then zero the inactive outputs (costs a full dense conv).

    ``all_active``: whether every position of ``mask`` is active, when the caller already knows
    (the dense fallback has counted them); None checks on CPU.
    """
    y = F.conv2d(input, weight, bias, _pair(stride), _pair(padding), _pair(dilation), groups)
    # This is also the dense fallback of MaskedConv2d, which must cost no more than F.conv2d:
    # multiply in place (conv2d's backward does not need its output), and skip the pass entirely
    # for an all-active mask (checked on CPU only: on CUDA the check would synchronise).
    if all_active is None:
        all_active = y.device.type == "cpu" and bool(mask.all())
    if all_active:
        return y
    return y.mul_(mask.to(dtype=y.dtype))


def masked_conv2d_keep(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       mask: torch.Tensor, out: torch.Tensor, stride: IntPair = 1,
                       padding: IntPair = 0, dilation: IntPair = 1,
                       groups: int = 1) -> torch.Tensor:
    """Reference of the "keep" variant: ``F.conv2d`` at the active positions of ``mask``, the
    values of ``out`` (N x O x Ho x Wo) elsewhere; returns a new tensor (``out`` is unchanged).

    Differentiable in input, weight, bias and ``out`` (which gets grad_output at the inactive
    positions).
    """
    y = F.conv2d(input, weight, bias, _pair(stride), _pair(padding), _pair(dilation), groups)
    return torch.where(mask.to(torch.bool), y, out)


def masked_conv2d_gather(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         mask: torch.Tensor, stride: IntPair = 1, padding: IntPair = 0,
                         dilation: IntPair = 1, groups: int = 1) -> torch.Tensor:
    """Gather / bmm / scatter over the active positions only (§4.2 of the anchors doc)."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n_img, c_in = input.shape[:2]
    c_out, c_g, kh, kw = weight.shape
    ho, wo = conv_output_size(input.shape[-2:], (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    o_g = c_out // groups
    # Zero-padded NHWC input, so every tap is an in-bounds index.
    xp = F.pad(input, (pw, pw, ph, ph)).permute(0, 2, 3, 1)
    n, oy, ox = mask.reshape(n_img, ho, wo).to(torch.bool).nonzero(as_tuple=True)
    m = n.numel()
    ky = torch.arange(kh, device=input.device) * dh
    kx = torch.arange(kw, device=input.device) * dw
    iy = (oy * sh)[:, None, None] + ky[None, :, None]
    ix = (ox * sw)[:, None, None] + kx[None, None, :]
    rows = xp[n[:, None, None], iy, ix]  # M x kh x kw x C
    # groups x M x (Cg*kh*kw), channel-major inside a group like weight.reshape(O, -1).
    rows = rows.reshape(m, kh, kw, groups, c_g).permute(3, 0, 4, 1, 2).reshape(groups, m, -1)
    w = weight.reshape(groups, o_g, c_g * kh * kw)
    vals = torch.bmm(rows, w.transpose(1, 2)).permute(1, 0, 2).reshape(m, c_out)
    if bias is not None:
        vals = vals + bias
    out = input.new_zeros((n_img, ho, wo, c_out), dtype=vals.dtype)
    out = out.index_put((n, oy, ox), vals)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.contiguous_format)

"""Helpers for spatial computation masks (ADP-C confidence masks, router masks, ...).

Masks are N x 1 x H x W tensors, bool (or 0/1); helpers return bool masks unless said otherwise.

* :func:`resize_mask`: a mask on each layer's output grid ("nearest" like ADP-C, or "any" pooling
  so that no active pixel is lost when downsampling);
* :func:`dilate_mask` / :func:`dilate_mask_same`: grow a mask by a convolution's receptive field,
  so chained masked convolutions stay exact (layer l must compute every pixel that an active
  output of layer l+1 reads);
* :func:`fill_inactive`: fill the skipped outputs of a masked convolution (zeros, values kept from
  another tensor, or normalised Gaussian interpolation from active neighbours);
* :func:`add_grid_prior`: every stride-th pixel always active (gives interpolation support);
* :func:`mask_density` / :func:`block_density`: the active fraction, per pixel or per tile.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "resize_mask",
    "dilate_mask",
    "dilate_mask_same",
    "fill_inactive",
    "add_grid_prior",
    "mask_density",
    "block_density",
]

IntPair = Union[int, Sequence[int]]


def _pair(v: IntPair) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _check_mask(mask: torch.Tensor, fn: str) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[1] != 1:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{fn}: mask must be N x 1 x H x W, got {shape}")


def resize_mask(mask: torch.Tensor, size: IntPair, mode: str = "nearest") -> torch.Tensor:
    """Resize a mask to ``size`` = (h, w).

    ``mode="nearest"``: nearest-neighbour sampling (what ADP-C does per layer); may drop active
    pixels when downsampling. ``mode="any"``: an output pixel is active if any input pixel of its
    (adaptive) bin is; never loses an active pixel. Both agree when upsampling by an integer
    factor. Returns a bool N x 1 x h x w mask.
    """
    _check_mask(mask, "resize_mask")
    size = _pair(size)
    m = mask.to(torch.float32)
    if tuple(mask.shape[-2:]) == size:
        return m > 0.5
    if mode == "nearest":
        return F.interpolate(m, size=size, mode="nearest") > 0.5
    if mode == "any":
        return F.adaptive_max_pool2d(m, size) > 0.5
    raise ValueError(f"resize_mask: mode must be 'nearest' or 'any', got {mode!r}")


def dilate_mask(mask: torch.Tensor, kernel_size: IntPair, stride: IntPair = 1,
                padding: IntPair = 0, dilation: IntPair = 1,
                input_size: Optional[IntPair] = None) -> torch.Tensor:
    """Input-grid mask of every pixel read by an active output of a convolution.

    ``mask`` (N x 1 x Ho x Wo) lives on the output grid of a conv with the given kernel_size,
    stride, padding and dilation; the result (N x 1 x H x W, bool) marks the input pixels in the
    receptive fields of its active outputs, i.e. the outputs the *previous* masked layer must
    compute for this one to be exact. ``input_size`` = (H, W) is required for stride > 1 (several
    input sizes give the same output size); for stride 1 it defaults to the size whose output is
    Ho x Wo.
    """
    _check_mask(mask, "dilate_mask")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel_size, stride, padding, dilation))
    ho, wo = mask.shape[-2:]
    if input_size is None:
        if (sh, sw) != (1, 1):
            raise ValueError("dilate_mask: input_size=(H, W) is required when stride > 1")
        input_size = (ho - 2 * ph + dh * (kh - 1), wo - 2 * pw + dw * (kw - 1))
    h, w = _pair(input_size)
    ones = mask.new_ones((1, 1, kh, kw), dtype=torch.float32)
    # Transposed conv spreads each active output over its taps on the zero-padded input grid of
    # size ((Ho-1)*s + d*(k-1) + 1); crop the padding and zero-extend to (H, W).
    full = F.conv_transpose2d(mask.to(torch.float32), ones, stride=(sh, sw), dilation=(dh, dw))
    full = F.pad(full, (0, max(0, w + 2 * pw - full.shape[-1]), 0, max(0, h + 2 * ph - full.shape[-2])))
    return full[..., ph:ph + h, pw:pw + w] > 0.5


def dilate_mask_same(mask: torch.Tensor, kernel_size: IntPair, dilation: IntPair = 1) -> torch.Tensor:
    """:func:`dilate_mask` for a stride-1 "same" conv (padding = dilation*(k-1)/2): same grid."""
    (kh, kw), (dh, dw) = _pair(kernel_size), _pair(dilation)
    if (dh * (kh - 1)) % 2 or (dw * (kw - 1)) % 2:
        raise ValueError(f"dilate_mask_same: kernel {kh}x{kw} with dilation {dh}x{dw} has no "
                         f"symmetric 'same' padding; use dilate_mask with explicit padding")
    return dilate_mask(mask, (kh, kw), 1, (dh * (kh - 1) // 2, dw * (kw - 1) // 2), (dh, dw),
                       input_size=mask.shape[-2:])


def _gaussian_blur(x: torch.Tensor, sigma: float, kernel_size: int) -> torch.Tensor:
    """Separable depthwise Gaussian (zero padding) over the spatial dims of N x C x H x W."""
    r = kernel_size // 2
    t = torch.arange(kernel_size, dtype=x.dtype, device=x.device) - r
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, kernel_size, 1).expand(c, 1, kernel_size, 1), padding=(r, 0),
                 groups=c)
    return F.conv2d(x, g.view(1, 1, 1, kernel_size).expand(c, 1, 1, kernel_size), padding=(0, r),
                    groups=c)


def fill_inactive(y: torch.Tensor, mask: torch.Tensor, mode: str = "zero",
                  keep: Optional[torch.Tensor] = None, sigma: float = 1.0, kernel_size: int = 7,
                  eps: float = 1e-6) -> torch.Tensor:
    """Fill the inactive positions of ``y`` (N x C x H x W) given ``mask`` (N x 1 x H x W).

    Modes (active positions always keep ``y``):
      * ``"zero"``: 0;
      * ``"keep"``: the values of ``keep`` (same shape as ``y``: cached features, a previous
        exit's features, ...);
      * ``"interp"``: normalised Gaussian interpolation from active neighbours (Xie et al.),
        ``m*y + (1-m) * G(m*y) / G(m).clamp_min(eps)`` with a separable ``kernel_size`` Gaussian
        of std ``sigma``; pixels with no active neighbour within the kernel get 0.
    Differentiable in ``y`` (and ``keep``).
    """
    _check_mask(mask, "fill_inactive")
    if mask.shape[0] != y.shape[0] or mask.shape[-2:] != y.shape[-2:]:
        raise ValueError(f"fill_inactive: mask {tuple(mask.shape)} does not match y "
                         f"{tuple(y.shape)} (expected N x 1 x H x W)")
    m = mask.to(y.dtype)
    if mode == "zero":
        return y * m
    if mode == "keep":
        if keep is None or keep.shape != y.shape:
            raise ValueError(f"fill_inactive: mode='keep' needs keep of shape {tuple(y.shape)}, "
                             f"got {None if keep is None else tuple(keep.shape)}")
        return torch.where(mask.to(torch.bool), y, keep)
    if mode == "interp":
        if kernel_size % 2 != 1 or sigma <= 0:
            raise ValueError(f"fill_inactive: kernel_size must be odd and sigma > 0, got "
                             f"{kernel_size}, {sigma}")
        my = y * m
        num = _gaussian_blur(my, sigma, kernel_size)
        den = _gaussian_blur(m, sigma, kernel_size)
        return my + (1 - m) * num / den.clamp_min(eps)
    raise ValueError(f"fill_inactive: mode must be 'zero', 'keep' or 'interp', got {mode!r}")


def add_grid_prior(mask: torch.Tensor, stride: IntPair, offset: IntPair = 0) -> torch.Tensor:
    """``mask`` with every ``stride``-th pixel (starting at ``offset``) set active (bool)."""
    _check_mask(mask, "add_grid_prior")
    (sy, sx), (oy, ox) = _pair(stride), _pair(offset)
    if sy < 1 or sx < 1:
        raise ValueError(f"add_grid_prior: stride must be >= 1, got {(sy, sx)}")
    out = mask.to(torch.bool).clone()
    out[..., oy::sy, ox::sx] = True
    return out


def mask_density(mask: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
    """Fraction of active pixels: a scalar tensor, or N values if ``per_sample``."""
    m = mask.to(torch.float32)
    return m.flatten(1).mean(1) if per_sample else m.mean()


def block_density(mask: torch.Tensor, block: IntPair) -> torch.Tensor:
    """Fraction of ``block`` x ``block`` tiles (partial tiles at the border count) holding at
    least one active pixel: the density a tile-sparse kernel actually computes (scalar tensor)."""
    _check_mask(mask, "block_density")
    by, bx = _pair(block)
    tiles = F.max_pool2d(mask.to(torch.float32), (by, bx), (by, bx), ceil_mode=True)
    return tiles.mean()

"""Confidence adaptivity: masks from an exit's logits, and the convolution that computes only the
pixels that are not yet confident.

ADP-C (reference ``anytime.md`` section 3): after exit k, a pixel whose max softmax probability is
above ``CONF_THRE`` is *confident*; every convolution between exit k and exit k+1 then computes only
the other (*uncertain*) pixels and fills the confident ones by a learned-bandwidth Gaussian
interpolation of the computed neighbours. The original computed every pixel densely and then
overwrote the confident ones; here they are really skipped (``dl_lib.layers.masked_conv2d``).

State is per forward, never kept in modules: the model opens a :class:`ForwardState` around its
forward, sets the :class:`SegmentMasks` of the running segment, and every :class:`AnytimeConv2d`
reads the mask for its own output size from it (one mask per size and segment, computed on first
use). Without an open state an ``AnytimeConv2d`` is a plain ``nn.Conv2d``.
"""
import threading
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dl_lib.layers import MaskedConv2d, dilate_mask_same, masked_conv2d, resize_mask

__all__ = ["SegmentMasks", "ForwardState", "AnytimeConv2d", "current_state", "swap_convs",
           "INTERPOLATIONS", "confident_fraction"]

# How the confident outputs of a masked convolution are filled:
#   "rbf": the original: K_hat * (m y), K_hat = K / (sum K + 1e-5), K = exp(-Lambda^2 d^2) on a 7x7
#          window without its centre (released ADP-C weights need it for their outputs);
#   "normalized": (K * (m y)) / (K * m), Xie et al.'s normalised interpolation (no collapse to 0
#          inside large confident regions; a different model: retrain);
#   "none": 0 (the convolution's bias is not added either), no Lambda parameter.
INTERPOLATIONS = ("rbf", "normalized", "none")
_RADIUS = 3
# The original's value at the window centre (its squared distance), which makes K(0) ~ 0.
_CENTRE_DISTANCE = 1e5

_LOCAL = threading.local()


def current_state() -> Optional["ForwardState"]:
    """The :class:`ForwardState` of the forward running in this thread, or None."""
    return getattr(_LOCAL, "state", None)


def _square_distances() -> torch.Tensor:
    """7 x 7 squared distances to the centre, the centre set to 1e5 (the original's
    ``square_dis``)."""
    t = torch.arange(-_RADIUS, _RADIUS + 1, dtype=torch.float32)
    d = t[:, None] ** 2 + t[None, :] ** 2
    d[_RADIUS, _RADIUS] = _CENTRE_DISTANCE
    return d


def confident_fraction(mask: torch.Tensor) -> torch.Tensor:
    """Per image, the fraction of *computed* (uncertain) pixels of an N x 1 x h x w mask: N values."""
    return mask.flatten(1).float().mean(1)


class SegmentMasks:
    """The masks of one segment (the modules between exit k and exit k+1).

    Args:
        logits: N x K x h x w (aggregated) logits of exit k, at the exits' stride (1/4).
        threshold: ``MASK.CONF_THRE`` (criterion ``conf_thre``: computed where max prob <= it) or
            ``MASK.ENTROPY_THRE`` (criterion ``entropy_thre``: computed where entropy >= it).
        criterion: ``"conf_thre"`` or ``"entropy_thre"``.
        resize: ``"nearest"`` (the original: a lower resolution samples the top-left pixel of
            each block, which can drop uncertain pixels) or ``"any"`` (a low-resolution pixel is
            computed if any of its children is).

    ``mask(size)``: bool N x 1 x size, True = computed. ``all_computed(size)`` tells when the
    mask is full (the convolution then runs densely, exactly as without masks).
    """

    def __init__(self, logits: torch.Tensor, threshold: float, criterion: str = "conf_thre",
                 resize: str = "nearest"):
        prob = F.softmax(logits.detach().float(), dim=1)
        if criterion == "conf_thre":
            uncertain = prob.max(dim=1, keepdim=True).values <= threshold
        elif criterion == "entropy_thre":
            # 0 * log 0 is NaN and NaN >= t is False, as in the original (such pixels are confident).
            entropy = -(prob * torch.log(prob)).sum(dim=1, keepdim=True)
            uncertain = entropy >= threshold
        else:
            raise ValueError(f"MODEL.MASK.CRIT must be 'conf_thre' or 'entropy_thre', got "
                             f"{criterion!r}")
        if resize not in ("nearest", "any"):
            raise ValueError(f"MODEL.MASK.RESIZE must be 'nearest' or 'any', got {resize!r}")
        self.resize = resize
        self.size = tuple(uncertain.shape[-2:])
        self._masks: Dict[Tuple[int, int], torch.Tensor] = {self.size: uncertain}
        self._full: Dict[Tuple[int, int], bool] = {}
        self._rings: Dict[Tuple[int, int], torch.Tensor] = {}
        self._float: Dict[Tuple[int, int], torch.Tensor] = {}
        # (size, dense MACs of one image, output channels, interpolated) per convolution that ran
        self.records: List[Tuple[Tuple[int, int], int, int, bool]] = []

    def mask(self, size) -> torch.Tensor:
        size = (int(size[0]), int(size[1]))
        if size not in self._masks:
            self._masks[size] = resize_mask(self._masks[self.size], size, self.resize)
        return self._masks[size]

    def all_computed(self, size) -> bool:
        size = (int(size[0]), int(size[1]))
        if size not in self._full:
            self._full[size] = bool(self.mask(size).all())
        return self._full[size]

    def ring(self, size) -> torch.Tensor:
        """Confident pixels with a computed pixel in their 7 x 7 window: the only ones the
        interpolation can make non-zero."""
        size = (int(size[0]), int(size[1]))
        if size not in self._rings:
            m = self.mask(size)
            self._rings[size] = dilate_mask_same(m, 2 * _RADIUS + 1) & ~m
        return self._rings[size]

    def mask_float(self, size, dtype: torch.dtype) -> torch.Tensor:
        size = (int(size[0]), int(size[1]))
        if size not in self._float or self._float[size].dtype != dtype:
            self._float[size] = self.mask(size).to(dtype)
        return self._float[size]

    def computed_fraction(self, size) -> torch.Tensor:
        """N values: the fraction of pixels each image computes at ``size``."""
        return confident_fraction(self.mask(size))


class ForwardState:
    """What one forward of an anytime model shares with its convolutions.

    ``masks``: the running segment's :class:`SegmentMasks` (None: every pixel is computed).
    ``count``: record every convolution's dense cost (for the model's own FLOP count).
    Use as a context manager around the forward; states do not nest.
    """

    def __init__(self, count: bool = False):
        self.masks: Optional[SegmentMasks] = None
        self.count = count
        # dense MACs of one image of the convolutions run outside any masked segment
        self.dense_macs = 0
        # id(conv) -> the mask its call in this forward ran with (what cost conventions read)
        self.conv_masks: Dict[int, torch.Tensor] = {}

    def __enter__(self) -> "ForwardState":
        if current_state() is not None:
            raise RuntimeError("An anytime ForwardState is already open in this thread (a model "
                               "called inside another's forward?)")
        _LOCAL.state = self
        return self

    def __exit__(self, *exc) -> None:
        _LOCAL.state = None


class AnytimeConv2d(MaskedConv2d):
    """``nn.Conv2d`` that, inside a masked segment, computes only the uncertain output pixels and
    fills the confident ones by ``interpolation`` (see :data:`INTERPOLATIONS`).

    Same weight/bias names as ``nn.Conv2d``; with an interpolation it adds the original's
    ``Lambda`` (learned bandwidth, init 3.0) and ``square_dis`` (the 7 x 7 squared distances, a
    buffer here: the original's frozen parameter), so the released ADP-C checkpoints load.
    A ``MaskedConv2d`` whose mask comes from the running forward, never from ``set_mask``: the
    CostTracker's hook conventions ("hrnet", "dynamic_routing") read it from ``_mask`` after the
    call, so they count the computed positions only.
    """

    @property
    def _mask(self) -> Optional[torch.Tensor]:
        state = current_state()
        return None if state is None else state.conv_masks.get(id(self))

    @_mask.setter
    def _mask(self, value: Optional[torch.Tensor]) -> None:
        if value is not None:
            raise ValueError("AnytimeConv2d takes its masks from the anytime model's forward "
                             "(ForwardState), not from set_mask / masked()")

    def __init__(self, *args, interpolation: str = "none", **kwargs):
        super().__init__(*args, **kwargs)
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"MODEL.MASK.INTERPOLATION must be one of {INTERPOLATIONS}, got "
                             f"{interpolation!r}")
        self.interpolation = interpolation
        if interpolation != "none":
            self.Lambda = nn.Parameter(torch.tensor(3.0))
            self.register_buffer("square_dis", _square_distances())

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, interpolation: str = "none") -> "AnytimeConv2d":
        """A copy of ``conv`` (sharing its parameters) that can be masked."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                  conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                  conv.padding_mode, interpolation=interpolation,
                  device=conv.weight.device, dtype=conv.weight.dtype)
        new.weight = conv.weight
        if conv.bias is not None:
            new.bias = conv.bias
        return new

    def interpolation_kernel(self) -> torch.Tensor:
        """The original's normalised 7 x 7 kernel K / (sum K + 1e-5), K = exp(-Lambda^2 d^2)."""
        k = torch.exp(-self.Lambda ** 2 * self.square_dis)
        return k / (k.sum() + 1e-5)

    def _output_size(self, x: torch.Tensor) -> Tuple[int, int]:
        size = []
        for i in range(2):
            n = x.shape[2 + i] + 2 * self.padding[i] - self.dilation[i] * (self.kernel_size[i] - 1) - 1
            size.append(n // self.stride[i] + 1)
        return size[0], size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = current_state()
        if state is None:
            return nn.Conv2d.forward(self, x)
        size = self._output_size(x)
        masks = state.masks
        if state.count:
            macs = self.weight.numel() * size[0] * size[1]
            if masks is None:
                state.dense_macs += macs
            else:
                masks.records.append((size, macs, self.out_channels,
                                      self.interpolation != "none"))
        if masks is None or masks.all_computed(size):
            state.conv_masks.pop(id(self), None)
            return nn.Conv2d.forward(self, x)
        mask = masks.mask(size)
        state.conv_masks[id(self)] = mask
        y = masked_conv2d(x, self.weight, self.bias, mask, self.stride, self.padding,
                          self.dilation, self.groups, dense_fallback=True)
        if self.interpolation == "none":
            return y
        return y + self._interpolate(y, masks, size)

    def _interpolate(self, y: torch.Tensor, masks: SegmentMasks, size) -> torch.Tensor:
        """The interpolated values at the confident pixels (0 at the computed ones): ``y`` holds
        the computed outputs and 0 elsewhere, i.e. the original's ``m * y``."""
        channels = y.shape[1]
        kernel = self.interpolation_kernel().to(y.dtype)
        weight = kernel.expand(channels, 1, *kernel.shape).contiguous(
            memory_format=torch.channels_last if y.is_contiguous(
                memory_format=torch.channels_last) else torch.contiguous_format)
        # Outside the ring every input of the window is 0: the original gets exactly 0 there.
        ring = masks.ring(size)
        filled = masked_conv2d(y, weight, None, ring, 1, _RADIUS, 1, channels, dense_fallback=True)
        if self.interpolation == "normalized":
            weight_sum = F.conv2d(masks.mask_float(size, y.dtype), kernel[None, None],
                                  padding=_RADIUS)
            filled = filled / weight_sum.clamp_min(1e-12) * ring
        return filled

    def extra_repr(self) -> str:
        return super().extra_repr() + f", interpolation={self.interpolation}"


def swap_convs(module: nn.Module, interpolation: str = "none") -> nn.Module:
    """Replace every ``nn.Conv2d`` under ``module`` (in place) by an :class:`AnytimeConv2d` with the
    same parameters; returns ``module``."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            setattr(module, name, AnytimeConv2d.from_conv(child, interpolation))
        elif child is not None:
            swap_convs(child, interpolation)
    return module

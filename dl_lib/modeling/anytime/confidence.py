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
import warnings
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dl_lib.layers import MaskedConv2d, masked_conv2d, resize_mask
from dl_lib.layers.masked_conv_policy import input_layout, policy_device, use_dense

__all__ = ["SegmentMasks", "ForwardState", "AnytimeConv2d", "AnytimeBatchNorm2d", "RingIndex",
           "current_state", "swap_convs", "pair_norms", "INTERPOLATIONS", "confident_fraction"]

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
        self._set_uncertain(uncertain, resize)

    @classmethod
    def from_uncertain(cls, uncertain: torch.Tensor, resize: str = "nearest") -> "SegmentMasks":
        """Masks of a segment from a given bool N x 1 x h x w mask at the exits' stride (True =
        computed), instead of from logits: benchmarks and tests force computed fractions this
        way (see ``AnytimeSegmentor.forced_masks``)."""
        if uncertain.dim() != 4 or uncertain.shape[1] != 1 or uncertain.dtype != torch.bool:
            raise ValueError(f"SegmentMasks.from_uncertain: need a bool N x 1 x h x w mask, got "
                             f"{uncertain.dtype} {tuple(uncertain.shape)}")
        self = cls.__new__(cls)
        self._set_uncertain(uncertain, resize)
        return self

    def _set_uncertain(self, uncertain: torch.Tensor, resize: str) -> None:
        if resize not in ("nearest", "any"):
            raise ValueError(f"MODEL.MASK.RESIZE must be 'nearest' or 'any', got {resize!r}")
        self.resize = resize
        self.size = tuple(uncertain.shape[-2:])
        self._masks: Dict[Tuple[int, int], torch.Tensor] = {self.size: uncertain}
        self._full: Dict[Tuple[int, int], bool] = {}
        self._rings: Dict[Tuple[int, int], torch.Tensor] = {}
        self._ring_index: Dict[Tuple[int, int], "RingIndex"] = {}
        self._density: Dict[Tuple[int, int], float] = {}
        self._windows: Dict[Tuple[int, int], torch.Tensor] = {}
        self._confident: Dict[Tuple[int, int], torch.Tensor] = {}
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
            # = dilate_mask_same(m, 7) & ~m as a separable OR of shifted slices (~50x faster
            # than the transposed convolution or a max pooling on the CPU)
            n, _, h, w = m.shape
            r = _RADIUS
            padded = F.pad(m.reshape(n, h, w), (r, r, r, r))
            rows = padded[:, :, 0:w].clone()
            for j in range(1, 2 * r + 1):
                rows |= padded[:, :, j:j + w]
            grown = rows[:, 0:h].clone()
            for i in range(1, 2 * r + 1):
                grown |= rows[:, i:i + h]
            self._rings[size] = grown.view(m.shape) & ~m
        return self._rings[size]

    def window(self, size) -> torch.Tensor:
        """(N*h*w) x 49 bool: whether the pixel at tap t of each pixel's 7 x 7 window (taps
        row-major, zero padding) is computed. Cached per size."""
        size = (int(size[0]), int(size[1]))
        if size not in self._windows:
            m = self.mask(size)
            n, _, h, w = m.shape
            k, r = 2 * _RADIUS + 1, _RADIUS
            padded = F.pad(m.reshape(n, h, w), (r, r, r, r))
            self._windows[size] = padded.unfold(1, k, 1).unfold(2, k, 1).reshape(-1, k * k)
        return self._windows[size]

    def density(self, size) -> float:
        """The computed fraction of the whole batch at ``size`` (one host sync per size)."""
        size = (int(size[0]), int(size[1]))
        if size not in self._density:
            m = self.mask(size)
            self._density[size] = int(torch.count_nonzero(m)) / max(m.numel(), 1)
        return self._density[size]

    def ring_index(self, size, keep_taps: Optional[torch.Tensor] = None) -> "RingIndex":
        """The interpolation at ``size`` as a sparse matrix pattern (see :class:`RingIndex`),
        built once per size and segment and shared by its convolutions; with ``keep_taps``
        (49 bools) only the entries at those taps (cached per distinct set)."""
        size = (int(size[0]), int(size[1]))
        if size not in self._ring_index:
            self._ring_index[size] = RingIndex.build(self.mask(size), self.ring(size),
                                                     self.window(size))
        if keep_taps is None or bool(keep_taps.all()):
            return self._ring_index[size]
        key = (size, bytes(keep_taps.to(torch.uint8).tolist()))
        if key not in self._ring_index:
            self._ring_index[key] = self._ring_index[size].restricted(keep_taps)
        return self._ring_index[key]

    def confident_rows(self, size) -> torch.Tensor:
        """Flat indices (into the N*h*w pixels) of the confident pixels at ``size``."""
        size = (int(size[0]), int(size[1]))
        if size not in self._confident:
            self._confident[size] = (~self.mask(size)).reshape(-1).nonzero().squeeze(1)
        return self._confident[size]

    def mask_float(self, size, dtype: torch.dtype) -> torch.Tensor:
        size = (int(size[0]), int(size[1]))
        if size not in self._float or self._float[size].dtype != dtype:
            self._float[size] = self.mask(size).to(dtype)
        return self._float[size]

    def computed_fraction(self, size) -> torch.Tensor:
        """N values: the fraction of pixels each image computes at ``size``."""
        return confident_fraction(self.mask(size))


class RingIndex(NamedTuple):
    """The interpolation restricted to what it reads and writes: row r of a sparse matrix A is
    ring pixel ``rows[r]`` (a flat index into the N*h*w pixels), its entries are the *computed*
    pixels of its 7 x 7 window (``col``, flat indices; CSR row pointers ``crow``) with the tap
    each is at (``tap``, 0..48, row-major in the window). With ``y`` as an (N*h*w) x C matrix
    (channels-last), ``A @ y`` with ``A[r, col] = K_hat[tap]`` is ``K_hat * (m y)`` at the ring:
    the confident pixels of a window (whose input is 0) and zero padding are left out, so the
    work is one multiply-add per computed neighbour and channel."""

    rows: torch.Tensor
    crow: torch.Tensor
    col: torch.Tensor
    tap: torch.Tensor
    row: torch.Tensor  # the row (0..R-1) of every entry

    @classmethod
    def build(cls, mask: torch.Tensor, ring: torch.Tensor, window: torch.Tensor) -> "RingIndex":
        """From the computed pixels ``mask``, the ``ring`` (both bool N x 1 x h x w) and the
        ``window`` stack (:meth:`SegmentMasks.window`)."""
        w = mask.shape[-1]
        r = _RADIUS
        rows = ring.reshape(-1).nonzero().squeeze(1)
        read = window.index_select(0, rows)  # R x 49: the computed neighbours
        d = torch.arange(-r, r + 1, device=mask.device)
        offsets = (d.view(-1, 1) * w + d.view(1, -1)).reshape(-1)  # flat offset of each tap
        # row-major: CSR order (a neighbour read is inside the image and in its image row)
        row, tap = read.nonzero(as_tuple=True)
        col = rows.index_select(0, row) + offsets.index_select(0, tap)
        crow = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=mask.device)
        torch.cumsum(read.sum(1), 0, out=crow[1:])
        return cls(rows, crow, col, tap, row)

    def restricted(self, keep_taps: torch.Tensor) -> "RingIndex":
        """The same rows with only the entries at the taps where ``keep_taps`` (49 bools) is
        True (the pattern of a kernel whose other taps are 0)."""
        keep = keep_taps.index_select(0, self.tap)
        row = self.row[keep]
        crow = torch.zeros_like(self.crow)
        torch.cumsum(torch.bincount(row, minlength=self.rows.numel()), 0, out=crow[1:])
        return type(self)(self.rows, crow, self.col[keep], self.tap[keep], row)

    def values(self, kernel: torch.Tensor) -> torch.Tensor:
        """The entries of the matrix of a 7 x 7 ``kernel`` (one per computed neighbour)."""
        return kernel.reshape(-1).index_select(0, self.tap)

    def matrix(self, kernel: torch.Tensor, num_pixels: int,
               values: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The sparse CSR R x ``num_pixels`` matrix of a 7 x 7 ``kernel`` (or of its
        :meth:`values`)."""
        values = self.values(kernel) if values is None else values
        with warnings.catch_warnings():  # "sparse CSR support is in beta", once per process
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow, self.col, values,
                                           size=(self.rows.numel(), num_pixels),
                                           check_invariants=False)

    def row_sums(self, kernel: torch.Tensor, values: Optional[torch.Tensor] = None
                 ) -> torch.Tensor:
        """R values: ``K * m`` at each ring pixel (the normalised interpolation's divisor)."""
        values = self.values(kernel) if values is None else values
        return values.new_zeros(self.rows.numel()).index_add_(0, self.row, values)


def _scatter_fill_applies(y: torch.Tensor, interpolation_param: torch.Tensor) -> bool:
    """Whether the in-place sparse-matrix fill can run: inference (no autograd through it), a
    channels-last float CPU tensor (viewable as pixels x channels)."""
    if torch.is_grad_enabled() and (y.requires_grad or interpolation_param.requires_grad):
        return False
    return (y.device.type == "cpu" and y.dtype in (torch.float32, torch.float64)
            and y.permute(0, 2, 3, 1).is_contiguous())


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
        # the output of a convolution that applied its AnytimeBatchNorm2d itself (folded), which
        # that norm then passes through
        self.folded: Optional[torch.Tensor] = None

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

    Inference policies (class attributes; set on an instance to compare them, outputs equal up to
    float rounding either way):

    * ``fold_norm``: when the next module is its :class:`AnytimeBatchNorm2d` (see
      :func:`pair_norms`) in eval mode, a masked call applies that norm itself: the weights are
      scaled and shifted (``W' = a W``, ``b' = a b + s``, ``a = gamma / sqrt(var + eps)``,
      ``s = beta - a mean``), confident pixels get ``s`` (the norm of the original's 0 there) and
      ring pixels ``K_hat * (m y') + s (1 - K_hat * m)`` (the norm of the interpolation, since
      ``K_hat`` is the same for every channel); saves the norm's pass over the whole tensor;
    * ``ring_matrix``: the interpolation as one sparse-matrix product over the computed
      neighbours of the ring pixels (:class:`RingIndex`), written in place; otherwise a masked
      depthwise 7 x 7 convolution on the ring plus an addition.

    * ``tap_floor``: the ring matrix of the ``"rbf"`` interpolation leaves out the taps whose
      weight is below ``tap_floor`` times the kernel's largest (default 2^-70 ~ 8.5e-22: at
      the initial ``Lambda`` 3 the taps at squared distance >= 8, K_hat <= 1e-28, 44 of the
      61 thousand entries of a W48 ring). Their products with the activations are subnormal
      floats, which this CPU multiplies 7-9x slower (a W48 ring product at 128x256 x 48
      channels: 8.7 ms with them, 0.9 ms without; ``benchmarks/anytime_profile.py``, README
      "Where the time goes"); what they add is below 2^-70 of the largest tap's term (float32
      rounding of that term is 2^-24). 0 keeps every tap. Not for ``"normalized"`` (its
      quotient is not small where only far taps read computed pixels).

    Both need inference (no autograd through the call) on a channels-last float32/64 CPU tensor.
    """

    fold_norm = True
    ring_matrix = True
    tap_floor = 2.0 ** -70

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
        """The original's normalised 7 x 7 kernel K / (sum K + 1e-5), K = exp(-Lambda^2 d^2).
        Without autograd it is kept until ``Lambda`` changes (five small ops per call saved)."""
        if torch.is_grad_enabled() and self.Lambda.requires_grad:
            k = torch.exp(-self.Lambda ** 2 * self.square_dis)
            return k / (k.sum() + 1e-5)
        key = (self.Lambda._version, self.Lambda.data_ptr(), self.square_dis._version,
               self.square_dis.data_ptr())
        cached = self.__dict__.get("_kernel_cache")
        if cached is None or cached[0] != key:
            k = torch.exp(-self.Lambda.detach() ** 2 * self.square_dis)
            cached = (key, k / (k.sum() + 1e-5))
            self.__dict__["_kernel_cache"] = cached
        return cached[1]

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
        norm = self.__dict__.get("_norm")
        if (self.fold_norm and norm is not None and not norm.training
                and _scatter_fill_applies(x, self.weight)):
            y = self._forward_folded(x, masks, size, norm)
            state.folded = y
            return y
        y = masked_conv2d(x, self.weight, self.bias, mask, self.stride, self.padding,
                          self.dilation, self.groups, dense_fallback=True)
        if self.interpolation == "none":
            return y
        if self.ring_matrix and _scatter_fill_applies(y, self.Lambda):
            return self._fill_ring_in_place(y, masks, size)
        return y + self._interpolate(y, masks, size)

    def _forward_folded(self, x: torch.Tensor, masks: SegmentMasks, size,
                        norm: nn.BatchNorm2d) -> torch.Tensor:
        """norm(this convolution) of a masked segment at inference (see ``fold_norm``)."""
        weight, bias, shift = self._folded_parameters(norm)
        mask = masks.mask(size)
        # the masked convolution's own dense/sparse policy, with the density counted once per size
        if use_dense(weight, self.groups, masks.density(size), policy_device(x.device), False,
                     input_layout(x)):
            y = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        else:  # zeros at the confident pixels (the kernel's streaming stores)
            y = masked_conv2d(x, weight, bias, mask, self.stride, self.padding, self.dilation,
                              self.groups)
        pixels = y.permute(0, 2, 3, 1)
        if pixels.is_contiguous():
            # s at the confident pixels only (a whole-tensor torch.where cost ~2x the BN pass)
            pixels.reshape(-1, y.shape[1]).index_put_((masks.confident_rows(size),), shift)
        else:
            torch.where(mask, y, shift.view(1, -1, 1, 1), out=y)
        if self.interpolation != "none":
            self._fill_ring_in_place(y, masks, size, shift)
        return y

    def _folded_parameters(self, norm: nn.BatchNorm2d):
        """(W', b', s) of ``fold_norm``, kept until a parameter or statistic changes."""
        tensors = [t for t in (self.weight, self.bias, norm.weight, norm.bias, norm.running_mean,
                               norm.running_var) if t is not None]
        key = tuple((t._version, t.data_ptr()) for t in tensors) + (norm.eps,)
        cached = self.__dict__.get("_folded_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                scale = torch.rsqrt(norm.running_var + norm.eps)
                if norm.weight is not None:
                    scale = scale * norm.weight
                shift = -scale * norm.running_mean
                if norm.bias is not None:
                    shift = shift + norm.bias
                weight = self.weight * scale.view(-1, 1, 1, 1)
                bias = shift if self.bias is None else self.bias * scale + shift
            cached = (key, (weight, bias, shift))
            self.__dict__["_folded_cache"] = cached
        return cached[1]

    def _fill_ring_in_place(self, y: torch.Tensor, masks: SegmentMasks, size,
                            shift: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Inference: write the interpolated values into ``y``'s ring pixels, one sparse-matrix
        product over the computed neighbours (:class:`RingIndex`); the same values as
        :meth:`_interpolate` up to the order of the sums. ``shift``: ``y`` is a folded norm's
        output (``s`` at the confident pixels, see ``fold_norm``)."""
        kernel = self.interpolation_kernel().to(y.dtype)
        keep = None
        if self.interpolation == "rbf" and self.tap_floor > 0:
            kernel, keep = self._significant_taps(kernel)
        index = masks.ring_index(size, keep)
        if index.rows.numel() == 0:
            return y
        values = index.values(kernel)
        pixels = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])  # a view: y is channels-last
        filled = index.matrix(kernel, pixels.shape[0], values) @ pixels
        if self.interpolation == "normalized":
            # norm(num / den) = (a num + s den) / den: the folded values need no correction
            filled = filled / index.row_sums(kernel, values).clamp_min(1e-12)[:, None]
        elif shift is not None:
            filled = torch.addr(filled, 1 - index.row_sums(kernel, values), shift)
        pixels.index_copy_(0, index.rows, filled)
        return y

    def _significant_taps(self, kernel: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(kernel with the taps below ``tap_floor`` of its largest set to 0, which taps are
        kept), cached while the kernel is the same tensor (``interpolation_kernel``'s cache)."""
        cached = self.__dict__.get("_taps_cache")
        if cached is None or cached[0] is not kernel:
            keep = (kernel >= kernel.max() * self.tap_floor).reshape(-1)
            cached = (kernel, (kernel * keep.view(kernel.shape), keep))
            self.__dict__["_taps_cache"] = cached
        return cached[1]

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


class AnytimeBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` after an :class:`AnytimeConv2d` that may apply it itself at inference
    (``AnytimeConv2d.fold_norm``): the output of such a call passes through unchanged. Same
    parameters, buffers and state_dict as ``nn.BatchNorm2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = current_state()
        if state is not None and state.folded is x:
            state.folded = None
            return x
        return super().forward(x)

    @classmethod
    def from_norm(cls, norm: nn.BatchNorm2d) -> "AnytimeBatchNorm2d":
        """A copy of ``norm`` sharing its parameters and buffers."""
        new = cls(norm.num_features, norm.eps, norm.momentum, norm.affine,
                  norm.track_running_stats, device=norm.weight.device if norm.affine else None)
        for name, p in norm.named_parameters(recurse=False):
            setattr(new, name, p)
        for name, b in norm.named_buffers(recurse=False):
            setattr(new, name, b)
        return new.train(norm.training)


def pair_norms(module: nn.Module) -> nn.Module:
    """Under ``module`` (in place), every ``nn.BatchNorm2d`` that directly follows an
    :class:`AnytimeConv2d` of the same width among its parent's children (``conv1``/``bn1`` of a
    block, ``conv, bn`` of a Sequential: the conv's output is the norm's input) becomes an
    :class:`AnytimeBatchNorm2d` the conv may fold (``fold_norm``); returns ``module``."""
    children = list(module.named_children())
    for (_, conv), (name, norm) in zip(children, children[1:]):
        if (isinstance(conv, AnytimeConv2d) and type(norm) is nn.BatchNorm2d
                and norm.num_features == conv.out_channels and norm.track_running_stats):
            new = AnytimeBatchNorm2d.from_norm(norm)
            setattr(module, name, new)
            conv.__dict__["_norm"] = new  # not a submodule: no second state_dict entry
    for _, child in module.named_children():
        pair_norms(child)
    return module


def swap_convs(module: nn.Module, interpolation: str = "none") -> nn.Module:
    """Replace every ``nn.Conv2d`` under ``module`` (in place) by an :class:`AnytimeConv2d` with the
    same parameters; returns ``module``."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            setattr(module, name, AnytimeConv2d.from_conv(child, interpolation))
        elif child is not None:
            swap_convs(child, interpolation)
    return module

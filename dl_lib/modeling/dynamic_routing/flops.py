"""FLOPs of the routing space as DynamicRouting counts them, from the actual feature sizes.

All functions return MFLOPs (counts / 1e6) of one image, multiply-adds counted once. The
primitives follow the original's ``cal_op_flops``: conv ``(k*k*C_in/groups + bias) * C_out *
(h//s) * (w//s)``, BN 2 per element (affine), ReLU 1 per element, pooling 1 per input element.

Two totals are built from them (``DynamicNetwork``):

- **paper**: what the original reports, bugs included, so published GFLOPs are reproduced: the
  stem at H/2 (its true output is H/2 - 1), no init cell, every gate charged even where it did
  not run, the decoder at ``h x h`` (height for width), no interpolation or addition;
- **corrected**: what runs: the stem at its true sizes, the init cell, gates only where they ran,
  the decoder at ``h x w`` with its predictor bias, bilinear interpolation at 4 per output element
  (fvcore's count) and element-wise additions/gate products at 1 per element.
"""
from typing import Sequence

__all__ = ["conv", "bn", "relu", "conv_bn_relu", "sep_conv", "keep_route", "up_route",
           "down_route", "gate", "stem_paper", "stem_corrected", "head_paper",
           "head_corrected", "interpolation"]

M = 1e-6


def conv(h: int, w: int, c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1,
         bias: bool = False) -> float:
    """Convolution whose *input* is h x w (output ``h//stride x w//stride``, the original's rule)."""
    return (k * k * (c_in // groups) + int(bias)) * c_out * (h // stride) * (w // stride) * M


def bn(h: int, w: int, c: int) -> float:
    return 2 * h * w * c * M


def relu(h: int, w: int, c: int) -> float:
    return h * w * c * M


def conv_bn_relu(h: int, w: int, c_in: int, c_out: int, k: int = 1, stride: int = 1) -> float:
    ho, wo = h // stride, w // stride
    return conv(h, w, c_in, c_out, k, stride) + bn(ho, wo, c_out) + relu(ho, wo, c_out)


def sep_conv(h: int, w: int, c: int) -> float:
    """The cell operation: dw3x3 -> pw+BN+ReLU -> dw3x3 -> pw+BN = hw (2C^2 + 23C)."""
    dw = conv(h, w, c, c, 3, groups=c)
    return 2 * dw + conv_bn_relu(h, w, c, c) + conv(h, w, c, c) + bn(h, w, c)


def keep_route(h: int, w: int, c: int) -> float:
    return relu(h, w, c)


def up_route(h: int, w: int, c: int) -> float:
    """ReLU, 1x1 ``C -> C/2`` + BN + ReLU at h x w (the bilinear x2 is not counted)."""
    return relu(h, w, c) + conv_bn_relu(h, w, c, c // 2)


def down_route(h: int, w: int, c: int) -> float:
    """ReLU, strided 1x1 ``C -> 2C`` + BN + ReLU (output h/2 x w/2)."""
    return relu(h, w, c) + conv_bn_relu(h, w, c, 2 * c, 1, stride=2)


def gate(h: int, w: int, c: int, gate_num: int) -> float:
    """1x1 ``C -> C/2`` + BN + ReLU, average pool, 1x1 ``C/2 -> gate_num`` (bias not counted)."""
    return conv_bn_relu(h, w, c, c // 2) + h * w * (c // 2) * M + (c // 2) * gate_num * M


def _stem(h1: int, w1: int, h2: int, w2: int, hin: int, win: int, mid: int, out: int) -> float:
    """stem_1 3x3 s2 ``3 -> mid`` (output h1 x w1), stem_2 dw3x3 + pw at h1 x w1, stem_3 dw3x3 s2
    (output h2 x w2) + pw ``mid -> out``."""
    s1 = 27 * mid * h1 * w1 * M + bn(h1, w1, mid) + relu(h1, w1, mid)
    s2 = 9 * mid * h1 * w1 * M + conv_bn_relu(h1, w1, mid, mid)
    s3 = 9 * mid * h2 * w2 * M + conv_bn_relu(h2, w2, mid, out)
    return s1 + s2 + s3


def stem_paper(h: int, w: int, mid: int = 64, out: int = 64) -> float:
    """The original's count for an h x w input: everything at H/2 and H/4."""
    return _stem(h // 2, w // 2, h // 4, w // 4, h, w, mid, out)


def stem_corrected(stem1_hw: Sequence[int], stem3_hw: Sequence[int], mid: int = 64,
                   out: int = 64) -> float:
    """The stem at its true output sizes (stem_1 has no padding: (H-1)//2)."""
    return _stem(stem1_hw[0], stem1_hw[1], stem3_hw[0], stem3_hw[1], 0, 0, mid, out)


def _head(sizes: Sequence[Sequence[int]], in_channels: Sequence[int],
          out_channels: Sequence[int], num_classes: int, predictor_bias: bool) -> float:
    total = sum(conv_bn_relu(h, w, ci, co) for (h, w), ci, co in zip(sizes, in_channels, out_channels))
    h0, w0 = sizes[0]
    return total + conv(h0, w0, out_channels[0], num_classes, 3, bias=predictor_bias)


def head_paper(h0: int, in_channels: Sequence[int], out_channels: Sequence[int],
               num_classes: int) -> float:
    """The decoder as the original costs it: every level square (height for width)."""
    sizes = [(h0 >> i, h0 >> i) for i in range(len(in_channels))]
    return _head(sizes, in_channels, out_channels, num_classes, predictor_bias=False)


def head_corrected(sizes: Sequence[Sequence[int]], in_channels: Sequence[int],
                   out_channels: Sequence[int], num_classes: int, out_hw: Sequence[int]) -> float:
    """The decoder at its true sizes, with its additions, x2 upsamplings and the final x4 one."""
    total = _head(sizes, in_channels, out_channels, num_classes, predictor_bias=True)
    for i in range(1, len(sizes)):  # upsample level i's output to level i-1, add the skip feature
        h, w = sizes[i - 1]
        total += interpolation(h, w, out_channels[i]) + h * w * out_channels[i] * M
    return total + interpolation(out_hw[0], out_hw[1], num_classes)


def interpolation(h_out: int, w_out: int, c: int) -> float:
    """Bilinear resize to h_out x w_out: 4 per output element (fvcore's upsample_bilinear2d)."""
    return 4 * h_out * w_out * c * M

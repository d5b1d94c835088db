"""``optimize_for_inference(model)``: the exact (to float rounding) rewrites of an eval-mode
network that a CPU deployment wants, in place.

* BatchNorm folded into the convolution before it (``fold_batchnorm``);
* plain 1x1 convolutions as one matrix product on channels-last input at one thread
  (``dl_lib.layers.PointwiseConv2d``: ATen's THNN path would copy the layout twice);
* parameters channels-last (``torch.channels_last``), so that oneDNN runs every conv without
  reordering; feed channels-last input (``x.contiguous(memory_format=torch.channels_last)``).

Measured on the ACoSP networks (benchmarks/README.md, ``compression.py``): at ACoSP-16 the
compressed SegNet went from 92 to 40 ms and PSPNet-50 from 150 to about 85 ms (1 thread); the
dense networks change little, their time is in the large convolutions. The rewritten model is
for inference: its folded BNs are ``nn.Identity`` (save the state dict before).
"""
from typing import Dict, Optional

import torch
from torch import nn

from dl_lib.layers.pointwise_conv import use_pointwise_matmul

from .fold_batchnorm import fold_batchnorm

__all__ = ["optimize_for_inference"]


def optimize_for_inference(model: nn.Module, *, fold_bn: bool = True,
                           pointwise_matmul: bool = True, channels_last: bool = True,
                           method: Optional[str] = None) -> Dict[str, int]:
    """Applies the rewrites of the module doc to eval-mode ``model`` in place (``method``: what
    ``fold_batchnorm`` traces). Returns how many BNs were folded and 1x1 convs switched."""
    if model.training:
        raise ValueError("optimize_for_inference: the model is in training mode; call "
                         "model.eval() first")
    done = {"folded_bn": 0, "pointwise": 0}
    if fold_bn:
        done["folded_bn"] = len(fold_batchnorm(model, method=method))
    if pointwise_matmul:
        done["pointwise"] = use_pointwise_matmul(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return done

"""``optimize_for_inference(model, example)``: the exact (to float rounding) rewrites of an
eval-mode network that a CPU deployment wants, in place.

* BatchNorm folded into the convolution before it (``dl_lib.analysis.fuse_bn``, checked on
  ``example``);
* plain 1x1 convolutions as one matrix product on channels-last input at one thread
  (``dl_lib.layers.PointwiseConv2d``: ATen's THNN path would copy the layout twice);
* parameters channels-last (``torch.channels_last``), so that oneDNN runs every conv without
  reordering; feed channels-last input (``x.contiguous(memory_format=torch.channels_last)``).

Measured on the ACoSP networks (benchmarks/README.md, ``compression.py``, 1 thread): at ACoSP-16
the compressed SegNet went from 96 to 53 ms and PSPNet-50 from 183 to 111 ms; the dense networks
change little, their time is in the large convolutions. The rewritten model is for inference:
its folded BNs are ``nn.Identity`` (save the state dict before).
"""
from typing import Dict

import torch
from torch import nn

from dl_lib.analysis.fuse_bn import fuse_batch_norms
from dl_lib.layers.pointwise_conv import use_pointwise_matmul

__all__ = ["optimize_for_inference"]


def optimize_for_inference(model: nn.Module, example: torch.Tensor, *, fold_bn: bool = True,
                           pointwise_matmul: bool = True, channels_last: bool = True
                           ) -> Dict[str, int]:
    """Applies the rewrites of the module doc to eval-mode ``model`` in place; ``example``: a
    small input it runs on (``predict_logits`` if it has it), to find and check the BN folds.
    Returns how many BNs were folded and 1x1 convs switched."""
    if model.training:
        raise ValueError("optimize_for_inference: the model is in training mode; call "
                         "model.eval() first")
    done = {"folded_bn": 0, "pointwise": 0}
    if fold_bn:
        _, report = fuse_batch_norms(model, example, inplace=True)
        done["folded_bn"] = len(report.folded)
    if pointwise_matmul:
        done["pointwise"] = use_pointwise_matmul(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return done

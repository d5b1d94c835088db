"""HRNetV2's segmentation head: every branch upsampled to stride 4 and concatenated, a 1x1
conv-BN-ReLU at full width, then the classifier (HRNet-Semantic-Segmentation's ``last_layer``; also
ADP-C's final exit and its "original" early exits)."""
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

from ..backbone.hrnet import BN_MOMENTUM, concat_branches
from ..backbone.resnet import norm_factory
from ..registry import SEM_SEG_HEAD_REGISTRY
from ..shape_spec import ShapeSpec

__all__ = ["HRNetClassifier", "HRNetV2Head"]


class HRNetClassifier(nn.Sequential):
    """``0`` 1x1 conv C->C (with bias), ``1`` norm, ``2`` ReLU, ``3`` k x k conv C->K (with bias):
    N x C x h x w -> N x K x h x w. The indices are the released checkpoints' names."""

    def __init__(self, in_channels: int, num_classes: int, kernel_size: int = 1,
                 norm_layer: Optional[Callable[[int], nn.Module]] = None):
        norm = (norm_layer or nn.BatchNorm2d)(in_channels)
        if isinstance(norm, nn.modules.batchnorm._BatchNorm):  # SyncBatchNorm included
            norm.momentum = BN_MOMENTUM
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 1),
            norm,
            nn.ReLU(inplace=False),
            nn.Conv2d(in_channels, num_classes, kernel_size, padding=1 if kernel_size == 3 else 0))
        for m in self.modules():  # HRNet's initialisation (biases keep PyTorch's default)
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)


@SEM_SEG_HEAD_REGISTRY.register()
class HRNetV2Head(nn.Module):
    """``features`` (``hr0..hr3``, strides 4..32) -> N x K x H/4 x W/4 logits.

    Args:
        input_shape: name -> ShapeSpec of the backbone's outputs.
        in_features: the branches to concatenate, finest first.
        num_classes: K.
        kernel_size: the classifier's kernel (``EXIT.FINAL_CONV_KERNEL`` of the original: 1).
        norm_layer: ``channels -> norm`` of the 1x1 block.
    """

    def __init__(self, input_shape: Dict[str, ShapeSpec], in_features: Sequence[str],
                 num_classes: int, kernel_size: int = 1,
                 norm_layer: Optional[Callable[[int], nn.Module]] = None):
        super().__init__()
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.IN_FEATURES {list(in_features)} asks for "
                             f"{missing}, which the backbone does not output (it has "
                             f"{sorted(input_shape)}).")
        self.in_features = sorted(in_features, key=lambda f: input_shape[f].stride)
        self.output_stride = input_shape[self.in_features[0]].stride
        channels = sum(input_shape[f].channels for f in self.in_features)
        self.last_layer = HRNetClassifier(channels, num_classes, kernel_size, norm_layer)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        h = cfg.MODEL.SEM_SEG_HEAD
        return dict(input_shape=input_shape, in_features=h.IN_FEATURES,
                    num_classes=h.NUM_CLASSES, norm_layer=norm_factory(h.NORM))

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.last_layer(concat_branches([features[f] for f in self.in_features]))

"""A light FPN decoder for semantic segmentation (Kirillov et al., Panoptic FPN, semantic branch).

Lateral 1×1 convs bring every input feature to ``conv_dims`` channels, a top-down pathway adds
each coarser map (upsampled) to the next finer one, a 3×3 conv-norm-ReLU smooths every level, the
levels are bilinearly upsampled to ``common_stride`` and summed, and a 1×1 predictor gives logits.
"""
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone.resnet import norm_factory
from ..registry import SEM_SEG_HEAD_REGISTRY
from ..shape_spec import ShapeSpec

__all__ = ["FPNHead", "ConvNormAct"]


class ConvNormAct(nn.Sequential):
    """k×k conv (no bias when normalised) -> norm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 norm_layer: Optional[Callable[[int], nn.Module]] = nn.BatchNorm2d, act: bool = True):
        norm = norm_layer(out_channels) if norm_layer is not None else nn.Identity()
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                         bias=isinstance(norm, nn.Identity))
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        super().__init__(conv, norm, nn.ReLU(inplace=True) if act else nn.Identity())


@SEM_SEG_HEAD_REGISTRY.register()
class FPNHead(nn.Module):
    """FPN semantic head.

    Args:
        input_shape: name -> ShapeSpec of the backbone features it may read.
        in_features: the names it reads, any order (sorted by stride inside).
        num_classes: K.
        conv_dims: channels of every FPN level.
        common_stride: stride of the fused map and of the logits (``self.output_stride``).
        norm_layer: ``channels -> module`` for the conv-norm-ReLU blocks.

    ``forward(features)``: dict name -> N×C×h×w maps -> N×K×(H/common_stride)×(W/common_stride)
    logits, where the size is that of the finest input feature scaled to ``common_stride``.
    """

    def __init__(self, input_shape: Dict[str, ShapeSpec], in_features: Sequence[str], num_classes: int,
                 conv_dims: int = 128, common_stride: int = 4,
                 norm_layer: Optional[Callable[[int], nn.Module]] = nn.BatchNorm2d):
        super().__init__()
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.IN_FEATURES {list(in_features)} asks for {missing}, which the "
                             f"backbone does not output (it has {sorted(input_shape)}); add them to "
                             "MODEL.BACKBONE.OUT_FEATURES.")
        self.in_features = sorted(in_features, key=lambda f: input_shape[f].stride)
        finest = input_shape[self.in_features[0]].stride
        if common_stride > finest:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.COMMON_STRIDE={common_stride} is coarser than the finest "
                             f"input feature ({self.in_features[0]}, stride {finest}).")
        self.output_stride = common_stride
        self._finest_stride = finest
        self.num_classes = num_classes
        self.lateral = nn.ModuleList(
            ConvNormAct(input_shape[f].channels, conv_dims, 1, norm_layer, act=False)
            for f in self.in_features)
        self.smooth = nn.ModuleList(
            ConvNormAct(conv_dims, conv_dims, 3, norm_layer) for _ in self.in_features)
        self.predictor = nn.Conv2d(conv_dims, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        h = cfg.MODEL.SEM_SEG_HEAD
        return dict(input_shape=input_shape, in_features=h.IN_FEATURES, num_classes=h.NUM_CLASSES,
                    conv_dims=h.CONVS_DIM, common_stride=h.COMMON_STRIDE, norm_layer=norm_factory(h.NORM))

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        laterals = [lat(features[f]) for lat, f in zip(self.lateral, self.in_features)]
        # Top-down: coarse to fine, each level receives the upsampled sum of all coarser ones.
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        # The fused map sits at common_stride: the finest level, upsampled if it is coarser.
        factor = self._finest_stride // self.output_stride
        out_size = [s * factor for s in laterals[0].shape[-2:]]
        fused = None
        for smooth, x in zip(self.smooth, laterals):
            y = smooth(x)
            if list(y.shape[-2:]) != out_size:
                y = F.interpolate(y, size=out_size, mode="bilinear", align_corners=False)
            fused = y if fused is None else fused + y
        return self.predictor(fused)

"""The interface every backbone follows."""
from typing import Dict

import torch
from torch import nn

from ..shape_spec import ShapeSpec

__all__ = ["Backbone"]


class Backbone(nn.Module):
    """A network that maps a normalised N×3×H×W image batch to named feature maps.

    Subclasses fill ``self._out_features`` (ordered names), ``self._out_feature_channels`` and
    ``self._out_feature_strides`` and implement ``forward(x) -> {name: N×C×(H/s)×(W/s)}``.
    """

    def __init__(self):
        super().__init__()
        self._out_features = []
        self._out_feature_channels: Dict[str, int] = {}
        self._out_feature_strides: Dict[str, int] = {}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def convert_pretrained(cls, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Map a released ImageNet state dict (``MODEL.PRETRAINED``) to this class's names.

        Each backbone family overrides this for the layouts its weights are published in
        (timm's ``checkpoint_filter_fn``): rename keys, drop the classifier. The default keeps
        the names, for files saved from this class itself. ``dl_lib.checkpoint.
        load_pretrained_backbone`` then copies what matches by name and shape and stops when
        less than half of the backbone matched.
        """
        return dict(state_dict)

    @property
    def size_divisibility(self) -> int:
        """Inputs whose sides are multiples of this give exactly aligned feature maps."""
        return max(self._out_feature_strides[f] for f in self._out_features)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """name -> ShapeSpec(channels, stride) for every output feature."""
        return {
            name: ShapeSpec(self._out_feature_channels[name], self._out_feature_strides[name])
            for name in self._out_features
        }

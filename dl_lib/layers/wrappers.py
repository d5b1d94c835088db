"""``Conv2d`` with optional ``norm`` and ``activation`` children (detectron2's wrapper).

Checkpoints of detectron2-era code bases (DynamicRouting, ...) name a convolution's BN
``<conv>.norm.*``; this wrapper keeps that layout, so their weights load by name.
"""
from typing import Optional

import torch
from torch import nn

__all__ = ["Conv2d"]


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by ``norm`` and ``activation`` when given (conv -> norm -> act)."""

    def __init__(self, *args, norm: Optional[nn.Module] = None,
                 activation: Optional[nn.Module] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

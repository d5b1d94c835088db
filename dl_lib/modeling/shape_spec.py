"""What a feature map looks like, without the tensor."""
from typing import NamedTuple

__all__ = ["ShapeSpec"]


class ShapeSpec(NamedTuple):
    """Channels and stride (input pixels per feature pixel) of one feature map."""

    channels: int
    stride: int

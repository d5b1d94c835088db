from .backbone import Backbone
from .resnet import RESNET_DEPTHS, ResNet, build_resnet_backbone

__all__ = ["Backbone", "ResNet", "RESNET_DEPTHS", "build_resnet_backbone"]

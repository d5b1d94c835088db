from .backbone import Backbone
from .hrnet import HRNET_VARIANTS, HighResolutionNet, build_hrnet_backbone
from .resnet import RESNET_DEPTHS, ResNet, build_resnet_backbone

__all__ = ["Backbone", "ResNet", "RESNET_DEPTHS", "build_resnet_backbone", "HighResolutionNet",
           "HRNET_VARIANTS", "build_hrnet_backbone"]

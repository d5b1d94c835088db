from .fpn_head import ConvNormAct, FPNHead
from .hrnet_head import HRNetClassifier, HRNetV2Head

__all__ = ["ConvNormAct", "FPNHead", "HRNetClassifier", "HRNetV2Head"]

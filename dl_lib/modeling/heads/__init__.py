from .fpn_head import ConvNormAct, FPNHead

__all__ = ["ConvNormAct", "FPNHead"]

"""Models: registries, backbones, heads and meta-architectures (segmentors)."""
from .registry import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEAD_REGISTRY
from .shape_spec import ShapeSpec
from .backbone import Backbone, ResNet, build_resnet_backbone
from .heads import FPNHead
from .meta_arch import SemanticSegmentor
from .build import build_backbone, build_model, build_sem_seg_head

__all__ = [
    "BACKBONE_REGISTRY", "META_ARCH_REGISTRY", "SEM_SEG_HEAD_REGISTRY", "ShapeSpec", "Backbone", "ResNet",
    "build_resnet_backbone", "FPNHead", "SemanticSegmentor", "build_backbone", "build_model",
    "build_sem_seg_head",
]

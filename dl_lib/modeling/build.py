"""Build models and their parts from a config through the registries."""
import logging
from typing import Dict

import torch
from torch import nn

from .registry import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEAD_REGISTRY
from .shape_spec import ShapeSpec

__all__ = ["build_model", "build_backbone", "build_sem_seg_head"]

logger = logging.getLogger(__name__)


def _lookup(registry, name: str, key: str):
    try:
        return registry.get(name)
    except KeyError:
        known = ", ".join(sorted(k for k, _ in registry))
        raise KeyError(f"{key}={name!r} is not registered in {registry._name}; registered: {known}. "
                       "Register new classes with @" + f"{registry._name}_REGISTRY.register() and import "
                       "their module (e.g. in the playground's net.py) before building.") from None


def build_backbone(cfg) -> nn.Module:
    """The backbone named by ``MODEL.BACKBONE.NAME``."""
    return _lookup(BACKBONE_REGISTRY, cfg.MODEL.BACKBONE.NAME, "MODEL.BACKBONE.NAME")(cfg)


def build_sem_seg_head(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """The head named by ``MODEL.SEM_SEG_HEAD.NAME`` over features described by ``input_shape``."""
    cls = _lookup(SEM_SEG_HEAD_REGISTRY, cfg.MODEL.SEM_SEG_HEAD.NAME, "MODEL.SEM_SEG_HEAD.NAME")
    return cls(**cls.from_config(cfg, input_shape))


def build_model(cfg) -> nn.Module:
    """The segmentor named by ``MODEL.META_ARCHITECTURE``, moved to ``MODEL.DEVICE``."""
    cls = _lookup(META_ARCH_REGISTRY, cfg.MODEL.META_ARCHITECTURE, "MODEL.META_ARCHITECTURE")
    model = cls(**cls.from_config(cfg))
    model.to(torch.device(cfg.MODEL.DEVICE))
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("Built %s with %.2fM parameters.", cls.__name__, n_params / 1e6)
    return model

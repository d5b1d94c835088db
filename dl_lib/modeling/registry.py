"""Registries that playgrounds and methods register their modules into.

A method never edits the library to add a model: it decorates its class with
``@BACKBONE_REGISTRY.register()`` (or the meta-architecture / head registry) and names it in the
config (``MODEL.META_ARCHITECTURE``, ``MODEL.BACKBONE.NAME``, ``MODEL.SEM_SEG_HEAD.NAME``).
"""
from fvcore.common.registry import Registry

__all__ = ["META_ARCH_REGISTRY", "BACKBONE_REGISTRY", "SEM_SEG_HEAD_REGISTRY"]

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """Whole segmentors. Registered objects are classes with a
``from_config(cfg) -> dict`` classmethod giving their constructor arguments."""

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """Backbones. Registered objects are callables ``fn(cfg) -> Backbone``
(``Backbone.output_shape()`` gives channels and stride per output feature)."""

SEM_SEG_HEAD_REGISTRY = Registry("SEM_SEG_HEAD")
SEM_SEG_HEAD_REGISTRY.__doc__ = """Semantic segmentation heads. Registered objects are classes
built as ``cls(**cls.from_config(cfg, input_shape))``, ``input_shape`` a dict name -> ShapeSpec."""

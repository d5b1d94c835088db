"""MFARANet (multi-level feature aggregation and recursive alignment, real-time segmentation):
the model on the library's deep-stem ResNet, its branch-only subgraphs, and the converters of
the authors' two checkpoint layouts.

Importing the package registers ``MFARANet`` (``MODEL.META_ARCHITECTURE``), the family's config
keys (``family="mfaranet"``) and the checkpoint converters.
"""
from . import config  # noqa: F401  (registers add_mfaranet_config)
from .mfaranet import *  # noqa: F401,F403
from . import convert  # noqa: F401,E402  (registers the checkpoint converters)

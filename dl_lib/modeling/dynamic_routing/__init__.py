"""Dynamic routing for semantic segmentation (CVPR 2020): the routing supernet, its gates,
FLOPs counts and budget loss, and the converter of the released checkpoints.

Importing the package registers ``DynamicRoutingSegmentor`` (``MODEL.META_ARCHITECTURE``), the
family's config keys (``family="dynamic_routing"``) and the checkpoint converter.
"""
from . import config  # noqa: F401  (registers add_dynamic_routing_config)
from .dynamic_routing import *  # noqa: F401,F403
from . import convert  # noqa: F401,E402  (registers the released-checkpoint converters)

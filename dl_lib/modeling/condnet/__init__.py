"""CondNet (conditional classifier for scene segmentation): the conditional classifier, its
ASPP / depthwise-separable ASPP / FCN hosts on the dilated ResNet-V1c-D8, the segmentor, and the
converter of mmseg-layout checkpoints.

Importing the package registers ``CondNet`` (``MODEL.META_ARCHITECTURE``), the family's config
keys (``family="condnet"``) and the checkpoint converter.
"""
from . import config  # noqa: F401  (registers add_condnet_config)
from .conditional_classifier import *  # noqa: F401,F403
from .condnet import *  # noqa: F401,F403
from .convert import *  # noqa: F401,F403,E402  (registers the checkpoint converter)

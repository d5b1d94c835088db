"""Anytime dense prediction with confidence adaptivity (ADP-C, ICLR 2022): HRNetV2 with four
exits, redesigned exit heads, and masked computation of the pixels not yet confident.

Importing the package registers ``AnytimeSegmentor`` (``MODEL.META_ARCHITECTURE``), the family's
config keys (``family="anytime"``) and the released-checkpoint converter.
"""
from . import config  # noqa: F401  (registers add_anytime_config)
from .confidence import *  # noqa: F401,F403
from .anytime import *  # noqa: F401,F403
from . import convert  # noqa: F401,E402  (registers the released-checkpoint converter)

"""ACoSP (auto-compressing subset pruning, arXiv 2201.11103): the original's PSPNet-50 (and -101)
on the library's deep-stem ResNet and its SegNet (VGG-16 layout, max-unpooling decoder), the
converters of its checkpoints (dense and masked), and the recipes of ``playground/ACoSP``.
Pruning itself is ``dl_lib.modeling.pruning`` (``MODEL.PRUNING.*``), applied by the builders.

Importing the package registers ``ACoSPPSPNet`` and ``ACoSPSegNet`` (``MODEL.META_ARCHITECTURE``),
the family's config keys (``family="acosp"``) and the checkpoint converters.
"""
from . import config  # noqa: F401  (registers add_acosp_config)
from .pspnet import *  # noqa: F401,F403
from .segnet import *  # noqa: F401,F403
from . import convert  # noqa: F401,E402  (registers the checkpoint converters)
from .training import ACoSPTrainer  # noqa: F401,E402

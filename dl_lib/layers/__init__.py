"""Shared building blocks: normalisation layers, masked convolution, ... (one import per line)."""
from .norm import FrozenBatchNorm2d  # noqa: F401
from .norm import NaiveSyncBatchNorm  # noqa: F401
from .norm import NORM_NAMES  # noqa: F401
from .norm import convert_frozen_batchnorm  # noqa: F401
from .norm import get_norm  # noqa: F401
from .norm import revert_sync_batchnorm  # noqa: F401

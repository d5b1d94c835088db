"""Shared building blocks: normalisation layers, masked convolution, ... (one import per line)."""
from .norm import FrozenBatchNorm2d  # noqa: F401
from .norm import NaiveSyncBatchNorm  # noqa: F401
from .norm import NORM_NAMES  # noqa: F401
from .norm import convert_frozen_batchnorm  # noqa: F401
from .norm import get_norm  # noqa: F401
from .norm import revert_sync_batchnorm  # noqa: F401
from .wrappers import Conv2d  # noqa: F401
from .masked_conv import MaskedConv2d  # noqa: F401
from .masked_conv import masked_conv2d  # noqa: F401
from .masked_conv_policy import prefers_channels_last  # noqa: F401
from .masks import add_grid_prior  # noqa: F401
from .masks import block_density  # noqa: F401
from .masks import dilate_mask  # noqa: F401
from .masks import dilate_mask_same  # noqa: F401
from .masks import fill_inactive  # noqa: F401
from .masks import mask_density  # noqa: F401
from .masks import resize_mask  # noqa: F401

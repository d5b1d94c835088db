"""ACoSP channel pruning for any model: learnable per-channel logits on every prunable conv, the
soft top-k mask annealed to a fixed top-k mask during training (``soft_topk``, ``mask_layer``,
``pruner``, ``training``), and the compression of a hard-masked model into a smaller dense one
(``compress``, ``channels``).

Importing the package registers the family's config keys (``family="pruning"``).
"""
from . import config  # noqa: F401  (registers add_pruning_config)
from .mask_layer import ChannelMask
from .pruner import (PLACEMENTS, PRUNABLE_TYPES, attach_channel_masks, channel_keep_masks,
                     channel_masks, prepare_model, prunable_convs, pruning_architecture,
                     pruning_statistics,
                     set_temperature, to_hard_masks)
from .soft_topk import (hard_topk_mask, keep_count, soft_topk_mask, temperature_at,
                        temperature_at_iteration)

__all__ = [
    "ChannelMask", "PLACEMENTS", "PRUNABLE_TYPES", "attach_channel_masks", "channel_keep_masks",
    "channel_masks", "prepare_model", "prunable_convs", "pruning_architecture",
    "pruning_statistics", "set_temperature",
    "to_hard_masks", "hard_topk_mask", "keep_count", "soft_topk_mask", "temperature_at",
    "temperature_at_iteration",
]

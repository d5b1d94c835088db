"""What the ACoSP models share: pruning at the end of construction (``MODEL.PRUNING``), the
architecture their checkpoints store, and the backbone / head learning-rate split."""
from types import SimpleNamespace
from typing import Dict, Optional

from torch import nn

__all__ = ["apply_pruning", "pruning_arch", "mark_unprunable"]


def apply_pruning(model: nn.Module, pruning) -> nn.Module:
    """``dl_lib.modeling.pruning.prepare_model`` with the ``MODEL.PRUNING`` node ``pruning``
    (None: dense, unchanged): channel masks when ``ENABLED``, compressed widths when ``CHANNELS``."""
    if pruning is None:
        return model
    from dl_lib.modeling.pruning import prepare_model

    return prepare_model(SimpleNamespace(MODEL=SimpleNamespace(PRUNING=pruning)), model)


def pruning_arch(model: nn.Module) -> Dict[str, object]:
    """Config values a pruned model's weights need: ``MODEL.PRUNING.HARD_MASKS`` once every mask
    is hard, ``MODEL.PRUNING.CHANNELS`` for a compressed (physically smaller) network."""
    from dl_lib.modeling.pruning import pruning_architecture
    from dl_lib.modeling.pruning.channels import channel_config_of

    arch: Dict[str, object] = dict(pruning_architecture(model))
    channels = channel_config_of(model)
    if channels:
        arch["MODEL.PRUNING.CHANNELS"] = channels
    return arch


def mark_unprunable(conv: Optional[nn.Module]) -> None:
    """The original's ``UnprunableConv2d``: the pruner leaves this conv (a classifier) unmasked."""
    if conv is not None:
        conv.unprunable = True

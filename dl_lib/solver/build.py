"""Optimizer construction: parameter groups with separate decay for norm layers and biases.

Rules (DynamicRouting / detectron2 v0.1 semantics, kept so their configs train the same):
- parameters of normalisation layers (weight and bias) use ``WEIGHT_DECAY_NORM`` at ``BASE_LR``;
- other biases use ``WEIGHT_DECAY_BIAS`` at ``BASE_LR * BIAS_LR_FACTOR``;
- everything else uses ``WEIGHT_DECAY`` at ``BASE_LR``;
- a model that defines ``param_lr_multiplier(name) -> float`` (``name`` as in
  ``named_parameters()``) has each learning rate multiplied by it (DynamicRouting's
  ``GATE_LR_MULTI`` on its gate networks);
- a module that defines ``param_group_override(name, base_lr) -> (lr, weight_decay) | None``
  sets both for its own parameter ``name`` when it returns a pair, bypassing the rules above and
  the model's multiplier (the pruning logits' own group, ``dl_lib.modeling.pruning``).
Parameters with ``requires_grad=False`` (frozen stages) are left out, and a parameter shared by
several modules is counted once. Parameters with identical hyper-parameters share one group, so
an optimizer has a handful of groups rather than one per tensor.
"""
from collections import OrderedDict
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from dl_lib.layers.norm import FrozenBatchNorm2d

__all__ = ["NORM_MODULE_TYPES", "get_default_optimizer_params", "build_optimizer",
           "OPTIMIZER_NAMES"]

# _BatchNorm covers BatchNorm1d/2d/3d, nn.SyncBatchNorm and our NaiveSyncBatchNorm.
NORM_MODULE_TYPES: Tuple[type, ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
    FrozenBatchNorm2d,
)

OPTIMIZER_NAMES = ("SGD", "AdamW")


def get_default_optimizer_params(model: nn.Module, base_lr: float, weight_decay: float,
                                 weight_decay_norm: float, weight_decay_bias: float,
                                 bias_lr_factor: float = 1.0) -> List[Dict[str, Any]]:
    """Param groups ``[{"params": [...], "lr": ..., "weight_decay": ...}, ...]`` for ``model``.

    Groups are merged by identical ``(lr, weight_decay)`` and keep the order in which their first
    parameter appears in ``model.modules()``.
    """
    groups: "OrderedDict[Tuple[float, float], List[nn.Parameter]]" = OrderedDict()
    seen = set()
    bare = getattr(model, "module", model)  # DistributedDataParallel wraps the model
    lr_multiplier = getattr(bare, "param_lr_multiplier", None)
    for module_name, module in bare.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            override = getattr(module, "param_group_override", None)
            setting = override(name, base_lr) if override is not None else None
            if setting is not None:
                groups.setdefault((float(setting[0]), float(setting[1])), []).append(param)
                continue
            lr, decay = base_lr, weight_decay
            if isinstance(module, NORM_MODULE_TYPES):
                decay = weight_decay_norm
            elif name == "bias":
                lr, decay = base_lr * bias_lr_factor, weight_decay_bias
            if lr_multiplier is not None:
                lr *= float(lr_multiplier(f"{module_name}.{name}" if module_name else name))
            groups.setdefault((lr, decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": decay}
            for (lr, decay), params in groups.items()]


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.SOLVER.OPTIMIZER.NAME`` (``SGD`` or ``AdamW``) over ``model``.

    SGD reads ``MOMENTUM`` and ``NESTEROV``; AdamW reads ``BETAS`` and ``EPS``. Both use the
    param groups of :func:`get_default_optimizer_params` (``BASE_LR``, ``WEIGHT_DECAY``,
    ``WEIGHT_DECAY_NORM``, ``WEIGHT_DECAY_BIAS``, ``BIAS_LR_FACTOR``).
    """
    oc = cfg.SOLVER.OPTIMIZER
    by_lower = {n.lower(): n for n in OPTIMIZER_NAMES}
    name = by_lower.get(str(oc.NAME).lower())
    if name is None:
        raise ValueError(f"SOLVER.OPTIMIZER.NAME={oc.NAME!r} is unknown; valid names: "
                         f"{', '.join(OPTIMIZER_NAMES)}")
    params = get_default_optimizer_params(
        model, base_lr=oc.BASE_LR, weight_decay=oc.WEIGHT_DECAY,
        weight_decay_norm=oc.WEIGHT_DECAY_NORM, weight_decay_bias=oc.WEIGHT_DECAY_BIAS,
        bias_lr_factor=oc.BIAS_LR_FACTOR)
    if not params:
        raise ValueError("build_optimizer: the model has no parameter with requires_grad=True "
                         "(is every stage frozen by MODEL.BACKBONE.FREEZE_AT?)")
    if name == "SGD":
        if oc.NESTEROV and oc.MOMENTUM <= 0:
            raise ValueError("SOLVER.OPTIMIZER.NESTEROV=True needs SOLVER.OPTIMIZER.MOMENTUM > 0")
        return torch.optim.SGD(params, lr=oc.BASE_LR, momentum=oc.MOMENTUM,
                               nesterov=oc.NESTEROV, weight_decay=oc.WEIGHT_DECAY)
    betas = tuple(oc.BETAS)
    if len(betas) != 2:
        raise ValueError(f"SOLVER.OPTIMIZER.BETAS={list(oc.BETAS)} must have two values")
    return torch.optim.AdamW(params, lr=oc.BASE_LR, betas=betas, eps=oc.EPS,
                             weight_decay=oc.WEIGHT_DECAY)

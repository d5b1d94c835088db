"""Attaching ACoSP channel masks to any model, converting them to hard masks, reading them back.

``attach_channel_masks(model, sparsity)`` gives every prunable convolution (``nn.Conv2d`` /
``nn.ConvTranspose2d``; not the ones with ``unprunable = True`` or matching ``exclude``) a
``ChannelMask`` keeping ``keep_count(C_out, sparsity)`` channels, by module surgery:

* ``placement="original"`` (reference 2.1): the mask sits between the conv and its BN. A plain
  conv ``X`` becomes ``nn.Sequential(conv, mask)``, so its keys are ``X.0.weight`` (conv),
  ``X.1.weight`` (logits), ``X.1.mask`` (hard mask) as in the released checkpoints. A
  ``dl_lib.layers.Conv2d`` with a ``norm`` gets ``X.norm = Sequential(mask, norm)`` instead
  (the conv, norm and activation run inside one module there).
* ``placement="after_bn"``: the mask follows the BatchNorm that follows the conv, so a pruned
  channel is exactly zero (no BN beta left). The BN is found as ``X.norm`` of a
  ``dl_lib.layers.Conv2d``, the next module of the conv's ``nn.Sequential``, or the sibling
  named like the conv with ``conv`` -> ``bn`` / ``norm`` (``conv1`` -> ``bn1``, torchvision's
  blocks); that BN ``B`` becomes ``Sequential(bn, mask)`` (keys ``B.0.*``, ``B.1.weight``). A conv
  with no such BN gets its mask right after it (its output is then exactly zero too).

Every ``ChannelMask`` remembers ``conv_path``, the conv's path in the unmasked model, which keys
``channel_keep_masks``. Masks are computed from the logits on every call (``ChannelMask``), so
they are right under ``eval()``, DDP and several processes.
"""
import fnmatch
import logging
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .mask_layer import ChannelMask
from .soft_topk import keep_count

__all__ = ["PLACEMENTS", "PRUNABLE_TYPES", "prunable_convs", "attach_channel_masks",
           "channel_masks", "channel_keep_masks", "to_hard_masks", "set_temperature",
           "pruning_statistics", "pruning_architecture", "prepare_model"]

logger = logging.getLogger(__name__)

PLACEMENTS = ("original", "after_bn")
PRUNABLE_TYPES: Tuple[type, ...] = (nn.Conv2d, nn.ConvTranspose2d)
_NORM_TYPES: Tuple[type, ...] = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


def _norm_types() -> Tuple[type, ...]:
    from dl_lib.layers.norm import FrozenBatchNorm2d

    return _NORM_TYPES + (FrozenBatchNorm2d,)


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def prunable_convs(model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()
                   ) -> List[Tuple[str, nn.Module]]:
    """``[(path, conv)]`` of the convolutions ``attach_channel_masks`` would mask, in
    ``named_modules`` order: ``PRUNABLE_TYPES`` matching ``include`` (empty: all), not matching
    ``exclude`` and without ``unprunable = True`` (the classifiers)."""
    out = []
    for path, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES) or getattr(module, "unprunable", False):
            continue
        if include and not _matches(path, include):
            continue
        if exclude and _matches(path, exclude):
            continue
        out.append((path, module))
    return out


def _parent_of(model: nn.Module, path: str) -> Tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), name


def _following_norm(model: nn.Module, path: str) -> Optional[str]:
    """Path of the BN that follows the conv at ``path`` (see the module docstring), or None."""
    parent, name = _parent_of(model, path)
    norm_types = _norm_types()
    if isinstance(parent, nn.Sequential):
        names = list(parent._modules)
        i = names.index(name)
        if i + 1 < len(names) and isinstance(parent._modules[names[i + 1]], norm_types):
            return f"{path[:len(path) - len(name)]}{names[i + 1]}"
    for norm_name in (name.replace("conv", "bn"), name.replace("conv", "norm")):
        if norm_name != name and isinstance(parent._modules.get(norm_name), norm_types):
            return f"{path[:len(path) - len(name)]}{norm_name}"
    return None


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, name = _parent_of(model, path)
    parent._modules[name] = new


def attach_channel_masks(model: nn.Module, sparsity: float, placement: str = "original",
                         include: Sequence[str] = (), exclude: Sequence[str] = (),
                         min_channels: int = 8, temperature: float = 1.0, learnable: bool = True,
                         logit_group: Optional[Tuple[float, float]] = (1.0, 0.0)
                         ) -> "OrderedDict[str, ChannelMask]":
    """Attach a ``ChannelMask`` to every prunable conv of ``model`` (in place).

    Returns ``{conv_path: mask}``. ``logit_group``: ``(lr_factor, weight_decay)`` of the logits'
    own optimiser group, None to leave them in their host's group (the original).
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"MODEL.PRUNING.PLACEMENT={placement!r} must be one of {PLACEMENTS}")
    if channel_masks(model):
        raise ValueError(f"attach_channel_masks: {type(model).__name__} already has channel "
                         "masks (prepare_model / attach_channel_masks ran twice?)")
    convs = prunable_convs(model, include, exclude)
    if not convs:
        raise ValueError(f"attach_channel_masks: no prunable convolution in {type(model).__name__} "
                         f"(MODEL.PRUNING.INCLUDE={list(include)}, EXCLUDE={list(exclude)})")
    # Find every BN first: the surgery changes paths.
    norms = {path: _following_norm(model, path) for path, _ in convs} \
        if placement == "after_bn" else {}
    attached: "OrderedDict[str, ChannelMask]" = OrderedDict()
    without_norm = []
    for path, conv in convs:
        channels = conv.out_channels
        mask = ChannelMask(channels, keep_count(channels, sparsity, min_channels), temperature,
                           learnable, logit_group, conv_path=path, placement=placement)
        mask.to(device=conv.weight.device)
        inner_norm = getattr(conv, "norm", None)  # dl_lib.layers.Conv2d: conv -> norm -> act
        if isinstance(inner_norm, nn.Module) and not isinstance(inner_norm, nn.Identity):
            conv.norm = (nn.Sequential(mask, inner_norm) if placement == "original"
                         else nn.Sequential(inner_norm, mask))
        elif placement == "after_bn" and norms[path] is not None:
            norm_path = norms[path]
            _replace(model, norm_path, nn.Sequential(model.get_submodule(norm_path), mask))
        else:
            if isinstance(getattr(conv, "activation", None), nn.Module):
                # A dl_lib Conv2d without norm: the mask goes before its activation.
                conv.activation = nn.Sequential(mask, conv.activation)
            else:
                _replace(model, path, nn.Sequential(conv, mask))
            if placement == "after_bn":
                without_norm.append(path)
        attached[path] = mask
    if without_norm:
        logger.info(f"after_bn placement: no BatchNorm follows {len(without_norm)} conv(s), "
                    f"masked right after the conv: {without_norm[:5]}"
                    + (" ..." if len(without_norm) > 5 else ""))
    kept = sum(m.k for m in attached.values())
    total = sum(m.channels for m in attached.values())
    logger.info(f"Channel masks on {len(attached)} convolutions ({placement} placement, "
                f"sparsity {sparsity}): {kept} of {total} output channels kept.")
    return attached


def channel_masks(model: nn.Module) -> "OrderedDict[str, ChannelMask]":
    """``{conv_path: ChannelMask}`` of ``model`` (a DDP wrapper is looked through)."""
    model = getattr(model, "module", model)
    return OrderedDict((m.conv_path, m) for m in model.modules() if isinstance(m, ChannelMask))


def channel_keep_masks(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``{conv_path: bool (C_out,)}``: the output channels each masked conv keeps, keyed by the
    conv's module path in the unmasked model (soft masks: their current top-k)."""
    return {path: m.keep_mask() for path, m in channel_masks(model).items()}


def to_hard_masks(model: nn.Module) -> int:
    """Turn every soft mask of ``model`` into its fixed 0/1 top-k mask; returns how many."""
    converted = 0
    for mask in channel_masks(model).values():
        if not mask.is_hard:
            mask.to_hard()
            converted += 1
    return converted


def set_temperature(model: nn.Module, temperature: float) -> None:
    for mask in channel_masks(model).values():
        mask.set_temperature(temperature)


@torch.no_grad()
def pruning_statistics(model: nn.Module, tolerance: float = 0.01
                       ) -> "OrderedDict[str, Dict[str, float]]":
    """Per masked conv: ``chosen`` / ``pruned`` / ``undecided`` fractions of its channels (mask
    within ``tolerance`` of 1, of 0, else; the original's ``collect_logs``), ``kept`` (k),
    ``channels`` and, for a soft mask, ``temperature``."""
    out: "OrderedDict[str, Dict[str, float]]" = OrderedDict()
    for path, mask in channel_masks(model).items():
        values = mask.current_mask().float()
        chosen = float((values >= 1.0 - tolerance).float().mean())
        pruned = float((values <= tolerance).float().mean())
        stats = {"chosen": chosen, "pruned": pruned, "undecided": 1.0 - chosen - pruned,
                 "kept": float(mask.k), "channels": float(mask.channels)}
        if not mask.is_hard:
            stats["temperature"] = float(mask.temperature)
        out[path] = stats
    return out


def pruning_architecture(model: nn.Module) -> Dict[str, bool]:
    """``{"MODEL.PRUNING.HARD_MASKS": True}`` when ``model`` has masks and all are hard, else
    ``{}``: what a masked model's ``architecture()`` adds, so that its converted checkpoint
    rebuilds with hard masks and loads strictly (``dl_test``)."""
    masks = channel_masks(model)
    if masks and all(m.is_hard for m in masks.values()):
        return {"MODEL.PRUNING.HARD_MASKS": True}
    return {}


def prepare_model(cfg, model: nn.Module) -> nn.Module:
    """What a builder calls last: with ``MODEL.PRUNING.CHANNELS`` set, rebuild the compressed
    widths (``channels.apply_channel_config``; the network is then dense, so no masks); else,
    with ``MODEL.PRUNING.ENABLED``, attach the channel masks (hard with ``HARD_MASKS``). Returns ``model`` (changed in place).
    """
    pruning = cfg.MODEL.PRUNING
    if len(pruning.CHANNELS):
        from .channels import apply_channel_config

        apply_channel_config(model, list(pruning.CHANNELS))
        if pruning.ENABLED:
            logger.info("MODEL.PRUNING.CHANNELS is set: the compressed network is built dense, "
                        "without channel masks (MODEL.PRUNING.ENABLED is ignored).")
        return model
    if pruning.ENABLED:
        logit_group = (None if pruning.LOGITS_FOLLOW_HOST
                       else (pruning.LOGIT_LR_FACTOR, pruning.LOGIT_WEIGHT_DECAY))
        attach_channel_masks(model, pruning.SPARSITY, placement=pruning.PLACEMENT,
                             include=list(pruning.INCLUDE), exclude=list(pruning.EXCLUDE),
                             min_channels=pruning.MIN_CHANNELS,
                             temperature=pruning.TEMPERATURE_START, learnable=pruning.LEARNABLE,
                             logit_group=logit_group)
        if pruning.TIE_STREAMS:
            _tie_streams(model)
        if pruning.HARD_MASKS:
            to_hard_masks(model)  # a random top-k until the checkpoint's masks are loaded
    return model


def _tie_streams(model: nn.Module) -> None:
    """``MODEL.PRUNING.TIE_STREAMS``: tie the stream masks, found by tracing a small input in
    eval mode (batch 1 would break BN's training statistics)."""
    from .compress import tie_stream_masks

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            groups = tie_stream_masks(model, torch.zeros(1, 3, 33, 33))
    finally:
        model.train(was_training)
    logger.info("MODEL.PRUNING.TIE_STREAMS: %d residual streams share one mask each", len(groups))

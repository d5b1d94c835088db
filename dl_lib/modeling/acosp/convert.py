"""The ACoSP repository's checkpoints (semseg key layout) -> our names, converted on load
(``MODEL.WEIGHTS``) or once (``tools/convert_checkpoint.py``). Reference ``acosp.md`` 1.1-2.3.

Files are saved from a DataParallel/DDP wrapper (keys under ``module.``, stripped here), as a
plain state dict or under ``state_dict`` (the Checkpointer unwraps that). Two models:

- PSPNet (``acosp_pspnet``): ``layer0.*`` (the deep stem, our ``backbone.stem`` with the same
  Sequential indices), ``layer1..4`` -> ``backbone.layer1..4``, ``ppm.features.*`` / ``cls.*`` /
  ``aux.*`` -> ``head.ppm`` / ``head.cls`` / ``head.aux``;
- SegNet (``acosp_segnet``): ``down1..5`` -> ``backbone.down1..5``, ``up1..5`` -> ``head.up1..5``.

Masked files keep these renames: the original wraps a masked conv ``X`` in ``Sequential(conv,
mask)``, so ``X.0.weight`` / ``X.0.bias`` are the conv and ``X.1.*`` the mask: after the
conversion to hard masks ``X.1.mask`` (0/1), before it ``X.1.weight`` (the logits) plus
``X.1.mask`` (a cache of the last training batch's soft mask). Build the model with the pruning
family's "original" placement (``MODEL.PRUNING.ENABLED True``, any ``SPARSITY``: a hard file's
masks set each layer's k), with ``MODEL.PRUNING.HARD_MASKS True`` for a hard file: a strict load
(``dl_test``) into soft masks stops on their missing logits. For a soft file the stale cache
is dropped: our masks are computed from the logits, and the temperature they were last computed
at is recovered from it (``recover_temperature``) as the layer's ``temperature`` buffer.
"""
import logging
import math
import re
from collections import OrderedDict
from typing import Collection, Dict, List, Mapping, Tuple

import torch

from dl_lib.checkpoint import register_converter

from .pspnet import ACoSPPSPNet
from .segnet import ACoSPSegNet

__all__ = ["PSPNET_TO_OURS", "SEGNET_TO_OURS", "is_pspnet_layout", "is_segnet_layout",
           "convert_pspnet", "convert_segnet", "to_original", "recover_temperature"]

logger = logging.getLogger(__name__)

PSPNET_TO_OURS: List[Tuple[str, str]] = [
    ("layer0.", "backbone.stem."),
    (r"layer([1-4])\.", r"backbone.layer\1."),
    ("ppm.", "head.ppm."),
    ("cls.", "head.cls."),
    ("aux.", "head.aux."),
]
SEGNET_TO_OURS: List[Tuple[str, str]] = [
    (r"down([1-5])\.", r"backbone.down\1."),
    (r"up([1-5])\.", r"head.up\1."),
]


def _bare(keys: Collection[str]) -> List[str]:
    return [k[len("module."):] if k.startswith("module.") else k for k in keys]


def is_pspnet_layout(keys: Collection[str]) -> bool:
    """semseg/ACoSP PSPNet: a ``layer0`` stem conv (dense ``layer0.0.weight`` or masked
    ``layer0.0.0.weight``) and a PPM (``ppm.features.*``), not nested under ``backbone.``."""
    keys = set(_bare(keys))
    return (bool({"layer0.0.weight", "layer0.0.0.weight"} & keys)
            and any(k.startswith("ppm.features.") for k in keys))


def is_segnet_layout(keys: Collection[str]) -> bool:
    """ACoSP/pytorch-semseg SegNet: ``down1.conv1.cbr_unit.*`` and ``up1.convs.*``."""
    keys = _bare(keys)
    return (any(k.startswith("down1.conv1.cbr_unit.") for k in keys)
            and any(k.startswith("up1.convs.") for k in keys))


def recover_temperature(logits: torch.Tensor, cached_mask: torch.Tensor,
                        default: float = 1e-3) -> float:
    """The temperature T of the original's cached soft mask m = sigmoid((z - x0) / T), z the
    standardised logits (``max(std, 1e-3)``): logit(m) is affine in z with slope 1 / T, fitted
    by least squares over the channels whose m is not saturated (fewer than 2: ``default``, the
    final temperature)."""
    w = logits.detach().double().flatten()
    m = cached_mask.detach().double().flatten()
    if w.numel() < 2 or m.shape != w.shape:
        return default
    z = (w - w.mean()) / w.std().clamp_min(1e-3)
    ok = (m > 1e-4) & (m < 1 - 1e-4)  # float32 masks: logit() is imprecise near 0 and 1
    if int(ok.sum()) < 2:
        return default
    zs, ls = z[ok], torch.logit(m[ok])
    zc = zs - zs.mean()
    denom = float((zc * zc).sum())
    if denom <= 0:
        return default
    slope = float((zc * (ls - ls.mean())).sum()) / denom
    return 1.0 / slope if slope > 0 and math.isfinite(slope) else default


def _convert(state_dict: Mapping, rules, what: str) -> Dict[str, torch.Tensor]:
    compiled = [(re.compile("^" + src), dst) for src, dst in rules]
    sd = OrderedDict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):
        sd = OrderedDict((k[len("module."):], v) for k, v in sd.items())
    out: Dict[str, torch.Tensor] = OrderedDict()
    soft = 0
    for key, value in sd.items():
        # The original's soft mask layer: logits X.1.weight + its cached mask X.1.mask.
        if key.endswith(".mask") and key[:-len("mask")] + "weight" in sd \
                and sd[key[:-len("mask")] + "weight"].dim() == 1 \
                and re.search(r"\.1\.mask$", key):
            prefix = key[:-len("mask")]
            value = torch.tensor(recover_temperature(sd[prefix + "weight"], value))
            key, soft = prefix + "temperature", soft + 1
        for pattern, repl in compiled:
            if pattern.match(key):
                key = pattern.sub(repl, key, count=1)
                break
        out[key] = value
    logger.info("ACoSP %s checkpoint: %d tensors renamed to ours%s", what, len(out),
                f" ({soft} soft masks: cached masks -> temperatures)" if soft else "")
    return out


def convert_pspnet(state_dict: Mapping) -> Dict[str, torch.Tensor]:
    """An ACoSP/semseg PSPNet state dict (dense or masked, ``module.`` or not) -> our names."""
    return _convert(state_dict, PSPNET_TO_OURS, "PSPNet")


def convert_segnet(state_dict: Mapping) -> Dict[str, torch.Tensor]:
    """An ACoSP SegNet state dict (dense or masked) -> our names."""
    return _convert(state_dict, SEGNET_TO_OURS, "SegNet")


def to_original(state_dict: Mapping) -> Dict[str, torch.Tensor]:
    """Our PSPNet / SegNet names -> the original's (dense or hard-masked), e.g. to evaluate
    weights trained here with the original code."""
    inverse = [(r"backbone\.stem\.", "layer0."), (r"backbone\.(layer[1-4]|down[1-5])\.", r"\1."),
               (r"head\.(ppm|cls|aux|up[1-5])\.", r"\1.")]
    out = OrderedDict()
    for key, value in state_dict.items():
        for src, dst in inverse:
            if re.match(src, key):
                key = re.sub("^" + src, dst, key, count=1)
                break
        out[key] = value
    return out


register_converter("acosp_pspnet", convert_pspnet, matches=is_pspnet_layout,
                   model_class=ACoSPPSPNet)
register_converter("acosp_segnet", convert_segnet, matches=is_segnet_layout,
                   model_class=ACoSPSegNet)

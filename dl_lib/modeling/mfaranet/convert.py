"""The authors' MFARANet checkpoints -> our names, converted on load (``MODEL.WEIGHTS``) or once
(``tools/convert_checkpoint.py``).

Released files (reference ``mfaranet.md`` section 6) are ``{'epoch', 'state_dict', 'optimizer'}``
saved from a DDP model: every key under ``module.`` (the Checkpointer and the tool strip it). Two
original classes, two layouts, both registered for :class:`MFARANet`:

- ``mfaranet_released`` (``MFARANet``, the released Cityscapes checkpoints): ``layer0.0.*`` (the
  deep stem's convs and BNs) / ``layer0.1`` (its last BN), ``layer1..4``, ``channel_changes``,
  ``feature_fuses_up/down``, ``stage_fuses``, ``multi_loss_head``, ``stages_offset``,
  ``HMSA_attentions``, ``boundary_heads`` (:data:`RELEASED_TO_OURS`);
- ``mfaranet_scale_choice`` (``MFARANet_Scale_Choice``, the README's training commands): the
  backbone stages are wrapped with their dropout, ``layerX.0.<block>`` instead of
  ``layerX.<block>``, and the attention heads are ``ASFM_attentions`` (148 keys differ); it is
  remapped to the first layout, then converted the same way. With a ``Branch_Choose`` of several
  branches, attention head j belongs to the j-th chosen branch, as ours; set
  ``MODEL.MFARANET.FUSED_BRANCHES`` to the same list.

The original loads either file into either class with ``strict=False``, so a checkpoint in the
wrong class stays silently random; here a file converts to one set of names and ``dl_test`` loads
it strictly. ``aux_head.*`` (only with the unused ``use_aux_loss``) is dropped. The input is
normalised with the ImageNet mean / std in 0-255 units, the library's defaults; RGB order is our
reading of the original's loader (the reference does not state it), so no channel flip here.
"""
import logging
import re
from collections import OrderedDict
from typing import Collection, Dict, List, Mapping, Tuple

import torch

from dl_lib.checkpoint import register_converter

from .mfaranet import MFARANet

__all__ = ["RELEASED_TO_OURS", "is_released_layout", "is_scale_choice_layout", "convert_released",
           "convert_scale_choice", "scale_choice_to_released", "to_released",
           "released_missing_by_design"]

logger = logging.getLogger(__name__)

# (original name prefix, ours); "{i}" is a module index. First match wins, in this order.
RELEASED_TO_OURS: List[Tuple[str, str]] = [
    ("layer0.0.", "backbone.stem."),            # the conv1 Sequential: indices 0, 1, 3, 4, 6
    ("layer0.1.", "backbone.stem.7."),          # bn1 after the third conv
    ("layer{i}.", "backbone.layer{i}."),
    ("channel_changes.{i}.0.", "head.compress.{i}."),
    ("channel_changes.{i}.1.", "head.compress.{i}.norm."),
    ("feature_fuses_up.{i}.0.", "head.top_down.{i}."),
    ("feature_fuses_up.{i}.1.", "head.top_down.{i}.norm."),
    ("feature_fuses_down.{i}.0.", "head.bottom_up.{i}."),
    ("feature_fuses_down.{i}.1.", "head.bottom_up.{i}.norm."),
    ("stage_fuses.{i}.0.", "head.stage_fuse.{i}."),
    ("stage_fuses.{i}.1.", "head.stage_fuse.{i}.norm."),
    ("multi_loss_head.{i}.0.", "head.branch_heads.{i}."),
    ("stages_offset.{i}.channel_change1.", "head.align.{i}.coarse_proj."),
    ("stages_offset.{i}.channel_change2.", "head.align.{i}.fine_proj."),
    ("stages_offset.{i}.offset_map.", "head.align.{i}.offset."),
    ("HMSA_attentions.{i}.0.", "head.attention.{i}.conv."),
    ("HMSA_attentions.{i}.1.", "head.attention.{i}.conv.norm."),
    ("HMSA_attentions.{i}.4.", "head.attention.{i}.score."),
    ("boundary_heads.{i}.0.", "head.boundary_heads.{i}."),
]


def _rules(pairs) -> List[Tuple["re.Pattern", str]]:
    """(from, to) prefix templates -> (compiled prefix regex, replacement)."""
    return [(re.compile("^" + re.escape(src).replace(re.escape("{i}"), r"(\d+)")),
             dst.replace("{i}", r"\1")) for src, dst in pairs]


_RULES = _rules(RELEASED_TO_OURS)
# Inverse: the longest (most specific) of our prefixes first: "compress.0.norm." before "compress.0.".
_INVERSE = _rules(sorted(((o, t) for t, o in RELEASED_TO_OURS), key=lambda r: -len(r[0])))
_DROPPED = ("aux_head.",)
_WRAPPERS = ("module.",)


def _strip_wrappers(state_dict: Mapping) -> "OrderedDict":
    sd = OrderedDict(state_dict)
    for prefix in _WRAPPERS:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = OrderedDict((k[len(prefix):], v) for k, v in sd.items())
    return sd


def _bare(keys: Collection[str]) -> set:
    return {k[len("module."):] if k.startswith("module.") else k for k in keys}


def is_scale_choice_layout(keys: Collection[str]) -> bool:
    """The ``MFARANet_Scale_Choice`` layout: stages nested as ``layer1.0.0.conv1`` (always, the
    dropout wrapper exists even at rate 0) or ``ASFM_attentions.*``."""
    keys = _bare(keys)
    return "layer1.0.0.conv1.weight" in keys or any(k.startswith("ASFM_attentions.") for k in keys)


def is_released_layout(keys: Collection[str]) -> bool:
    """The ``MFARANet`` class's layout (the released checkpoints): ``layer0.0.0.weight`` (deep
    stem), ``channel_changes.*`` and ``layer1.0.conv1.weight`` (stages not nested)."""
    keys = _bare(keys)
    return ("layer0.0.0.weight" in keys and "layer1.0.conv1.weight" in keys
            and any(k.startswith("channel_changes.") for k in keys))


def _rename(key: str, rules) -> str:
    for pattern, repl in rules:
        if pattern.match(key):
            return pattern.sub(repl, key, count=1)
    return key  # not an MFARANet name: left for the load to report as unexpected


def convert_released(state_dict: Mapping) -> Dict[str, torch.Tensor]:
    """An ``MFARANet``-class state dict (``module.`` stripped or not) -> our names."""
    out = OrderedDict()
    dropped = []
    for key, value in _strip_wrappers(state_dict).items():
        if key.startswith(_DROPPED):
            dropped.append(key)
            continue
        out[_rename(key, _RULES)] = value
    logger.info("MFARANet checkpoint: %d tensors renamed to ours%s", len(out),
                f", {len(dropped)} aux_head tensors dropped (no auxiliary head here)" if dropped
                else "")
    return out


def scale_choice_to_released(state_dict: Mapping) -> "OrderedDict":
    """``MFARANet_Scale_Choice`` names -> ``MFARANet`` names: ``layerX.0.<block>`` ->
    ``layerX.<block>`` (X = 1..4; the dropout wrapper has no tensors) and ``ASFM_attentions`` ->
    ``HMSA_attentions``; ``layer0`` already coincides."""
    out = OrderedDict()
    for key, value in _strip_wrappers(state_dict).items():
        key = re.sub(r"^(layer[1-4])\.0\.", r"\1.", key, count=1)
        key = re.sub(r"^ASFM_attentions\.", "HMSA_attentions.", key, count=1)
        out[key] = value
    return out


def convert_scale_choice(state_dict: Mapping) -> Dict[str, torch.Tensor]:
    """A scale-choice-class state dict -> our names (:func:`scale_choice_to_released`, then
    :func:`convert_released`)."""
    return convert_released(scale_choice_to_released(state_dict))


def to_released(state_dict: Mapping) -> Dict[str, torch.Tensor]:
    """Our names -> the ``MFARANet`` class's (the inverse of :func:`convert_released`), e.g. to
    run the original code on weights trained here."""
    return OrderedDict((_rename(k, _INVERSE), v) for k, v in state_dict.items())


def released_missing_by_design(converted_keys: Collection[str],
                               model_keys: Collection[str]) -> Dict[str, str]:
    """Model tensors a file lacks by design -> why: the boundary heads of a model trained
    without the boundary loss (``if_use_boundary_loss False``; they are training-only)."""
    converted = set(converted_keys)
    if any(k.startswith("head.boundary_heads.") for k in converted):
        return {}
    return {k: "trained without the boundary loss: no boundary heads (training only)"
            for k in model_keys if k.startswith("head.boundary_heads.")}


convert_released.missing_by_design = released_missing_by_design  # read by convert_checkpoint.py
convert_scale_choice.missing_by_design = released_missing_by_design

register_converter("mfaranet_scale_choice", convert_scale_choice, matches=is_scale_choice_layout,
                   model_class=MFARANet)
register_converter("mfaranet_released", convert_released, matches=is_released_layout,
                   model_class=MFARANet)

"""The authors' released ADP-C checkpoints -> our layout, converted on load.

A released file (reference ``anytime.md`` section 6) is the flat state_dict of the original's
``FullEEModel``: every network key under ``model.`` (its top level: ``conv1``, ``layer1``,
``exit1``, ``transition1``, ``stage2``, ..., ``last_layer``) plus the loss's class-weight buffer
``loss.criterion.weight``. Ours nests the network as ``backbone.*`` and the exits as ``head.*``;
per-layer ``Lambda`` and ``square_dis`` keep their names. The class weights come from the config
(``MODEL.ANYTIME.CLASS_WEIGHTS``), so the buffer is dropped. Converted names are loaded strictly
by ``dl_test``: a file of another setting (an ADP-C file into a model without ``MODEL.MASK.USE``,
or EE heads into RH) stops with the keys that differ, instead of the original's silent filtering.
"""
from collections import OrderedDict
from typing import Collection, Dict, Mapping

from dl_lib.checkpoint import register_converter

from .anytime import AnytimeSegmentor

__all__ = ["is_released_layout", "convert_released", "to_released"]

_HEAD_PREFIXES = ("exit1.", "exit2.", "exit3.", "last_layer.")
_LOSS_KEYS = ("loss.criterion.weight",)
_WRAPPER_PREFIXES = ("module.",)


def is_released_layout(keys: Collection[str]) -> bool:
    """Whether ``keys`` are a released ADP-C file's: ``model.conv1.weight`` and ``model.exit1.*``."""
    keys = set(keys)
    for prefix in ("",) + _WRAPPER_PREFIXES:
        if f"{prefix}model.conv1.weight" in keys and any(
                k.startswith(f"{prefix}model.exit1.") for k in keys):
            return True
    return False


def convert_released(state_dict: Mapping) -> Dict:
    """Released ``model.*`` names -> ``backbone.*`` / ``head.*``; the loss buffer is dropped."""
    out = OrderedDict()
    for key, value in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:  # a DDP-wrapped FullEEModel: its loss buffer too
            if key.startswith((prefix + "model.", prefix + "loss.")):
                key = key[len(prefix):]
        if key in _LOSS_KEYS:
            continue
        if not key.startswith("model."):
            raise KeyError(f"ADP-C checkpoint key {key!r} is neither under 'model.' nor the loss "
                           f"buffer {_LOSS_KEYS}; is this a released ADP-C file?")
        name = key[len("model."):]
        out[("head." if name.startswith(_HEAD_PREFIXES) else "backbone.") + name] = value
    return out


def to_released(state_dict: Mapping, class_weights=None) -> Dict:
    """Our names -> the released layout (the inverse of :func:`convert_released`; for tests and
    for sharing weights with the original code). ``class_weights``: the loss buffer to add."""
    out = OrderedDict()
    for key, value in state_dict.items():
        for prefix in ("backbone.", "head."):
            if key.startswith(prefix):
                out["model." + key[len(prefix):]] = value
                break
        else:
            raise KeyError(f"{key!r} is not under 'backbone.' or 'head.': not an AnytimeSegmentor "
                           "state_dict")
    if class_weights is not None:
        out["loss.criterion.weight"] = class_weights
    return out


register_converter("anytime_released", convert_released, matches=is_released_layout,
                   model_class=AnytimeSegmentor)

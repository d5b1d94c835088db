"""mmseg-layout CondNet checkpoints -> our names, converted on load (``MODEL.WEIGHTS``) or once
(``tools/convert_checkpoint.py``).

The original trains with mmseg and saves ``{'meta': ..., 'state_dict': {'backbone.*',
'decode_head.*', 'auxiliary_head.*'}}`` (keys as in ``reference/keys/condnet_keys.txt``). The
Checkpointer takes ``state_dict``; :func:`convert_mmseg` renames:

- ``backbone.*``: unchanged (our ResNet already has mmseg's ResNetV1c names);
- ``decode_head.guidance_project.conv.*`` / ``filter_project.conv.*`` ->
  ``head.classifier.guidance_project.*`` / ``filter_project.*`` (``conv_seg.*`` of a plain head ->
  ``head.classifier.conv_seg.*``);
- other ``decode_head.*`` -> ``head.*`` and ``auxiliary_head.*`` -> ``aux_head.*``, with mmcv's
  ConvModule children mapped to the library's ``Conv2d``: ``<m>.conv.<p>`` -> ``<m>.<p>``,
  ``<m>.bn.<p>`` -> ``<m>.norm.<p>``.

The released generator rows are in the **original** kernel layout: build the model with
``MODEL.CONDNET.KERNEL_LAYOUT "original"`` to reproduce them (``convert_kernel_layout`` in
``conditional_classifier.py`` moves them to ``clean`` for further training; see its doc).
:func:`to_mmseg` is the inverse (our state dict -> mmseg names).
"""
from typing import Collection, Dict, Mapping

import torch

from dl_lib.checkpoint import register_converter

from .condnet import CondNet

__all__ = ["is_mmseg_layout", "convert_mmseg", "to_mmseg"]

_CLASSIFIER = {"guidance_project.conv.": "classifier.guidance_project.",
               "filter_project.conv.": "classifier.filter_project.",
               "conv_seg.": "classifier.conv_seg."}


def is_mmseg_layout(keys: Collection[str]) -> bool:
    """An mmseg CondNet state dict: a ``decode_head`` with a conditional (or plain) classifier."""
    keys = set(keys)
    return any(k.startswith("decode_head.") for k in keys) and (
        "decode_head.guidance_project.conv.weight" in keys or "decode_head.conv_seg.weight" in keys)


def _convmodule_to_ours(rest: str) -> str:
    parts = rest.split(".")
    out = []
    for p in parts[:-1]:
        if p == "conv":
            continue
        out.append("norm" if p == "bn" else p)
    return ".".join(out + parts[-1:])


def convert_mmseg(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """mmseg CondNet names -> ours (module doc). Unknown top-level prefixes are an error."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            new = key
        elif key.startswith("decode_head."):
            rest = key[len("decode_head."):]
            for old, ours in _CLASSIFIER.items():
                if rest.startswith(old):
                    new = "head." + ours + rest[len(old):]
                    break
            else:
                new = "head." + _convmodule_to_ours(rest)
        elif key.startswith("auxiliary_head."):
            rest = key[len("auxiliary_head."):]
            plain = rest.startswith("conv_seg.")
            new = "aux_head." + (rest if plain else _convmodule_to_ours(rest))
        else:
            raise KeyError(f"mmseg CondNet checkpoint: key {key!r} is outside backbone / "
                           "decode_head / auxiliary_head; not a CondNet EncoderDecoder file")
        out[new] = value
    return out


def to_mmseg(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our CondNet state dict -> mmseg names (the inverse of :func:`convert_mmseg`)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            out[key] = value
            continue
        top, rest = key.split(".", 1)
        prefix = {"head": "decode_head.", "aux_head": "auxiliary_head."}.get(top)
        if prefix is None:
            raise KeyError(f"to_mmseg: key {key!r} is not under backbone / head / aux_head")
        for old, ours in _CLASSIFIER.items():
            if top == "head" and rest.startswith(ours):
                out[prefix + old + rest[len(ours):]] = value
                break
        else:
            parts = rest.split(".")
            if parts[0] == "conv_seg":
                out[prefix + rest] = value
            elif len(parts) >= 2 and parts[-2] == "norm":
                out[prefix + ".".join(parts[:-2] + ["bn", parts[-1]])] = value
            else:
                out[prefix + ".".join(parts[:-1] + ["conv", parts[-1]])] = value
    return out


register_converter("condnet_mmseg", convert_mmseg, is_mmseg_layout, model_class=CondNet)

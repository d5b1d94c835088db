"""The authors' released DynamicRouting checkpoints -> our layout, converted on load.

Released files (reference doc section 5) are ``{'model': state_dict}`` of the original
``DynamicNet4Seg``; ours differ in three ways, which :func:`convert_released` undoes:

- the decoder is ``sem_seg_head.*`` there, ``head.*`` here (every other name is the same);
- the original feeds BGR 0-255 minus the BGR mean (std 1); ours take RGB, so the input channels of
  the stem's first convolution are reversed. A playground that loads these weights normalises
  with ``MODEL.PIXEL_MEAN [123.675, 116.28, 103.53]`` (the same mean, in RGB order) and
  ``MODEL.PIXEL_STD [1, 1, 1]``; then the logits equal the original's on the same image;
- no-gate ("Fix", ``GATE_ON False``) networks carry a ``gate_weights_beta`` buffer of ones per cell,
  which our cells do not need: it is dropped.

The ImageNet-pretrained "Layer16-Fix" / "Layer33-Fix" backbones (``Dynamic-L16B4-A73-convert-seg
.pth``, ``Dynamic-L33B4-A74-convert-seg.pth``) hold the ``backbone.*`` keys of a no-gate network,
possibly without a decoder. They load two ways:

- ``MODEL.WEIGHTS`` (the original's way): converted like a whole model; the gates and the decoder
  keep their initialisation and the load reports them as missing;
- ``MODEL.PRETRAINED``: ``DynamicNetwork.convert_pretrained`` (:func:`convert_pretrained_backbone`)
  flips the stem, strips ``backbone.`` and drops the decoder.

They are recognised by their ``gate_weights_beta`` buffers (:func:`is_released_layout`); a gated
backbone without decoder has no such marker: ``tools/convert_checkpoint.py --converter
dynamic_routing_released`` converts it.

Given the same weights, our eval-mode logits equal the original's in every skip mode
(``tests/modeling/dynamic_routing/test_convert.py``), with one deliberate exception: a cell all of
whose input routes are closed is not computed here (real skipping), while the original runs it on
an all-zero input.

A file of another model (a ResNet, say) raises an error that says what the file looks like and
which layout was expected (:func:`describe_layout`).
"""
import logging
import re
from collections import OrderedDict
from typing import Collection, Dict, List, Mapping

import torch

from dl_lib.checkpoint import IncompatibleCheckpointError, PretrainedWeightsError, register_converter

from .dynamic_routing import DynamicRoutingSegmentor

__all__ = ["RELEASED_TO_OURS", "STEM_INPUT_CONV", "is_released_layout", "convert_released",
           "convert_pretrained_backbone", "describe_layout", "released_missing_by_design",
           "flip_stem_input"]

logger = logging.getLogger(__name__)

# released name prefix -> ours
RELEASED_TO_OURS = {"sem_seg_head.": "head."}
# The one convolution that sees the image: its input channels are BGR in the released files.
STEM_INPUT_CONV = "backbone.stem.stem_1.weight"
_NO_GATE_BUFFER = ".gate_weights_beta"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_CELL = re.compile(r"(?:backbone\.)?all_cell_list\.(\d+)\.(\d+)\.")


def _strip_wrappers(state_dict: Mapping) -> "OrderedDict":
    sd = OrderedDict(state_dict)
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = OrderedDict((k[len(prefix):], v) for k, v in sd.items())
    return sd


def is_released_layout(keys: Collection[str]) -> bool:
    """Whether ``keys`` are a released checkpoint's: a ``sem_seg_head.*`` decoder, or a no-gate
    network's ``gate_weights_beta`` buffers (the ImageNet Fix backbones have them). Our own
    checkpoints hold neither, so they never match (their stem is RGB already). A gated file
    without its decoder has no such marker: convert it with ``tools/convert_checkpoint.py
    --converter dynamic_routing_released``."""
    keys = list(_strip_wrappers(dict.fromkeys(keys)))
    return any(k.startswith("sem_seg_head.") or k.endswith(_NO_GATE_BUFFER) for k in keys)


def flip_stem_input(weight: torch.Tensor) -> torch.Tensor:
    """The stem convolution's weight (64 x 3 x 3 x 3) for RGB input given one for BGR input
    (or the reverse: the flip is its own inverse)."""
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"{STEM_INPUT_CONV}: expected a (out, 3, k, k) weight of the image "
                         f"convolution, got shape {tuple(weight.shape)}")
    return weight.flip(1).contiguous()


def convert_released(state_dict: Mapping) -> Dict[str, torch.Tensor]:
    """A released state dict (original names, BGR stem) -> ours: ``sem_seg_head.`` -> ``head.``,
    stem flipped to RGB, ``gate_weights_beta`` buffers dropped, ``module.`` prefixes stripped."""
    sd = _strip_wrappers(state_dict)
    out = OrderedDict()
    dropped = 0
    for key, value in sd.items():
        if key.endswith(_NO_GATE_BUFFER):
            dropped += 1  # all ones in a no-gate network: our cells weight their routes by 1
            continue
        for old, new in RELEASED_TO_OURS.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    if STEM_INPUT_CONV in out:
        out[STEM_INPUT_CONV] = flip_stem_input(out[STEM_INPUT_CONV])
    has_head = any(k.startswith("head.") for k in out)
    has_gates = any(".gate_conv_beta." in k for k in out)
    kind = ("segmentation model" if has_head else "backbone (no decoder: an ImageNet file)")
    logger.info(f"Released DynamicRouting {kind}, {'with' if has_gates else 'without'} gates: "
                "sem_seg_head. -> head., stem_1 flipped from BGR to RGB input"
                + (f", {dropped} gate_weights_beta buffers dropped" if dropped else "")
                + ("" if has_head and has_gates else
                   "; what it lacks keeps its initialisation ("
                   + ", ".join(p for p, lacks in (("decoder", not has_head),
                                                   ("gates", not has_gates)) if lacks) + ")"))
    return out


def released_missing_by_design(converted_keys: Collection[str],
                               model_keys: Collection[str]) -> Dict[str, str]:
    """Model tensors a released file lacks by design -> why: the decoder of an ImageNet backbone
    file, the gates of a no-gate ("Fix") network. ``tools/convert_checkpoint.py`` accepts these
    missing and names them; anything else missing is an error there."""
    converted = set(converted_keys)
    why = {}
    no_head = not any(k.startswith("head.") for k in converted)
    no_gates = not any(".gate_conv_beta." in k for k in converted)
    for k in model_keys:
        if k in converted:
            continue
        if no_head and k.startswith("head."):
            why[k] = "an ImageNet backbone file has no decoder"
        elif no_gates and ".gate_conv_beta." in k:
            why[k] = "a no-gate (Fix) network has no gates"
    return why


convert_released.missing_by_design = released_missing_by_design  # read by convert_checkpoint.py


def _layer_count(keys: Collection[str]) -> int:
    layers = [int(m.group(1)) for m in map(_CELL.match, keys) if m]
    return max(layers) + 1 if layers else 0


def describe_layout(state_dict: Mapping) -> str:
    """A short description of what a state dict is, for error messages: a DynamicRouting network
    (layers, width, gates, decoder), a ResNet (torchvision / detectron2 / deep-stem), or the
    first keys of something else."""
    sd = _strip_wrappers(state_dict)
    keys = list(sd)
    if not keys:
        return "an empty state dict"
    n_layers = _layer_count(keys)
    if n_layers:
        stem = next((sd[k] for k in ("backbone.stem.stem_3.1.weight", "stem.stem_3.1.weight")
                     if k in sd), None)
        width = f", INIT_CHANNEL {stem.shape[0]}" if stem is not None else ""
        gates = "with gates" if any(".gate_conv_beta." in k for k in keys) else "without gates"
        head = ("a sem_seg_head decoder" if any(k.startswith("sem_seg_head.") for k in keys) else
                "a head decoder" if any(k.startswith("head.") for k in keys) else "no decoder")
        return f"a DynamicRouting network of {n_layers} layers{width}, {gates}, {head}"
    if any(re.match(r"(backbone\.)?(bottom_up\.)?res[2-5]\.", k) for k in keys):
        return "a detectron2-style ResNet (keys res2..res5)"
    if any(re.match(r"(backbone\.)?layer[1-4]\.\d+\.conv\d\.weight", k) for k in keys):
        kind = ("a deep-stem ResNet" if any(k.startswith(("conv1.0.", "conv2.", "layer0."))
                                           for k in keys) else "a torchvision-style ResNet")
        return f"{kind} (keys conv1, layer1..layer4{', fc' if 'fc.weight' in keys else ''})"
    return f"a model of another layout (first keys: {', '.join(keys[:4])})"


_EXPECTED = ("the released DynamicRouting layout (backbone.stem.stem_1.weight, "
             "backbone.all_cell_list.<layer>.<cell>.cell_ops..., sem_seg_head.* or none) or one of "
             "our DynamicRoutingSegmentor checkpoints")


def _is_other_model(keys: List[str]) -> bool:
    """No stem and no cell of a routing network: a file of another model."""
    return bool(keys) and not any(k.endswith("stem.stem_1.weight") or _CELL.match(k) for k in keys)


def _refuse_other_model(state_dict: Mapping) -> Dict[str, torch.Tensor]:
    raise IncompatibleCheckpointError(
        f"MODEL.WEIGHTS is {describe_layout(state_dict)}, not a DynamicRouting checkpoint: "
        f"expected {_EXPECTED}. An ImageNet backbone of another architecture cannot initialise "
        "this network; leave MODEL.WEIGHTS empty to train from scratch.")


def convert_pretrained_backbone(state_dict: Mapping) -> Dict[str, torch.Tensor]:
    """``MODEL.PRETRAINED`` for :class:`DynamicNetwork`: a released backbone (or whole model) file
    -> the backbone's own names. A released file (:func:`is_released_layout`) is converted (stem to
    RGB, no-gate buffers dropped); then ``backbone.`` is stripped and the decoder dropped. Our own
    files (a whole model, or a DynamicNetwork's state dict) only lose the prefix and decoder.
    Raises ``PretrainedWeightsError`` for a file of another model, saying what it looks like."""
    sd = _strip_wrappers(state_dict)
    keys = list(sd)
    if _is_other_model(keys):
        raise PretrainedWeightsError(
            f"MODEL.PRETRAINED is {describe_layout(sd)}, not a DynamicRouting backbone: expected "
            "the released ImageNet Layer16-Fix / Layer33-Fix file (e.g. Dynamic-L16B4-A73-convert-"
            "seg.pth: backbone.stem.stem_1.weight, backbone.all_cell_list.<layer>.<cell>...) or "
            "a DynamicNetwork state dict (stem.stem_1.weight, all_cell_list...).")
    if is_released_layout(keys):
        sd = convert_released(sd)
    if not any(k.startswith("backbone.") for k in sd):
        return OrderedDict(sd)  # a DynamicNetwork's own names
    return OrderedDict((k[len("backbone."):], v) for k, v in sd.items() if k.startswith("backbone."))


register_converter("dynamic_routing_released", convert_released, matches=is_released_layout,
                   model_class=DynamicRoutingSegmentor)
# After the released layout: a file with no routing-network key at all is another model's (a
# ResNet as MODEL.WEIGHTS); say so instead of loading nothing and reporting 0 matched tensors.
register_converter("dynamic_routing_other_model", _refuse_other_model,
                   matches=lambda keys: _is_other_model(list(keys)),
                   model_class=DynamicRoutingSegmentor)

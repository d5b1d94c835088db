"""Reading ``acosp_keys.txt`` (the key/shape dump of the original's PSPNet50 and SegNet, a copy
of ``shared/docs/reference/keys/acosp_keys.txt``) and writing weights in the original layouts."""
import os
import re
from collections import OrderedDict
from typing import Dict, Tuple

import torch

DUMP_PATH = os.path.join(os.path.dirname(__file__), "acosp_keys.txt")


def read_section(title: str) -> "OrderedDict[str, Tuple[int, ...]]":
    """key -> shape of the section whose banner line starts with ``title``."""
    lines = open(DUMP_PATH).read().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith(title))
    out: "OrderedDict[str, Tuple[int, ...]]" = OrderedDict()
    for line in lines[start + 1:]:
        if "\t" in line:
            key, shape = line.split("\t")
            out[key] = tuple(int(s) for s in re.findall(r"\d+", shape))
        elif out:
            break
    return out


def dump_line(prefix: str) -> str:
    return next(l for l in open(DUMP_PATH).read().splitlines() if l.strip().startswith(prefix))


PSPNET50 = read_section("PSPNet50 (classes=19")
SEGNET = read_section("SegNet (classes=19)")


def random_state_dict(shapes, seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.1
    return sd


def masked_layout(dense: Dict[str, torch.Tensor], unprunable, keep, soft_temperature=None,
                  seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """The original's masked layout of a dense state dict: every conv ``X`` (4-d ``X.weight``)
    not in ``unprunable`` becomes ``X.0.weight`` (+ ``X.0.bias``) and ``X.1.mask`` with the
    ``keep(C)`` random channels set (hard), or with ``soft_temperature`` the logits
    ``X.1.weight`` plus the soft mask cached at that temperature ``X.1.mask``.
    Returns (state dict, {X: the 0/1 (hard) or soft mask written})."""
    g = torch.Generator().manual_seed(seed)
    convs = [k[:-len(".weight")] for k, v in dense.items()
             if k.endswith(".weight") and v.dim() == 4 and k[:-len(".weight")] not in unprunable]
    out, masks = OrderedDict(), {}
    for key, value in dense.items():
        conv = next((c for c in convs if key in (c + ".weight", c + ".bias")), None)
        if conv is None:
            out[key] = value
            continue
        out[f"{conv}.0.{key[len(conv) + 1:]}"] = value
        if key.endswith(".weight"):
            c = value.shape[0]
            k = keep(c)
            if soft_temperature is None:
                mask = torch.zeros(c)
                mask[torch.randperm(c, generator=g)[:k]] = 1.0
                out[f"{conv}.1.mask"] = mask
            else:  # the original's SigmoidSoftTopK (reference 2.2), computed independently here
                w = torch.randn(c, generator=g)
                z = (w - w.mean()) / w.std().clamp_min(1e-3)
                x0 = torch.quantile(z, 1 - k / c)
                mask = torch.sigmoid((z - x0) / soft_temperature)
                out[f"{conv}.1.weight"], out[f"{conv}.1.mask"] = w, mask
            masks[conv] = mask
    return out, masks

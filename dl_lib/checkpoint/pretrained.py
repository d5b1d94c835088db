"""``MODEL.PRETRAINED``: backbone initialisation from ImageNet files in their own layouts.

The backbone class declares how the layouts it accepts map to its parameter names (timm's
``checkpoint_filter_fn`` idea)::

    class MyBackbone(Backbone):
        @classmethod
        def convert_pretrained(cls, state_dict):   # foreign names -> ours; drop the classifier
            return {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}

``load_pretrained_backbone(backbone, path)`` reads the file (``weights_only=True``; a
``"state_dict"`` / ``"model"`` entry and ``module.`` prefixes are accepted), converts it, copies
every tensor whose name and shape match, logs a per-group table of matched / missing /
shape-mismatched / unexpected tensors, and raises ``PretrainedWeightsError`` (naming the file, the
counts and the first unmatched keys) when fewer than half of the backbone's tensors matched: a
file in a layout nobody converts must stop the run, not train from random weights.
"""
import logging
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from iopath.common.file_io import g_pathmgr
from tabulate import tabulate
from torch import nn

from .file_check import check_torch_file, unreadable_checkpoint_error

__all__ = ["PretrainedWeightsError", "PretrainedReport", "load_pretrained_backbone",
           "find_backbone", "read_state_dict"]

logger = logging.getLogger(__name__)

# At least this share of the backbone's tensors must load from MODEL.PRETRAINED.
MIN_MATCHED_FRACTION = 0.5


class PretrainedWeightsError(ValueError):
    """MODEL.PRETRAINED does not fit the backbone (too few tensors matched by name and shape)."""


@dataclass
class PretrainedReport:
    """What ``load_pretrained_backbone`` did. Keys are the backbone's names (after conversion);
    ``num_batches_tracked`` counters are left out of every list."""
    path: str
    total: int                                   # tensors of the backbone
    matched: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)       # backbone tensors absent from the file
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)    # file tensors the backbone lacks

    @property
    def fraction(self) -> float:
        return len(self.matched) / max(self.total, 1)

    def summary(self) -> str:
        return (f"{len(self.matched)}/{self.total} backbone tensors matched, "
                f"{len(self.missing)} missing, {len(self.mismatched)} shape mismatches, "
                f"{len(self.unexpected)} unexpected in the file")


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a released weights file, with wrapper entries and prefixes removed.

    Accepts a bare state dict, ``{"state_dict": ...}`` (timm, mmcv), ``{"model": ...}``
    (detectron2, ours); strips ``module.`` / ``_orig_mod.`` when every key has it.
    """
    local = path if os.path.isfile(path) else g_pathmgr.get_local_path(path)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"MODEL.PRETRAINED file not found: {path!r}")
    check_torch_file(local, path, key="MODEL.PRETRAINED")  # text / empty / truncated: say which
    try:
        obj = torch.load(local, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise
    except Exception as e:  # torch's zip / EOF errors name no file
        raise unreadable_checkpoint_error(local, e, path, "MODEL.PRETRAINED") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise PretrainedWeightsError(f"MODEL.PRETRAINED {path}: expected a state dict (or a dict "
                                     f"with 'state_dict' or 'model'), found {type(obj).__name__}")
    sd = OrderedDict((k, torch.as_tensor(v) if isinstance(v, np.ndarray) else v)
                     for k, v in obj.items() if isinstance(v, (torch.Tensor, np.ndarray)))
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = OrderedDict((k[len(prefix):], v) for k, v in sd.items())
    return sd


def find_backbone(model: nn.Module) -> nn.Module:
    """``model.backbone`` if it is a module, ``model`` itself if it is a ``Backbone``, else its
    first ``Backbone`` submodule. Raises ValueError when there is none."""
    from dl_lib.modeling.backbone import Backbone  # lazy: modeling is heavier than checkpoint

    candidate = getattr(model, "backbone", None)
    if isinstance(candidate, nn.Module):
        return candidate
    for module in model.modules():
        if isinstance(module, Backbone):
            return module
    raise ValueError(f"MODEL.PRETRAINED is set but {type(model).__name__} has no `backbone` "
                     "attribute and no dl_lib.modeling.Backbone submodule to load it into.")


def _group(key: str) -> str:
    return key.split(".", 1)[0]


def _table(report: PretrainedReport) -> str:
    groups: Dict[str, List[int]] = OrderedDict()
    for col, keys in enumerate([report.matched, report.missing,
                                [k for k, _, _ in report.mismatched], report.unexpected]):
        for k in keys:
            groups.setdefault(_group(k), [0, 0, 0, 0])[col] += 1
    rows = [(g, *counts) for g, counts in groups.items()]
    return tabulate(rows, headers=["group", "matched", "missing", "shape mismatch", "unexpected"],
                    tablefmt="pipe")


def _compare(model_sd: Dict[str, torch.Tensor], sd: Dict[str, Any], path: str) -> PretrainedReport:
    def counted(k):
        return not k.endswith("num_batches_tracked")

    report = PretrainedReport(path, total=sum(map(counted, model_sd)))
    for k, v in model_sd.items():
        if not counted(k):
            continue
        if k not in sd:
            report.missing.append(k)
        elif tuple(sd[k].shape) != tuple(v.shape):
            report.mismatched.append((k, tuple(sd[k].shape), tuple(v.shape)))
        else:
            report.matched.append(k)
    report.unexpected = [k for k in sd if k not in model_sd and counted(k)]
    return report


def load_pretrained_backbone(backbone: nn.Module, path: str,
                             min_fraction: float = MIN_MATCHED_FRACTION) -> PretrainedReport:
    """Copy the tensors of ``path`` that fit into ``backbone``, after its ``convert_pretrained``.

    Args:
        backbone: the module to initialise; ``type(backbone).convert_pretrained(state_dict)``
            maps the file's names to its own when defined (identity otherwise).
        path: ``MODEL.PRETRAINED``, a local path or iopath URI.
        min_fraction: stop when fewer than this share of the backbone's tensors matched.
    Returns:
        The report (also logged: one summary line and a per-group table).
    Raises:
        PretrainedWeightsError: too few tensors matched; nothing was copied.
    """
    sd = read_state_dict(path)
    convert = getattr(type(backbone), "convert_pretrained", None)
    if convert is not None:
        sd = convert(sd)
    report = _compare(backbone.state_dict(), sd, path)
    name = type(backbone).__name__
    if report.fraction < min_fraction:
        first = report.missing[:5] + [f"{k} {a} in the file vs {b}" for k, a, b in
                                      report.mismatched[:5]]
        raise PretrainedWeightsError(
            f"MODEL.PRETRAINED {path} does not fit the backbone {name}: {report.summary()} "
            f"(at least {min_fraction:.0%} must match). First unmatched backbone keys: "
            f"{', '.join(first) or 'none'}; first unexpected keys of the file: "
            f"{', '.join(report.unexpected[:5]) or 'none'}. Is the file in a layout "
            f"{name}.convert_pretrained knows, and for this depth / width "
            "(MODEL.BACKBONE.NAME, WIDTH, STEM_WIDTH, DEEP_STEM)?")
    # Tensors inside the backbone's own top-level modules that it lacks: a deeper or wider variant
    # of the same network (e.g. HRNet-W18 into W18-Small-v2), which would otherwise "match" fully.
    groups = {name for name, _ in backbone.named_children()}
    inside = [k for k in report.unexpected if k.split(".", 1)[0] in groups]
    if inside:
        raise PretrainedWeightsError(
            f"MODEL.PRETRAINED {path} holds {len(inside)} tensors inside {name}'s own modules that "
            f"this backbone does not have (first: {', '.join(inside[:5])}): it is a deeper or "
            f"wider variant of this network. Use the file of this variant, or choose the variant "
            f"the file is for (MODEL.BACKBONE.NAME, WIDTH, STEM_WIDTH, DEEP_STEM).")
    loadable = {k: sd[k] for k in report.matched}
    for k in backbone.state_dict():  # the counters, where the file has them
        if not k.endswith("num_batches_tracked") or k not in sd:
            continue
        loadable[k] = sd[k]
    backbone.load_state_dict(loadable, strict=False)
    log = logger.warning if report.missing or report.mismatched else logger.info
    log(f"Loaded MODEL.PRETRAINED {path} into {name}: {report.summary()}\n{_table(report)}")
    if report.mismatched:
        shown = "; ".join(f"{k}: {a} in the file, {b} here" for k, a, b in report.mismatched[:10])
        more = len(report.mismatched) - 10
        shown += f"; {more} more" if more > 0 else ""
        logger.warning(f"MODEL.PRETRAINED: skipped {len(report.mismatched)} tensors of another "
                       f"shape (kept as initialised): {shown}")
    return report

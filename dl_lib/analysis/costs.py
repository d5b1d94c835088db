"""Aggregation of per-image executed cost, for models whose cost depends on the input.

Such models put ``"flops"`` into each eval output (CONTRACTS.md): a float, or a dict
name -> float (e.g. ``{"real_flops": 93.1, "expt_flops": 80.2}``), in GFLOPs of the model's
declared convention. The evaluator reports mean/min/max over the dataset.
"""
import numbers
from typing import Dict, Iterable, Union

import torch

__all__ = ["summarize_costs", "cost_items"]

# name used for a bare float "flops" entry
DEFAULT_NAME = "flops"


def _to_float(value, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"per-image cost {name!r} must be a scalar, got a tensor of shape "
                             f"{tuple(value.shape)}; return one number per image")
        return float(value.item())
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"per-image cost {name!r} must be a number (or 1-element tensor), got "
                    f"{type(value).__name__}")


def cost_items(flops: Union[float, torch.Tensor, Dict[str, float]]) -> Dict[str, float]:
    """Normalise one image's ``"flops"`` entry to ``{name: float}`` (a bare number -> "flops")."""
    if isinstance(flops, dict):
        return {str(k): _to_float(v, str(k)) for k, v in flops.items()}
    return {DEFAULT_NAME: _to_float(flops, DEFAULT_NAME)}


def summarize_costs(costs: Iterable) -> Dict[str, Dict[str, float]]:
    """``[1.0, 3.0]`` -> ``{"flops": {"mean": 2.0, "min": 1.0, "max": 3.0}}``;
    ``[{"real_flops": 1, "expt_flops": 2}, ...]`` -> one entry per name. ``None`` entries (images
    without a cost) are skipped; a name missing from some images is averaged over the images that
    have it. Returns ``{}`` when no image reported a cost."""
    values: Dict[str, list] = {}
    for c in costs:
        if c is None:
            continue
        for name, v in cost_items(c).items():
            values.setdefault(name, []).append(v)
    return {name: {"mean": sum(v) / len(v), "min": min(v), "max": max(v)}
            for name, v in values.items()}

"""Per-module tables shared by the parameter and FLOP reports."""
from typing import Callable, Dict, Iterable, Optional, Union

import torch.nn as nn
from tabulate import tabulate

__all__ = ["module_table", "format_count"]


def format_count(x: Union[int, float]) -> str:
    """Human-readable count: 1234567 -> '1.235M'; floats already in giga units keep 3 decimals."""
    if isinstance(x, float):
        return f"{x:.3f}"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3f}{suffix}"
    return str(x)


def module_table(model_or_names: Union[nn.Module, Iterable[str]],
                 columns: Dict[str, Dict[str, Union[int, float]]], max_depth: int = 3,
                 fmt: Optional[Dict[str, Callable]] = None) -> str:
    """Render ``columns`` (column title -> {module name -> value}) as one row per module.

    Rows follow ``model.named_modules()`` order (or the given names), are limited to modules at
    most ``max_depth`` dots deep (the root ``""`` is shown as "model"), and skip modules with no
    value in any column. Names are indented by depth so the hierarchy reads at a glance.
    """
    if isinstance(model_or_names, nn.Module):
        names = [n for n, _ in model_or_names.named_modules()]
    else:
        names = list(model_or_names)
    fmt = fmt or {}
    rows = []
    for name in names:
        depth = 0 if name == "" else name.count(".") + 1
        if depth > max_depth:
            continue
        values = [columns[c].get(name) for c in columns]
        if all(v is None or v == 0 for v in values):
            continue
        shown = "model" if name == "" else " " * depth + name
        cells = [fmt.get(c, format_count)(v) if v is not None else "" for c, v in zip(columns, values)]
        rows.append([shown] + cells)
    return tabulate(rows, headers=["module"] + list(columns), tablefmt="pipe",
                    colalign=("left",) + ("right",) * len(columns))

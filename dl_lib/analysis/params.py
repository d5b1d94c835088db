"""Parameter counts: total, trainable, and per module (cumulative over children)."""
from dataclasses import dataclass, field
from typing import Dict

import torch.nn as nn

__all__ = ["ParamCount", "count_parameters", "parameter_table"]


@dataclass
class ParamCount:
    """``total``/``trainable``: number of scalars in ``model.parameters()`` (shared tensors counted
    once); ``by_module``: module name (as in ``named_modules()``, ``""`` = the whole model) ->
    parameters held by that module and its children."""

    total: int
    trainable: int
    by_module: Dict[str, int] = field(default_factory=dict)

    def __str__(self):
        return f"{self.total:,} parameters ({self.trainable:,} trainable)"


def count_parameters(model: nn.Module) -> ParamCount:
    """Count the parameters of ``model`` (buffers such as BN running stats are not parameters)."""
    total = trainable = 0
    by_module: Dict[str, int] = {}
    for name, p in model.named_parameters():  # named_parameters deduplicates shared tensors
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
        # credit the parameter to every enclosing module: "a.b.weight" -> "", "a", "a.b"
        parts = name.split(".")[:-1]
        by_module[""] = by_module.get("", 0) + n
        for i in range(1, len(parts) + 1):
            key = ".".join(parts[:i])
            by_module[key] = by_module.get(key, 0) + n
    return ParamCount(total=total, trainable=trainable, by_module=by_module)


def parameter_table(model: nn.Module, max_depth: int = 3) -> str:
    """A tabulate table "module | #params" down to ``max_depth`` levels of nesting."""
    from .table import module_table

    pc = count_parameters(model)
    return module_table(model, {"#params": pc.by_module}, max_depth=max_depth)

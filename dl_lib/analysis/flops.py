"""FLOP counting under named conventions, so a number can be compared with the paper it came from.

The conventions ("gmac", "hrnet", "dynamic_routing") and what each counts are described in
:mod:`dl_lib.analysis.conventions`. Every count is for the whole batch (``batch=1`` is the usual
report) and is the executed cost of that input: :func:`flop_count` runs the model under a
:class:`dl_lib.analysis.CostTracker`, the same code the evaluator uses per image, so masked
convolutions count their active positions and skipped routes count nothing.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .conventions import CONVENTIONS
from .cost_tracker import CostTracker
from .params import count_parameters
from .table import module_table

__all__ = ["FlopResult", "flop_count", "flop_table", "CONVENTIONS"]


@dataclass
class FlopResult:
    """Outcome of :func:`flop_count`.

    ``total``: the count in ``unit``; ``by_module``: module name (``named_modules()`` names,
    ``""`` = whole model) -> count in ``unit`` of that module and its children; ``unsupported_ops``:
    op or module-class name -> number of calls that executed but were not counted;
    ``raw``: the integer count before dividing (MACs or the convention's per-op count);
    ``per_image``: the executed cost of each image of the batch in ``unit``.
    """

    total: float
    unit: str
    by_module: Dict[str, float]
    unsupported_ops: Dict[str, int]
    convention: str = "gmac"
    input_size: Tuple[int, int] = (0, 0)
    batch: int = 1
    raw: int = 0
    params: Dict[str, int] = field(default_factory=dict)
    modules: List[str] = field(default_factory=list)  # named_modules() order, for tables
    per_image: List[float] = field(default_factory=list)  # cost of each image, in ``unit``

    def __str__(self):
        return (f"{self.total:.6g} {self.unit} at input {self.batch}x3x{self.input_size[0]}x"
                f"{self.input_size[1]} (convention {self.convention!r})")


def flop_count(model: nn.Module, input_size: Sequence[int] = (1024, 2048),
               convention: str = "gmac", batch: int = 1,
               inputs: Optional[torch.Tensor] = None) -> FlopResult:
    """Count the cost of one forward pass of ``model`` on a ``batch x 3 x H x W`` input.

    The model runs in eval mode under ``torch.no_grad()`` (its train/eval mode is restored
    afterwards) on a random normal tensor on the device of its first parameter, called as
    ``model.predict_logits(x)`` if it has that method, else ``model(x)``. ``inputs`` replaces
    the random tensor (then ``input_size``/``batch`` are read from it).

    Returns a :class:`FlopResult` with ``total`` in the convention's unit (see the module doc);
    ``by_module`` is keyed by ``named_modules()`` names also when ``predict_logits`` (a method
    call on the root, not a module call) is what runs.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"flop_count: unknown convention {convention!r}; choose one of "
                         f"{', '.join(CONVENTIONS)}")
    if inputs is None:
        if len(input_size) != 2:
            raise ValueError(f"flop_count: input_size must be (H, W), got {tuple(input_size)!r}")
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        inputs = torch.randn(batch, 3, int(input_size[0]), int(input_size[1]), device=device,
                             dtype=dtype)
    batch, (h, w) = inputs.shape[0], inputs.shape[-2:]
    call = model.predict_logits if hasattr(model, "predict_logits") else model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), CostTracker(model, [convention], num_images=int(batch)) as tracker:
            call(inputs)
    finally:
        model.train(was_training)
    divisor, unit = CONVENTIONS[convention]
    per_module = tracker.raw_by_module(convention)
    raw = int(round(per_module[""]))
    return FlopResult(
        total=per_module[""] / divisor, unit=unit,
        by_module={k: v / divisor for k, v in per_module.items()},
        unsupported_ops=tracker.unsupported(convention), convention=convention,
        input_size=(int(h), int(w)), batch=int(batch), raw=raw,
        params=count_parameters(model).by_module, modules=[n for n, _ in model.named_modules()],
        per_image=[c[convention] for c in tracker.per_image()])


def flop_table(result: FlopResult, max_depth: int = 3, model: Optional[nn.Module] = None) -> str:
    """A tabulate table "module | #params | <convention>" down to ``max_depth`` nesting levels.

    Rows follow ``model.named_modules()`` order (recorded in the result, or from ``model``)."""
    names = model if model is not None else (
        result.modules or list(dict.fromkeys([""] + list(result.params) + list(result.by_module))))
    title = result.unit.split(" (")[0]
    return module_table(names, {"#params": result.params, title: result.by_module},
                        max_depth=max_depth, fmt={title: lambda v: f"{v:.4g}"})

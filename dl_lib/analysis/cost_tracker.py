"""Executed cost, per image: a tracker that the model's layers report into while it runs.

    from dl_lib.analysis import CostTracker
    with torch.no_grad(), CostTracker(model, conventions=["gmac", "hrnet"], num_images=2) as t:
        out = model(batched_inputs)
    t.per_image()      # [{"gmac": 1.23, "hrnet": 1.15}, {"gmac": 0.80, "hrnet": 0.75}]  (GFLOPs)

What is counted (the conventions are described in :mod:`dl_lib.analysis.conventions`):

- every op or module that runs, by its convention; nothing that does not run (a skipped route,
  cell or exit costs nothing; a gate network costs what it ran);
- a masked convolution (``MaskedConv2d`` or the functional ``masked_conv2d``, sparse kernel or
  dense fallback alike) costs its active output positions x the MACs of one position, per image
  of its N x 1 x Ho x Wo mask;
- the batch cost of any other op is split evenly over the images it belongs to: all images of
  the batch, or those named by an enclosing :func:`cost_scope` (a model that runs a branch on a
  sub-batch says whose images these are);
- extra work the conventions cannot see, reported by the model with :func:`report_cost`.

Both helpers are no-ops when no tracker is active, so models call them unconditionally; with no
tracker active nothing is hooked and the only overhead is one global check per masked conv.
"""
import contextlib
from collections import Counter
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from .conventions import CONVENTIONS, HOOK_RULES, MEMORY_OPS, is_deliberately_free

__all__ = ["CostTracker", "check_conventions", "cost_scope", "current_tracker",
           "register_per_image_formula", "report_cost"]

# The tracker that layers report into (one at a time; evaluation runs in one thread).
_ACTIVE: Optional["CostTracker"] = None

# op packet -> fn(args, kwargs) -> MACs per image of the op's batch (e.g. a masked convolution)
_PER_IMAGE_FORMULAS: Dict[object, Callable] = {}


def check_conventions(conventions: Iterable[str], where: str = "conventions") -> List[str]:
    """``conventions`` as a list, or a ValueError naming ``where`` (e.g. a config key)."""
    if isinstance(conventions, str):
        conventions = [conventions]
    conventions = list(conventions)
    unknown = [c for c in conventions if c not in CONVENTIONS]
    if unknown:
        raise ValueError(f"{where}: unknown cost convention(s) {unknown}; choose from "
                         f"{list(CONVENTIONS)} (empty = no cost tracking)")
    return conventions


def current_tracker() -> Optional["CostTracker"]:
    """The active :class:`CostTracker`, or None."""
    return _ACTIVE


def register_per_image_formula(op_packet, fn: Callable) -> None:
    """Count ``op_packet`` (``torch.ops.ns.op``) under "gmac" with ``fn(args, kwargs)`` -> one MAC
    count per image of the op's batch, instead of torch's batch formula."""
    _PER_IMAGE_FORMULAS[op_packet] = fn


def report_cost(macs: Optional[float] = None, per_image: Optional[Sequence[float]] = None,
                conventions: Optional[Iterable[str]] = None) -> None:
    """Add cost the conventions cannot see to the active tracker (no-op without one).

    ``macs``: the batch total, split evenly over the current images; ``per_image``: one count per
    image of the current scope (all images of the batch, or the enclosing :func:`cost_scope`'s).
    Counts are raw (MACs, or the convention's own unit before dividing); ``conventions`` limits
    them to some of the tracker's conventions (default: all). Credited to the innermost running
    module.
    """
    if _ACTIVE is not None:
        _ACTIVE.report(macs, per_image, conventions)


@contextlib.contextmanager
def cost_scope(images: Sequence[int]):
    """Work inside the block belongs to the images ``images`` (indices into the tracker's batch).

    For a model that runs a route on a sub-batch (``branch(x[idx])``): ``with cost_scope(idx):``
    makes that branch cost only those images. No-op without an active tracker."""
    tracker = _ACTIVE
    if tracker is None:
        yield
        return
    images = [int(i) for i in images]
    bad = [i for i in images if not 0 <= i < tracker.num_images]
    if bad:
        raise IndexError(f"cost_scope: image indices {bad} outside the tracker's batch of "
                         f"{tracker.num_images} images")
    previous, tracker._scope = tracker._scope, images
    try:
        yield
    finally:
        tracker._scope = previous


def _credit_names(name: str) -> List[str]:
    """"a.b" -> ["a.b", "a", ""]: a module's cost also counts for its ancestors."""
    parts = name.split(".") if name else []
    return [".".join(parts[:i]) for i in range(len(parts), -1, -1)]


# size/stride queries that FlopCounterMode also passes through untouched
_QUERY_OPS = {"sym_is_contiguous", "is_contiguous", "is_strides_like_format",
              "is_non_overlapping_and_dense", "size", "sym_size", "stride", "sym_stride",
              "storage_offset", "sym_storage_offset", "numel", "sym_numel", "dim", "layout"}


class _GmacMode(TorchDispatchMode):
    """Counts every ATen op with torch's FLOP formulas (as ``FlopCounterMode`` does), crediting
    the tracker's current module and images."""

    def __init__(self, tracker: "CostTracker"):
        super().__init__()
        self.tracker = tracker
        self.suspended = 0  # > 0 inside an op that reported its own cost (a masked conv)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        if self.suspended:
            return func(*args, **kwargs)
        packet = getattr(func, "_overloadpacket", None)
        if packet is None:  # a higher-order operator (torch.compile internals): not counted
            return func(*args, **kwargs)
        if packet.__name__ in _QUERY_OPS:
            return NotImplemented
        per_image = _PER_IMAGE_FORMULAS.get(packet)
        if per_image is not None:
            out = func(*args, **kwargs)
            with self.tracker.reporting_op(("gmac",)):  # the formula's own ops are not the model's
                count = per_image(args, kwargs)
            self.tracker._credit("gmac", count)
            return out
        if packet not in flop_registry and func is not torch.ops.prim.device.default:
            with self:
                r = func.decompose(*args, **kwargs)
                if r is not NotImplemented:
                    return r
        out = func(*args, **kwargs)
        if packet in flop_registry:
            # torch's formulas count 2 per multiply-add
            self.tracker._credit("gmac", flop_registry[packet](*args, **kwargs, out_val=out) // 2)
        elif packet.__name__ not in MEMORY_OPS:
            self.tracker._unsupported["gmac"][str(packet).replace("aten.", "aten::")] += 1
        return out


class CostTracker:
    """Context manager that counts the executed cost of ``model`` per image, in each convention.

    Args:
        model: the model that runs inside the block; its modules (``named_modules()`` names) are
            hooked for the per-module counts and the hook conventions.
        conventions: names from ``CONVENTIONS`` ("gmac", "hrnet", "dynamic_routing").
        num_images: images in the batch the block processes (N of the masks and inputs).

    After the block: :meth:`per_image` (GFLOPs per image and convention), :meth:`by_module`
    (batch total per module, ``""`` = whole model), :meth:`unsupported` (ops or module classes
    that ran but were not counted), :meth:`raw_by_module` (counts before dividing).
    """

    def __init__(self, model: nn.Module, conventions: Sequence[str] = ("gmac",),
                 num_images: int = 1):
        conventions = check_conventions(conventions, "CostTracker")
        if not conventions:
            raise ValueError(f"CostTracker: no convention given; choose from {list(CONVENTIONS)}")
        if num_images < 1:
            raise ValueError(f"CostTracker: num_images must be >= 1, got {num_images}")
        self.model = model
        self.conventions = conventions
        self.num_images = int(num_images)
        self._scope: List[int] = list(range(self.num_images))
        self._per_image = {c: [0.0] * self.num_images for c in conventions}
        self._by_module: Dict[str, Dict[str, float]] = {c: {} for c in conventions}
        self._unsupported: Dict[str, Counter] = {c: Counter() for c in conventions}
        self._stack: List[str] = []
        self._handles: list = []
        self._gmac: Optional[_GmacMode] = None

    # ---------------------------------------------------------------- entering and leaving
    def __enter__(self) -> "CostTracker":
        global _ACTIVE
        if _ACTIVE is not None:
            raise RuntimeError("CostTracker: another tracker is already active; nest no trackers "
                               "(use cost_scope for parts of a batch)")
        names = {m: n for n, m in self.model.named_modules()}
        for module, name in names.items():
            self._handles.append(module.register_forward_pre_hook(self._make_pre_hook(name)))
            self._handles.append(module.register_forward_hook(
                self._make_post_hook(name), with_kwargs=True, always_call=True))
        if "gmac" in self.conventions:
            self._gmac = _GmacMode(self)
            self._gmac.__enter__()
        _ACTIVE = self
        return self

    def __exit__(self, *exc):
        global _ACTIVE
        _ACTIVE = None
        if self._gmac is not None:
            self._gmac.__exit__(*exc)
            self._gmac = None
        for h in self._handles:
            h.remove()
        self._handles = []
        self._stack = []
        return False

    def _make_pre_hook(self, name: str):
        def pre_hook(module, args):
            self._stack.append(name)
        return pre_hook

    def _make_post_hook(self, name: str):
        def post_hook(module, args, kwargs, output):
            try:
                # the rules' own ops (counting a mask's active positions) are not the model's
                with self.reporting_op(("gmac",)):
                    for conv in self.conventions:
                        if conv in HOOK_RULES:
                            self._count_module(conv, name, module, args, kwargs, output)
            finally:
                if self._stack and self._stack[-1] == name:
                    self._stack.pop()
        return post_hook

    def _count_module(self, conv, name, module, args, kwargs, output):
        n = HOOK_RULES[conv](module, args, kwargs, output)
        if n is None:
            is_leaf = next(module.children(), None) is None
            if is_leaf and not is_deliberately_free(conv, module):
                self._unsupported[conv][type(module).__name__] += 1
            return
        self._credit(conv, n, name)

    # ---------------------------------------------------------------- counting
    def _credit(self, conv: str, count: Union[float, Sequence[float]],
                name: Optional[str] = None) -> None:
        """Add ``count`` (batch total, or one value per image of the current scope) to ``conv``."""
        scope = self._scope
        if isinstance(count, (list, tuple)):
            rows = [float(v) for v in count]
            total = sum(rows)
            if len(rows) != len(scope):  # e.g. a mask over a sub-batch no cost_scope names
                rows = [total / max(len(scope), 1)] * len(scope)
        else:
            total = float(count)
            rows = [total / max(len(scope), 1)] * len(scope)
        per_image = self._per_image[conv]
        for i, v in zip(scope, rows):
            per_image[i] += v
        by_module = self._by_module[conv]
        if name is None:
            name = self._stack[-1] if self._stack else ""
        for key in _credit_names(name):
            by_module[key] = by_module.get(key, 0.0) + total

    def report(self, macs=None, per_image=None, conventions=None) -> None:
        """See :func:`report_cost`."""
        if (macs is None) == (per_image is None):
            raise ValueError("report_cost: give either macs= (batch total) or per_image= (one "
                             "count per image of the current scope)")
        if per_image is not None and len(per_image) != len(self._scope):
            raise ValueError(f"report_cost: per_image has {len(per_image)} values but the current "
                             f"scope holds {len(self._scope)} images")
        count = list(per_image) if per_image is not None else macs
        for conv in (self.conventions if conventions is None else list(conventions)):
            if conv in self.conventions:
                self._credit(conv, count)

    @contextlib.contextmanager
    def reporting_op(self, conventions: Sequence[str] = ("gmac",)):
        """Block of an op that reports its own cost: the "gmac" counter ignores the ATen ops that
        run inside (e.g. a masked conv's dense fallback ``F.conv2d * mask``)."""
        mode = self._gmac if "gmac" in conventions else None
        if mode is not None:
            mode.suspended += 1
        try:
            yield
        finally:
            if mode is not None:
                mode.suspended -= 1

    # ---------------------------------------------------------------- results
    def per_image(self, raw: bool = False) -> List[Dict[str, float]]:
        """One ``{convention: GFLOPs}`` dict per image of the batch (the convention's unit; with
        ``raw``, the count before dividing: MACs or the convention's own count)."""
        return [{c: self._per_image[c][i] / (1.0 if raw else CONVENTIONS[c][0])
                 for c in self.conventions} for i in range(self.num_images)]

    def raw_by_module(self, convention: str) -> Dict[str, float]:
        """Module name (``named_modules()``; ``""`` = everything) -> batch count before dividing."""
        by_module = dict(self._by_module[convention])
        by_module.setdefault("", 0.0)
        return by_module

    def by_module(self, convention: str) -> Dict[str, float]:
        """Module name -> batch cost in the convention's unit (module and its children)."""
        divisor = CONVENTIONS[convention][0]
        return {k: v / divisor for k, v in self.raw_by_module(convention).items()}

    def total(self, convention: str) -> float:
        """Batch cost in the convention's unit."""
        return self.by_module(convention)[""]

    def unsupported(self, convention: str) -> Dict[str, int]:
        """Op (``aten::...``) or module class -> calls that ran but were not counted."""
        return dict(self._unsupported[convention])

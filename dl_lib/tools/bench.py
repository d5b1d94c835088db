"""``dl_bench``: latency, throughput and peak memory of the playground in the current folder.

    cd playground/<Group>/<Name>
    dl_bench                                            # 1024x2048, 1024x1024, 512x1024, batch 1
    dl_bench --sizes 512x1024 --batch 1,4 --threads 2 --runs 20 --json bench.json
    dl_bench --fuse-bn --channels-last MODEL.WEIGHTS model_final.pth
    python -m dl_lib.tools.bench ...                    # the same, without the console script
    dl_bench --exits all --sizes 512x1024               # anytime models: one row per exit
    dl_bench --exit 2                                   # only exit 2 (as dl_test --exit 2)
    dl_bench --budgets learned,1,0.5,0.25               # routing models: one row per budget

What is timed: ``model.predict_logits(x)`` (``model(x)`` for models without it; a model that takes
only detectron2's batched inputs, a list of dicts, through ``BatchedInputs``: its own normalisation
and post-processing included) on a random normalised ``batch x 3 x H x W`` tensor, the network from
its input to the logits at input size (for MFARANet its final x4 upsampling included, as the
authors timed it), in eval mode under ``torch.inference_mode``: no autograd graph (the authors' FPS
script built one). ``--warmup`` calls are not timed, then ``--runs`` calls each timed alone: on the
CPU by ``time.perf_counter``, on CUDA by CUDA events around each call (synchronised after it).
Reported: the median, the interquartile range and min/max of the per-call latency; FPS = batch /
median.

Peak memory (one extra untimed call per case): on CUDA ``torch.cuda.max_memory_allocated``
minus what was allocated before the call (the weights and the input); on the CPU the peak of the
bytes of live tensors the call created (a dispatch mode counts every op's outputs until they
are freed: activations, not the weights, not the input, not the kernels' own scratch buffers;
``peak_memory_measure`` in the JSON says which). The JSON also has ``rss_delta_mb``: the rise of
the process' peak resident set (``VmHWM`` after resetting it through ``/proc/self/clear_refs``)
over the resident set before the call, which includes the allocator's and the kernels' memory
but misses memory the allocator kept from earlier calls.

Cost columns (batch 1, counted once per size on the model as built, not fused): parameters and
GMACs (``dl_lib.analysis.flop_count``, convention ``gmac``: multiply-adds / 1e9). A model whose
family states how its authors count (``published_cost_convention()`` returning ``{"label",
"convention", "opts": {KEY: value}}``) also gets that count, on the copy of the model the
``opts`` describe (MFARANet: HRNet's summary, conv MACs / 2^30 labelled "GFLOPs", on the
BN-free copy).

Options: ``--fuse-bn`` folds every eval-mode BN into the convolution before it (exact to float
rounding; ``dl_lib.analysis.fuse_bn``; the norms left unfused are listed); ``--channels-last``
(model and input); ``--amp [bf16|fp16]`` (``torch.autocast``; fp16 on CUDA only);
``--compile`` (``torch.compile`` of the timed call; its compilation runs in the warm-up, which
must be at least 1; needs a C++ compiler on the CPU); ``--threads N`` (CPU threads, default
torch's). Weights: ``MODEL.WEIGHTS`` when set (strict, as ``dl_test``), else the random
initialisation (said in the output).

Rows per exit and per budget (one table row and one JSON ``rows`` entry per exit or budget, per
size and batch, each with its own ``gmacs`` beside its latency):

* ``--exits all|none|K[,K...]`` (alias ``--exit``): models with early exits (their config has
  ``MODEL.EXIT.STOP``, e.g. the anytime family). Exit ``K`` (1-based, 1 = the cheapest) is the
  model built with ``MODEL.EXIT.STOP K`` and the same weights, as ``dl_test --exit K`` runs it:
  the time to exit K is the time of a forward that stops there (exits 1..K-1 included, each
  resized to the input as ``predict_logits`` does). Default for such models: every exit
  (``all``); ``none``: only the model as built (one row, every exit run).
* ``--budgets learned|none|F[,F...]``: routing models (a backbone with ``force_gates``, the dynamic
  routing family). ``learned`` is the model as built (its trained gates, or what
  ``MODEL.GATE.FIXED_VALUE`` / ``ROUTES_FILE`` force; ``routes_open``: the routes whose gate
  exceeds ``MODEL.GATE.SKIP_THRESHOLD`` on the input image at the smallest size); a fraction ``F``
  in (0, 1] forces the first ``round(F x routes)`` routes of one fixed random order of all routes
  open (gate 1) and the others closed (gate 0): the budgets are nested, so cost falls with ``F``;
  ``1`` is every route open (the same computation as ``MODEL.GATE.FIXED_VALUE 1``: forced gates
  skip the gate networks). Default for such models: ``learned,1,0.75,0.5,0.25``.

The timed and the counted input is one seeded normal tensor per size (the GMACs of a routing or
a confidence-masked model depend on it; batch 1 is the first image of batch N). Threads
(``torch.get_num_threads()``, also ``interop_threads``), the device and its name (the CPU model
or the GPU) and the torch version head the table and are in the JSON (``threads``, ``device``,
``device_name``, ``torch``). JSON ``rows`` (``results`` is the same list, its earlier name):
``{"exit": K | "budget": "learned" | F, "routes_open", "routes_total", "size", "batch",
"latency_ms", "fps", "gmacs", "peak_memory_mb", ...}``; ``variants`` says ``"exits"``,
``"budgets"`` or null; ``num_exits`` for models with exits.
"""
import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
import warnings
import weakref
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from tabulate import tabulate
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from dl_lib.tools.common import load_weights, parse_tool_args
from dl_lib import playground
from dl_lib.analysis import count_parameters, flop_count
from dl_lib.analysis.conventions import CONVENTIONS
from dl_lib.analysis.fuse_bn import FuseError, fuse_batch_norms
from dl_lib.checkpoint import CheckpointReadError
from dl_lib.config import ConfigError
from dl_lib.utils.file_io import atomic_write

__all__ = ["main", "build_parser", "parse_sizes", "parse_batches", "parse_exits", "parse_budgets",
           "benchmark", "format_table", "example_input", "exit_variants", "budget_variants",
           "budget_routes", "LiveTensorBytes", "BenchError"]

logger = logging.getLogger("dl_lib.tools.bench")

DEFAULT_SIZES = "1024x2048,1024x1024,512x1024"
DEFAULT_BUDGETS = "learned,1,0.75,0.5,0.25"
ROUTE_ORDER_SEED = 0  # the fixed random order in which budgets close routes
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class BenchError(ValueError):
    """An option that cannot work here (said with the fix)."""


# ------------------------------------------------------------------------------- arguments
def parse_sizes(text: str) -> List[Tuple[int, int]]:
    """``"1024x2048,512x1024"`` -> ``[(1024, 2048), (512, 1024)]`` (height x width)."""
    sizes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        try:
            h, w = (int(p) for p in parts)
        except ValueError:
            raise BenchError(f"--sizes: {item.strip()!r} is not HxW (e.g. 1024x2048); give a "
                             "comma-separated list like 1024x2048,512x1024") from None
        if h <= 0 or w <= 0:
            raise BenchError(f"--sizes: {item.strip()!r} must have a positive height and width")
        sizes.append((h, w))
    return sizes


def parse_batches(text: str) -> List[int]:
    """``"1,4"`` -> ``[1, 4]``."""
    try:
        batches = [int(b) for b in text.split(",")]
    except ValueError:
        raise BenchError(f"--batch: {text!r} must be a comma-separated list of positive "
                         "integers, e.g. 1,4") from None
    if not batches or min(batches) <= 0:
        raise BenchError(f"--batch: {text!r} must be positive integers, e.g. 1,4")
    return batches


def parse_exits(text: str) -> Optional[List[int]]:
    """``"all"`` -> ``[]`` (every exit), ``"none"`` -> None (the model as built), ``"1,3"`` ->
    ``[1, 3]`` (1-based exits, as ``dl_test --exit K``)."""
    t = text.strip().lower()
    if t == "all":
        return []
    if t == "none":
        return None
    try:
        exits = [int(k) for k in t.split(",")]
    except ValueError:
        raise BenchError(f"--exits: {text!r} must be 'all', 'none' or 1-based exits such as "
                         "1,2,4") from None
    if min(exits) < 1:
        raise BenchError(f"--exits: {text!r}: exits are 1-based (1 = the cheapest); give e.g. "
                         "1,2,4 or 'all'")
    return exits


def parse_budgets(text: str) -> Optional[List]:
    """``"learned,1,0.5"`` -> ``["learned", 1.0, 0.5]`` (fractions of the routes forced open);
    ``"none"`` -> None (the model as built, one row)."""
    if text.strip().lower() == "none":
        return None
    budgets: List = []
    for item in text.split(","):
        item = item.strip().lower()
        if item == "learned":
            budgets.append("learned")
            continue
        try:
            f = float(item)
        except ValueError:
            f = -1.0
        if not 0.0 < f <= 1.0:
            raise BenchError(f"--budgets: {item!r} must be 'learned' or a fraction of the routes "
                             "kept open in (0, 1], e.g. learned,1,0.5,0.25")
        budgets.append(f)
    return budgets


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dl_bench", description="Latency, FPS, peak memory, parameters and GMACs of a "
        "playground's model.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Latency: median (IQR, min-max) of --runs timed calls of predict_logits under "
               "torch.inference_mode after --warmup calls; CUDA events on GPU.")
    p.add_argument("--playground", default=None, help="playground folder (default: current)")
    p.add_argument("--sizes", default=DEFAULT_SIZES, help=f"HxW list (default {DEFAULT_SIZES})")
    p.add_argument("--batch", default="1", help="batch sizes, e.g. 1,4 (default 1)")
    p.add_argument("--runs", type=int, default=20, help="timed calls per case (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--fuse-bn", action="store_true", help="fold eval-mode BN into the convs")
    p.add_argument("--channels-last", action="store_true", help="model and input channels_last")
    p.add_argument("--amp", nargs="?", const="auto", default=None,
                   choices=["auto", "bf16", "fp16"],
                   help="autocast (auto: fp16 on CUDA, bf16 on the CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the timed call")
    p.add_argument("--exits", "--exit", default=None, metavar="all|none|K[,K]",
                   help="models with exits (MODEL.EXIT.STOP): one row per exit, the model "
                        "stopped there (default all)")
    p.add_argument("--budgets", default=None, metavar="learned|none|F[,F]",
                   help="routing models: one row per budget, 'learned' gates or a fraction F of "
                        f"the routes forced open (default {DEFAULT_BUDGETS})")
    p.add_argument("--no-cost", action="store_true", help="skip the GMAC / authors' counts")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory call")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the results as JSON")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE config overrides, after all flags")
    return p


# ------------------------------------------------------------------------------- memory
class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensors created inside the mode and still alive (storages counted once:
    views and in-place results add nothing). Storages that existed before (``ignore``: weights,
    input) are never counted. ``peak`` after the ``with`` block."""

    def __init__(self, ignore: Sequence[torch.Tensor] = ()):
        super().__init__()
        self._known = {self._key(t) for t in ignore}
        self._live: Dict[int, List[int]] = {}  # storage ptr -> [bytes, live tensors]
        self.current = self.peak = 0

    @staticmethod
    def _key(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            key = self._key(t)
            if key == 0 or key in self._known:
                continue
            entry = self._live.get(key)
            if entry is None:
                entry = self._live[key] = [t.untyped_storage().nbytes(), 0]
                self.current += entry[0]
                self.peak = max(self.peak, self.current)
            entry[1] += 1
            weakref.finalize(t, self._release, key)
        return out


def _rss_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(fn, runs: int, device: torch.device, progress) -> List[float]:
    """Milliseconds of each of ``runs`` calls of ``fn``."""
    times = []
    for i in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        progress(i + 1, times)
    return times


def _quantile(values: List[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def latency_stats(times_ms: List[float], batch: int) -> dict:
    """Median, quartiles, min, max of the per-call latency (ms) and FPS = batch / median."""
    med = statistics.median(times_ms)
    return {"median": med, "q25": _quantile(times_ms, 0.25), "q75": _quantile(times_ms, 0.75),
            "min": min(times_ms), "max": max(times_ms), "runs": list(times_ms),
            "fps": batch * 1e3 / med if med > 0 else float("inf")}


# ------------------------------------------------------------------------- inputs, exits, budgets
def example_input(batch: int, height: int, width: int, device=None, seed: int = 0) -> torch.Tensor:
    """``batch x 3 x height x width`` normal values from a generator seeded with ``seed`` (CPU,
    then moved): the same tensor for timing and counting, and image 0 of batch N is batch 1."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, height, width, generator=g).to(device or "cpu")


class Variant(NamedTuple):
    """One setting benchmarked as its own rows: ``key`` goes into every JSON row (``{"exit":
    k}``, ``{"budget": f, ...}``, ``{}``), ``label`` into the table; ``enter()`` is a context
    manager giving the model in that setting (and restoring the model after)."""
    key: dict
    label: str
    enter: Callable[[], contextlib.AbstractContextManager]


def has_exits(cfg) -> bool:
    """Whether the config's family has early exits that can stop (``MODEL.EXIT.STOP``)."""
    exit_cfg = cfg.MODEL.get("EXIT")
    return exit_cfg is not None and "STOP" in exit_cfg


class BatchedInputs(torch.nn.Module):
    """Calls a model that takes only detectron2's batched inputs (``model(list of dicts)``, no
    ``predict_logits``) with a tensor: normalised N x 3 x H x W ``x`` -> ``model([{"image":
    x[i] * 58 + 117 clamped to 0..255 (an RGB image, as the contract's float image), "height":
    H, "width": W}, ...])``; of its outputs only the float tensors (``sem_seg`` at H x W,
    ``sem_seg_exits``; not masks, counts or times), so that ``--fuse-bn`` can compare them. The
    timed call then includes the model's own normalisation and post-processing."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> List[dict]:
        h, w = x.shape[-2:]
        images = (x * 58.0 + 117.0).clamp(0, 255)
        outputs = self.model([{"image": img, "height": h, "width": w} for img in images])
        return [_float_tensors(o) for o in outputs]


def _float_tensors(obj):
    """``obj`` (dicts and lists) with only its floating-point tensors."""
    if isinstance(obj, dict):
        kept = {k: _float_tensors(v) for k, v in obj.items()}
        return {k: v for k, v in kept.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        kept = [_float_tensors(v) for v in obj]
        kept = [v for v in kept if v is not None]
        return kept or None
    return obj if torch.is_tensor(obj) and obj.is_floating_point() else None


def _call(model: torch.nn.Module):
    return model.predict_logits if hasattr(model, "predict_logits") else model


def takes_batched_inputs(model: torch.nn.Module, size: Tuple[int, int]) -> bool:
    """Whether ``model`` needs :class:`BatchedInputs`: no ``predict_logits`` and a tensor call
    fails where a list of dicts works (one call each at ``size``); :class:`BenchError` when
    neither works."""
    if hasattr(model, "predict_logits"):
        return False
    p = next(iter(model.parameters()), None)
    x = example_input(1, size[0], size[1], p.device if p is not None else None)
    model.eval()
    with torch.inference_mode():
        try:
            with warnings.catch_warnings():  # a dict model indexing a tensor may warn first
                warnings.simplefilter("ignore")
                model(x)
            return False
        except Exception as tensor_error:  # noqa: BLE001 (any failure: try the dict contract)
            try:
                BatchedInputs(model)(x)
            except Exception as dict_error:  # noqa: BLE001
                raise BenchError(
                    f"{type(model).__name__} has no predict_logits, and neither model(tensor) "
                    f"({type(tensor_error).__name__}: {tensor_error}) nor model(list of dicts "
                    f"with 'image', 'height', 'width') ({type(dict_error).__name__}: "
                    f"{dict_error}) runs; give it predict_logits(x) (docs/CONTRACTS.md, "
                    "Model)") from None
            return True


def num_exits(model: torch.nn.Module, size: Tuple[int, int]) -> int:
    """Exits the model returns on one call at ``size``: the length of ``predict_logits``'s list
    (1 for a tensor), or of ``sem_seg_exits`` in a :class:`BatchedInputs` model's outputs."""
    p = next(iter(model.parameters()), None)
    x = example_input(1, size[0], size[1], p.device if p is not None else None)
    model.eval()
    with torch.inference_mode():
        out = _call(model)(x)
    if isinstance(model, BatchedInputs):
        return len(out[0].get("sem_seg_exits", [None]))
    return len(out) if isinstance(out, (list, tuple)) else 1


def exit_variants(path: Optional[str], cfg, model: torch.nn.Module, exits: Sequence[int]
                  ) -> List[Variant]:
    """Per exit K, the playground's model built with ``MODEL.EXIT.STOP K`` (built when entered,
    with ``model``'s weights loaded strictly; wrapped in :class:`BatchedInputs` as ``model``
    is): what ``dl_test --exit K`` runs."""
    wrap = isinstance(model, BatchedInputs)
    state = (model.model if wrap else model).state_dict()

    def enter(k: int):
        @contextlib.contextmanager
        def stopped():
            k_cfg = cfg.clone()
            k_cfg.defrost()
            k_cfg.MODEL.EXIT.STOP = int(k)
            k_model = playground.build_model(path, k_cfg)
            k_model.load_state_dict(state, strict=True)
            yield (BatchedInputs(k_model) if wrap else k_model).eval()
        return stopped

    return [Variant({"exit": int(k)}, f"exit {k}", enter(k)) for k in exits]


def is_routing(model: torch.nn.Module) -> bool:
    """A routing model: its backbone forces gates by route (``force_gates``, ``cells()``)."""
    backbone = getattr(model, "backbone", None)
    return hasattr(backbone, "force_gates") and hasattr(backbone, "cells")


def budget_routes(model: torch.nn.Module, fraction: float, seed: int = ROUTE_ORDER_SEED
                  ) -> Tuple[Dict[str, Dict[str, float]], int, int]:
    """``(routes, open, total)``: every route of the routing space (``"<cell>": {"keep" | "up" |
    "down": gate}``) with the first ``round(fraction x total)`` of one seeded random order open
    (1.0) and the rest closed (0.0). The order does not depend on ``fraction``, so a smaller
    budget closes a superset of the routes a larger one closes."""
    all_routes = [(name, route) for name, cell in model.backbone.cells()
                  for route in cell.route_index]
    order = torch.randperm(len(all_routes), generator=torch.Generator().manual_seed(seed))
    n_open = int(round(fraction * len(all_routes)))
    open_set = {all_routes[int(i)] for i in order[:n_open]}
    routes: Dict[str, Dict[str, float]] = {}
    for name, route in all_routes:
        routes.setdefault(name, {})[route] = 1.0 if (name, route) in open_set else 0.0
    return routes, n_open, len(all_routes)


def learned_routes_open(model: torch.nn.Module, size: Tuple[int, int]) -> int:
    """Routes whose gate is above ``skip_threshold`` (they run) for the gates as built, on image
    0 of :func:`example_input` at ``size`` (one forward, gates recorded)."""
    net = model.backbone
    p = next(iter(model.parameters()), None)
    x = example_input(1, size[0], size[1], p.device if p is not None else None)
    recording, net.record_gates = net.record_gates, True
    try:
        with torch.inference_mode():
            model.eval().predict_logits(x)
        gates = model.last_cost.gates
    finally:
        net.record_gates = recording
    return int(sum(int((g[0] > net.skip_threshold).sum()) for g in gates.values()))


def budget_variants(model: torch.nn.Module, budgets: Sequence,
                    size: Optional[Tuple[int, int]] = None) -> List[Variant]:
    """Per budget, ``model`` itself with its gates as built (``"learned"``; with ``size``, its
    ``routes_open`` from :func:`learned_routes_open`) or forced by :func:`budget_routes` while
    entered (the gates as built are restored after)."""
    net = model.backbone
    total = sum(len(cell.route_index) for _, cell in net.cells())
    variants = []
    for b in budgets:
        if b == "learned":
            n_open = learned_routes_open(model, size) if size is not None else None
            label = f"learned ({n_open}/{total} open)" if n_open is not None else "learned"
            variants.append(Variant({"budget": "learned", "routes_open": n_open,
                                     "routes_total": total}, label,
                                    lambda: contextlib.nullcontext(model)))
            continue
        routes, n_open, _ = budget_routes(model, float(b))

        def enter(routes=routes):
            @contextlib.contextmanager
            def forced():
                saved = {name: cell.forced_gates for name, cell in net.cells()}
                net.force_gates(None, routes)
                try:
                    yield model
                finally:
                    for name, cell in net.cells():
                        cell.forced_gates = saved[name]
            return forced()

        variants.append(Variant({"budget": float(b), "routes_open": n_open,
                                 "routes_total": total},
                                f"{100 * float(b):g}% open ({n_open}/{total})", enter))
    return variants


# ------------------------------------------------------------------------------- the benchmark
def _set_key(cfg, key: str, value) -> None:
    node = cfg
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    if last not in node:
        raise ConfigError(f"published_cost_convention() names {key}, which the config lacks")
    node[last] = value


def published_cost(path: Optional[str], cfg, model, sizes) -> Optional[dict]:
    """The authors' count at each size (``{"label", "convention", "unit", "values": {HxW: v},
    "params"}``) when the model defines ``published_cost_convention()``, else None."""
    protocol = getattr(model, "published_cost_convention", None)
    if protocol is None:
        return None
    spec = protocol()
    conv = spec["convention"]
    copy_cfg = cfg.clone()
    copy_cfg.defrost()
    for key, value in spec.get("opts", {}).items():
        _set_key(copy_cfg, key, value)
    counted = playground.build_model(path, copy_cfg)
    values = {}
    for h, w in sizes:
        values[f"{h}x{w}"] = flop_count(counted, (h, w), conv).total
    return {"label": spec.get("label", conv), "convention": conv, "unit": CONVENTIONS[conv][1],
            "opts": dict(spec.get("opts", {})), "params": count_parameters(counted).total,
            "values": values}


def _check_options(args, device: torch.device) -> Optional[torch.dtype]:
    if args.runs < 1:
        raise BenchError(f"--runs {args.runs}: time at least one call")
    if args.warmup < 0:
        raise BenchError(f"--warmup {args.warmup} must be >= 0")
    if args.compile and args.warmup < 1:
        raise BenchError("--compile needs --warmup >= 1: the first call compiles, and timing it "
                         "would time the compiler")
    if args.compile and device.type == "cpu" and not shutil.which(os.environ.get("CXX", "g++")):
        raise BenchError("--compile on the CPU needs a C++ compiler for torch.compile's "
                         "generated kernels (none found: set CXX or install g++), or drop "
                         "--compile")
    if args.threads is not None and args.threads < 1:
        raise BenchError(f"--threads {args.threads} must be >= 1")
    if args.amp is None:
        return None
    name = args.amp if args.amp != "auto" else ("fp16" if device.type == "cuda" else "bf16")
    if name == "fp16" and device.type != "cuda":
        raise BenchError("--amp fp16 needs CUDA (CPU autocast in float16 falls back to slow "
                         "reference kernels); use --amp bf16 on the CPU")
    return _AMP_DTYPES[name]


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model (``/proc/cpuinfo``; ``platform`` elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def benchmark(model: torch.nn.Module, sizes: Sequence[Tuple[int, int]], batches: Sequence[int],
              runs: int = 20, warmup: int = 3, channels_last: bool = False,
              amp_dtype: Optional[torch.dtype] = None, compile: bool = False,
              memory: bool = True, log=None, label: str = "") -> List[dict]:
    """Time ``model`` at every (size, batch) on :func:`example_input`; one dict per case
    (``size``, ``batch``, ``latency_ms`` as :func:`latency_stats`, ``fps``, ``peak_memory_mb``,
    ``peak_memory_measure``, ``rss_delta_mb``). ``model`` is put in eval mode; pass it fused
    and on its device already. ``label`` prefixes the progress lines (the exit or budget)."""
    log = log or (lambda msg: None)
    model.eval()
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    call = model.predict_logits if hasattr(model, "predict_logits") else model
    timed = torch.compile(call) if compile else call
    keep = list(model.parameters()) + list(model.buffers())
    cases = [(s, b) for s in sizes for b in batches]
    results = []
    for k, ((h, w), batch) in enumerate(cases, 1):
        x = example_input(batch, h, w, device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                    else _null())
        tag = f"{label + ' ' if label else ''}[{k}/{len(cases)}] {h}x{w} batch {batch}"
        last = [time.perf_counter()]

        def progress(i, times, n=runs):
            if time.perf_counter() - last[0] > 5.0 or i == n:
                last[0] = time.perf_counter()
                log(f"{tag}: run {i}/{n}, median so far {statistics.median(times):.1f} ms")

        with torch.inference_mode(), autocast:
            t0 = time.perf_counter()
            for _ in range(warmup):
                timed(x)
            _sync(device)
            if warmup:
                log(f"{tag}: {warmup} warm-up call(s) took {time.perf_counter() - t0:.1f} s")
            times = _time_calls(lambda: timed(x), runs, device, progress)
            mem = _peak_memory(call, x, device, keep) if memory else {}
        results.append({"size": [h, w], "batch": batch, "latency_ms": latency_stats(times, batch),
                        "fps": batch * 1e3 / statistics.median(times), **mem})
    return results


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _peak_memory(call, x: torch.Tensor, device: torch.device, keep) -> dict:
    """One untimed eager call (see the module doc for what is measured)."""
    if device.type == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        call(x)
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        return {"peak_memory_mb": peak / 2 ** 20,
                "peak_memory_measure": "torch.cuda.max_memory_allocated - allocated before "
                                       "(weights, input excluded)", "rss_delta_mb": None}
    rss_before = _rss_kb("VmRSS")
    reset = _reset_peak_rss()
    with LiveTensorBytes(ignore=list(keep) + [x]) as mode:
        call(x)
    hwm = _rss_kb("VmHWM") if reset else None
    return {"peak_memory_mb": mode.peak / 2 ** 20,
            "peak_memory_measure": "peak bytes of live tensors the call created (activations; "
                                   "weights, input and kernel scratch excluded)",
            "rss_delta_mb": (hwm - rss_before) / 1024 if hwm is not None and rss_before else None}


def _fmt(v: float) -> str:
    """Two decimals from 1 up (109.07 GMACs, 553.21 ms), three significant digits below."""
    return f"{v:.2f}" if abs(v) >= 1 else f"{v:.3g}"


def format_table(results: List[dict], params: int, gmacs: Optional[Dict[str, float]] = None,
                 paper: Optional[dict] = None, key_column: Optional[str] = None) -> str:
    """The table ``dl_bench`` prints (one row per case; ``key_column`` ``"exit"`` or
    ``"budget"`` first when the rows are per exit / per budget). GMACs: the row's own
    ``gmacs``, else ``gmacs[size]``."""
    headers = ["size", "batch", "median ms", "IQR ms", "min-max ms", "FPS", "peak MB",
               "params", "GMACs/image (1e9)"]
    if key_column:
        headers.insert(0, key_column)
    if paper:
        headers.append(f"{paper['label']}")
    rows = []
    for r in results:
        lat, size = r["latency_ms"], "{}x{}".format(*r["size"])
        mem = r.get("peak_memory_mb")
        g = r.get("gmacs")
        if g is None and gmacs:
            g = gmacs.get(size)
        row = [size, r["batch"], _fmt(lat["median"]), f"{_fmt(lat['q25'])}-{_fmt(lat['q75'])}",
               f"{_fmt(lat['min'])}-{_fmt(lat['max'])}", _fmt(r["fps"]),
               _fmt(mem) if mem is not None else "-", f"{params:,}",
               _fmt(g) if g is not None else "-"]
        if key_column:
            row.insert(0, r.get("label", "-") if key_column == "budget" else r.get(key_column, "-"))
        if paper:
            row.append(_fmt(paper["values"][size]) if size in paper["values"] else "-")
        rows.append(row)
    return tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True)



def _variants(args, cfg, model, sizes) -> Tuple[Optional[str], List[Variant], Optional[int]]:
    """``(kind, variants, number of exits)``: per exit, per budget, or the model as built."""
    exits = parse_exits(args.exits) if args.exits is not None else []
    budgets = parse_budgets(args.budgets if args.budgets is not None else DEFAULT_BUDGETS)
    if args.exits is not None and not has_exits(cfg):
        where = playground.find_playground(args.playground)
        raise BenchError(f"--exits {args.exits}: the config of {where} has no MODEL.EXIT.STOP, "
                         "so its model has no exits that can stop; drop --exits (or run in a "
                         "playground of a family with exits, e.g. playground/Anytime/...)")
    if args.budgets is not None and not is_routing(model):
        raise BenchError(f"--budgets {args.budgets}: {type(model).__name__} is not a routing "
                         "model (its backbone has no force_gates); drop --budgets (or run in a "
                         "dynamic routing playground, e.g. playground/Dynamic/...)")
    if has_exits(cfg) and exits is not None:
        n = num_exits(model, min(sizes, key=lambda s: s[0] * s[1]))
        bad = [k for k in exits if k > n]
        if bad:
            raise BenchError(f"--exits {args.exits}: the model has {n} exits (1..{n}); "
                             f"there is no exit {bad[0]}")
        return "exits", exit_variants(args.playground, cfg, model, exits or range(1, n + 1)), n
    if is_routing(model) and budgets is not None:
        smallest = min(sizes, key=lambda s: s[0] * s[1])
        return "budgets", budget_variants(model, budgets, smallest), None
    n = num_exits(model, min(sizes, key=lambda s: s[0] * s[1])) if has_exits(cfg) else None
    return None, [Variant({}, "", lambda: contextlib.nullcontext(model))], n


def _count_gmacs(model, sizes, device) -> Dict[str, float]:
    return {f"{h}x{w}": flop_count(model, inputs=example_input(1, h, w, device),
                                   convention="gmac").total for h, w in sizes}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``dl_bench``; returns the exit status."""
    parser = build_parser()
    args = parse_tool_args(parser, argv)
    log = lambda msg: print(f"dl_bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        sizes, batches = parse_sizes(args.sizes), parse_batches(args.batch)
        if args.exits is not None:
            parse_exits(args.exits)
        if args.budgets is not None:
            parse_budgets(args.budgets)
        if args.threads is not None:
            if args.threads > (os.cpu_count() or 1):
                log(f"warning: --threads {args.threads} exceeds the {os.cpu_count()} CPU cores")
            torch.set_num_threads(args.threads)
        cfg, model = playground.build(args.playground, args.opts)
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
        amp_dtype = _check_options(args, device)
        source = load_weights(cfg, model)
        model.eval()
        if takes_batched_inputs(model, min(sizes, key=lambda s: s[0] * s[1])):
            log(f"{type(model).__name__} has no predict_logits: timing model(list of dicts), "
                "its normalisation and post-processing included")
            model = BatchedInputs(model).eval()
        kind, variants, n_exits = _variants(args, cfg, model, sizes)
    except (BenchError, playground.PlaygroundError, ConfigError, CheckpointReadError) as e:
        parser.exit(2, f"dl_bench: error: {e}\n")
    pc = count_parameters(model)
    gmacs, paper = {}, None
    if not args.no_cost:
        log("counting GMACs at each size (one forward each)")
        gmacs = _count_gmacs(model, sizes, device)
        paper = published_cost(args.playground, cfg, model, sizes)
    rows, fuse = [], None
    for variant in variants:
        with variant.enter() as v_model:
            v_gmacs = gmacs
            if variant.key and not args.no_cost:
                log(f"{variant.label}: counting GMACs at each size")
                v_gmacs = _count_gmacs(v_model, sizes, device)
            timed_model, v_fuse = v_model, None
            if args.fuse_bn:
                h, w = min(sizes, key=lambda s: s[0] * s[1])
                try:
                    timed_model, report = fuse_batch_norms(v_model, example_input(1, h, w, device))
                except FuseError as e:
                    which = f"{variant.label}: " if variant.label else ""
                    parser.exit(2, f"dl_bench: error: {which}{e}\n")
                v_fuse = {"folded": len(report.folded), "left": report.left,
                          "max_abs_diff": report.max_abs_diff}
                fuse = fuse or v_fuse
                log((variant.label + ": " if variant.label else "") + str(report))
            results = benchmark(timed_model, sizes, batches, runs=args.runs, warmup=args.warmup,
                                channels_last=args.channels_last, amp_dtype=amp_dtype,
                                compile=args.compile, memory=not args.no_memory, log=log,
                                label=variant.label)
        for r in results:
            row = {**variant.key, **r, "gmacs": v_gmacs.get("{}x{}".format(*r["size"]))}
            if variant.key:
                row["label"] = variant.label
                if v_fuse is not None:
                    row["fuse_bn"] = v_fuse
            rows.append(row)
    options = {"runs": args.runs, "warmup": args.warmup, "fuse_bn": args.fuse_bn,
               "channels_last": args.channels_last, "amp": str(amp_dtype).replace("torch.", "")
               if amp_dtype else None, "compile": args.compile, "inference_mode": True,
               "exits": args.exits, "budgets": args.budgets}
    threads, interop = torch.get_num_threads(), torch.get_num_interop_threads()
    batched = isinstance(model, BatchedInputs)
    name = type(model.model if batched else model).__name__
    timed_call = "model(list of dicts)" if batched else "predict_logits"
    header = [f"Model: {name} ({playground.find_playground(args.playground)}), "
              f"weights: {source}",
              f"Device: {_describe_device(device)} [{device_name(device)}]; torch "
              f"{torch.__version__}; timed: {timed_call} under torch.inference_mode, "
              + ("CUDA events" if device.type == "cuda" else "time.perf_counter"),
              f"Threads: {threads} (torch.get_num_threads()), {interop} inter-op",
              "Options: " + ", ".join(f"{k}={v}" for k, v in options.items()),
              f"Parameters: {pc.total:,} ({pc.trainable:,} trainable)"]
    if kind == "exits":
        header.append(f"Rows per exit ({n_exits} exits): exit K = the model built with "
                      "MODEL.EXIT.STOP K (dl_test --exit K), timed to its last logits")
    elif kind == "budgets":
        header.append("Rows per budget: learned = the gates as built; F% open = that share of "
                      f"the routes forced open (seeded order {ROUTE_ORDER_SEED}, nested), the "
                      "rest closed, gate networks skipped")
    if paper:
        header.append(f"{paper['label']}: {paper['unit']}, on the copy with "
                      + ", ".join(f"{k}={v!r}" for k, v in paper["opts"].items())
                      + f" ({paper['params']:,} parameters)")
    if rows and rows[0].get("peak_memory_measure"):
        header.append(f"Peak MB: {rows[0]['peak_memory_measure']}")
    print("\n".join(header))
    key_column = {"exits": "exit", "budgets": "budget"}.get(kind)
    print(format_table(rows, pc.total, gmacs, paper if not kind else None, key_column))
    if args.json:
        out = {"playground": playground.find_playground(args.playground),
               "model": name, "input": "batched_inputs" if batched else "tensor",
               "weights": source,
               "device": _describe_device(device), "device_name": device_name(device),
               "torch": torch.__version__, "threads": threads, "interop_threads": interop,
               "options": options, "params": pc.total, "params_trainable": pc.trainable,
               "gmacs": gmacs, "published_cost": paper, "fuse_bn": fuse, "variants": kind,
               "num_exits": n_exits, "rows": rows, "results": rows}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with atomic_write(args.json, "w") as f:
            json.dump(out, f, indent=2)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

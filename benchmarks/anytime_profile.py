"""Where ADP-C's time goes: per segment (between exits), RH and ADP-C broken into categories.

Same models, input and forced masks as ``benchmarks/anytime.py`` (``pair``, ``coherent_masks``:
80% / 60% / 40% computed after exits 1-3), batch 1, eval, no_grad, channels-last. Every aten /
dl_lib op a forward dispatches is timed with the calling thread's CPU clock
(``time.thread_time_ns`` around the op in a ``TorchDispatchMode``; with ``--threads 1`` all of an
op's work is on that thread) and put in a category from the op's name and from where it ran
(which ``AnytimeConv2d`` path, which ``SegmentMasks`` method, fuse layer or exit head):

* ``conv sparse``: the masked convolution kernel (``dl_lib::masked_conv2d``);
* ``conv dense fallback``: a masked conv that the break-even policy ran densely;
* ``conv unmasked``: convs without a mask (RH: every conv; ADP-C: stem, layer1, exit 1 and
  convs whose mask is full), split by place (backbone, fuse, exit head);
* ``fill confident``, ``ring interpolation``: the folded norm's value at confident pixels and the
  sparse ring product (with its ``index_select`` / ``addr`` / ``index_copy_``);
* ``mask bookkeeping``: ops inside ``SegmentMasks`` (resizes, ring, window, CSR pattern, counts)
  and the mask-from-logits ops;
* ``bn``, ``relu``, ``add``, ``upsample`` (fuse / concat / exit), ``layout`` (``copy_``,
  ``clone``, ``contiguous``), ``other`` (the rest, by op name with ``--ops``);
* ``python``: the segment's untimed-run thread time (``_ExitTimer`` laps of plain forwards,
  medians) minus the traced ops' sum, i.e. everything between ops (module calls, hooks, policy
  decisions); the tracer's own cost is outside both.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/anytime_profile.py --models w18 w48 \
        --size 512x1024 --threads 1 --runs 2
"""
import argparse
import collections
import contextlib
import os
import statistics
import sys
import time
from typing import Dict, List

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from anytime import coherent_masks, pair  # noqa: E402
from dl_lib.layers.masked_conv_policy import input_layout, policy_device, use_dense  # noqa
from dl_lib.modeling.anytime import AnytimeConv2d  # noqa: E402
from dl_lib.modeling.anytime.anytime import _ExitTimer  # noqa: E402
from dl_lib.modeling.anytime.confidence import SegmentMasks, current_state  # noqa: E402
from dl_lib.modeling.backbone.hrnet import HighResolutionModule  # noqa: E402

_CONTEXT: List[str] = []  # innermost last: "conv:<kind>", "masks", "fuse", "exit"
_SEGMENT = [1]

LAYOUT_OPS = ("copy_", "clone", "contiguous", "_to_copy", "empty_like")
RING_OPS = ("_sparse_csr", "sparse_csr", "sparse_compressed", "addmm", "mm", "addr",
            "index_copy", "index_select", "index_add", "new_zeros", "zeros", "rsub", "div",
            "clamp_min")
# metadata-only ops (no data moved): their time is the dispatcher's per-op cost
VIEW_OPS = ("view", "permute", "reshape", "_reshape_alias", "expand", "select", "slice",
            "squeeze", "unsqueeze", "t", "alias", "as_strided", "detach", "_unsafe_view")


def _category(op: str) -> str:
    if op.startswith("aten::") and op[6:] in VIEW_OPS:
        return "views (metadata ops)"
    where = _CONTEXT[-1] if _CONTEXT else ""
    places = [c for c in _CONTEXT if c in ("exit", "fuse", "branch")]
    place = places[-1] if places else "backbone"
    if where == "masks" or "masks" in _CONTEXT:
        return "mask bookkeeping"
    if where.startswith("conv:"):
        kind = where[5:]
        if op.startswith("dl_lib::masked_conv2d"):
            return f"conv sparse ({place})"
        if op in ("aten::convolution", "aten::mkldnn_convolution", "aten::_convolution"):
            if kind == "dense fallback":
                return f"conv dense fallback ({place})"
            return f"conv unmasked ({place})"
        if op == "aten::index_put_" or op == "aten::where":
            return "fill confident"
        if any(op.startswith("aten::" + r) for r in RING_OPS):
            return "ring interpolation"
        if op in ("aten::count_nonzero", "aten::ne", "aten::all", "aten::nonzero"):
            return "mask bookkeeping"
        if op == "aten::mul":
            return "conv dense fallback (mask multiply)"
        if any(op == "aten::" + r for r in LAYOUT_OPS):
            return "layout"
        return "conv other: " + op
    if "_native_batch_norm" in op or "batch_norm" in op:
        return "bn"
    if op.startswith("aten::relu"):
        return "relu"
    if op.startswith("aten::add"):
        return "add"
    if op.startswith("aten::upsample"):
        return f"upsample ({place if place in ('exit', 'fuse') else 'concat'})"
    if op in ("aten::_softmax", "aten::max", "aten::le", "aten::ge", "aten::_to_copy"):
        return "mask bookkeeping" if op != "aten::_to_copy" else "layout"
    if any(op == "aten::" + r for r in LAYOUT_OPS):
        return "layout"
    if op == "aten::cat":
        return "concat"
    if op == "aten::where":
        return "copy aggregation"
    if op.startswith("aten::avg_pool"):
        return "pool (exit)"
    return "other: " + op


class OpTimer(TorchDispatchMode):
    """Thread-clock ns per (segment, category), and per op name with ``ops``."""

    def __init__(self, ops: bool = False):
        super().__init__()
        self.ops = ops
        self.ns: Dict[tuple, int] = collections.defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        t = time.thread_time_ns()
        out = func(*args, **(kwargs or {}))
        category = _category(name)
        if self.ops:
            category += " / " + name
        self.ns[(_SEGMENT[0], category)] += time.thread_time_ns() - t
        return out


def _push(label):
    def hook(*_):  # a hook's return value would replace the input / output
        _CONTEXT.append(label)
    return hook


def _pop(*_):
    _CONTEXT.pop()


def _conv_kind(conv: AnytimeConv2d, x: torch.Tensor) -> str:
    """Which path ``AnytimeConv2d.forward`` is about to take (mirrors its conditions)."""
    state = current_state()
    masks = None if state is None else state.masks
    size = conv._output_size(x)
    if masks is None or masks.all_computed(size):
        return "unmasked"
    weight = conv.weight
    if use_dense(weight, conv.groups, masks.density(size), policy_device(x.device), False,
                 input_layout(x)):
        return "dense fallback"
    return "sparse"


@contextlib.contextmanager
def _labelled(model):
    """Context labels for the tracer: conv paths, SegmentMasks methods, fuse layers, exits,
    segments (patched on the classes / this model only while profiling)."""
    saved = {}

    def patch(owner, name, wrapper):
        saved[(owner, name)] = getattr(owner, name)
        setattr(owner, name, wrapper(getattr(owner, name)))

    def with_label(label):
        def wrap(fn):
            def inner(*a, **k):
                _CONTEXT.append(label)
                try:
                    return fn(*a, **k)
                finally:
                    _CONTEXT.pop()
            return inner
        return wrap

    def conv_forward(fn):
        def inner(self, x):
            _CONTEXT.append("masks")
            try:
                kind = _conv_kind(self, x)
            finally:
                _CONTEXT.pop()
            _CONTEXT.append("conv:" + kind)
            try:
                return fn(self, x)
            finally:
                _CONTEXT.pop()
        return inner

    patch(AnytimeConv2d, "forward", conv_forward)
    for name in ("mask", "all_computed", "ring", "window", "density", "ring_index",
                 "confident_rows", "mask_float", "computed_fraction", "__init__",
                 "_set_uncertain"):
        patch(SegmentMasks, name, with_label("masks"))

    patch(HighResolutionModule, "forward", with_label("fuse"))  # branches: "branch" below

    def segment(k, fn):
        def inner(*a, **kw):
            _SEGMENT[0] = k
            return fn(*a, **kw)
        return inner

    backbone = model.backbone
    backbone.forward_stem = segment(1, type(backbone).forward_stem.__get__(backbone))
    forward_stage = type(backbone).forward_stage.__get__(backbone)
    backbone.forward_stage = lambda k, f: segment(k, forward_stage)(k, f)
    exits = [model.head.exit(k) for k in range(1, 5)]
    hooks = []
    for m in exits:
        hooks.append(m.register_forward_pre_hook(_push("exit")))
        hooks.append(m.register_forward_hook(_pop))
    for module in model.modules():
        if isinstance(module, HighResolutionModule):
            for branch in module.branches:
                hooks.append(branch.register_forward_pre_hook(_push("branch")))
                hooks.append(branch.register_forward_hook(_pop))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        del backbone.forward_stem, backbone.forward_stage
        for (owner, name), fn in saved.items():
            setattr(owner, name, fn)


def _segment_ms(model, x, runs):
    """Median thread-clock ms of each segment of plain (untraced) forwards."""
    laps = []
    for _ in range(runs):
        ms = model.forward_exits(x, report=True)[1]["ms"]
        laps.append([b - a for a, b in zip([0.0] + ms[:-1], ms)])
    return [statistics.median(v[k] for v in laps) for k in range(4)]


def profile(name: str, size: str, runs: int, seed: int = 0, ops: bool = False) -> dict:
    rh, adpc = pair(name, seed)
    h, w = (int(v) for v in size.split("x"))
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))
    x = x.contiguous(memory_format=torch.channels_last)
    adpc.forced_masks = coherent_masks(h, w)
    out = {}
    with torch.no_grad():
        for side, model in (("RH", rh), ("ADP-C", adpc)):
            model.forward_exits(x, report=True)  # warm-up (caches, output pool)
        for side, model in (("RH", rh), ("ADP-C", adpc)):
            total = _segment_ms(model, x, runs)
            timer = OpTimer(ops)
            with _labelled(model):
                for _ in range(runs):
                    with timer:
                        model.forward_exits(x, report=True)
            ops = {k: v / 1e6 / runs for k, v in timer.ns.items()}
            out[side] = dict(total=total, ops=ops)
    return out


def print_tables(name: str, size: str, result: dict, top: int) -> None:
    cats = sorted({c for side in result.values() for (_, c) in side["ops"]})
    for k in range(1, 5):
        rows = []
        for c in cats:
            v = [result[s]["ops"].get((k, c), 0.0) for s in ("RH", "ADP-C")]
            if max(v) >= 0.5:
                rows.append((c, v))
        rows.sort(key=lambda r: -max(r[1]))
        totals = [result[s]["total"][k - 1] for s in ("RH", "ADP-C")]
        opsum = [sum(v for (seg, _), v in result[s]["ops"].items() if seg == k)
                 for s in ("RH", "ADP-C")]
        print(f"\n{name} {size}, segment {k} (" + ("stem + exit 1" if k == 1 else
              f"exit {k - 1} -> {k}") + f"): RH {totals[0]:.0f} ms, ADP-C {totals[1]:.0f} ms")
        print("| category | RH ms | ADP-C ms | ADP-C - RH |")
        print("|---|---|---|---|")
        for c, v in rows[:top]:
            print(f"| {c} | {v[0]:.1f} | {v[1]:.1f} | {v[1] - v[0]:+.1f} |")
        py = [t - o for t, o in zip(totals, opsum)]
        print(f"| python (total - ops) | {py[0]:.1f} | {py[1]:.1f} | {py[1] - py[0]:+.1f} |")
        print(f"| **total** | {totals[0]:.0f} | {totals[1]:.0f} | {totals[1] - totals[0]:+.0f} |",
              flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["w18", "w48"], choices=["w18", "w48"])
    p.add_argument("--size", default="512x1024")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--top", type=int, default=30, help="rows per table")
    p.add_argument("--ops", action="store_true", help="split every category by op name")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    _ExitTimer._now = lambda self: time.thread_time()
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} threads, thread clock, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    for name in args.models:
        print_tables(name, args.size, profile(name, args.size, args.runs, ops=args.ops), args.top)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()

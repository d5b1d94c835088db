#!/usr/bin/env python
"""Density sweep of dl_lib's sparse masked convolution against the dense convolution.

For every layer (HRNet-W18/W48 branch convs at Cityscapes scale, routing-supernet cells: 3x3 with
18-512 channels, depthwise 3x3, 1x1, stride 1 and 2), mask kind (``random`` pixels, random
``block8`` tiles, ``boundary`` bands; see bench_masks.py) and pixel density d, it times

  * dense:  ``F.conv2d`` on the same input, in the same memory format (channels_last by default);
  * masked: the public ``dl_lib.layers.masked_conv2d`` with any dense fallback disabled, i.e. the
    sparse kernel itself (index building included: that is what a layer pays);
  * module: ``dl_lib.layers.MaskedConv2d`` with its density fallback, at d = 1.0 only (it should
    cost about the dense time there);
  * keep (``--keep``, fwd): the in-place variant ``masked_conv2d(..., out=buf)``, which leaves the
    inactive positions of ``buf`` untouched, paired with the zero-filling call (keep / masked);

and reports speedup = dense / masked, the ideal 1/d and the ratio speedup/ideal. Times are
medians after warm-up, dense and masked calls alternating (so the drift of a shared machine
cancels in the ratio): wall clock with a fixed thread count on CPU (or, ``--clock thread``, the
calling thread's CPU time, for ``--threads 1`` on a loaded machine), CUDA events on GPU
(cudnn.benchmark on, TF32 as torch's defaults). Forward and forward+backward are reported as
separate rows (``--mode``). ``--memory-format both`` measures every cell on a channels_last and
on a contiguous (NCHW) input, each against dense on that same input (row field ``layout``).

Outputs in ``--out`` (default output/benchmarks/): masked_conv_<device>.csv / .json (all rows and
the derived break-even densities) and masked_conv_<device>.png (speedup vs density per layer with
the ideal 1/d and the 0.8 x ideal target lines). ``--write-policy`` stores the measured
break-even densities in dl_lib's dense-fallback policy (see ``write_policy``).

Examples::

    python benchmarks/masked_conv.py --device cpu --threads 2          # full CPU sweep
    python benchmarks/masked_conv.py --quick                           # a few rows, ~1 min
    python benchmarks/masked_conv.py --device cuda --dtype float16
    python benchmarks/masked_conv.py --memory-format both --kinds random --mode fwd --keep
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import json
import math
import os
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_masks import MASK_KINDS, block_density, make_mask  # noqa: E402

from dl_lib.layers import masked_conv_policy as policy  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DENSITIES = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
TARGET_FRACTION = 0.8  # acceptance target: speedup >= 0.8 x ideal


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One convolution; ``scale`` is the input resolution as a fraction of the image size."""

    name: str
    kind: str  # policy key: "3x3", "3x3_s2", "dw3x3", "1x1"
    cin: int
    cout: int
    k: int
    stride: int
    groups: int
    scale: int  # input resolution = image / scale

    @property
    def padding(self) -> int:
        return self.k // 2


# HRNet branches run at 1/4, 1/8, 1/16, 1/32 with W, 2W, 4W, 8W channels (W = 18 or 48); the
# stride-2 3x3 convs build the transitions/fuse paths. The routing supernet (Dynamic Routing)
# cells use 64..512 channels at 1/4..1/32, separable (depthwise 3x3 + 1x1) convs.
LAYERS = (
    LayerSpec("hrnet_w18_b1_3x3", "3x3", 18, 18, 3, 1, 1, 4),
    LayerSpec("hrnet_w48_b1_3x3", "3x3", 48, 48, 3, 1, 1, 4),
    LayerSpec("hrnet_w48_b2_3x3", "3x3", 96, 96, 3, 1, 1, 8),
    LayerSpec("hrnet_w48_b3_3x3", "3x3", 192, 192, 3, 1, 1, 16),
    LayerSpec("hrnet_w48_b4_3x3", "3x3", 384, 384, 3, 1, 1, 32),
    LayerSpec("routing_l4_3x3", "3x3", 512, 512, 3, 1, 1, 32),
    LayerSpec("hrnet_w48_down_3x3s2", "3x3_s2", 48, 96, 3, 2, 1, 4),
    LayerSpec("routing_down_3x3s2", "3x3_s2", 128, 256, 3, 2, 1, 8),
    LayerSpec("routing_dw3x3_c128", "dw3x3", 128, 128, 3, 1, 128, 8),
    LayerSpec("hrnet_w48_dw3x3_c384", "dw3x3", 384, 384, 3, 1, 384, 16),
    LayerSpec("routing_1x1_256to64", "1x1", 256, 64, 1, 1, 1, 8),
    LayerSpec("hrnet_w48_fuse_1x1_96to48", "1x1", 96, 48, 1, 1, 1, 4),
)
QUICK_LAYERS = ("hrnet_w48_b1_3x3", "hrnet_w48_dw3x3_c384", "routing_1x1_256to64")
QUICK_DENSITIES = (0.1, 0.5, 1.0)
QUICK_KINDS = ("random", "boundary")


# ------------------------------------------------------------------------------------------------
# The code under test: resolved at run time so the benchmark states exactly what it timed.


class MaskedImpl:
    """Callables for the sparse path (no fallback) and the module with its fallback."""

    def __init__(self) -> None:
        self.functional: Callable | None = None
        self.functional_kwargs: dict = {}
        self.description = ""
        self.module_cls = None
        try:
            from dl_lib import layers

            fn = getattr(layers, "masked_conv2d", None)
            self.module_cls = getattr(layers, "MaskedConv2d", None)
        except ImportError as exc:  # the package itself failed: report and use the raw op
            print(f"warning: dl_lib.layers could not be imported ({exc})", file=sys.stderr)
            fn = None
        if fn is not None:
            self.functional = fn
            params = inspect.signature(fn).parameters
            # Disable any dense fallback so the sparse kernel itself is timed.
            for name, value in (
                ("fallback", False),
                ("dense_fallback", False),
                ("allow_fallback", False),
                ("use_fallback", False),
                ("fallback_density", None),
                ("dense_threshold", None),
            ):
                if name in params:
                    self.functional_kwargs[name] = value
            self.description = "dl_lib.layers.masked_conv2d" + (
                f"({', '.join(f'{k}={v}' for k, v in self.functional_kwargs.items())})"
                if self.functional_kwargs
                else ""
            )
        else:
            import dl_lib._ext  # noqa: F401  (loads dl_lib._C, registering torch.ops.dl_lib)

            if not hasattr(torch.ops.dl_lib, "masked_conv2d"):
                raise SystemExit(
                    "neither dl_lib.layers.masked_conv2d nor torch.ops.dl_lib.masked_conv2d is "
                    "available: build the extension with `make build`"
                )
            self.description = "torch.ops.dl_lib.masked_conv2d (dl_lib.layers.masked_conv2d missing)"

    def sparse(self, x, w, b, mask, spec: LayerSpec):
        if self.functional is not None:
            return self.functional(
                x, w, b, mask, stride=spec.stride, padding=spec.padding, dilation=1,
                groups=spec.groups, **self.functional_kwargs,
            )
        p, s = spec.padding, spec.stride
        return torch.ops.dl_lib.masked_conv2d(x, w, b, mask, s, s, p, p, 1, 1, spec.groups)

    def keep(self, x, w, b, mask, spec: LayerSpec, out):
        """The in-place ("keep") variant into ``out``, no fallback."""
        return self.functional(
            x, w, b, mask, stride=spec.stride, padding=spec.padding, dilation=1,
            groups=spec.groups, out=out, **self.functional_kwargs,
        )

    @property
    def has_keep(self) -> bool:
        return self.functional is not None and \
            "out" in inspect.signature(self.functional).parameters

    def make_module(self, spec: LayerSpec, w, b):
        """MaskedConv2d with the benchmark's weights and its default fallback, or None."""
        if self.module_cls is None:
            return None
        try:
            mod = self.module_cls(
                spec.cin, spec.cout, spec.k, stride=spec.stride, padding=spec.padding,
                groups=spec.groups, bias=b is not None,
            )
        except TypeError as exc:
            print(f"warning: cannot build MaskedConv2d for {spec.name}: {exc}", file=sys.stderr)
            return None
        with torch.no_grad():
            mod.weight.copy_(w)
            if b is not None:
                mod.bias.copy_(b)
        return mod.to(device=w.device, dtype=w.dtype)


# ------------------------------------------------------------------------------------------------
# Timing


class Timer:
    """Median times of callables after warm-up (CUDA events on GPU, perf_counter on CPU).

    ``pair`` alternates the two callables call by call, so slow drifts of a shared machine (other
    jobs starting or stopping) hit dense and masked alike and cancel in the per-pair ratio.
    """

    def __init__(self, device: torch.device, min_time: float, min_reps: int, warmup: int,
                 clock: str = "wall"):
        self.device = device
        self.min_time = min_time
        self.min_reps = min_reps
        self.warmup = warmup
        # "thread": CPU time of the calling thread (time.thread_time), which other jobs on a
        # loaded machine do not inflate; meaningful with --threads 1, where every kernel (ours
        # and oneDNN's) runs on the calling thread.
        self.clock = time.thread_time if clock == "thread" else time.perf_counter

    def _once(self, fn: Callable[[], object]) -> float:
        if self.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = self.clock()
        fn()
        return self.clock() - t0

    def pair(self, fn_a: Callable[[], object], fn_b: Callable[[], object]) -> tuple[list, list]:
        """Alternating samples of fn_a and fn_b (seconds), after warm-up."""
        for _ in range(self.warmup):
            fn_a()
            fn_b()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        times_a, times_b = [], []
        budget_start = time.perf_counter()
        while len(times_a) < self.min_reps or time.perf_counter() - budget_start < 2 * self.min_time:
            times_a.append(self._once(fn_a))
            times_b.append(self._once(fn_b))
            if len(times_a) >= 200:
                break
        return times_a, times_b

    def __call__(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        times = []
        budget_start = time.perf_counter()
        while len(times) < self.min_reps or time.perf_counter() - budget_start < self.min_time:
            times.append(self._once(fn))
            if len(times) >= 200:
                break
        return statistics.median(times)


def make_step(forward: Callable[[], torch.Tensor], mode: str, grad_out: torch.Tensor, inputs):
    """fwd: forward only (no autograd graph); fwdbwd: forward + torch.autograd.grad."""
    if mode == "fwd":
        def step():
            with torch.no_grad():
                return forward()
    else:
        def step():
            out = forward()
            return torch.autograd.grad(out, inputs, grad_out)
    return step


# ------------------------------------------------------------------------------------------------
# Sweep


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-size must look like 512x1024, got {text!r}")
    return h, w


def layer_tensors(spec: LayerSpec, image: tuple[int, int], batch: int, device, dtype, fmt, gen):
    h, w = image[0] // spec.scale, image[1] // spec.scale
    x = torch.randn(batch, spec.cin, h, w, generator=gen).to(device=device, dtype=dtype)
    x = x.contiguous(memory_format=fmt)
    wgt = torch.randn(spec.cout, spec.cin // spec.groups, spec.k, spec.k, generator=gen)
    wgt = (wgt / math.sqrt(wgt[0].numel())).to(device=device, dtype=dtype)
    bias = torch.randn(spec.cout, generator=gen).to(device=device, dtype=dtype)
    ho = (h + 2 * spec.padding - spec.k) // spec.stride + 1
    wo = (w + 2 * spec.padding - spec.k) // spec.stride + 1
    return x, wgt, bias, (ho, wo)


def run_sweep(args) -> list[dict]:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    layouts = {"channels_last": ("nhwc",), "contiguous": ("nchw",),
               "both": ("nhwc", "nchw")}[args.memory_format]
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cudnn.benchmark = True
    impl = MaskedImpl()
    if args.keep and not impl.has_keep:
        raise SystemExit("--keep: dl_lib.layers.masked_conv2d has no out= argument")
    modes = ("fwd", "fwdbwd") if args.mode == "both" else (args.mode,)
    layers = [l for l in LAYERS if not args.layers or any(s in l.name for s in args.layers)]
    if args.quick:
        layers = [l for l in layers if l.name in QUICK_LAYERS]
    densities = QUICK_DENSITIES if args.quick else args.densities
    kinds = QUICK_KINDS if args.quick else args.kinds
    print(f"# masked path: {impl.description}")
    print(f"# device={device} (policy key {policy.policy_device(device)}) dtype={args.dtype} "
          f"threads={torch.get_num_threads()} clock={args.clock} "
          f"input={args.input_size[0]}x{args.input_size[1]} batch={args.batch} "
          f"format={args.memory_format} modes={','.join(modes)}")

    # Every cell (layer x mode x mask kind x density) is visited once per round, so that the slow
    # spells of a shared VM (seconds long; they changed dense depthwise times by 2-3x between
    # neighbouring cells) are spread over all cells instead of deciding a few.
    cells = []
    floors: dict = {}
    gen = torch.Generator().manual_seed(args.seed)
    for spec, layout in [(spec, layout) for spec in layers for layout in layouts]:
        # Both layouts of a layer hold the same values (the generator is re-seeded per layer).
        fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        if layout == layouts[0]:
            layer_seed = int(torch.randint(0, 2**31, (1,), generator=gen))
        gen_layer = torch.Generator().manual_seed(layer_seed)
        x, wgt, bias, (ho, wo) = layer_tensors(
            spec, args.input_size, args.batch, device, dtype, fmt, gen_layer
        )
        grad_out = torch.randn(args.batch, spec.cout, ho, wo, generator=gen_layer).to(
            device=device, dtype=dtype).contiguous(memory_format=fmt)
        module = impl.make_module(spec, wgt, bias)
        for mode in modes:
            xg = x.detach().requires_grad_(mode == "fwdbwd")
            wg = wgt.detach().requires_grad_(mode == "fwdbwd")
            bg = bias.detach().requires_grad_(mode == "fwdbwd")
            inputs = (xg, wg, bg)

            def dense(xg=xg, wg=wg, bg=bg, spec=spec):
                return F.conv2d(xg, wg, bg, spec.stride, spec.padding, 1, spec.groups)

            dense_step = make_step(dense, mode, grad_out, inputs)
            if mode == "fwd":
                # An all-zero mask: the masked call then only writes its zeros, the floor of what
                # any mask costs on this layer (the output is dense whatever the density).
                empty = torch.zeros(args.batch, 1, ho, wo, dtype=torch.bool, device=device)

                def write_only(mask=empty, xg=xg, wg=wg, bg=bg, spec=spec):
                    return impl.sparse(xg, wg, bg, mask, spec)

                floors[(spec.name, layout)] = dict(dense=dense_step,
                                         empty=make_step(write_only, mode, grad_out, inputs))
            for kind in kinds:
                for d in densities:
                    mask = make_mask(kind, args.batch, ho, wo, d, gen_layer).to(device)

                    def masked(mask=mask, xg=xg, wg=wg, bg=bg, spec=spec):
                        return impl.sparse(xg, wg, bg, mask, spec)

                    module_step = None
                    if module is not None and d >= 1.0:
                        mparams = tuple(module.parameters())
                        mod_inputs = (xg, *mparams) if mode == "fwdbwd" else inputs

                        def run_module(mask=mask, module=module, xg=xg):
                            return module(xg, mask)

                        module_step = make_step(run_module, mode, grad_out, mod_inputs)
                    keep_step = None
                    if args.keep and mode == "fwd":
                        # Output-shaped, in the input's format; its values do not matter.
                        buf = torch.empty_like(grad_out)

                        def run_keep(mask=mask, xg=xg, wg=wg, bg=bg, spec=spec, buf=buf):
                            return impl.keep(xg, wg, bg, mask, spec, buf)

                        keep_step = make_step(run_keep, mode, grad_out, inputs)
                    cells.append(dict(
                        spec=spec, layout=layout, mode=mode, kind=kind, density=d, mask=mask,
                        keep=keep_step, keep_s=[], keep_over_masked=[],
                        in_hw=(x.shape[2], x.shape[3]), dense=dense_step,
                        masked=make_step(masked, mode, grad_out, inputs), module=module_step,
                        dense_s=[], masked_s=[], module_s=float("nan"),
                        module_vs_dense=float("nan")))
    rounds = max(1, args.rounds)
    full_timer = Timer(device, args.min_time, args.min_reps, args.warmup, args.clock)
    round_timer = Timer(device, args.min_time / rounds, max(1, math.ceil(args.min_reps / rounds)),
                        args.warmup, args.clock)
    t0 = time.perf_counter()
    for r in range(rounds):
        for i, cell in enumerate(cells):
            t_dense, t_masked = round_timer.pair(cell["dense"], cell["masked"])
            cell["dense_s"] += t_dense
            cell["masked_s"] += t_masked
            if cell["keep"] is not None:
                # Paired with the zero-filling call: keep / masked is what skipping the zeros saves.
                t_zero, t_keep = round_timer.pair(cell["masked"], cell["keep"])
                cell["keep_s"] += t_keep
                cell["keep_over_masked"] += [k / z for z, k in zip(t_zero, t_keep)]
            if r == rounds - 1 and cell["module"] is not None:
                try:
                    # Paired with dense as well (the fallback's cost is a ratio to dense), in
                    # one go with the whole time budget: a module/dense ratio from 3 pairs of a
                    # 25 ms layer was off by up to 14 %.
                    t_d, t_m = full_timer.pair(cell["dense"], cell["module"])
                    cell["module_s"] = statistics.median(t_m)
                    cell["module_vs_dense"] = statistics.median(m / d for d, m in zip(t_d, t_m))
                except Exception as exc:  # report, keep sweeping
                    print(f"warning: MaskedConv2d failed on {cell['spec'].name}: {exc}",
                          file=sys.stderr)
            last = i + 1 == len(cells) or (cells[i + 1]["spec"], cells[i + 1]["layout"]) != (
                cell["spec"], cell["layout"])
            floor = floors.get((cell["spec"].name, cell["layout"]))
            if last and r == rounds - 1 and floor is not None:
                t_d, t_e = full_timer.pair(floor["dense"], floor["empty"])
                floor["ms"] = statistics.median(t_e) * 1e3
                floor["speedup"] = statistics.median(d / e for d, e in zip(t_d, t_e))
            if last:
                print(f"# round {r + 1}/{rounds}: {cell['spec'].name} ({cell['layout']}) done "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)

    rows = []
    for cell in cells:
        spec, mask = cell["spec"], cell["mask"]
        pix = float(mask.float().mean())
        t_dense = statistics.median(cell["dense_s"])
        t_masked = statistics.median(cell["masked_s"])
        # The ratio of each dense call to the masked call right after it, then the median: a
        # pair shares the machine's state of that moment.
        speedup = statistics.median(a / b for a, b in zip(cell["dense_s"], cell["masked_s"]))
        ideal = 1.0 / max(pix, 1e-9)
        row = dict(
            layer=spec.name, layer_kind=spec.kind,
            policy_key="/".join(policy_key(spec)), cin=spec.cin, cout=spec.cout,
            k=spec.k, stride=spec.stride, groups=spec.groups,
            in_h=cell["in_hw"][0], in_w=cell["in_hw"][1], layout=cell["layout"],
            mode=cell["mode"], mask=cell["kind"],
            density=cell["density"], pixel_density=pix, block8_density=block_density(mask.cpu()),
            dense_ms=t_dense * 1e3, masked_ms=t_masked * 1e3,
            module_ms=cell["module_s"] * 1e3, module_vs_dense=cell["module_vs_dense"],
            speedup=speedup, ideal=ideal,
            ratio=speedup / ideal, pairs=len(cell["dense_s"]),
            keep_ms=statistics.median(cell["keep_s"]) * 1e3 if cell["keep_s"] else float("nan"),
            keep_over_masked=(statistics.median(cell["keep_over_masked"])
                              if cell["keep_over_masked"] else float("nan")),
        )
        floor = floors.get((spec.name, cell["layout"]), {}) if cell["mode"] == "fwd" else {}
        row["empty_mask_ms"] = floor.get("ms", float("nan"))
        row["max_speedup"] = floor.get("speedup", float("nan"))
        rows.append(row)
        print_row(row, header=len(rows) == 1)
    return rows


COLUMNS = (
    ("layer", "{}"), ("table", "{}"), ("mask", "{}"), ("density", "{:.2f}"),
    ("block8_density", "{:.2f}"), ("dense_ms", "{:.3f}"), ("masked_ms", "{:.3f}"),
    ("module_ms", "{:.3f}"), ("module_vs_dense", "{:.2f}"), ("speedup", "{:.2f}"),
    ("ideal", "{:.1f}"), ("ratio", "{:.2f}"), ("keep_over_masked", "{:.2f}"),
)
HEADERS = ("layer", "mode", "mask", "d", "d_b8", "dense ms", "masked ms", "module ms",
           "module/dense", "speedup", "ideal", "speedup/ideal", "keep/masked")
WIDTHS = (26, 11, 8, 5, 5, 9, 9, 9, 12, 7, 6, 13, 11)


def table_label(row: dict) -> str:
    """Mode, plus "/nchw" for rows measured on contiguous inputs (rows of older runs have no
    layout: channels_last)."""
    return row["mode"] if row.get("layout", "nhwc") == "nhwc" else f"{row['mode']}/nchw"


def _fmt(row, key, spec):
    value = table_label(row) if key == "table" else row.get(key, float("nan"))
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return spec.format(value)


def print_row(row: dict, header: bool = False) -> None:
    """Streams one table row as soon as it is measured (long sweeps show progress)."""
    if header:
        print(" ".join(h.rjust(w) if i > 2 else h.ljust(w)
                       for i, (h, w) in enumerate(zip(HEADERS, WIDTHS))))
    cells = [_fmt(row, key, spec) for key, spec in COLUMNS]
    print(" ".join(c.rjust(w) if i > 2 else c.ljust(w)
                   for i, (c, w) in enumerate(zip(cells, WIDTHS))), flush=True)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row, k, s) for k, s in COLUMNS) + " |")
    return "\n".join(lines)


def pivot_tables(rows: list[dict]) -> str:
    """Markdown: per mode, speedup (and speedup/ideal) for every layer x mask kind x density."""
    out = []
    for mode in dict.fromkeys(table_label(r) for r in rows):
        rs = [r for r in rows if table_label(r) == mode]
        dens = sorted({r["density"] for r in rs})
        out.append(f"**{mode}**: speedup over dense (speedup / ideal in parentheses)\n")
        out.append("| layer | mask | dense ms | " + " | ".join(f"d={d:g}" for d in dens) + " |")
        out.append("|---|---|---|" + "---|" * len(dens))
        for layer in dict.fromkeys(r["layer"] for r in rs):
            for kind in dict.fromkeys(r["mask"] for r in rs):
                cells = {r["density"]: r for r in rs if r["layer"] == layer and r["mask"] == kind}
                if not cells:
                    continue
                dense_ms = statistics.median(r["dense_ms"] for r in cells.values())
                vals = [f"{cells[d]['speedup']:.2f} ({cells[d]['ratio']:.2f})" if d in cells
                        else "-" for d in dens]
                out.append(f"| {layer} | {kind} | {dense_ms:.2f} | " + " | ".join(vals) + " |")
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# Break-even densities


def break_even(rows: list[dict]) -> dict:
    """Measured break-even density per (mode, layer kind) and per (mode, layer).

    Per layer: the highest swept density at which masked beats dense (speedup > 1), and the
    crossover interpolated (in log speedup) between it and the next density; 0.0 when masked
    never wins. Per policy key ("kind/channel bucket", as dl_lib.layers.masked_conv_policy keys
    its table): the median, over the key's layers and all mask kinds, of the interpolated
    crossover, so one unlucky mask shape does not decide it. Keys of the result: the mode
    ("fwd", "fwdbwd"), with "/nchw" for contiguous inputs (see ``table_label``).
    """
    per_layer: dict = {}
    groups: dict = {}
    for row in rows:
        groups.setdefault((table_label(row), row["layer"], row["policy_key"], row["mask"]),
                          []).append(row)
    crossings: dict = {}
    for (mode, layer, kind, mask), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["density"])
        best, cross = 0.0, 0.0
        for i, r in enumerate(rs):
            if r["speedup"] > 1.0:
                best = r["density"]
                if i + 1 < len(rs) and rs[i + 1]["speedup"] <= 1.0:
                    s0, s1 = math.log(r["speedup"]), math.log(max(rs[i + 1]["speedup"], 1e-9))
                    t = s0 / (s0 - s1) if s0 != s1 else 0.0
                    cross = r["density"] + t * (rs[i + 1]["density"] - r["density"])
                elif i + 1 == len(rs):
                    cross = r["density"]
        per_layer.setdefault(mode, {}).setdefault(layer, {})[mask] = {
            "highest_winning_density": best, "crossover": round(cross, 3)}
        crossings.setdefault((mode, kind), []).append(cross)
    per_kind = {}
    for (mode, kind), values in crossings.items():
        per_kind.setdefault(mode, {})[kind] = round(statistics.median(values), 3)
    return {"per_kind": per_kind, "per_layer": per_layer}


def policy_key(spec: LayerSpec) -> tuple[str, str]:
    """(kind, channel bucket) of a layer, as dl_lib.layers.masked_conv_policy keys its tables."""
    shape = (spec.cout, spec.cin // spec.groups, spec.k, spec.k)
    return policy.layer_kind(shape, spec.groups), policy.channel_bucket(max(spec.cin, spec.cout))


def write_policy(thresholds: dict, device: str, meta: dict, mode: str = "fwd",
                 path: str | None = None) -> str:
    """Store {"kind/bucket": break-even density} for ``device`` in the fallback policy's table
    for ``mode`` (fwd: inference, fwdbwd: training; "fwd/nchw": inference on contiguous inputs);
    entries not measured are kept, and measured ones replace the hand-set guesses of the same
    keys (the CUDA ones). ``path``: the policy file (default: dl_lib's). Returns the file
    written."""
    base, _, layout = mode.partition("/")
    entries = {(*key.split("/"), device): value for key, value in thresholds.items()}
    policy.write_break_even_table(entries, command=meta["summary"], mode=base,
                                  layout=layout or "nhwc", path=path)
    return path or policy.__file__


# ------------------------------------------------------------------------------------------------
# Outputs


def save_outputs(rows: list[dict], summary: dict, args) -> list[str]:
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"masked_conv_{args.device}")
    paths = [stem + ".csv", stem + ".json", stem + ".png", stem + ".md"]
    with open(paths[0], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    with open(paths[1], "w") as f:
        json.dump({"config": summary["config"], "break_even": summary["break_even"],
                   "rows": rows}, f, indent=1, default=float)
    plot(rows, paths[2])
    with open(paths[3], "w") as f:
        cfg = summary["config"]
        f.write(f"`{cfg['command']}` ({cfg['device']}, {cfg['dtype']}, {cfg['threads']} threads, "
                f"{cfg.get('clock', 'wall')} clock, "
                f"image {cfg['input_size'][0]}x{cfg['input_size'][1]}, batch {cfg['batch']}, "
                f"{cfg['memory_format']}, torch {cfg['torch']}, {cfg['seconds']} s)\n\n")
        f.write(pivot_tables(rows) + "\n")
        full = [r for r in rows if r["density"] >= 1.0 and not math.isnan(r["module_vs_dense"])]
        if full:
            f.write("`MaskedConv2d` (dense fallback on) at d = 1.0, medians over the mask kinds; "
                    "module / dense is the median ratio of paired calls:\n\n"
                    "| layer | mode | dense ms | masked ms (no fallback) | MaskedConv2d ms | "
                    "module / dense |\n|---|---|---|---|---|---|\n")
            for key in dict.fromkeys((r["layer"], table_label(r)) for r in full):
                rs = [r for r in full if (r["layer"], table_label(r)) == key]
                med = {k: statistics.median(r[k] for r in rs)
                       for k in ("dense_ms", "masked_ms", "module_ms", "module_vs_dense")}
                f.write(f"| {key[0]} | {key[1]} | {med['dense_ms']:.2f} | {med['masked_ms']:.2f} | "
                        f"{med['module_ms']:.2f} | {med['module_vs_dense']:.2f} |\n")
            f.write("\n")
        floors = floor_rows(rows)
        if floors:
            f.write("Output-write floor (fwd): an all-zero mask, so the masked call only writes "
                    "its zeros; dense / that is the most any mask can gain on the layer.\n\n"
                    "| layer | dense ms | all-zero mask ms | max speedup |\n|---|---|---|---|\n")
            for layer, r in floors.items():
                f.write(f"| {layer} | {r['dense_ms']:.2f} | {r['empty_mask_ms']:.3f} | "
                        f"{r['max_speedup']:.1f} |\n")
            f.write("\n")
        keep = [r for r in rows if not math.isnan(r.get("keep_over_masked", float("nan")))]
        if keep:
            f.write("In-place variant (`out=`, inactive positions left untouched) against the "
                    "zero-filling call, median of paired ratios:\n\n"
                    "| layer | table | mask | d | dense ms | masked ms | keep ms | keep / masked |"
                    "\n|---|---|---|---|---|---|---|---|\n")
            for r in keep:
                f.write(f"| {r['layer']} | {table_label(r)} | {r['mask']} | {r['density']:g} | "
                        f"{r['dense_ms']:.2f} | {r['masked_ms']:.2f} | {r['keep_ms']:.2f} | "
                        f"{r['keep_over_masked']:.2f} |\n")
            f.write("\n")
        f.write("Break-even density per policy key (median crossover over layers and masks):\n\n")
        for mode, table in summary["break_even"]["per_kind"].items():
            f.write(f"* {mode}: " + ", ".join(f"`{k}` {v:.2f}" for k, v in sorted(table.items()))
                    + "\n")
        f.write("\n<details><summary>All rows</summary>\n\n" + markdown_table(rows)
                + "\n\n</details>\n")
    return paths


def floor_rows(rows: list[dict]) -> dict:
    """{layer label: a fwd row carrying the layer's output-write floor}."""
    found = {}
    for r in rows:
        if r["mode"] == "fwd" and not math.isnan(r.get("max_speedup", float("nan"))):
            label = r["layer"] if r.get("layout", "nhwc") == "nhwc" else f"{r['layer']} (nchw)"
            found.setdefault(label, r)
    return found


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({table_label(r) for r in rows})
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    kinds = list(dict.fromkeys(r["mask"] for r in rows))
    cols = min(4, len(layers))
    nrows = math.ceil(len(layers) / cols) * len(modes)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False)
    dens = sorted({r["density"] for r in rows})
    grid = [d / 100 for d in range(int(min(dens) * 100), 101)]
    for m_i, mode in enumerate(modes):
        for l_i, layer in enumerate(layers):
            ax = axes[m_i * math.ceil(len(layers) / cols) + l_i // cols][l_i % cols]
            ax.plot(grid, [1 / g for g in grid], "k-", lw=1, label="ideal 1/d")
            ax.plot(grid, [TARGET_FRACTION / g for g in grid], "k--", lw=1,
                    label=f"{TARGET_FRACTION} x ideal")
            ax.axhline(1.0, color="grey", lw=0.8, ls=":")
            for kind in kinds:
                rs = sorted((r for r in rows if table_label(r) == mode and r["layer"] == layer
                             and r["mask"] == kind), key=lambda r: r["density"])
                ax.plot([r["density"] for r in rs], [r["speedup"] for r in rs], "o-",
                        label=kind, ms=3)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{layer} [{mode}]", fontsize=8)
            ax.set_xlabel("pixel density", fontsize=7)
            ax.set_ylabel("speedup vs dense", fontsize=7)
            ax.tick_params(labelsize=6)
            if l_i == 0:
                ax.legend(fontsize=6)
    for ax in axes.flat:
        if not ax.lines:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Speedup of dl_lib's masked conv over dense F.conv2d vs mask density.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16", "float64"),
                        default="float32")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--mode", choices=("fwd", "fwdbwd", "both"), default="both")
    parser.add_argument("--quick", action="store_true",
                        help=f"only {', '.join(QUICK_LAYERS)} at d={QUICK_DENSITIES}")
    parser.add_argument("--input-size", type=parse_size, default=None,
                        help="image size the layer resolutions derive from (default 1024x2048, "
                        "Cityscapes resolution, as the benchmark protocol asks)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--memory-format", choices=("channels_last", "contiguous", "both"),
                        default="channels_last",
                        help="input layout; both: every cell on channels_last and on NCHW, each "
                             "against dense on the same input")
    parser.add_argument("--keep", action="store_true",
                        help="also time masked_conv2d(..., out=buf) (fwd), paired with the "
                             "zero-filling call")
    parser.add_argument("--densities", type=float, nargs="+", default=list(DENSITIES))
    parser.add_argument("--kinds", nargs="+", choices=MASK_KINDS, default=list(MASK_KINDS))
    parser.add_argument("--layers", nargs="+", default=None,
                        help="substrings of layer names to keep")
    parser.add_argument("--min-time", type=float, default=None,
                        help="seconds of timed runs per measurement and side, over all rounds "
                             "(default 0.1)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="passes over all cells, each taking its share of --min-time and "
                             "--min-reps (default 3 on CPU, 1 on CUDA)")
    parser.add_argument("--min-reps", type=int, default=None,
                        help="timed pairs at least (default 7 on CPU, 3 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="default 1 on CPU, 5 on CUDA")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="CPU timer: wall clock (perf_counter), or the calling thread's CPU "
                             "time (thread_time; with --threads 1, robust to other jobs on a "
                             "loaded machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("output", "benchmarks"))
    parser.add_argument("--from-json", default=None, metavar="PATH",
                        help="rewrite the csv/md/png of a saved masked_conv_<device>.json into "
                             "--out without measuring")
    parser.add_argument("--write-policy", action="store_true",
                        help="store the measured break-even densities in the fallback policy")
    parser.add_argument("--policy-mode", choices=("fwd", "fwdbwd", "fwd/nchw", "all"),
                        default="all",
                        help="which modes' break-even densities --write-policy stores (fwd: "
                             "inference tables, fwdbwd: training table, fwd/nchw: only the "
                             "NCHW-input table; all: those measured)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    if args.input_size is None:
        args.input_size = (1024, 2048)
    if args.min_time is None:
        args.min_time = 0.1
    if args.min_reps is None:
        args.min_reps = 9 if args.device == "cpu" else 3
    if args.rounds is None:
        args.rounds = 3 if args.device == "cpu" else 1
    if args.warmup is None:
        args.warmup = 1 if args.device == "cpu" else 5
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        # Rebuild the tables and the plot of an earlier run without measuring again.
        with open(args.from_json) as f:
            saved = json.load(f)
        args.device = saved["config"]["device"]
        paths = save_outputs(saved["rows"], saved, args)
        print("# wrote " + ", ".join(paths))
        return 0
    start = time.perf_counter()
    rows = run_sweep(args)
    if not rows:
        print("no rows: check --layers")
        return 1
    be = break_even(rows)
    config = {
        "device": args.device, "policy_device": policy.policy_device(args.device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "dtype": args.dtype, "threads": torch.get_num_threads(), "clock": args.clock,
        "input_size": list(args.input_size), "batch": args.batch,
        "memory_format": args.memory_format, "torch": torch.__version__,
        "command": " ".join(sys.argv), "seconds": round(time.perf_counter() - start, 1),
    }
    if args.device == "cuda":
        config["gpu"] = torch.cuda.get_device_name()
    floors = floor_rows(rows)
    if floors:
        print("\n# output-write floor (fwd, all-zero mask): layer, dense ms, masked ms, max speedup")
        for layer, r in floors.items():
            print(f"#   {layer:26s} {r['dense_ms']:9.3f} {r['empty_mask_ms']:9.3f} "
                  f"{r['max_speedup']:6.1f}")
    print("\n# break-even density per policy key (median crossover over layers and masks):")
    for mode, table in be["per_kind"].items():
        print(f"#   {mode}: " + ", ".join(f"{k}={v:.2f}" for k, v in sorted(table.items())))
    paths = save_outputs(rows, {"config": config, "break_even": be}, args)
    print("# wrote " + ", ".join(paths))
    if args.write_policy:
        modes = [m for m in be["per_kind"] if args.policy_mode in ("all", m, m.split("/")[0])]
        if not modes:
            print(f"error: --write-policy needs {args.policy_mode} rows (see --mode)",
                  file=sys.stderr)
            return 1
        for mode in modes:
            if mode == "fwdbwd/nchw":
                print("# fwdbwd/nchw: no policy table (training on NCHW inputs is capped by the "
                      "fwd/nchw table); not written")
                continue
            meta = {"summary": f"python {config['command']} ({args.dtype}, {config['threads']} "
                               f"threads, {mode} break-even, torch {torch.__version__})", **config}
            # The CPU tables are per kernel ISA: "cpu" (AVX-512), "cpu_avx2" or "cpu_portable".
            path = write_policy(be["per_kind"][mode], policy.policy_device(args.device), meta,
                                mode)
            print(f"# policy thresholds ({mode}) written to {path}")
    print(f"# total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

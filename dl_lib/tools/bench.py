"""``dl_bench``: latency, throughput and peak memory of the playground in the current folder.

    cd playground/<Group>/<Name>
    dl_bench                                            # 1024x2048, 1024x1024, 512x1024, batch 1
    dl_bench --sizes 512x1024 --batch 1,4 --threads 2 --runs 20 --json bench.json
    dl_bench --fuse-bn --channels-last MODEL.WEIGHTS model_final.pth
    python -m dl_lib.tools.bench ...                    # the same, without the console script

What is timed: ``model.predict_logits(x)`` (``model(x)`` for models without it) on a random
normalised ``batch x 3 x H x W`` tensor, the network from its input to the logits at input size
(for MFARANet its final x4 upsampling included, as the authors timed it), in eval mode under
``torch.inference_mode``: no autograd graph (the authors' FPS script built one). ``--warmup`` calls
are not timed, then ``--runs`` calls each timed alone: on the CPU by ``time.perf_counter``, on
CUDA by CUDA events around each call (synchronised after it). Reported: the median, the
interquartile range and min/max of the per-call latency; FPS = batch / median.

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
"""
import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from tabulate import tabulate
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from dl_lib import playground
from dl_lib.analysis import count_parameters, flop_count
from dl_lib.analysis.conventions import CONVENTIONS
from dl_lib.analysis.fuse_bn import FuseError, fuse_batch_norms
from dl_lib.checkpoint import CheckpointReadError
from dl_lib.config import ConfigError
from dl_lib.utils.file_io import atomic_write

__all__ = ["main", "build_parser", "parse_sizes", "parse_batches", "benchmark", "format_table",
           "LiveTensorBytes", "BenchError"]

logger = logging.getLogger("dl_lib.tools.bench")

DEFAULT_SIZES = "1024x2048,1024x1024,512x1024"
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


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def benchmark(model: torch.nn.Module, sizes: Sequence[Tuple[int, int]], batches: Sequence[int],
              runs: int = 20, warmup: int = 3, channels_last: bool = False,
              amp_dtype: Optional[torch.dtype] = None, compile: bool = False,
              memory: bool = True, log=None) -> List[dict]:
    """Time ``model`` at every (size, batch); one dict per case (``size``, ``batch``,
    ``latency_ms`` as :func:`latency_stats`, ``fps``, ``peak_memory_mb``,
    ``peak_memory_measure``, ``rss_delta_mb``). ``model`` is put in eval mode; pass it fused
    and on its device already."""
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
        x = torch.randn(batch, 3, h, w, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                    else _null())
        tag = f"[{k}/{len(cases)}] {h}x{w} batch {batch}"
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


def format_table(results: List[dict], params: int, gmacs: Dict[str, float],
                 paper: Optional[dict]) -> str:
    """The table ``dl_bench`` prints (one row per case)."""
    headers = ["size", "batch", "median ms", "IQR ms", "min-max ms", "FPS", "peak MB",
               "params", "GMACs/image (1e9)"]
    if paper:
        headers.append(f"{paper['label']}")
    rows = []
    for r in results:
        lat, size = r["latency_ms"], "{}x{}".format(*r["size"])
        mem = r.get("peak_memory_mb")
        row = [size, r["batch"], _fmt(lat["median"]), f"{_fmt(lat['q25'])}-{_fmt(lat['q75'])}",
               f"{_fmt(lat['min'])}-{_fmt(lat['max'])}", _fmt(r["fps"]),
               _fmt(mem) if mem is not None else "-", f"{params:,}",
               _fmt(gmacs[size]) if size in gmacs else "-"]
        if paper:
            row.append(_fmt(paper["values"][size]) if size in paper["values"] else "-")
        rows.append(row)
    return tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True)


def _load_weights(cfg, model) -> str:
    weights = str(cfg.MODEL.WEIGHTS).strip()
    if not weights or weights.lower() == "none":
        return "random initialisation (no MODEL.WEIGHTS)"
    from dl_lib.checkpoint import Checkpointer

    Checkpointer(model).load(weights, strict=bool(cfg.MODEL.WEIGHTS_STRICT))
    return f"MODEL.WEIGHTS {weights}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``dl_bench``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    flags = [o for o in args.opts if o.startswith("--")]
    if flags:
        parser.error(f"flag(s) {flags} given after the KEY VALUE overrides would be ignored; put "
                     "every --flag before the overrides")
    log = lambda msg: print(f"dl_bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        sizes, batches = parse_sizes(args.sizes), parse_batches(args.batch)
        if args.threads is not None:
            if args.threads > (os.cpu_count() or 1):
                log(f"warning: --threads {args.threads} exceeds the {os.cpu_count()} CPU cores")
            torch.set_num_threads(args.threads)
        cfg, model = playground.build(args.playground, args.opts)
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
        amp_dtype = _check_options(args, device)
        source = _load_weights(cfg, model)
    except (BenchError, playground.PlaygroundError, ConfigError, CheckpointReadError) as e:
        parser.exit(2, f"dl_bench: error: {e}\n")
    model.eval()
    pc = count_parameters(model)
    gmacs, paper = {}, None
    if not args.no_cost:
        log("counting GMACs at each size (one forward each)")
        gmacs = {f"{h}x{w}": flop_count(model, (h, w), "gmac").total for h, w in sizes}
        paper = published_cost(args.playground, cfg, model, sizes)
    fuse = None
    timed_model = model
    if args.fuse_bn:
        h, w = min(sizes, key=lambda s: s[0] * s[1])
        example = torch.randn(1, 3, h, w, device=device)
        try:
            timed_model, report = fuse_batch_norms(model, example)
        except FuseError as e:
            parser.exit(2, f"dl_bench: error: {e}\n")
        fuse = {"folded": len(report.folded), "left": report.left,
                "max_abs_diff": report.max_abs_diff}
        log(str(report))
    results = benchmark(timed_model, sizes, batches, runs=args.runs, warmup=args.warmup,
                        channels_last=args.channels_last, amp_dtype=amp_dtype,
                        compile=args.compile, memory=not args.no_memory, log=log)
    options = {"runs": args.runs, "warmup": args.warmup, "fuse_bn": args.fuse_bn,
               "channels_last": args.channels_last, "amp": str(amp_dtype).replace("torch.", "")
               if amp_dtype else None, "compile": args.compile, "inference_mode": True}
    header = [f"Model: {type(model).__name__} ({playground.find_playground(args.playground)}), "
              f"weights: {source}",
              f"Device: {_describe_device(device)}; torch {torch.__version__}; timed: "
              "predict_logits under torch.inference_mode, "
              + ("CUDA events" if device.type == "cuda" else "time.perf_counter"),
              "Options: " + ", ".join(f"{k}={v}" for k, v in options.items()),
              f"Parameters: {pc.total:,} ({pc.trainable:,} trainable)"]
    if paper:
        header.append(f"{paper['label']}: {paper['unit']}, on the copy with "
                      + ", ".join(f"{k}={v!r}" for k, v in paper["opts"].items())
                      + f" ({paper['params']:,} parameters)")
    if results and results[0].get("peak_memory_measure"):
        header.append(f"Peak MB: {results[0]['peak_memory_measure']}")
    print("\n".join(header))
    print(format_table(results, pc.total, gmacs, paper))
    if args.json:
        out = {"playground": playground.find_playground(args.playground),
               "model": type(model).__name__, "weights": source,
               "device": _describe_device(device), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "options": options,
               "params": pc.total, "params_trainable": pc.trainable,
               "gmacs": gmacs, "published_cost": paper, "fuse_bn": fuse, "results": results}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with atomic_write(args.json, "w") as f:
            json.dump(out, f, indent=2)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

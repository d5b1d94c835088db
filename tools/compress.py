"""Compress a hard-masked checkpoint into a physically smaller dense network.

    .venv/bin/python tools/compress.py --playground DIR --weights MASKED.pth --output OUT.pth \
        [--size H W] [--trace-size S] [--runs N] [--threads T] [--depth D] [KEY VALUE ...]

Builds the playground's model with ``MODEL.WEIGHTS MASKED.pth`` (its stored architecture, e.g.
``MODEL.PRUNING.HARD_MASKS``, applied; ``KEY VALUE`` config overrides; on CPU), loads the masked
weights strictly, removes the pruned channels with ``dl_lib.modeling.pruning.compress`` (traced at
``--trace-size``), checks that the compressed network computes the masked one's logits on a random
input, and saves ``OUT.pth`` atomically through ``dl_lib.checkpoint.Checkpointer`` with
``architecture = {"MODEL.PRUNING.CHANNELS": [...]}``, so that

    dl_test --playground DIR MODEL.WEIGHTS OUT.pth

rebuilds the smaller network and evaluates it. Prints, per module at ``--depth`` and in total,
parameters, GMACs (``dl_lib.analysis`` counter, at ``--size``, on the meta device) and measured
CPU latency (median of ``--runs`` forwards, per module by forward hooks) before and after.
Exit status 0, or 2 when the checkpoint is not a hard-masked model of the playground.
"""
import argparse
import copy
import os
import statistics
import sys
import time
from collections import OrderedDict
from typing import Dict, List, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, REPO)

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from dl_lib import playground  # noqa: E402
from dl_lib.analysis.flops import flop_count  # noqa: E402
from dl_lib.checkpoint import Checkpointer, architecture_of  # noqa: E402
from dl_lib.modeling.pruning import channel_masks  # noqa: E402
from dl_lib.modeling.pruning.channels import channel_config_of  # noqa: E402
from dl_lib.modeling.pruning.compress import compress  # noqa: E402

__all__ = ["main", "compress_checkpoint", "cost_table"]


def _call(model):
    return model.predict_logits if hasattr(model, "predict_logits") else model


def gmacs_by_module(model: torch.nn.Module, size: Sequence[int]) -> Dict[str, float]:
    """GMACs per ``named_modules()`` name at ``size`` (counted on a meta copy: no compute)."""
    meta = copy.deepcopy(model).to("meta")
    return flop_count(meta, tuple(size)).by_module


@torch.no_grad()
def latency_by_module(model: torch.nn.Module, size: Sequence[int], names: Sequence[str],
                      runs: int = 3, warmup: int = 1) -> Dict[str, float]:
    """Median ms per forward of the whole model (``""``) and of each module in ``names``
    (forward pre/post hooks; a module called several times sums its calls)."""
    modules = dict(model.named_modules())
    spent: Dict[str, float] = {}
    starts: Dict[str, List[float]] = {}
    handles = []
    for name in names:
        m = modules[name]

        def pre(_m, _a, name=name):
            starts.setdefault(name, []).append(time.perf_counter())

        def post(_m, _a, _o, name=name):
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - starts[name].pop()

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    p = next(iter(model.parameters()))
    x = torch.randn(1, 3, int(size[0]), int(size[1]), device=p.device)
    was = model.training
    model.eval()
    samples: Dict[str, List[float]] = {n: [] for n in [""] + list(names)}
    try:
        for i in range(warmup + runs):
            spent.clear()
            t0 = time.perf_counter()
            _call(model)(x)
            total = time.perf_counter() - t0
            if i >= warmup:
                samples[""].append(total * 1e3)
                for n in names:
                    samples[n].append(spent.get(n, 0.0) * 1e3)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return {n: statistics.median(v) for n, v in samples.items()}


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cost_table(dense: torch.nn.Module, small: torch.nn.Module, size: Sequence[int], depth: int = 2,
               runs: int = 3, warmup: int = 1) -> List[OrderedDict]:
    """Rows (module at ``depth``, then ``total``) of params / GMACs / ms before and after."""
    names = [n for n, _ in dense.named_modules() if n and n.count(".") == depth - 1]
    small_modules = dict(small.named_modules())
    names = [n for n in names if n in small_modules]
    g_dense, g_small = gmacs_by_module(dense, size), gmacs_by_module(small, size)
    t_dense = latency_by_module(dense, size, names, runs, warmup)
    t_small = latency_by_module(small, size, names, runs, warmup)
    rows = []
    dense_modules = dict(dense.named_modules())
    for n in names + [""]:
        a, b = dense_modules[n], small_modules[n]
        ga, gb = g_dense.get(n, 0.0), g_small.get(n, 0.0)
        if n and ga == 0.0 and _params(a) == 0:
            continue
        rows.append(OrderedDict([
            ("module", n or "total"), ("params", _params(a)), ("params'", _params(b)),
            ("GMACs", ga), ("GMACs'", gb), ("MAC x", ga / gb if gb else float("nan")),
            ("ms", t_dense[n]), ("ms'", t_small[n]),
            ("speedup", t_dense[n] / t_small[n] if t_small[n] else float("nan"))]))
    return rows


def format_table(rows: List[OrderedDict], size: Sequence[int]) -> str:
    keys = ["module", "params", "params'", "GMACs", "GMACs'", "MAC x", "ms", "ms'", "speedup"]
    formats = ["{}", "{:,}", "{:,}", "{:.3f}", "{:.3f}", "{:.2f}", "{:.1f}", "{:.1f}", "{:.2f}"]
    body = [[f.format(r[k]) for k, f in zip(keys, formats)] for r in rows]
    headers = keys
    return (f"before / after (') compression at 1x3x{size[0]}x{size[1]}:\n"
            + tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True))


def compress_checkpoint(playground_dir: str, weights: str, output: str, opts: Sequence[str] = (),
                        trace_size: int = 65, check_tolerance: float = 1e-3):
    """(masked model, compressed model, max |logit difference|) and ``output`` written."""
    opts = list(opts) + ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"]
    cfg, model = playground.build(playground_dir, opts)
    masks = channel_masks(model)
    if not masks:
        raise SystemExit(f"tools/compress.py: the model of {playground_dir} has no channel masks "
                         f"with MODEL.WEIGHTS {weights} (MODEL.PRUNING.ENABLED is "
                         f"{cfg.MODEL.PRUNING.ENABLED}); give a pruning playground and a masked "
                         "checkpoint, or MODEL.PRUNING.ENABLED True MODEL.PRUNING.HARD_MASKS True")
    Checkpointer(model).load(weights, checkpointables=[], strict=True)
    soft = [p for p, m in masks.items() if not m.is_hard]
    if soft:
        raise SystemExit(f"tools/compress.py: {weights} holds soft masks ({len(soft)}, e.g. "
                         f"{soft[0]}); compress a checkpoint saved after the hard conversion, or "
                         "add MODEL.PRUNING.HARD_MASKS True to take the current top-k")
    model.eval()
    x = torch.randn(1, 3, trace_size, trace_size)
    small = compress(model, x)
    small.eval()
    with torch.no_grad():
        check = torch.randn(1, 3, trace_size, trace_size)
        a, b = _call(model)(check), _call(small)(check)
        a = a[-1] if isinstance(a, (list, tuple)) else a
        b = b[-1] if isinstance(b, (list, tuple)) else b
        diff = float((a - b).abs().max())
    if diff > check_tolerance * max(1.0, float(a.abs().max())):
        raise SystemExit(f"tools/compress.py: the compressed network differs from the masked one "
                         f"by {diff:.3g} on a random input (tolerance {check_tolerance} x max "
                         "|logit|); not saved")
    arch = dict(architecture_of(small) or {})
    arch.pop("MODEL.PRUNING.HARD_MASKS", None)
    arch["MODEL.PRUNING.CHANNELS"] = channel_config_of(small)
    out_dir = os.path.dirname(os.path.abspath(output))
    name = os.path.basename(output)
    name = name[:-4] if name.endswith(".pth") else name
    Checkpointer(small, save_dir=out_dir, save_to_disk=True).save(
        name, architecture=arch, compressed_from=os.path.abspath(weights))
    return model, small, diff


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--playground", default=None, help="playground folder (default: cwd)")
    parser.add_argument("--weights", required=True, help="hard-masked checkpoint")
    parser.add_argument("--output", required=True, help="compressed checkpoint to write")
    parser.add_argument("--size", type=int, nargs=2, default=(713, 713), metavar=("H", "W"),
                        help="input size of the cost table (default 713 713)")
    parser.add_argument("--trace-size", type=int, default=65, help="input side to trace with")
    parser.add_argument("--runs", type=int, default=3, help="timed forwards (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--depth", type=int, default=2, help="module depth of the table rows")
    parser.add_argument("--no-table", action="store_true", help="skip the cost table")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, small, diff = compress_checkpoint(args.playground, args.weights, args.output,
                                             args.opts, args.trace_size)
    entries = channel_config_of(small)
    print(f"compressed {len(entries)} modules; max |logit difference| masked vs compressed on a "
          f"random 1x3x{args.trace_size}x{args.trace_size} input: {diff:.3g}")
    print(f"saved {args.output} (architecture MODEL.PRUNING.CHANNELS, {len(entries)} entries)")
    if not args.no_table:
        from dl_lib.modeling.pruning.compress import _unwrap_masks

        dense = copy.deepcopy(model)
        _unwrap_masks(dense)  # the masked network as it computes, without the mask multiplies
        print(format_table(cost_table(dense, small, args.size, args.depth, args.runs,
                                      args.warmup), args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())

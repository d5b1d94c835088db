"""CPU latency of ACoSP-compressed networks against the dense ones, next to their MAC ratios.

    .venv/bin/python benchmarks/compression.py [--models pspnet50 segnet] [--ratios 2 4 8 16]
        [--size H W] [--runs 5] [--warmup 1] [--threads 1] [--streams tied|independent]
        [--placement after_bn|original] [--clock wall|thread] [--deploy plain inference]
        [--json OUT]

For each model (``pspnet50``, ``segnet``: the ``dl_lib.modeling.acosp`` builders, 19 classes, or
with ``--source playground`` playground/ACoSP/PSPNet50.Cityscapes, SegNet.Cityscapes) and each
compression ratio CR (sparsity 1 - 1/CR), the model is built with random hard masks
(``MODEL.PRUNING.HARD_MASKS``: latency does
not depend on which channels are kept), residual streams' masks tied (``--streams tied``, the
default) or left independent, compressed with ``dl_lib.modeling.pruning.compress`` and timed
against the dense network (eval, no_grad, ``predict_logits`` on a random 1x3xHxW input; median of
``--runs`` after ``--warmup``). GMACs are the library's counter (``dl_lib.analysis``, on a meta
copy). Prints a table; ``eff`` = speedup / MAC ratio (target >= 0.8); ``--json`` writes the rows.

``--deploy``: ``plain`` times the networks as built (NCHW, BN separate); ``inference`` times both
the dense and the compressed network after ``dl_lib.modeling.inference.optimize_for_inference``
(BN folded by ``dl_lib.analysis.fuse_bn``, 1x1 convs as a matmul at one thread, channels-last parameters and input): the same
exact rewrites on both sides, checked against the plain output on the timed input.
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from dl_lib import playground  # noqa: E402
from dl_lib.analysis.flops import flop_count  # noqa: E402
from dl_lib.modeling.pruning.compress import compress, tie_stream_masks  # noqa: E402

PLAYGROUNDS = {"pspnet50": "playground/ACoSP/PSPNet50.Cityscapes",
               "segnet": "playground/ACoSP/SegNet.Cityscapes"}
DEFAULT_SIZES = {"pspnet50": (713, 713), "segnet": (360, 480)}


def gmacs(model, size):
    return flop_count(copy.deepcopy(model).to("meta"), tuple(size)).total


CLOCKS = {"wall": time.perf_counter,
          # CPU time of the calling thread: with 1 torch thread the whole forward runs there, and
          # time spent waiting for a core that other jobs hold is not counted.
          "thread": time.thread_time}


@torch.no_grad()
def latency_ms(model, size, runs, warmup, clock="wall", channels_last=False):
    model.eval()
    torch.manual_seed(1)
    x = torch.randn(1, 3, int(size[0]), int(size[1]))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    call = model.predict_logits if hasattr(model, "predict_logits") else model
    now = CLOCKS[clock]
    times = []
    for i in range(warmup + runs):
        t0 = now()
        call(x)
        if i >= warmup:
            times.append((now() - t0) * 1e3)
    return statistics.median(times)


def _library(name, opts):
    """The ACoSP family's builders (``dl_lib.modeling.acosp``: PSPNet-50 with its aux head, SegNet,
    19 classes) with masks attached as ``prepare_model`` does from ``opts``."""
    from dl_lib.modeling.acosp.pspnet import pspnet50
    from dl_lib.modeling.acosp.segnet import segnet
    from dl_lib.modeling.pruning import attach_channel_masks, to_hard_masks

    model = {"pspnet50": pspnet50, "segnet": segnet}[name]()
    values = dict(zip(opts[::2], opts[1::2]))
    if values.get("MODEL.PRUNING.ENABLED") == "True":
        attach_channel_masks(model, float(values["MODEL.PRUNING.SPARSITY"]),
                             placement=values["MODEL.PRUNING.PLACEMENT"])
        to_hard_masks(model)
    return model


def build(name, opts, source="library"):
    if source == "library":
        return _library(name, opts).eval()
    folder = os.path.join(ROOT, PLAYGROUNDS[name])
    _, model = playground.build(folder, list(opts) + ["MODEL.DEVICE", "cpu"])
    return model.eval()


def trace_input(size):
    # A small traced input of the model's size class ((H - 1) % 8 == 0 for PSPNet).
    return torch.randn(1, 3, 65, 65)


@torch.no_grad()
def deployed(model, deploy):
    """``model`` as timed under ``deploy``: itself (``plain``) or an optimised copy whose output
    on a small input is checked against the plain one (``inference``)."""
    if deploy == "plain":
        return model
    from dl_lib.modeling.inference import optimize_for_inference

    fast = copy.deepcopy(model).eval()
    x = torch.randn(1, 3, 65, 65)
    optimize_for_inference(fast, x)
    call = (lambda m, t: m.predict_logits(t)) if hasattr(model, "predict_logits") else \
        (lambda m, t: m(t))
    ref = call(model.eval(), x)
    out = call(fast, x.contiguous(memory_format=torch.channels_last))
    err = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    if err > 1e-4:
        raise RuntimeError(f"optimize_for_inference changed the output (relative error {err:.2e})")
    return fast


def run(models, ratios, sizes, runs, warmup, streams, placement, source="library",
        clock="wall", deploys=("plain",)):
    rows = []
    for name in models:
        for deploy in deploys:
            rows += _run_one(name, ratios, sizes, runs, warmup, streams, placement, source,
                             clock, deploy)
    return rows


def _run_one(name, ratios, sizes, runs, warmup, streams, placement, source, clock, deploy):
    rows = []
    cl = deploy == "inference"
    size = sizes.get(name) or DEFAULT_SIZES[name]
    torch.manual_seed(0)
    dense = build(name, ["MODEL.PRUNING.ENABLED", "False"], source)
    dense_gmacs = gmacs(dense, size)
    dense_params = sum(p.numel() for p in dense.parameters())
    dense_ms = latency_ms(deployed(dense, deploy), size, runs, warmup, clock, cl)
    del dense
    for cr in ratios:
        sparsity = 1.0 - 1.0 / cr
        torch.manual_seed(0)
        masked = build(name, ["MODEL.PRUNING.ENABLED", "True", "MODEL.PRUNING.SPARSITY",
                              str(sparsity), "MODEL.PRUNING.HARD_MASKS", "True",
                              "MODEL.PRUNING.PLACEMENT", placement], source)
        x = trace_input(size)
        groups = tie_stream_masks(masked, x) if streams == "tied" else []
        small = compress(masked, x, inplace=True).eval()
        small_gmacs = gmacs(small, size)
        small_ms = latency_ms(deployed(small, deploy), size, runs, warmup, clock, cl)
        mac_x, speedup = dense_gmacs / small_gmacs, dense_ms / small_ms
        rows.append({"model": name, "size": f"{size[0]}x{size[1]}", "cr": cr,
                     "deploy": deploy, "threads": torch.get_num_threads(),
                     "sparsity": sparsity, "streams": streams, "tied_groups": len(groups),
                     "placement": placement, "dense_gmacs": dense_gmacs,
                     "gmacs": small_gmacs, "mac_x": mac_x, "dense_ms": dense_ms,
                     "ms": small_ms, "speedup": speedup, "eff": speedup / mac_x,
                     "params": sum(p.numel() for p in small.parameters()),
                     "dense_params": dense_params})
        del masked, small
    return rows


def table(rows):
    body = [[r["model"], r["size"], r.get("deploy", "plain"), f"ACoSP-{r['cr']}",
             f"{r['dense_gmacs']:.2f}",
             f"{r['gmacs']:.2f}", f"{r['mac_x']:.2f}", f"{r['dense_ms']:.0f}", f"{r['ms']:.0f}",
             f"{r['speedup']:.2f}", f"{r['eff']:.2f}", f"{r['params'] / 1e6:.2f}"] for r in rows]
    headers = ["model", "size", "deploy", "CR", "dense GMACs", "GMACs", "MAC x", "dense ms", "ms",
               "speedup", "eff", "params (M)"]
    return tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(PLAYGROUNDS), choices=list(PLAYGROUNDS))
    p.add_argument("--ratios", nargs="+", type=int, default=[2, 4, 8, 16])
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="input size for every model (default: 713x713 PSPNet, 360x480 SegNet)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--streams", choices=["tied", "independent"], default="tied")
    p.add_argument("--placement", choices=["after_bn", "original"], default="after_bn")
    p.add_argument("--source", choices=["library", "playground"], default="library",
                   help="the dl_lib.modeling.acosp builders, or the playgrounds' models")
    p.add_argument("--clock", choices=list(CLOCKS), default="wall",
                   help="wall time, or the calling thread's CPU time (1 thread, shared machine)")
    p.add_argument("--deploy", nargs="+", choices=["plain", "inference"],
                   default=["plain", "inference"],
                   help="time the networks as built and/or after optimize_for_inference")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = {m: tuple(args.size) for m in args.models} if args.size else {}
    rows = run(args.models, args.ratios, sizes, args.runs, args.warmup, args.streams,
               args.placement, args.source, args.clock, args.deploy)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), streams "
          f"{args.streams}, placement {args.placement}, median of {args.runs} "
          f"({args.clock} clock), models from {args.source}")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "args": vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CondNet on the CPU: the conditional classifier against a plain 1x1 classifier, side by side in
one process (reference ``condnet.md`` sections 2 and 5).

At each ``--sizes`` (the network's input, batch 1) and each ``--classes`` K, on the features the
depthwise-separable ASPP host hands its classifier (512 channels at stride 4: 128x128 at 512x512):

* ``plain 1x1``: Dropout2d(0.1) + ``Conv2d(512, K, 1)`` (mmseg's ``conv_seg``), eval mode;
* ``conditional``: :class:`~dl_lib.modeling.condnet.ConditionalClassifier` (clean layout):
  guidance 1x1, softmax, class centres, the grouped kernel generator, the dynamic einsum;
* ``conditional original``: the same with the original's kernel layout (the parsing differs,
  the arithmetic is the same);

and with ``--host`` the whole decode head (sep-ASPP on random layer-1 / layer-4 features of the
R50-D8 shapes, then the classifier), and with ``--model`` the whole network (R50-D8 backbone,
head, classifier; ``MODEL.CONDNET.CLASSIFIER`` plain vs conditional), both under
``torch.inference_mode``. Calls are interleaved run by run so a slow spell of a shared machine
hits every variant alike; reported are medians of the wall clock and (meaningful with
``--threads 1``) of the calling thread's CPU time, the ratios conditional / plain from the
latter with one thread, and the MACs of each variant (``dl_lib.analysis`` "gmac").

    .venv/bin/python benchmarks/condnet.py --threads 1 --runs 7              # classifier only
    .venv/bin/python benchmarks/condnet.py --threads 1 --runs 5 --host --model --classes 150
"""
import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
from torch import nn

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from dl_lib.modeling.condnet.conditional_classifier import ConditionalClassifier  # noqa: E402

CHANNELS = 512  # the host's output channels (mmseg's ``channels``)


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def interleaved(fns: Dict[str, Callable], runs: int, warmup: int):
    """(wall seconds, calling-thread CPU seconds) per call of each fn; round r calls every fn
    once in a rotated order."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(runs):
        for n in names[r % len(names):] + names[:r % len(names)]:
            c0, t0 = time.thread_time(), time.perf_counter()
            fns[n]()
            wall[n].append(time.perf_counter() - t0)
            cpu[n].append(time.thread_time() - c0)
    return wall, cpu


def classifier_macs(kind: str, k: int, c: int, h: int, w: int) -> float:
    """Multiply-accumulates of one classifier call on N=1 C×H×W features (analytic: the einsums
    and the grouped conv on a 1×1 map, which hook-based counters tend to miss)."""
    p = h * w
    if kind == "plain 1x1":
        return k * c * p
    # guidance 1x1 + class centres (K·C·P) + kernel generator ((C+1)·K·C on 1x1) + dynamic 1x1
    return k * c * p + k * c * p + (c + 1) * k * c + k * c * p


def plain_classifier(k: int, c: int = CHANNELS) -> nn.Module:
    return nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(c, k, 1))


class _FirstOutput(nn.Module):
    """Returns the class logits of a (logits, guidance) module, so every variant returns one."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)[0]


def classifiers(k: int) -> Dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"plain 1x1": plain_classifier(k).eval(),
            "conditional": _FirstOutput(ConditionalClassifier(CHANNELS, k)).eval(),
            "conditional original": _FirstOutput(
                ConditionalClassifier(CHANNELS, k, layout="original")).eval()}


def bench(name: str, modules: Dict[str, nn.Module], inputs, args, macs: Dict[str, float]) -> dict:
    def call(m):
        def run():
            with torch.inference_mode():
                m(*inputs)
        return run

    wall, cpu = interleaved({n: call(m) for n, m in modules.items()}, args.runs, args.warmup)
    row = {"what": name, "threads": torch.get_num_threads(), "runs": args.runs,
           "median_s": {n: statistics.median(t) for n, t in wall.items()},
           "cpu_median_s": {n: statistics.median(t) for n, t in cpu.items()},
           "times_s": wall, "cpu_times_s": cpu, "gmacs": {n: v / 1e9 for n, v in macs.items()},
           "load": load_average()}
    ref = row["cpu_median_s"] if row["threads"] == 1 else row["median_s"]
    base = next(n for n in modules if n.startswith("plain"))
    row["ratio_vs_plain"] = {n: ref[n] / ref[base] for n in modules}
    row["mac_ratio_vs_plain"] = {n: macs[n] / macs[base] for n in modules}
    print_row(row)
    return row


def print_row(row: dict) -> None:
    one = row["threads"] == 1
    print(f"\n{row['what']} ({row['threads']} thread(s), {row['runs']} runs, load "
          f"{row['load']}); ratios from the {'thread CPU' if one else 'wall'} medians")
    print("| variant | GMAC | median ms | cpu ms | time / plain | MAC / plain |\n"
          "|---|---|---|---|---|---|")
    for n, t in row["median_s"].items():
        cpu = f"{1e3 * row['cpu_median_s'][n]:.1f}" if one else "-"
        print(f"| {n} | {row['gmacs'][n]:.3f} | {1e3 * t:.1f} | {cpu} | "
              f"{row['ratio_vs_plain'][n]:.2f} | {row['mac_ratio_vs_plain'][n]:.2f} |",
              flush=True)


def bench_classifier(k: int, size, args) -> dict:
    h, w = size[0] // 4, size[1] // 4
    feats = torch.randn(1, CHANNELS, h, w)
    macs = {n: classifier_macs("plain 1x1" if n.startswith("plain") else "conditional",
                               k, CHANNELS, h, w) for n in ("plain 1x1", "conditional",
                                                             "conditional original")}
    return bench(f"classifier, K={k}, features 1x{CHANNELS}x{h}x{w} (input {size[0]}x{size[1]})",
                 classifiers(k), (feats,), args, macs)


class _HostOnly(nn.Module):
    """The decode head on fixed backbone features, callable on a dummy image (for the counter)."""

    def __init__(self, head, high, low):
        super().__init__()
        self.head, self.high, self.low = head, high, low

    def forward(self, x=None):
        return self.head(self.high, self.low)[0]


def _counted_macs(module: nn.Module, inputs: torch.Tensor) -> int:
    from dl_lib.analysis import flop_count

    return flop_count(module, inputs=inputs, convention="gmac").raw


def _with_analytic_classifiers(plain_total: float, k: int, h: int, w: int) -> Dict[str, float]:
    """MACs of each variant: the counted plain network, its 1x1 replaced by each classifier's
    analytic count (so an einsum the counter might skip cannot hide the conditioning's cost)."""
    rest = plain_total - classifier_macs("plain 1x1", k, CHANNELS, h, w)
    return {n: rest + classifier_macs("plain 1x1" if n.startswith("plain") else "conditional",
                                      k, CHANNELS, h, w)
            for n in ("plain 1x1", "conditional", "conditional original")}


def bench_host(k: int, size, args) -> dict:
    """The sep-ASPP decode head of R50-D8 (res5 2048 ch at stride 8, res2 256 ch at stride 4)."""
    from dl_lib.modeling.condnet.condnet import CondSepASPPHead, build_classifier

    torch.manual_seed(0)
    high = torch.randn(1, 2048, size[0] // 8, size[1] // 8)
    low = torch.randn(1, 256, size[0] // 4, size[1] // 4)
    heads = {}
    for name, kind, layout in (("plain 1x1", "plain", "clean"), ("conditional", "conditional",
                                "clean"), ("conditional original", "conditional", "original")):
        torch.manual_seed(0)
        head = CondSepASPPHead(2048, CHANNELS, k, classifier=build_classifier(
            kind, CHANNELS, k, layout)).eval()
        heads[name] = _HostOnly(head, high, low).eval()
    plain = _counted_macs(heads["plain 1x1"], torch.zeros(1, 3, 8, 8))
    macs = _with_analytic_classifiers(plain, k, size[0] // 4, size[1] // 4)
    return bench(f"sep-ASPP head + classifier, K={k} (input {size[0]}x{size[1]})",
                 heads, (None,), args, macs)


def bench_model(k: int, size, args) -> dict:
    """The whole R50-D8 network (eval: no auxiliary head), random weights."""
    from dl_lib.modeling import build_model
    from dl_lib.modeling.condnet.recipes import ade20k_config

    models = {}
    for name, kind, layout in (("plain 1x1", "plain", "clean"), ("conditional", "conditional",
                                "clean"), ("conditional original", "conditional", "original")):
        cfg = ade20k_config(50)
        cfg.MODEL.DEVICE, cfg.MODEL.PRETRAINED = "cpu", ""
        cfg.MODEL.BACKBONE.NORM = cfg.MODEL.CONDNET.NORM = "BN"
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = k
        cfg.MODEL.CONDNET.CLASSIFIER, cfg.MODEL.CONDNET.KERNEL_LAYOUT = kind, layout
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        models[name] = _Logits(model)
    x = torch.randn(1, 3, *size)
    plain = _counted_macs(models["plain 1x1"].model, x)
    macs = _with_analytic_classifiers(plain, k, size[0] // 4, size[1] // 4)
    return bench(f"R50-D8 network, K={k} (input {size[0]}x{size[1]})", models, (x,), args, macs)


class _Logits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.predict_logits(x)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=["512x512"], help="input HxW (batch 1)")
    p.add_argument("--classes", nargs="+", type=int, default=[150, 59])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--host", action="store_true", help="also the whole decode head")
    p.add_argument("--model", action="store_true", help="also the whole R50-D8 network")
    p.add_argument("--json", default="", help="write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, "
          f"load average at start {load_average()}", flush=True)
    rows = []
    for size in sizes:
        for k in args.classes:
            rows.append(bench_classifier(k, size, args))
            if args.host:
                rows.append(bench_host(k, size, args))
            if args.model:
                rows.append(bench_model(k, size, args))
    result = {"rows": rows, "argv": sys.argv[1:] if argv is None else list(argv)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()

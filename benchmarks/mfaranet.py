"""MFARANet on the CPU, side by side in one process: ours against the original's computation,
the whole network against Branch2, a training step against the original's.

Eval (``--eval``, at each ``--sizes``, batch 1), calls interleaved run by run so a slow spell of
a shared machine hits every variant alike:

* ``ours``: ``MFARANet.predict_logits`` (R18, 19 classes, random weights with BN statistics
  far from the identity) under ``torch.inference_mode`` -- what ``dl_bench`` times;
* ``ours fused only``: ``MODEL.MFARANET.PREDICT fused`` (the fused output alone resized to the
  input, as the original's forward; the default also resizes the four branches for ``dl_test``);
* ``ours channels-last`` and ``ours fused BN`` (``dl_lib.analysis.fuse_bn``);
* ``Branch2``: ``MODEL.MFARANET.BRANCH_ONLY 2`` on the same weights (the real pruned model);
* ``original``: the original's eval computation restated from the reference
  (``tests/modeling/mfaranet/mfaranet_original_reference.py``, functional on the original's
  state-dict names) run as the authors' FPS script ran it, **without** ``no_grad`` (the weights
  require grad, so autograd records the graph);
* ``original no-grad``: the same under ``torch.inference_mode`` (what the implementation costs
  without the missing ``no_grad``).

Reported: medians (with ``--threads 1`` also the CPU time of the calling thread, which a shared
machine disturbs far less, and the ratios from it), ours / original, Branch2's speedup over the
whole network against its conv MAC ratio (``eff`` = speedup / MAC ratio, target >= 0.8).

Training step (``--train-step``, batch 2 x 3 x 256 x 512, 19 classes, random labels of the
street-scene kind, boundary-head biases 1 so both boundary-attention terms select pixels):
forward, backward and SGD step (momentum 0.9, wd 5e-4) of

* ``ours``: ``model(batched_inputs)`` in training mode with every loss of the model (fused CE,
  OHEM, boundary BCE and attention CE, boundary targets from the labels inside the step) and
  ``build_optimizer``'s groups;
* ``original``: the original's training forward restated (BN on batch statistics, attention
  dropout, boundary heads) with its whole loss restated (argsort OHEM, numpy-weighted BCE,
  histogram-weighted attention CE) and the argmax it returns; its boundary GT is built by its
  data loader (per-sample 5x5 box filter), so it is timed apart (``original loader boundary
  GT``, next to ``ours boundary GT``, which our step already contains);
* ``ours CE`` / ``original CE``: the same forwards with plain cross-entropy on the fused output
  and the four branches.

``--conv-peak``: GMAC/s of large dense 3x3 convolutions at the same thread count (CPU time with
one thread), and each variant's GMAC/s as a fraction of it (training: 3 x the forward's conv MACs).

    .venv/bin/python benchmarks/mfaranet.py --conv-peak --eval --train-step --sizes 512x1024 \
        --runs 3 --train-runs 3 --threads 1        # CPU-time ratios, usable on a loaded VM
    .venv/bin/python benchmarks/mfaranet.py --eval --train-step --threads 2     # all, idle VM
    .venv/bin/python benchmarks/mfaranet.py --eval --sizes 512x1024 --runs 3 --threads 2
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from dl_lib.analysis import flop_count  # noqa: E402
from dl_lib.analysis.fuse_bn import fuse_batch_norms  # noqa: E402
from dl_lib.config import config_from_delta  # noqa: E402
from dl_lib.modeling import build_model  # noqa: E402
from dl_lib.modeling.mfaranet import backbone_config  # noqa: E402
from dl_lib.modeling.mfaranet.convert import to_released  # noqa: E402

REFERENCE = os.path.join(ROOT, "tests", "modeling", "mfaranet", "mfaranet_original_reference.py")


def original_reference():
    spec = importlib.util.spec_from_file_location("mfaranet_original_reference", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mfaranet_cfg(**mfaranet):
    return config_from_delta(dict(MODEL=dict(DEVICE="cpu", META_ARCHITECTURE="MFARANet",
                                             BACKBONE=backbone_config("r18_deep_stem"),
                                             SEM_SEG_HEAD=dict(NUM_CLASSES=19),
                                             MFARANET=mfaranet)), family="mfaranet")


def randomize_norms(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


CPU_TIMES: Dict[str, List[float]] = {}  # variant -> CPU seconds of the calling thread per call


def interleaved(fns: Dict[str, Callable], runs: int, warmup: int = 1,
                log=print) -> Dict[str, List[float]]:
    """Wall seconds of each call; round r calls every fn once (in a rotated order). Also the
    calling thread's CPU seconds per call into ``CPU_TIMES``: with one thread (``--threads 1``)
    all the work runs on it, and on a shared machine that time moves far less than the wall
    clock (preemption does not count; cache and SMT contention still do)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = {n: [] for n in names}
    CPU_TIMES.clear()
    CPU_TIMES.update({n: [] for n in names})
    for r in range(runs):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            c0, t0 = time.thread_time(), time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
            CPU_TIMES[n].append(time.thread_time() - c0)
        log(f"  round {r + 1}/{runs} (load {load_average()}): "
            + ", ".join(f"{n} {times[n][-1]:.2f} s ({CPU_TIMES[n][-1]:.2f} cpu)" for n in names))
    return times


def cpu_medians() -> Dict[str, float]:
    """Median CPU seconds per variant of the last :func:`interleaved` (meaningful for 1 thread)."""
    return {n: statistics.median(v) for n, v in CPU_TIMES.items()}


def bench_eval(args, peak=None) -> List[dict]:
    ref = original_reference()
    full = build_model(mfaranet_cfg()).eval()
    randomize_norms(full)
    branch2 = build_model(mfaranet_cfg(BRANCH_ONLY=2)).eval()
    branch2.load_state_dict({k: v for k, v in full.state_dict().items()
                             if k in branch2.state_dict()})
    fused, report = fuse_batch_norms(full, torch.randn(1, 3, 64, 128))
    print(f"fuse-bn: {report}".splitlines()[0], flush=True)
    channels_last = build_model(mfaranet_cfg()).eval()
    channels_last.load_state_dict(full.state_dict())
    channels_last = channels_last.to(memory_format=torch.channels_last)
    # MODEL.MFARANET.PREDICT fused: only the fused output resized to the input, as the original
    fused_only = build_model(mfaranet_cfg(PREDICT="fused")).eval()
    fused_only.load_state_dict(full.state_dict())
    # the original's weights as it held them: parameters require grad, buffers do not
    param_names = {n for n, _ in full.named_parameters()}
    sd = {k: (v.clone().requires_grad_(True) if k in param_names else v.clone())
          for k, v in full.state_dict().items()}
    sd = to_released(sd)
    rows = []
    for h, w in args.sizes:
        x = torch.randn(1, 3, h, w)
        xcl = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            same = (full.predict_logits(x)[-1] - ref.original_forward(sd, x)["out"]).abs().max()
        print(f"{h}x{w}: max |ours - original| = {same.item():.3g}", flush=True)

        def inf(fn):
            def run():
                with torch.inference_mode():
                    fn()
            return run

        fns = {"ours": inf(lambda: full.predict_logits(x)),
               "ours fused only": inf(lambda: fused_only.predict_logits(x)),
               "ours channels-last": inf(lambda: channels_last.predict_logits(xcl)),
               "ours fused BN": inf(lambda: fused.predict_logits(x)),
               "Branch2": inf(lambda: branch2.predict_logits(x)),
               "original": lambda: ref.original_forward(sd, x)["out"],
               "original no-grad": inf(lambda: ref.original_forward(sd, x)["out"])}
        if args.variants:
            fns = {k: v for k, v in fns.items() if k in args.variants}
        print(f"{h}x{w}, batch 1, {torch.get_num_threads()} threads:", flush=True)
        times = interleaved(fns, args.runs, args.warmup)
        macs = {n: flop_count(m, (h // 4, w // 4), "gmac").raw * 16 / 1e9
                for n, m in (("full", full), ("Branch2", branch2))}
        med = {n: statistics.median(t) for n, t in times.items()}
        row = {"size": [h, w], "threads": torch.get_num_threads(), "runs": args.runs,
               "median_s": med, "times_s": times, "cpu_median_s": cpu_medians(),
               "cpu_times_s": dict(CPU_TIMES), "gmacs": macs, "load": load_average(),
               "conv_peak_gmac_s": peak}
        if torch.get_num_threads() == 1:  # the CPU time is the steadier measure here
            med = row["cpu_median_s"]
        if "Branch2" in med and "ours" in med:
            speedup, ratio = med["ours"] / med["Branch2"], macs["full"] / macs["Branch2"]
            row.update(branch2_speedup=speedup, mac_ratio=ratio, eff=speedup / ratio)
        if "original" in med and "ours" in med:
            row["ours_over_original"] = med["ours"] / med["original"]
        rows.append(row)
        print_eval(row)
    return rows


def print_eval(row: dict) -> None:
    """Wall medians; with one thread also CPU medians, and the ratios from those."""
    one = row["threads"] == 1
    print("| size | variant | median s | cpu s | vs original | GMAC/s | of conv peak |\n"
          "|---|---|---|---|---|---|---|")
    ref = row["cpu_median_s" if one else "median_s"]
    peak = row.get("conv_peak_gmac_s")
    for n, t in row["median_s"].items():
        rel = f"{ref[n] / ref['original']:.2f}" if "original" in ref else "-"
        cpu = f"{row['cpu_median_s'][n]:.3f}" if one else "-"
        rate = row["gmacs"]["Branch2" if n == "Branch2" else "full"] / ref[n]
        frac = f"{rate / peak:.0%}" if peak else "-"
        print(f"| {row['size'][0]}x{row['size'][1]} | {n} | {t:.3f} | {cpu} | {rel} | "
              f"{rate:.1f} | {frac} |")
    if "eff" in row:
        print(f"Branch2: speedup {row['branch2_speedup']:.3f} x, MAC ratio "
              f"{row['mac_ratio']:.3f} ({row['gmacs']['full']:.2f} / "
              f"{row['gmacs']['Branch2']:.2f} GMAC), eff {row['eff']:.2f} (target >= 0.8)",
              flush=True)


def bench_train_step(args, peak=None) -> dict:
    from dl_lib.solver import build_optimizer

    ref = original_reference()
    cfg = mfaranet_cfg()
    cfg.SOLVER.OPTIMIZER.MOMENTUM = 0.9
    cfg.SOLVER.OPTIMIZER.WEIGHT_DECAY = 5e-4
    model = build_model(cfg).train()
    with torch.no_grad():  # boundary logits around 1: both losses select pixels (no NaN)
        for head in model.head.boundary_heads:
            head.bias.fill_(1.0)
    opt = build_optimizer(cfg, model)
    g = torch.Generator().manual_seed(0)
    (h, w), n = args.train_size, 2
    images = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
    # blocky labels (16x16 cells of 19 classes, some void) so boundary terms select pixels
    labels = torch.randint(0, 19, (n, h // 16, w // 16), generator=g)
    labels = labels.repeat_interleave(16, 1).repeat_interleave(16, 2)
    labels[:, :8] = 255
    batch = [{"image": images[i], "sem_seg": labels[i], "height": h, "width": w}
             for i in range(n)]
    x = (images.float() - model.pixel_mean) / model.pixel_std

    def ce_all(logits):
        return sum(F.cross_entropy(F.interpolate(t, size=(h, w), mode="bilinear",
                                                 align_corners=True), labels, ignore_index=255)
                   for t in logits)

    def ours():
        opt.zero_grad()
        sum(model(batch).values()).backward()
        opt.step()

    def ours_ce():
        opt.zero_grad()
        ce_all(model.forward_logits(x)).backward()
        opt.step()

    # the original's training: its forward with BN on batch statistics and the attention
    # dropout, its joint loss (OHEM, numpy-weighted BCE, histogram-weighted attention CE), the
    # argmax it returns, plain SGD over every tensor that requires grad; the boundary GT comes
    # from its data loader (one sample at a time, timed apart: loader workers run it)
    param_names = {k for k, _ in model.named_parameters()}
    sd = to_released({k: (v.detach().clone().requires_grad_(True) if k in param_names
                          else v.detach().clone()) for k, v in model.state_dict().items()})
    orig_opt = torch.optim.SGD([v for v in sd.values() if v.requires_grad], lr=0.005,
                               momentum=0.9, weight_decay=5e-4)

    def loader_boundaries():
        return torch.from_numpy(np.stack([ref.original_boundary_target(lab.numpy())
                                          for lab in labels]))

    boundaries = loader_boundaries()

    def original():
        orig_opt.zero_grad()
        out = ref.original_forward(sd, x, train=True)
        out["out"].max(1)
        ref.original_training_loss(out, labels, boundaries)["total"].backward()
        orig_opt.step()

    def original_ce():
        orig_opt.zero_grad()
        out = ref.original_forward(sd, x, train=True)
        ce_all(out["branches"] + [out["out"]]).backward()
        orig_opt.step()

    from dl_lib.modeling.mfaranet.losses import boundary_targets

    fns = {"ours": ours, "original": original, "ours CE": ours_ce, "original CE": original_ce,
           "ours boundary GT": lambda: boundary_targets(labels),
           "original loader boundary GT": loader_boundaries}
    with torch.no_grad():
        terms = ref.original_training_loss(ref.original_forward(sd, x, train=True), labels,
                                           boundaries)
    print(f"training step {n}x3x{h}x{w}, {torch.get_num_threads()} threads, losses of ours: "
          f"{sorted(model(batch))}; original's total at the start {terms['total'].item():.3f}",
          flush=True)
    times = interleaved(fns, args.train_runs, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu = cpu_medians()
    one = torch.get_num_threads() == 1
    ref_t = cpu if one else med
    # forward + backward ~ 3 x the forward's conv MACs (input and weight gradients)
    step_gmac = 3 * n * flop_count(model, (h // 4, w // 4), "gmac").raw * 16 / 1e9
    print(f"| variant | median s | cpu s | vs original | GMAC/s (3 x forward {step_gmac / 3:.2f} "
          "GMAC) | of conv peak |\n|---|---|---|---|---|---|")
    for k, v in med.items():
        vs = (f"{ref_t[k] / ref_t['original']:.2f}" if "GT" not in k else
              f"{ref_t[k] / ref_t['original loader boundary GT']:.2f}")
        rate = step_gmac / ref_t[k] if "GT" not in k else None
        frac = f"{rate / peak:.0%}" if rate and peak else "-"
        print(f"| {k} | {v:.3f} | {f'{cpu[k]:.3f}' if one else '-'} | {vs} | "
              f"{f'{rate:.1f}' if rate else '-'} | {frac} |")
    return {"median_s": med, "times_s": times, "cpu_median_s": cpu, "cpu_times_s": dict(CPU_TIMES),
            "threads": torch.get_num_threads(), "load": load_average(),
            "step_gmac_approx": step_gmac}


def conv_peak(args) -> float:
    """GMAC/s of large dense 3x3 convolutions (the library's hot path: mkldnn, NCHW, fp32) at
    this thread count under inference mode: the best of a 128 -> 128 conv at 128x256 (the
    decoder's) and a 256 -> 256 conv at 64x128 (res4's), median of ``args.runs`` calls each.
    What no network made of these convolutions can beat on this CPU."""
    best = 0.0
    for c, (h, w) in ((128, (128, 256)), (256, (64, 128))):
        conv = nn.Conv2d(c, c, 3, padding=1, bias=False).eval()
        x = torch.randn(1, c, h, w)
        gmac = c * c * 9 * h * w / 1e9
        with torch.inference_mode():
            times = interleaved({f"conv3x3 {c}->{c} at {h}x{w}": lambda: conv(x)},
                                max(args.runs, 3), 2, log=lambda *_: None)
        t = statistics.median(next(iter(
            (CPU_TIMES if torch.get_num_threads() == 1 else times).values())))
        print(f"conv peak: 3x3 {c}->{c} at {h}x{w}: {gmac:.3f} GMAC in {t * 1e3:.1f} ms = "
              f"{gmac / t:.1f} GMAC/s ({torch.get_num_threads()} threads, "
              f"{'CPU' if torch.get_num_threads() == 1 else 'wall'} time)", flush=True)
        best = max(best, gmac / t)
    print(f"conv peak: {best:.1f} GMAC/s; the issue's 0.55 s eval at 512x1024 (54.54 GMAC) "
          f"would need {54.54 / 0.55:.1f} GMAC/s = {54.54 / 0.55 / best:.2f} x this peak",
          flush=True)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--eval", action="store_true")
    p.add_argument("--train-step", action="store_true")
    p.add_argument("--conv-peak", action="store_true",
                   help="GMAC/s of large dense 3x3 convs at --threads (also the %% of it each "
                        "variant reaches)")
    p.add_argument("--sizes", default="512x1024,1024x2048")
    p.add_argument("--variants", nargs="*", default=None, help="subset of the eval variants")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--train-runs", type=int, default=5)
    p.add_argument("--train-size", default="256x512", help="HxW of the batch of 2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
    args.train_size = tuple(int(v) for v in args.train_size.split("x"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = {"torch": torch.__version__, "threads": args.threads, "load_start": load_average()}
    peak = None
    if args.conv_peak:
        peak = out["conv_peak_gmac_s"] = conv_peak(args)
    if args.eval:
        out["eval"] = bench_eval(args, peak)
    if args.train_step:
        out["train_step"] = bench_train_step(args, peak)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

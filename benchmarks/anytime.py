"""ADP-C on CPU: does skipping the confident pixels save the time its FLOPs promise?

For HRNet-W18 (Small-v2) and W48 with redesigned heads, batch 1, eval, no_grad, each input size:
ADP-C (``mask_use=True``) against the same network without masks (RH, ``mask_use=False``), same
weights, both channels-last, timed side by side in one process (interleaved runs, warm-up
excluded, medians). Printed per exit (cumulative, from the start of the forward):

* ``RH ms``, ``ADP-C ms``: median latency up to that exit;
* ``speedup`` = RH ms / ADP-C ms; ``flops x`` = RH GFLOPs / ADP-C GFLOPs, both from the model's
  own count (conv MACs / 2^30, masked convolutions at the computed fraction plus the original
  counter's interpolation term); ``eff`` = speedup / flops x (realised / ideal; target >= 0.8 at
  the final exit, and speedup >= 1 at every exit);
* ``orig ms``: the original's computation on the same modules (every masked convolution dense,
  then ``m y + (1 - m) K_hat * (m y)`` with a dense 7 x 7 interpolation everywhere,
  :func:`original_way_exits`), ``orig / RH`` (the original measured 1.37x for W18, 1.84x for W48).

Masks: forced (``AnytimeSegmentor.forced_masks``) to computed fractions of 80%, 60% and 40% after
exits 1-3 (what the published W48 GFLOPs imply, reference section 9.3), spatially coherent: one
smooth random field (Gaussian noise on a grid 16x coarser than the stride-4 logits, bicubically
upsampled) thresholded at its quantiles, so the computed pixels are blobs tens of pixels wide,
nested from exit to exit (a pixel confident at exit k stays confident, as copy aggregation
guarantees). ``--weights`` adds the real masks of a trained W18 street-scene model
(``--playground``, default ``playground/Anytime/HRNet_W18.ADP_C.Tiny.Synthetic``) on rendered
street scenes: that model with its own masks against the same weights without masks.

``--policies`` prints, instead of that table, ADP-C under each inference policy of
``AnytimeConv2d`` (``fold_norm``, ``ring_matrix``; the outputs are the same) against RH.

``--train-step`` times one training step of W18 RH at 2 x 3 x 256 x 512 (forward, backward, SGD
step): the model as built (NCHW: RH does not mask), the model channels-last, and the plain dense
computation without the anytime bookkeeping (:func:`plain_exits`), interleaved.

    .venv/bin/python benchmarks/anytime.py --models w18 --sizes 512x1024 --quick   # make bench
    .venv/bin/python benchmarks/anytime.py --threads 2                # all 4 tables, ~30 min
    .venv/bin/python benchmarks/anytime.py --train-step --models      # training step only
    .venv/bin/python benchmarks/anytime.py --policies --models w18 --sizes 512x1024
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dl_lib.modeling.anytime import AnytimeConv2d, anytime_hrnet_w18, anytime_hrnet_w48  # noqa
from dl_lib.modeling.anytime.anytime import _ExitTimer  # noqa: E402
from dl_lib.modeling.backbone.hrnet import concat_branches  # noqa: E402

CONSTRUCTORS = {"w18": anytime_hrnet_w18, "w48": anytime_hrnet_w48}
FRACTIONS = (0.8, 0.6, 0.4)
# the original's ADP-C / RH latency on this kind of machine (issue 13)
ORIGINAL_SLOWDOWN = {"w18": 1.37, "w48": 1.84}
DEFAULT_PLAYGROUND = "playground/Anytime/HRNet_W18.ADP_C.Tiny.Synthetic"


def coherent_masks(height: int, width: int, fractions: Sequence[float] = FRACTIONS,
                   seed: int = 0, batch: int = 1) -> List[torch.Tensor]:
    """Per masked segment a bool ``batch`` x 1 x h x w mask at stride 4 (True = computed) with
    the given computed fractions: a smooth random field thresholded at its quantiles (blobs,
    nested: each mask inside the previous one)."""
    h, w = height // 4, width // 4
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, 1, max(h // 16, 2), max(w // 16, 2), generator=gen)
    field = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)
    flat = field.flatten(1)
    masks = []
    for p in fractions:
        threshold = torch.quantile(flat, 1 - p, dim=1).view(-1, 1, 1, 1)
        masks.append(field > threshold)
    return masks


def street_scenes(num: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """num x 3 x height x width normalised street scenes (ImageNet mean and std)."""
    from dl_lib.data.datasets.synthetic import render_scene

    rng = np.random.default_rng(seed)
    imgs = [torch.from_numpy(render_scene(rng, height, width)[0]).permute(2, 0, 1).float()
            for _ in range(num)]
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    return (torch.stack(imgs) - mean) / std


# ------------------------------------------------------------------ the original's computation
def _resized(mask: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(mask.float(), size=tuple(size), mode="nearest")


@contextlib.contextmanager
def _original_convs(source: dict):
    """AnytimeConv2d computing the original's way while the block runs: dense convolution, then
    ``m y + (1 - m) K_hat * (m y)`` (dense 7 x 7 depthwise) when ``source["mask"]`` is set."""
    forward = AnytimeConv2d.forward

    def original(self, x):
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                     self.groups)
        if source["mask"] is None:
            return y
        m = _resized(source["mask"], y.shape[-2:])
        if self.interpolation == "none":
            return y * m
        k = self.interpolation_kernel()[None, None].expand(y.shape[1], 1, 7, 7)
        interp = F.conv2d(y * m, k, padding=3, groups=y.shape[1])
        return m * y + (1 - m) * interp

    AnytimeConv2d.forward = original
    try:
        yield
    finally:
        AnytimeConv2d.forward = forward


def original_way_exits(model, x: torch.Tensor, masks: Optional[Sequence[torch.Tensor]],
                       timer: Optional[_ExitTimer] = None) -> List[torch.Tensor]:
    """Logits of exits 1-4 computed as the original does, with ``masks`` (per segment, stride 4,
    True = computed; None = no masks: the dense RH network), copy aggregation included."""
    source = {"mask": None}
    with _original_convs(source):
        features = [model.backbone.forward_stem(x)]
        logits = model.head.exit1(features[0])
        outs = [logits]
        if timer:
            timer.lap()
        for k in (2, 3, 4):
            source["mask"] = None if masks is None else masks[k - 2]
            features = model.backbone.forward_stage(k, features)
            z = model.head.exit(k)(concat_branches(features))
            if masks is not None:
                m = _resized(masks[k - 2], z.shape[-2:])
                z = (1 - m) * logits + m * z
            logits = z
            outs.append(logits)
            source["mask"] = None
            if timer:
                timer.lap()
    return outs


def plain_exits(model, x: torch.Tensor) -> List[torch.Tensor]:
    """The RH network's exits as plain modules (no ForwardState, no cost records)."""
    return original_way_exits(model, x, None)


# ------------------------------------------------------------------ inference
def _timed_exits(fn) -> List[float]:
    """Cumulative ms at each exit of one call of ``fn(timer)``."""
    timer = _ExitTimer(torch.device("cpu"), True)
    with torch.no_grad():
        fn(timer)
    return timer.ms


def compare(rh, adpc, x: torch.Tensor, masks, runs: int, warmup: int,
            original_masks=None) -> dict:
    """Per-exit medians of RH and ADP-C (with ``masks`` forced, None: its own), and of the
    original's computation with ``original_masks`` (None: not timed), interleaved."""
    adpc.forced_masks = masks
    x = x.contiguous(memory_format=torch.channels_last)
    sides = {
        "rh": lambda: rh.forward_exits(x, report=True)[1]["ms"],
        "adpc": lambda: adpc.forward_exits(x, report=True)[1]["ms"],
    }
    if original_masks is not None:
        sides["orig"] = lambda: _timed_exits(
            lambda timer: original_way_exits(adpc, x, original_masks, timer))
    with torch.no_grad():
        gflops = {name: [g[0] for g in m.forward_exits(x, report=True)[1]["gflops"]]
                  for name, m in (("rh", rh), ("adpc", adpc))}
        fractions = [float(m.float().mean())
                     for m in adpc.forward_exits(x, report=True)[1]["masks"]]
        times = {name: [] for name in sides}
        for _ in range(warmup):
            for fn in sides.values():
                fn()
        for _ in range(runs):  # interleaved: a slow spell hits every side
            for name, fn in sides.items():
                times[name].append(fn())
    adpc.forced_masks = None
    med = {name: [statistics.median(t[k] for t in ts) for k in range(4)]
           for name, ts in times.items()}
    return dict(ms=med, gflops=gflops, fractions=fractions)


def rows_of(result: dict, model: str, size: str, masks: str) -> List[dict]:
    ms, g = result["ms"], result["gflops"]
    rows = []
    for k in range(4):
        speedup = ms["rh"][k] / ms["adpc"][k]
        flops_x = g["rh"][k] / g["adpc"][k]
        row = dict(model=model, size=size, masks=masks, exit=k + 1,
                   computed=result["fractions"][k - 1] if k else 1.0,
                   rh_ms=ms["rh"][k], adpc_ms=ms["adpc"][k], speedup=speedup, flops_x=flops_x,
                   eff=speedup / flops_x, rh_gflops=g["rh"][k], adpc_gflops=g["adpc"][k])
        if "orig" in ms:
            row.update(orig_ms=ms["orig"][k], orig_vs_rh=ms["orig"][k] / ms["rh"][k])
        rows.append(row)
    return rows


HEADER = ("| model | size | masks | exit | computed | RH ms | ADP-C ms | speedup | flops x | eff "
          "| orig ms | orig / RH |")


def print_row(r: dict) -> None:
    orig = (f"{r['orig_ms']:.0f} | {r['orig_vs_rh']:.2f}" if "orig_ms" in r else "- | -")
    print(f"| {r['model']} | {r['size']} | {r['masks']} | {r['exit']} | {r['computed']:.0%} | "
          f"{r['rh_ms']:.0f} | {r['adpc_ms']:.0f} | {r['speedup']:.2f} | {r['flops_x']:.2f} | "
          f"{r['eff']:.2f} | {orig} |", flush=True)


def pair(name: str, seed: int = 0):
    """(RH, ADP-C) of one network with the same weights, eval, channels-last."""
    torch.manual_seed(seed)
    rh = CONSTRUCTORS[name](mask_use=False, channels_last=True).eval()
    adpc = CONSTRUCTORS[name](mask_use=True, channels_last=True).eval()
    missing, unexpected = adpc.load_state_dict(rh.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(("Lambda", "square_dis")) for k in missing)
    return rh, adpc


def bench_forced(args) -> List[dict]:
    rows = []
    for name in args.models:
        rh, adpc = pair(name, args.seed)
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(args.seed))
            masks = coherent_masks(h, w, args.fractions, args.seed)
            runs = args.runs if (name, size) != ("w48", "1024x2048") else min(args.runs, 3)
            result = compare(rh, adpc, x, masks, runs, args.warmup,
                             None if args.no_original else masks)
            for row in rows_of(result, name, size, "forced " + "/".join(
                    f"{p:.0%}" for p in args.fractions)):
                rows.append(row)
                print_row(row)
    return rows


def _trained_pair(args):
    """(RH, ADP-C) of the trained checkpoint: ADP-C as trained, RH = its weights without masks."""
    from dl_lib import playground
    from dl_lib.checkpoint import Checkpointer

    run_cfg = os.path.join(os.path.dirname(os.path.abspath(args.weights)), "config.yaml")
    if os.path.exists(run_cfg):
        from dl_lib.config import load_config_file

        cfg = load_config_file(run_cfg)
    else:
        cfg = playground.load_config(args.playground)
    cfg.MODEL.DEVICE = "cpu"
    adpc = playground.build_model(args.playground, cfg)
    Checkpointer(adpc).load(args.weights, checkpointables=[], strict=True)
    cfg = cfg.clone()
    cfg.MODEL.MASK.USE = False
    rh = playground.build_model(args.playground, cfg)
    dense = {k: v for k, v in adpc.state_dict().items()
             if not k.endswith((".Lambda", ".square_dis"))}  # the interpolation's, RH has none
    rh.load_state_dict(dense, strict=True)
    rh.channels_last = adpc.channels_last = True
    return rh.eval(), adpc.eval(), cfg


def bench_trained(args) -> List[dict]:
    """The trained model's own masks on street scenes, at its training size and ``--sizes``."""
    rh, adpc, cfg = _trained_pair(args)
    own = cfg.INPUT.MIN_SIZE_TEST
    rows = []
    for size in [f"{own}x{2 * own}"] + [s for s in args.sizes if s != f"{own}x{2 * own}"]:
        h, w = (int(v) for v in size.split("x"))
        x = street_scenes(1, h, w, seed=args.seed)
        with torch.no_grad():  # the masks ADP-C computes from its logits, for the original
            _, info = adpc.forward_exits(x.contiguous(memory_format=torch.channels_last),
                                         report=True)
        stride4 = [F.interpolate(m.float(), size=(h // 4, w // 4), mode="nearest") > 0.5
                   for m in info["masks"]]
        result = compare(rh, adpc, x, None, args.runs, args.warmup,
                         None if args.no_original else stride4)
        for row in rows_of(result, "w18 trained", size, "learned"):
            rows.append(row)
            print_row(row)
    return rows


# The inference policies of AnytimeConv2d (fold_norm, ring_matrix); outputs equal either way.
POLICIES = {"fold + ring matrix": (True, True), "ring matrix": (False, True),
            "masked depthwise": (False, False)}


def bench_policies(args) -> List[dict]:
    """Per exit, ADP-C under each inference policy against RH (forced masks, interleaved)."""
    rows = []
    saved = AnytimeConv2d.fold_norm, AnytimeConv2d.ring_matrix
    print("| model | size | policy | exit 1 ms | exit 2 ms | exit 3 ms | exit 4 ms | "
          "speedup at exit 4 |")
    print("|" + "---|" * 8, flush=True)
    try:
        for name in args.models:
            rh, adpc = pair(name, args.seed)
            for size in args.sizes:
                h, w = (int(v) for v in size.split("x"))
                x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(args.seed))
                x = x.contiguous(memory_format=torch.channels_last)
                adpc.forced_masks = coherent_masks(h, w, args.fractions, args.seed)

                def run(policy):
                    if policy == "RH":
                        return rh.forward_exits(x, report=True)[1]["ms"]
                    AnytimeConv2d.fold_norm, AnytimeConv2d.ring_matrix = POLICIES[policy]
                    return adpc.forward_exits(x, report=True)[1]["ms"]

                sides = ["RH"] + list(POLICIES)
                times = {k: [] for k in sides}
                with torch.no_grad():
                    for _ in range(args.warmup):
                        for k in sides:
                            run(k)
                    for _ in range(args.runs):
                        for k in sides:
                            times[k].append(run(k))
                med = {k: [statistics.median(t[i] for t in v) for i in range(4)]
                       for k, v in times.items()}
                for k in sides:
                    row = dict(model=name, size=size, policy=k, ms=med[k],
                               speedup=med["RH"][3] / med[k][3])
                    rows.append(row)
                    print(f"| {name} | {size} | {k} | " + " | ".join(f"{t:.0f}" for t in med[k])
                          + f" | {row['speedup']:.2f} |", flush=True)
                adpc.forced_masks = None
    finally:
        AnytimeConv2d.fold_norm, AnytimeConv2d.ring_matrix = saved
    return rows


# ------------------------------------------------------------------ training step
def bench_train_step(args) -> Dict[str, float]:
    """Seconds per training step of W18 RH at batch 2 x 3 x ``--train-size`` (SGD, lr 0.01,
    momentum 0.9, wd 5e-4: the original recipe's optimizer), medians of interleaved steps."""
    torch.manual_seed(args.seed)
    model = anytime_hrnet_w18(mask_use=False).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(args.seed)
    h, w = (int(v) for v in args.train_size.split("x"))
    batch = [dict(image=torch.from_numpy(rng.integers(0, 255, (3, h, w), dtype=np.uint8)),
                  sem_seg=torch.from_numpy(rng.integers(0, 19, (h, w))).long())
             for _ in range(2)]

    def step(kind):
        if kind == "plain":  # the same modules without the anytime bookkeeping, NCHW
            model.to(memory_format=torch.contiguous_format)
            images, _ = model.preprocess_images(batch)
            targets = model.preprocess_targets(batch, images.shape[-2:])
            loss = sum(model.losses(plain_exits(model, images), targets).values())
        else:
            model.channels_last = kind == "ours channels-last"
            if not model.channels_last:
                model.to(memory_format=torch.contiguous_format)
            losses = model(batch)
            loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    kinds = ["ours", "ours channels-last", "plain"]
    times = {k: [] for k in kinds}
    for k in kinds:
        for _ in range(args.warmup + 1):
            step(k)
    now = time.thread_time if args.clock == "thread" else time.perf_counter
    for _ in range(args.train_runs):
        for k in kinds:
            t = now()
            step(k)
            times[k].append(now() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"train step (W18 RH, 2x3x{args.train_size}, SGD, {torch.get_num_threads()} threads, "
          f"{args.clock} clock), median of "
          f"{args.train_runs}: " + ", ".join(f"{k} {med[k]:.2f} s" for k in kinds) +
          f"; ours / plain = {med['ours'] / med['plain']:.2f}; the original: 0.80 s (idle "
          "machine, 2 threads)", flush=True)
    return med


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="*", default=["w18", "w48"], choices=sorted(CONSTRUCTORS),
                   help="networks (none: no forced-mask tables)")
    p.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"], help="HxW")
    p.add_argument("--fractions", type=float, nargs=3, default=list(FRACTIONS),
                   help="computed fractions forced after exits 1-3")
    p.add_argument("--runs", type=int, default=5, help="timed runs per side (medians); W48 at "
                   "1024x2048 uses at most 3")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=("wall", "thread"), default="wall",
                   help="per-exit times from the wall clock, or from the calling thread's CPU "
                   "time (with --threads 1 all the work is on that thread: steadier on a shared "
                   "machine, where the wall clock also counts the time other jobs held the core)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="2 runs, no original's column")
    p.add_argument("--no-original", action="store_true", help="skip the original's computation")
    p.add_argument("--weights", default="", help="trained street-scene W18 checkpoint: adds "
                   "its real masks")
    p.add_argument("--playground", default=DEFAULT_PLAYGROUND)
    p.add_argument("--train-step", action="store_true", help="also time the training step")
    p.add_argument("--policies", action="store_true", help="instead of the main table: ADP-C "
                   "under each inference policy (fold_norm, ring_matrix) against RH")
    p.add_argument("--train-runs", type=int, default=5)
    p.add_argument("--train-size", default="256x512", help="HxW of the training step's batch")
    p.add_argument("--json", default="", help="write the rows (and the training step) here")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.no_original = 2, True
    torch.set_num_threads(args.threads)
    if args.clock == "thread":  # the exit timers of the model and of the original's computation
        _ExitTimer._now = lambda self: time.thread_time()
    load = os.getloadavg()
    print(f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
          f"{args.threads} threads, {args.clock} clock, load average at start {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; `uptime`: "
          f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}",
          flush=True)
    out = {"args": vars(args), "rows": []}
    if args.train_step:
        out["train_step"] = bench_train_step(args)
    if args.policies:
        out["policies"] = bench_policies(args)
        args.models = []
    if args.models or args.weights:
        print(HEADER)
        print("|" + "---|" * 12, flush=True)
    if args.models:
        out["rows"] += bench_forced(args)
    if args.weights:
        if os.path.exists(args.weights):
            out["rows"] += bench_trained(args)
        else:
            print(f"(no checkpoint at {args.weights}: train {args.playground} first)")
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()

"""Dynamic routing on CPU: does inference latency follow the real FLOPs when gates close?

For Layer16 (INIT_CHANNEL 64, 19 classes) at each input size and batch, the gates are put in
budget-constrained states that close a fraction of the routes (30%, 50%, 70%) and timed against
the same network with every route open (gate networks running in both). Printed side by side:

* ``speedup`` = median all-open latency / median gated latency (same process, interleaved runs,
  warm-up excluded),
* ``flops x`` = all-open real FLOPs / gated real FLOPs (the corrected count, what runs; the
  original's paper count in ``paper x``),
* ``eff`` = speedup / flops x (the target is at least 0.8).

How gates are closed: each route's gate bias is set so that the route closes for a chosen number
``k`` of the 4 calibration images (street scenes of ``dl_lib.data.datasets.synthetic``; ``k`` is
drawn per route so that ``k/4`` averages the fraction: images take different routes), refined over
a few forward passes since closing a route changes the inputs of the cells after it. Batch 1 uses
the first image with the same biases. ``closed`` is the fraction of routes that did not run
(gate closed, or cell idle), measured on the images timed. ``--tiny-weights`` adds the demo
model's learned gates (its own width and input size) against the same model with gates forced open.

The mixed batch of 4 is timed in both skip modes (``subbatch``, ``per_image``; the default is
``MODEL.GATE.SKIP_MODE``). ``--train-step`` times one training step of Layer16 (forward, backward,
SGD step with ``build_optimizer``'s groups) at batch 2 x 3 x 256 x 512.

    .venv/bin/python benchmarks/dynamic_routing.py                        # both sizes, ~25 min
    .venv/bin/python benchmarks/dynamic_routing.py --sizes 512x1024 --quick
    .venv/bin/python benchmarks/dynamic_routing.py --train-step --sizes
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dl_lib.modeling.dynamic_routing import dynamic_routing_layer16  # noqa: E402
from dl_lib.modeling.dynamic_routing.dynamic_routing import (  # noqa: E402
    DynamicNetwork, DynamicRoutingSegmentor)

OPEN_BIAS = 10.0  # tanh(10 + z) = 1 for every input seen: all routes open


def street_scenes(num: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """num x 3 x height x width normalised images (RGB minus the ImageNet mean, std 1)."""
    from dl_lib.data.datasets.synthetic import render_scene

    rng = np.random.default_rng(seed)
    imgs = [torch.from_numpy(render_scene(rng, height, width)[0]).permute(2, 0, 1).float()
            for _ in range(num)]
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    return torch.stack(imgs) - mean


def gate_biases(net: DynamicNetwork) -> Dict[str, torch.Tensor]:
    return {name: cell.gate_conv_beta[2].bias.detach().clone() for name, cell in net.cells()}


def set_gate_biases(net: DynamicNetwork, biases: Dict[str, torch.Tensor]) -> None:
    for name, cell in net.cells():
        cell.gate_conv_beta[2].bias.data.copy_(biases[name])


def gate_logits(model: DynamicRoutingSegmentor, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per cell, N x gate_num gate pre-activations without the bias (dense forward)."""
    net = model.backbone
    seen, hooks = {}, []
    for name, cell in net.cells():
        conv = cell.gate_conv_beta[2]
        hooks.append(conv.register_forward_hook(
            lambda mod, inp, out, name=name: seen.__setitem__(
                name, out.flatten(1) - mod.bias.view(1, -1))))
    mode, net.skip_mode = net.skip_mode, "dense"
    try:
        with torch.no_grad():
            model.forward_logits(x)
    finally:
        net.skip_mode = mode
        for h in hooks:
            h.remove()
    return seen


def calibrate(model: DynamicRoutingSegmentor, x: torch.Tensor, fraction: float, seed: int,
              rounds: int = 3) -> Dict[str, torch.Tensor]:
    """Gate biases closing about ``fraction`` of the routes of the images ``x`` (see the module
    docstring); the model keeps them."""
    net = model.backbone
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    closed_count = {}
    for name, cell in net.cells():  # images for which each route closes, drawn once
        base = int(np.floor(fraction * n))
        extra = rng.random(cell.gate_num) < fraction * n - base
        closed_count[name] = [base + int(e) for e in extra]
    set_gate_biases(net, {name: torch.full((cell.gate_num,), OPEN_BIAS) for name, cell in net.cells()})
    for _ in range(rounds):
        z = gate_logits(model, x)
        biases = {}
        for name, cell in net.cells():
            b = torch.empty(cell.gate_num)
            for r in range(cell.gate_num):
                zs = torch.sort(z[name][:, r]).values
                k = closed_count[name][r]
                if k == 0:
                    b[r] = 3.0 - zs[0]  # open for all (gate >= tanh(3) on these images)
                elif k == n:
                    b[r] = -zs[-1] - 2.0
                else:
                    b[r] = -(zs[k - 1] + zs[k]) / 2
            biases[name] = b
        set_gate_biases(net, biases)
    return gate_biases(net)


def settle_batch_norms(model: DynamicRoutingSegmentor, x: torch.Tensor) -> None:
    """Running statistics of every BatchNorm from the images x (cumulative average), so that the
    random network's activations have a trained network's scale (with the initial statistics
    they grow layer after layer and the gate logits reach 1e4)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(x.shape[0]):
            model.forward_logits(x[i:i + 1])
    model.eval()
    for m in bns:
        m.momentum = 0.1


def closed_fraction(model: DynamicRoutingSegmentor, x: torch.Tensor) -> float:
    """Fraction of (image, route) pairs that did not run: gate closed or cell idle."""
    net = model.backbone
    thr = net.skip_threshold
    net.record_gates = True
    try:
        with torch.no_grad():
            model.forward_logits(x)
    finally:
        net.record_gates = False
    gates = model.last_cost.gates
    total = ran = 0
    for name, g in gates.items():
        runs = g.sum(1) > thr
        ran += int(((g > thr) & runs.view(-1, 1)).sum())
        total += g.numel()
    return 1.0 - ran / total


def flops(model: DynamicRoutingSegmentor, x: torch.Tensor):
    with torch.no_grad():
        model.forward_logits(x)
    c = model.last_cost
    return float(c.real_corrected.sum()), float(c.real.sum())


def timed(fn, runs: int) -> List[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_inference(args) -> List[dict]:
    torch.manual_seed(0)
    model = dynamic_routing_layer16(norm="BN").eval()
    net = model.backbone
    default_mode = net.skip_mode
    h, w = (int(v) for v in args.sizes[0].split("x"))
    # calibration at half the first size (cheaper); the closed fractions printed are measured
    # on the timed images at the timed size
    calib_all = street_scenes(4, h // 2, w // 2, seed=args.seed)
    settle_batch_norms(model, calib_all)
    all_open = calibrate(model, calib_all, 0.0, args.seed)
    states = {}
    for batch in args.batches:
        calib = calib_all[:batch]  # the images timed (batch 1: the first alone)
        for i, p in enumerate(args.closed):
            # closing a route can leave cells after it idle (their routes close too): aim lower
            # until the measured fraction is within 3 points of the target
            aim = p
            for _ in range(4):
                biases = calibrate(model, calib, aim, args.seed + i)
                got = closed_fraction(model, calib)
                if abs(got - p) < 0.03:
                    break
                aim = min(max(aim + (p - got), 0.0), 1.0)
            states[batch, f"close {p:.0%}"] = biases
    rows = []
    for size in args.sizes:
        h, w = (int(v) for v in size.split("x"))
        scenes = street_scenes(4, h, w, seed=args.seed)
        for batch in args.batches:
            x = scenes[:batch]
            modes = args.modes if batch > 1 else [net.skip_mode]
            for setting in [f"close {p:.0%}" for p in args.closed]:
                biases = states[batch, setting]
                # the gated state first, so warming up also settles the allocator at its sizes
                set_gate_biases(net, biases)
                closed = closed_fraction(model, x)
                flops_g = flops(model, x)
                set_gate_biases(net, all_open)
                flops_o = flops(model, x)
                times = {(m, s): [] for m in modes for s in ("open", "gated")}

                def run(mode, state):
                    net.skip_mode = mode
                    set_gate_biases(net, biases if state == "gated" else all_open)
                    with torch.no_grad():
                        model.forward_logits(x)

                for mode in modes:  # warm-up
                    for state in ("open", "gated"):
                        for _ in range(args.warmup):
                            run(mode, state)
                for _ in range(args.runs):  # interleaved: a slow spell hits both sides
                    for mode in modes:
                        for state in ("open", "gated"):
                            times[mode, state] += timed(lambda: run(mode, state), 1)
                net.skip_mode = default_mode
                for mode in modes:
                    t_open = statistics.median(times[mode, "open"])
                    t_gated = statistics.median(times[mode, "gated"])
                    fx, px = flops_o[0] / flops_g[0], flops_o[1] / flops_g[1]
                    row = dict(size=size, batch=batch, setting=setting, closed=closed, mode=mode,
                               open_ms=1e3 * t_open, gated_ms=1e3 * t_gated,
                               speedup=t_open / t_gated, flops_ratio=fx, paper_ratio=px,
                               eff=(t_open / t_gated) / fx, gated_gflops=flops_g[0] / 1e3 / batch,
                               open_gflops=flops_o[0] / 1e3 / batch)
                    rows.append(row)
                    print_row(row, flush=True)
    return rows


def bench_tiny(args) -> List[dict]:
    """The demo model's learned gates vs the same model with every gate forced open."""
    from dl_lib import playground
    from dl_lib.checkpoint import Checkpointer

    # the run's own config.yaml (next to its checkpoint) if there is one: the playground may
    # have changed since
    run_cfg = os.path.join(os.path.dirname(os.path.abspath(args.tiny_weights)), "config.yaml")
    if os.path.exists(run_cfg):
        from dl_lib.config import load_config_file

        cfg = load_config_file(run_cfg)
        model = playground.build_model(args.tiny_playground, cfg)
    else:
        cfg, model = playground.build(args.tiny_playground)
    Checkpointer(model).load(args.tiny_weights, strict=True)
    model.eval()
    net = model.backbone
    h = cfg.INPUT.MIN_SIZE_TEST
    rows = []
    for size in [f"{h}x{2 * h}"] + args.sizes:
        hh, ww = (int(v) for v in size.split("x"))
        scenes = street_scenes(4, hh, ww, seed=args.seed)
        for batch in args.batches:
            x = scenes[:batch]
            modes = args.modes if batch > 1 else [net.skip_mode]
            net.force_gates()
            closed = closed_fraction(model, x)
            flops_g = flops(model, x)
            net.force_gates(1.0)
            flops_o = flops(model, x)
            times = {(m, s): [] for m in modes for s in ("open", "gated")}

            def run(mode, state):
                net.skip_mode = mode
                net.force_gates(1.0 if state == "open" else None)
                with torch.no_grad():
                    model.forward_logits(x)

            for mode in modes:
                for state in ("open", "gated"):
                    for _ in range(args.warmup):
                        run(mode, state)
            reps = args.runs * (4 if hh <= 256 else 1)
            for _ in range(reps):
                for mode in modes:
                    for state in ("open", "gated"):
                        times[mode, state] += timed(lambda: run(mode, state), 1)
            net.force_gates()
            for mode in modes:
                t_open = statistics.median(times[mode, "open"])
                t_gated = statistics.median(times[mode, "gated"])
                fx, px = flops_o[0] / flops_g[0], flops_o[1] / flops_g[1]
                row = dict(size=size, batch=batch, setting="tiny learned", closed=closed, mode=mode,
                           open_ms=1e3 * t_open, gated_ms=1e3 * t_gated, speedup=t_open / t_gated,
                           flops_ratio=fx, paper_ratio=px, eff=(t_open / t_gated) / fx,
                           gated_gflops=flops_g[0] / 1e3 / batch, open_gflops=flops_o[0] / 1e3 / batch)
                rows.append(row)
                print_row(row, flush=True)
    return rows


HEADER = ("| size | batch | gates | closed | mode | open ms | gated ms | speedup | flops x "
          "| paper x | eff |")


def print_row(r: dict, flush: bool = False) -> None:
    print(f"| {r['size']} | {r['batch']} | {r['setting']} | {r['closed']:.0%} | {r['mode']} | "
          f"{r['open_ms']:.0f} | {r['gated_ms']:.0f} | {r['speedup']:.2f} | {r['flops_ratio']:.2f} "
          f"| {r['paper_ratio']:.2f} | {r['eff']:.2f} |", flush=flush)


def original_like_logits(model: DynamicRoutingSegmentor, x: torch.Tensor) -> torch.Tensor:
    """Layer16's training forward as the original computes it, on our modules: NCHW, every route
    of every cell, ``keep = m * X + g_keep * ReLU(H)``, no FLOPs bookkeeping. The reference the
    training step is compared with in the same process (same machine state)."""
    from dl_lib.modeling.dynamic_routing import soft_gate

    net = model.backbone
    thr = net.skip_threshold
    stem, _ = net.stem(x)
    inputs = {0: [stem]}
    layers = [[net.init_layer]] + [list(row) for row in net.all_cell_list]
    outs = {}
    for l, row in enumerate(layers):
        nxt = {}
        for c, cell in enumerate(row):
            xs = inputs[c]
            X = xs[0]
            for t in xs[1:]:
                X = X + t
            g = soft_gate(cell.gate_conv_beta(X).flatten(1))
            h = cell.cell_ops(X)
            m = (g.sum(1) < thr).to(X.dtype).view(-1, 1, 1, 1)
            for route, i in cell.route_index.items():
                y = cell.route_fn(route)(h) * g[:, i].view(-1, 1, 1, 1)
                if route == "keep":
                    y = y + m * X
                dest = c + {"keep": 0, "up": -1, "down": 1}[route]
                (outs if l == len(layers) - 1 else nxt).setdefault(dest, []).append(y)
        inputs = nxt
    feats = {f"layer_{c}": outs[c][0] for c in range(4)}
    return model.head(feats)


def bench_train_step(args) -> Dict[str, List[float]]:
    """Seconds per training step of Layer16 at batch 2 x 3 x 256 x 512 (forward, backward, SGD
    step over build_optimizer's groups): ours, ours in NCHW, and the original's computation
    (:func:`original_like_logits`), interleaved."""
    import dl_lib.modeling.dynamic_routing.dynamic_routing as dr
    from dl_lib.config import get_cfg
    from dl_lib.modeling.dynamic_routing.config import add_dynamic_routing_config
    from dl_lib.solver import build_optimizer

    cfg = get_cfg()
    add_dynamic_routing_config(cfg)
    cfg.SOLVER.OPTIMIZER.NAME = "SGD"
    cfg.SOLVER.OPTIMIZER.BASE_LR = 0.05
    torch.manual_seed(0)
    model = dynamic_routing_layer16(norm="BN").train()
    optimizer = build_optimizer(cfg, model)
    rng = np.random.default_rng(args.seed)
    batch = [dict(image=torch.from_numpy(rng.integers(0, 255, (3, 256, 512), dtype=np.uint8)),
                  sem_seg=torch.from_numpy(rng.integers(0, 19, (256, 512))).long())
             for _ in range(2)]
    prefers = dr.prefers_channels_last

    def step(kind):
        dr.prefers_channels_last = prefers if kind == "ours" else (lambda device: False)
        model.set_training_progress(100, 1000)
        if kind == "original-like":
            images, _ = model.preprocess_images(batch)
            targets = model.preprocess_targets(batch, images.shape[-2:])
            loss = sum(model.losses(original_like_logits(model, images), targets).values())
        else:
            losses = model(batch)
            loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    kinds = ["ours", "ours NCHW", "original-like"]
    times = {k: [] for k in kinds}
    try:
        for k in kinds:
            for _ in range(args.warmup + 1):
                step(k)
        for _ in range(args.train_runs):
            for k in kinds:
                times[k] += timed(lambda: step(k), 1)
    finally:
        dr.prefers_channels_last = prefers
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"train step (Layer16, 2x3x256x512, SGD, {len(optimizer.param_groups)} param groups, "
          f"{torch.get_num_threads()} threads), median of {args.train_runs}: " +
          ", ".join(f"{k} {med[k]:.2f} s" for k in kinds) +
          f"; ours / original-like = {med['ours'] / med['original-like']:.2f}; "
          "the original measured 1.47 s (idle machine)", flush=True)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="*", default=["512x1024", "1024x2048"],
                   help="input sizes HxW (none: skip the inference table)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--closed", type=float, nargs="+", default=[0.3, 0.5, 0.7],
                   help="fractions of the routes to close")
    p.add_argument("--modes", nargs="+", default=["subbatch", "per_image"],
                   help="skip modes compared on batches > 1")
    p.add_argument("--runs", type=int, default=5, help="timed runs per side (medians)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="3 runs, 50%% closed only")
    p.add_argument("--tiny-playground", default="playground/Quickstart/Seg.Layer6.Tiny.Synthetic")
    p.add_argument("--tiny-weights", default="", help="the demo model's checkpoint (its learned gates)")
    p.add_argument("--train-step", action="store_true", help="also time the training step")
    p.add_argument("--train-runs", type=int, default=5)
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.closed = 3, [0.5]
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} threads, load average at start "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; `uptime`: "
          f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
    if args.train_step:
        bench_train_step(args)
    if args.sizes:
        print(HEADER)
        print("|" + "---|" * 11, flush=True)
        bench_inference(args)
        if args.tiny_weights:
            if os.path.exists(args.tiny_weights):
                bench_tiny(args)
            else:
                print(f"(no tiny demo checkpoint at {args.tiny_weights}: run `make demo` first)")
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()

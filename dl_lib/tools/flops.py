"""``dl_flops``: parameters and FLOPs of the playground in the current folder.

    cd playground/<Group>/<Name>
    dl_flops                                  # at INPUT.FIX_SIZE_FOR_FLOPS, convention "gmac"
    dl_flops --size 1024 2048 --convention all --depth 2 MODEL.DEVICE cpu

Prints the input size, the convention and its unit, the total, the parameter counts, a
per-module table and the ops that ran but were not counted (see ``dl_lib.analysis.conventions``
for what each convention includes). The count is the executed cost of the (random) input, by the
same :class:`~dl_lib.analysis.CostTracker` the evaluator runs per image with
``TEST.COST_CONVENTIONS`` (masked convolutions cost their active positions); for models whose
cost depends on the input, the evaluator's ``cost/<convention>/mean|min|max`` over a dataset is
the number to report.

Models that count their own cost (``"flops"`` in their eval outputs, e.g. dynamic routing's
paper, corrected and expected GFLOPs) get those printed too, for the same input, after the
tracker's tables.
"""
import argparse
import logging
import sys
from typing import Dict, List, Optional, Sequence

import torch
from tabulate import tabulate

from dl_lib import playground
from dl_lib.analysis import CONVENTIONS, cost_items, count_parameters, flop_count, flop_table
from dl_lib.checkpoint import CheckpointReadError
from dl_lib.config import ConfigError

__all__ = ["main", "build_parser", "model_counts", "report"]

logger = logging.getLogger("dl_lib.tools.flops")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dl_flops", description="Count parameters and FLOPs of a playground model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Conventions: gmac = conv/linear/matmul multiply-adds / 1e9; hrnet = HRNet's model "
               "summary (conv/linear MACs / 2^30); dynamic_routing = DynamicRouting's count "
               "(MACs + bias + BN + ReLU, 1e9).")
    p.add_argument("--playground", default=None,
                   help="playground folder (default: the current folder)")
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), default=None,
                   help="input height and width (default: INPUT.FIX_SIZE_FOR_FLOPS)")
    p.add_argument("--convention", default="gmac", choices=list(CONVENTIONS) + ["all"])
    p.add_argument("--depth", type=int, default=3, help="module nesting depth of the table")
    p.add_argument("--batch", type=int, default=1, help="batch size of the counted input")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE config overrides, after all flags")
    return p


def model_counts(model, x: torch.Tensor) -> Optional[List[Dict[str, float]]]:
    """The model's own per-image count of its cost on the normalised batch ``x`` (N x 3 x H x W):
    the ``"flops"`` of its eval outputs as ``{name: value}`` per image, or None for models that
    report none or do not take the list-of-dicts input (no ``preprocess_images``)."""
    if not hasattr(model, "preprocess_images"):
        return None
    h, w = x.shape[-2:]
    # images in the model's input convention (0-255, not normalised) that normalise back to x
    inputs = [{"image": xi * model.pixel_std + model.pixel_mean, "height": h, "width": w}
              for xi in x]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(inputs)
    finally:
        model.train(was_training)
    if not all(isinstance(o, dict) and o.get("flops") is not None for o in outputs):
        return None
    return [cost_items(o["flops"]) for o in outputs]


def _counts_table(counts: List[Dict[str, float]]) -> str:
    names = list(counts[0])
    headers = ["count"] + [f"image {i}" for i in range(len(counts))]
    if len(counts) > 1:
        headers.append("mean")
    rows = []
    for name in names:
        values = [c.get(name, float("nan")) for c in counts]
        rows.append([name] + values + ([sum(values) / len(values)] if len(counts) > 1 else []))
    return tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".6g")


def report(model, size: Sequence[int], conventions: List[str], depth: int = 3,
           batch: int = 1) -> str:
    """The text ``dl_flops`` prints for ``model`` at ``size`` = (H, W)."""
    pc = count_parameters(model)
    lines = [f"Input size: {batch}x3x{size[0]}x{size[1]}",
             f"Parameters: {pc.total:,} total, {pc.trainable:,} trainable "
             f"({pc.total / 1e6:.3f} M)"]
    # one random input for every count, so input-dependent models are compared on the same one
    p = next(iter(model.parameters()), None)
    x = torch.randn(batch, 3, int(size[0]), int(size[1]),
                    device=p.device if p is not None else "cpu",
                    dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)
    for conv in conventions:
        r = flop_count(model, convention=conv, inputs=x)
        lines += ["", f"Convention: {conv} -> {r.unit}",
                  f"Total: {r.total:.6g} ({r.raw:,} before scaling)"]
        if batch > 1:
            lines.append("Per image: " + ", ".join(f"{v:.6g}" for v in r.per_image))
        lines.append(flop_table(r, max_depth=depth, model=model))
        if r.unsupported_ops:
            ops = ", ".join(f"{k} x{v}" for k, v in sorted(r.unsupported_ops.items()))
            lines.append(f"Ran but not counted under {conv!r}: {ops}")
        else:
            lines.append(f"Ran but not counted under {conv!r}: none")
    counts = model_counts(model, x)
    if counts:
        lines += ["", "The model's own count (\"flops\" of its eval outputs, same input):",
                  _counts_table(counts)]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``dl_flops``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    flags = [o for o in args.opts if o.startswith("--")]
    if flags:
        parser.error(f"flag(s) {flags} given after the KEY VALUE overrides would be ignored; put "
                     "every --flag before the overrides")
    try:
        cfg, model = playground.build(args.playground, args.opts)
    except (playground.PlaygroundError, ConfigError, CheckpointReadError) as e:
        parser.exit(2, f"dl_flops: error: {e}\n")
    size = list(args.size) if args.size else list(cfg.INPUT.FIX_SIZE_FOR_FLOPS)
    if len(size) != 2 or min(size) <= 0:
        parser.error(f"input size must be two positive integers H W, got {size} (from "
                     f"{'--size' if args.size else 'INPUT.FIX_SIZE_FOR_FLOPS'})")
    conventions = list(CONVENTIONS) if args.convention == "all" else [args.convention]
    print(report(model, size, conventions, depth=args.depth, batch=args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``dl_flops``: parameters and FLOPs of the playground in the current folder.

    cd playground/<Group>/<Name>
    dl_flops                                  # at INPUT.FIX_SIZE_FOR_FLOPS, convention "gmac"
    dl_flops --size 1024 2048 --convention all --depth 2 MODEL.DEVICE cpu
    dl_flops --convention paper               # ours (gmac) and the paper's count, side by side
    dl_flops --dataset synthetic_cityscapes_val --num-images 50 --out flops/ MODEL.WEIGHTS m.pth

**One input** (the default). Prints the input size, the convention and its unit, the total, the
parameter counts, a per-module table and the ops that ran but were not counted (see
``dl_lib.analysis.conventions`` for what each convention includes). The count is the executed
cost of one random input, ``torch.randn(N, 3, H, W)`` drawn on the CPU from a generator seeded
with ``--seed`` (default 0) and moved to the model's device, by the same
:class:`~dl_lib.analysis.CostTracker` the evaluator runs per image with
``TEST.COST_CONVENTIONS`` (masked convolutions cost their active positions). Models that count
their own cost (``"flops"`` in their eval outputs: dynamic routing's paper, corrected and
expected GFLOPs; ADP-C's cumulative GFLOPs per exit) get those printed too, for the same input.

**Paper conventions.** ``--convention all`` (every convention) and ``--convention paper`` (ours,
``gmac``, only) end with a per-module table of ours and the paper's count side by side, and both
totals. The paper's convention is the model's ``published_cost_convention()`` when it defines one
(docs/CONTRACTS.md, Cost; MFARANet: HRNet's summary on the copy without decoder BNs and boundary
heads, built from the playground's config with its ``opts``), else the one the reference docs
give for the family (:data:`REFERENCE_CONVENTIONS`: HRNet backbones, i.e. ADP-C and the HRNet
baselines, count with HRNet's summary, ``hrnet``; dynamic routing with its ``cal_op_flops``,
``dynamic_routing``). Families whose papers state no count (CondNet, ACoSP, the plain baselines)
say so and print ours only.

**Per-image distribution over a dataset** (``--dataset NAME --num-images N [--out DIR]``): the
model runs over the first N images of the registered dataset NAME through the test loader of the
playground's config with ``DATASETS.TEST`` set to ``(NAME,)`` (its test-time resizing and
``TEST.IMS_PER_BATCH``; not the multi-scale wrapper), each batch under a ``CostTracker``, as the
evaluator counts ``TEST.COST_CONVENTIONS``. Recorded per image: the executed cost in each
convention of ``--convention`` (``gmac``; ``all``: every convention; ``paper``: ``gmac`` and the
paper's convention when it is counted on the model itself); for models with exits that can stop
early (a ``stop_exit`` attribute: ADP-C) the cumulative executed cost up to each exit
(``exit0`` .. ``exit{K-1}``: one more forward per earlier exit, with ``stop_exit`` set to it, as
the original's profiler ran ``stop1..4``); and the model's own ``"flops"`` entries (routing
models: real, corrected and expected GFLOPs; ADP-C: its per-exit count). Printed: a table of
mean, std (population, ddof 0), min, p50, p90 and max of every quantity over the N images;
written to ``--out`` (default ``OUTPUT_DIR/flops/<NAME>``): ``flops_per_image.json`` (the per-image
records, the summary, the units) and ``flops_hist.png`` (matplotlib, Agg: one 640x480-pixel panel
per counted convention, with one histogram per exit for models with exits, and one more panel for
the model's own counts when it has any). A static model (every image costs the same under every
quantity) gets a single value, and the output says so. Progress goes to stderr every
``--log-every`` images (default 10).

``MODEL.WEIGHTS``, when set, is loaded (strict, as ``dl_test``) before counting: the cost of
input-dependent models depends on their weights. Without it the random initialisation is counted
(said in the output).
"""
import argparse
import json
import logging
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tabulate import tabulate

from dl_lib.tools.common import load_weights, parse_tool_args
from dl_lib import playground
from dl_lib.analysis import CONVENTIONS, cost_items, count_parameters, flop_count, flop_table
from dl_lib.analysis.cost_tracker import CostTracker
from dl_lib.analysis.table import module_table
from dl_lib.checkpoint import CheckpointReadError, IncompatibleCheckpointError
from dl_lib.config import ConfigError
from dl_lib.utils.file_io import atomic_write

__all__ = ["main", "build_parser", "model_counts", "report", "paper_convention", "paper_model",
           "side_by_side", "random_input", "dataset_costs", "summarize", "summary_table",
           "write_histogram", "REFERENCE_CONVENTIONS", "PANEL_PX", "JSON_NAME", "HIST_NAME"]

logger = logging.getLogger("dl_lib.tools.flops")

JSON_NAME = "flops_per_image.json"
HIST_NAME = "flops_hist.png"
PANEL_PX = (640, 480)  # width, height of one histogram panel (figure = panels side by side)
STATS = ("mean", "std", "min", "p50", "p90", "max")

# Families whose papers count their own way but whose models define no
# published_cost_convention(): what the reference docs (shared/docs/reference/) say they used.
# Key: a predicate on the model; checked in order.
REFERENCE_CONVENTIONS: List[Tuple[Callable, dict]] = [
    (lambda m: type(getattr(m, "backbone", None)).__name__ == "HighResolutionNet",
     {"label": "HRNet / ADP-C GFLOPs", "convention": "hrnet", "opts": {},
      "source": "reference anytime.md 3.6 and framework_anchors.md 3.6: HRNet's get_model_summary "
                "(conv/linear MACs / 2^30; ADP-C: masked convs at their computed fraction)"}),
    (lambda m: type(m).__name__ == "DynamicRoutingSegmentor",
     {"label": "DynamicRouting GFLOPs", "convention": "dynamic_routing", "opts": {},
      "source": "reference dynamic_routing.md 3.1: cal_op_flops (MACs + bias + BN + ReLU, 1e9; "
                "the model's own real/expected counts are printed too)"}),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dl_flops", description="Count parameters and FLOPs of a playground model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Conventions: gmac = conv/linear/matmul multiply-adds / 1e9; hrnet = HRNet's model "
               "summary (conv/linear MACs / 2^30); dynamic_routing = DynamicRouting's count "
               "(MACs + bias + BN + ReLU, 1e9); all = every one, then ours and the paper's side "
               "by side; paper = gmac and the paper's side by side.")
    p.add_argument("--playground", default=None,
                   help="playground folder (default: the current folder)")
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), default=None,
                   help="input height and width (default: INPUT.FIX_SIZE_FOR_FLOPS)")
    p.add_argument("--convention", default="gmac", choices=list(CONVENTIONS) + ["all", "paper"])
    p.add_argument("--depth", type=int, default=3, help="module nesting depth of the table")
    p.add_argument("--batch", type=int, default=1, help="batch size of the counted input")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="per-image cost over the registered dataset NAME (its test loader)")
    p.add_argument("--num-images", type=int, default=None, metavar="N",
                   help="with --dataset: images to run (default: all)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help=f"with --dataset: folder for {JSON_NAME} and {HIST_NAME} "
                        "(default OUTPUT_DIR/flops/<NAME>)")
    p.add_argument("--log-every", type=int, default=10, metavar="K",
                   help="with --dataset: progress line every K images (default 10)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE config overrides, after all flags")
    return p


def random_input(batch: int, size: Sequence[int], seed: int = 0, device="cpu",
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The counted input: ``torch.randn(batch, 3, H, W)`` from a CPU generator seeded with
    ``seed``, moved to ``device`` (the same values on every device)."""
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(int(batch), 3, int(size[0]), int(size[1]), generator=g)
    return x.to(device=device, dtype=dtype)


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


# ------------------------------------------------------------------------------- paper convention
def paper_convention(model) -> Optional[dict]:
    """How the family's authors count: ``{"label", "convention", "opts", "source"}`` from the
    model's ``published_cost_convention()``, else from :data:`REFERENCE_CONVENTIONS`, else None.
    An unknown convention is a ConfigError naming the model."""
    protocol = getattr(model, "published_cost_convention", None)
    spec = None
    if callable(protocol):
        spec = dict(protocol())
        spec.setdefault("source", f"{type(model).__name__}.published_cost_convention()")
    else:
        for matches, entry in REFERENCE_CONVENTIONS:
            if matches(model):
                spec = dict(entry)
                break
    if spec is None:
        return None
    if spec.get("convention") not in CONVENTIONS:
        raise ConfigError(f"{type(model).__name__}: the paper's cost convention "
                          f"{spec.get('convention')!r} is not one of {list(CONVENTIONS)}")
    spec.setdefault("label", spec["convention"])
    spec["opts"] = dict(spec.get("opts") or {})
    return spec


def _set_key(cfg, key: str, value, model_name: str) -> None:
    node = cfg
    *parents, last = key.split(".")
    for part in parents:
        if part not in node:
            raise ConfigError(f"{model_name}.published_cost_convention() names {key}, which the "
                              "config lacks")
        node = node[part]
    if last not in node:
        raise ConfigError(f"{model_name}.published_cost_convention() names {key}, which the "
                          "config lacks")
    node[last] = value


def paper_model(path: Optional[str], cfg, model, spec: dict):
    """The model the paper's count runs on: ``model`` itself, or, when ``spec["opts"]`` is not
    empty, a copy built by the playground's ``build_model`` from ``cfg`` with the opts merged
    (random weights: these counts do not depend on them)."""
    if not spec["opts"]:
        return model
    copy_cfg = cfg.clone()
    copy_cfg.defrost()
    for key, value in spec["opts"].items():
        _set_key(copy_cfg, key, value, type(model).__name__)
    return playground.build_model(path, copy_cfg)


def _short_unit(convention: str) -> str:
    return CONVENTIONS[convention][1].split(" (")[0]


def side_by_side(model, x: torch.Tensor, depth: int, paper: Optional[Tuple[dict, object]],
                 results: Optional[dict] = None) -> str:
    """Ours (``gmac``) and the paper's count of ``x`` per module and in total.

    ``paper``: ``(spec, counted_model)`` from :func:`paper_convention` / :func:`paper_model`, or
    None (then one line says that the family states no convention). ``results``: FlopResults
    already counted on ``model`` and ``x``, by convention (reused, not counted again)."""
    results = results or {}
    if paper is None:
        return (f"Paper's convention: none stated for {type(model).__name__} (no "
                "published_cost_convention() and none in the reference docs); ours (gmac) only.")
    spec, counted = paper
    conv = spec["convention"]
    ours = results.get("gmac") or flop_count(model, convention="gmac", inputs=x)
    if counted is model and conv in results:
        theirs = results[conv]
    else:
        theirs = flop_count(counted, convention=conv, inputs=x)
    ours_col = "ours: GMACs (gmac)"
    theirs_col = f"paper: {_short_unit(conv)} ({conv})"
    columns = {"#params": ours.params, ours_col: ours.by_module, theirs_col: theirs.by_module}
    names = [n for n, _ in model.named_modules()]
    if counted is not model:
        columns["#params (paper's copy)"] = theirs.params
        seen = set(names)
        names += [n for n, _ in counted.named_modules() if n not in seen]
    fmt = {ours_col: lambda v: f"{v:.4g}", theirs_col: lambda v: f"{v:.4g}"}
    where = "the model itself" if counted is model else (
        "a copy built with " + ", ".join(f"{k} {v!r}" for k, v in spec["opts"].items())
        + f" ({count_parameters(counted).total:,} parameters)")
    ratio = theirs.total / ours.total if ours.total else float("nan")
    lines = ["", "Ours and the paper's, side by side (same input):",
             f"Paper's convention: {spec['label']!r} = {conv} -> {CONVENTIONS[conv][1]}, on "
             f"{where}; source: {spec['source']}",
             module_table(names, columns, max_depth=depth, fmt=fmt),
             f"Totals: ours {ours.total:.6g} GMACs | paper ({spec['label']}) {theirs.total:.6g} "
             f"{_short_unit(conv)} (paper / ours = {ratio:.4f})"]
    if theirs.unsupported_ops:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(theirs.unsupported_ops.items()))
        lines.append(f"Ran but not counted under the paper's {conv!r}: {ops}")
    return "\n".join(lines)


def report(model, size: Sequence[int], conventions: List[str], depth: int = 3,
           batch: int = 1, seed: int = 0, paper: Optional[Tuple[dict, object]] = None,
           compare: bool = False) -> str:
    """The text ``dl_flops`` prints for ``model`` at ``size`` = (H, W): each convention's total
    and table on :func:`random_input` ``(batch, size, seed)``, the model's own count, and with
    ``compare`` ours and the paper's side by side (``paper`` as in :func:`side_by_side`)."""
    pc = count_parameters(model)
    lines = [f"Input size: {batch}x3x{size[0]}x{size[1]} (torch.randn, seed {seed})",
             f"Parameters: {pc.total:,} total, {pc.trainable:,} trainable "
             f"({pc.total / 1e6:.3f} M)"]
    # one input for every count, so input-dependent models are compared on the same one
    p = next(iter(model.parameters()), None)
    x = random_input(batch, size, seed, device=p.device if p is not None else "cpu",
                     dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)
    results = {}
    for conv in conventions:
        r = results[conv] = flop_count(model, convention=conv, inputs=x)
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
    if compare:
        lines.append(side_by_side(model, x, depth, paper, results))
    return "\n".join(lines)


# ------------------------------------------------------------------------------- dataset mode
def _exits_of(outputs: List[dict]) -> int:
    exits = outputs[0].get("sem_seg_exits") if outputs and isinstance(outputs[0], dict) else None
    return len(exits) if exits else 0


def _exit_costs(model, inputs: List[dict], conventions: Sequence[str], outputs: List[dict],
                total: List[Dict[str, float]]) -> Optional[List[Dict[str, List[float]]]]:
    """Per image ``{convention: [cost up to exit 0, .., up to exit K-1]}`` for a model that can
    stop at an earlier exit (``stop_exit``, 1-based) and returned K >= 2 exits; else None. The
    last exit's is ``total`` (the run that produced ``outputs``)."""
    num_exits = _exits_of(outputs)
    if num_exits < 2 or not isinstance(getattr(model, "stop_exit", None), int):
        return None
    per_exit = [[] for _ in inputs]
    original = model.stop_exit
    try:
        for k in range(1, num_exits):
            model.stop_exit = k
            with CostTracker(model, conventions, num_images=len(inputs)) as tracker:
                model(inputs)
            for i, cost in enumerate(tracker.per_image()):
                per_exit[i].append(cost)
    finally:
        model.stop_exit = original
    for i, cost in enumerate(total):
        per_exit[i].append(cost)
    return [{c: [e[c] for e in rows] for c in conventions} for rows in per_exit]


def dataset_costs(model, loader, conventions: Sequence[str], num_images: Optional[int] = None,
                  log_every: int = 10, log: Callable[[str], None] = lambda msg: None
                  ) -> List[dict]:
    """Run ``model`` (eval, no grad) over ``loader``'s batches until ``num_images`` images (None:
    all); one record per image: ``{"index", "file_name", "image_id", "input_size": [h, w],
    "cost": {convention: value}, "cost_per_exit": {convention: [...]} (models with exits),
    "model_count": {name: value} (the model's own "flops")}``; values in each convention's
    unit. ``log`` gets a progress line every ``log_every`` images and at the end."""
    records: List[dict] = []
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for inputs in loader:
                if num_images is not None:
                    inputs = inputs[: num_images - len(records)]
                if not inputs:
                    break
                with CostTracker(model, conventions, num_images=len(inputs)) as tracker:
                    outputs = model(inputs)
                total = tracker.per_image()
                exits = _exit_costs(model, inputs, conventions, outputs, total)
                for i, (d, out) in enumerate(zip(inputs, outputs)):
                    record = {"index": len(records), "file_name": d.get("file_name"),
                              "image_id": d.get("image_id"),
                              "input_size": [int(s) for s in d["image"].shape[-2:]],
                              "cost": total[i]}
                    if exits is not None:
                        record["cost_per_exit"] = exits[i]
                    if isinstance(out, dict) and out.get("flops") is not None:
                        record["model_count"] = cost_items(out["flops"])
                    records.append(record)
                    n = len(records)
                    if n % max(log_every, 1) == 0 or n == num_images:
                        per = (time.perf_counter() - start) / n
                        log(f"{n}{'' if num_images is None else f'/{num_images}'} images, "
                            f"{per:.3f} s/image")
                if num_images is not None and len(records) >= num_images:
                    break
    finally:
        model.train(was_training)
    return records


def quantities(records: List[dict]) -> Dict[str, Tuple[str, List[float]]]:
    """Quantity name -> (unit, one value per image): ``<conv>`` (executed total),
    ``<conv> exit<k>`` (cumulative, models with exits), ``model: <name>`` (own counts)."""
    out: Dict[str, Tuple[str, List[float]]] = {}
    for conv in records[0]["cost"]:
        out[conv] = (_short_unit(conv), [r["cost"][conv] for r in records])
        if "cost_per_exit" in records[0]:
            for k in range(len(records[0]["cost_per_exit"][conv])):
                out[f"{conv} exit{k}"] = (_short_unit(conv),
                                          [r["cost_per_exit"][conv][k] for r in records])
    names = list(dict.fromkeys(n for r in records for n in r.get("model_count", {})))
    for name in names:
        values = [r["model_count"][name] for r in records if name in r.get("model_count", {})]
        out[f"model: {name}"] = ("model's own (GFLOPs)", values)
    return out


def summarize(values: Sequence[float]) -> Dict[str, float]:
    """mean, std (population, ddof 0), min, p50, p90 (linear interpolation) and max."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "max": float(a.max())}


def summary_table(summary: Dict[str, dict]) -> str:
    """tabulate "quantity | unit | n | mean | std | min | p50 | p90 | max"."""
    rows = [[name, s["unit"], s["n"]] + [s[k] for k in STATS] for name, s in summary.items()]
    return tabulate(rows, headers=["quantity", "unit", "n"] + list(STATS), tablefmt="pipe",
                    floatfmt=".6g")


def write_histogram(path: str, records: List[dict], title: str) -> Tuple[int, int]:
    """``flops_hist.png``: one :data:`PANEL_PX` panel per convention (one histogram per exit for
    models with exits) and one for the model's own counts when it has any. Returns (W, H) px."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = quantities(records)
    conventions = list(records[0]["cost"])
    panels = [(conv, [n for n in q if n == conv or n.startswith(f"{conv} exit")])
              for conv in conventions]
    panels = [(conv, [n for n in names if n != conv] if len(names) > 1 else names)
              for conv, names in panels]
    own = [n for n in q if n.startswith("model: ")]
    if own:
        panels.append(("model's own count", own))
    dpi = 100
    fig, axes = plt.subplots(1, len(panels), squeeze=False, dpi=dpi,
                             figsize=(PANEL_PX[0] * len(panels) / dpi, PANEL_PX[1] / dpi))
    for ax, (name, series) in zip(axes[0], panels):
        values = [v for s in series for v in q[s][1]]
        lo, hi = min(values), max(values)
        if hi <= lo:  # a static model: one value; give the single bar some width
            lo, hi = lo * (1 - 1e-3) - 1e-12, hi * (1 + 1e-3) + 1e-12
        bins = np.linspace(lo, hi, min(20, max(len(records), 2)) + 1)
        for s in series:  # several exits: outlines, so that no exit hides another
            ax.hist(q[s][1], bins=bins, label=s.replace("model: ", ""),
                    **(dict(histtype="step", linewidth=2) if len(series) > 1 else dict(alpha=0.9)))
        ax.set_xlabel(q[series[0]][0] if not name.startswith("model") else "GFLOPs (model's own)")
        ax.set_ylabel("images")
        ax.set_title(name if name.startswith("model") else f"executed cost, {name}")
        if len(series) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return PANEL_PX[0] * len(panels), PANEL_PX[1]


def _registered_dataset(name: str) -> None:
    from dl_lib.data import DatasetCatalog

    known = DatasetCatalog.list()
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"--dataset {name!r} is not a registered dataset.{hint} Registered: "
                          f"{', '.join(known)}. Register your own with "
                          "dl_lib.data.register_sem_seg(...) or DatasetCatalog.register(name, fn) "
                          "in the playground's net.py.")


def _dataset_conventions(convention: str, model) -> List[str]:
    if convention == "all":
        return list(CONVENTIONS)
    if convention == "paper":
        spec = paper_convention(model)
        extra = [spec["convention"]] if spec and not spec["opts"] else []
        return list(dict.fromkeys(["gmac"] + extra))
    return [convention]


def run_dataset(args, cfg, model, weights: str, log: Callable[[str], None]) -> int:
    """``--dataset`` mode of :func:`main` (prints the table, writes the JSON and the PNG)."""
    from dl_lib.data import build_test_loader

    name = args.dataset
    _registered_dataset(name)
    if args.num_images is not None and args.num_images < 1:
        raise ConfigError(f"--num-images {args.num_images}: run at least one image")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASETS.TEST = (name,)
    cfg.freeze()
    conventions = _dataset_conventions(args.convention, model)
    loader = build_test_loader(cfg, name)
    available = len(loader.dataset)
    num_images = available if args.num_images is None else args.num_images
    if num_images > available:
        log(f"{name} has {available} images, fewer than --num-images {num_images}: running all")
        num_images = available
    log(f"running {num_images} images of {name} under {', '.join(conventions)}")
    records = dataset_costs(model, loader, conventions, num_images, args.log_every, log)
    q = quantities(records)
    summary = {n: dict(unit=unit, n=len(v), **summarize(v)) for n, (unit, v) in q.items()}
    static = all(s["max"] == s["min"] for s in summary.values())
    out_dir = args.out or os.path.join(cfg.OUTPUT_DIR, "flops", name)
    os.makedirs(out_dir, exist_ok=True)
    sizes = sorted({tuple(r["input_size"]) for r in records})
    title = (f"{type(model).__name__} on {len(records)} images of {name} (input "
             + ", ".join(f"{h}x{w}" for h, w in sizes) + ")")
    hist = os.path.join(out_dir, HIST_NAME)
    width, height = write_histogram(hist, records, title)
    payload = {"model": type(model).__name__, "playground": playground.find_playground(
               args.playground), "dataset": name, "num_images": len(records),
               "weights": weights, "conventions": conventions,
               "units": {c: CONVENTIONS[c][1] for c in conventions}, "static": static,
               "summary": summary, "images": records,
               "histogram": {"file": HIST_NAME, "width": width, "height": height}}
    json_path = os.path.join(out_dir, JSON_NAME)
    with atomic_write(json_path) as f:
        json.dump(payload, f, indent=1)
    print(f"Per-image cost of {type(model).__name__} over {len(records)} images of {name} "
          f"(input {', '.join(f'{h}x{w}' for h, w in sizes)}; weights: {weights})")
    print(summary_table(summary))
    if static:
        print("Every image cost the same under every quantity: the distribution is a single "
              "value (a static model at this input size, or an input-dependent one that took "
              "the same path on each of these images).")
    else:
        varying = [n for n, s in summary.items() if s["max"] != s["min"]]
        print(f"Input-dependent: {', '.join(varying)} vary over the images.")
    print(f"Wrote {json_path} and {hist} ({width}x{height})")
    return 0


# ------------------------------------------------------------------------------- entry point

def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``dl_flops``; returns the exit status."""
    parser = build_parser()
    args = parse_tool_args(parser, argv)
    if args.dataset is None and (args.num_images is not None or args.out is not None):
        parser.error("--num-images and --out belong to --dataset NAME (the per-image "
                     "distribution); add --dataset or drop them")
    if args.dataset is not None and (args.size is not None or args.batch != 1):
        parser.error("--size and --batch shape the random input; with --dataset the images come "
                     "at the test loader's sizes (INPUT.MIN_SIZE_TEST) in batches of "
                     "TEST.IMS_PER_BATCH: drop them or set those keys")
    log = lambda msg: print(f"dl_flops: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.dataset is not None:
            _registered_dataset(args.dataset)  # before building: a typo costs nothing
        cfg, model = playground.build(args.playground, args.opts)
        weights = load_weights(cfg, model)
        if args.dataset is not None:
            return run_dataset(args, cfg, model, weights, log)
        size = list(args.size) if args.size else list(cfg.INPUT.FIX_SIZE_FOR_FLOPS)
        if len(size) != 2 or min(size) <= 0:
            parser.error(f"input size must be two positive integers H W, got {size} (from "
                         f"{'--size' if args.size else 'INPUT.FIX_SIZE_FOR_FLOPS'})")
        compare = args.convention in ("all", "paper")
        paper = None
        if compare:
            spec = paper_convention(model)
            if spec is not None:
                paper = (spec, paper_model(args.playground, cfg, model, spec))
        conventions = {"all": list(CONVENTIONS), "paper": ["gmac"]}.get(
            args.convention, [args.convention])
    except (playground.PlaygroundError, ConfigError, CheckpointReadError,
            IncompatibleCheckpointError) as e:
        parser.exit(2, f"dl_flops: error: {e}\n")
    print(f"Weights: {weights}")
    print(report(model, size, conventions, depth=args.depth, batch=args.batch, seed=args.seed,
                 paper=paper, compare=compare))
    return 0


if __name__ == "__main__":
    sys.exit(main())

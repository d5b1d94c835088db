"""Per-exit report of multi-exit (anytime) models and their accuracy / cost trade-off plot.

What it reads, from the results of one dataset (``inference_on_dataset``):

- ``results["sem_seg"]["exit{k}"]["mIoU"]``: the evaluator's per-exit scores (percent);
- ``results["sem_seg"]["mean_exit{k}"]``: the mean over images of the model's ``"flops"``
  entry ``exit{k}`` (cumulative GFLOPs up to and including exit k, the papers' convention);
- ``results["time"]["exit_ms_per_image"]`` and ``["device"]``: the median cumulative time until
  each exit (the model's ``"exit_ms"``).

What it produces (``report_exits``, called by ``DefaultTrainer.test`` on the main process):
``results["exits"] = {"num_exits", "mIoU": [...], "mean_mIoU", "gflops": [...] | None,
"mean_gflops", "time": {"ms_per_image": [...], "mean_ms_per_image", "device"} (when measured),
"published": {label: {"mIoU": [...], "gflops": [...]}}, "run": label}``; the lines of the
original ADP-C test script (``44.34<TAB>60.13<TAB>76.82<TAB>81.31<TAB>65.65``: per-exit mIoU and
their arithmetic mean, two decimals), logged and written to ``<output_dir>/result.txt``; and
``<output_dir>/exits_tradeoff.png`` (mIoU against GFLOPs and against latency).

Several runs in one figure, from their ``results.json`` files::

    python -m dl_lib.evaluation.exits OUT.png RESULTS_JSON [RESULTS_JSON ...] [--labels A B ...]
"""
import argparse
import json
import logging
import math
import os
import statistics
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from tabulate import tabulate

from dl_lib.utils.file_io import atomic_write

__all__ = ["exit_report", "exit_lines", "format_exit_report", "published_exit_points",
           "report_exits", "plot_exit_tradeoff", "load_exit_runs", "run_label", "main",
           "agg_figure", "save_png"]

logger = logging.getLogger(__name__)

EXITS_KEY = "exits"  # where the report lives in a dataset's results (and results.json)
RESULT_TXT = "result.txt"
TRADEOFF_PNG = "exits_tradeoff.png"


def _mean(values: Sequence[float]) -> float:
    # the original's mean of the per-exit numbers (before rounding)
    return statistics.fmean(values) if values else float("nan")


def _num_exits(seg: Mapping) -> int:
    k = 0
    while isinstance(seg.get(f"exit{k}"), Mapping):
        k += 1
    return k


def _check_points(label: str, points: Mapping, source: str) -> Dict[str, List[float]]:
    """One published curve ``{"mIoU": [...], "gflops": [...]}`` (optional ``"ms"``), checked."""
    if not isinstance(points, Mapping) or "mIoU" not in points:
        raise ValueError(f"{source}: published points {label!r} must be a dict with 'mIoU' (and "
                         f"'gflops' and/or 'ms') lists, got {points!r}")
    out = {k: [float(v) for v in points[k]] for k in ("mIoU", "gflops", "ms") if k in points}
    for k, v in out.items():
        if len(v) != len(out["mIoU"]):
            raise ValueError(f"{source}: published points {label!r} have {len(out['mIoU'])} mIoU "
                             f"values but {len(v)} {k!r} values; give one per exit")
    return out


def published_exit_points(model) -> Dict[str, Dict[str, List[float]]]:
    """``model.published_exit_points()`` (also through a test-time wrapper's ``.model`` or DDP's
    ``.module``), checked: ``{label: {"mIoU": [...], "gflops": [...]}}``; ``{}`` if it has none."""
    for m in (model, getattr(model, "model", None), getattr(model, "module", None)):
        fn = getattr(m, "published_exit_points", None)
        if callable(fn):
            source = f"{type(m).__name__}.published_exit_points()"
            return {str(k): _check_points(str(k), v, source) for k, v in (fn() or {}).items()}
    return {}


def exit_report(results: Mapping, published: Optional[Mapping] = None,
                run: str = "") -> Optional[dict]:
    """The per-exit report of one dataset's ``results`` (see the module doc), or None when the
    results have no exits (``results["sem_seg"]`` without ``exit0``).

    GFLOPs are reported only when every exit has its ``mean_exit{k}``; latency only when
    ``results["time"]`` has ``exit_ms_per_image`` with one value per exit.
    """
    seg = results.get("sem_seg") or {}
    num = _num_exits(seg)
    if num == 0:
        return None
    miou = [float(seg[f"exit{k}"].get("mIoU", float("nan"))) for k in range(num)]
    report = {"num_exits": num, "mIoU": miou, "mean_mIoU": _mean(miou), "gflops": None,
              "mean_gflops": None}
    if all(f"mean_exit{k}" in seg for k in range(num)):
        gflops = [float(seg[f"mean_exit{k}"]) for k in range(num)]
        report.update(gflops=gflops, mean_gflops=_mean(gflops))
    elif any(f"mean_exit{k}" in seg for k in range(num)):
        logger.warning(f"Per-exit GFLOPs: the model's 'flops' has exit entries for some of the "
                       f"{num} exits only; give 'exit0' .. 'exit{num - 1}' for every image")
    time = results.get("time") or {}
    ms = time.get("exit_ms_per_image")
    if ms is not None:
        if len(ms) == num:
            ms = [float(t) for t in ms]
            report["time"] = {"ms_per_image": ms, "mean_ms_per_image": _mean(ms),
                              "device": time.get("device", "")}
        else:
            logger.warning(f"Per-exit latency: the model's 'exit_ms' has {len(ms)} times but "
                           f"the results have {num} exits; give one time per returned exit")
    report["published"] = {str(k): _check_points(str(k), v, "published points")
                           for k, v in (published or {}).items()}
    report["run"] = run
    return report


def _line(values: Sequence[float], mean: float) -> str:
    return "\t".join(f"{v:.2f}" for v in list(values) + [mean])


def exit_lines(report: Mapping) -> List[str]:
    """The original's tab-separated lines: per-exit mIoU then their mean (two decimals); the same
    for GFLOPs and for latency in ms when the report has them."""
    lines = [_line(report["mIoU"], report["mean_mIoU"])]
    if report.get("gflops") is not None:
        lines.append(_line(report["gflops"], report["mean_gflops"]))
    if report.get("time"):
        lines.append(_line(report["time"]["ms_per_image"], report["time"]["mean_ms_per_image"]))
    return lines


def _gflops_cell(value: Optional[float]) -> Optional[str]:
    # two decimals as in the line, three significant digits for tiny models (toy tests)
    if value is None:
        return None
    return f"{value:.2f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"


def format_exit_report(report: Mapping) -> str:
    """The lines of :func:`exit_lines`, each named, then a table: exit | mIoU | GFLOPs | ms."""
    lines = exit_lines(report)
    names = ["mIoU per exit and mean"]
    if report.get("gflops") is not None:
        names.append("GFLOPs per exit (cumulative) and mean")
    if report.get("time"):
        names.append(f"latency per exit (ms, cumulative, median per image) and mean on "
                     f"{report['time']['device']}")
    text = [f"{name}:\n{line}" for name, line in zip(names, lines)]
    num = report["num_exits"]
    gflops = list(report.get("gflops") or [None] * num) + [report.get("mean_gflops")]
    ms = (report.get("time") or {}).get("ms_per_image") or [None] * num
    ms = list(ms) + [(report.get("time") or {}).get("mean_ms_per_image")]
    names = [f"exit{k}" for k in range(num)] + ["mean"]
    miou = list(report["mIoU"]) + [report["mean_mIoU"]]
    rows = [[n, m, _gflops_cell(g), t] for n, m, g, t in zip(names, miou, gflops, ms)]
    table = tabulate(rows, headers=["exit", "mIoU", "GFLOPs", "ms"], tablefmt="pipe",
                     floatfmt=".2f", missingval="-", disable_numparse=[2],
                     colalign=("left", "right", "right", "right"))
    return "\n".join(text + [table])


def run_label(output_dir: str) -> str:
    """``<root>/<Group>/<Name>[/inference/<weights>]`` -> ``"<Group>/<Name>"`` (a plot's legend),
    with ``" <weights>"`` added when the weights folder says more than ``model_final``."""
    parts = [p for p in os.path.normpath(os.path.abspath(output_dir)).split(os.sep) if p]
    suffix = ""
    if len(parts) >= 2 and parts[-2] == "inference":
        suffix = "" if parts[-1] == "model_final" else f" {parts[-1]}"
        parts = parts[:-2]
    return "/".join(parts[-2:]) + suffix


def report_exits(results: dict, output_dir: str, model=None, run: str = "") -> Optional[dict]:
    """What ``dl_test`` adds for a multi-exit model (main process): builds the report of one
    dataset's ``results``, stores it as ``results["exits"]``, logs it, writes
    ``output_dir/result.txt`` (the lines of :func:`exit_lines`, the mIoU line first) and
    ``output_dir/exits_tradeoff.png`` with ``model``'s published points. Returns the report, or
    None (nothing written) when the results have no exits."""
    report = exit_report(results, published_exit_points(model) if model is not None else None,
                         run=run or run_label(output_dir))
    if report is None:
        return None
    results[EXITS_KEY] = report
    logger.info(f"Per-exit results ({report['num_exits']} exits):\n{format_exit_report(report)}")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RESULT_TXT)
    with atomic_write(path) as f:  # a crash mid-write keeps the previous file
        f.write("\n".join(exit_lines(report)) + "\n")
    logger.info(f"Per-exit lines saved to {path}")
    plot = os.path.join(output_dir, TRADEOFF_PNG)
    plot_exit_tradeoff([(report["run"], report)], plot)
    logger.info(f"Per-exit trade-off plot saved to {plot}")
    return report


# ---------------------------------------------------------------------------------------------
# The plot
# ---------------------------------------------------------------------------------------------
def agg_figure(figsize: Tuple[float, float], dpi: int = 100):
    """A matplotlib ``Figure`` on an Agg canvas (no pyplot state, safe in any thread or
    process); the plots of ``dl_lib.evaluation.plots`` and ``dl_lib.tools`` use it too."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str) -> None:
    """Write ``fig`` to ``path`` as PNG, creating its folder; atomically, so a crash never
    leaves a half-written plot over an old one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")


def _finite(xs, ys) -> Tuple[list, list]:
    pairs = [(x, y) for x, y in zip(xs, ys)
             if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_exit_tradeoff(runs: Sequence[Tuple[str, Mapping]], path: Optional[str] = None,
                       published: Optional[Mapping] = None):
    """Two panels: per-exit mIoU against GFLOPs (left) and against latency in ms (right).

    ``runs``: ``(label, report)`` pairs (reports of :func:`exit_report`); each is one solid line
    with filled markers per panel where the report has that cost. ``published``: ``{label:
    {"mIoU": [...], "gflops": [...] (, "ms": [...])}}``, drawn as dashed lines with hollow
    markers labelled ``"published: <label>"`` (``<label>`` alone when it says "published");
    None = the union of the reports' own ``"published"`` points. Writes a PNG to ``path``
    (atomically) when given; returns the matplotlib ``Figure`` (Agg canvas, no pyplot state).
    """
    if published is None:
        published = {}
        for _, report in runs:
            for label, points in (report.get("published") or {}).items():
                published.setdefault(label, points)
    fig = agg_figure((11, 4.2))
    ax_flops, ax_ms = fig.subplots(1, 2)
    devices = sorted({(r.get("time") or {}).get("device", "") for _, r in runs} - {""})
    for ax, key, xlabel in ((ax_flops, "gflops", "GFLOPs per image (cumulative up to the exit)"),
                            (ax_ms, "ms", "latency per image until the exit (ms)"
                             + (f", {', '.join(devices)}" if devices else ""))):
        for i, (label, report) in enumerate(runs):
            xs = (report.get("gflops") if key == "gflops"
                  else (report.get("time") or {}).get("ms_per_image"))
            if not xs:
                continue
            x, y = _finite(xs, report["mIoU"])
            ax.plot(x, y, marker="o", linestyle="-", color=f"C{i}", label=label)
            for k, (xk, yk) in enumerate(zip(x, y)):
                ax.annotate(str(k), (xk, yk), textcoords="offset points", xytext=(4, -10),
                            fontsize=7, color=f"C{i}")
        for j, (label, points) in enumerate(published.items()):
            if key in points:
                x, y = _finite(points[key], points["mIoU"])
                ax.plot(x, y, marker="s", linestyle="--", color=f"C{len(runs) + j}",
                        markerfacecolor="none",
                        label=label if "published" in label.lower() else f"published: {label}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mIoU (%)")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no run reported {'GFLOPs' if key == 'gflops' else 'latency'} "
                    "per exit", ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax_flops.set_title("accuracy against cost per exit", fontsize=10)
    ax_ms.set_title("accuracy against measured latency per exit", fontsize=10)
    fig.tight_layout()
    if path:
        save_png(fig, path)
    return fig


def load_exit_runs(paths: Sequence[str], labels: Optional[Sequence[str]] = None
                   ) -> List[Tuple[str, dict]]:
    """``(label, report)`` for every dataset with a per-exit report in the ``results.json``
    files ``paths`` (written by ``dl_test``: one dataset's results, or ``{dataset: results}``).
    Labels: ``labels`` (one per file), else the report's ``run``, else the file's folder; a
    dataset name is added when a file holds several."""
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} results files; give one each")
    runs = []
    for i, path in enumerate(paths):
        with open(path) as f:
            results = json.load(f)
        per_dataset = {"": results} if "sem_seg" in results else results
        found = [(name, r[EXITS_KEY]) for name, r in per_dataset.items()
                 if isinstance(r, Mapping) and isinstance(r.get(EXITS_KEY), Mapping)]
        if not found:
            raise ValueError(f"{path} holds no per-exit report ('{EXITS_KEY}' of a dataset); it "
                             "is written by dl_test for models that return 'sem_seg_exits'")
        for name, report in found:
            base = (labels[i] if labels is not None
                    else report.get("run") or run_label(os.path.dirname(path)))
            runs.append((f"{base} {name}" if len(found) > 1 else base, report))
    return runs


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dl_lib.evaluation.exits OUT.png RESULTS_JSON [...] [--labels ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m dl_lib.evaluation.exits",
        description="Draw per-exit mIoU against GFLOPs and against latency for several dl_test "
                    "runs (their results.json files), one line per run, with the models' "
                    "published points.")
    parser.add_argument("output", help="the PNG to write")
    parser.add_argument("results", nargs="+", help="results.json files written by dl_test")
    parser.add_argument("--labels", nargs="+", help="one legend label per results file")
    args = parser.parse_args(argv)
    try:
        runs = load_exit_runs(args.results, args.labels)
    except (OSError, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    plot_exit_tradeoff(runs, args.output)
    for label, report in runs:
        print(f"{label}: " + " | ".join(exit_lines(report)).replace("\t", " "))
    print(f"wrote {args.output} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

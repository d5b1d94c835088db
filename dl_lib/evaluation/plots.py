"""Per-class IoU bars of one evaluation (``dl_test`` writes them next to its ``results.json``).

What it reads, from the results of one dataset (``inference_on_dataset``): the evaluator's
``IoU-<class>`` scores (percent) under ``results["sem_seg"]`` (or ``"cityscapes_sem_seg"``),
and the class names and colours of the dataset's metadata (``stuff_classes``, ``stuff_colors``).
A class absent from both ground truth and prediction has no IoU (NaN / null): it is drawn
without a bar and marked ``n/a``.

What it produces: ``<output_dir>/per_class_iou.png``, one horizontal bar per class in the
metadata's order, coloured with the class's colour, its value at the bar's end, and the mIoU as
a dashed line. From a ``results.json`` written earlier::

    python -m dl_lib.evaluation.plots OUT.png RESULTS_JSON [--dataset NAME]
"""
import argparse
import json
import logging
import math
import os
import sys
from typing import List, Mapping, Optional, Sequence, Tuple

from .exits import agg_figure, save_png

__all__ = ["CLASS_IOU_PNG", "class_iou_scores", "plot_class_iou", "report_class_iou", "main"]

logger = logging.getLogger(__name__)

CLASS_IOU_PNG = "per_class_iou.png"
# evaluators whose results hold IoU-<class>, in the order they are looked for
_SCORE_KEYS = ("sem_seg", "cityscapes_sem_seg")
# figure geometry: inches per class bar, plus room for the title and the axis
BAR_INCHES, EXTRA_INCHES, WIDTH_INCHES, DPI = 0.22, 1.3, 8.0, 100


def _score(value) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def class_iou_scores(results: Mapping, class_names: Optional[Sequence[str]] = None,
                     source: str = "results") -> Tuple[str, List[Tuple[str, Optional[float]]],
                                                       Optional[float]]:
    """``(evaluator key, [(class, IoU or None), ...], mIoU)`` of one dataset's ``results``.

    ``class_names``: the dataset's ``stuff_classes`` (the order of the bars); None: the
    ``IoU-<class>`` keys in the order the evaluator wrote them. Raises ``ValueError`` naming
    ``source`` when no evaluator entry has per-class IoU, or when a named class is missing.
    """
    for key in _SCORE_KEYS:
        scores = results.get(key)
        if isinstance(scores, Mapping) and any(str(k).startswith("IoU-") for k in scores):
            break
    else:
        raise ValueError(f"{source}: no per-class IoU ('IoU-<class>' under "
                         f"{' or '.join(repr(k) for k in _SCORE_KEYS)}); found keys "
                         f"{sorted(results)}. These are written by dl_test's evaluator.")
    names = list(class_names) if class_names else [k[4:] for k in scores if k.startswith("IoU-")]
    missing = [n for n in names if f"IoU-{n}" not in scores]
    if missing:
        raise ValueError(f"{source}: {key!r} has no IoU for classes {missing[:5]} of the "
                         f"{len(names)} in the metadata; are these results of another dataset?")
    return key, [(n, _score(scores[f"IoU-{n}"])) for n in names], _score(scores.get("mIoU"))


def plot_class_iou(scores: Sequence[Tuple[str, Optional[float]]], path: Optional[str] = None,
                   title: str = "", colors: Optional[Sequence[Sequence[int]]] = None,
                   miou: Optional[float] = None):
    """Horizontal bars of per-class IoU (percent), first class on top.

    ``scores``: ``(class, IoU or None)`` pairs; ``colors``: one RGB 0-255 triple per class (the
    metadata's ``stuff_colors``; None: one neutral colour). The figure is
    ``WIDTH_INCHES`` x (``BAR_INCHES`` per class + ``EXTRA_INCHES``) at ``DPI``. Writes a PNG to
    ``path`` (atomically) when given; returns the ``Figure``."""
    k = len(scores)
    if colors is not None and len(colors) != k:
        raise ValueError(f"{len(colors)} colours for {k} classes; give one per class")
    fig = agg_figure((WIDTH_INCHES, BAR_INCHES * k + EXTRA_INCHES), dpi=DPI)
    ax = fig.subplots()
    ys = list(range(k))
    values = [v if v is not None else 0.0 for _, v in scores]
    face = ([tuple(c / 255.0 for c in rgb) for rgb in colors] if colors is not None
            else ["#4c72b0"] * k)
    bars = ax.barh(ys, values, color=face, edgecolor="black", linewidth=0.4)
    for bar, (_, v) in zip(bars, scores):
        if v is None:
            bar.set_visible(False)
        ax.text((v or 0.0) + 0.8, bar.get_y() + bar.get_height() / 2,
                "n/a" if v is None else f"{v:.1f}", va="center", fontsize=7)
    if miou is not None:
        ax.axvline(miou, color="black", linestyle="--", linewidth=0.8,
                   label=f"mIoU {miou:.2f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels([n for n, _ in scores], fontsize=8)
    ax.invert_yaxis()  # the metadata's first class on top
    ax.set_xlim(0, 108)
    ax.set_xlabel("IoU (%)")
    ax.grid(True, axis="x", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    if path:
        save_png(fig, path)
    return fig


def report_class_iou(results: Mapping, dataset_name: str, output_dir: str,
                     run: str = "") -> Optional[str]:
    """What ``dl_test`` adds (main process): ``output_dir/per_class_iou.png`` for one dataset's
    ``results``, class names and colours from ``MetadataCatalog.get(dataset_name)``. Returns the
    path, or None (nothing written, a log line says why) when the results have no per-class
    IoU (an evaluator of another kind)."""
    from dl_lib.data.catalog import MetadataCatalog

    meta = MetadataCatalog.get(dataset_name)
    names = meta.get("stuff_classes")
    try:
        key, scores, miou = class_iou_scores(results, names, source=f"results of {dataset_name}")
    except ValueError as e:
        logger.info(f"No per-class IoU plot: {e}")
        return None
    colors = meta.get("stuff_colors")
    if colors is not None and len(colors) != len(scores):
        colors = None
    title = " ".join(p for p in (run, dataset_name, "" if key == "sem_seg" else f"({key})") if p)
    path = os.path.join(output_dir, CLASS_IOU_PNG)
    plot_class_iou(scores, path, title=f"{title}: per-class IoU", colors=colors, miou=miou)
    logger.info(f"Per-class IoU plot saved to {path}")
    return path


def _dataset_results(results: Mapping, dataset: Optional[str], source: str
                     ) -> Tuple[str, Mapping]:
    """``results.json`` of dl_test is ``{dataset: results}``; a single dataset's results too."""
    if any(k in results for k in _SCORE_KEYS):
        return dataset or "", results
    names = [k for k, v in results.items() if isinstance(v, Mapping)]
    if dataset is None:
        if len(names) != 1:
            raise ValueError(f"{source} holds the datasets {names}; choose one with --dataset")
        dataset = names[0]
    if dataset not in names:
        raise ValueError(f"{source} has no dataset {dataset!r}; it holds {names}")
    return dataset, results[dataset]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dl_lib.evaluation.plots OUT.png RESULTS_JSON [--dataset NAME]``."""
    parser = argparse.ArgumentParser(
        prog="python -m dl_lib.evaluation.plots",
        description="Draw the per-class IoU bars of a dl_test results.json (class names and "
                    "colours from the dataset's metadata when the dataset is registered).")
    parser.add_argument("output", help="the PNG to write")
    parser.add_argument("results", help="a results.json written by dl_test")
    parser.add_argument("--dataset", default=None, help="which dataset of the file")
    args = parser.parse_args(argv)
    try:
        with open(args.results) as f:
            results = json.load(f)
        if not isinstance(results, Mapping):
            raise ValueError(f"{args.results} holds a {type(results).__name__}, not the results "
                             "dict dl_test writes")
        name, res = _dataset_results(results, args.dataset, args.results)
        import dl_lib.data  # noqa: F401  (registers the built-in datasets' metadata)
        from dl_lib.data.catalog import DatasetCatalog, MetadataCatalog

        known = name and (name in MetadataCatalog.list() or name in DatasetCatalog.list())
        meta = MetadataCatalog.get(name) if known else None
        names = meta.get("stuff_classes") if meta is not None else None
        _, scores, miou = class_iou_scores(res, names, source=args.results)
        colors = meta.get("stuff_colors") if meta is not None else None
    except (OSError, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    plot_class_iou(scores, args.output, title=f"{name}: per-class IoU".strip(": "),
                   colors=colors if colors is not None and len(colors) == len(scores) else None,
                   miou=miou)
    print(f"wrote {args.output} ({len(scores)} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

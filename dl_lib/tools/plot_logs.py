"""``dl_plot``: training curves (loss, learning rate, mIoU ...) from ``metrics.json`` files.

    dl_plot output/Anytime/HRNet_W18/metrics.json                  # -> next to it: metrics.png
    dl_plot runA/metrics.json runB/ --keys total_loss lr 'sem_seg/*mIoU' --output curves.png
    python tools/plot_logs.py OUTPUT_DIR/metrics.json

Reads the engine's JSON-lines format (``dl_lib.utils.events.JSONWriter``: one object per line,
``{"iteration": i, name: value, ...}``; a folder means its ``metrics.json``). One panel per key,
one line per file, against the iteration; a key is a name or a shell pattern (``*mIoU``). The
default keys are ``total_loss``, ``lr`` and every key ending in ``mIoU`` (the evaluations).
A file that cannot be read, a line that is not JSON, or a key no file has is an error naming
the file (and line) or listing the keys there are.
"""
import argparse
import fnmatch
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from dl_lib.evaluation.exits import agg_figure, run_label, save_png

__all__ = ["PlotLogsError", "read_metrics", "select_keys", "curves", "plot_curves", "main"]

DEFAULT_KEYS = ("total_loss", "lr", "*mIoU")
PANEL_INCHES = (5.0, 3.4)  # one panel's size; panels go in rows of up to three
COLUMNS = 3


class PlotLogsError(ValueError):
    """A metrics file or key that cannot be plotted (the message names it)."""


def read_metrics(path: str) -> List[dict]:
    """The records of a ``metrics.json`` (or of ``<folder>/metrics.json``), in file order."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError as e:
        raise PlotLogsError(f"cannot read {path}: {e.strerror or e}; give a metrics.json "
                            "written by dl_train (or its OUTPUT_DIR)") from e
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise PlotLogsError(f"{path}, line {number}: not JSON ({e}): {line[:80]!r}") from e
        if not isinstance(record, dict) or "iteration" not in record:
            raise PlotLogsError(f"{path}, line {number}: not a metrics record (a JSON object "
                                "with 'iteration'); is this dl_train's metrics.json?")
        records.append(record)
    if not records:
        raise PlotLogsError(f"{path} holds no metrics records; the run logged nothing yet")
    return records


def _numeric_keys(records: Sequence[dict]) -> List[str]:
    keys = {}
    for r in records:
        for k, v in r.items():
            if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.setdefault(k, None)
    return list(keys)


def select_keys(runs: Sequence[Tuple[str, List[dict]]], patterns: Optional[Sequence[str]]
                ) -> List[str]:
    """The keys to draw: those matching ``patterns`` (names or shell patterns) in any run, in
    the patterns' order. ``patterns`` None: :data:`DEFAULT_KEYS`, which may match nothing
    each. A pattern given by the user that matches no key is an error listing the keys."""
    available = []
    for _, records in runs:
        available += [k for k in _numeric_keys(records) if k not in available]
    chosen = []
    for pattern in patterns or DEFAULT_KEYS:
        matched = [k for k in available if fnmatch.fnmatchcase(k, pattern)]
        if not matched and patterns:
            raise PlotLogsError(f"no key matches {pattern!r} in {', '.join(p for p, _ in runs)}; "
                                f"the files have: {', '.join(available)}")
        chosen += [k for k in matched if k not in chosen]
    if not chosen:
        raise PlotLogsError(f"none of the default keys {list(DEFAULT_KEYS)} is in "
                            f"{', '.join(p for p, _ in runs)}; choose with --keys from: "
                            f"{', '.join(available)}")
    return chosen


def curves(records: Sequence[dict], key: str) -> Tuple[List[int], List[float]]:
    """``(iterations, values)`` of ``key`` (records without it, or with NaN, skipped). The
    writer never repeats an iteration; if a file does (two runs appended), the last wins."""
    points: Dict[int, float] = {}
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            points[int(r["iteration"])] = float(v)
    its = sorted(points)
    return its, [points[i] for i in its]


def plot_curves(runs: Sequence[Tuple[str, List[dict]]], keys: Sequence[str],
                path: Optional[str] = None, labels: Optional[Sequence[str]] = None):
    """One panel per key (rows of up to :data:`COLUMNS`, each :data:`PANEL_INCHES` at 100 dpi),
    one line per run (``(path, records)``), labelled ``labels`` or the run folder's
    ``<Group>/<Name>``. Losses are drawn on a log scale when positive. Writes ``path`` when
    given; returns the ``Figure``."""
    if labels is not None and len(labels) != len(runs):
        raise PlotLogsError(f"{len(labels)} labels for {len(runs)} metrics files; give one each")
    columns = min(COLUMNS, len(keys))
    rows = (len(keys) + columns - 1) // columns
    fig = agg_figure((PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows))
    axes = fig.subplots(rows, columns, squeeze=False).reshape(-1)
    for ax, key in zip(axes, keys):
        positive = True
        for i, (path_i, records) in enumerate(runs):
            its, values = curves(records, key)
            if not its:
                continue
            label = labels[i] if labels is not None else run_label(
                os.path.dirname(os.path.abspath(path_i)) if not os.path.isdir(path_i)
                else path_i)
            ax.plot(its, values, marker="o" if len(its) < 20 else None, markersize=3,
                    color=f"C{i % 10}", label=label)
            positive = positive and min(values) > 0
        if "loss" in key and positive and ax.lines:
            ax.set_yscale("log")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(True, alpha=0.3)
        if len(runs) > 1 and ax.lines:
            ax.legend(fontsize=7)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()
    if path:
        save_png(fig, path)
    return fig


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dl_plot", description="Draw loss / lr / mIoU curves from metrics.json files.",
        epilog=__doc__.split("\n\n", 2)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", nargs="+",
                        help="metrics.json files written by dl_train (or their OUTPUT_DIRs)")
    parser.add_argument("--keys", nargs="+", default=None, metavar="KEY",
                        help="keys or shell patterns to draw, one panel each (default: "
                             f"{' '.join(DEFAULT_KEYS)})")
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per file")
    parser.add_argument("--output", default=None, metavar="PNG",
                        help="the PNG to write (default: metrics.png next to the first file)")
    args = parser.parse_args(argv)
    try:
        runs = [(p, read_metrics(p)) for p in args.metrics]
        keys = select_keys(runs, args.keys)
        first = args.metrics[0]
        output = args.output or os.path.join(
            first if os.path.isdir(first) else os.path.dirname(os.path.abspath(first)),
            "metrics.png")
        plot_curves(runs, keys, output, args.labels)
    except PlotLogsError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(f"wrote {output}: {', '.join(keys)} from {len(runs)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

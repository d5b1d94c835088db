"""``dl_summarize``: one table and one plot of every evaluated playground of a group.

    dl_summarize playground/Anytime                 # -> $DL_OUTPUT_ROOT/Anytime/summary.{md,png}
    dl_summarize playground/Anytime --all --output /tmp/s
    python tools/summarize.py playground/Anytime

For each playground folder of the group (``<Group>/<Name>/`` with ``config.py`` and ``net.py``)
it reads the ``results.json`` files under the playground's ``OUTPUT_DIR`` (from its config,
``$DL_OUTPUT_ROOT/<Group>/<Name>`` by default): ``dl_test``'s ``inference/<weights>/results.json``
and the training run's own ``results.json`` (its last evaluation). Without ``--all`` one file per
playground is used: ``inference/model_final``, else the newest other inference folder, else the
training run's. A playground without any is listed as not evaluated; a file that cannot be read
or has no mIoU is an error naming it.

Rows (one per dataset, and for models with exits one more per exit): mIoU; GFLOPs per image
(the executed count of ``TEST.COST_CONVENTIONS``, else the model's own ``"flops"``; per exit the
cumulative count of the per-exit report); ms per image (``results["time"]``, median) and the
device it was measured on. The plot draws mIoU against GFLOPs and against latency, one marker per
playground (a line through the exits for anytime models), with published points as hollow
markers on dashed lines: those ``dl_test`` recorded from the model (``published_exit_points``,
anytime family) and those of an optional ``published.json`` in the group folder::

    {"HRNet-W48 (paper)": {"mIoU": [80.7], "gflops": [696.2]},
     "ADP-C W48 (paper)": {"mIoU": [44.34, 60.13, 76.82, 81.31],
                           "gflops": [41.9, 93.9, 259.3, 387.1], "ms": [...]}}

(each entry: ``mIoU`` and ``gflops`` and/or ``ms`` lists of equal length, one point each).
"""
import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from dl_lib.evaluation.exits import EXITS_KEY, _check_points, _finite, agg_figure, save_png
from dl_lib.utils.file_io import atomic_write

__all__ = ["SummaryError", "Row", "group_playgrounds", "results_files", "read_results",
           "rows_of_results", "read_published", "collect", "format_markdown", "plot_summary",
           "main"]

PUBLISHED_JSON = "published.json"
SUMMARY_MD, SUMMARY_PNG = "summary.md", "summary.png"
TRAINING = "training"  # the source name of OUTPUT_DIR/results.json (the run's last evaluation)
_SCORE_KEYS = ("sem_seg", "cityscapes_sem_seg")


class SummaryError(ValueError):
    """A group folder, results file or published.json that cannot be summarised (names it)."""


@dataclass
class Row:
    """One line of the table: a playground's score on one dataset (``exit`` None: the final
    prediction; k: exit k, 0-based as in the per-exit report)."""
    playground: str
    source: str
    dataset: str
    miou: float
    exit: Optional[int] = None
    gflops: Optional[float] = None
    cost_source: str = ""
    ms: Optional[float] = None
    device: str = ""
    path: str = ""


def group_playgrounds(group: str) -> List[str]:
    """The playground folders (holding ``config.py`` and ``net.py``) of ``group``, sorted."""
    group = os.path.abspath(group)
    if not os.path.isdir(group):
        raise SummaryError(f"{group} is not a folder; give a group, e.g. playground/Anytime")
    folders = [os.path.join(group, n) for n in sorted(os.listdir(group))
               if all(os.path.isfile(os.path.join(group, n, f)) for f in ("config.py", "net.py"))]
    if not folders:
        raise SummaryError(f"{group} holds no playground (<Name>/ with config.py and net.py); "
                           "give a group folder such as playground/Anytime")
    return folders


def output_dir_of(folder: str) -> Tuple[str, str]:
    """``(OUTPUT_DIR, note)``: the playground config's ``OUTPUT_DIR``; when the config does not
    load here (an out-of-tree family not on the path, a missing dependency), the default one
    derived from the folder and a note saying so (a summary should not stop at one playground)."""
    from dl_lib import playground

    try:
        return playground.load_config(folder).OUTPUT_DIR, ""
    except Exception as e:
        default = playground.default_output_dir(folder)
        return default, (f"{os.path.join(folder, 'config.py')} did not load "
                         f"({type(e).__name__}: {e}); looked in the default OUTPUT_DIR {default}")


def results_files(output_dir: str) -> List[Tuple[str, str]]:
    """``(source, path)`` of every results.json of a run folder: ``inference/<weights>/`` ones
    (source = the weights name), sorted, then the training run's (source ``"training"``)."""
    found = []
    inference = os.path.join(output_dir, "inference")
    if os.path.isdir(inference):
        for name in sorted(os.listdir(inference)):
            path = os.path.join(inference, name, "results.json")
            if os.path.isfile(path):
                found.append((name, path))
    path = os.path.join(output_dir, "results.json")
    if os.path.isfile(path):
        found.append((TRAINING, path))
    return found


def _preferred(files: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    by_source = dict(files)
    if "model_final" in by_source:
        return [("model_final", by_source["model_final"])]
    inference = [f for f in files if f[0] != TRAINING]
    if inference:
        return [max(inference, key=lambda f: os.path.getmtime(f[1]))]
    return files[-1:]


def read_results(path: str) -> Dict[str, Mapping]:
    """``{dataset: results}`` of a results.json (dl_test's layout; a single dataset's results
    read as dataset ``""``); ``SummaryError`` naming the file when it is not one."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise SummaryError(f"{path}: not a readable results.json ({e}); run dl_test again for "
                           "this playground or remove the file") from e
    if not isinstance(data, Mapping):
        raise SummaryError(f"{path}: holds a {type(data).__name__}, not dl_test's results dict")
    if any(k in data for k in _SCORE_KEYS):
        return {"": data}
    per_dataset = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    if not per_dataset:
        raise SummaryError(f"{path}: no dataset results in it (keys {sorted(data)}); run dl_test "
                           "again for this playground")
    return per_dataset


def _number(value) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def rows_of_results(playground: str, source: str, path: str,
                    per_dataset: Mapping[str, Mapping]) -> List[Row]:
    """The rows of one results file (see the module doc)."""
    rows = []
    for dataset, res in per_dataset.items():
        scores = next((res[k] for k in _SCORE_KEYS
                       if isinstance(res.get(k), Mapping) and "mIoU" in res[k]), None)
        if scores is None:
            raise SummaryError(f"{path}: dataset {dataset!r} has no mIoU (under "
                               f"{' or '.join(_SCORE_KEYS)}); run dl_test again for this "
                               "playground")
        time = res.get("time") or {}
        gflops, cost_source = None, ""
        cost = res.get("cost") or {}
        if cost:
            conv = next(iter(cost))
            gflops, cost_source = _number(cost[conv].get("mean")), conv
        elif "mean_flops" in scores:
            gflops, cost_source = _number(scores["mean_flops"]), "model"
        exits = res.get(EXITS_KEY) if isinstance(res.get(EXITS_KEY), Mapping) else None
        if gflops is None and exits and exits.get("gflops"):
            gflops, cost_source = _number(exits["gflops"][-1]), "model, last exit"
        common = dict(playground=playground, source=source, dataset=dataset, path=path,
                      device=str(time.get("device", "")))
        rows.append(Row(miou=float(scores["mIoU"]), gflops=gflops, cost_source=cost_source,
                        ms=_number(time.get("ms_per_image")), **common))
        if exits:
            ms = (exits.get("time") or {}).get("ms_per_image") or []
            for k, miou in enumerate(exits.get("mIoU") or []):
                g = exits["gflops"][k] if exits.get("gflops") else None
                rows.append(Row(miou=float(miou), exit=k, gflops=_number(g),
                                cost_source="model" if g is not None else "",
                                ms=_number(ms[k]) if k < len(ms) else None, **common))
    return rows


def read_published(group: str) -> Dict[str, Dict[str, List[float]]]:
    """The group's ``published.json`` (see the module doc), checked; ``{}`` without one."""
    path = os.path.join(os.path.abspath(group), PUBLISHED_JSON)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise SummaryError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, Mapping):
        raise SummaryError(f"{path}: must be a dict {{label: {{\"mIoU\": [...], \"gflops\": "
                           f"[...]}}}}, got a {type(data).__name__}")
    try:
        return {str(k): _check_points(str(k), v, path) for k, v in data.items()}
    except (ValueError, TypeError) as e:
        raise SummaryError(str(e)) from e


def collect(group: str, all_sources: bool = False, notes: Optional[List[str]] = None
            ) -> Tuple[List[Row], Dict[str, Dict[str, List[float]]], List[Tuple[str, str]]]:
    """``(rows, published points, [(playground, OUTPUT_DIR) not evaluated])`` of a group;
    ``notes`` (a list) receives a line per playground whose config did not load."""
    rows, published, missing = [], {}, []
    for folder in group_playgrounds(group):
        name = os.path.basename(folder)
        output_dir, note = output_dir_of(folder)
        if note and notes is not None:
            notes.append(note)
        files = results_files(output_dir)
        if not files:
            missing.append((name, output_dir))
            continue
        for source, path in (files if all_sources else _preferred(files)):
            per_dataset = read_results(path)
            rows += rows_of_results(name, source, path, per_dataset)
            for res in per_dataset.values():
                report = res.get(EXITS_KEY) if isinstance(res.get(EXITS_KEY), Mapping) else {}
                for label, points in (report.get("published") or {}).items():
                    published.setdefault(label, _check_points(label, points, path))
    if not rows:
        looked = "\n".join(f"  {n}: {d}" for n, d in missing)
        raise SummaryError(f"no playground of {os.path.abspath(group)} has been evaluated; no "
                           f"results.json under these OUTPUT_DIRs (or their inference/*/):\n"
                           f"{looked}\nrun dl_test in a playground first")
    published.update(read_published(group))
    return rows, published, missing


def _cell(value: Optional[float], digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"


def format_markdown(group: str, rows: Sequence[Row], published: Mapping,
                    missing: Sequence[Tuple[str, str]], notes: Sequence[str] = ()) -> str:
    """The summary as markdown: a table of the rows, the published points, the missing ones."""
    name = os.path.basename(os.path.abspath(group))
    count = len({r.playground for r in rows})
    lines = [f"# {name}: results of {count} playground{'' if count == 1 else 's'}", "",
             "| playground | results | dataset | exit | mIoU | GFLOPs | counted by | ms / image "
             "| device |", "|---|---|---|---|---:|---:|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r.playground} | {r.source} | {r.dataset or '-'} | "
                     f"{'final' if r.exit is None else f'exit{r.exit}'} | {r.miou:.2f} | "
                     f"{_cell(r.gflops)} | {r.cost_source or '-'} | {_cell(r.ms)} | "
                     f"{r.device or '-'} |")
    if published:
        lines += ["", "Published:", "", "| published | point | mIoU | GFLOPs | ms / image |",
                  "|---|---|---:|---:|---:|"]
        for label, points in published.items():
            for k, miou in enumerate(points["mIoU"]):
                g = points["gflops"][k] if "gflops" in points else None
                ms = points["ms"][k] if "ms" in points else None
                lines.append(f"| {label} | {k} | {miou:.2f} | {_cell(g)} | {_cell(ms)} |")
    if missing:
        lines += ["", "Not evaluated (no results.json in OUTPUT_DIR or OUTPUT_DIR/inference/*/): "
                  + ", ".join(f"`{n}`" for n, _ in missing)]
    if notes:
        lines += [""] + [f"Note: {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _series(rows: Sequence[Row]) -> List[Tuple[str, List[Row]]]:
    """One plotted series per results file and dataset: its exits if it has them (a line),
    else its final row (one marker)."""
    keys, groups = [], {}
    for r in rows:
        key = (r.playground, r.source, r.dataset)
        if key not in groups:
            keys.append(key)
        groups.setdefault(key, []).append(r)
    sources = {k[:1] + k[2:] for k in keys}
    several_sources = len(sources) < len(keys)
    several_datasets = len({k[2] for k in keys}) > 1
    out = []
    for key in keys:
        label = key[0] + (f" ({key[1]})" if several_sources else "") + \
            (f" {key[2]}" if several_datasets else "")
        exits = [r for r in groups[key] if r.exit is not None]
        out.append((label, exits or [r for r in groups[key] if r.exit is None]))
    return out


def plot_summary(rows: Sequence[Row], published: Mapping, path: Optional[str] = None,
                 title: str = ""):
    """mIoU against GFLOPs (left) and against ms per image (right), see the module doc.
    Writes a PNG to ``path`` when given; returns the ``Figure`` (11 x 4.6 inches, 100 dpi)."""
    fig = agg_figure((11, 4.6))
    ax_flops, ax_ms = fig.subplots(1, 2)
    series = _series(rows)
    devices = sorted({r.device for r in rows if r.ms is not None and r.device})
    for ax, key, xlabel in ((ax_flops, "gflops", "GFLOPs per image"),
                            (ax_ms, "ms", "latency per image (ms)"
                             + (f", {', '.join(devices)}" if devices else ""))):
        for i, (label, points) in enumerate(series):
            x, y = _finite([getattr(p, key) for p in points], [p.miou for p in points])
            if not x:
                continue
            ax.plot(x, y, marker="o", linestyle="-" if len(x) > 1 else "none", color=f"C{i % 10}",
                    label=label)
            if len(x) > 1:  # exit numbers along an anytime model's line
                for k, (xk, yk) in enumerate(zip(x, y)):
                    ax.annotate(str(k), (xk, yk), textcoords="offset points", xytext=(4, -10),
                                fontsize=7, color=f"C{i % 10}")
        for j, (label, points) in enumerate(published.items()):
            if key in points:
                x, y = _finite(points[key], points["mIoU"])
                ax.plot(x, y, marker="s", linestyle="--" if len(x) > 1 else "none",
                        color=f"C{(len(series) + j) % 10}", markerfacecolor="none",
                        label=label if "published" in label.lower() or "paper" in label.lower()
                        else f"published: {label}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mIoU (%)")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no results with " + ("GFLOPs" if key == "gflops" else "latency"),
                    ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax_flops.set_title(f"{title}: accuracy against cost".strip(": "), fontsize=10)
    ax_ms.set_title(f"{title}: accuracy against measured latency".strip(": "), fontsize=10)
    fig.tight_layout()
    if path:
        save_png(fig, path)
    return fig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dl_summarize",
        description="Collect the results of every evaluated playground of a group into a "
                    "markdown table and a plot of mIoU against GFLOPs and latency.",
        epilog=__doc__.split("\n\n", 2)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("group", help="a group folder, e.g. playground/Anytime")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="where summary.md and summary.png go (default: "
                             "$DL_OUTPUT_ROOT/<Group>)")
    parser.add_argument("--all", action="store_true",
                        help="every results.json of each playground (each weights' inference "
                             "folder and the training run's), not only the preferred one")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    notes: List[str] = []
    try:
        rows, published, missing = collect(args.group, args.all, notes)
    except SummaryError as e:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    group = os.path.basename(os.path.abspath(args.group))
    if args.output is None:
        from dl_lib.utils.env import output_root

        args.output = os.path.join(output_root(), group)
    os.makedirs(args.output, exist_ok=True)
    text = format_markdown(args.group, rows, published, missing, notes)
    md, png = os.path.join(args.output, SUMMARY_MD), os.path.join(args.output, SUMMARY_PNG)
    with atomic_write(md) as f:
        f.write(text)
    plot_summary(rows, published, png, title=group)
    print(text)
    print(f"wrote {md} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``make demo``: train the Quickstart playground from scratch on CPU and show what it learned.

Steps: generate the embedded street scenes if missing (``synthetic_cityscapes_{train,val}``),
run the real ``dl_train --num-gpus 1`` inside ``playground/Quickstart/<Name>`` (a subprocess, as a
user would), then print the per-class IoU table, the mIoU, the GFLOPs per image of models that
report them (dynamic routing: the original's count and the corrected one, mean/min/max), the
training speed, where the image | ground truth | prediction panels are (for a routing model with
the picture of the routes each image took and its ``.routes.json``, which
``MODEL.GATE.ROUTES_FILE`` forces), and the elapsed time. Exits non-zero when training or
evaluation fails.

The default playground is the dynamic-routing demo ``Quickstart/Seg.Layer6.Tiny.Synthetic``;
``--playground playground/Quickstart/FPN.R18W32.Synthetic`` trains the FPN quickstart instead.

    .venv/bin/python tools/demo.py [--playground DIR] [KEY VALUE ...]

``KEY VALUE`` pairs are passed to ``dl_train`` (e.g. ``SOLVER.LR_SCHEDULER.MAX_ITER 20`` for a smoke
run). Outputs go to ``$DL_OUTPUT_ROOT/Quickstart/<Name>`` (default ``<repo>/output/...``).
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PLAYGROUND = os.path.join(REPO, "playground", "Quickstart", "Seg.Layer6.Tiny.Synthetic")
# Per-image costs a model reports (SemSegEvaluator: "<stat>_<name>"), with what they count.
GFLOPS_NAMES = (("real_gflops", "original's count"), ("real_corrected_gflops", "corrected count"),
                ("expt_gflops", "expected (budget loss)"))


def _train_command():
    """The installed ``dl_train`` next to this interpreter, else the same entry point via ``-m``."""
    script = os.path.join(os.path.dirname(sys.executable), "dl_train")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "dl_lib.tools.train_net"]


def _print_table(sem_seg: dict, class_names) -> None:
    from tabulate import tabulate

    def fmt(v):
        return "-" if v is None or v != v else f"{v:.1f}"  # None / NaN: class absent

    rows = [(name, fmt(sem_seg.get(f"IoU-{name}")), fmt(sem_seg.get(f"ACC-{name}"))) for name in class_names]
    print(tabulate(rows, headers=["class", "IoU", "Acc"], tablefmt="github", disable_numparse=True))
    summary = [(k, fmt(sem_seg.get(k))) for k in ("mIoU", "fwIoU", "mACC", "pACC") if k in sem_seg]
    print(tabulate(summary, tablefmt="github", disable_numparse=True))


def _print_gflops(sem_seg: dict, input_size: str) -> None:
    """GFLOPs per image (mean/min/max) of each count the model reported; nothing when none."""
    from tabulate import tabulate

    rows = [(what, *(f"{sem_seg[f'{stat}_{name}']:.4f}" for stat in ("mean", "min", "max")))
            for name, what in GFLOPS_NAMES if f"mean_{name}" in sem_seg]
    if rows:
        print(f"[demo] GFLOPs per image at the test input size ({input_size}):")
        print(tabulate(rows, headers=["GFLOPs", "mean", "min", "max"], tablefmt="github",
                       disable_numparse=True))


def _training_speed(output_dir: str):
    """(iterations, median seconds per iteration, last budget ratio) from metrics.json; the
    first logged window (warm-up) is left out when there are others."""
    from statistics import median

    lines = []
    try:
        with open(os.path.join(output_dir, "metrics.json")) as f:
            for line in f:
                try:
                    lines.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short
                    continue
    except OSError:
        return None
    times = [d["time"] for d in lines if "time" in d]
    if not times:
        return None
    ratio = next((d["budget_ratio"] for d in reversed(lines) if "budget_ratio" in d), None)
    return lines[-1].get("iteration", 0) + 1, median(times[1:] or times), ratio


def _print_routes(panels) -> None:
    """One line per panel with routes: open routes and running cells of that image."""
    from dl_lib.modeling.dynamic_routing.routes import trace_routes

    for png in panels:
        path = os.path.splitext(png)[0] + ".routes.json"
        if not os.path.exists(path):
            continue
        with open(path) as f:
            data = json.load(f)
        gates = {name: list(r.values()) for name, r in data["routes"].items()}
        trace = trace_routes(gates)
        runs = sum(s == "runs" for s in trace.cells.values())
        flops = data.get("flops") or {}
        print(f"[demo]   {os.path.basename(png)}: {trace.count('open')}/{len(trace.edges)} routes "
              f"open, {runs}/{len(trace.cells)} cells run, "
              f"{flops.get('real_gflops', float('nan')):.4f} GFLOPs (original's count); "
              f"routes in {os.path.basename(path)}")


_NO_EXT_WARNING = "dl_lib._C could not be loaded"  # start of dl_lib/_ext.py's warning


def _quiet_missing_extension() -> None:
    """``make demo`` does not build ``dl_lib._C`` (the routing demo runs no compiled op): say so
    once instead of letting this process and ``dl_train`` each warn about the fallbacks."""
    if glob.glob(os.path.join(REPO, "dl_lib", "_C*.so")):
        return
    print("[demo] dl_lib._C is not built; this demo does not use it (`make build` or `make test` "
          "builds it)", flush=True)
    warnings.filterwarnings("ignore", message=_NO_EXT_WARNING.replace(".", r"\."))
    inherited = os.environ.get("PYTHONWARNINGS")
    mine = f"ignore:{_NO_EXT_WARNING}:RuntimeWarning"
    os.environ["PYTHONWARNINGS"] = f"{inherited},{mine}" if inherited else mine


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--playground", default=DEFAULT_PLAYGROUND, help="playground folder to train")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    args = parser.parse_args(argv)
    start = time.time()
    _quiet_missing_extension()

    from dl_lib import playground
    from dl_lib.data import MetadataCatalog, ensure_synthetic_cityscapes

    folder = playground.find_playground(args.playground)
    cfg = playground.load_config(folder, args.opts)
    print(f"[demo] playground {os.path.relpath(folder, REPO)}; outputs in {cfg.OUTPUT_DIR}", flush=True)

    root = ensure_synthetic_cityscapes()
    print(f"[demo] street scenes ready in {root} ({time.time() - start:.0f}s)", flush=True)

    # Results of an earlier run must not be mistaken for this one's.
    results_path = os.path.join(cfg.OUTPUT_DIR, "results.json")
    if os.path.exists(results_path):
        os.remove(results_path)
    for vis in glob.glob(os.path.join(cfg.OUTPUT_DIR, "**", "vis"), recursive=True):
        shutil.rmtree(vis, ignore_errors=True)

    # --overwrite: a demo trains from scratch; an earlier demo run moves to <OUTPUT_DIR>.old-<time>/
    cmd = _train_command() + ["--num-gpus", "1", "--overwrite"] + list(args.opts)
    print(f"[demo] training: (cd {folder} && {' '.join(cmd)})", flush=True)
    t_train = time.time()
    proc = subprocess.run(cmd, cwd=folder)
    train_s = time.time() - t_train
    if proc.returncode != 0:
        print(f"[demo] training failed with exit code {proc.returncode}; see the log above and "
              f"{cfg.OUTPUT_DIR}/log.txt", file=sys.stderr)
        return proc.returncode or 1
    if not os.path.exists(results_path):
        print(f"[demo] training finished but wrote no {results_path}; was DATASETS.TEST empty?", file=sys.stderr)
        return 1

    with open(results_path) as f:
        results = json.load(f)
    # One test dataset: {"sem_seg": ...}; several: {name: {"sem_seg": ...}}.
    per_dataset = {cfg.DATASETS.TEST[0]: results} if "sem_seg" in results else results
    for name, res in per_dataset.items():
        sem_seg = res.get("sem_seg", {})
        print(f"\n[demo] {name}: per-class results (%)")
        _print_table(sem_seg, MetadataCatalog.get(name).stuff_classes)
        print(f"[demo] mIoU on {name}: {sem_seg.get('mIoU', float('nan')):.1f}")
        _print_gflops(sem_seg, f"short side {cfg.INPUT.MIN_SIZE_TEST}")
    speed = _training_speed(cfg.OUTPUT_DIR)
    if speed:
        iters, s_iter, ratio = speed
        budget = f"; expected FLOPs at the end {ratio:.2f} of all routes open" if ratio is not None else ""
        print(f"[demo] training: {iters} iterations of batch {cfg.SOLVER.IMS_PER_BATCH}, "
              f"{s_iter:.2f} s/iteration (median){budget}")
    panels = sorted(glob.glob(os.path.join(cfg.OUTPUT_DIR, "**", "vis", "*.png"), recursive=True))
    if panels:
        print(f"[demo] {len(panels)} image | ground truth | prediction panels in {os.path.dirname(panels[0])}")
        _print_routes(panels)
    else:
        print("[demo] no panels written (TEST.VIS_NUM_IMAGES is 0?)")
    print(f"[demo] training + evaluation {train_s:.0f}s; total {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

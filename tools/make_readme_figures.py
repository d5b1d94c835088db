"""``make figures``: regenerate every picture README.md shows into ``docs/figures/``.

    .venv/bin/python tools/make_readme_figures.py            # everything (make figures)
    .venv/bin/python tools/make_readme_figures.py --list     # each picture and its command
    .venv/bin/python tools/make_readme_figures.py --only routing_demo adpc_exits

Only the project's own commands make the pictures, run as subprocesses from the playground folder
as a user would (``dl_train``, ``dl_test``'s evaluation at the end of training, ``dl_demo``,
``dl_plot``, ``dl_summarize``, ``dl_flops --dataset``, ``dl_browse``): the installed console
script next to this interpreter, else the same entry point through ``python -m``. The trained
models are the CPU ``*.Tiny.Synthetic`` playgrounds with a *short* schedule
(``SOLVER.LR_SCHEDULER.MAX_ITER`` of each step below, a fraction of the playground's own), on the
embedded street scenes: the pictures show what each command draws, not the accuracy of a full run
(the README's numbers come from the full runs). Sized for about 10 minutes on 2 idle cores
(estimated from the playgrounds' per-iteration times there: 0.8 s routing, ~1-2 s ADP-C and
MFARANet); measured on 2026-12-02: 32 min for `make figures` on a fresh clone (pip included)
while the test suite ran on the same 2 cores (load ~4).

Runs write to ``--work-dir`` (default ``output/readme_figures/``, set as ``DL_OUTPUT_ROOT`` for
every command; the script empties its own run folders there before training, nothing else). Each
picture is then copied to ``docs/figures/<name>.png``, downscaled to at most ``--max-width``
pixels wide and re-encoded (palette, then smaller) until it is under ``--max-kb`` KB.

A command or option that this checkout does not have yet (e.g. ``dl_flops --dataset``) is
skipped with a message, and so are the pictures that need it; the script then exits 0 and lists
what it skipped. A command that exists and fails stops the script (exit 1) with its output.
"""
import argparse
import glob
import io
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = os.path.join(REPO, "docs", "figures")
DATASET_VAL = "synthetic_cityscapes_val"

# console script -> the module whose main it runs (setup.py's entry points)
MODULES = {
    "dl_train": "dl_lib.tools.train_net",
    "dl_test": "dl_lib.tools.train_net",  # dl_train --eval-only
    "dl_demo": "dl_lib.tools.demo_images",
    "dl_plot": "dl_lib.tools.plot_logs",
    "dl_summarize": "dl_lib.tools.summarize",
    "dl_flops": "dl_lib.tools.flops",
    "dl_browse": "dl_lib.tools.browse",
}


class Skip(Exception):
    """A command or option this checkout does not have: the step is skipped, not failed."""


class StepFailed(RuntimeError):
    pass


@dataclass
class Training:
    """A short dl_train run of a playground whose model several pictures use."""
    playground: str  # relative to the repository
    max_iter: int
    opts: Sequence[str] = ()


@dataclass
class Figure:
    """One README picture: ``docs/figures/<name>.png``, made by ``commands`` (shown by --list)
    after the training ``needs`` names (None: no trained model)."""
    name: str
    needs: Optional[str]
    commands: List[str]
    make: Callable[["Runner"], str] = field(repr=False)  # returns the PNG the command wrote
    caption: str = ""


_LOG = ("LOG_PERIOD", "10")  # a metrics.json point every 10 iterations, for the curves
TRAININGS: Dict[str, Training] = {
    "routing": Training("playground/Quickstart/Seg.Layer6.Tiny.Synthetic", 150, _LOG),
    "adpc": Training("playground/Anytime/HRNet_W18.ADP_C.Tiny.Synthetic", 80, _LOG),
    "mfaranet": Training("playground/MFARANet/R18_DeepStem.Tiny.Synthetic", 80, _LOG),
}


def _tool_argv(script: str) -> List[str]:
    """The console script installed next to this interpreter, else ``python -m <module>``."""
    path = os.path.join(os.path.dirname(sys.executable), script)
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return [path]
    module = MODULES[script]
    try:
        import importlib.util

        if importlib.util.find_spec(module) is None:
            raise Skip(f"{script} does not exist in this checkout (no {module})")
    except ImportError as e:
        raise Skip(f"{script} does not exist in this checkout ({e})") from e
    return [sys.executable, "-m", module] + (["--eval-only"] if script == "dl_test" else [])


class Runner:
    def __init__(self, work_dir: str, threads: int, verbose: bool):
        self.work_dir = os.path.abspath(work_dir)
        self.threads = threads
        self.verbose = verbose
        self.start = time.time()
        self.env = dict(os.environ, DL_OUTPUT_ROOT=self.work_dir,
                        OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self._help: Dict[str, str] = {}

    def log(self, msg: str) -> None:
        print(f"[figures {time.time() - self.start:5.0f}s] {msg}", flush=True)

    def output_dir(self, playground: str) -> str:
        group, name = playground.split("/")[-2:]
        return os.path.join(self.work_dir, group, name)

    def has_option(self, script: str, option: str) -> bool:
        """Whether ``script --help`` lists ``option`` (as a whole word: ``--out`` is not
        ``--output``); options may be newer than this script."""
        if script not in self._help:
            argv = _tool_argv(script)
            r = subprocess.run(argv + ["--help"], cwd=REPO, env=self.env, capture_output=True,
                               text=True)
            self._help[script] = r.stdout + r.stderr
        word = rf"(?<![\w-]){re.escape(option)}(?![\w-])"
        return re.search(word, self._help[script]) is not None

    def run(self, script: str, args: Sequence[str], cwd: str = REPO) -> str:
        argv = _tool_argv(script) + list(args)
        shown = " ".join([script] + list(args))
        where = os.path.relpath(cwd, REPO)
        self.log(f"$ {'cd ' + where + ' && ' if where != '.' else ''}{shown}")
        t0 = time.time()
        proc = subprocess.Popen(argv, cwd=cwd, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            # training logs its iterations: show them as progress
            if self.verbose or " iter: " in line or "eta:" in line or "mIoU" in line[:200]:
                print("    " + line.rstrip()[:160], flush=True)
        proc.wait()
        out = "".join(lines)
        if proc.returncode != 0:
            raise StepFailed(f"{shown} (in {where}) exited {proc.returncode}:\n{out[-4000:]}")
        self.log(f"  done in {time.time() - t0:.0f}s")
        return out


# -------------------------------------------------------------------------------- steps
def train(r: Runner, key: str, reuse: bool = False) -> None:
    t = TRAININGS[key]
    out = r.output_dir(t.playground)
    if reuse and os.path.isfile(os.path.join(out, "model_final.pth")):
        r.log(f"  reusing the finished run in {out} (--reuse-runs)")
        return
    if os.path.isdir(out):  # this script's own scratch run of the same playground
        shutil.rmtree(out)
    r.run("dl_train", ["--num-gpus", "1", "SOLVER.LR_SCHEDULER.MAX_ITER", str(t.max_iter),
                       *t.opts], cwd=os.path.join(REPO, t.playground))


def _demo(r: Runner, key: str) -> str:
    t = TRAININGS[key]
    out = os.path.join(r.output_dir(t.playground), "readme_demo")
    shutil.rmtree(out, ignore_errors=True)
    r.run("dl_demo", ["--dataset", DATASET_VAL, "--num-images", "1", "--output", out],
          cwd=os.path.join(REPO, t.playground))
    pngs = sorted(glob.glob(os.path.join(out, "*.png")))
    if not pngs:
        raise StepFailed(f"dl_demo wrote no PNG into {out}")
    return pngs[0]


def make_browse(r: Runner) -> str:
    t = TRAININGS["routing"]
    out = os.path.join(r.work_dir, "browse")
    shutil.rmtree(out, ignore_errors=True)
    r.run("dl_browse", ["--num-samples", "1", "--output", out],
          cwd=os.path.join(REPO, t.playground))
    return sorted(glob.glob(os.path.join(out, "*.png")))[0]


def make_loss_curve(r: Runner) -> str:
    out_dir = r.output_dir(TRAININGS["routing"].playground)
    png = os.path.join(out_dir, "readme_curves.png")
    r.run("dl_plot", [os.path.join(out_dir, "metrics.json"), "--keys", "total_loss", "lr",
                      "--output", png])
    return png


def make_per_class(r: Runner) -> str:
    # written by the evaluation at the end of dl_train, next to the run's results.json
    png = os.path.join(r.output_dir(TRAININGS["routing"].playground), "per_class_iou.png")
    if not os.path.exists(png):
        raise StepFailed(f"dl_train's evaluation wrote no {png}")
    return png


def make_gflops_hist(r: Runner, key: str) -> str:
    if not r.has_option("dl_flops", "--dataset"):
        raise Skip("dl_flops has no --dataset option yet (per-image histogram)")
    t = TRAININGS[key]
    out_dir = r.output_dir(t.playground)
    dest = os.path.join(out_dir, "readme_flops")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    args = ["--dataset", DATASET_VAL, "--num-images", "20"]
    for flag in ("--out", "--output"):
        if r.has_option("dl_flops", flag):
            args += [flag, dest]
            break
    weights = os.path.join(out_dir, "model_final.pth")
    before = time.time()
    r.run("dl_flops", args + ["MODEL.WEIGHTS", weights], cwd=os.path.join(REPO, t.playground))
    # the histogram PNG it wrote (in --output, else wherever it says: the newest PNG of the run)
    pngs = [p for p in glob.glob(os.path.join(dest, "**", "*.png"), recursive=True)]
    if not pngs:
        pngs = [p for p in glob.glob(os.path.join(out_dir, "**", "*.png"), recursive=True)
                if os.path.getmtime(p) >= before]
    if not pngs:
        raise StepFailed("dl_flops --dataset wrote no PNG")
    return max(pngs, key=os.path.getmtime)


def make_tradeoff(r: Runner) -> str:
    out = os.path.join(r.work_dir, "summary_anytime")
    shutil.rmtree(out, ignore_errors=True)
    r.run("dl_summarize", ["playground/Anytime", "--output", out])
    return os.path.join(out, "summary.png")


FIGURE_LIST: List[Figure] = [
    Figure("browse_sample", None,
           ["cd playground/Quickstart/Seg.Layer6.Tiny.Synthetic && dl_browse --num-samples 1"],
           make_browse, "a training sample as the model gets it (dl_browse)"),
    Figure("routing_demo", "routing",
           ["cd playground/Quickstart/Seg.Layer6.Tiny.Synthetic && dl_train --num-gpus 1 "
            "SOLVER.LR_SCHEDULER.MAX_ITER 150 LOG_PERIOD 10",
            f"dl_demo --dataset {DATASET_VAL} --num-images 1"],
           lambda r: _demo(r, "routing"), "overlay, ground truth and the routes taken (dl_demo)"),
    Figure("routing_loss_curve", "routing",
           ["dl_plot $DL_OUTPUT_ROOT/Quickstart/Seg.Layer6.Tiny.Synthetic/metrics.json "
            "--keys total_loss lr"],
           make_loss_curve, "training curves (dl_plot)"),
    Figure("routing_per_class_iou", "routing",
           ["dl_train's final evaluation: $DL_OUTPUT_ROOT/Quickstart/Seg.Layer6.Tiny.Synthetic/"
            "per_class_iou.png"],
           make_per_class, "per-class IoU bars (dl_test / evaluation)"),
    Figure("routing_gflops_hist", "routing",
           [f"cd playground/Quickstart/Seg.Layer6.Tiny.Synthetic && dl_flops --dataset "
            f"{DATASET_VAL} --num-images 20"],
           lambda r: make_gflops_hist(r, "routing"),
           "GFLOPs per image over the val set (dl_flops --dataset)"),
    Figure("adpc_exits", "adpc",
           ["cd playground/Anytime/HRNet_W18.ADP_C.Tiny.Synthetic && dl_train --num-gpus 1 "
            "SOLVER.LR_SCHEDULER.MAX_ITER 80 LOG_PERIOD 10",
            f"dl_demo --dataset {DATASET_VAL} --num-images 1"],
           lambda r: _demo(r, "adpc"), "one panel per exit and the confidence masks (dl_demo)"),
    Figure("adpc_tradeoff", "adpc",
           ["dl_summarize playground/Anytime"],
           make_tradeoff, "mIoU against GFLOPs and latency per exit (dl_summarize)"),
    Figure("adpc_gflops_hist", "adpc",
           [f"cd playground/Anytime/HRNet_W18.ADP_C.Tiny.Synthetic && dl_flops --dataset "
            f"{DATASET_VAL} --num-images 20"],
           lambda r: make_gflops_hist(r, "adpc"),
           "GFLOPs per image at each exit over the val set (dl_flops --dataset)"),
    Figure("mfaranet_branches", "mfaranet",
           ["cd playground/MFARANet/R18_DeepStem.Tiny.Synthetic && dl_train --num-gpus 1 "
            "SOLVER.LR_SCHEDULER.MAX_ITER 80 LOG_PERIOD 10",
            f"dl_demo --dataset {DATASET_VAL} --num-images 1"],
           lambda r: _demo(r, "mfaranet"), "branches, fused output, attention maps (dl_demo)"),
]


# ----------------------------------------------------------------------------- pictures
def save_small(src: str, dest: str, max_width: int, max_kb: int) -> int:
    """Copy the PNG ``src`` to ``dest`` at most ``max_width`` wide and under ``max_kb`` KB
    (palette of 256 colours, then narrower); returns the bytes written."""
    from PIL import Image

    image = Image.open(src).convert("RGB")
    width = min(max_width, image.width)
    while True:
        im = image if width == image.width else image.resize(
            (width, max(1, round(image.height * width / image.width))), Image.LANCZOS)
        for candidate in (im, im.quantize(256, method=Image.MEDIANCUT)):
            buf = io.BytesIO()
            candidate.save(buf, format="PNG", optimize=True)
            if buf.tell() <= max_kb * 1024:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                tmp = dest + ".tmp"
                with open(tmp, "wb") as f:
                    f.write(buf.getvalue())
                os.replace(tmp, dest)
                return buf.tell()
        if width < 200:
            raise StepFailed(f"{src} does not fit in {max_kb} KB even at {width} px wide")
        width = int(width * 0.8)


def list_figures() -> None:
    for fig in FIGURE_LIST:
        print(f"docs/figures/{fig.name}.png: {fig.caption}")
        for c in fig.commands:
            print(f"    {c}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print each picture and its commands")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help="make only these pictures (names from --list, without .png)")
    p.add_argument("--work-dir", default=os.path.join(REPO, "output", "readme_figures"),
                   help="DL_OUTPUT_ROOT of the runs (default output/readme_figures)")
    p.add_argument("--figures-dir", default=FIGURES, help="where the PNGs go (docs/figures)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every command")
    p.add_argument("--max-width", type=int, default=1000)
    p.add_argument("--max-kb", type=int, default=290)
    p.add_argument("--reuse-runs", action="store_true",
                   help="keep a finished training run in --work-dir instead of retraining")
    p.add_argument("--verbose", action="store_true", help="show every line the commands print")
    args = p.parse_args(argv)
    if args.list:
        list_figures()
        return 0
    names = {f.name for f in FIGURE_LIST}
    unknown = sorted(set(args.only or []) - names)
    if unknown:
        p.error(f"unknown picture(s) {unknown}; choose from {sorted(names)}")
    figures = [f for f in FIGURE_LIST if not args.only or f.name in args.only]

    r = Runner(args.work_dir, args.threads, args.verbose)
    from dl_lib.data import ensure_synthetic_cityscapes

    r.log(f"street scenes in {ensure_synthetic_cityscapes()}; runs in {r.work_dir}")
    trained, skipped, written = set(), [], []
    for i, fig in enumerate(figures, 1):
        r.log(f"picture {i}/{len(figures)}: {fig.name} ({fig.caption})")
        try:
            if fig.needs and fig.needs not in trained:
                train(r, fig.needs, args.reuse_runs)
                trained.add(fig.needs)
            src = fig.make(r)
        except Skip as e:
            r.log(f"  SKIPPED {fig.name}: {e}")
            skipped.append(f"{fig.name}: {e}")
            continue
        except StepFailed as e:
            r.log(f"FAILED {fig.name}: {e}")
            return 1
        dest = os.path.join(args.figures_dir, fig.name + ".png")
        size = save_small(src, dest, args.max_width, args.max_kb)
        r.log(f"  wrote {os.path.relpath(dest, REPO)} ({size / 1024:.0f} KB) from "
              f"{os.path.relpath(src, REPO)}")
        written.append(dest)
    r.log(f"{len(written)} pictures written, {len(skipped)} skipped")
    for s in skipped:
        print(f"  skipped {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``dl_demo``: a playground's predictions on your images or video, as colour overlays.

    cd playground/<Group>/<Name>
    dl_demo --input photos/ --output /tmp/demo            # every image of a folder
    dl_demo --input "shots/*.jpg" --output /tmp/demo      # a glob (quote it)
    dl_demo --input drive.mp4 --every 10 --max-frames 30 --output /tmp/demo
    dl_demo --dataset synthetic_cityscapes_val --num-images 4 --output /tmp/demo   # with GT
    dl_demo --input photos/ --gt-dir labels/ --weights model_final.pth --output /tmp/demo

Weights: ``--weights`` (or the override ``MODEL.WEIGHTS``), else the checkpoint the playground's
``OUTPUT_DIR/last_checkpoint`` names (its last training run); ``--weights none`` draws the random
initialisation on purpose. Prediction is :class:`dl_lib.engine.Predictor`: the playground's test
mapper, ``TEST.AUG`` / ``TEST.MODE`` and a strict load, as ``dl_test``.

Each PNG (one per image or video frame, ``<output>/<index>_<name>.png``) is
``image | prediction over the image | ground truth over the image`` (the colourised prediction
when there is no ground truth) over a legend of the classes shown, in the dataset's colours
(``DATASETS.TEST[0]``'s metadata, or ``--dataset``'s). Ground truth (train ids, 255 = ignore)
comes from ``--gt-dir`` (the PNG whose name starts with the image's stem, ``_leftImg8bit``
dropped) or from a registered ``--dataset`` (its ``sem_seg_file_name`` for the same image file).
Extra rows by what the model returns:

* anytime models (``sem_seg_exits``): one overlay per exit (``exit k``, with its cumulative
  GFLOPs when reported), then one row per confidence mask (``exit_masks``: the pixels computed
  after exit k, and the same over the image);
* MFARANet: its branches (``branch b (stride s)``) and the ``fused`` output, then the ASFM
  attention map of each fused branch (its weight at the class the fused output predicts, 0 dark
  to 1 bright, viridis; captured by forward hooks, so not with ``TEST.AUG`` / ``TEST.MODE slide``);
* dynamic routing: the picture of the routes the image took, and ``<png>.routes.json`` next to
  it (``MODEL.GATE.ROUTES_FILE`` replays them);
* other families (baseline, CondNet, ACoSP) return one prediction: no extra rows.
"""
import argparse
import contextlib
import glob
import logging
import os
import re
import sys
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from dl_lib.utils import visualizer as vis

__all__ = ["main", "build_parser", "DemoInputError", "iter_inputs", "read_video_frames",
           "demo_panel", "resolve_weights", "exit_titles", "run_demo", "capture_attention",
           "attention_maps", "heat_map", "IMAGE_EXTS",
           "VIDEO_EXTS", "TITLE_HEIGHT", "PANELS_PER_ROW"]

logger = logging.getLogger("dl_lib.tools.demo_images")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
TITLE_HEIGHT = 16
PANELS_PER_ROW = 3


class DemoInputError(ValueError):
    """An input, ground-truth folder or weights choice dl_demo cannot use; the message says why."""


# ----------------------------------------------------------------------------------- inputs
def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTS)


def _is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTS)


def read_video_frames(path: str, every: int = 1, max_frames: int = 0
                      ) -> Iterator[Tuple[int, np.ndarray]]:
    """``(frame index, H x W x 3 uint8 RGB)`` of every ``every``-th frame of a video, at most
    ``max_frames`` (0: all). Read with OpenCV when it can open the file, else with
    ``torchvision.io.read_video``; a ``DemoInputError`` saying what both answered otherwise."""
    every = max(1, int(every))
    problems = []
    try:
        import cv2

        cap = cv2.VideoCapture(path)
        opened = cap.isOpened()
        ok, frame = cap.read() if opened else (False, None)
        if ok:
            index, yielded = 0, 0
            try:
                while ok:
                    if index % every == 0:
                        yield index, np.ascontiguousarray(frame[:, :, ::-1])
                        yielded += 1
                        if max_frames and yielded >= max_frames:
                            return
                    ok, frame = cap.read()
                    index += 1
            finally:
                cap.release()
            return
        cap.release()
        problems.append(f"OpenCV {cv2.__version__} could not "
                        + ("open it" if not opened else "read a frame from it"))
    except ImportError as e:
        problems.append(f"OpenCV is not installed ({e})")
    try:
        import torchvision.io

        frames = torchvision.io.read_video(path, pts_unit="sec", output_format="THWC")[0]
    except Exception as e:  # torchvision needs PyAV (`pip install av`) and raises many types
        problems.append(f"torchvision.io.read_video failed ({type(e).__name__}: {e})")
    else:
        if len(frames):
            yielded = 0
            for index in range(0, len(frames), every):
                yield index, frames[index].numpy()
                yielded += 1
                if max_frames and yielded >= max_frames:
                    return
            return
        problems.append("torchvision.io.read_video found no frames")
    raise DemoInputError(
        f"cannot read the video {path}: {'; '.join(problems)}. Convert it to images (e.g. "
        f"`ffmpeg -i {path} frames/%06d.png`) and pass the folder with --input frames/.")


def _expand(path: str) -> List[str]:
    """The files one ``--input`` stands for: a folder's images (sorted), a file, or a glob's
    matches (sorted); a ``DemoInputError`` when it stands for none."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if _is_image(f) and os.path.isfile(os.path.join(path, f)))
        if not files:
            raise DemoInputError(f"--input {path}: the folder holds no images (looked for "
                                 f"{', '.join(IMAGE_EXTS)}); a video must be given as its file.")
        return files
    if os.path.isfile(path):
        return [path]
    matches = sorted(p for p in glob.glob(os.path.expanduser(path)) if os.path.isfile(p))
    if not matches:
        raise DemoInputError(f"--input {path}: no such file or folder, and as a glob it matches "
                             "no file.")
    return matches


def iter_inputs(inputs: Sequence[str], every: int = 1, max_frames: int = 0
                ) -> Iterator[Tuple[str, str, np.ndarray]]:
    """``(name, source file, H x W x 3 uint8 RGB)`` for each image and sampled video frame of
    ``inputs`` (folders, files, globs), in order. Names: the file stem, ``<stem>_f<frame>`` for
    a video frame."""
    from dl_lib.data.mapper import read_image

    files = [f for path in inputs for f in _expand(path)]
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        if _is_video(path):
            for index, frame in read_video_frames(path, every, max_frames):
                yield f"{stem}_f{index:06d}", path, frame
        else:
            yield stem, path, read_image(path)


# ----------------------------------------------------------------------------- ground truth
def _gt_from_dir(gt_dir: str, image_path: str) -> Optional[str]:
    """The PNG of ``gt_dir`` for ``image_path``: the one named like the image's stem (without a
    trailing ``_leftImg8bit``), else the single PNG whose name starts with it (Cityscapes'
    ``<stem>_gtFine_labelTrainIds.png``; with several, a ``labelTrainIds`` one); None if none."""
    stem = os.path.splitext(os.path.basename(image_path))[0]
    stem = re.sub(r"_leftImg8bit$", "", stem)
    exact = os.path.join(gt_dir, stem + ".png")
    if os.path.isfile(exact):
        return exact
    found = sorted(glob.glob(os.path.join(glob.escape(gt_dir), glob.escape(stem) + "_*.png")))
    if len(found) > 1:
        found = [f for f in found if "labelTrainIds" in os.path.basename(f)] or found[:0]
    return found[0] if len(found) == 1 else None


class GroundTruth:
    """Finds the label map of an input image: ``--gt-dir`` or a registered data set."""

    def __init__(self, gt_dir: Optional[str] = None, dataset: Optional[str] = None):
        if gt_dir and not os.path.isdir(gt_dir):
            raise DemoInputError(f"--gt-dir {gt_dir}: no such folder")
        self.gt_dir = gt_dir
        self.by_image = {}
        if dataset:
            from dl_lib.data import DatasetCatalog

            self.by_image = {os.path.realpath(d["file_name"]): d.get("sem_seg_file_name")
                             for d in DatasetCatalog.get(dataset)}
        self.missing: List[str] = []

    def __bool__(self) -> bool:
        return bool(self.gt_dir or self.by_image)

    def find(self, image_path: str, shape: Tuple[int, int]) -> Optional[np.ndarray]:
        """The H x W train ids of ``image_path`` (None when there is none; it is recorded)."""
        from dl_lib.data.datasets.common import read_mask

        path = (_gt_from_dir(self.gt_dir, image_path) if self.gt_dir
                else self.by_image.get(os.path.realpath(image_path)))
        if not path:
            self.missing.append(image_path)
            return None
        gt = read_mask(path)
        if gt.shape != tuple(shape):
            raise DemoInputError(f"ground truth {path} is {gt.shape[1]}x{gt.shape[0]} but the "
                                 f"image {image_path} is {shape[1]}x{shape[0]}; give the label "
                                 "map of that image at its size")
        return gt


# ----------------------------------------------------------------------------------- panels
def exit_titles(model, num_exits: int, flops=None) -> List[str]:
    """Titles of the exit panels: MFARANet ``branch b (stride s)`` then ``fused``; otherwise
    ``exit k`` (0-based, as ``write_panels`` and the ``exit{k}`` cost keys), with the cumulative
    GFLOPs ``flops["exit{k}"]`` when the model reported them."""
    try:
        from dl_lib.modeling.mfaranet.mfaranet import MFARANet
    except ImportError:  # pragma: no cover - the family is part of the library
        MFARANet = ()
    if isinstance(model, MFARANet) and num_exits == 5:
        return [f"branch {b} (stride {4 * 2 ** (b - 1)})" for b in range(1, 5)] + ["fused"]
    flops = flops if isinstance(flops, dict) else {}
    return [f"exit {k}" + (f": {flops[f'exit{k}']:.3g} GFLOPs" if f"exit{k}" in flops else "")
            for k in range(num_exits)]


@contextlib.contextmanager
def capture_attention(model):
    """While the block runs, collect MFARANet's ASFM attention weights: a list of
    ``(branch, 1 x K x h x w weights in (0, 1) at stride 4)``, one per fused branch and forward.
    Empty for other models (and for an MFARANet that fuses one branch: it has no attention)."""
    from dl_lib.modeling.mfaranet.mfaranet import MFARANet

    captured: List[Tuple[int, "torch.Tensor"]] = []
    head = getattr(model, "head", None)
    attention = getattr(head, "attention", None) if isinstance(model, MFARANet) else None
    handles = []
    if attention is not None:
        for branch, module in zip(head.fused_branches, attention):
            handles.append(module.register_forward_hook(
                lambda mod, inp, out, b=branch: captured.append((b, out.detach()))))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def attention_maps(captured, labels: np.ndarray, model_size: Tuple[int, int]
                   ) -> List[Tuple[int, np.ndarray]]:
    """``(branch, H x W weight at the predicted class)`` from :func:`capture_attention`'s list of
    one forward: each map resized as MFARANet resizes its scores (x4 with ``align_corners=True``
    to the padded input, cropped to the ``model_size`` it saw, bilinear to the labels' H x W),
    then read at ``labels`` (H x W class ids)."""
    import torch

    from dl_lib.modeling.meta_arch.semantic_segmentor import resize_logits
    from dl_lib.modeling.mfaranet.mfaranet import upsample_logits

    h, w = model_size
    index = torch.from_numpy(np.asarray(labels, dtype=np.int64)).clamp_min(0)
    maps = []
    for branch, weights in captured:
        stride4 = weights.float().cpu()
        full = upsample_logits(stride4, [4 * s for s in stride4.shape[-2:]])[0, :, :h, :w]
        full = resize_logits(full, labels.shape)
        k = full.shape[0]
        maps.append((branch, full.gather(0, index.clamp_max(k - 1)[None])[0].numpy()))
    return maps


def heat_map(values: np.ndarray) -> np.ndarray:
    """H x W values in [0, 1] -> H x W x 3 uint8 RGB with matplotlib's viridis."""
    import matplotlib

    rgba = matplotlib.colormaps["viridis"](np.clip(values, 0.0, 1.0))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def _rows(panels: List[np.ndarray], titles: List[str], h: int, w: int) -> List[np.ndarray]:
    """``PANELS_PER_ROW`` panels per row under their titles, the last row padded with black."""
    rows = []
    for start in range(0, len(panels), PANELS_PER_ROW):
        end = start + PANELS_PER_ROW
        chunk, names = list(panels[start:end]), list(titles[start:end])
        while len(chunk) < PANELS_PER_ROW:
            chunk.append(np.zeros((h, w, 3), np.uint8))
            names.append("")
        rows += [vis.title_strip(names, w, TITLE_HEIGHT), vis.hstack(chunk)]
    return rows


def demo_panel(image: np.ndarray, pred: np.ndarray, class_names: Sequence[str], colors=None,
               ignore_label: int = 255, gt: Optional[np.ndarray] = None, title: str = "",
               exits: Sequence[np.ndarray] = (), exit_names: Sequence[str] = (),
               masks: Sequence[np.ndarray] = (), alpha: float = 0.5,
               attention: Sequence[Tuple[int, np.ndarray]] = ()) -> np.ndarray:
    """``[titles] / image | prediction over the image | ground truth over the image (or the
    colourised prediction) / [exit rows] / [mask rows] / [attention rows] / legend`` as
    H' x 3W x 3 uint8. ``attention``: ``(branch, H x W values in [0, 1])`` drawn by
    :func:`heat_map`, three per row.

    ``image``: H x W x 3 RGB uint8; ``pred``, ``gt``, ``exits``: H x W train ids (ignore
    black); ``masks``: H x W bool (True = computed after exit j), drawn as ``write_panels``
    does. The legend lists the classes shown in any panel.
    """
    from dl_lib.evaluation.visualize import _mask_rows

    h, w = pred.shape
    palette = vis.palette(len(class_names), colors)

    def over(label):
        return vis.overlay(image, vis.colorize(label, palette, ignore_label), alpha)

    third = over(gt) if gt is not None else vis.colorize(pred, palette, ignore_label)
    titles = [title or "image", "prediction over the image",
              "ground truth over the image" if gt is not None else "prediction"]
    labels = [pred] + ([gt] if gt is not None else []) + list(exits)
    present = sorted(set().union(*(np.unique(x).tolist() for x in labels)))
    present = [c for c in present if 0 <= c < len(class_names) and c != ignore_label]
    names = list(exit_names) or [f"exit {k}" for k in range(len(exits))]
    fits = max(4, w // 6)  # characters of the default font that fit over a panel
    return vis.vstack([vis.title_strip([t[:fits] for t in titles], w, TITLE_HEIGHT),
                       vis.hstack([image, over(pred), third])]
                      + _rows([over(e) for e in exits], names, h, w)
                      + _mask_rows([np.asarray(m, bool) for m in masks], image, h, w)
                      + _rows([heat_map(a) for _, a in attention],
                              [f"branch {b} attention" for b, _ in attention], h, w)
                      + [vis.legend_strip(present, class_names, palette, PANELS_PER_ROW * w)])


# ---------------------------------------------------------------------------------- weights
def resolve_weights(cfg, weights: Optional[str]) -> str:
    """The checkpoint to draw with: ``weights`` (``--weights``; ``none`` = random init on
    purpose), else the one ``OUTPUT_DIR/last_checkpoint`` names; ``DemoInputError`` when there
    is neither, or the pointer names a missing file."""
    from dl_lib.checkpoint.checkpointer import readable_resume_checkpoint
    from dl_lib.tools.train_net import _last_checkpoint

    if weights:
        if weights.lower() != "none" and "://" not in weights and not os.path.isfile(weights):
            raise DemoInputError(f"--weights {weights}: no such file")
        return weights
    pointer = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    last = _last_checkpoint(cfg.OUTPUT_DIR)
    if last and os.path.isfile(last):
        return last
    if last:
        complete = readable_resume_checkpoint(cfg.OUTPUT_DIR)
        raise DemoInputError(
            f"{pointer} names {os.path.basename(last)}, which does not exist. "
            + (f"The newest complete checkpoint there is {complete}: `--weights {complete}`."
               if complete else "Pass the checkpoint with --weights path/to/model_final.pth."))
    raise DemoInputError(
        f"dl_demo needs trained weights, and {cfg.OUTPUT_DIR} holds no training run ({pointer} "
        "does not exist). Train the playground first (`dl_train`), or pass --weights "
        "path/to/model_final.pth (--weights none draws the random initialisation on purpose).")


# -------------------------------------------------------------------------------------- run
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dl_demo", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:3]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--playground", default=None,
                   help="playground folder (default: the current one)")
    p.add_argument("--input", action="append", default=[], metavar="PATH",
                   help="a folder of images, an image, a video file or a glob (quoted); repeat "
                        "for several")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="folder for the PNGs (default OUTPUT_DIR/demo)")
    p.add_argument("--weights", default=None,
                   help="checkpoint (default: the one OUTPUT_DIR/last_checkpoint names; none: "
                        "random initialisation)")
    p.add_argument("--gt-dir", default=None, metavar="DIR",
                   help="folder of ground-truth PNGs (train ids) named after the images")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="a registered data set: its images (without --input, the first "
                        "--num-images) and their ground truth; also its class names and colours")
    p.add_argument("--num-images", type=int, default=8,
                   help="with --dataset and no --input: how many of its images (default 8)")
    p.add_argument("--every", type=int, default=1, help="videos: every N-th frame (default 1)")
    p.add_argument("--max-frames", type=int, default=0,
                   help="videos: at most N frames per video (default 0: all)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the labels (default 0.5)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE config overrides, after all flags (e.g. MODEL.DEVICE cpu)")
    return p


def _metadata(cfg, dataset: Optional[str]):
    from dl_lib.data import MetadataCatalog

    k = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    name = dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    meta = MetadataCatalog.get(name) if name else None
    names = list(getattr(meta, "stuff_classes", None) or [f"class {i}" for i in range(k)])
    colors = getattr(meta, "stuff_colors", None)
    ignore = getattr(meta, "ignore_label", cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
    return names, colors, ignore


def _extras_line(num_exits: int, num_masks: int, routes: int, titles: Sequence[str],
                 num_attention: int = 0) -> str:
    parts = []
    if num_exits:
        parts.append(f"{num_exits - 1} branches + fused" if titles and titles[-1] == "fused"
                     else f"{num_exits} exits")
    if num_masks:
        parts.append(f"{num_masks} confidence masks")
    if num_attention:
        parts.append(f"{num_attention} attention maps")
    if routes:
        parts.append("the routes taken")
    return ("extra rows: " + ", ".join(parts)) if parts else \
        "no extra rows (the model returns one prediction)"


def run_demo(playground_dir: Optional[str], inputs: Sequence[str], output: Optional[str] = None,
             weights: Optional[str] = None, gt_dir: Optional[str] = None,
             dataset: Optional[str] = None, num_images: int = 8, every: int = 1,
             max_frames: int = 0, alpha: float = 0.5, opts: Sequence[str] = ()) -> List[str]:
    """Write one panel per image / frame; returns their paths (see the module doc)."""
    from PIL import Image

    from dl_lib import playground
    from dl_lib.engine.predictor import Predictor
    from dl_lib.utils.file_io import atomic_write

    opts = list(opts)
    given = [v for key, v in zip(opts[::2], opts[1::2]) if key == "MODEL.WEIGHTS"]
    if given and weights and given[-1] != weights:
        raise DemoInputError(f"--weights {weights} contradicts the override MODEL.WEIGHTS "
                             f"{given[-1]}; give one of them")
    folder = playground.find_playground(playground_dir)
    cfg = playground.load_config(folder, opts)
    cfg.MODEL.WEIGHTS = resolve_weights(cfg, weights or (given[-1] if given else None))
    if not inputs and not dataset:
        raise DemoInputError("nothing to draw: give --input (a folder of images, a video or a "
                             "glob) or --dataset NAME")
    playground.load_net(folder)  # registers the playground's data sets before they are read
    ground_truth = GroundTruth(gt_dir, dataset)
    if dataset and not inputs:
        from dl_lib.data import DatasetCatalog

        inputs = [d["file_name"] for d in DatasetCatalog.get(dataset)[:max(0, num_images)]]
        if not inputs:
            raise DemoInputError(f"--dataset {dataset} holds no images")
    predictor = Predictor(cfg, playground=folder, input_format="RGB")
    names, colors, ignore = _metadata(cfg, dataset)
    out_dir = output or os.path.join(cfg.OUTPUT_DIR, "demo")
    os.makedirs(out_dir, exist_ok=True)
    print(f"dl_demo: {predictor.model.__class__.__name__} with {cfg.MODEL.WEIGHTS}; panels "
          f"into {out_dir}", flush=True)
    backbone = getattr(predictor.model, "backbone", None)
    threshold = getattr(backbone, "skip_threshold", 1e-4)
    paths, extras = [], ""
    for i, (name, source, image) in enumerate(iter_inputs(inputs, every, max_frames)):
        with capture_attention(predictor.model) as captured:
            pred = predictor(image)
        attention = []
        if captured and len(captured) == len(predictor.model.head.fused_branches):  # one forward
            size = tuple(predictor.model_input(image)["image"].shape[-2:])
            attention = attention_maps(captured, pred.labels, size)
        gt = ground_truth.find(source, image.shape[:2]) if ground_truth else None
        flops = pred.outputs.get("flops")
        titles = exit_titles(predictor.model, len(pred.exit_logits), flops)
        panel = demo_panel(image, pred.labels, names, colors, ignore, gt=gt,
                           title=f"{name} {image.shape[1]}x{image.shape[0]}",
                           exits=pred.exit_labels, exit_names=titles, masks=pred.exit_masks,
                           alpha=alpha, attention=attention)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]
        path = os.path.join(out_dir, f"{i:04d}_{stem}.png")
        if pred.gates:  # a dynamic-routing model: the routes this image took
            from dl_lib.modeling.dynamic_routing.routes import draw_routes, save_routes

            info = flops if isinstance(flops, dict) else {}
            gflops = (f"real {info['real_gflops']:.3f} / corrected "
                      f"{info['real_corrected_gflops']:.3f} GFLOPs;"
                      if "real_gflops" in info and "real_corrected_gflops" in info else "")
            panel = vis.vstack([panel, draw_routes(pred.gates, threshold, title=gflops,
                                                   width=panel.shape[1])])
            save_routes(os.path.splitext(path)[0] + ".routes.json", pred.gates, image_id=name,
                        flops=info)
        with atomic_write(path, "wb") as f:
            Image.fromarray(panel).save(f, format="PNG")
        print(f"  {path}", flush=True)
        paths.append(path)
        extras = _extras_line(len(pred.exit_logits), len(pred.exit_masks), bool(pred.gates),
                              titles, len(attention))
    if ground_truth and ground_truth.missing:
        where = f"in {gt_dir}" if gt_dir else f"in --dataset {dataset}"
        if len(ground_truth.missing) == len(paths):
            raise DemoInputError(f"no ground truth {where} for any input (first: "
                                 f"{ground_truth.missing[0]}); --gt-dir wants PNGs named after "
                                 "the images (<stem>.png or <stem>_*.png)")
        print(f"dl_demo: no ground truth {where} for {len(ground_truth.missing)} of "
              f"{len(paths)} images (e.g. {ground_truth.missing[0]}); drawn without", flush=True)
    print(f"dl_demo: {len(paths)} panels written to {out_dir}; {extras}", flush=True)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``dl_demo``."""
    from dl_lib.checkpoint.checkpointer import CheckpointReadError, IncompatibleCheckpointError
    from dl_lib.config import ConfigError
    from dl_lib.data.datasets.common import ImageReadError
    from dl_lib.playground import PlaygroundError

    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if len(args.opts) % 2:
        parser.error(f"overrides must come in KEY VALUE pairs, got {args.opts}")
    flags = [t for t in args.opts[::2] if t.startswith("-")]
    if flags:
        parser.error(f"the flag {flags[0]!r} comes after the KEY VALUE overrides; put every "
                     "flag first")
    if args.every < 1 or args.max_frames < 0 or args.num_images < 1:
        parser.error("--every and --num-images must be at least 1, --max-frames at least 0")
    try:
        run_demo(args.playground, args.input, args.output, args.weights, args.gt_dir,
                 args.dataset, args.num_images, args.every, args.max_frames, args.alpha,
                 args.opts)
    except (DemoInputError, PlaygroundError, ConfigError, CheckpointReadError,
            IncompatibleCheckpointError, ImageReadError) as e:
        parser.exit(2, f"dl_demo: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``dl_browse``: write a few augmented training samples of a playground, to check its pipeline
by eye (mmsegmentation's ``browse_dataset``).

    cd playground/<Group>/<Name>
    dl_browse                                 # 8 samples into OUTPUT_DIR/browse/
    dl_browse --num-samples 4 --output /tmp/b INPUT.CROP_PAD.SIZE "[256, 256]"
    python tools/browse_dataset.py --playground playground/<Group>/<Name>

Samples come from the training loader the playground trains with (its ``net.py``'s ``Trainer``
if it has one, else ``DefaultTrainer``): the first images ``dl_train`` would see, with every
augmentation applied (resize, crop, flip, colour), one image per batch and no loader workers.
Each PNG is ``image | labels over the image`` (the image as the model gets it, in RGB; labels in
the dataset's colours, ignored pixels black) over a legend of the classes present.
"""
import argparse
import os
import re
import sys
from typing import List, Optional, Sequence

import numpy as np

from dl_lib.utils import visualizer as vis

__all__ = ["main", "build_parser", "training_samples", "sample_panel", "browse"]

TITLE_HEIGHT = 16
IGNORE_COLOR = (0, 0, 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dl_browse", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--playground", default=None,
                   help="playground folder (default: the current one)")
    p.add_argument("--num-samples", type=int, default=8, help="samples to write (default 8)")
    p.add_argument("--output", default=None, help="folder for the PNGs (default OUTPUT_DIR/browse)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the labels (default 0.5)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE config overrides, after all flags")
    return p


def training_samples(cfg, num_samples: int, trainer_cls=None) -> List[dict]:
    """The first ``num_samples`` mapped training dicts (``image`` 3 x H x W uint8 in
    ``INPUT.FORMAT``, ``sem_seg`` H x W int64) of ``trainer_cls.build_train_loader(cfg)``, one
    image per batch, loaded in this process."""
    from dl_lib.engine import DefaultTrainer

    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.IMS_PER_BATCH = 1
    cfg.DATALOADER.NUM_WORKERS = 0
    loader = (trainer_cls or DefaultTrainer).build_train_loader(cfg)
    samples = []
    for batch in loader:
        samples.extend(batch)
        if len(samples) >= num_samples:
            break
    return samples[:num_samples]


def sample_panel(image: np.ndarray, label: np.ndarray, class_names: Sequence[str], colors,
                 ignore_label: int = 255, title: str = "", alpha: float = 0.5) -> np.ndarray:
    """``[title strip] / image | labels over the image / legend`` as H' x 2W x 3 uint8.

    ``image``: H x W x 3 RGB uint8; ``label``: H x W train ids (``ignore_label`` drawn black).
    The legend lists the classes present, then "ignore" when some pixel is ignored.
    """
    h, w = label.shape
    k = len(class_names)
    colors = vis.palette(k, colors)
    shown = vis.overlay(image, vis.colorize(label, colors, ignore_label, IGNORE_COLOR), alpha)
    values = set(np.unique(label).tolist())
    present = [c for c in sorted(values) if 0 <= c < k and c != ignore_label]
    names, legend_colors = list(class_names), colors
    if values - set(present):  # ignored (or out-of-range) pixels: say what black means
        present.append(k)
        names = names + [f"ignore ({ignore_label})"]
        legend_colors = np.concatenate([colors, np.asarray([IGNORE_COLOR], np.uint8)])
    titles = [title or "image", "labels over the image"]
    return vis.vstack([vis.title_strip(titles, w, TITLE_HEIGHT),
                       vis.hstack([image, shown]),
                       vis.legend_strip(present, names, legend_colors, 2 * w)])


def _file_stem(i: int, image_id) -> str:
    return f"{i:03d}_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", str(image_id))[:80]


def browse(playground_dir: Optional[str] = None, num_samples: int = 8,
           output: Optional[str] = None, opts: Sequence[str] = (), alpha: float = 0.5) -> List[str]:
    """Write ``num_samples`` panels of the playground's training pipeline; their paths."""
    from PIL import Image

    from dl_lib import playground
    from dl_lib.data import MetadataCatalog

    cfg = playground.load_config(playground_dir, list(opts))
    trainer_cls = getattr(playground.load_net(playground_dir), "Trainer", None)
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    names = list(getattr(meta, "stuff_classes", None) or
                 [str(i) for i in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)])
    colors = getattr(meta, "stuff_colors", None)
    ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    out_dir = output or os.path.join(cfg.OUTPUT_DIR, "browse")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i, s in enumerate(training_samples(cfg, num_samples, trainer_cls)):
        image = s["image"].permute(1, 2, 0).numpy()
        if cfg.INPUT.FORMAT == "BGR":
            image = image[:, :, ::-1]
        image = np.ascontiguousarray(image.astype(np.uint8))
        label = s["sem_seg"].numpy()
        h, w = label.shape
        panel = sample_panel(image, label, names, colors, ignore,
                             f"{s.get('image_id', i)} {w}x{h}", alpha)
        path = os.path.join(out_dir, _file_stem(i, s.get("image_id", i)) + ".png")
        Image.fromarray(panel).save(path)
        paths.append(path)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_samples < 1:
        print("error: --num-samples must be at least 1", file=sys.stderr)
        return 2
    paths = browse(args.playground, args.num_samples, args.output, args.opts, args.alpha)
    print(f"{len(paths)} training samples written to {os.path.dirname(paths[0])}:")
    for p in paths:
        print("  " + p)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cityscapes: make the ``*_gtFine_labelTrainIds.png`` masks and check the tree.

The download holds labelIds and polygons; training reads train ids (19 classes, 255 = ignore),
which cityscapesscripts draws from each ``*_gtFine_polygons.json`` (``json2labelImg(f, dst,
"trainIds")``, what its ``createTrainIdLabelImgs`` does one file after another; here a process
pool does it). Files that already exist are kept unless ``force``.

    python tools/prepare_cityscapes.py [--root $DL_DATASETS/cityscapes] [--expect-counts off]
"""
import argparse
import glob
import os
from concurrent.futures import ProcessPoolExecutor
from typing import List, Optional, Sequence

from tqdm import tqdm

from dl_lib.data.datasets.common import dataset_path
from dl_lib.data.prepare.common import (PrepareError, add_common_arguments, check_split,
                                        format_report, parse_expect_counts, require, run_main)

__all__ = ["OFFICIAL_COUNTS", "create_train_id_masks", "prepare_cityscapes", "main"]

OFFICIAL_COUNTS = {"train": 2975, "val": 500, "test": 1525}
DOWNLOAD = ("download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
            "https://www.cityscapes-dataset.com/downloads/ and unzip both into the root "
            "(datasets/README.md, section 'Cityscapes')")
_IMG, _POLY, _TRAIN_IDS = "_leftImg8bit.png", "_gtFine_polygons.json", "_gtFine_labelTrainIds.png"


def _draw_train_ids(polygons: str) -> str:
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    out = polygons[: -len("_polygons.json")] + "_labelTrainIds.png"
    tmp = out + ".tmp.png"  # a killed run leaves no half-written mask under the real name
    json2labelImg(polygons, tmp, "trainIds")
    os.replace(tmp, out)
    return out


def create_train_id_masks(root: str, force: bool = False, num_workers: int = 2) -> int:
    """Draw ``gtFine/*/*/*_gtFine_labelTrainIds.png`` from the polygons under ``root``; returns
    how many were written."""
    polygons = sorted(glob.glob(os.path.join(root, "gtFine", "*", "*", "*" + _POLY)))
    if not polygons:
        raise PrepareError(f"Cityscapes: no gtFine/<split>/<city>/*{_POLY} under {root!r}: "
                           f"{DOWNLOAD}.")
    todo = [p for p in polygons
            if force or not os.path.isfile(p[: -len("_polygons.json")] + "_labelTrainIds.png")]
    progress = dict(total=len(todo), desc="Cityscapes trainIds", unit="mask")
    if num_workers <= 1 or len(todo) < 8:
        for p in tqdm(todo, **progress):
            _draw_train_ids(p)
    else:
        with ProcessPoolExecutor(num_workers) as pool:
            list(tqdm(pool.map(_draw_train_ids, todo, chunksize=16), **progress))
    return len(todo)


def split_pairs(root: str, split: str) -> List[tuple]:
    """(image, trainIds mask) of every ``leftImg8bit/<split>/<city>/*_leftImg8bit.png``."""
    image_dir = require(os.path.join(root, "leftImg8bit", split), "Cityscapes", DOWNLOAD)
    pairs = []
    for image in sorted(glob.glob(os.path.join(image_dir, "*", "*" + _IMG))):
        city, name = os.path.basename(os.path.dirname(image)), os.path.basename(image)
        mask = os.path.join(root, "gtFine", split, city, name[: -len(_IMG)] + _TRAIN_IDS)
        if not os.path.isfile(mask):
            raise PrepareError(f"Cityscapes {split}: {mask!r} is missing (no polygons for "
                               f"{image!r}?): unzip gtFine_trainvaltest.zip into {root!r} again.")
        pairs.append((image, mask))
    return pairs


def prepare_cityscapes(root: str, splits: Sequence[str] = ("train", "val", "test"),
                       expect_counts: Optional[dict] = OFFICIAL_COUNTS, force: bool = False,
                       num_workers: int = 2, num_threads: int = 4) -> list:
    """Make the trainIds masks, check every split; returns (report rows, masks written)."""
    require(root, "Cityscapes", DOWNLOAD)
    written = create_train_id_masks(root, force, num_workers)
    rows = []
    for split in splits:
        rows.append(check_split(
            "Cityscapes", split, split_pairs(root, split),
            None if expect_counts is None else expect_counts.get(split),
            list(range(19)) + [255],
            "The trainIds masks must hold 0..18 and 255: delete it and run this tool again "
            "(a labelIds file copied under the trainIds name is the usual cause).",
            f"Missing images are an incomplete extraction: {DOWNLOAD}.",
            num_threads))
    return rows, written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=None, help="default: $DL_DATASETS/cityscapes")
    p.add_argument("--force", action="store_true", help="redraw masks that already exist")
    p.add_argument("--num-workers", type=int, default=2, help="processes drawing masks")
    add_common_arguments(p, OFFICIAL_COUNTS)
    args = p.parse_args(argv)

    def prepare():
        root = args.root or dataset_path("cityscapes")
        rows, written = prepare_cityscapes(root, expect_counts=parse_expect_counts(
            args.expect_counts, OFFICIAL_COUNTS), force=args.force,
            num_workers=args.num_workers, num_threads=args.num_threads)
        print(format_report(rows, [f"{written} *{_TRAIN_IDS} written by cityscapesscripts' "
                                   "json2labelImg (existing ones kept; --force redraws).",
                                   f"Cityscapes at {root}: ready (train ids 0..18, "
                                   "255 = ignore)."]))

    return run_main(prepare)

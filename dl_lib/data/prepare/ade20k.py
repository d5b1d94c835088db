"""ADE20K SceneParsing (``ADEChallengeData2016``, 150 classes): check the tree and convert.

The release needs no drawing: ``annotations/*.png`` hold 0 = other and 1..150. This checks the
counts (20,210 training / 2,000 validation), the values and the sizes, then runs the loader's
reduce-zero-label conversion once (0 -> 255, v -> v - 1 into ``annotations_trainIds/``), so the
first training job does not.

    python tools/prepare_ade20k.py [--root $DL_DATASETS/ADEChallengeData2016] [--expect-counts off]
"""
import argparse
import glob
import os
from typing import List, Optional

from dl_lib.data.datasets.common import dataset_path
from dl_lib.data.prepare.common import (PrepareError, add_common_arguments, check_split,
                                        format_report, parse_expect_counts, require, run_main)

__all__ = ["OFFICIAL_COUNTS", "prepare_ade20k", "main"]

OFFICIAL_COUNTS = {"train": 20210, "val": 2000}
FOLDERS = {"train": "training", "val": "validation"}
DOWNLOAD = ("download ADEChallengeData2016.zip from "
            "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip and unzip it "
            "into $DL_DATASETS (datasets/README.md, section 'ADE20K')")


def split_pairs(root: str, split: str) -> List[tuple]:
    sub = FOLDERS[split]
    image_dir = require(os.path.join(root, "images", sub), "ADE20K", DOWNLOAD)
    label_dir = require(os.path.join(root, "annotations", sub), "ADE20K", DOWNLOAD)
    pairs = []
    for image in sorted(glob.glob(os.path.join(image_dir, "*.jpg"))):
        label = os.path.join(label_dir, os.path.basename(image)[:-4] + ".png")
        if not os.path.isfile(label):
            raise PrepareError(f"ADE20K {split}: {label!r} (the annotation of {image!r}) is "
                               f"missing: {DOWNLOAD}.")
        pairs.append((image, label))
    return pairs


def prepare_ade20k(root: str, expect_counts: Optional[dict] = OFFICIAL_COUNTS,
                   convert: bool = True, num_threads: int = 4) -> list:
    """Check both splits, then (``convert``) write ``annotations_trainIds/``; the report rows."""
    from dl_lib.data.datasets.ade20k import load_ade20k

    require(root, "ADE20K", DOWNLOAD)
    rows = [check_split("ADE20K", split, split_pairs(root, split),
                        None if expect_counts is None else expect_counts.get(split),
                        range(151),
                        "ADEChallengeData2016 annotations hold 0 (other) and 1..150; a colour or "
                        "full-ADE20K (3,000+ classes) annotation is another release: "
                        f"{DOWNLOAD}.",
                        f"Missing images are an incomplete extraction: {DOWNLOAD}.", num_threads)
            for split in FOLDERS]
    if convert:
        for split in FOLDERS:
            load_ade20k(root, split)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=None, help="default: $DL_DATASETS/ADEChallengeData2016")
    p.add_argument("--no-convert", action="store_true",
                   help="only check; the loader converts on first use instead")
    add_common_arguments(p, OFFICIAL_COUNTS)
    args = p.parse_args(argv)

    def prepare():
        root = args.root or dataset_path("ADEChallengeData2016")
        rows = prepare_ade20k(root, parse_expect_counts(args.expect_counts, OFFICIAL_COUNTS),
                              not args.no_convert, args.num_threads)
        notes = [] if args.no_convert else [
            f"annotations_trainIds/ written under {root} (0 -> 255 ignored, 1..150 -> 0..149)."]
        print(format_report(rows, notes + [f"ADE20K at {root}: ready."]))

    return run_main(prepare)

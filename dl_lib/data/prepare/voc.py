"""Pascal VOC 2012 with the SBD augmented set: build ``train_aug`` from the SBD release.

Inputs: ``VOCdevkit/VOC2012`` (``VOCtrainval_11-May-2012.tar``) and the SBD release
(``benchmark.tgz``, unpacked: ``benchmark_RELEASE/dataset/{cls/*.mat, img/*.jpg, train.txt,
val.txt}``). The list is

    train_aug = (SBD train ∪ SBD val ∪ VOC train) − VOC val       (10,582 ids)

written to ``ImageSets/Segmentation/train_aug.txt``, and one index PNG per id into
``SegmentationClassAug/``: VOC's own annotation where VOC has one (``SegmentationClass``, read as
palette indices: it keeps the 255 object boundaries; ``--prefer sbd`` takes SBD's instead) and
otherwise SBD's ``cls/<id>.mat`` (``GTcls.Segmentation``, 0..20, read with scipy.io.loadmat). SBD
images missing from ``JPEGImages`` are copied from ``dataset/img``. Then train, val and train_aug
are checked (1,464 / 1,449 / 10,582 images, values 0..20 and 255, sizes).

    python tools/prepare_voc.py --sbd /path/to/benchmark_RELEASE \
        [--root $DL_DATASETS/VOCdevkit/VOC2012]
"""
import argparse
import os
import shutil
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from dl_lib.data.datasets.common import dataset_path, read_mask
from dl_lib.data.prepare.common import (PrepareError, add_common_arguments, check_split,
                                        format_report, listed_pairs, parse_expect_counts,
                                        read_list, require, run_main)

__all__ = ["OFFICIAL_COUNTS", "SBD_COUNTS", "read_sbd_mat", "train_aug_ids", "build_train_aug",
           "prepare_voc", "main"]

OFFICIAL_COUNTS = {"train": 1464, "val": 1449, "train_aug": 10582}
SBD_COUNTS = {"train": 8498, "val": 2857}
VOC_DOWNLOAD = ("download VOCtrainval_11-May-2012.tar from "
                "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ and untar it into $DL_DATASETS "
                "(datasets/README.md, section 'Pascal VOC 2012')")
SBD_DOWNLOAD = ("download benchmark.tgz (SBD) from http://www.eecs.berkeley.edu/Research/"
                "Projects/CS/vision/grouping/semantic_contours/benchmark.tgz, untar it and pass "
                "its benchmark_RELEASE folder as --sbd")
VALUE_HINT = ("VOC labels are palette or L PNGs of indices 0..20 and 255 (boundaries); an RGB "
              "copy has lost the indices: take the file from the release again.")


def read_sbd_mat(path: str) -> np.ndarray:
    """The class mask (H x W uint8, 0 = background, 1..20) of an SBD ``cls/*.mat``."""
    from scipy.io import loadmat

    try:
        data = loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as e:  # scipy raises ValueError / MatReadError / TypeError on bad files
        raise PrepareError(f"SBD: cannot read {path!r} ({type(e).__name__}: {e}); unpack "
                           f"benchmark.tgz again ({SBD_DOWNLOAD}).") from e
    gt = data.get("GTcls")
    if gt is None or not hasattr(gt, "Segmentation"):
        keys = sorted(k for k in data if not k.startswith("__"))
        raise PrepareError(f"SBD: {path!r} has no GTcls.Segmentation (keys: {keys}); class "
                           "masks are in dataset/cls/, not dataset/inst/.")
    return np.asarray(gt.Segmentation).astype(np.uint8)


def train_aug_ids(sbd_train: Sequence[str], sbd_val: Sequence[str], voc_train: Sequence[str],
                  voc_val: Sequence[str]) -> List[str]:
    """``(SBD train ∪ SBD val ∪ VOC train) − VOC val``, sorted."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def build_train_aug(voc_root: str, sbd_root: str, prefer: str = "voc",
                    check_sbd_counts: bool = True) -> dict:
    """Write ``SegmentationClassAug/`` and ``ImageSets/Segmentation/train_aug.txt``; returns
    what it did (``ids``, ``from_voc``, ``from_sbd``, ``images_copied``). ``check_sbd_counts``:
    SBD's lists must have the release's 8,498 / 2,857 ids."""
    if prefer not in ("voc", "sbd"):
        raise PrepareError(f"--prefer must be 'voc' or 'sbd', got {prefer!r}")
    sets = os.path.join(voc_root, "ImageSets", "Segmentation")
    voc_train = read_list(os.path.join(sets, "train.txt"), "Pascal VOC 2012", VOC_DOWNLOAD)
    voc_val = read_list(os.path.join(sets, "val.txt"), "Pascal VOC 2012", VOC_DOWNLOAD)
    dataset = require(os.path.join(sbd_root, "dataset"), "SBD", SBD_DOWNLOAD)
    sbd = {s: read_list(os.path.join(dataset, s + ".txt"), "SBD", SBD_DOWNLOAD) for s in SBD_COUNTS}
    if check_sbd_counts:
        for s, n in SBD_COUNTS.items():
            if len(sbd[s]) != n:
                listed = os.path.join(dataset, s + ".txt")
                raise PrepareError(f"SBD: {listed!r} lists {len(sbd[s])} ids, the release has "
                                   f"{n}: {SBD_DOWNLOAD}. (For a partial or test tree pass "
                                   "--expect-counts off.)")
    ids = train_aug_ids(sbd["train"], sbd["val"], voc_train, voc_val)
    out_dir = os.path.join(voc_root, "SegmentationClassAug")
    tmp_dir = out_dir + ".tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    jpegs = require(os.path.join(voc_root, "JPEGImages"), "Pascal VOC 2012", VOC_DOWNLOAD)
    in_sbd = set(sbd["train"]) | set(sbd["val"])
    counts = {"ids": len(ids), "from_voc": 0, "from_sbd": 0, "images_copied": 0}
    for i in tqdm(ids, desc="train_aug labels", unit="label"):
        voc_png = os.path.join(voc_root, "SegmentationClass", i + ".png")
        use_voc = os.path.isfile(voc_png) and (prefer == "voc" or i not in in_sbd)
        if use_voc:
            mask = read_mask(voc_png)
        else:
            mat = os.path.join(dataset, "cls", i + ".mat")
            if not os.path.isfile(mat):
                raise PrepareError(f"SBD: {mat!r} is missing, and {i} has no VOC annotation "
                                   f"either: unpack the whole of benchmark.tgz ({SBD_DOWNLOAD}).")
            mask = read_sbd_mat(mat)
        Image.fromarray(mask.astype(np.uint8), mode="L").save(os.path.join(tmp_dir, i + ".png"))
        counts["from_voc" if use_voc else "from_sbd"] += 1
        jpeg = os.path.join(jpegs, i + ".jpg")
        if not os.path.isfile(jpeg):
            sbd_jpeg = os.path.join(dataset, "img", i + ".jpg")
            if not os.path.isfile(sbd_jpeg):
                raise PrepareError(f"Pascal VOC 2012: {jpeg!r} is missing and SBD has no "
                                   f"{sbd_jpeg!r}: {VOC_DOWNLOAD}.")
            shutil.copyfile(sbd_jpeg, jpeg)
            counts["images_copied"] += 1
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp_dir, out_dir)
    with open(os.path.join(sets, "train_aug.txt"), "w") as f:
        f.write("".join(i + "\n" for i in ids))
    return counts


def prepare_voc(voc_root: str, sbd_root: Optional[str], prefer: str = "voc",
                expect_counts: Optional[dict] = OFFICIAL_COUNTS, num_threads: int = 4):
    """Build train_aug (when ``sbd_root`` is given), check the splits; (rows, build counts)."""
    require(voc_root, "Pascal VOC 2012", VOC_DOWNLOAD)
    # SBD's own lists are checked with the official counts only (explicit counts are VOC's)
    built = (build_train_aug(voc_root, sbd_root, prefer, expect_counts == OFFICIAL_COUNTS)
             if sbd_root else None)
    sets = os.path.join(voc_root, "ImageSets", "Segmentation")
    rows = []
    for split in ("train", "val", "train_aug"):
        if split == "train_aug" and not os.path.isfile(os.path.join(sets, "train_aug.txt")):
            continue  # not built (no --sbd) and not there from before
        labels = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
        pairs = listed_pairs(read_list(os.path.join(sets, split + ".txt"), "Pascal VOC 2012",
                                       VOC_DOWNLOAD),
                             os.path.join(voc_root, "JPEGImages"), os.path.join(voc_root, labels),
                             ".jpg", ".png", f"Pascal VOC 2012 {split}",
                             "Run this tool with --sbd again." if split == "train_aug"
                             else VOC_DOWNLOAD + ".")
        rows.append(check_split("Pascal VOC 2012", split, pairs,
                                None if expect_counts is None else expect_counts.get(split),
                                list(range(21)) + [255], VALUE_HINT,
                                f"The lists come with the release: {VOC_DOWNLOAD}"
                                + (f"; train_aug is built from SBD: {SBD_DOWNLOAD}"
                                   if split == "train_aug" else "") + ".", num_threads))
    return rows, built


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=None, help="default: $DL_DATASETS/VOCdevkit/VOC2012")
    p.add_argument("--sbd", default=None,
                   help="SBD's benchmark_RELEASE folder (holding dataset/cls, dataset/train.txt); "
                        "without it only the VOC splits are checked")
    p.add_argument("--prefer", choices=("voc", "sbd"), default="voc",
                   help="whose annotation an image in both VOC and SBD gets (default voc)")
    add_common_arguments(p, OFFICIAL_COUNTS)
    args = p.parse_args(argv)

    def prepare():
        root = args.root or dataset_path("VOCdevkit", "VOC2012")
        rows, built = prepare_voc(root, args.sbd, args.prefer,
                                  parse_expect_counts(args.expect_counts, OFFICIAL_COUNTS),
                                  args.num_threads)
        notes = []
        if built:
            notes.append(f"train_aug: {built['ids']} ids = (SBD train ∪ SBD val ∪ VOC train) "
                         f"− VOC val; labels from VOC {built['from_voc']}, "
                         f"from SBD {built['from_sbd']}; "
                         f"{built['images_copied']} images copied from SBD.")
        elif not any(r["split"] == "train_aug" for r in rows):
            notes.append("train_aug not built: pass --sbd benchmark_RELEASE to build it.")
        print(format_report(rows, notes + [f"Pascal VOC 2012 at {root}: ready."]))

    return run_main(prepare)

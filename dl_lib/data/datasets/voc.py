"""Pascal VOC 2012 segmentation, 21 classes (0 = background), 255 = object boundary (ignored).

``SegmentationClass/*.png`` are palette PNGs: their *indices* are the labels (read in mode "P",
never converted to RGB). The optional SBD-augmented split (``train_aug``, 10,582 images) reads
``SegmentationClassAug/*.png`` (index PNGs) listed in ``ImageSets/Segmentation/train_aug.txt``.
"""
import os

from dl_lib.data.datasets.common import (check_mask_values, dataset_path, pairs_from_list,
                                         read_split_list, require_dir)

__all__ = ["VOC_CLASSES", "VOC_COLORS", "voc_palette", "load_voc", "register_voc"]

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]
README_SECTION = "Pascal VOC 2012"


def voc_palette(n: int = 256) -> list:
    """The VOC colour map (bit-interleaved index -> RGB), as a list of (r, g, b)."""
    pal = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal.append((r, g, b))
    return pal


VOC_COLORS = voc_palette(21)


# train_aug is not in the VOC download: built from the SBD release by a script.
BUILD_TRAIN_AUG = ("Build train_aug from SBD's benchmark.tgz with `python tools/prepare_voc.py "
                   "--sbd /path/to/benchmark_RELEASE`.")


def load_voc(root: str, split: str) -> list:
    """``root`` = ``.../VOCdevkit/VOC2012``; split in ``train``, ``val``, ``train_aug``."""
    gt_sub = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
    try:
        ids = read_split_list(os.path.join(root, "ImageSets", "Segmentation", split + ".txt"),
                              "Pascal VOC 2012", README_SECTION)
        gt_dir = require_dir(os.path.join(root, gt_sub), "Pascal VOC 2012", README_SECTION)
    except FileNotFoundError as e:
        if split != "train_aug":
            raise
        raise FileNotFoundError(f"{e} {BUILD_TRAIN_AUG}") from None
    dicts = pairs_from_list(
        ids, require_dir(os.path.join(root, "JPEGImages"), "Pascal VOC 2012", README_SECTION),
        gt_dir, ".jpg", ".png", f"voc_2012_sem_seg_{split}")
    check_mask_values([d["sem_seg_file_name"] for d in dicts], 21, 255,
                      hint="VOC masks must be palette (P) or L PNGs holding indices 0..20 and 255; "
                           "an RGB-converted mask loses the indices.")
    return dicts


def register_voc(catalog, metadata_catalog) -> None:
    for split in ("train", "val", "train_aug"):
        name = f"voc_2012_sem_seg_{split}"

        def load(split=split):
            root = require_dir(dataset_path("VOCdevkit", "VOC2012"), "Pascal VOC 2012", README_SECTION)
            return load_voc(root, split)

        catalog.register(name, load)
        metadata_catalog.get(name).set(stuff_classes=list(VOC_CLASSES), stuff_colors=list(VOC_COLORS),
                                       ignore_label=255, evaluator_type="sem_seg")

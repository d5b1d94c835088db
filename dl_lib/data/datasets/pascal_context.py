"""Pascal Context, 59-class setting (PASCAL VOC 2010 images).

``SegmentationClassContext/*.png`` hold 0 = background and 1..59 (made from ``trainval_merged.json``
with the Detail API, see datasets/README.md). For the 59-class setting background is ignored: on
first use they are converted once into ``SegmentationClassContext_trainIds/`` (0 -> 255, v -> v-1).
"""
import os

from dl_lib.data.datasets.common import (check_mask_values, convert_label_dir, dataset_path,
                                         default_colors, pairs_from_list, read_split_list,
                                         reduce_zero_label_lut, require_dir)

__all__ = ["PASCAL_CONTEXT_59_CLASSES", "load_pascal_context_59", "register_pascal_context"]

PASCAL_CONTEXT_59_CLASSES = [
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse",
    "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
]
assert len(PASCAL_CONTEXT_59_CLASSES) == 59
README_SECTION = "Pascal Context"


def load_pascal_context_59(root: str, split: str) -> list:
    """``root`` = ``.../VOCdevkit/VOC2010``; split in ``train``, ``val``."""
    try:
        ids = read_split_list(
            os.path.join(root, "ImageSets", "SegmentationContext", split + ".txt"),
            "Pascal Context", README_SECTION)
        raw = require_dir(os.path.join(root, "SegmentationClassContext"), "Pascal Context",
                          README_SECTION)
    except FileNotFoundError as e:  # neither is in the VOC 2010 download
        raise FileNotFoundError(
            f"{e} Draw the labels and lists from trainval_merged.json with `python "
            "tools/prepare_pascal_context.py --json /path/to/trainval_merged.json`.") from None
    gt_dir = convert_label_dir(raw, os.path.join(root, "SegmentationClassContext_trainIds"),
                               reduce_zero_label_lut(), desc="Pascal Context: 0->255, shift -1")
    dicts = pairs_from_list(
        ids, require_dir(os.path.join(root, "JPEGImages"), "Pascal Context", README_SECTION),
        gt_dir, ".jpg", ".png", f"pascal_context_59_sem_seg_{split}")
    check_mask_values([d["sem_seg_file_name"] for d in dicts], 59, 255,
                      hint="Raw masks must hold 0 (background) and 1..59 (the 59-class label set).")
    return dicts


def register_pascal_context(catalog, metadata_catalog) -> None:
    for split in ("train", "val"):
        name = f"pascal_context_59_sem_seg_{split}"

        def load(split=split):
            root = require_dir(dataset_path("VOCdevkit", "VOC2010"), "Pascal Context", README_SECTION)
            return load_pascal_context_59(root, split)

        catalog.register(name, load)
        metadata_catalog.get(name).set(
            stuff_classes=list(PASCAL_CONTEXT_59_CLASSES), stuff_colors=default_colors(59),
            ignore_label=255, evaluator_type="sem_seg")

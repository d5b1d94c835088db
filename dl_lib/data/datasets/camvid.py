"""CamVid in the SegNet layout: ``CamVid/{train,val,test}/*.png`` + ``CamVid/{train,val,test}annot/*.png``.

Annotations hold 0..10 for the 11 classes and 11 = void; on first use they are converted once into
``CamVid/{split}annot_trainIds/`` with 11 -> 255 so every later stage sees 255 = ignore.
"""
import os

import numpy as np

from dl_lib.data.datasets.common import (check_mask_values, convert_label_dir, dataset_path,
                                         load_sem_seg, require_dir)

__all__ = ["CAMVID_CLASSES", "CAMVID_COLORS", "load_camvid", "register_camvid"]

CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence",
                  "car", "pedestrian", "bicyclist"]
CAMVID_COLORS = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
                 (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)]
README_SECTION = "CamVid"


def _void_lut() -> np.ndarray:
    lut = np.full(256, 255, dtype=np.uint8)
    lut[:11] = np.arange(11)
    return lut


def load_camvid(root: str, split: str) -> list:
    image_dir = require_dir(os.path.join(root, split), "CamVid", README_SECTION)
    raw = require_dir(os.path.join(root, split + "annot"), "CamVid", README_SECTION)
    # values >= 12 would be an unexpected format; check the raw masks before converting them away
    files = sorted(os.path.join(raw, f) for f in os.listdir(raw) if f.endswith(".png"))
    check_mask_values(files, 12, 255, hint="CamVid (SegNet layout) annotations hold 0..10 and 11 = void; "
                                           "colour-coded annotations must be converted to indices first.")
    gt_dir = convert_label_dir(raw, os.path.join(root, split + "annot_trainIds"), _void_lut(),
                               desc=f"CamVid {split}: void 11->255")
    return load_sem_seg(image_dir, gt_dir, image_ext=".png", gt_ext=".png", name=f"camvid_{split}")


def register_camvid(catalog, metadata_catalog) -> None:
    for split in ("train", "val", "test"):
        name = f"camvid_sem_seg_{split}"

        def load(split=split):
            root = require_dir(dataset_path("CamVid"), "CamVid", README_SECTION)
            return load_camvid(root, split)

        catalog.register(name, load)
        metadata_catalog.get(name).set(stuff_classes=list(CAMVID_CLASSES),
                                       stuff_colors=list(CAMVID_COLORS), ignore_label=255,
                                       evaluator_type="sem_seg")

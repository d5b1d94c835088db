"""ADE20K SceneParsing (ADEChallengeData2016), 150 classes.

Raw annotations hold 0 = "other" and 1..150; on first use they are converted once (see ``common.convert_label_dir``)
into ``annotations_trainIds/`` with 0 -> 255 (ignore) and v -> v - 1, so the masks every later
stage reads hold train ids 0..149.
"""
import os

from dl_lib.data.catalog import LazyValue
from dl_lib.data.datasets.common import (check_mask_values, convert_label_dir, dataset_path,
                                         load_sem_seg, reduce_zero_label_lut, require_dir)

__all__ = ["ADE20K_CLASSES", "load_ade20k", "register_ade20k"]

ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]
assert len(ADE20K_CLASSES) == 150

README_SECTION = "ADE20K"
_SPLITS = {"train": "training", "val": "validation"}


def load_ade20k(root: str, split: str) -> list:
    """Dicts for ``root/images/<training|validation>/*.jpg`` with train-id masks (converted from
    ``root/annotations/...`` on first use into ``root/annotations_trainIds/...``)."""
    sub = _SPLITS[split]
    image_dir = require_dir(os.path.join(root, "images", sub), "ADE20K", README_SECTION)
    raw_dir = require_dir(os.path.join(root, "annotations", sub), "ADE20K", README_SECTION)
    gt_dir = convert_label_dir(raw_dir, os.path.join(root, "annotations_trainIds", sub),
                               reduce_zero_label_lut(), desc=f"ADE20K {sub}: 0->255, shift -1")
    dicts = load_sem_seg(image_dir, gt_dir, image_ext=".jpg", gt_ext=".png", name=f"ade20k_{split}")
    check_mask_values([d["sem_seg_file_name"] for d in dicts], 150, 255,
                      hint="Delete annotations_trainIds/ to reconvert from annotations/.")
    return dicts


def register_ade20k(catalog, metadata_catalog) -> None:
    from dl_lib.data.datasets.common import default_colors

    for split in _SPLITS:
        name = f"ade20k_sem_seg_{split}"

        def load(split=split):
            root = require_dir(dataset_path("ADEChallengeData2016"), "ADE20K", README_SECTION)
            return load_ade20k(root, split)

        catalog.register(name, load)
        metadata_catalog.get(name).set(
            stuff_classes=list(ADE20K_CLASSES), stuff_colors=default_colors(150), ignore_label=255,
            evaluator_type="sem_seg",
            sem_seg_root=LazyValue(lambda s=split: dataset_path(
                "ADEChallengeData2016", "annotations_trainIds", _SPLITS[s])))

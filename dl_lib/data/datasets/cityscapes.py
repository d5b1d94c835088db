"""Cityscapes fine semantic segmentation (and anything written in its layout).

Layout under ``$DL_DATASETS/cityscapes``::

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   (train ids, 255 = ignore)
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png        (read by the evaluator)
"""
import os
from typing import List

from cityscapesscripts.helpers.labels import trainId2label

from dl_lib.data.catalog import LazyValue
from dl_lib.data.datasets.common import check_mask_values, dataset_path, require_dir

__all__ = ["load_cityscapes_semantic", "cityscapes_metadata", "CITYSCAPES_CLASSES",
           "CITYSCAPES_COLORS", "register_cityscapes"]

CITYSCAPES_CLASSES = [trainId2label[i].name for i in range(19)]
CITYSCAPES_COLORS = [tuple(trainId2label[i].color) for i in range(19)]

_IMG_SUFFIX = "_leftImg8bit.png"
_GT_SUFFIX = "_gtFine_labelTrainIds.png"
README_SECTION = "Cityscapes"


def load_cityscapes_semantic(image_dir: str, gt_dir: str, check: bool = True) -> List[dict]:
    """Dicts for every ``image_dir/<city>/*_leftImg8bit.png`` with its trainId mask in ``gt_dir``.

    Raises FileNotFoundError when no image is found or a ``*_gtFine_labelTrainIds.png`` is missing
    (with how to create them), and ValueError when the first masks hold values that are not train
    ids (0..18 or 255), e.g. labelIds such as 26 (car).
    """
    dicts = []
    for city in sorted(os.listdir(image_dir)):
        city_img = os.path.join(image_dir, city)
        if not os.path.isdir(city_img):
            continue
        for f in sorted(os.listdir(city_img)):
            if not f.endswith(_IMG_SUFFIX):
                continue
            stem = f[: -len(_IMG_SUFFIX)]
            gt = os.path.join(gt_dir, city, stem + _GT_SUFFIX)
            if not os.path.isfile(gt):
                raise FileNotFoundError(
                    f"Cityscapes: {gt!r} is missing. The *_gtFine_labelTrainIds.png files are not part "
                    "of the download; create them with cityscapesscripts: "
                    "`CITYSCAPES_DATASET=/path/to/cityscapes csCreateTrainIdLabelImgs`, or "
                    "`python tools/prepare_cityscapes.py` (also checks the tree) "
                    "(pip install cityscapesscripts). See datasets/README.md, section 'Cityscapes'.")
            dicts.append({"file_name": os.path.join(city_img, f), "sem_seg_file_name": gt,
                          "image_id": stem})
    if not dicts:
        raise FileNotFoundError(
            f"Cityscapes: no '<city>/*{_IMG_SUFFIX}' images found under {image_dir!r}.")
    if check:
        check_mask_values(
            [d["sem_seg_file_name"] for d in dicts], 19, 255,
            hint="Cityscapes training masks must hold train ids (0..18, 255 = ignore): this file looks "
                 "like it holds labelIds (0..33) instead of labelTrainIds. Point the loader at "
                 "*_gtFine_labelTrainIds.png created by csCreateTrainIdLabelImgs.")
    return dicts


def cityscapes_metadata(gt_dir: str) -> dict:
    """Metadata shared by Cityscapes-layout datasets; ``gt_dir`` holds the labelIds for evaluation."""
    return dict(stuff_classes=list(CITYSCAPES_CLASSES), stuff_colors=list(CITYSCAPES_COLORS),
                ignore_label=255, evaluator_type="cityscapes_sem_seg", gt_dir=gt_dir)


def register_cityscapes(catalog, metadata_catalog) -> None:
    """Register ``cityscapes_fine_sem_seg_{train,val,test}`` (paths resolved when requested)."""
    for split in ("train", "val", "test"):
        name = f"cityscapes_fine_sem_seg_{split}"

        def load(split=split):
            root = require_dir(dataset_path("cityscapes"), "Cityscapes", README_SECTION)
            image_dir = require_dir(os.path.join(root, "leftImg8bit", split), "Cityscapes", README_SECTION)
            gt_dir = require_dir(os.path.join(root, "gtFine", split), "Cityscapes", README_SECTION)
            # test masks are all-ignore placeholders; the check would pass but is pointless
            return load_cityscapes_semantic(image_dir, gt_dir, check=split != "test")

        catalog.register(name, load)
        gt_dir = LazyValue(lambda split=split: dataset_path("cityscapes", "gtFine", split))
        metadata_catalog.get(name).set(**cityscapes_metadata(gt_dir))

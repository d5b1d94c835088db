"""``register_sem_seg``: a custom dataset of images + label masks in one line."""
import os
from typing import Optional, Sequence

from dl_lib.data.catalog import DatasetCatalog, MetadataCatalog
from dl_lib.data.datasets.common import check_mask_values, default_colors, load_sem_seg

__all__ = ["register_sem_seg"]


def register_sem_seg(name: str, image_root: str, gt_root: str, classes: Sequence[str],
                     ignore_label: int = 255, image_ext: str = ".jpg", gt_ext: str = ".png",
                     colors: Optional[Sequence[Sequence[int]]] = None,
                     evaluator_type: str = "sem_seg", check_labels: bool = True) -> None:
    """Register ``name`` as the images under ``image_root`` paired with the masks under ``gt_root``
    by relative path stem (``a/b/x.jpg`` <-> ``a/b/x.png``).

    Masks are single-channel PNGs (mode L, or P read as palette indices) holding class indices
    ``0..len(classes)-1`` and ``ignore_label``. Nothing is read until ``DatasetCatalog.get(name)``;
    then a missing folder, an image without mask, or a mask value outside the classes (checked on
    the first few masks; ``check_labels=False`` skips that) is an error naming the file. The
    training mapper checks every mask it reads as well, and ``DATASETS.CHECK_LABELS all`` reads
    all of them before training (``dl_lib.data.datasets.common.check_all_masks``); the config's
    ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` / ``IGNORE_VALUE`` must match ``classes`` / ``ignore_label``.
    """
    classes = list(classes)
    if not classes:
        raise ValueError(f"register_sem_seg({name!r}): `classes` is empty")
    image_root, gt_root = os.path.abspath(image_root), os.path.abspath(gt_root)

    def load():
        dicts = load_sem_seg(image_root, gt_root, image_ext=image_ext, gt_ext=gt_ext, name=name)
        if check_labels:
            check_mask_values(
                [d["sem_seg_file_name"] for d in dicts], len(classes), ignore_label,
                hint=f"Dataset {name!r} was registered with {len(classes)} classes and ignore_label "
                     f"{ignore_label}; fix `classes`/`ignore_label` or convert the masks to class indices.")
        return dicts

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        stuff_classes=classes,
        stuff_colors=[tuple(c) for c in colors] if colors is not None else default_colors(len(classes)),
        ignore_label=ignore_label, evaluator_type=evaluator_type,
        image_root=image_root, sem_seg_root=gt_root)

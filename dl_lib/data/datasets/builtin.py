"""Register every built-in dataset name (done once, on ``import dl_lib.data``).

Registration reads nothing from disk: each loader resolves its root under ``$DL_DATASETS`` and
reads files only when ``DatasetCatalog.get(name)`` is called.
"""
import os

from dl_lib.data.catalog import DatasetCatalog, MetadataCatalog
from dl_lib.data.datasets.ade20k import register_ade20k
from dl_lib.data.datasets.camvid import register_camvid
from dl_lib.data.datasets.cityscapes import register_cityscapes
from dl_lib.data.datasets.pascal_context import register_pascal_context
from dl_lib.data.datasets.voc import register_voc

__all__ = ["register_all_builtin"]

_REGISTERED = False


def register_synthetic(catalog, metadata_catalog) -> None:
    # imported lazily so that `python -m dl_lib.data.datasets.synthetic` runs a fresh module
    from dl_lib.data.catalog import LazyValue
    from dl_lib.data.datasets.cityscapes import cityscapes_metadata, load_cityscapes_semantic

    for split in ("train", "val"):
        name = f"synthetic_cityscapes_{split}"

        def load(split=split):
            from dl_lib.data.datasets.synthetic import ensure_synthetic_cityscapes

            root = ensure_synthetic_cityscapes()
            return load_cityscapes_semantic(os.path.join(root, "leftImg8bit", split),
                                            os.path.join(root, "gtFine", split))

        def gt_dir(split=split):
            # the evaluator reads labelIds from here, so make sure they exist
            from dl_lib.data.datasets.synthetic import ensure_synthetic_cityscapes

            return os.path.join(ensure_synthetic_cityscapes(progress=False), "gtFine", split)

        catalog.register(name, load)
        metadata_catalog.get(name).set(**cityscapes_metadata(LazyValue(gt_dir)))


def register_all_builtin() -> None:
    """Idempotent: registers cityscapes_fine_sem_seg_*, ade20k_sem_seg_*, voc_2012_sem_seg_*,
    pascal_context_59_sem_seg_*, camvid_sem_seg_* and synthetic_cityscapes_*."""
    global _REGISTERED
    if _REGISTERED:
        return
    for register in (register_cityscapes, register_ade20k, register_voc, register_pascal_context,
                     register_camvid, register_synthetic):
        register(DatasetCatalog, MetadataCatalog)
    _REGISTERED = True


register_all_builtin()

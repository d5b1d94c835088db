"""Datasets, mapping/augmentation, samplers and loaders for semantic segmentation.

Importing this package registers the built-in dataset names (nothing is read from disk until a
dataset is requested)."""
from dl_lib.data import transforms  # noqa: F401
from dl_lib.data.batch import pad_and_stack, pad_labels
from dl_lib.data.build import (build_test_loader, build_train_loader, get_dataset_dicts,
                               trivial_batch_collator, worker_init_reset_seed)
from dl_lib.data.catalog import DatasetCatalog, Metadata, MetadataCatalog
from dl_lib.data.common import DatasetFromList, MapDataset
from dl_lib.data.datasets import (ensure_synthetic_cityscapes, generate_synthetic_cityscapes,
                                  register_sem_seg)
from dl_lib.data.mapper import SemSegDatasetMapper, build_augmentations, read_image
from dl_lib.data.samplers import InferenceSampler, TrainingSampler

__all__ = [
    "DatasetCatalog", "MetadataCatalog", "Metadata", "register_sem_seg", "build_train_loader",
    "build_test_loader", "get_dataset_dicts", "SemSegDatasetMapper", "build_augmentations",
    "read_image", "TrainingSampler", "InferenceSampler", "DatasetFromList", "MapDataset",
    "trivial_batch_collator", "worker_init_reset_seed", "pad_and_stack", "pad_labels",
    "ensure_synthetic_cityscapes", "generate_synthetic_cityscapes", "transforms",
]

"""Shared test helpers: one-hot logits and registering tiny datasets."""
import numpy as np
import torch

from dl_lib.data.catalog import DatasetCatalog, MetadataCatalog


def logits_from_labels(pred: np.ndarray, num_classes: int) -> torch.Tensor:
    """K x H x W logits whose argmax is ``pred``."""
    t = torch.as_tensor(pred, dtype=torch.int64)
    return torch.nn.functional.one_hot(t, num_classes).permute(2, 0, 1).float()


def register(name: str, dicts, **meta):
    """(Re-)register ``name`` with ``dicts`` and metadata ``meta``."""
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
    if name in MetadataCatalog:
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: list(dicts))
    MetadataCatalog.get(name).set(**meta)

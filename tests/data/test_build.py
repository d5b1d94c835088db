import pickle

import numpy as np
import pytest
import torch

from dl_lib.config.defaults import get_default_cfg
from dl_lib.data import (DatasetFromList, MapDataset, build_test_loader, build_train_loader,
                         pad_and_stack, pad_labels, register_sem_seg)
from dl_lib.utils import comm


@pytest.fixture
def tiny_dataset(tmp_path, write_png, unique_name):
    for i in range(5):
        write_png(tmp_path / "img" / f"{i}.png", np.full((20 + i, 30, 3), i * 20, np.uint8))
        write_png(tmp_path / "gt" / f"{i}.png", np.full((20 + i, 30), i % 3, np.uint8))
    register_sem_seg(unique_name, str(tmp_path / "img"), str(tmp_path / "gt"), ["a", "b", "c"], image_ext=".png")
    return unique_name


def _cfg(name, workers, batch=4):
    cfg = get_default_cfg()
    cfg.DATASETS.TRAIN = (name, name)  # concatenation of several datasets
    cfg.INPUT.MIN_SIZE_TRAIN = [16]
    cfg.INPUT.MAX_SIZE_TRAIN = 100
    cfg.INPUT.CROP_PAD.SIZE = [16, 16]
    cfg.INPUT.MIN_SIZE_TEST = 0
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.SEED = 1
    return cfg


@pytest.mark.parametrize("workers", [0, 2])
def test_train_loader_batches(tiny_dataset, workers):
    loader = build_train_loader(_cfg(tiny_dataset, workers))
    assert len(loader.dataset) == 10
    it = iter(loader)
    for _ in range(4):  # more than one pass over 10 images
        batch = next(it)
        assert isinstance(batch, list) and len(batch) == 4
        assert all(b["image"].shape == (3, 16, 16) and b["sem_seg"].shape == (16, 16) for b in batch)
    del it


def test_batch_must_divide_world(tiny_dataset, monkeypatch):
    monkeypatch.setattr(comm, "get_world_size", lambda: 3)
    with pytest.raises(ValueError, match="IMS_PER_BATCH \\(4\\) must be divisible"):
        build_train_loader(_cfg(tiny_dataset, 0))


def test_test_loader(tiny_dataset):
    loader = build_test_loader(_cfg(tiny_dataset, 0), tiny_dataset)
    batches = list(loader)
    assert len(batches) == 5 and all(len(b) == 1 for b in batches)
    assert [b[0]["image"].shape[1] for b in batches] == [20, 21, 22, 23, 24]
    assert [b[0]["height"] for b in batches] == [20, 21, 22, 23, 24]


def test_dataset_from_list_serialized():
    items = [{"file_name": f"{i}", "x": list(range(i))} for i in range(50)]
    ds = DatasetFromList(items)
    assert len(ds) == 50 and ds[0] == items[0] and ds[49] == items[49]
    assert isinstance(ds._buf, np.ndarray) and ds._buf.dtype == np.uint8
    assert pickle.loads(pickle.dumps(ds))[7] == items[7]
    ds[3]["x"].append(99)
    assert ds[3] == items[3]  # each access is a fresh copy


def test_map_dataset_retries_none():
    ds = MapDataset(DatasetFromList(list(range(6))), lambda x: None if x % 2 else x * 10)
    assert [ds[i] % 20 for i in range(6)] == [0] * 6
    with pytest.raises(RuntimeError, match="returned None for every item"):
        MapDataset(DatasetFromList([1, 3]), lambda x: None)[0]


def test_pad_and_stack():
    a, b = torch.ones(3, 5, 7), torch.full((3, 9, 4), 2.0)
    batch, sizes = pad_and_stack([a, b], size_divisibility=8, pad_value=-1)
    assert batch.shape == (2, 3, 16, 8) and sizes == [(5, 7), (9, 4)]
    assert (batch[0, :, :5, :7] == 1).all() and (batch[0, :, 5:] == -1).all() and (batch[1, :, :, 4:] == -1).all()
    batch, _ = pad_and_stack([a, b])
    assert batch.shape == (2, 3, 9, 7)
    labels = pad_labels([torch.zeros(5, 7, dtype=torch.uint8), torch.ones(9, 4, dtype=torch.long)], 8, 255)
    assert labels.shape == (2, 16, 8) and labels.dtype == torch.long
    assert labels[0, 6, 0] == 255 and labels[1, 0, 5] == 255 and labels[1, 0, 0] == 1


def test_worker_init_reset_seed():
    import random

    from dl_lib.data import worker_init_reset_seed

    torch.manual_seed(5)
    worker_init_reset_seed(0)
    assert np.random.rand() == np.random.RandomState(5).rand()
    assert random.random() == random.Random(5).random()

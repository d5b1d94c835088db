"""TEST.IMS_PER_BATCH: the test loader yields lists of that many mapped dicts per process (last
batch smaller), sharded without duplicates; a model pads a batch of different-size images."""
import numpy as np
import pytest
import torch
from torch import nn

from dl_lib.config.defaults import get_default_cfg
from dl_lib.data import build_test_loader, register_sem_seg
from dl_lib.modeling import SemanticSegmentor
from dl_lib.utils import comm

SIZES = [(20, 30), (23, 17), (9, 26), (31, 31), (12, 14)]


@pytest.fixture
def sized_dataset(tmp_path, write_png, unique_name):
    rng = np.random.RandomState(0)
    for i, (h, w) in enumerate(SIZES):
        write_png(tmp_path / "img" / f"{i}.png", rng.randint(0, 256, (h, w, 3)).astype(np.uint8))
        write_png(tmp_path / "gt" / f"{i}.png", np.full((h, w), i % 3, np.uint8))
    register_sem_seg(unique_name, str(tmp_path / "img"), str(tmp_path / "gt"), ["a", "b", "c"],
                     image_ext=".png")
    return unique_name


def _cfg(batch):
    cfg = get_default_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 0  # keep each image's own size
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.TEST.IMS_PER_BATCH = batch
    return cfg


def test_batches_of_ims_per_batch_last_smaller(sized_dataset):
    batches = list(build_test_loader(_cfg(2), sized_dataset))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [tuple(d["image"].shape[1:]) for b in batches for d in b] == SIZES


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_without_duplicates(sized_dataset, monkeypatch, world):
    monkeypatch.setattr(comm, "get_world_size", lambda: world)
    seen = []
    for rank in range(world):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        batches = list(build_test_loader(_cfg(2), sized_dataset))
        assert all(1 <= len(b) <= 2 for b in batches)
        seen += [d["image_id"] for b in batches for d in b]
    assert sorted(seen) == sorted(str(i) for i in range(len(SIZES)))


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_batch_size_names_the_key(sized_dataset, bad):
    with pytest.raises(ValueError, match="TEST.IMS_PER_BATCH"):
        build_test_loader(_cfg(bad), sized_dataset)


class _Features(nn.Module):
    size_divisibility = 4  # padding happens in the batch and for a single image alike

    def forward(self, x):
        return {"x": x}


class _PointwiseHead(nn.Module):
    output_stride = 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, f):
        return self.conv(f["x"])


def test_batch_of_different_sizes_equals_one_at_a_time(sized_dataset):
    torch.manual_seed(0)
    model = SemanticSegmentor(backbone=_Features(), head=_PointwiseHead(),
                              pixel_mean=[120.0, 110.0, 100.0], pixel_std=[60.0, 60.0, 60.0]).eval()
    with torch.no_grad():
        batches = list(build_test_loader(_cfg(3), sized_dataset))
        assert [len(b) for b in batches] == [3, 2]
        batched = [o for b in batches for o in model(b)]
        single = [o for b in build_test_loader(_cfg(1), sized_dataset) for o in model(b)]
    assert len(batched) == len(single) == len(SIZES)
    for (h, w), a, b in zip(SIZES, batched, single):
        assert a["sem_seg"].shape == (3, h, w)
        torch.testing.assert_close(a["sem_seg"], b["sem_seg"])

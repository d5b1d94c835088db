"""Data loaders for training (infinite, sharded, batched per process) and testing."""
import logging
import random
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.utils.data as torchdata

from dl_lib.data.catalog import DatasetCatalog
from dl_lib.data.common import DatasetFromList, MapDataset
from dl_lib.data.datasets.common import check_all_masks
from dl_lib.data.mapper import SemSegDatasetMapper
from dl_lib.data.samplers import InferenceSampler, SeededDataset, TrainingSampler
from dl_lib.utils import comm

__all__ = ["build_train_loader", "build_test_loader", "get_dataset_dicts", "trivial_batch_collator",
           "worker_init_reset_seed", "seek_train_loader"]

logger = logging.getLogger(__name__)


def trivial_batch_collator(batch: List[dict]) -> List[dict]:
    """Keep the batch as a list of dicts (the model pads and stacks them itself)."""
    return batch


def worker_init_reset_seed(worker_id: int) -> None:
    """Seed numpy, random and torch in a worker from torch's per-worker initial seed (which the
    DataLoader derives from its base seed and the worker id), so forked workers do not all
    replay the parent's numpy random state."""
    seed = torch.initial_seed() % 2 ** 31
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)


def get_dataset_dicts(names: Union[str, Sequence[str]]) -> List[dict]:
    """Concatenated dicts of the named datasets; an empty dataset is an error naming it."""
    if isinstance(names, str):
        names = [names]
    if len(names) == 0:
        raise ValueError("No dataset given (DATASETS.TRAIN / DATASETS.TEST is empty)")
    dicts = []
    for name in names:
        d = DatasetCatalog.get(name)
        if len(d) == 0:
            raise ValueError(f"Dataset {name!r} is empty")
        dicts.extend(d)
    return dicts


def _per_process_batch(cfg) -> int:
    world = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world != 0:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({total}) must be divisible by the number of processes "
                         f"({world}); each process takes IMS_PER_BATCH // world_size images.")
    if total < world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({total}) is smaller than the number of processes ({world}).")
    return total // world


def build_train_loader(cfg, mapper: Optional[Callable] = None, seed: Optional[int] = None):
    """An infinite iterable over lists of ``SOLVER.IMS_PER_BATCH // world_size`` mapped dicts
    from the concatenation of ``cfg.DATASETS.TRAIN``, with ``DATALOADER.NUM_WORKERS`` workers.

    ``mapper`` defaults to ``SemSegDatasetMapper(cfg, is_train=True)``; ``seed`` to
    ``cfg.SEED`` when >= 0, else a seed shared by all processes.

    Reproducible and resumable: the order comes from a :class:`TrainingSampler` and each item
    is mapped under a seed of its stream position (:class:`SeededDataset`), so a given
    ``(seed, iteration)`` always gives the same augmented batch, whatever ``NUM_WORKERS``;
    :func:`seek_train_loader` makes a fresh loader continue at a given iteration.
    """
    dicts = get_dataset_dicts(cfg.DATASETS.TRAIN)
    if cfg.DATASETS.CHECK_LABELS == "all":  # every mask once, before the first iteration
        check_all_masks([d["sem_seg_file_name"] for d in dicts if d.get("sem_seg_file_name")],
                        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
    dataset = SeededDataset(MapDataset(DatasetFromList(dicts, copy=False),
                                       mapper if mapper is not None else SemSegDatasetMapper(cfg, True)))
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN!r} is unknown; "
                         "available: 'TrainingSampler'")
    if seed is None and cfg.SEED >= 0:
        seed = cfg.SEED
    sampler = TrainingSampler(len(dataset), shuffle=True, seed=seed, item_seeds=True)
    batch = _per_process_batch(cfg)
    logger.info("Train loader: %d images from %s, %d per process per iteration",
                len(dicts), list(cfg.DATASETS.TRAIN), batch)
    # Its own generator: iter() draws the workers' base seed from it instead of from torch's
    # global RNG, which would shift the model's random numbers (dropout) after a resume.
    generator = torch.Generator()
    generator.manual_seed(sampler.seed)
    return torchdata.DataLoader(
        dataset, batch_size=batch, sampler=sampler, drop_last=True,
        num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=trivial_batch_collator,
        worker_init_fn=worker_init_reset_seed, generator=generator,
        persistent_workers=cfg.DATALOADER.NUM_WORKERS > 0)


def seek_train_loader(loader, iteration: int) -> bool:
    """Make the next ``iter(loader)`` start at the batch of ``iteration`` (call before training
    iterates it, e.g. after a resume): its sampler skips ``iteration`` batches of every process.

    ``loader``: a ``DataLoader`` over a :class:`TrainingSampler` with a fixed batch size (what
    :func:`build_train_loader` returns). Returns False, changing nothing, for any other loader
    (e.g. a playground's own), whose order then restarts from its beginning.
    """
    sampler = getattr(loader, "sampler", None)
    batch = getattr(loader, "batch_size", None)
    if not isinstance(sampler, TrainingSampler) or not batch:
        return False
    sampler.set_start(int(iteration) * batch * sampler.world_size)
    return True


def _test_batch_size(cfg) -> int:
    batch = cfg.TEST.IMS_PER_BATCH
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"TEST.IMS_PER_BATCH must be an integer >= 1 (images per process per "
                         f"test batch), got {batch!r}")
    return batch


def build_test_loader(cfg, dataset_name: str, mapper: Optional[Callable] = None):
    """A loader over ``dataset_name`` yielding lists of ``TEST.IMS_PER_BATCH`` mapped dicts (per
    process; the last batch may be smaller), this process's contiguous shard only
    (:class:`InferenceSampler`: no image twice); ``mapper`` defaults to the test-time mapper.
    Images of one batch may differ in size: the model pads them (``SemanticSegmentor`` does).
    With ``TEST.AUG.ENABLED`` the default mapper keeps the original size: the multi-scale
    wrapper resizes from it to each scale (one interpolation instead of two)."""
    dicts = get_dataset_dicts(dataset_name)
    if mapper is None:
        mapper = (SemSegDatasetMapper(cfg, False, augmentations=[]) if cfg.TEST.AUG.ENABLED
                  else SemSegDatasetMapper(cfg, False))
    dataset = MapDataset(DatasetFromList(dicts, copy=False), mapper)
    sampler = InferenceSampler(len(dataset))
    return torchdata.DataLoader(
        dataset, batch_size=_test_batch_size(cfg), sampler=sampler, drop_last=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=trivial_batch_collator,
        worker_init_fn=worker_init_reset_seed)

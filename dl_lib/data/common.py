"""Dataset wrappers: a compact list dataset and a mapped dataset that retries failed items."""
import logging
import pickle
import random
from typing import Callable, List

import numpy as np
import torch.utils.data as data

__all__ = ["DatasetFromList", "MapDataset"]

logger = logging.getLogger(__name__)


class DatasetFromList(data.Dataset):
    """A list of dicts as a Dataset.

    With ``serialize=True`` the items are pickled into one numpy byte buffer plus an offsets
    array. Data-loader workers fork the parent; touching Python objects updates their reference
    counts, which copies the memory pages (copy-on-read) and makes each worker's RAM grow to a
    full copy of the list. A flat numpy buffer has no per-item refcounts, so pages stay shared.
    """

    def __init__(self, items: List, copy: bool = True, serialize: bool = True):
        self._copy, self._serialize = copy, serialize
        if serialize:
            blobs = [np.frombuffer(pickle.dumps(x, protocol=-1), dtype=np.uint8) for x in items]
            self._addr = np.cumsum(np.asarray([len(b) for b in blobs], dtype=np.int64))
            self._buf = np.concatenate(blobs) if blobs else np.zeros(0, np.uint8)
            logger.info("Serialized %d items to %.2f MiB", len(items), self._buf.nbytes / 2 ** 20)
        else:
            self._items = list(items)

    def __len__(self) -> int:
        return len(self._addr) if self._serialize else len(self._items)

    def __getitem__(self, idx: int):
        if self._serialize:
            start = 0 if idx == 0 else int(self._addr[idx - 1])
            return pickle.loads(memoryview(self._buf[start:int(self._addr[idx])]))
        if self._copy:
            import copy

            return copy.deepcopy(self._items[idx])
        return self._items[idx]


class MapDataset(data.Dataset):
    """``map_func(dataset[i])``; when the function returns None (an item it cannot use, e.g. a
    crop without labels) another random index is tried instead, with a warning after 3 misses."""

    def __init__(self, dataset, map_func: Callable):
        self._dataset, self._map_func = dataset, map_func
        self._rng = random.Random(42)
        self._fallback = set(range(len(dataset)))

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, idx: int):
        cur, retries = int(idx), 0
        while True:
            out = self._map_func(self._dataset[cur])
            if out is not None:
                self._fallback.add(cur)
                return out
            retries += 1
            self._fallback.discard(cur)
            if not self._fallback:
                raise RuntimeError("MapDataset: the mapper returned None for every item")
            cur = self._rng.choice(sorted(self._fallback))
            if retries >= 3:
                logger.warning("Failed to map item %d, %d retries so far", idx, retries)

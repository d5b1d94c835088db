"""Index samplers for training (infinite, sharded) and inference (contiguous, no duplicates)."""
import itertools
from typing import Iterator, Optional

import torch
from torch.utils.data.sampler import Sampler

from dl_lib.utils import comm

__all__ = ["TrainingSampler", "InferenceSampler"]


class TrainingSampler(Sampler):
    """An infinite stream of indices of a dataset of ``size`` items.

    All processes draw the same sequence of permutations (same seed) and process ``rank`` takes
    items ``rank, rank + world, ...`` of it, so together they cover each permutation once per
    epoch-equivalent. ``seed=None`` uses ``comm.shared_random_seed()`` (identical on all ranks).
    Compared with ``DistributedSampler`` there are no epochs to set and nothing is padded.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None,
                 rank: Optional[int] = None, world_size: Optional[int] = None):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"TrainingSampler(size={size!r}): the dataset must be non-empty")
        self._size, self._shuffle = size, shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank = comm.get_rank() if rank is None else rank
        self._world_size = comm.get_world_size() if world_size is None else world_size

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=g).tolist()
            else:
                yield from range(self._size)


class InferenceSampler(Sampler):
    """Indices ``0..size-1`` split into contiguous shards, one per process, of sizes differing by
    at most one; every index appears on exactly one process (nothing padded or repeated, so
    evaluation never counts an image twice)."""

    def __init__(self, size: int, rank: Optional[int] = None, world_size: Optional[int] = None):
        if size < 0:
            raise ValueError(f"InferenceSampler(size={size})")
        self._size = size
        rank = comm.get_rank() if rank is None else rank
        world = comm.get_world_size() if world_size is None else world_size
        per, extra = divmod(size, world)
        begin = rank * per + min(rank, extra)
        end = begin + per + (1 if rank < extra else 0)
        self._local_indices = range(begin, end)

    def __iter__(self) -> Iterator[int]:
        yield from self._local_indices

    def __len__(self) -> int:
        return len(self._local_indices)

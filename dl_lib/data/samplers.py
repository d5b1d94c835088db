"""Index samplers for training (infinite, sharded, resumable) and inference (contiguous, no
duplicates), and the dataset wrapper that maps each training item under its own seed."""
import itertools
from typing import Iterator, Optional

import torch
from torch.utils import data
from torch.utils.data.sampler import Sampler

from dl_lib.utils import comm
from dl_lib.utils.rng import derive_seed, forked_rngs

__all__ = ["TrainingSampler", "SeededDataset", "InferenceSampler"]


class TrainingSampler(Sampler):
    """An infinite stream of indices of a dataset of ``size`` items.

    All processes draw the same sequence of permutations (same seed) and process ``rank`` takes
    items ``rank, rank + world, ...`` of it, so together they cover each permutation once per
    epoch-equivalent. ``seed=None`` uses ``comm.shared_random_seed()`` (identical on all ranks).
    Compared with ``DistributedSampler`` there are no epochs to set and nothing is padded.

    Resuming: ``start`` (or :meth:`set_start` before the next ``iter()``) is the position in the
    shared stream where iteration begins, e.g. ``iteration * IMS_PER_BATCH`` after a resume, so
    the data order continues where it stopped instead of restarting.

    ``item_seeds=True`` yields ``(index, seed)`` pairs, ``seed`` derived from the sampler's seed
    and the stream position; :class:`SeededDataset` maps each item under its own seed, so its
    augmentation does not depend on the number of workers, the rank or a resume.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None,
                 rank: Optional[int] = None, world_size: Optional[int] = None, *,
                 start: int = 0, item_seeds: bool = False):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"TrainingSampler(size={size!r}): the dataset must be non-empty")
        self._size, self._shuffle = size, shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank = comm.get_rank() if rank is None else rank
        self._world_size = comm.get_world_size() if world_size is None else world_size
        self._item_seeds = bool(item_seeds)
        self.set_start(start)

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def seed(self) -> int:
        return self._seed

    def set_start(self, start: int) -> None:
        """Begin the next ``iter()`` at position ``start`` of the stream shared by all ranks."""
        if not isinstance(start, int) or start < 0:
            raise ValueError(f"TrainingSampler.set_start({start!r}): a position >= 0")
        self._start = start

    def __iter__(self) -> Iterator:
        positions = itertools.count(self._start)
        stream = zip(positions, self._infinite_indices(self._start))
        mine = itertools.islice(stream, self._rank, None, self._world_size)
        if self._item_seeds:
            return ((index, derive_seed(self._seed, pos)) for pos, index in mine)
        return (index for _, index in mine)

    def _infinite_indices(self, start: int = 0) -> Iterator[int]:
        """The shared stream from position ``start``: whole epochs before it are drawn (to
        advance the generator) but not listed."""
        g = torch.Generator()
        g.manual_seed(self._seed)
        skipped_epochs, offset = divmod(start, self._size)
        if self._shuffle:
            for _ in range(skipped_epochs):
                torch.randperm(self._size, generator=g)
        first = True
        while True:
            epoch = torch.randperm(self._size, generator=g).tolist() if self._shuffle \
                else list(range(self._size))
            yield from (epoch[offset:] if first else epoch)
            first = False


class SeededDataset(data.Dataset):
    """``dataset[index]`` computed under its own seed: items ``(index, seed)`` (from
    ``TrainingSampler(item_seeds=True)``) run inside :func:`dl_lib.utils.rng.forked_rngs`, so
    the random augmentation of a stream position is the same in every run; a plain index is
    passed through unseeded."""

    def __init__(self, dataset):
        self._dataset = dataset

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, item):
        if isinstance(item, tuple):
            index, seed = item
            with forked_rngs(seed):
                return self._dataset[index]
        return self._dataset[item]


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

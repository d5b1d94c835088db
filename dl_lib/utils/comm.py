"""Process-group helpers: ranks, barriers and gathers of picklable objects.

Object gathers run on a cached Gloo group so evaluation state (confusion matrices, per-image
costs) never takes GPU memory, and work the same under NCCL and Gloo.
"""
import functools

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "get_world_size", "get_rank", "get_local_rank", "get_local_size", "is_main_process",
    "synchronize", "all_gather", "gather", "shared_random_seed", "reduce_dict",
    "create_local_process_group",
]

_LOCAL_PROCESS_GROUP = None


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if _initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if _initialized() else 0


def create_local_process_group(num_workers_per_machine: int) -> None:
    """Create the group of processes on this machine (every rank must call this)."""
    global _LOCAL_PROCESS_GROUP
    assert _LOCAL_PROCESS_GROUP is None, "the local process group already exists"
    world = get_world_size()
    assert world % num_workers_per_machine == 0, (world, num_workers_per_machine)
    machine = get_rank() // num_workers_per_machine
    for i in range(world // num_workers_per_machine):
        ranks = list(range(i * num_workers_per_machine, (i + 1) * num_workers_per_machine))
        group = dist.new_group(ranks)
        if i == machine:
            _LOCAL_PROCESS_GROUP = group


def get_local_rank() -> int:
    """Rank of this process on its machine."""
    if not _initialized():
        return 0
    if _LOCAL_PROCESS_GROUP is None:
        return get_rank()
    return dist.get_rank(group=_LOCAL_PROCESS_GROUP)


def get_local_size() -> int:
    """Number of processes on this machine."""
    if not _initialized():
        return 1
    if _LOCAL_PROCESS_GROUP is None:
        return get_world_size()
    return dist.get_world_size(group=_LOCAL_PROCESS_GROUP)


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier over all processes (a no-op when not distributed)."""
    if get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL:
        # device_ids avoids NCCL guessing the device of this rank.
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@functools.lru_cache()
def _gloo_group():
    """A Gloo group over all ranks, for object gathers (the default group may be NCCL)."""
    if dist.get_backend() == "nccl":
        return dist.new_group(backend="gloo")
    return dist.group.WORLD


def all_gather(data, group=None) -> list:
    """Gather a picklable object from every rank; every rank gets the list."""
    if get_world_size() == 1:
        return [data]
    group = group or _gloo_group()
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, data, group=group)
    return out


def gather(data, dst: int = 0, group=None) -> list:
    """Gather a picklable object on rank ``dst`` (others get an empty list)."""
    if get_world_size() == 1:
        return [data]
    group = group or _gloo_group()
    if dist.get_rank(group) == dst:
        out = [None] * dist.get_world_size(group)
        dist.gather_object(data, out, dst=dst, group=group)
        return out
    dist.gather_object(data, None, dst=dst, group=group)
    return []


def shared_random_seed() -> int:
    """A random int32 that is the same on every rank (rank 0's draw)."""
    seed = np.random.randint(2 ** 31)
    return all_gather(seed)[0]


def reduce_dict(input_dict: dict, average: bool = True) -> dict:
    """Reduce a dict of scalar tensors to rank 0 (sum, or mean with ``average``)."""
    world = get_world_size()
    if world < 2:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict.keys())
        values = torch.stack([input_dict[k] for k in names], dim=0)
        dist.reduce(values, dst=0)
        if dist.get_rank() == 0 and average:
            values /= world
        return dict(zip(names, values))

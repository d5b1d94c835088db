import itertools
import json
import os
import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from dl_lib.data.samplers import InferenceSampler, TrainingSampler
from dl_lib.engine.launch import _exit_spawned_worker


def test_inference_shards_single_process_math():
    for size in (0, 1, 7, 10):
        for world in (1, 2, 3, 4):
            shards = [list(InferenceSampler(size, rank=r, world_size=world)) for r in range(world)]
            flat = [i for s in shards for i in s]
            assert flat == list(range(size))  # contiguous, disjoint, complete
            assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_training_sampler_interleaves_a_shared_permutation():
    full = list(itertools.islice(iter(TrainingSampler(5, seed=3, rank=0, world_size=1)), 20))
    assert sorted(full[:5]) == list(range(5)) and sorted(full[5:10]) == list(range(5))
    shards = [list(itertools.islice(iter(TrainingSampler(5, seed=3, rank=r, world_size=2)), 10)) for r in (0, 1)]
    assert shards[0] == full[0::2] and shards[1] == full[1::2]
    assert list(itertools.islice(iter(TrainingSampler(5, shuffle=False, seed=0, rank=0, world_size=1)), 6)) == [0, 1, 2, 3, 4, 0]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        inf = list(InferenceSampler(11))
        train = list(itertools.islice(iter(TrainingSampler(7)), 14))  # seed shared via comm
        with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
            json.dump({"inference": inf, "train": train}, f)
        dist.barrier()  # leave together: destroying a Gloo group under a live peer aborts it
    finally:
        dist.destroy_process_group()
    # As dl_lib's launcher does: skip interpreter finalisation, which now and then aborts a Gloo
    # worker whose work is done (see dl_lib.engine.launch._exit_spawned_worker).
    _exit_spawned_worker()


def test_samplers_across_two_gloo_processes(tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    r = [json.load(open(tmp_path / f"{i}.json")) for i in range(2)]
    a, b = r[0]["inference"], r[1]["inference"]
    assert not set(a) & set(b) and sorted(a + b) == list(range(11)) and (len(a), len(b)) == (6, 5)
    # interleaving the two shards gives whole permutations of 0..6 (same seed on both ranks)
    merged = [x for pair in zip(r[0]["train"], r[1]["train"]) for x in pair]
    for k in range(0, 28, 7):
        assert sorted(merged[k:k + 7]) == list(range(7))

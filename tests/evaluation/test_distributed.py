"""Confusion matrices gathered over 2 Gloo processes equal the single-process matrix."""
import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dl_lib.engine.launch import _exit_spawned_worker
from dl_lib.evaluation import SemSegEvaluator

from .helpers import logits_from_labels, register

NAME = "test_semseg_dist"
K = 4


def make_data(n=5, seed=0):
    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        gt = rng.randint(0, K, size=(6, 7))
        gt[rng.rand(6, 7) < 0.2] = 255
        pred = np.where(rng.rand(6, 7) < 0.7, np.where(gt == 255, 0, gt), rng.randint(0, K, (6, 7)))
        out.append((pred, gt, float(i)))
    return out


def shard(n, rank, world):
    """Contiguous shards of sizes differing by at most one, no padding (like InferenceSampler)."""
    size, left = divmod(n, world)
    sizes = [size + (r < left) for r in range(world)]
    start = sum(sizes[:rank])
    return range(start, start + sizes[rank])


def evaluate(indices, data, output_dir):
    ev = SemSegEvaluator(NAME, distributed=True, output_dir=output_dir)
    ev.reset()
    for i in indices:
        pred, gt, flops = data[i]
        ev.process([{"sem_seg": torch.as_tensor(gt)}],
                   [{"sem_seg": logits_from_labels(pred, K), "flops": flops}])
    return ev.evaluate()


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        register(NAME, [], stuff_classes=[str(i) for i in range(K)], ignore_label=255)
        data = make_data()
        res = evaluate(shard(len(data), rank, world), data, out_dir)
        assert (res is None) == (rank != 0)
        dist.barrier()  # leave together: destroying a Gloo group under a live peer aborts it
    finally:
        dist.destroy_process_group()
    # As dl_lib's launcher does: skip interpreter finalisation, which now and then aborts a Gloo
    # worker whose work is done (see dl_lib.engine.launch._exit_spawned_worker).
    _exit_spawned_worker()


def test_two_process_gather_equals_single(tmp_path):
    register(NAME, [], stuff_classes=[str(i) for i in range(K)], ignore_label=255)
    data = make_data()
    single = evaluate(range(len(data)), data, str(tmp_path / "single"))["sem_seg"]

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "dist")), nprocs=2,
             join=True)
    a = json.loads((tmp_path / "single" / "sem_seg_evaluation.json").read_text())
    b = json.loads((tmp_path / "dist" / "sem_seg_evaluation.json").read_text())
    assert b["num_images"] == len(data)
    assert a["confusion_matrix"] == b["confusion_matrix"]
    assert b["sem_seg"]["mIoU"] == pytest.approx(single["mIoU"])
    assert (b["sem_seg"]["mean_flops"], b["sem_seg"]["max_flops"]) == (2.0, 4.0)

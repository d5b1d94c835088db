"""PruningHook in a training loop: the temperature each iteration trains with, the conversion at
END_EPOCH, the metrics in the EventStorage, and masks across 2 Gloo processes under DDP."""
import itertools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dl_lib.engine.launch import _exit_spawned_worker
from dl_lib.engine.train_loop import SimpleTrainer
from dl_lib.modeling.pruning import (attach_channel_masks, channel_masks, soft_topk_mask,
                                     temperature_at)
from dl_lib.modeling.pruning.training import PruningHook


class Toy(nn.Module):
    """conv -> BN -> ReLU -> 1x1 classifier; the training loss is a regression on the scores.
    Records the temperature of its mask at every training forward."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.cls = nn.Conv2d(16, 2, 1)
        self.cls.unprunable = True
        self.seen = []

    def forward(self, batch):
        x = torch.stack([b["image"] for b in batch])
        y = torch.stack([b["target"] for b in batch])
        mask = channel_masks(self)["body.0"]
        self.seen.append(None if mask.is_hard else float(mask.temperature))
        return {"loss": ((self.cls(self.body(x)) - y) ** 2).mean()}


def batches(seed):
    g = torch.Generator().manual_seed(seed)
    fixed = [[{"image": torch.randn(3, 6, 6, generator=g),
               "target": torch.randn(2, 6, 6, generator=g)} for _ in range(2)] for _ in range(3)]
    return itertools.cycle(fixed)


def make_model(seed=0):
    torch.manual_seed(seed)
    model = Toy()
    attach_channel_masks(model, 0.75, min_channels=4)
    return model


def test_schedule_conversion_and_metrics():
    model = make_model()
    trainer = SimpleTrainer(model, batches(1), torch.optim.SGD(model.parameters(), lr=0.1))
    # 2 iterations per epoch, soft until epoch 3 (iteration 6)
    trainer.register_hooks([PruningHook(model, 2, 0, 3, period=1)])
    trainer.train(0, 8)
    t1 = temperature_at(1, 0, 3)
    assert model.seen[:6] == [1.0, 1.0, 1.0, 1.0, pytest.approx(t1), pytest.approx(t1)]
    assert model.seen[6:] == [None, None]
    mask = channel_masks(model)["body.0"]
    assert mask.is_hard and mask.k == 4
    hist = trainer.storage.history("pruning/body.0/temperature").values()
    assert [v for v, _ in hist] == pytest.approx([1.0, 1.0, 1.0, 1.0, t1, t1])
    chosen = trainer.storage.history("pruning/chosen").values()
    assert chosen[-1][0] == pytest.approx(0.25) and chosen[-1][1] == 7  # 4 of 16, hard
    assert trainer.storage.history("pruning/body.0/pruned").latest() == pytest.approx(0.75)
    assert "pruning/temperature" in trainer.storage.histories()


def test_per_iteration_schedule_and_hard_at_end():
    model = make_model()
    trainer = SimpleTrainer(model, batches(2), torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.register_hooks([PruningHook(model, 2, 0, 10, schedule="iteration", period=5)])
    trainer.train(0, 3)
    assert model.seen == pytest.approx([temperature_at(i / 2, 0, 10) for i in range(3)])
    assert channel_masks(model)["body.0"].is_hard  # HARD_AT_END


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = make_model(seed=rank)  # DDP broadcasts rank 0's logits and weights
        # conversion during the run needs find_unused_parameters
        strict_ddp = DistributedDataParallel(model)
        trainer = SimpleTrainer(strict_ddp, batches(10 + rank),
                                torch.optim.SGD(model.parameters(), lr=0.5))
        trainer.register_hooks([PruningHook(strict_ddp, 1, 0, 3)])
        try:
            trainer.train(0, 1)
            raise AssertionError("PruningHook accepted DDP without find_unused_parameters")
        except ValueError as e:
            assert "FIND_UNUSED_PARAMETERS" in str(e)

        model = make_model(seed=rank)
        ddp = DistributedDataParallel(model, find_unused_parameters=True)
        trainer = SimpleTrainer(ddp, batches(10 + rank), torch.optim.SGD(model.parameters(), lr=0.5))
        trainer.register_hooks([PruningHook(ddp, 1, 0, 3, hard_at_end=False)])
        trainer.train(0, 3)  # soft: three steps with different data per rank
        mask = channel_masks(model)["body.0"]
        logits = mask.weight.detach().clone()
        model.eval()
        eval_mask = mask.current_mask().detach().clone()
        expected_eval = soft_topk_mask(logits, mask.k, float(mask.temperature))
        model.train()
        trainer.train(3, 5)  # converts at iteration 3, then fine-tunes with the fixed mask
        torch.save({"logits": logits, "eval_mask": eval_mask, "expected_eval": expected_eval,
                    "hard": mask.mask.clone(), "k": mask.k,
                    "conv": model.body[0][0].weight.detach().clone()},
                   f"{out_dir}/rank{rank}.pt")
        dist.barrier()  # leave together: destroying a Gloo group under a live peer aborts it
    finally:
        dist.destroy_process_group()
    _exit_spawned_worker()


@pytest.mark.slow
def test_masks_across_two_gloo_processes(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # the logits are trained (they moved from rank 0's initialisation) and equal on both ranks
    init = channel_masks(make_model(seed=0))["body.0"].weight.detach()
    assert not torch.allclose(r0["logits"], init)
    assert torch.allclose(r0["logits"], r1["logits"])
    for r in (r0, r1):
        assert torch.allclose(r["eval_mask"], r["expected_eval"])  # eval: from the logits
        assert r["k"] == 4 and float(r["hard"].sum()) == 4
    assert torch.equal(r0["hard"], r1["hard"])
    # the hard mask is the top-k of the logits at the conversion
    top = torch.zeros(16)
    top[r0["logits"].argsort(descending=True)[:4]] = 1
    assert torch.equal(r0["hard"], top)
    assert torch.allclose(r0["conv"], r1["conv"])  # fine-tuning after conversion stays in sync

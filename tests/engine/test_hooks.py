"""The default hooks: timer, LR, periodic checkpoints, evaluation, writers, PreciseBN."""
import json
import os

import pytest
import torch
from torch import nn

from dl_lib.checkpoint import Checkpointer
from dl_lib.engine import SimpleTrainer, hooks
from dl_lib.utils.events import JSONWriter


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, batch):
        return {"loss": (self.linear(batch) ** 2).mean()}


def _loader():
    while True:
        yield torch.randn(4, 2)


def _trainer(lr=0.1):
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return SimpleTrainer(model, _loader(), opt)


def test_iteration_timer_records_step_time(caplog):
    trainer = _trainer()
    trainer.register_hooks([hooks.IterationTimer(warmup_iter=1)])
    trainer.train(0, 5)
    times = trainer.storage.history("time").values()
    assert [it for _, it in times] == [0, 1, 2, 3, 4]
    assert all(t > 0 for t, _ in times)


def test_lr_hook_records_lr_then_steps_the_scheduler():
    trainer = _trainer(lr=1.0)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda i: 0.5 ** i)
    trainer.register_hooks([hooks.LRScheduler()])
    trainer.train(0, 4)
    lrs = [v for v, _ in trainer.storage.history("lr").values()]
    assert lrs == [1.0, 0.5, 0.25, 0.125]  # the LR each iteration ran with
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0625


def test_periodic_checkpointer_keeps_last_k(tmp_path):
    trainer = _trainer()
    ckpt = Checkpointer(trainer.model, str(tmp_path), save_to_disk=True,
                        optimizer=trainer.optimizer)
    trainer.register_hooks([hooks.PeriodicCheckpointer(ckpt, period=1, max_to_keep=2)])
    trainer.train(0, 6)
    files = sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth"))
    assert files == ["model_0000004.pth", "model_0000005.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert torch.load(tmp_path / "model_0000004.pth", weights_only=True)["iteration"] == 4


def test_eval_hook_period_and_final():
    trainer = _trainer()
    seen = []

    def evaluate():
        seen.append(trainer.iter)
        return {"sem_seg": {"mIoU": 10.0 * len(seen), "per_class": [1, 2]}}

    eval_hook = hooks.EvalHook(3, evaluate)
    trainer.register_hooks([eval_hook])
    trainer.train(0, 7)
    assert seen == [2, 5, 7]  # after iterations 3 and 6 (1-based), and after training
    assert [v for v, _ in trainer.storage.history("sem_seg/mIoU").values()] == [10.0, 20.0, 30.0]
    assert eval_hook.last_results["sem_seg"]["mIoU"] == 30.0


def test_eval_hook_period_zero_evaluates_only_at_the_end():
    trainer = _trainer()
    seen = []
    trainer.register_hooks([hooks.EvalHook(0, lambda: seen.append(trainer.iter) or {})])
    trainer.train(0, 4)
    assert seen == [4]


def test_no_final_eval_after_a_crash():
    trainer = _trainer()
    seen = []

    def boom(t):
        if t.iter == 1:
            raise RuntimeError("boom")

    trainer.register_hooks([hooks.CallbackHook(after_step=boom),
                            hooks.EvalHook(0, lambda: seen.append(1) or {})])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train(0, 4)
    assert seen == []


def test_periodic_writer_produces_metrics_json_lines(tmp_path):
    trainer = _trainer()
    path = tmp_path / "metrics.json"
    trainer.register_hooks([hooks.IterationTimer(), hooks.LRScheduler(
        scheduler=torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda i: 1.0)),
        hooks.PeriodicWriter([JSONWriter(str(path))], period=2)])
    trainer.train(0, 5)
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert [l["iteration"] for l in lines] == [1, 3, 4]  # every 2nd and the last
    assert {"loss", "total_loss", "lr", "time", "data_time"} <= set(lines[-1])


def test_precise_bn_recomputes_running_stats():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3))
        model[0].bias.zero_()
    data = [torch.randn(64, 3) * 2 + 5 for _ in range(10)]

    class Holder:  # the hook only needs iter / max_iter from its trainer
        iter, max_iter = 9, 10

    hook = hooks.PreciseBN(0, model, data, num_iter=10)
    hook.trainer = Holder()
    hook.after_step()  # the last iteration: recompute
    expected = torch.cat(data).mean(0)
    assert torch.allclose(model[1].running_mean, expected, atol=1e-4)


def test_precise_bn_without_bn_is_disabled():
    hook = hooks.PreciseBN(0, nn.Linear(2, 2), [], num_iter=3)
    assert hook._disabled

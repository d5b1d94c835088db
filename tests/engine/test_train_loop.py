"""TrainerBase / SimpleTrainer: the step, non-finite losses, clipping, mixed precision."""
import itertools
import json

import pytest
import torch
from torch import nn

from dl_lib.engine import HookBase, SimpleTrainer, hooks
from dl_lib.utils.events import JSONWriter, get_event_storage


class _Regressor(nn.Module):
    """Returns {"loss_mse": ..., "extra": ...}; optionally a NaN loss from iteration ``nan_at``."""

    def __init__(self, nan_at=None):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.nan_at = nan_at

    def forward(self, batch):
        x, y = batch
        loss = ((self.linear(x) - y) ** 2).mean()
        if self.nan_at is not None and get_event_storage().iter >= self.nan_at:
            loss = loss * float("nan")
        return {"loss_mse": loss, "loss_aux": 0.0 * loss, "extra": torch.tensor(3.0)}


def _loader(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 1, generator=g)
    while True:
        x = torch.randn(8, 4, generator=g)
        yield x, x @ w


def test_loss_decreases_and_metrics_are_recorded():
    torch.manual_seed(0)
    model = _Regressor()
    trainer = SimpleTrainer(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.train(0, 60)
    hist = trainer.storage.history("loss_mse").values()
    assert len(hist) == 60 and hist[-1][0] < 0.1 * hist[0][0]
    assert trainer.storage.history("extra").latest() == 3.0  # non-loss scalars are logged
    total = trainer.storage.history("total_loss").latest()
    assert total == pytest.approx(hist[-1][0])
    assert trainer.iter == 60


def test_non_finite_loss_names_iteration_and_terms():
    model = _Regressor(nan_at=3)
    before = None

    class Snapshot(HookBase):
        def after_step(self):
            nonlocal before
            before = model.linear.weight.detach().clone()

    trainer = SimpleTrainer(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.register_hooks([Snapshot()])
    with pytest.raises(FloatingPointError) as e:
        trainer.train(0, 10)
    msg = str(e.value)
    assert "iteration 3" in msg and "loss_mse=nan" in msg and "loss_aux=nan" in msg
    assert torch.equal(model.linear.weight, before)  # weights untouched by the bad step


def test_hooks_run_in_order_and_see_iterations():
    calls = []

    class Rec(HookBase):
        def __init__(self, tag):
            self.tag = tag

        def before_train(self):
            calls.append((self.tag, "before_train", self.trainer.iter))

        def after_step(self):
            calls.append((self.tag, "after_step", self.trainer.iter))

        def after_train(self):
            calls.append((self.tag, "after_train", self.trainer.iter))

    model = _Regressor()
    trainer = SimpleTrainer(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.register_hooks([Rec("a"), None, Rec("b")])
    trainer.train(2, 4)
    assert calls == [("a", "before_train", 2), ("b", "before_train", 2),
                     ("a", "after_step", 2), ("b", "after_step", 2),
                     ("a", "after_step", 3), ("b", "after_step", 3),
                     ("a", "after_train", 4), ("b", "after_train", 4)]


def test_grad_clip_bounds_the_update():
    model = _Regressor()
    flat = lambda: torch.cat([p.detach().flatten() for p in model.parameters()])  # noqa: E731
    before = flat()
    big = ((torch.ones(2, 4) * 100, torch.full((2, 1), -1e4)) for _ in itertools.count())
    trainer = SimpleTrainer(model, big, torch.optim.SGD(model.parameters(), lr=1.0), grad_clip=0.5)
    trainer.train(0, 1)
    # SGD with lr 1: the update is the clipped gradient, whose total L2 norm is 0.5.
    assert (flat() - before).norm().item() == pytest.approx(0.5, rel=1e-4)


def test_bfloat16_autocast_on_cpu_trains():
    torch.manual_seed(0)
    model = _Regressor()
    trainer = SimpleTrainer(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.1),
                            amp=True, amp_dtype="bfloat16")
    assert trainer.grad_scaler is None
    trainer.train(0, 40)
    hist = trainer.storage.history("loss_mse").values()
    assert hist[-1][0] < hist[0][0]


def test_unknown_amp_dtype_is_an_error():
    model = _Regressor()
    with pytest.raises(ValueError, match="SOLVER.AMP.DTYPE"):
        SimpleTrainer(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.1), amp=True,
                      amp_dtype="fp8")


def test_model_returning_no_loss_is_an_error():
    class NoLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))

        def forward(self, batch):
            return {"accuracy": self.p.sum()}

    model = NoLoss()
    trainer = SimpleTrainer(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="no loss terms"):
        trainer.train(0, 1)


class _WithExtras(_Regressor):
    """A model that also reports what it ran: Python numbers and a 0-d tensor without grad."""

    def forward(self, batch):
        out = super().forward(batch)
        out.update(real_flops=12.3, active_cells=7, density=torch.tensor(0.25))
        return out


def test_non_tensor_extras_are_logged(tmp_path):
    model = _WithExtras()
    trainer = SimpleTrainer(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.1))
    json_file = str(tmp_path / "metrics.json")
    trainer.register_hooks([hooks.PeriodicWriter([JSONWriter(json_file)], period=1)])
    trainer.train(0, 3)
    assert trainer.storage.history("real_flops").values()[-1][0] == pytest.approx(12.3)
    assert trainer.storage.history("active_cells").latest() == 7.0
    assert trainer.storage.history("density").latest() == 0.25
    # the extras are logged, not added to the loss
    assert trainer.storage.history("total_loss").latest() == pytest.approx(
        trainer.storage.history("loss_mse").latest())
    lines = [json.loads(line) for line in open(json_file)]
    assert [line["iteration"] for line in lines] == [0, 1, 2]
    assert lines[-1]["real_flops"] == pytest.approx(12.3) and lines[-1]["active_cells"] == 7


@pytest.mark.parametrize("value, what", [(0.5, "float"), (torch.tensor(1), "torch.int64")])
def test_loss_that_is_not_a_float_tensor_is_an_error_naming_it(value, what):
    class Bad(_Regressor):
        def forward(self, batch):
            return dict(super().forward(batch), loss_budget=value)

    model = Bad()
    trainer = SimpleTrainer(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match=f"'loss_budget' is a .*{what}.*floating-point tensors"):
        trainer.train(0, 1)


def test_extra_that_is_not_a_number_is_an_error_naming_it():
    class Bad(_Regressor):
        def forward(self, batch):
            return dict(super().forward(batch), route="12.3")

    model = Bad()
    trainer = SimpleTrainer(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="'route' is a str"):
        trainer.train(0, 1)

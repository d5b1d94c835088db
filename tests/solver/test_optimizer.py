"""Optimizer param groups: decay separation for norm layers and biases, merging, AdamW."""
import pytest
import torch
from torch import nn

from dl_lib.config import get_cfg
from dl_lib.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm
from dl_lib.solver import OPTIMIZER_NAMES, build_optimizer


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3)              # weight: default, bias: bias rule
        self.bn = nn.BatchNorm2d(32)                 # norm rule (weight and bias)
        self.gn = nn.GroupNorm(8, 32)                # norm rule
        self.sbn = NaiveSyncBatchNorm(32)            # norm rule
        self.frozen = FrozenBatchNorm2d(32)          # buffers only
        self.ln = nn.LayerNorm(32)                   # norm rule
        self.fc = nn.Linear(32, 4)                   # default + bias rule
        self.head = nn.Conv2d(32, 4, 1, bias=False)
        self.head_alias = self.head                  # shared module: counted once
        self.stem = nn.Conv2d(3, 3, 1)
        for p in self.stem.parameters():             # frozen: left out
            p.requires_grad_(False)


def _cfg(**opt):
    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER.BASE_LR = 0.1
    cfg.SOLVER.OPTIMIZER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.OPTIMIZER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.OPTIMIZER.WEIGHT_DECAY_BIAS = 5e-4
    cfg.SOLVER.OPTIMIZER.BIAS_LR_FACTOR = 2.0
    for k, v in opt.items():
        setattr(cfg.SOLVER.OPTIMIZER, k, v)
    return cfg


def _hyper_by_param(opt):
    return {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


def test_norm_and_bias_decay_separation():
    net = _Net()
    opt = build_optimizer(_cfg(), net)
    hp = _hyper_by_param(opt)
    default, norm, bias = (0.1, 1e-4), (0.1, 0.0), (0.2, 5e-4)
    expected = {
        net.conv.weight: default, net.conv.bias: bias,
        net.bn.weight: norm, net.bn.bias: norm,
        net.gn.weight: norm, net.gn.bias: norm,
        net.sbn.weight: norm, net.sbn.bias: norm,
        net.ln.weight: norm, net.ln.bias: norm,
        net.fc.weight: default, net.fc.bias: bias,
        net.head.weight: default,
    }
    assert len(hp) == len(expected)  # frozen stem excluded, shared head once
    for p, want in expected.items():
        assert hp[id(p)] == pytest.approx(want)
    # merged by hyper-parameters: three groups, not one per tensor
    assert len(opt.param_groups) == 3
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.9


def test_sgd_nesterov_and_momentum():
    opt = build_optimizer(_cfg(NESTEROV=True, MOMENTUM=0.8), _Net())
    assert all(g["nesterov"] and g["momentum"] == 0.8 for g in opt.param_groups)
    with pytest.raises(ValueError, match="MOMENTUM"):
        build_optimizer(_cfg(NESTEROV=True, MOMENTUM=0.0), _Net())


def test_adamw():
    opt = build_optimizer(_cfg(NAME="AdamW", BETAS=[0.8, 0.99], EPS=1e-6), _Net())
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["betas"] == (0.8, 0.99) and g["eps"] == 1e-6 for g in opt.param_groups)
    assert sorted((g["lr"], g["weight_decay"]) for g in opt.param_groups) == [
        (0.1, 0.0), (0.1, 1e-4), (0.2, 5e-4)]
    opt2 = build_optimizer(_cfg(NAME="adamw"), _Net())  # case-insensitive
    assert isinstance(opt2, torch.optim.AdamW)


def test_optimizer_steps():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = build_optimizer(_cfg(), net)
    before = net[0].weight.detach().clone()
    net(torch.randn(2, 3, 8, 8)).square().mean().backward()
    opt.step()
    assert not torch.equal(before, net[0].weight)


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(ValueError) as e:
        build_optimizer(_cfg(NAME="Adam"), _Net())
    assert all(n in str(e.value) for n in OPTIMIZER_NAMES)
    assert "SOLVER.OPTIMIZER.NAME" in str(e.value)


def test_all_frozen_model_is_an_error():
    net = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        build_optimizer(_cfg(), net)

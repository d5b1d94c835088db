"""LR schedules: hand-computed values, state round-trip, resume with a changed MAX_ITER."""
import io
import math

import pytest
import torch

from dl_lib.config import get_cfg
from dl_lib.solver import LR_SCHEDULER_NAMES, build_lr_scheduler, build_optimizer

BASE_LR = 0.01


def _cfg(name, max_iter=100, **sched):
    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER.BASE_LR = BASE_LR
    cfg.SOLVER.LR_SCHEDULER.NAME = name
    cfg.SOLVER.LR_SCHEDULER.MAX_ITER = max_iter
    cfg.SOLVER.LR_SCHEDULER.WARMUP_ITERS = 0
    for k, v in sched.items():
        setattr(cfg.SOLVER.LR_SCHEDULER, k, v)
    return cfg


def _build(cfg):
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(cfg, model)
    return opt, build_lr_scheduler(cfg, opt)


def _lrs(cfg, n=None):
    """LR used at iterations 0..n (inclusive; default MAX_ITER)."""
    opt, sched = _build(cfg)
    n = cfg.SOLVER.LR_SCHEDULER.MAX_ITER if n is None else n
    out = []
    for _ in range(n + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_poly_values():
    lrs = _lrs(_cfg("PolyLR", POLY_POWER=0.9))
    assert lrs[0] == pytest.approx(BASE_LR)
    assert lrs[50] == pytest.approx(BASE_LR * 0.5 ** 0.9)
    assert lrs[90] == pytest.approx(BASE_LR * 0.1 ** 0.9)
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)


def test_poly_ignores_warmup_and_ends_at_end_factor():
    lrs = _lrs(_cfg("PolyLR", POLY_POWER=0.9, WARMUP_ITERS=10, END_LR_FACTOR=0.1))
    assert lrs[0] == pytest.approx(BASE_LR)  # PolyLR never warms up
    assert lrs[50] == pytest.approx(0.001 + 0.009 * 0.5 ** 0.9)
    assert lrs[100] == pytest.approx(0.001)


def test_warmup_poly_linear_ramp():
    lrs = _lrs(_cfg("WarmupPolyLR", POLY_POWER=0.9, WARMUP_ITERS=10, WARMUP_FACTOR=0.001,
                    WARMUP_METHOD="linear"))
    assert lrs[0] == pytest.approx(BASE_LR * 0.001)
    # halfway through warmup: factor 0.001 + 0.999 * 0.5, times the poly value at 5 / 100
    assert lrs[5] == pytest.approx(BASE_LR * 0.5005 * 0.95 ** 0.9)
    assert lrs[10] == pytest.approx(BASE_LR * 0.9 ** 0.9)  # warmup over: plain poly
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # increases during warmup
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)


def test_warmup_constant():
    lrs = _lrs(_cfg("WarmupPolyLR", POLY_POWER=1.0, WARMUP_ITERS=10, WARMUP_FACTOR=0.1,
                    WARMUP_METHOD="constant"))
    assert lrs[0] == pytest.approx(BASE_LR * 0.1)
    assert lrs[9] == pytest.approx(BASE_LR * 0.1 * 0.91)
    assert lrs[10] == pytest.approx(BASE_LR * 0.9)


def test_cosine_values():
    lrs = _lrs(_cfg("WarmupCosineLR"))
    assert lrs[0] == pytest.approx(BASE_LR)
    assert lrs[25] == pytest.approx(BASE_LR * (1 + math.cos(math.pi / 4)) / 2)
    assert lrs[50] == pytest.approx(BASE_LR / 2)
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    lrs = _lrs(_cfg("WarmupCosineLR", END_LR_FACTOR=0.1))
    assert lrs[50] == pytest.approx(BASE_LR * 0.55)
    assert lrs[100] == pytest.approx(BASE_LR * 0.1)


def test_multistep_drops():
    lrs = _lrs(_cfg("WarmupMultiStepLR", STEPS=[30, 80], GAMMA=0.1))
    assert lrs[0] == lrs[29] == pytest.approx(BASE_LR)
    assert lrs[30] == lrs[79] == pytest.approx(BASE_LR * 0.1)
    assert lrs[80] == lrs[100] == pytest.approx(BASE_LR * 0.01)


def test_multistep_with_warmup():
    lrs = _lrs(_cfg("WarmupMultiStepLR", STEPS=[30], GAMMA=0.5, WARMUP_ITERS=20,
                    WARMUP_FACTOR=0.0))
    assert lrs[0] == pytest.approx(0.0)
    assert lrs[10] == pytest.approx(BASE_LR * 0.5)
    assert lrs[20] == pytest.approx(BASE_LR)
    assert lrs[30] == pytest.approx(BASE_LR * 0.5)


def test_groups_keep_their_own_base_lr():
    cfg = _cfg("PolyLR", POLY_POWER=1.0)
    cfg.SOLVER.OPTIMIZER.BIAS_LR_FACTOR = 2.0
    cfg.SOLVER.OPTIMIZER.WEIGHT_DECAY_BIAS = 0.0
    opt, sched = _build(cfg)
    for _ in range(25):
        opt.step()
        sched.step()
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx(
        [BASE_LR * 0.75, 2 * BASE_LR * 0.75])


def test_state_dict_round_trip():
    cfg = _cfg("WarmupPolyLR", WARMUP_ITERS=5)
    opt, sched = _build(cfg)
    for _ in range(37):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)  # must survive weights_only loading
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    opt2, sched2 = _build(cfg)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 37
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    for _ in range(10):
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_resume_with_changed_max_iter_follows_new_schedule():
    opt, sched = _build(_cfg("PolyLR", max_iter=100, POLY_POWER=0.9))
    for _ in range(50):
        opt.step()
        sched.step()
    state = sched.state_dict()

    opt2, sched2 = _build(_cfg("PolyLR", max_iter=200, POLY_POWER=0.9))
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 50
    expected = BASE_LR * (1 - 50 / 200) ** 0.9
    assert opt2.param_groups[0]["lr"] == pytest.approx(expected)
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(BASE_LR * (1 - 51 / 200) ** 0.9)


def test_past_max_iter_is_clamped():
    lrs = _lrs(_cfg("WarmupMultiStepLR", max_iter=10, STEPS=[5]), n=15)
    assert lrs[15] == pytest.approx(BASE_LR * 0.1)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        _build(_cfg("StepLR"))
    for name in LR_SCHEDULER_NAMES:
        assert name in str(e.value)


@pytest.mark.parametrize("bad", [
    dict(STEPS=[50, 30]), dict(STEPS=[100]),
    dict(WARMUP_ITERS=10, WARMUP_METHOD="exp", STEPS=[10])])
def test_invalid_settings_raise(bad):
    with pytest.raises(ValueError, match="SOLVER.LR_SCHEDULER"):
        _build(_cfg("WarmupMultiStepLR", **bad))


def test_warmup_longer_than_the_run_is_clipped_with_a_warning(caplog):
    """A smoke test of a recipe (MAX_ITER 6, WARMUP_ITERS 10) warms up over its 6 iterations."""
    with caplog.at_level("WARNING", logger="dl_lib.solver.lr_scheduler"):
        lrs = _lrs(_cfg("WarmupPolyLR", max_iter=6, POLY_POWER=0.9, WARMUP_ITERS=10,
                        WARMUP_FACTOR=0.001, WARMUP_METHOD="linear"))
    expected = [BASE_LR * (0.001 + 0.999 * i / 6) * (1 - i / 6) ** 0.9 for i in range(7)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    (record,) = [r for r in caplog.records if "WARMUP_ITERS" in r.getMessage()]
    msg = record.getMessage()
    assert "SOLVER.LR_SCHEDULER.WARMUP_ITERS=10" in msg and "SOLVER.LR_SCHEDULER.MAX_ITER=6" in msg

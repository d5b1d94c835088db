"""Per-iteration learning-rate schedules built on fvcore's param schedulers.

A schedule is a multiplier ``m(where)``, ``where = iteration / max_iter`` in [0, 1], given by an
fvcore ``ParamScheduler`` with value 1 at the start; ``LRMultiplier`` turns it into a torch
``LRScheduler`` that sets ``lr = base_lr * m(iteration / max_iter)`` for every param group and is
stepped once per iteration, after ``optimizer.step()``.

Resuming: ``LRMultiplier.state_dict()`` records the iteration count (plus, for information, the
schedule length and base LRs); ``load_state_dict`` restores **only the iteration count**. The
schedule itself, its length and the base LRs always come from the config the scheduler was
rebuilt from, so ``--resume`` with a changed ``MAX_ITER`` or ``BASE_LR`` follows the new schedule
(the classic "new schedule ignored after resume" bug stores the whole scheduler instead).
"""
import logging
from typing import List

import torch
from fvcore.common.param_scheduler import (
    ConstantParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
    PolynomialDecayParamScheduler,
)

__all__ = [
    "LRMultiplier", "WarmupParamScheduler", "PolynomialDecayToParamScheduler",
    "build_lr_multiplier", "build_lr_scheduler", "LR_SCHEDULER_NAMES",
]

logger = logging.getLogger(__name__)

LR_SCHEDULER_NAMES = ("PolyLR", "WarmupPolyLR", "WarmupCosineLR", "WarmupMultiStepLR")
WARMUP_METHODS = ("linear", "constant")


class PolynomialDecayToParamScheduler(ParamScheduler):
    """``end + (start - end) * (1 - where) ** power``: fvcore's polynomial decay, which always
    ends at 0, shifted so the schedule can end at ``end_value`` (``END_LR_FACTOR``)."""

    def __init__(self, start_value: float, end_value: float, power: float) -> None:
        self._end_value = end_value
        self._decay = PolynomialDecayParamScheduler(start_value - end_value, power)

    def __call__(self, where: float) -> float:
        return self._end_value + self._decay(where)


class WarmupParamScheduler(ParamScheduler):
    """Multiplies ``scheduler`` by a warmup factor during the first ``warmup_length`` of training.

    The factor goes from ``warmup_factor`` to 1 (``"linear"``) or stays at ``warmup_factor``
    (``"constant"``) over ``where`` in [0, warmup_length), and is 1 afterwards. Multiplying (rather
    than replacing) keeps the main schedule's shape, as DynamicRouting's ``WarmupPolyLR`` did:
    ``lr(i) = base_lr * factor(i) * main(i)``.
    """

    def __init__(self, scheduler: ParamScheduler, warmup_factor: float, warmup_length: float,
                 warmup_method: str = "linear") -> None:
        if warmup_method == "linear":
            self._warmup = LinearParamScheduler(warmup_factor, 1.0)
        elif warmup_method == "constant":
            self._warmup = ConstantParamScheduler(warmup_factor)
        else:
            raise ValueError(
                f"SOLVER.LR_SCHEDULER.WARMUP_METHOD={warmup_method!r} is not supported; "
                f"valid values: {', '.join(WARMUP_METHODS)}")
        self._scheduler = scheduler
        self._length = warmup_length

    def __call__(self, where: float) -> float:
        value = self._scheduler(where)
        if where < self._length:
            value *= self._warmup(where / self._length)
        return value


class LRMultiplier(torch.optim.lr_scheduler.LRScheduler):
    """``lr = base_lr * multiplier(iteration / max_iter)`` for every param group.

    Args:
        optimizer: the optimizer whose ``param_groups[i]["lr"]`` become ``base_lrs[i]``.
        multiplier: an fvcore ``ParamScheduler`` over ``where`` in [0, 1].
        max_iter: schedule length in iterations; ``where`` is clamped to 1 beyond it.
        last_iter: the iteration the scheduler was last stepped at (-1: a fresh start).

    Step it once per iteration after ``optimizer.step()``. After construction ``last_epoch`` is
    0 and the LR is that of iteration 0.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, multiplier: ParamScheduler,
                 max_iter: int, last_iter: int = -1) -> None:
        if not isinstance(multiplier, ParamScheduler):
            raise TypeError(f"multiplier must be an fvcore ParamScheduler, got {type(multiplier)}")
        if max_iter <= 0:
            raise ValueError(f"SOLVER.LR_SCHEDULER.MAX_ITER must be positive, got {max_iter}")
        self._multiplier = multiplier
        self._max_iter = int(max_iter)
        super().__init__(optimizer, last_epoch=last_iter)

    def _factor(self, iteration: int) -> float:
        where = min(max(iteration / self._max_iter, 0.0), 1.0)
        return self._multiplier(where)

    def get_lr(self) -> List[float]:
        factor = self._factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def state_dict(self) -> dict:
        # Plain Python values only, so checkpoints load with torch.load(weights_only=True).
        return {"last_epoch": int(self.last_epoch), "_step_count": int(self._step_count),
                "max_iter": self._max_iter, "base_lrs": [float(lr) for lr in self.base_lrs]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the iteration count only; schedule, length and base LRs stay as built."""
        old_max_iter = state_dict.get("max_iter")
        if old_max_iter is not None and old_max_iter != self._max_iter:
            logger.info(f"LR schedule length changed on resume: MAX_ITER {old_max_iter} -> "
                        f"{self._max_iter}; following the new schedule.")
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict.get("_step_count", self.last_epoch + 1))
        # Apply the LR of the restored iteration now, so the first resumed step does not run
        # with the LR the optimizer state carried (or with iteration 0's).
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"SOLVER.LR_SCHEDULER.{name}={value} must be in [{low}, {high}]")


def build_lr_multiplier(cfg) -> ParamScheduler:
    """The fvcore schedule (value 1 at the start) described by ``cfg.SOLVER.LR_SCHEDULER``."""
    sc = cfg.SOLVER.LR_SCHEDULER
    name = sc.NAME
    max_iter = sc.MAX_ITER
    end = sc.END_LR_FACTOR
    _check_range("END_LR_FACTOR", end, 0.0, 1.0)
    if name in ("PolyLR", "WarmupPolyLR"):
        main = PolynomialDecayToParamScheduler(1.0, end, sc.POLY_POWER)
    elif name == "WarmupCosineLR":
        main = CosineParamScheduler(1.0, end)
    elif name == "WarmupMultiStepLR":
        steps = list(sc.STEPS)
        if any(not 0 < s < max_iter for s in steps) or steps != sorted(set(steps)):
            raise ValueError(
                f"SOLVER.LR_SCHEDULER.STEPS={steps} must be strictly increasing iterations in "
                f"(0, MAX_ITER={max_iter})")
        main = MultiStepParamScheduler(
            values=[sc.GAMMA ** k for k in range(len(steps) + 1)], milestones=steps,
            num_updates=max_iter)
    else:
        raise ValueError(f"SOLVER.LR_SCHEDULER.NAME={name!r} is unknown; valid names: "
                         f"{', '.join(LR_SCHEDULER_NAMES)}")

    # PolyLR is DynamicRouting's schedule without warmup; the others warm up when asked.
    if name == "PolyLR" or sc.WARMUP_ITERS <= 0:
        return main
    warmup_iters = sc.WARMUP_ITERS
    if warmup_iters > max_iter:
        # A short run of a long recipe (a smoke test with MAX_ITER 6) should still run.
        logger.warning(
            f"SOLVER.LR_SCHEDULER.WARMUP_ITERS={warmup_iters} exceeds "
            f"SOLVER.LR_SCHEDULER.MAX_ITER={max_iter}; warming up over all {max_iter} iterations "
            "instead (set WARMUP_ITERS <= MAX_ITER to silence this).")
        warmup_iters = max_iter
    _check_range("WARMUP_FACTOR", sc.WARMUP_FACTOR, 0.0, 1.0)
    return WarmupParamScheduler(main, sc.WARMUP_FACTOR, warmup_iters / max_iter,
                                sc.WARMUP_METHOD)


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> LRMultiplier:
    """An ``LRMultiplier`` for ``optimizer`` following ``cfg.SOLVER.LR_SCHEDULER``.

    Names: ``PolyLR`` (``(1 - i/max_iter) ** POLY_POWER``, no warmup), ``WarmupPolyLR``,
    ``WarmupCosineLR`` (cosine from 1 to ``END_LR_FACTOR``), ``WarmupMultiStepLR`` (times
    ``GAMMA`` at each of ``STEPS``). Poly also decays to ``END_LR_FACTOR``. Warmup uses
    ``WARMUP_ITERS`` / ``WARMUP_FACTOR`` / ``WARMUP_METHOD``.
    """
    max_iter = cfg.SOLVER.LR_SCHEDULER.MAX_ITER
    if not isinstance(max_iter, int) or max_iter <= 0:
        raise ValueError(f"SOLVER.LR_SCHEDULER.MAX_ITER must be a positive int, got {max_iter!r}")
    return LRMultiplier(optimizer, build_lr_multiplier(cfg), max_iter)

"""Optimizers and per-iteration learning-rate schedules built from ``cfg.SOLVER``."""
from .build import NORM_MODULE_TYPES, OPTIMIZER_NAMES, build_optimizer, get_default_optimizer_params
from .lr_scheduler import (
    LR_SCHEDULER_NAMES,
    LRMultiplier,
    PolynomialDecayToParamScheduler,
    WarmupParamScheduler,
    build_lr_multiplier,
    build_lr_scheduler,
)

__all__ = [
    "build_optimizer", "get_default_optimizer_params", "NORM_MODULE_TYPES", "OPTIMIZER_NAMES",
    "build_lr_scheduler", "build_lr_multiplier", "LRMultiplier", "WarmupParamScheduler",
    "PolynomialDecayToParamScheduler", "LR_SCHEDULER_NAMES",
]

"""The original's Cityscapes recipes, as base configs of the ``playground/Dynamic`` experiments.

Each playground's ``config.py`` is a short delta on one of these (detectron2's ``Base-*.yaml``)::

    from dl_lib.config import config_from_delta
    from dl_lib.modeling.dynamic_routing.recipes import cityscapes_config
    config = config_from_delta(dict(MODEL=dict(GATE=dict(GATE_ON=False))), base=cityscapes_config())

- ``cityscapes_config()``: Dynamic-Raw Layer16 from scratch (the original's ``Seg.Layer16``);
- ``small_gate_budget_config()``: that plus small gates and the FLOPs budget of Dynamic-A/B/C,
  whose playgrounds set only ``MODEL.BUDGET.LOSS_WEIGHT`` and ``LOSS_MU``.

Values: reference ``dynamic_routing.md`` sections 3.5 and 6.1. Each call returns a new config.
"""
from dl_lib.config import CfgNode, config_from_delta

__all__ = ["CITYSCAPES_DELTA", "SMALL_GATE_BUDGET_DELTA", "cityscapes_config",
           "small_gate_budget_config"]

# What every experiment shares, on top of the library defaults and the family's keys.
CITYSCAPES_DELTA = dict(
    MODEL=dict(
        DEVICE="cuda",
        META_ARCHITECTURE="DynamicRoutingSegmentor",
        # The original subtracts the ImageNet mean from 0-255 BGR images and divides by 1; the
        # same mean in our RGB order.
        PIXEL_MEAN=[123.675, 116.28, 103.53], PIXEL_STD=[1.0, 1.0, 1.0],
        # nnSyncBN falls back to BatchNorm at world size 1, so one process trains too.
        BACKBONE=dict(LAYER_NUM=16, NORM="nnSyncBN"),
        SEM_SEG_HEAD=dict(NORM="nnSyncBN"),
    ),
    INPUT=dict(MIN_SIZE_TRAIN=[512, 768, 1024, 1280, 1536, 2048]),
    SOLVER=dict(
        OPTIMIZER=dict(BASE_LR=0.05),
        LR_SCHEDULER=dict(MAX_ITER=190000, WARMUP_ITERS=1000),
        GRAD_CLIP=5.0,
    ),
    TEST=dict(PRECISE_BN=dict(ENABLED=True)),
)

# Dynamic-A/B/C on top of CITYSCAPES_DELTA; their own LOSS_WEIGHT / LOSS_MU stay 0 here.
SMALL_GATE_BUDGET_DELTA = dict(
    MODEL=dict(
        GATE=dict(SMALL_GATE=True),
        # FLOPS_ALL: the original's 26300 MFLOPs, Layer16's expected cost with every route open
        # at the 768x768 crop (26,892 by its counter). It counted at INPUT.FIX_SIZE_FOR_FLOPS
        # (1024x2048 as shipped: ratios near 3); ours counts at the actual crop, so the ratio is
        # the one its README intended. FLOPS_ALL 0 derives it for another crop or network.
        BUDGET=dict(CONSTRAIN=True, FLOPS_ALL=26300.0),
    ),
    INPUT=dict(CROP_PAD=dict(SIZE=[768, 768])),  # our default too; FLOPS_ALL is for this crop
    # No precise BN: the original's Dynamic-A/B/C configs left it off.
    TEST=dict(PRECISE_BN=dict(ENABLED=False)),
)


def cityscapes_config() -> CfgNode:
    """Defaults + ``dynamic_routing`` keys + ``CITYSCAPES_DELTA``: Dynamic-Raw Layer16 from
    scratch, 190k iterations of batch 8 at 768x768 crops, SGD 0.05, precise BN."""
    return config_from_delta(CITYSCAPES_DELTA, source=f"{__name__}.CITYSCAPES_DELTA",
                             family="dynamic_routing")


def small_gate_budget_config() -> CfgNode:
    """``cityscapes_config()`` + ``SMALL_GATE_BUDGET_DELTA``: small gates, the budget loss on
    (FLOPS_ALL 26300 at the 768x768 crop), no precise BN. Set LOSS_WEIGHT and LOSS_MU on it."""
    return config_from_delta(SMALL_GATE_BUDGET_DELTA, base=cityscapes_config(),
                             source=f"{__name__}.SMALL_GATE_BUDGET_DELTA")

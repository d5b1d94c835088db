"""Network-Fix, Layer16, from scratch: the supernet without gates, every route open (the
"common network" baseline; ``GATE_ON False`` as the original's author advised, issue #32).

As ``Seg.Layer16`` without the gate networks (15,261,843 parameters instead of 17,784,968). The
original released no playground for it; by its counter it costs about 101.2 GFLOPs at
1024x2048 (118.1 of the gated supernet with every route open, less its gates).

    cd playground/Dynamic/Seg.Layer16.Fix && dl_train --num-gpus 4
    dl_test --num-gpus 8 MODEL.WEIGHTS <checkpoint>
"""
from dl_lib.config import config_from_delta

config = config_from_delta(dict(
    MODEL=dict(
        DEVICE="cuda",
        META_ARCHITECTURE="DynamicRoutingSegmentor",
        # The original's BGR ImageNet mean with std 1, in our RGB order.
        PIXEL_MEAN=[123.675, 116.28, 103.53], PIXEL_STD=[1.0, 1.0, 1.0],
        # nnSyncBN falls back to BatchNorm at world size 1, so one process trains too.
        BACKBONE=dict(LAYER_NUM=16, NORM="nnSyncBN"),
        GATE=dict(GATE_ON=False),
        SEM_SEG_HEAD=dict(NORM="nnSyncBN"),
    ),
    INPUT=dict(MIN_SIZE_TRAIN=[512, 768, 1024, 1280, 1536, 2048]),
    SOLVER=dict(
        OPTIMIZER=dict(BASE_LR=0.05),
        LR_SCHEDULER=dict(MAX_ITER=190000, WARMUP_ITERS=1000),
        GRAD_CLIP=5.0,
    ),
    TEST=dict(PRECISE_BN=dict(ENABLED=True)),
), family="dynamic_routing")

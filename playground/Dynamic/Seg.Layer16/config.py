"""Dynamic-Raw, Layer16, from scratch on Cityscapes fine (the original's ``Seg.Layer16``).

Every route has a soft gate and no FLOPs budget is applied. Recipe: 190k iterations of batch 8
(over all processes, synchronised BN) of 768x768 crops from images whose shorter side is one of
512..2048, horizontal flips; SGD 0.05 with 1000 warm-up iterations and poly decay (power 0.9),
gradients clipped at norm 5; precise BN before the final evaluation on the 1024x2048 val images.
Published (val, single scale): 76.1 mIoU at 119.5 GFLOPs (paper), 76.7 / 114.9 (original code).

    cd playground/Dynamic/Seg.Layer16 && dl_train --num-gpus 4
    dl_test --num-gpus 8 MODEL.WEIGHTS <released checkpoint>
"""
from dl_lib.config import config_from_delta

config = config_from_delta(dict(
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
), family="dynamic_routing")

"""Dynamic-Raw, Layer16, from scratch, long schedule with scheduled drop path 0.3 (the
original's ``Seg.Layer16.Iter560k.SDP0_3``).

As ``Seg.Layer16`` for 560k iterations (a checkpoint every 10k); in training the cell operation of
layer l (of L) is dropped per image with probability 0.3 * (l+1)/L * iteration/MAX_ITER.
Published (val, single scale): 78.3 mIoU at 113.3 GFLOPs (paper), 78.1 / 114.2 (original code).

    cd playground/Dynamic/Seg.Layer16.Iter560k.SDP0_3 && dl_train --num-gpus 4
    dl_test --num-gpus 8 MODEL.WEIGHTS <released checkpoint>
"""
from dl_lib.config import config_from_delta

config = config_from_delta(dict(
    MODEL=dict(
        DEVICE="cuda",
        META_ARCHITECTURE="DynamicRoutingSegmentor",
        # The original's BGR ImageNet mean with std 1, in our RGB order.
        PIXEL_MEAN=[123.675, 116.28, 103.53], PIXEL_STD=[1.0, 1.0, 1.0],
        # nnSyncBN falls back to BatchNorm at world size 1, so one process trains too.
        BACKBONE=dict(LAYER_NUM=16, NORM="nnSyncBN", DROP_PROB=0.3),
        SEM_SEG_HEAD=dict(NORM="nnSyncBN"),
    ),
    INPUT=dict(MIN_SIZE_TRAIN=[512, 768, 1024, 1280, 1536, 2048]),
    SOLVER=dict(
        OPTIMIZER=dict(BASE_LR=0.05),
        LR_SCHEDULER=dict(MAX_ITER=560000, WARMUP_ITERS=1000),
        GRAD_CLIP=5.0,
        CHECKPOINT_PERIOD=10000,
    ),
    TEST=dict(PRECISE_BN=dict(ENABLED=True)),
), family="dynamic_routing")

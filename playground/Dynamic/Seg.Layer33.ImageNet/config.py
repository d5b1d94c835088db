"""Dynamic-Raw, Layer33 (33 layers of cells), from the ImageNet-pretrained "Layer33-Fix"
backbone (the original's ``Seg.Layer33.ImageNet``).

As ``Seg.Layer16.ImageNet`` with 33 layers (129 cells). Published (val, single scale): 79.2 mIoU
at 242.3 GFLOPs (paper), 79.4 / 243.1 (original code).

The original read its weights from a fixed /data path. Pass the released file instead:

    cd playground/Dynamic/Seg.Layer33.ImageNet
    dl_train --num-gpus 4 MODEL.WEIGHTS /path/to/Dynamic-L33B4-A74-convert-seg.pth
    dl_test --num-gpus 8 MODEL.WEIGHTS <released checkpoint>
"""
from dl_lib.config import config_from_delta

config = config_from_delta(dict(
    MODEL=dict(
        DEVICE="cuda",
        META_ARCHITECTURE="DynamicRoutingSegmentor",
        # Empty: pass the released Dynamic-L33B4-A74-convert-seg.pth as MODEL.WEIGHTS (above).
        WEIGHTS="",
        # The original's BGR ImageNet mean with std 1, in our RGB order.
        PIXEL_MEAN=[123.675, 116.28, 103.53], PIXEL_STD=[1.0, 1.0, 1.0],
        # CELL_NUM_LIST: the default [2, 3, 4] + [4] * 30 is the original's for 33 layers.
        # nnSyncBN falls back to BatchNorm at world size 1, so one process trains too.
        BACKBONE=dict(LAYER_NUM=33, NORM="nnSyncBN"),
        SEM_SEG_HEAD=dict(NORM="nnSyncBN"),
    ),
    INPUT=dict(MIN_SIZE_TRAIN=[512, 768, 1024, 1280, 1536, 2048]),
    SOLVER=dict(
        OPTIMIZER=dict(BASE_LR=0.02, GATE_LR_MULTI=2.5),
        LR_SCHEDULER=dict(MAX_ITER=190000, WARMUP_ITERS=1000),
        GRAD_CLIP=5.0,
    ),
    TEST=dict(PRECISE_BN=dict(ENABLED=True)),
), family="dynamic_routing")

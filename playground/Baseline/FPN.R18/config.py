"""FPN semantic head on a randomly initialised ResNet-18, full Cityscapes recipe.

Train on cityscapes_fine_sem_seg_train (2975 images): random scale 0.5–2.0 of the 1024-pixel
short side, 512×1024 crops, batch 8 over all GPUs with synchronised BN, SGD 0.01 with poly decay
for 40k iterations; test on the full 1024×2048 val images.
"""
from dl_lib.config import config_from_delta

config = config_from_delta(dict(
    MODEL=dict(
        DEVICE="cuda",
        META_ARCHITECTURE="SemanticSegmentor",
        BACKBONE=dict(NAME="resnet18", NORM="SyncBN", OUT_FEATURES=["res2", "res3", "res4", "res5"]),
        SEM_SEG_HEAD=dict(NAME="FPNHead", IN_FEATURES=["res2", "res3", "res4", "res5"], NUM_CLASSES=19,
                          CONVS_DIM=128, COMMON_STRIDE=4, NORM="SyncBN"),
    ),
    DATASETS=dict(TRAIN=("cityscapes_fine_sem_seg_train",), TEST=("cityscapes_fine_sem_seg_val",)),
    INPUT=dict(
        MIN_SIZE_TRAIN=[512, 2048], MIN_SIZE_TRAIN_SAMPLING="range", MAX_SIZE_TRAIN=4096,
        MIN_SIZE_TEST=1024, MAX_SIZE_TEST=2048,
        CROP_PAD=dict(ENABLED=True, SIZE=[512, 1024]),
    ),
    SOLVER=dict(
        OPTIMIZER=dict(NAME="SGD", BASE_LR=0.01, MOMENTUM=0.9, WEIGHT_DECAY=1e-4),
        LR_SCHEDULER=dict(NAME="WarmupPolyLR", MAX_ITER=40000, POLY_POWER=0.9, WARMUP_ITERS=1000),
        IMS_PER_BATCH=8,
        CHECKPOINT_PERIOD=5000,
    ),
    TEST=dict(EVAL_PERIOD=5000, VIS_NUM_IMAGES=8),
))

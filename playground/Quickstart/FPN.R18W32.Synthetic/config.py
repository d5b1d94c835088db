"""The demo: a half-width ResNet-18 FPN trained from scratch on the embedded street scenes, on CPU.

Sized for ``make demo`` (about 6 minutes of training and evaluation on 2 otherwise idle CPU cores,
about 0.3 s per iteration): ResNet-18 at width 32 (a quarter of the FLOPs of width 64), FPN width
64, images at half resolution (128×256, predictions resized back to 256×512 for scoring), batch 8,
AdamW with warmup and poly decay, 1000 iterations (40 epochs of the 200 training scenes).
A prototype of this recipe reached 56.6 mIoU on synthetic_cityscapes_val.
"""
from dl_lib.config import config_from_delta

config = config_from_delta(dict(
    MODEL=dict(
        DEVICE="cpu",
        META_ARCHITECTURE="SemanticSegmentor",
        BACKBONE=dict(NAME="resnet18", WIDTH=32, NORM="BN"),
        SEM_SEG_HEAD=dict(NAME="FPNHead", NUM_CLASSES=19, CONVS_DIM=64, COMMON_STRIDE=4, NORM="BN"),
    ),
    DATASETS=dict(TRAIN=("synthetic_cityscapes_train",), TEST=("synthetic_cityscapes_val",)),
    INPUT=dict(
        # The scenes are 256×512; training and testing at half size (whole 128×256 images,
        # horizontal flips only) is 4× cheaper and still resolves poles and signs.
        MIN_SIZE_TRAIN=[128], MIN_SIZE_TRAIN_SAMPLING="choice", MAX_SIZE_TRAIN=1024,
        MIN_SIZE_TEST=128, MAX_SIZE_TEST=1024,
        CROP_PAD=dict(ENABLED=False),
    ),
    DATALOADER=dict(NUM_WORKERS=1),
    SOLVER=dict(
        OPTIMIZER=dict(NAME="AdamW", BASE_LR=0.002, WEIGHT_DECAY=1e-4),
        LR_SCHEDULER=dict(NAME="WarmupPolyLR", MAX_ITER=1000, POLY_POWER=0.9, WARMUP_ITERS=20),
        IMS_PER_BATCH=8,
        CHECKPOINT_PERIOD=100000,  # only model_final
    ),
    TEST=dict(EVAL_PERIOD=0, VIS_NUM_IMAGES=4),
    SEED=0,
    LOG_PERIOD=50,
))

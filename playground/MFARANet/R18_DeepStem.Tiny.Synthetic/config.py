"""A narrow MFARANet trained from scratch on the embedded street scenes, on CPU (TODO numbers).
"""
from dl_lib.config import config_from_delta
from dl_lib.modeling.mfaranet import backbone_config

config = config_from_delta(dict(
    MODEL=dict(
        DEVICE="cpu",
        META_ARCHITECTURE="MFARANet",
        # The released encoder's layout (deep stem, conv2 of res4/res5 dilated 2/4) at half width.
        BACKBONE=dict(backbone_config("r18_deep_stem"), WIDTH=32, STEM_WIDTH=64),
        # From scratch, the decoder learns at the backbone's rate (the recipe's x10 is for an
        # ImageNet backbone). OHEM_MIN_KEPT: the original's share of a batch's pixels (100,000
        # of 7 x 1024 x 2048), 446 of 8 x 64 x 128.
        MFARANET=dict(DECODER_CHANNELS=32, HEAD_LR_MULTIPLIER=1.0, OHEM_MIN_KEPT=446),
    ),
    DATASETS=dict(TRAIN=("synthetic_cityscapes_train",), TEST=("synthetic_cityscapes_val",)),
    # Half-size scenes (128x256), random 64x128 crops (a quarter of the pixels a step), flips.
    INPUT=dict(MIN_SIZE_TRAIN=[128], MIN_SIZE_TEST=128, CROP_PAD=dict(SIZE=[64, 128])),
    DATALOADER=dict(NUM_WORKERS=1),
    SOLVER=dict(OPTIMIZER=dict(NAME="AdamW", BASE_LR=0.005, WEIGHT_DECAY=1e-4),
                LR_SCHEDULER=dict(MAX_ITER=300, WARMUP_ITERS=20),
                CHECKPOINT_PERIOD=100000),  # only model_final
    TEST=dict(VIS_NUM_IMAGES=4),
    SEED=0,
), family="mfaranet")

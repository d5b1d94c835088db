"""ADP-C W18 (HRNetV2-W18-Small-v2, redesigned heads of 64 channels, confidence adaptivity) trained
from scratch on the embedded street scenes, on CPU.

The published W18 ADP-C network unchanged (3,997,635 trainable parameters); only the data and the
schedule are small: whole 128x256 images (half the scenes' size, predictions resized back to
256x512 for scoring), horizontal flips, batch 4, AdamW, plain BatchNorm. CONF_THRE 0.95 instead of
0.998: a network trained for minutes is rarely 99.8% sure, and at 0.998 every exit would compute
nearly every pixel; at 0.95 the later exits skip a real share of them (README: the fractions).

    cd playground/Anytime/HRNet_W18.ADP_C.Tiny.Synthetic
    OMP_NUM_THREADS=2 dl_train --num-gpus 1
    dl_test                              # the four-exit line, GFLOPs and latency per exit
"""
from dl_lib.config import config_from_delta

config = config_from_delta(dict(
    MODEL=dict(
        DEVICE="cpu",
        META_ARCHITECTURE="AnytimeSegmentor",
        BACKBONE=dict(NAME="hrnet_w18_small_v2", NORM="BN"),
        SEM_SEG_HEAD=dict(NUM_CLASSES=19),
        EXIT=dict(TYPE="flex", INTER_CHANNEL=64),
        MASK=dict(USE=True, CONF_THRE=0.95),
    ),
    DATASETS=dict(TRAIN=("synthetic_cityscapes_train",), TEST=("synthetic_cityscapes_val",)),
    INPUT=dict(
        MIN_SIZE_TRAIN=[128], MIN_SIZE_TRAIN_SAMPLING="choice", MAX_SIZE_TRAIN=1024,
        MIN_SIZE_TEST=128, MAX_SIZE_TEST=1024,
        # 64x128 random crops of the half-size scenes: a quarter of the pixels per step
        CROP_PAD=dict(ENABLED=True, SIZE=[64, 128]),
    ),
    DATALOADER=dict(NUM_WORKERS=1),
    SOLVER=dict(
        OPTIMIZER=dict(NAME="AdamW", BASE_LR=0.005, WEIGHT_DECAY=1e-4),
        LR_SCHEDULER=dict(NAME="WarmupPolyLR", MAX_ITER=300, POLY_POWER=0.9, WARMUP_ITERS=20),
        IMS_PER_BATCH=8,
        CHECKPOINT_PERIOD=100000,  # only model_final
    ),
    TEST=dict(EVAL_PERIOD=0, VIS_NUM_IMAGES=4),
    SEED=0,
    LOG_PERIOD=20,
), family="anytime")

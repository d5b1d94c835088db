"""ADP-C W18 (HRNetV2-W18-Small-v2, redesigned heads of 64 channels, confidence adaptivity) trained
from scratch on the embedded street scenes, on CPU.

The published W18 ADP-C network unchanged (3,997,635 trainable parameters); only the data and the
schedule are small: whole scenes at a quarter of their size (64x128; predictions resized back to
256x512 for scoring), horizontal flips, batch 8, AdamW 0.01, 450 iterations (18 epochs of the 200
scenes), plain BatchNorm. CONF_THRE 0.9 instead of 0.998: a network trained for minutes is rarely
99.8% sure (at 0.998 every exit computes nearly every pixel); at 0.9 the convolutions after exits
1 / 2 / 3 compute 66% / 56% / 48% of the pixels.

One run (2026-12-02, 2-core AMD EPYC shared with other jobs, load ~6, 1 thread: 4.3 s per
iteration, 32.5 min of training): mIoU per exit 14.67 / 21.86 / 25.17 / 25.58 (mean 21.82) on
synthetic_cityscapes_val at 0.092 / 0.122 / 0.158 / 0.205 GFLOPs per exit (0.286 at exit 4 with
every pixel computed). Several threads on a loaded machine wait on each other: use 1 there.

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
        MASK=dict(USE=True, CONF_THRE=0.9),
    ),
    DATASETS=dict(TRAIN=("synthetic_cityscapes_train",), TEST=("synthetic_cityscapes_val",)),
    INPUT=dict(
        # whole scenes at a quarter of their size (64x128), horizontal flips only
        MIN_SIZE_TRAIN=[64], MIN_SIZE_TRAIN_SAMPLING="choice", MAX_SIZE_TRAIN=1024,
        MIN_SIZE_TEST=64, MAX_SIZE_TEST=1024,
        CROP_PAD=dict(ENABLED=False),
    ),
    DATALOADER=dict(NUM_WORKERS=1),
    SOLVER=dict(
        OPTIMIZER=dict(NAME="AdamW", BASE_LR=0.01, WEIGHT_DECAY=1e-4),
        LR_SCHEDULER=dict(NAME="WarmupPolyLR", MAX_ITER=450, POLY_POWER=0.9, WARMUP_ITERS=20),
        IMS_PER_BATCH=8,
        CHECKPOINT_PERIOD=100000,  # only model_final
    ),
    TEST=dict(EVAL_PERIOD=0, VIS_NUM_IMAGES=4),
    SEED=0,
    LOG_PERIOD=20,
), family="anytime")

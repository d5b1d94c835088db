"""A narrow CondNet (DeepLabV3+ host, conditional classifier) trained from scratch on the embedded
street scenes, on CPU; ``MODEL.CONDNET.CLASSIFIER plain`` is the same network with a plain 1x1
classifier (the baseline of the comparison in ``playground/CondNet/README.md``).

ResNet-18-V1c-D8 at a quarter width, the sep-ASPP host and classifier at 64 channels: 1,052,281
parameters (plain: 972,006). 300 iterations of 8 random 64x128 crops of the half-size scenes,
AdamW 0.005, scored at 128x256 on the 50 ``synthetic_cityscapes_val`` images. Runs of 2026-12-02
(2-core AMD EPYC shared with other jobs, 1 thread, ~5.5 min of training when the load allowed),
mIoU conditional / plain: seed 0 27.59 / 28.80, seed 1 28.75 / 28.14, seed 2 28.62 / 27.80
(means 28.32 / 28.25: no measurable difference at this size; PyTorch's init of the classifier
projections, before the original's was restored). ``SOLVER.LR_SCHEDULER.MAX_ITER 1000``, seeds
0 / 1 / 2, conditional with the original's init 50.88 / 54.27 / 50.51 (mean 51.89; with PyTorch's
init 53.25), plain 55.36 / 54.08 / 53.80 (mean 54.41): the plain classifier stays ahead, so the
default stays at 300 iterations.

    cd playground/CondNet/DeepLabV3Plus_R18_D8.Tiny.Synthetic
    OMP_NUM_THREADS=1 dl_train --num-gpus 1 SEED 0      # the baseline: add
    dl_test SEED 0 MODEL.WEIGHTS <output>/model_final.pth   # MODEL.CONDNET.CLASSIFIER plain to both
"""
from dl_lib.config import config_from_delta

config = config_from_delta(dict(
    MODEL=dict(
        DEVICE="cpu",
        META_ARCHITECTURE="CondNet",
        # ResNet-18-V1c-D8 at a quarter of the width: deep stem 3->16->16->32, stages 16..128,
        # res4 / res5 dilated 2 / 4 (output stride 8).
        BACKBONE=dict(NAME="resnet18", DEEP_STEM=True, STEM_WIDTH=32, WIDTH=16, OUTPUT_STRIDE=8,
                      NORM="BN"),
        SEM_SEG_HEAD=dict(NUM_CLASSES=19),
        # The sep-ASPP host at 64 channels; dilations for an 8x16 stride-8 map of 64x128 crops.
        CONDNET=dict(HEAD="sep_aspp", CLASSIFIER="conditional", CHANNELS=64,
                     DILATIONS=[1, 2, 4, 6], LOW_LEVEL_CHANNELS=16, AUX_CHANNELS=32, NORM="BN"),
    ),
    DATASETS=dict(TRAIN=("synthetic_cityscapes_train",), TEST=("synthetic_cityscapes_val",)),
    # Half-size scenes (128x256), random 64x128 crops, flips; scored on the half-size scenes.
    INPUT=dict(MIN_SIZE_TRAIN=[128], MIN_SIZE_TRAIN_SAMPLING="choice", MAX_SIZE_TRAIN=1024,
               MIN_SIZE_TEST=128, MAX_SIZE_TEST=1024, CROP_PAD=dict(SIZE=[64, 128])),
    DATALOADER=dict(NUM_WORKERS=1),
    SOLVER=dict(OPTIMIZER=dict(NAME="AdamW", BASE_LR=0.005, WEIGHT_DECAY=1e-4),
                LR_SCHEDULER=dict(NAME="WarmupPolyLR", MAX_ITER=300, WARMUP_ITERS=20),
                IMS_PER_BATCH=8, CHECKPOINT_PERIOD=100000),  # only model_final
    TEST=dict(EVAL_PERIOD=0),
    SEED=0,
    LOG_PERIOD=50,
), family="condnet")

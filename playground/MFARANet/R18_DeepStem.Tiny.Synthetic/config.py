"""A narrow MFARANet trained from scratch on the embedded street scenes, on CPU.

The released network's layout (deep-stem ResNet-18, conv2 of res4/res5 dilated 2/4, both
pyramids, recursive alignment, ASFM, boundary heads) at half the encoder width and a quarter of
the decoder width: 2,951,280 parameters. The authors' losses (fused CE, per branch OHEM CE,
0.3 boundary BCE, 0.1 boundary-attention CE); 600 iterations of 8 random 64x128 crops of the
half-size scenes, AdamW, scored at 256x512 on the 50 ``synthetic_cityscapes_val`` images.
One run (2026-12-02, 2-core AMD EPYC shared with other jobs, 1 thread, ~33% of the cores):
mIoU 47.6 fused; branches 1..4 (strides 4, 8, 16, 32) 44.1 / 41.7 / 35.5 / 26.1; 2.47 s per
iteration (median), 23 min 19 s of training, 475 s of CPU time for training and evaluation.

    cd playground/MFARANet/R18_DeepStem.Tiny.Synthetic
    OMP_NUM_THREADS=1 dl_train --num-gpus 1
    dl_test          # one line: mIoU of branches 1..4, the fused output, their mean
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
                LR_SCHEDULER=dict(MAX_ITER=600, WARMUP_ITERS=20),
                CHECKPOINT_PERIOD=100000),  # only model_final
    TEST=dict(VIS_NUM_IMAGES=4),
    SEED=0,
), family="mfaranet")

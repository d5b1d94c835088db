"""A narrow SegNet pruned with ACoSP at s = 0.5 (ACoSP-2) on the embedded street scenes, on CPU,
then compressed into the smaller dense network it describes.

The original's SegNet layout (VGG-16 encoder, max-unpooling decoder, ``dl_lib.modeling.acosp``) at
1/8 of its width (8, 16, 32, 64, 64 channels), from scratch. Channel masks after each BN (the
corrected placement: a pruned channel is exactly zero, so compression is exact), keep
max(ceil(C / 2), 8) channels per conv. The soft top-k anneals from T = 1 to 1e-3 over 15
"epochs" of 8 iterations, stepped per epoch as the original; at iteration 120 the masks become
fixed 0/1 masks and the network fine-tunes 120 more iterations with them. AdamW 0.005; the logits
at 10x (their own group, no weight decay): with Adam's unit steps they otherwise barely move in
120 iterations. 8 random 64x128 crops of the half-size scenes a step; scored at 128x256 on the 50
``synthetic_cityscapes_val`` images.

    cd playground/ACoSP/SegNet.Tiny.Synthetic
    OMP_NUM_THREADS=1 dl_train --num-gpus 1        # prune + fine-tune, evaluates the masked model
    python ../../../tools/compress.py --weights $OUT/model_final.pth --output $OUT/compressed.pth \
        --size 128 256
    dl_test MODEL.WEIGHTS $OUT/compressed.pth       # the smaller network, same mIoU

($OUT: output/ACoSP/SegNet.Tiny.Synthetic under DL_OUTPUT_ROOT.) Measured numbers are in
``playground/ACoSP/README.md``.
"""
from dl_lib.config import config_from_delta

config = config_from_delta(dict(
    MODEL=dict(
        DEVICE="cpu",
        META_ARCHITECTURE="ACoSPSegNet",
        ACOSP=dict(SEGNET_WIDTHS=[8, 16, 32, 64, 64], HEAD_LR_MULTIPLIER=1.0, AUX_WEIGHT=0.0),
        PRUNING=dict(ENABLED=True, SPARSITY=0.5, PLACEMENT="after_bn", ITERS_PER_EPOCH=8,
                     START_EPOCH=0, END_EPOCH=15, LOGIT_LR_FACTOR=10.0),
        # the conversion removes the logits from the model: DDP must not wait for them
        DDP=dict(FIND_UNUSED_PARAMETERS=True),
    ),
    DATASETS=dict(TRAIN=("synthetic_cityscapes_train",), TEST=("synthetic_cityscapes_val",)),
    # Half-size scenes (128x256), random 64x128 crops, flips.
    INPUT=dict(MIN_SIZE_TRAIN=[128], MIN_SIZE_TEST=128, CROP_PAD=dict(SIZE=[64, 128])),
    DATALOADER=dict(NUM_WORKERS=1),
    SOLVER=dict(IMS_PER_BATCH=8,
                OPTIMIZER=dict(NAME="AdamW", BASE_LR=0.005, WEIGHT_DECAY=1e-4),
                LR_SCHEDULER=dict(MAX_ITER=240, WARMUP_ITERS=10),
                CHECKPOINT_PERIOD=100000),  # only model_final
    SEED=0,
), family=["pruning", "acosp"])

"""``make demo``: a narrow dynamic-routing network trained from scratch on the embedded street
scenes, on CPU, with soft gates and the FLOPs budget on.

Layer16's routing space cut to 8 layers at width 32 (cells 32/64/128/256 channels at strides
4..32, 2.0 M parameters), images at half resolution (128x256, predictions resized back to 256x512
for scoring), batch 8, AdamW, 800 iterations (32 epochs of the 200 training scenes). The budget
loss starts at 40% of training and pulls the expected FLOPs towards 40% of all routes open; by the
end about 20 of the 69 routes are closed per image. One run (2026-12-02, 2-core AMD EPYC without
AVX-512, shared with other jobs, one thread): mIoU 50.2 on synthetic_cityscapes_val, 0.253
GFLOPs per image (original's count; 0.273 corrected) at 128x256, 1.48 s per iteration.
"""
from dl_lib.config import config_from_delta

config = config_from_delta(dict(
    MODEL=dict(
        DEVICE="cpu",
        META_ARCHITECTURE="DynamicRoutingSegmentor",
        BACKBONE=dict(LAYER_NUM=8, INIT_CHANNEL=32, NORM="BN", DROP_PROB=0.0),
        GATE=dict(GATE_ON=True, GATE_INIT_BIAS=1.5),
        SEM_SEG_HEAD=dict(NUM_CLASSES=19, NORM="BN"),
        BUDGET=dict(CONSTRAIN=True, LOSS_WEIGHT=1.0, LOSS_MU=0.4, UNUPDATE_RATE=0.4),
    ),
    DATASETS=dict(TRAIN=("synthetic_cityscapes_train",), TEST=("synthetic_cityscapes_val",)),
    INPUT=dict(
        # whole 128x256 images (half the scenes' size), horizontal flips only
        MIN_SIZE_TRAIN=[128], MIN_SIZE_TRAIN_SAMPLING="choice", MAX_SIZE_TRAIN=1024,
        MIN_SIZE_TEST=128, MAX_SIZE_TEST=1024,
        CROP_PAD=dict(ENABLED=False),
    ),
    DATALOADER=dict(NUM_WORKERS=1),
    SOLVER=dict(
        OPTIMIZER=dict(NAME="AdamW", BASE_LR=0.004, WEIGHT_DECAY=1e-4),
        LR_SCHEDULER=dict(NAME="WarmupPolyLR", MAX_ITER=800, POLY_POWER=0.9, WARMUP_ITERS=20),
        IMS_PER_BATCH=8,
        CHECKPOINT_PERIOD=100000,  # only model_final
    ),
    TEST=dict(EVAL_PERIOD=0, VIS_NUM_IMAGES=4),
    SEED=0,
    LOG_PERIOD=50,
), family="dynamic_routing")

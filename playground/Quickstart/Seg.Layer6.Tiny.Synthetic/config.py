"""``make demo``: a narrow dynamic-routing network trained from scratch on the embedded street
scenes, on CPU, with soft gates and the FLOPs budget on.

Layer16's routing space cut to 6 layers at width 32 (cells 32/64/128/256 channels at strides
4..32, 1.4 M parameters), images at half resolution (128x256, predictions resized back to 256x512
for scoring), batch 8, AdamW, 450 iterations (18 epochs of the 200 training scenes): sized so that
``make demo`` on a fresh clone stays within 10 minutes on 2 cores. The budget loss starts at 40% of
training and pulls the expected FLOPs towards half of all routes open; by the end about 17 of the
49 routes are closed per image. One run (2026-12-02, 2-core AMD EPYC without AVX-512, idle, 2
threads): mIoU 52.5 on synthetic_cityscapes_val, 0.203 GFLOPs per image (original's count; 0.223
corrected) at 128x256, 0.84 s per iteration, 392 s of training and evaluation. ``net.py``'s
Trainer decodes each scene once (the loader worker keeps them) instead of once per epoch.

Tried for speed and rejected (2026-12-02, 1 thread on the loaded 2-core machine, same 450
iterations): MODEL.BACKBONE.STEM_CHANNELS 32 (the stem as narrow as the cells; ~18% less CPU per
step) with 128x192 / 128x224 training crops (~28% / ~21% less) reached only mIoU 42.3 / 43.7.
"""
from dl_lib.config import config_from_delta

config = config_from_delta(dict(
    MODEL=dict(
        DEVICE="cpu",
        META_ARCHITECTURE="DynamicRoutingSegmentor",
        BACKBONE=dict(LAYER_NUM=6, INIT_CHANNEL=32, NORM="BN", DROP_PROB=0.0),
        GATE=dict(GATE_ON=True, GATE_INIT_BIAS=1.5),
        SEM_SEG_HEAD=dict(NUM_CLASSES=19, NORM="BN"),
        BUDGET=dict(CONSTRAIN=True, LOSS_WEIGHT=1.0, LOSS_MU=0.5, UNUPDATE_RATE=0.4),
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
        OPTIMIZER=dict(NAME="AdamW", BASE_LR=0.008, WEIGHT_DECAY=1e-4),
        LR_SCHEDULER=dict(NAME="WarmupPolyLR", MAX_ITER=450, POLY_POWER=0.9, WARMUP_ITERS=20),
        IMS_PER_BATCH=8,
        CHECKPOINT_PERIOD=100000,  # only model_final
    ),
    TEST=dict(EVAL_PERIOD=0, VIS_NUM_IMAGES=4),
    SEED=0,
    LOG_PERIOD=50,
), family="dynamic_routing")

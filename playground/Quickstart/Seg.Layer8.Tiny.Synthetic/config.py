"""The demo: a narrow dynamic-routing network (8 layers, width 16) trained from scratch on the
embedded street scenes, on CPU, with soft gates and the FLOPs budget on."""
from dl_lib.config import config_from_delta

config = config_from_delta(dict(
    MODEL=dict(
        DEVICE="cpu",
        META_ARCHITECTURE="DynamicRoutingSegmentor",
        BACKBONE=dict(LAYER_NUM=8, INIT_CHANNEL=16, NORM="BN", DROP_PROB=0.0),
        GATE=dict(GATE_ON=True, GATE_INIT_BIAS=1.5),
        SEM_SEG_HEAD=dict(NUM_CLASSES=19, NORM="BN"),
        BUDGET=dict(CONSTRAIN=True, LOSS_WEIGHT=0.5, LOSS_MU=0.5, UNUPDATE_RATE=0.4),
    ),
    DATASETS=dict(TRAIN=("synthetic_cityscapes_train",), TEST=("synthetic_cityscapes_val",)),
    INPUT=dict(
        MIN_SIZE_TRAIN=[128], MIN_SIZE_TRAIN_SAMPLING="choice", MAX_SIZE_TRAIN=1024,
        MIN_SIZE_TEST=128, MAX_SIZE_TEST=1024,
        CROP_PAD=dict(ENABLED=False),
    ),
    DATALOADER=dict(NUM_WORKERS=1),
    SOLVER=dict(
        OPTIMIZER=dict(NAME="AdamW", BASE_LR=0.004, WEIGHT_DECAY=1e-4),
        LR_SCHEDULER=dict(NAME="WarmupPolyLR", MAX_ITER=600, POLY_POWER=0.9, WARMUP_ITERS=20),
        IMS_PER_BATCH=8,
        CHECKPOINT_PERIOD=100000,
    ),
    TEST=dict(EVAL_PERIOD=0, VIS_NUM_IMAGES=4),
    SEED=0,
    LOG_PERIOD=50,
), family="dynamic_routing")

"""The original's Cityscapes recipe (reference ``mfaranet.md`` section 3), the base config of the
``playground/MFARANet`` experiments; each playground's ``config.py`` is a short delta on it::

    from dl_lib.config import config_from_delta
    from dl_lib.modeling.mfaranet.recipes import cityscapes_config
    config = config_from_delta(dict(MODEL=dict(MFARANET=dict(BRANCH_ONLY=2))),
                               base=cityscapes_config())

``cityscapes_config()`` *is* ``R18_DeepStem.Cityscapes``: the deep-stem ResNet-18 from the ImageNet
file ``resnet18-deep-inplane128.pth`` on Cityscapes fine train, 200 epochs of 14 images. The loss
weights, OHEM values and the decoder's x10 learning rate are the family's defaults
(``config.py``), which are the original's. Each call returns a new config.
"""
from dl_lib.config import CfgNode, config_from_delta

from .mfaranet import backbone_config

__all__ = ["iterations_per_epoch", "CITYSCAPES_DELTA", "cityscapes_config"]

NUM_GPUS, IMS_PER_GPU = 2, 7  # the authors' 2 GPUs, batch 14 split over them
TRAIN_IMAGES = 2975           # Cityscapes fine train (train+val: 3475)
EPOCHS = 200                  # the training script's default (its CLI overrides the yaml)


def iterations_per_epoch(num_images: int) -> int:
    """Steps of one epoch of the original: a DistributedSampler gives each of the 2 GPUs
    ceil(n / 2) images, its DataLoader drops the last incomplete batch of 7."""
    return -(-num_images // NUM_GPUS) // IMS_PER_GPU


ITERS = iterations_per_epoch(TRAIN_IMAGES)  # 212

CITYSCAPES_DELTA = dict(
    MODEL=dict(
        DEVICE="cuda",
        META_ARCHITECTURE="MFARANet",
        # Relative to the folder dl_train runs in (SFNet's ImageNet backbone, lxtGH/SFSegNets#11);
        # MODEL.PRETRAINED "" trains from scratch.
        PRETRAINED="pretrained_models/resnet18-deep-inplane128.pth",
        # nnSyncBN falls back to BatchNorm at world size 1, so one process trains too.
        BACKBONE=dict(backbone_config("r18_deep_stem"), NORM="nnSyncBN"),
        MFARANET=dict(NORM="nnSyncBN"),
    ),
    # Data: the defaults' Cityscapes fine train / val, tested on the whole 1024x2048 frames.
    INPUT=dict(
        # RandScale U[0.5, 2] of the 1024x2048 frames = a short side drawn in [512, 2048]; the
        # yaml's 1024x2048 crops (the README says 1024x1024), smaller scales padded.
        MIN_SIZE_TRAIN=[512, 2048], MIN_SIZE_TRAIN_SAMPLING="range",
        CROP_PAD=dict(SIZE=[1024, 2048]),
    ),
    SOLVER=dict(
        # SGD (momentum 0.9) with one weight decay for every parameter group, norms included.
        OPTIMIZER=dict(BASE_LR=0.005, WEIGHT_DECAY=5e-4, WEIGHT_DECAY_NORM=5e-4,
                       WEIGHT_DECAY_BIAS=5e-4),
        LR_SCHEDULER=dict(NAME="PolyLR", MAX_ITER=EPOCHS * ITERS),  # power 0.9, per iteration
        IMS_PER_BATCH=NUM_GPUS * IMS_PER_GPU,
        CHECKPOINT_PERIOD=2 * ITERS, CHECKPOINT_MAX_KEEP=2,  # every 2 epochs, the last 2 kept
    ),
    SEED=0,
)


def cityscapes_config() -> CfgNode:
    """Defaults + ``mfaranet`` keys + ``CITYSCAPES_DELTA``: R18 deep stem from ImageNet, 42,400
    iterations (200 epochs x 212) of 14 images (synchronised BN) at 1024x2048 crops, SGD 0.005
    (decoder x10), poly 0.9, OHEM + boundary losses."""
    return config_from_delta(CITYSCAPES_DELTA, source=f"{__name__}.CITYSCAPES_DELTA",
                             family="mfaranet")

"""ADP-C's Cityscapes recipe (HRNet's): the base config of the ``playground/Anytime`` experiments.

Each published setting's ``config.py`` is a short delta on :func:`cityscapes_config` (detectron2's
``Base-*.yaml``)::

    from dl_lib.config import config_from_delta
    from dl_lib.modeling.anytime.recipes import cityscapes_config
    config = config_from_delta(dict(MODEL=dict(EXIT=dict(TYPE="flex"))),
                               base=cityscapes_config("w48"))

``cityscapes_config(network)``: ``AnytimeSegmentor`` on HRNetV2-W48 (``"w48"``) or
W18-Small-v2 (``"w18"``), ImageNet-initialised, EE heads, no masks; the playgrounds choose the
heads (``EXIT.TYPE``) and confidence adaptivity (``MASK.USE``). Values: reference ``anytime.md``
sections 4.2-4.5. Each call returns a new config.
"""
from dl_lib.config import CfgNode, config_from_delta

__all__ = ["NETWORKS", "SHORT_SIDES", "CITYSCAPES_DELTA", "cityscapes_config"]

# ADP-C's two networks: our backbone name, HRNet-Image-Classification's ImageNet file (its
# classifier is dropped on load), the README's RH hidden width.
NETWORKS = {
    "w48": dict(backbone="hrnet_w48", imagenet="hrnetv2_w48_imagenet_pretrained.pth",
                inter_channel=128),
    "w18": dict(backbone="hrnet_w18_small_v2", imagenet="hrnet_w18_small_model_v2.pth",
                inter_channel=64),
}

# Short sides of the 2048x1024 Cityscapes images at the original's scales s = 0.5 + k / 10,
# k = 0..16: long side int(2048 s + 0.5), short side int(long / 2 + 0.5). The scale is drawn on
# the short side, so the long side is one pixel longer than the original's at the 7 scales whose
# long side is odd (1229 -> 1230, ..., 4301 -> 4302).
SHORT_SIDES = [512, 615, 717, 819, 922, 1024, 1127, 1229, 1331, 1434, 1536, 1639, 1741, 1843,
               1946, 2048, 2151]

# What every setting shares, on top of the library defaults and the family's keys (whose
# defaults are the original's too: HRNet's Cityscapes class weights, CONF_THRE 0.998, copy
# aggregation, the learned-bandwidth interpolation).
CITYSCAPES_DELTA = dict(
    MODEL=dict(
        DEVICE="cuda",
        META_ARCHITECTURE="AnytimeSegmentor",
        # The original: RGB / 255, minus the ImageNet mean, divided by its std; the same in our
        # 0-255 RGB convention (mean x 255, std x 255).
        PIXEL_MEAN=[123.675, 116.28, 103.53], PIXEL_STD=[58.395, 57.12, 57.375],
        # nnSyncBN falls back to BatchNorm at world size 1, so one process trains too.
        BACKBONE=dict(NORM="nnSyncBN"),
        SEM_SEG_HEAD=dict(NUM_CLASSES=19, IGNORE_VALUE=255),
        EXIT_LOSS_WEIGHTS=[1.0, 1.0, 1.0, 1.0],  # EE_WEIGHTS (1, 1, 1, 1)
    ),
    DATASETS=dict(TRAIN=("cityscapes_fine_sem_seg_train",), TEST=("cityscapes_fine_sem_seg_val",)),
    INPUT=dict(
        MIN_SIZE_TRAIN=SHORT_SIDES, MIN_SIZE_TRAIN_SAMPLING="choice",
        MAX_SIZE_TRAIN=0,  # no cap: the largest scale is 2151x4302
        # 512x1024 crops; the smallest scale is exactly that size, so nothing is ever padded.
        CROP_PAD=dict(ENABLED=True, SIZE=[512, 1024]),
        RANDOM_FLIP="horizontal",
        MIN_SIZE_TEST=1024, MAX_SIZE_TEST=2048,  # the full 1024x2048 val images
    ),
    SOLVER=dict(
        # Weight decay on every parameter, norms, biases and Lambda included; no warm-up.
        OPTIMIZER=dict(NAME="SGD", BASE_LR=0.01, MOMENTUM=0.9, NESTEROV=False,
                       WEIGHT_DECAY=5e-4, WEIGHT_DECAY_NORM=5e-4, WEIGHT_DECAY_BIAS=5e-4),
        # 484 epochs of int(2975 / 3 / 4) = 247 iterations. The original lowers the rate after
        # each step, so its iteration t >= 1 uses our iteration t - 1's rate.
        LR_SCHEDULER=dict(NAME="PolyLR", MAX_ITER=484 * 247, POLY_POWER=0.9),
        IMS_PER_BATCH=12,  # 3 per GPU x 4
    ),
)


def cityscapes_config(network: str) -> CfgNode:
    """Defaults + ``anytime`` keys + ``CITYSCAPES_DELTA`` + the network (``"w48"`` or ``"w18"``):
    backbone, ImageNet file under ``pretrained_models/`` of the folder ``dl_train`` runs in, RH
    width. EE heads and no masks until a playground says otherwise."""
    if network not in NETWORKS:
        raise ValueError(f"ADP-C network {network!r} is unknown; choose one of {sorted(NETWORKS)}")
    spec = NETWORKS[network]
    cfg = config_from_delta(CITYSCAPES_DELTA, source=f"{__name__}.CITYSCAPES_DELTA",
                            family="anytime")
    return config_from_delta(dict(MODEL=dict(
        # Relative to the folder dl_train runs in; MODEL.PRETRAINED "" trains from scratch.
        PRETRAINED=f"pretrained_models/{spec['imagenet']}",
        BACKBONE=dict(NAME=spec["backbone"]),
        EXIT=dict(INTER_CHANNEL=spec["inter_channel"]),
    )), base=cfg, source=f"{__name__}.NETWORKS[{network!r}]")

"""The original's recipes (reference ``acosp.md`` section 4) as configs: the base of every
``playground/ACoSP`` experiment, whose ``config.py`` is one call::

    from dl_lib.modeling.acosp.recipes import acosp_config
    config = acosp_config("PSPNet50", "Cityscapes", sparsity=0.75)   # PSPNet50.Cityscapes.ACoSP_4

Shared: SGD momentum 0.9 with one weight decay on every parameter (the original's single
``weight_decay``), base lr 0.01 with the head at x10 (PSPNet: ``ppm``/``cls``/``aux``; SegNet
x1), per-iteration poly (power 0.9) or cosine decay without warm-up, ``epochs x images //
batch`` iterations (the loader drops the last incomplete batch), semseg's augmentation
(RandScale, RandRotate +-10 p 0.5, Gaussian blur p 0.5, flip, crop padded with the mean /
ignore: ``INPUT.SEMSEG_AUG``), and the flip-averaged single-scale sliding-window test (long side
= ``base_size``, windows of the test crop every ceil(2/3 crop)). Pruning (``sparsity`` > 0):
masks in the original placement on every conv but the classifiers, temperature 1 -> 1e-3 per
epoch from epoch 0 to the recipe's end epoch, then fixed 0/1 masks to the end. The logits train
in their own group (no weight decay, base lr): the original decayed them and gave the head's
ones x10 by accident (``MODEL.PRUNING.LOGITS_FOLLOW_HOST True`` restores that).
"""
import math
from typing import Dict, Tuple

from dl_lib.config import CfgNode, config_from_delta

from .pspnet import backbone_config

__all__ = ["DATASETS", "RECIPES", "SPARSITIES", "iterations_per_epoch", "acosp_delta",
           "acosp_config", "playground_name"]

# name: train sets, test sets, training images, classes
DATASETS: Dict[str, Tuple[tuple, tuple, int, int]] = {
    "Cityscapes": (("cityscapes_fine_sem_seg_train",), ("cityscapes_fine_sem_seg_val",), 2975, 19),
    "ADE20K": (("ade20k_sem_seg_train",), ("ade20k_sem_seg_val",), 20210, 150),
    # SBD-augmented train_aug (10,582 images), scored on VOC 2012 val.
    "VOC2012": (("voc_2012_sem_seg_train_aug",), ("voc_2012_sem_seg_val",), 10582, 21),
    # The loader maps CamVid's void (11) to 255; the published numbers are on the test split.
    "CamVid": (("camvid_sem_seg_train",), ("camvid_sem_seg_test",), 367, 11),
}

# (model, dataset): crop (h, w), RandScale range, batch, schedule, weight decay, epochs,
# aux weight, pruning end epoch, test (base_size, crop (h, w)).
RECIPES = {
    ("PSPNet50", "Cityscapes"): ((713, 713), (0.5, 2.0), 16, "poly", 1e-4, 200, 0.4, 50,
                                 (2048, (713, 713))),
    ("PSPNet50", "ADE20K"): ((473, 473), (0.5, 2.0), 16, "poly", 1e-4, 100, 0.4, 30,
                             (512, (473, 473))),
    ("PSPNet50", "VOC2012"): ((473, 473), (0.5, 2.0), 16, "poly", 1e-4, 50, 0.4, 20,
                              (512, (473, 473))),
    ("SegNet", "Cityscapes"): ((512, 1024), (0.25, 1.0), 16, "poly", 1e-4, 200, 0.0, 50,
                               (2048, (1024, 2048))),
    # CamVid: the pruning durations 0..450 were studied; 300 is the seeds-1..5 runs' (README).
    ("SegNet", "CamVid"): ((360, 480), (0.25, 1.0), 8, "cosine", 5e-4, 450, 0.0, 300,
                           (480, (360, 480))),
}

# ACoSP-{2, 4, 8, 16}: s = 1 - 1 / ratio.
SPARSITIES = {2: 0.5, 4: 0.75, 8: 0.875, 16: 0.9375}


def iterations_per_epoch(images: int, batch: int) -> int:
    """The original's loader drops the last incomplete batch: ``images // batch``."""
    return images // batch


def playground_name(model: str, dataset: str, ratio: int = 0) -> str:
    """``PSPNet50.Cityscapes`` (dense) or ``PSPNet50.Cityscapes.ACoSP_4``."""
    return f"{model}.{dataset}" + (f".ACoSP_{ratio}" if ratio else "")


def acosp_delta(model: str, dataset: str, sparsity: float = 0.0) -> dict:
    """The config delta of ``model`` ("PSPNet50" / "SegNet") on ``dataset``; ``sparsity`` 0:
    dense, else ACoSP with that per-layer sparsity."""
    if (model, dataset) not in RECIPES:
        raise KeyError(f"No ACoSP recipe for {model} on {dataset}; there are {sorted(RECIPES)}")
    crop, scale, batch, schedule, wd, epochs, aux, end_epoch, (base, test_crop) = \
        RECIPES[(model, dataset)]
    train, test, images, classes = DATASETS[dataset]
    iters = iterations_per_epoch(images, batch)
    # Shorter side base_size capped at base_size: the long side becomes base_size, any aspect.
    short = long_side = base
    stride = [math.ceil(2 * c / 3) for c in test_crop]
    psp = model == "PSPNet50"
    delta = dict(
        MODEL=dict(
            DEVICE="cuda",
            META_ARCHITECTURE="ACoSPPSPNet" if psp else "ACoSPSegNet",
            # Relative to the folder dl_train runs in: semseg's resnet50_v2.pth / torchvision's
            # vgg16 (MODEL.PRETRAINED "" trains from scratch).
            PRETRAINED="pretrained_models/resnet50_v2.pth" if psp else
            "pretrained_models/vgg16-397923af.pth",
            SEM_SEG_HEAD=dict(NUM_CLASSES=classes, IGNORE_VALUE=255),
            ACOSP=dict(AUX_WEIGHT=aux, HEAD_LR_MULTIPLIER=10.0 if psp else 1.0),
            PRUNING=dict(ENABLED=sparsity > 0, SPARSITY=sparsity if sparsity > 0 else 0.5,
                         PLACEMENT="original", START_EPOCH=0, END_EPOCH=end_epoch,
                         ITERS_PER_EPOCH=iters, TEMPERATURE_SCHEDULE="epoch"),
            # The soft -> hard conversion removes the logits: DDP must not wait for them.
            DDP=dict(FIND_UNUSED_PARAMETERS=sparsity > 0),
        ),
        DATASETS=dict(TRAIN=train, TEST=test),
        INPUT=dict(
            SEMSEG_AUG=dict(ENABLED=True, SCALE=list(scale), ROTATE=[-10.0, 10.0],
                            ROTATE_PROB=0.5, BLUR_PROB=0.5, BLUR_KERNEL=5),
            CROP_PAD=dict(ENABLED=True, SIZE=list(crop)), RANDOM_FLIP="horizontal",
            MIN_SIZE_TEST=short, MAX_SIZE_TEST=long_side,
        ),
        SOLVER=dict(
            OPTIMIZER=dict(NAME="SGD", BASE_LR=0.01, MOMENTUM=0.9, WEIGHT_DECAY=wd,
                           WEIGHT_DECAY_NORM=wd, WEIGHT_DECAY_BIAS=wd),
            LR_SCHEDULER=dict(NAME="PolyLR" if schedule == "poly" else "WarmupCosineLR",
                              POLY_POWER=0.9, WARMUP_ITERS=0, MAX_ITER=epochs * iters),
            IMS_PER_BATCH=batch, CHECKPOINT_PERIOD=10 * iters,
        ),
        TEST=dict(AUG=dict(ENABLED=True, MIN_SIZES=[short], MAX_SIZE=long_side, FLIP=True),
                  MODE="slide", SLIDE=dict(CROP_SIZE=list(test_crop), STRIDE=stride)),
    )
    if psp:
        delta["MODEL"]["BACKBONE"] = backbone_config("resnet50")
    if dataset == "CamVid":
        delta["SEED"] = 1  # manual_seed 1 (the README's mean +- std is over seeds 1..5)
    return delta


def acosp_config(model: str, dataset: str, sparsity: float = 0.0) -> CfgNode:
    """Defaults + ``pruning`` and ``acosp`` keys + :func:`acosp_delta`. Each call returns a new
    config."""
    return config_from_delta(acosp_delta(model, dataset, sparsity),
                             source=f"{__name__}.acosp_delta({model!r}, {dataset!r}, {sparsity})",
                             family=["pruning", "acosp"])

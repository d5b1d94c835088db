"""The original's mmseg recipes (reference ``condnet.md`` section 4), the base configs of the
``playground/CondNet`` experiments; each playground's ``config.py`` is a one-line call or a short
delta on one of them::

    from dl_lib.modeling.condnet.recipes import ade20k_config
    config = ade20k_config(depth=101)

``ade20k_config(50)`` *is* ``DeepLabV3Plus_R50_D8.ADE20K`` (``condnet_r50-d8_512x512_160k_ade20k``)
and ``pascal_context_59_config(101)`` *is* ``DeepLabV3Plus_R101_D8.PascalContext59``
(``condnet_r101-d8_headlrx10_lr1e-3_480x480_80k_pascal_context_59``). The network (dilated
ResNet-V1c-D8, the depthwise-separable ASPP host with the conditional classifier, the FCN
auxiliary head on layer 3, CE + 0.2 Dice + 0.4 aux CE) is the family's default
(``dl_lib/modeling/condnet/config.py``). Each call returns a new config.

mmseg values in our keys, and what our keys cannot say:

* **Resize**: mmseg's ``Resize(img_scale, ratio_range=(0.5, 2))`` rescales (keeping the aspect)
  so the image fits in ``r · img_scale``, r ~ U[0.5, 2]. ADE20K's (2048, 512): the short side
  becomes 512 r (the long-side bound binds only past a 4:1 aspect), i.e. a short side drawn in
  [256, 1024] (``MIN_SIZE_TRAIN_SAMPLING "range"``) with the long side at most 4096. Pascal
  Context's (520, 520): the **long** side becomes 520 r in [260, 1040]; our keys draw the short
  side, so [195, 780] with the long side at most 1040 is exact for the 4:3 VOC frames (most of
  them) and close for the others.
* **Crop**: ``RandomCrop(cat_max_ratio=0.75)`` = ``CROP_PAD.SINGLE_CATEGORY_MAX_AREA 0.75``
  (up to 10 draws, as mmseg); smaller images padded with the pixel mean and the ignore label
  (mmseg pads the normalised image with 0, the same pixel).
* **PhotoMetricDistortion** (each step with probability 1/2: brightness ±32, contrast and
  saturation x U[0.5, 1.5], hue ±18) has no exact key: ``COLOR_AUG`` applies, always, a scale
  x U[0.5, 1.5] (= mmseg's "contrast", which multiplies the pixels) and a saturation blend of
  the same range; the additive brightness and the hue shift are not expressed.
* **Optimizer**: mmcv's SGD decays every parameter (norms and biases too) and has no warm-up;
  mmseg's poly ends at ``min_lr`` 1e-4 (``END_LR_FACTOR`` = 1e-4 / BASE_LR). With Pascal
  Context's head x10 group (``'head'`` matches ``decode_head`` and ``auxiliary_head``) mmcv ends
  every group at the same absolute 1e-4; our factor ends the heads at 10 x that (1e-3).
* **Batch**: 16 images (the issue's; the README's "4 GPUs x 2" would be 8, and the released
  checkpoints' GPU count is not recorded, section 4) with synchronised BN (``nnSyncBN``, plain
  BN in one process).
* **Test**: ADE20K whole images, short side 512, long side at most 2048; Pascal Context images
  rescaled to a long side of 520 and scored with 480x480 windows every 320 pixels.
"""
from dl_lib.config import CfgNode, config_from_delta

__all__ = ["PRETRAINED", "ADE20K_DELTA", "PASCAL_CONTEXT_59_DELTA", "model_delta",
           "ade20k_config", "pascal_context_59_config"]

# open-mmlab's ImageNet ResNet-V1c files (mmcv's open-mmlab://resnet{50,101}_v1c), relative to
# the folder dl_train runs in; MODEL.PRETRAINED "" trains from scratch.
PRETRAINED = {50: "pretrained_models/resnet50_v1c-2cccc1ad.pth",
              101: "pretrained_models/resnet101_v1c-e67eebb6.pth"}

# mmseg's Normalize(mean, std, to_rgb=True) = the library's RGB defaults, written out here.
_PIXELS = dict(PIXEL_MEAN=[123.675, 116.28, 103.53], PIXEL_STD=[58.395, 57.12, 57.375])
_COLOR = dict(ENABLED=True, BRIGHTNESS=0.5, CONTRAST=0.0, SATURATION=0.5)
_BATCH = 16


def _solver(base_lr, weight_decay, max_iter, period):
    return dict(
        OPTIMIZER=dict(NAME="SGD", BASE_LR=base_lr, MOMENTUM=0.9, WEIGHT_DECAY=weight_decay,
                       WEIGHT_DECAY_NORM=weight_decay, WEIGHT_DECAY_BIAS=weight_decay),
        LR_SCHEDULER=dict(NAME="PolyLR", MAX_ITER=max_iter, POLY_POWER=0.9, WARMUP_ITERS=0,
                          END_LR_FACTOR=1e-4 / base_lr),
        IMS_PER_BATCH=_BATCH, CHECKPOINT_PERIOD=period, AMP=dict(ENABLED=False),
    )


# condnet_r{50,101}-d8_512x512_160k_ade20k.py on configs/_base_/datasets/ade20k.py and
# schedules/schedule_160k.py.
ADE20K_DELTA = dict(
    MODEL=dict(DEVICE="cuda", **_PIXELS),
    DATASETS=dict(TRAIN=("ade20k_sem_seg_train",), TEST=("ade20k_sem_seg_val",)),
    INPUT=dict(MIN_SIZE_TRAIN=[256, 1024], MIN_SIZE_TRAIN_SAMPLING="range", MAX_SIZE_TRAIN=4096,
               MIN_SIZE_TEST=512, MAX_SIZE_TEST=2048,
               CROP_PAD=dict(ENABLED=True, SIZE=[512, 512], SINGLE_CATEGORY_MAX_AREA=0.75),
               RANDOM_FLIP="horizontal", COLOR_AUG=_COLOR),
    SOLVER=_solver(0.01, 5e-4, 160_000, 16_000),
    TEST=dict(MODE="whole", EVAL_PERIOD=16_000, AUG=dict(ENABLED=False)),
    SEED=0,
)

# condnet_r{50,101}-d8_headlrx10_lr1e-3_480x480_80k_pascal_context_59.py on
# datasets/pascal_context_59.py and schedules/schedule_80k.py.
PASCAL_CONTEXT_59_DELTA = dict(
    MODEL=dict(DEVICE="cuda", **_PIXELS),
    DATASETS=dict(TRAIN=("pascal_context_59_sem_seg_train",),
                  TEST=("pascal_context_59_sem_seg_val",)),
    INPUT=dict(MIN_SIZE_TRAIN=[195, 780], MIN_SIZE_TRAIN_SAMPLING="range", MAX_SIZE_TRAIN=1040,
               MIN_SIZE_TEST=520, MAX_SIZE_TEST=520,
               CROP_PAD=dict(ENABLED=True, SIZE=[480, 480], SINGLE_CATEGORY_MAX_AREA=0.75),
               RANDOM_FLIP="horizontal", COLOR_AUG=_COLOR),
    SOLVER=_solver(1e-3, 1e-4, 80_000, 8_000),
    TEST=dict(MODE="slide", SLIDE=dict(CROP_SIZE=[480, 480], STRIDE=[320, 320]),
              EVAL_PERIOD=8_000, AUG=dict(ENABLED=False)),
    SEED=0,
)


def model_delta(depth: int, num_classes: int, head_lr_multiplier: float = 1.0) -> dict:
    """``MODEL`` delta of condnet_r{depth}-d8: ResNetV1c-D8 from open-mmlab's ImageNet file, the
    sep-ASPP host with the conditional classifier, the aux FCN head, synchronised BN."""
    from .condnet import backbone_config

    return dict(META_ARCHITECTURE="CondNet", PRETRAINED=PRETRAINED[depth], WEIGHTS="",
                BACKBONE=dict(backbone_config(depth), NORM="nnSyncBN"),
                SEM_SEG_HEAD=dict(NUM_CLASSES=num_classes, IGNORE_VALUE=255),
                CONDNET=dict(HEAD="sep_aspp", CLASSIFIER="conditional", NORM="nnSyncBN",
                             HEAD_LR_MULTIPLIER=head_lr_multiplier))


def _config(delta: dict, model: dict, source: str) -> CfgNode:
    cfg = config_from_delta(delta, source=source, family="condnet")
    return config_from_delta(dict(MODEL=model), base=cfg, source=source)


def ade20k_config(depth: int = 50) -> CfgNode:
    """``condnet_r{depth}-d8_512x512_160k_ade20k``: 160k iterations of 16 images at 512x512 crops,
    SGD 0.01 (momentum 0.9, weight decay 5e-4 on every parameter), poly 0.9 to 1e-4, 150 classes
    (label 0 ignored: the catalog's reduce-zero-label train ids)."""
    return _config(ADE20K_DELTA, model_delta(depth, 150),
                   f"{__name__}.ade20k_config({depth})")


def pascal_context_59_config(depth: int = 101) -> CfgNode:
    """``condnet_r{depth}-d8_headlrx10_lr1e-3_480x480_80k_pascal_context_59``: 80k iterations of
    16 images at 480x480 crops, SGD 1e-3 with both heads at x10 (momentum 0.9, weight decay 1e-4),
    poly 0.9 to 1e-4, 59 classes (background ignored), 480x480 sliding windows at test."""
    return _config(PASCAL_CONTEXT_59_DELTA, model_delta(depth, 59, head_lr_multiplier=10.0),
                   f"{__name__}.pascal_context_59_config({depth})")

"""HRNetV2-W18-Small-v2 segmentation without exits (ADP-C's "w18" backbone, plain HRNet head).

Layer1 of 2 Bottlenecks, then 1 / 3 / 2 modules of 2 BasicBlocks per branch at widths 18, 36, 72,
144; the branches upsampled to 1/4 and concatenated (270 channels), a 1x1 conv-BN-ReLU and the
classifier (``HRNetV2Head``); ImageNet-initialised backbone. 3,939,579 parameters, 71.6 GFLOPs
per 1024x2048 image (2^30 MACs, ``TEST.COST_CONVENTIONS ["hrnet"]``; the original counter's W18 RH
exit 4, 73.23, less its three early-exit heads, 1.65). The ADP-C reference publishes no mIoU for
it without exits (ADP-C W18 reaches 77.02 at its last exit).

Recipe (ADP-C's, which is HRNet's Cityscapes recipe): 484 epochs of 247 iterations = 119,548
iterations of 12 images (3 per GPU x 4, synchronised BN) of 512x1024 crops from images resized to
a random scale 0.5, 0.6, .., 2.1 of the 2048-pixel long side, horizontal flips; SGD 0.01, momentum
0.9, weight decay 5e-4 on every parameter (norms and biases too), poly decay (power 0.9) per
iteration, no warm-up; evaluation on the full 1024x2048 val images.

What our config cannot say exactly:
- the scale is drawn on the short side (the MIN_SIZE_TRAIN choice list is the original's short
  sides); the long side is then 2 x short, one pixel longer than the original's for the 7 scales
  whose long side is odd (1229 -> 1230, 1843 -> 1844, ..., 4301 -> 4302);
- the original's loss weights the 19 classes (HRNet's Cityscapes class weights, 0.8373 ..
  1.0507); ``SemanticSegmentor`` has no class-weight option, so this trains with unweighted
  cross-entropy;
- the original lowers the learning rate after each step, so its iteration t >= 1 uses our
  iteration t - 1's rate (one iteration of lag in 119,548);
- labels are resized with cv2 INTER_NEAREST_EXACT (the original: INTER_NEAREST). Crops never
  need padding (the smallest scale is exactly 512x1024), so the pad values do not matter.

The ImageNet file is HRNet-Image-Classification's ``hrnet_w18_small_model_v2.pth``; its
classifier (``incre_modules``, ``downsamp_modules``, ``final_layer``, ``classifier``) is dropped
on load. Put it under ``pretrained_models/`` of the folder you run in, or pass its path:

    cd playground/Anytime/HRNet_W18
    dl_train --num-gpus 4 MODEL.PRETRAINED /path/to/hrnet_w18_small_model_v2.pth
    dl_test --num-gpus 4 TEST.COST_CONVENTIONS "['hrnet']"   # the run's last checkpoint
"""
from dl_lib.config import config_from_delta

BRANCHES = ["hr0", "hr1", "hr2", "hr3"]
# Short sides of the 2048x1024 Cityscapes images at the original's scales s = 0.5 + k / 10,
# k = 0..16: long side int(2048 s + 0.5), short side int(long / 2 + 0.5).
SHORT_SIDES = [512, 615, 717, 819, 922, 1024, 1127, 1229, 1331, 1434, 1536, 1639, 1741, 1843,
               1946, 2048, 2151]

config = config_from_delta(dict(
    MODEL=dict(
        DEVICE="cuda",
        META_ARCHITECTURE="SemanticSegmentor",
        # Relative to the folder dl_train runs in; MODEL.PRETRAINED "" trains from scratch.
        PRETRAINED="pretrained_models/hrnet_w18_small_model_v2.pth",
        # nnSyncBN falls back to BatchNorm at world size 1, so one process trains too.
        BACKBONE=dict(NAME="hrnet_w18_small_v2", NORM="nnSyncBN", OUT_FEATURES=BRANCHES),
        SEM_SEG_HEAD=dict(NAME="HRNetV2Head", IN_FEATURES=BRANCHES, NORM="nnSyncBN"),
    ),
    INPUT=dict(
        MIN_SIZE_TRAIN=SHORT_SIDES, MIN_SIZE_TRAIN_SAMPLING="choice",
        MAX_SIZE_TRAIN=0,  # no cap: the largest scale is 2151x4302
        CROP_PAD=dict(SIZE=[512, 1024]),
    ),
    SOLVER=dict(
        OPTIMIZER=dict(BASE_LR=0.01, MOMENTUM=0.9, WEIGHT_DECAY=5e-4, WEIGHT_DECAY_NORM=5e-4,
                       WEIGHT_DECAY_BIAS=5e-4),
        LR_SCHEDULER=dict(NAME="PolyLR", MAX_ITER=484 * 247, POLY_POWER=0.9),
        IMS_PER_BATCH=12,
    ),
))

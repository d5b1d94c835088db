"""CondNet on DeepLabV3+ (sep-ASPP host), ResNet-101-V1c-D8 from ImageNet, Pascal Context 59
classes: the original's ``condnet_r101-d8_headlrx10_lr1e-3_480x480_80k_pascal_context_59``
(reference ``condnet.md`` section 4).

78,139,777 parameters (75,764,806 at inference). Recipe: 80k iterations of 16 images
(synchronised BN) of 480x480 crops (at most 75% one class) of images rescaled to a long side in
[260, 1040], flips, photometric jitter; SGD 1e-3 with both heads at x10
(``MODEL.CONDNET.HEAD_LR_MULTIPLIER``), momentum 0.9, weight decay 1e-4 on every parameter, poly
0.9 (to 1e-4 for the backbone); CE + 0.2 Dice + 0.4 aux CE; mIoU every 8k iterations with
480x480 windows every 320 pixels on images of long side 520.
Published (val, the original's README): mIoU 54.29 single scale, 55.74 multi-scale + flip.
What our keys cannot say: ``dl_lib/modeling/condnet/recipes.py``.

    cd playground/CondNet/DeepLabV3Plus_R101_D8.PascalContext59
    dl_train --num-gpus 4 MODEL.PRETRAINED /path/to/resnet101_v1c-e67eebb6.pth
    dl_test --num-gpus 4 MODEL.WEIGHTS <file>                       # slide 480 / 320
    dl_test --num-gpus 4 MODEL.WEIGHTS <file> TEST.AUG.ENABLED True \
        TEST.AUG.MIN_SIZES "[195, 292, 390, 488, 585, 682]" TEST.AUG.MAX_SIZE 910  # ms + flip
"""
from dl_lib.modeling.condnet.recipes import pascal_context_59_config

# The recipe is this experiment (dl_lib/modeling/condnet/recipes.py).
config = pascal_context_59_config(depth=101)

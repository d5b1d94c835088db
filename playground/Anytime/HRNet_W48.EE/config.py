"""EE: HRNetV2-W48 with four exits, each the original HRNet head (1x1 conv-BN-ReLU at full width,
then the classifier) on its stage's branches upsampled to 1/4 and concatenated.

66,074,796 trainable parameters. Published (Cityscapes val, single scale, 1024x2048), mIoU per
exit and mean: 34.33 / 59.01 / 76.90 / 80.43, 62.67. GFLOPs per exit (2^30 MACs): 48.4 / 113.5 /
388.9 / 722.2 by the original's own counter and ours; its README's 521.6 / 717.9 / 914.2 / 1110.5
cannot be produced by that counter. Recipe: ``dl_lib/modeling/anytime/recipes.py`` (484 epochs x
247 = 119,548 iterations of 12 512x1024 crops, SGD 0.01, poly 0.9, weight decay 5e-4, class-
weighted cross-entropy at every exit, ImageNet-initialised backbone).

    cd playground/Anytime/HRNet_W48.EE
    dl_train --num-gpus 4 MODEL.PRETRAINED /path/to/hrnetv2_w48_imagenet_pretrained.pth
    dl_test --num-gpus 8 MODEL.WEIGHTS <released .pth>   # the authors' file, converted on load
"""
from dl_lib.config import config_from_delta
from dl_lib.modeling.anytime.recipes import cityscapes_config

config = config_from_delta(dict(MODEL=dict(EXIT=dict(TYPE="original"))),
                           base=cityscapes_config("w48"))

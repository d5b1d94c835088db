"""CondNet on DeepLabV3+ (sep-ASPP host), ResNet-50-V1c-D8 from ImageNet, ADE20K 150 classes: the
original's ``condnet_r50-d8_512x512_160k_ade20k`` (reference ``condnet.md`` section 4).

83,166,098 parameters (80,767,740 at inference: the auxiliary FCN head only trains). Recipe: 160k
iterations of 16 images (synchronised BN) of 512x512 crops (at most 75% one class) of images
rescaled to a short side drawn in [256, 1024], flips, photometric jitter; SGD 0.01, momentum 0.9,
weight decay 5e-4 on every parameter, poly 0.9 to 1e-4 per iteration; losses CE + 0.2 Dice
(guidance) + 0.4 aux CE; mIoU every 16k iterations on whole images (short side 512).
Published (val, the original's README): mIoU 43.68 single scale, 44.30 multi-scale + flip.
What our keys cannot say: ``dl_lib/modeling/condnet/recipes.py``.

Put ``resnet50_v1c-2cccc1ad.pth`` (open-mmlab) under ``pretrained_models/`` of this folder, or:

    cd playground/CondNet/DeepLabV3Plus_R50_D8.ADE20K
    dl_train --num-gpus 8 MODEL.PRETRAINED /path/to/resnet50_v1c-2cccc1ad.pth
    dl_test --num-gpus 8 MODEL.WEIGHTS /path/to/condnet_r50-d8_512x512_160k_ade20k.pth \
        MODEL.CONDNET.KERNEL_LAYOUT original                       # a released checkpoint
    dl_test --num-gpus 8 MODEL.WEIGHTS <file> TEST.AUG.ENABLED True \
        TEST.AUG.MIN_SIZES "[256, 384, 512, 640, 768, 896]" TEST.AUG.MAX_SIZE 3584   # ms + flip
"""
from dl_lib.modeling.condnet.recipes import ade20k_config

# The recipe is this experiment (dl_lib/modeling/condnet/recipes.py).
config = ade20k_config(depth=50)

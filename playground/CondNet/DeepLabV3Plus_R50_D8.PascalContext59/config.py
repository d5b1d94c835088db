"""CondNet on DeepLabV3+ (sep-ASPP host), ResNet-50-V1c-D8 from ImageNet, Pascal Context 59
classes: the original's ``condnet_r50-d8_headlrx10_lr1e-3_480x480_80k_pascal_context_59``.

59,147,649 parameters (56,772,678 at inference). The recipe of
``DeepLabV3Plus_R101_D8.PascalContext59`` with the 50-layer backbone. The original ships the
config but publishes no result for it.

    cd playground/CondNet/DeepLabV3Plus_R50_D8.PascalContext59
    dl_train --num-gpus 4 MODEL.PRETRAINED /path/to/resnet50_v1c-2cccc1ad.pth
"""
from dl_lib.modeling.condnet.recipes import pascal_context_59_config

config = pascal_context_59_config(depth=50)

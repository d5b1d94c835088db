"""CondNet on DeepLabV3+ (sep-ASPP host), ResNet-101-V1c-D8 from ImageNet, ADE20K 150 classes: the
original's ``condnet_r101-d8_512x512_160k_ade20k`` (reference ``condnet.md`` section 4).

102,158,226 parameters (99,759,868 at inference). The recipe of ``DeepLabV3Plus_R50_D8.ADE20K``
with the 101-layer backbone (``open-mmlab://resnet101_v1c``).
Published (val, the original's README): mIoU 45.64 single scale, 47.12 multi-scale + flip.

    cd playground/CondNet/DeepLabV3Plus_R101_D8.ADE20K
    dl_train --num-gpus 8 MODEL.PRETRAINED /path/to/resnet101_v1c-e67eebb6.pth
    dl_test --num-gpus 8 MODEL.WEIGHTS <file>
"""
from dl_lib.modeling.condnet.recipes import ade20k_config

config = ade20k_config(depth=101)

"""MFARANet on the deep-stem ResNet-50 (``resnet50-deep.pth``), the R18 recipe otherwise.

25,672,720 parameters (25,672,204 at inference, without the boundary heads), 147.15 "GFLOPs" at
1024x1024 by the authors' counter. The authors list the
variant but publish no mIoU and no checkpoint for it, so this playground has no expected result.

    cd playground/MFARANet/R50_DeepStem.Cityscapes
    dl_train --num-gpus 2 MODEL.PRETRAINED /path/to/resnet50-deep.pth
"""
from dl_lib.config import config_from_delta
from dl_lib.modeling.mfaranet import backbone_config
from dl_lib.modeling.mfaranet.recipes import cityscapes_config

config = config_from_delta(dict(MODEL=dict(
    PRETRAINED="pretrained_models/resnet50-deep.pth",
    BACKBONE=dict(backbone_config("r50_deep_stem"), NORM="nnSyncBN"),
)), base=cityscapes_config())

"""EE + RH: HRNetV2-W48 with four exits, exits 1-3 the redesigned heads (pooled encoder-decoders of
128 channels with 3 / 2 / 1 poolings), exit 4 the original HRNet head.

66,062,700 trainable parameters. Published (Cityscapes val, single scale, 1024x2048), mIoU per
exit and mean: 44.61 / 60.19 / 76.64 / 79.89, 65.33 at 41.9 / 105.6 / 368.0 / 701.3 GFLOPs (2^30
MACs; ours: 41.92 / 105.56 / 368.03 / 701.35). Recipe: ``dl_lib/modeling/anytime/recipes.py``.

    cd playground/Anytime/HRNet_W48.RH
    dl_train --num-gpus 4 MODEL.PRETRAINED /path/to/hrnetv2_w48_imagenet_pretrained.pth
    dl_test --num-gpus 8 MODEL.WEIGHTS <released .pth>   # the authors' file, converted on load
"""
from dl_lib.config import config_from_delta
from dl_lib.modeling.anytime.recipes import cityscapes_config

config = config_from_delta(dict(MODEL=dict(EXIT=dict(TYPE="flex"))),
                           base=cityscapes_config("w48"))

"""EE + RH: HRNetV2-W18-Small-v2 with the redesigned exits 1-3 (64 channels, 3 / 2 / 1 poolings).

3,997,492 trainable parameters. The original publishes no mIoU for this setting; 23.69 / 34.74 /
49.87 / 73.23 GFLOPs per exit at 1024x2048 (2^30 MACs, the original's counter and ours). Recipe:
``dl_lib/modeling/anytime/recipes.py`` (that of W48).

    cd playground/Anytime/HRNet_W18.RH
    dl_train --num-gpus 4 MODEL.PRETRAINED /path/to/hrnet_w18_small_model_v2.pth
    dl_test --num-gpus 8 MODEL.WEIGHTS <checkpoint>
"""
from dl_lib.config import config_from_delta
from dl_lib.modeling.anytime.recipes import cityscapes_config

config = config_from_delta(dict(MODEL=dict(EXIT=dict(TYPE="flex"))),
                           base=cityscapes_config("w18"))

"""EE: HRNetV2-W18-Small-v2 (ADP-C's "w18") with four exits, each the original HRNet head.

4,033,556 trainable parameters. The original publishes no numbers for this setting; GFLOPs
per exit at 1024x2048 (2^30 MACs, by its counter and ours): ``playground/Anytime/README.md``.
Recipe: ``dl_lib/modeling/anytime/recipes.py`` (that of W48).

    cd playground/Anytime/HRNet_W18.EE
    dl_train --num-gpus 4 MODEL.PRETRAINED /path/to/hrnet_w18_small_model_v2.pth
    dl_test --num-gpus 8 MODEL.WEIGHTS <checkpoint>
"""
from dl_lib.config import config_from_delta
from dl_lib.modeling.anytime.recipes import cityscapes_config

config = config_from_delta(dict(MODEL=dict(EXIT=dict(TYPE="original"))),
                           base=cityscapes_config("w18"))

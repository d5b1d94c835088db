"""ADP-C (EE + RH + CA): HRNetV2-W18-Small-v2 with the redesigned exits and confidence adaptivity
at CONF_THRE 0.998 (see ``HRNet_W48.ADP_C``).

3,997,635 trainable parameters. Published (Cityscapes val, single scale, 1024x2048), mIoU per
exit and mean: 40.83 / 48.19 / 68.26 / 77.02, 58.57; no GFLOPs published (without masks: 23.69 /
34.74 / 49.87 / 73.23). The authors released this checkpoint. Recipe:
``dl_lib/modeling/anytime/recipes.py`` (that of W48).

    cd playground/Anytime/HRNet_W18.ADP_C
    dl_train --num-gpus 4 MODEL.PRETRAINED /path/to/hrnet_w18_small_model_v2.pth
    dl_test --num-gpus 8 MODEL.WEIGHTS <released .pth>   # the authors' file, converted on load
"""
from dl_lib.config import config_from_delta
from dl_lib.modeling.anytime.recipes import cityscapes_config

config = config_from_delta(dict(MODEL=dict(EXIT=dict(TYPE="flex"),
                                           MASK=dict(USE=True, CONF_THRE=0.998))),
                           base=cityscapes_config("w18"))

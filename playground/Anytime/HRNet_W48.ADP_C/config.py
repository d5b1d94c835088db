"""ADP-C (EE + RH + CA): HRNet-W48 with the redesigned exits, and after each exit the following
convolutions compute only the pixels whose prediction is not yet confident (max softmax
probability <= 0.998); confident pixels keep the previous exit's logits (copy aggregation) and
their features are filled by the learned-bandwidth interpolation (per-layer ``Lambda``).

66,062,998 trainable parameters. Published (Cityscapes val, single scale, 1024x2048), mIoU per
exit and mean: 44.34 / 60.13 / 76.82 / 81.31, 65.65 at 41.9 / 93.9 / 259.3 / 387.1 GFLOPs (2^30
MACs, masked convolutions at the fraction computed; 44.4% fewer than HRNet-W48's 696.2). Ours
skips those pixels for real (``masked_conv2d``). Recipe: ``dl_lib/modeling/anytime/recipes.py``.

    cd playground/Anytime/HRNet_W48.ADP_C
    dl_train --num-gpus 4 MODEL.PRETRAINED /path/to/hrnetv2_w48_imagenet_pretrained.pth
    dl_test --num-gpus 8 MODEL.WEIGHTS <released .pth>   # the authors' file, converted on load
"""
from dl_lib.config import config_from_delta
from dl_lib.modeling.anytime.recipes import cityscapes_config

config = config_from_delta(dict(MODEL=dict(EXIT=dict(TYPE="flex"),
                                           MASK=dict(USE=True, CONF_THRE=0.998))),
                           base=cityscapes_config("w48"))

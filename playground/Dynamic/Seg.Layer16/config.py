"""Dynamic-Raw, Layer16, from scratch on Cityscapes fine (the original's ``Seg.Layer16``).

Every route has a soft gate and no FLOPs budget is applied. Recipe: 190k iterations of batch 8
(over all processes, synchronised BN) of 768x768 crops from images whose shorter side is one of
512..2048, horizontal flips; SGD 0.05 with 1000 warm-up iterations and poly decay (power 0.9),
gradients clipped at norm 5; precise BN before the final evaluation on the 1024x2048 val images.
Published (val, single scale): 76.1 mIoU at 119.5 GFLOPs (paper), 76.7 / 114.9 (original code).

    cd playground/Dynamic/Seg.Layer16 && dl_train --num-gpus 4
    dl_test --num-gpus 8 MODEL.WEIGHTS <released checkpoint>
"""
from dl_lib.modeling.dynamic_routing.recipes import cityscapes_config

# The recipe is this experiment (dl_lib/modeling/dynamic_routing/recipes.py).
config = cityscapes_config()

"""Dynamic-Raw, Layer33 (33 layers of cells), from the ImageNet-pretrained "Layer33-Fix"
backbone (the original's ``Seg.Layer33.ImageNet``).

As ``Seg.Layer16.ImageNet`` with 33 layers (129 cells). Published (val, single scale): 79.2 mIoU
at 242.3 GFLOPs (paper), 79.4 / 243.1 (original code).

The original read its weights from a fixed /data path. Pass the released file instead:

    cd playground/Dynamic/Seg.Layer33.ImageNet
    dl_train --num-gpus 4 MODEL.WEIGHTS /path/to/Dynamic-L33B4-A74-convert-seg.pth
    dl_test --num-gpus 8 MODEL.WEIGHTS <released checkpoint>
"""
from dl_lib.config import config_from_delta
from dl_lib.modeling.dynamic_routing.recipes import cityscapes_config

# MODEL.WEIGHTS stays empty: pass the released Dynamic-L33B4-A74-convert-seg.pth (above).
config = config_from_delta(dict(
    # CELL_NUM_LIST: the default [2, 3, 4] + [4] * 30 is the original's for 33 layers.
    MODEL=dict(BACKBONE=dict(LAYER_NUM=33)),
    SOLVER=dict(OPTIMIZER=dict(BASE_LR=0.02, GATE_LR_MULTI=2.5)),
), base=cityscapes_config())

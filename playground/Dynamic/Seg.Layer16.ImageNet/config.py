"""Dynamic-Raw, Layer16, from the ImageNet-pretrained "Layer16-Fix" backbone (the original's
``Seg.Layer16.ImageNet``).

As ``Seg.Layer16`` but SGD 0.02, with the gate networks' learning rate x 2.5. Published (val,
single scale): 78.6 mIoU at 119.4 GFLOPs (paper), 78.8 / 117.8 (original code).

The original read its weights from a fixed /data path. Pass the released file instead:

    cd playground/Dynamic/Seg.Layer16.ImageNet
    dl_train --num-gpus 4 MODEL.WEIGHTS /path/to/Dynamic-L16B4-A73-convert-seg.pth
    dl_test --num-gpus 8 MODEL.WEIGHTS <released checkpoint>
"""
from dl_lib.config import config_from_delta
from dl_lib.modeling.dynamic_routing.recipes import cityscapes_config

# MODEL.WEIGHTS stays empty: pass the released Dynamic-L16B4-A73-convert-seg.pth (above).
config = config_from_delta(dict(
    SOLVER=dict(OPTIMIZER=dict(BASE_LR=0.02, GATE_LR_MULTI=2.5)),
), base=cityscapes_config())

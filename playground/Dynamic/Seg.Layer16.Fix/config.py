"""Network-Fix, Layer16, from scratch: the supernet without gates, every route open (the
"common network" baseline; ``GATE_ON False`` as the original's author advised, issue #32).

As ``Seg.Layer16`` without the gate networks (15,261,843 parameters instead of 17,784,968). The
original released no playground for it; by its counter it costs about 101.2 GFLOPs at
1024x2048 (118.1 of the gated supernet with every route open, less its gates).

    cd playground/Dynamic/Seg.Layer16.Fix && dl_train --num-gpus 4
    dl_test --num-gpus 8 MODEL.WEIGHTS <checkpoint>
"""
from dl_lib.config import config_from_delta
from dl_lib.modeling.dynamic_routing.recipes import cityscapes_config

config = config_from_delta(dict(MODEL=dict(GATE=dict(GATE_ON=False))), base=cityscapes_config())

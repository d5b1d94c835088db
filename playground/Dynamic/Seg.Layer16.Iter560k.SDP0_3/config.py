"""Dynamic-Raw, Layer16, from scratch, long schedule with scheduled drop path 0.3 (the
original's ``Seg.Layer16.Iter560k.SDP0_3``).

As ``Seg.Layer16`` for 560k iterations (a checkpoint every 10k); in training the cell operation of
layer l (of L) is dropped per image with probability 0.3 * (l+1)/L * iteration/MAX_ITER.
Published (val, single scale): 78.3 mIoU at 113.3 GFLOPs (paper), 78.1 / 114.2 (original code).

    cd playground/Dynamic/Seg.Layer16.Iter560k.SDP0_3 && dl_train --num-gpus 4
    dl_test --num-gpus 8 MODEL.WEIGHTS <released checkpoint>
"""
from dl_lib.config import config_from_delta
from dl_lib.modeling.dynamic_routing.recipes import cityscapes_config

config = config_from_delta(dict(
    MODEL=dict(BACKBONE=dict(DROP_PROB=0.3)),
    SOLVER=dict(LR_SCHEDULER=dict(MAX_ITER=560000), CHECKPOINT_PERIOD=10000),
), base=cityscapes_config())

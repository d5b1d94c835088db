"""Dynamic-A, Layer16 with small gates and a FLOPs budget, from scratch (the original's
``Seg.Layer16.SmallGate.Dynamic_A``).

As ``Seg.Layer16`` with the gate networks on 4x down-sized cell inputs and, from 40% of training
on (ramped in over 2%), the budget loss 0.8 * (expected FLOPs / FLOPS_ALL - 0.1)^2. No precise BN
(the original's config left it off). Published (val, single scale): 72.8 mIoU at 44.9 GFLOPs
(paper), 73.9 / 52.5 (original code).

    cd playground/Dynamic/Seg.Layer16.SmallGate.Dynamic_A && dl_train --num-gpus 4
    dl_test --num-gpus 8 MODEL.WEIGHTS <released checkpoint>
"""
from dl_lib.config import config_from_delta
from dl_lib.modeling.dynamic_routing.recipes import small_gate_budget_config

config = config_from_delta(dict(MODEL=dict(BUDGET=dict(LOSS_WEIGHT=0.8, LOSS_MU=0.1))),
                           base=small_gate_budget_config())

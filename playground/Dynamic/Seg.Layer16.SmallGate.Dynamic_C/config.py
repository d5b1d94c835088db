"""Dynamic-C (the original's ``Seg.Layer16.SmallGate.Dynamic_C``): Dynamic-B aiming at 20% of
the routing space's FLOPs, the budget loss 0.5 * (expected FLOPs / FLOPS_ALL - 0.2)^2.

Published (val, single scale): 74.6 mIoU at 66.6 GFLOPs (paper), 74.8 / 59.8 (original code).

    cd playground/Dynamic/Seg.Layer16.SmallGate.Dynamic_C && dl_train --num-gpus 4
    dl_test --num-gpus 8 MODEL.WEIGHTS <released checkpoint>
"""
from dl_lib.config import config_from_delta
from dl_lib.modeling.dynamic_routing.recipes import small_gate_budget_config

config = config_from_delta(dict(MODEL=dict(BUDGET=dict(LOSS_WEIGHT=0.5, LOSS_MU=0.2))),
                           base=small_gate_budget_config())

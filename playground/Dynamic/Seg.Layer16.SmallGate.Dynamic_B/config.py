"""Dynamic-B (the original's ``Seg.Layer16.SmallGate.Dynamic_B``): Dynamic-A with a lighter
budget loss, 0.5 * (expected FLOPs / FLOPS_ALL - 0.1)^2 instead of 0.8 * (...)^2.

Published (val, single scale): 73.8 mIoU at 58.7 GFLOPs (paper), 74.3 / 58.9 (original code).

    cd playground/Dynamic/Seg.Layer16.SmallGate.Dynamic_B && dl_train --num-gpus 4
    dl_test --num-gpus 8 MODEL.WEIGHTS <released checkpoint>
"""
from dl_lib.config import config_from_delta
from dl_lib.modeling.dynamic_routing.recipes import small_gate_budget_config

config = config_from_delta(dict(MODEL=dict(BUDGET=dict(LOSS_WEIGHT=0.5, LOSS_MU=0.1))),
                           base=small_gate_budget_config())

"""The "pruned" MFARANet: only the subgraph branch 2 needs (``MODEL.MFARANET.BRANCH_ONLY 2``), to
evaluate and deploy the released full weights as a really smaller network.

It loads the whole model's checkpoint (12,997,264 parameters; the unused heads, pyramid paths and
grids are not built) and outputs branch 2 of the full model on the same weights, at 87.33 GMAC
instead of 109.07 per 1024x1024 image. The authors' "pruned" model ran the whole network and
returned branch 2. Published (README, same weights): mIoU 77.9 at 1024x2048 and 77.7 with
1024x1024 windows (val), 77.0 / 76.8 (test server, the train + val file).

    cd playground/MFARANet/R18_DeepStem.Branch2
    dl_test --num-gpus 2 MODEL.WEIGHTS /path/to/<released>_200_200.pth

Training here trains branch 2 alone (its OHEM CE), not the authors' recipe: train
``R18_DeepStem.Cityscapes`` and evaluate its weights here.
"""
from dl_lib.config import config_from_delta
from dl_lib.modeling.mfaranet.recipes import cityscapes_config

config = config_from_delta(dict(MODEL=dict(MFARANET=dict(BRANCH_ONLY=2))),
                           base=cityscapes_config())

"""Config keys of the ``mfaranet`` family (MFARANet, Multi-Level Feature Aggregation and Recursive
Alignment Network, arXiv 2402.02286). The backbone is the library's ResNet: a playground sets
``MODEL.BACKBONE`` to the deep-stem layout (``dl_lib.modeling.mfaranet.backbone_config``)."""
from dl_lib.config import CfgNode, register_family_config


@register_family_config("mfaranet")
def add_mfaranet_config(cfg: CfgNode) -> None:
    cfg.MODEL.MFARANET = CfgNode()
    # Width of every decoder feature (the original's fam_dim).
    cfg.MODEL.MFARANET.DECODER_CHANNELS = 128
    # Decoder norm after each conv; "" = the BN-free copy the authors count FLOPs and FPS on.
    cfg.MODEL.MFARANET.NORM = "BN"
    # Branches (1 = stride 4 .. 4 = stride 32) the ASFM attention fuses (the original's
    # Branch_Choose); one branch: no attention, the output is that branch's scores.
    cfg.MODEL.MFARANET.FUSED_BRANCHES = [1, 2, 3, 4]
    # Dropout2d after the stem (before the max-pool) and after res2..res5 (Dropout_Rate_CNN).
    cfg.MODEL.MFARANET.STAGE_DROPOUT = [0.0, 0.0, 0.0, 0.0, 0.0]
    # Element-wise dropout inside every ASFM attention head (between its ReLU and last conv).
    cfg.MODEL.MFARANET.ATTENTION_DROPOUT = 0.5
    # Per-branch 1x1 boundary logits (training only; the released checkpoints hold them).
    cfg.MODEL.MFARANET.BOUNDARY_HEADS = True
    # 0: the whole network (four branches + ASFM). k in 1..4: build and run only what branch k
    # needs (2 = the "pruned" MFARANet: ~20% fewer MACs); it loads the whole model's weights.
    cfg.MODEL.MFARANET.BRANCH_ONLY = 0

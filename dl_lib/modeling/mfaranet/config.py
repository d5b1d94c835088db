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
    # What predict_logits returns at input size: "all" = the four branches and the fused output
    # (dl_test scores each), "fused" = the fused output alone, as the original's real-time
    # forward (the branches stay at stride 4 and are not upsampled: four fewer full-size
    # bilinear resizes; `dl_bench MODEL.MFARANET.PREDICT fused`).
    cfg.MODEL.MFARANET.PREDICT = "all"
    # --- training losses (reference section 2; dl_lib/modeling/mfaranet/losses.py) ---
    # Branch OHEM: pixels whose label probability is at most this are kept (the original: 0.7).
    cfg.MODEL.MFARANET.OHEM_THRESHOLD = 0.7
    # ... raised so that at least this many pixels of a process's batch are kept (fewer valid
    # pixels: plain cross-entropy).
    cfg.MODEL.MFARANET.OHEM_MIN_KEPT = 100000
    # Weight of each branch's class-balanced boundary BCE (0.3).
    cfg.MODEL.MFARANET.BOUNDARY_LOSS_WEIGHT = 0.3
    # Weight of each branch's cross-entropy on the pixels its boundary head marks (0.1).
    cfg.MODEL.MFARANET.BOUNDARY_ATTENTION_LOSS_WEIGHT = 0.1
    # A pixel enters that cross-entropy when its raw boundary logit (not the sigmoid) exceeds this.
    cfg.MODEL.MFARANET.BOUNDARY_ATTENTION_THRESHOLD = 0.8
    # Boundary targets: pixels whose KxK window of labels holds another value (the original: 5).
    cfg.MODEL.MFARANET.BOUNDARY_KERNEL = 5
    # Learning-rate factor of everything but the backbone (the original: x10 on the decoder).
    cfg.MODEL.MFARANET.HEAD_LR_MULTIPLIER = 10.0

"""Config keys of the ``acosp`` family (ACoSP, auto-compressing subset pruning, arXiv 2201.11103):
the PSPNet and SegNet of the original (reference ``acosp.md`` section 1). The pruning keys are the
``pruning`` family's (``MODEL.PRUNING.*``); an ACoSP playground names both:
``family=["pruning", "acosp"]`` (what ``dl_lib.modeling.acosp.recipes`` does)."""
from dl_lib.config import CfgNode, register_family_config


@register_family_config("acosp")
def add_acosp_config(cfg: CfgNode) -> None:
    cfg.MODEL.ACOSP = CfgNode()
    # Pyramid pooling bins of the PSPNet head (the original: 1, 2, 3, 6).
    cfg.MODEL.ACOSP.PPM_BINS = [1, 2, 3, 6]
    # Channels of each PPM branch; 0 = the backbone's res5 channels / number of bins (512 for R50).
    cfg.MODEL.ACOSP.PPM_CHANNELS = 0
    # Channels of the 3x3 fusion conv after the PPM concat (the original's cls.0: 512).
    cfg.MODEL.ACOSP.HEAD_CHANNELS = 512
    # Channels of the auxiliary head's 3x3 conv on res4 (the original's aux.0: 256).
    cfg.MODEL.ACOSP.AUX_CHANNELS = 256
    # Weight of the auxiliary loss (0.4); 0 = no auxiliary head is built (SegNet has none).
    cfg.MODEL.ACOSP.AUX_WEIGHT = 0.4
    # Dropout2d before both classifiers of the PSPNet head.
    cfg.MODEL.ACOSP.DROPOUT = 0.1
    # Learning-rate factor of everything outside the backbone/encoder (PSPNet 10, SegNet 1).
    cfg.MODEL.ACOSP.HEAD_LR_MULTIPLIER = 10.0
    # SegNet: output channels of the five VGG-16 encoder stages (narrower for CPU variants).
    cfg.MODEL.ACOSP.SEGNET_WIDTHS = [64, 128, 256, 512, 512]
    # SegNet: keep the original's BN + ReLU after the last (class-score) conv, as its checkpoints.
    cfg.MODEL.ACOSP.SEGNET_FINAL_BN_RELU = True
    # --- the original's training augmentation (semseg's transforms; ACoSPTrainer's loader) ---
    cfg.INPUT.SEMSEG_AUG = CfgNode()
    # True: RandScale -> RandRotate -> blur -> flip -> crop/pad replaces INPUT's resize/crop list.
    cfg.INPUT.SEMSEG_AUG.ENABLED = False
    # Scale factor range of each image (relative; Cityscapes PSPNet [0.5, 2.0], SegNet [0.25, 1.0]).
    cfg.INPUT.SEMSEG_AUG.SCALE = [0.5, 2.0]
    # Rotation range in degrees, applied with ROTATE_PROB (image padded with the mean, labels ignore).
    cfg.INPUT.SEMSEG_AUG.ROTATE = [-10.0, 10.0]
    cfg.INPUT.SEMSEG_AUG.ROTATE_PROB = 0.5
    # Gaussian blur (BLUR_KERNEL x BLUR_KERNEL) with this probability.
    cfg.INPUT.SEMSEG_AUG.BLUR_PROB = 0.5
    cfg.INPUT.SEMSEG_AUG.BLUR_KERNEL = 5

"""Config keys of the ``condnet`` family (CondNet, conditional classifier, IEEE SPL 2021). The
backbone is the library's ResNet as mmseg's ResNetV1c-D8: a playground sets ``MODEL.BACKBONE`` to
``dl_lib.modeling.condnet.backbone_config(50)`` (or 101)."""
from dl_lib.config import CfgNode, register_family_config


@register_family_config("condnet")
def add_condnet_config(cfg: CfgNode) -> None:
    cfg.MODEL.CONDNET = CfgNode()
    # Host of the classifier: "sep_aspp" (DeepLabV3+, the shipped configs), "aspp" or "fcn".
    cfg.MODEL.CONDNET.HEAD = "sep_aspp"
    # Classifier: "conditional" (CondNet) or "plain" (a global 1x1 conv, the baseline).
    cfg.MODEL.CONDNET.CLASSIFIER = "conditional"
    # Backbone feature the host reads (the original: layer4 = res5).
    cfg.MODEL.CONDNET.IN_FEATURE = "res5"
    # Width of the host's features, the classifier's C (the original: 512).
    cfg.MODEL.CONDNET.CHANNELS = 512
    # ASPP dilations; the first one (1) is a 1x1 branch (the original: 1, 12, 24, 36).
    cfg.MODEL.CONDNET.DILATIONS = [1, 12, 24, 36]
    # sep_aspp: the stride-4 low-level backbone feature (res2).
    cfg.MODEL.CONDNET.LOW_LEVEL_FEATURE = "res2"
    # sep_aspp: width of its 1x1 projection (the original: 48).
    cfg.MODEL.CONDNET.LOW_LEVEL_CHANNELS = 48
    # fcn host: number of 3x3 convs (mmseg's FCNHead: 2).
    cfg.MODEL.CONDNET.FCN_NUM_CONVS = 2
    # fcn host: concatenate the input and fuse it with a 3x3 conv before the classifier.
    cfg.MODEL.CONDNET.FCN_CONCAT_INPUT = True
    # Norm of every host conv ("" = no norm, convs get biases).
    cfg.MODEL.CONDNET.NORM = "BN"
    # Kernel layout of the generator: "clean" (class k from centre k) or "original" (released).
    cfg.MODEL.CONDNET.KERNEL_LAYOUT = "clean"
    # Number of dynamic 1x1 layers (the original: 1; later ones are KxK after a ReLU).
    cfg.MODEL.CONDNET.NUM_COND_LAYERS = 1
    # Generated biases in the dynamic layers (the original: True).
    cfg.MODEL.CONDNET.COND_LAYER_WITH_BIAS = True
    # Dropout2d on the head features before the classifier (the original: 0.1).
    cfg.MODEL.CONDNET.DROPOUT = 0.1
    # FCN auxiliary head on res4 (training only; counted in the parameters, not in eval MACs).
    cfg.MODEL.CONDNET.AUX_HEAD = True
    # Backbone feature of the auxiliary head (res4 = mmseg's layer3).
    cfg.MODEL.CONDNET.AUX_IN_FEATURE = "res4"
    # Width of the auxiliary head's 3x3 conv (256).
    cfg.MODEL.CONDNET.AUX_CHANNELS = 256
    # --- losses (reference section 3; dl_lib/modeling/condnet/losses.py) ---
    # Weight of the cross-entropy on the conditional logits (1.0).
    cfg.MODEL.CONDNET.SEG_LOSS_WEIGHT = 1.0
    # Weight of mmseg's Dice loss on the guidance logits (0.2; 0 = off).
    cfg.MODEL.CONDNET.DICE_LOSS_WEIGHT = 0.2
    # Smoothing term of that Dice loss (the original: 1e-5).
    cfg.MODEL.CONDNET.DICE_SMOOTH = 1e-5
    # Weight of the auxiliary head's cross-entropy (0.4).
    cfg.MODEL.CONDNET.AUX_LOSS_WEIGHT = 0.4
    # OHEM on the main CE: probability threshold (< 0 = off, 0 = the min_kept top-loss pixels).
    cfg.MODEL.CONDNET.OHEM_THRESH = -1.0
    # OHEM: pixels kept at least, per image (mmseg's min_kept).
    cfg.MODEL.CONDNET.OHEM_MIN_KEPT = 100000
    # Learning-rate factor of everything but the backbone (Pascal Context recipes: 10).
    cfg.MODEL.CONDNET.HEAD_LR_MULTIPLIER = 1.0

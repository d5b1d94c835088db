"""Config keys of the ``anytime`` family (ADP-C, "Anytime Dense Prediction with Confidence
Adaptivity", ICLR 2022). ``EXIT.*`` and ``MASK.*`` are the original's top-level keys, here under
``MODEL``; the backbone is ``MODEL.BACKBONE.NAME hrnet_w48`` / ``hrnet_w18_small_v2``."""
from dl_lib.config import CfgNode, register_family_config

# HRNet-Semantic-Segmentation's Cityscapes class weights (train ids 0..18), ADP-C's loss weights.
CITYSCAPES_CLASS_WEIGHTS = [0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786,
                            1.0023, 0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529,
                            1.0507]


@register_family_config("anytime")
def add_anytime_config(cfg: CfgNode) -> None:
    cfg.MODEL.EXIT = CfgNode()
    # Heads of exits 1-3: "original" (EE: 1x1 conv-BN-ReLU + classifier at full width) or "flex"
    # (RH: pooled encoder-decoders of INTER_CHANNEL channels, 3/2/1 poolings). Exit 4 is always
    # "original".
    cfg.MODEL.EXIT.TYPE = "original"
    # Hidden width of the "flex" heads (the original's default 64; its README uses 128 for W48).
    cfg.MODEL.EXIT.INTER_CHANNEL = 64
    # Kernel of every exit's classifier (1 or 3).
    cfg.MODEL.EXIT.FINAL_CONV_KERNEL = 1
    # Run only up to this exit (1-based, the original's stopK; -1 or 0 = all): an anytime
    # deployment that stops early computes nothing after it. `dl_test --exit K` sets it.
    cfg.MODEL.EXIT.STOP = -1

    cfg.MODEL.MASK = CfgNode()
    # Confidence adaptivity: after each exit, the following convolutions compute only the pixels
    # whose (aggregated) prediction is not confident yet.
    cfg.MODEL.MASK.USE = False
    # A pixel is computed where its max softmax probability is <= this (criterion conf_thre).
    cfg.MODEL.MASK.CONF_THRE = 0.998
    # "conf_thre" or "entropy_thre" (computed where the entropy is >= ENTROPY_THRE).
    cfg.MODEL.MASK.CRIT = "conf_thre"
    cfg.MODEL.MASK.ENTROPY_THRE = 0.0
    # "copy": an exit's logits at confident pixels are the previous exit's; "none": its own.
    cfg.MODEL.MASK.AGGR = "copy"
    # Confident outputs of a masked convolution: "rbf" (the original's learned-bandwidth Gaussian
    # of the computed neighbours, normalised by the whole kernel; released weights need it),
    # "normalized" (divided by the kernel mass on computed pixels: no collapse to 0 inside
    # confident regions; retrain), "none" (0).
    cfg.MODEL.MASK.INTERPOLATION = "rbf"
    # Masks at lower resolutions: "nearest" (the original's top-left sampling, which can drop
    # uncertain pixels) or "any" (computed if any child pixel is).
    cfg.MODEL.MASK.RESIZE = "nearest"

    cfg.MODEL.ANYTIME = CfgNode()
    # Cross-entropy class weights of every exit's loss ([] = unweighted).
    cfg.MODEL.ANYTIME.CLASS_WEIGHTS = list(CITYSCAPES_CLASS_WEIGHTS)
    # Record per-exit FLOPs and latency in eval outputs ("flops", "exit_ms"); costs a device
    # sync per exit.
    cfg.MODEL.ANYTIME.REPORT_EXITS = True

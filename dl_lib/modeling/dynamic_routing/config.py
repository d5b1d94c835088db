"""Config keys of the ``dynamic_routing`` family (Learning Dynamic Routing for Semantic
Segmentation, CVPR 2020). Names and defaults follow the original's configs; the keys for what the
original hard-coded (warm-up length, skip threshold) and for what it lacked (forced routes, the
inference skip mode) are new."""
from dl_lib.config import CfgNode, register_family_config


@register_family_config("dynamic_routing")
def add_dynamic_routing_config(cfg: CfgNode) -> None:
    b = cfg.MODEL.BACKBONE
    # Operations summed inside every cell (the original's choices; both are always used).
    b.CELL_TYPE = ["sep_conv_3x3", "skip_connect"]
    # Number of layers of cells after the init cell (Layer16: 16, Layer33: 33).
    b.LAYER_NUM = 16
    # Cells (active scales, stride 4 upwards) per layer; the first LAYER_NUM entries are used.
    b.CELL_NUM_LIST = [2, 3, 4] + [4] * 30
    # Width of the stride-4 cells; a cell at stride 4*2^s has INIT_CHANNEL * 2^s channels.
    b.INIT_CHANNEL = 64
    # Largest cell stride (32: scales 1/4 .. 1/32); batches are padded to a multiple of it.
    b.MAX_STRIDE = 32
    # Separable (depthwise + pointwise) stem convolutions after the first one (all experiments).
    b.SEPT_STEM = True
    # Width of stem_1 and stem_2 (the original fixes 64 whatever INIT_CHANNEL is). The CPU demo
    # (INIT_CHANNEL 32) uses 32: its training step at 128x256 is ~18% cheaper than with 64.
    b.STEM_CHANNELS = 64
    # Scheduled drop path of the cell operation: drop rate DROP_PROB * (layer+1)/L * progress.
    b.DROP_PROB = 0.0

    cfg.MODEL.GATE = CfgNode()
    # Soft conditional gates max(0, tanh(.)) per cell; False = the "Fix" network (all routes open).
    cfg.MODEL.GATE.GATE_ON = True
    # Bias of every gate's last convolution at initialisation (tanh(1.5) = 0.905: routes open).
    cfg.MODEL.GATE.GATE_INIT_BIAS = 1.5
    # Gate network on a 4x bilinear down-sized cell input (Dynamic-A/B/C; same parameters).
    cfg.MODEL.GATE.SMALL_GATE = False
    # A gate at or below this is closed; a cell whose gates sum below it passes its input on.
    cfg.MODEL.GATE.SKIP_THRESHOLD = 1e-4
    # Inference: "subbatch" runs each cell on the images that need it, "per_image" runs the
    # images one by one, "dense" computes every route and multiplies closed ones by 0 (reference).
    # per_image is the default: ~9% faster than subbatch on a mixed batch of 4 at 512x1024 on CPU
    # (gathering the sub-batches costs more than batching gains; benchmarks/README.md).
    cfg.MODEL.GATE.SKIP_MODE = "per_image"
    # Inference: run a cell fed only by closed routes on zeros, as the original (True; BN biases
    # make its output non-zero), or skip it with its gates (False: the rule, cheaper).
    cfg.MODEL.GATE.RUN_ZERO_FED_CELLS = False
    # Inference only: every gate forced to this value (< 0: off), e.g. 1.0 opens every route.
    cfg.MODEL.GATE.FIXED_VALUE = -1.0
    # Inference only: JSON file {"<layer>.<cell>" or "init": {"keep": g, "up": g, "down": g}}
    # forcing those cells' gates ("" = off); dl_lib.modeling.dynamic_routing.routes writes one.
    cfg.MODEL.GATE.ROUTES_FILE = ""

    cfg.MODEL.BUDGET = CfgNode()
    # Add the FLOPs budget loss LOSS_WEIGHT * warm * (expected / FLOPS_ALL - LOSS_MU)^2.
    cfg.MODEL.BUDGET.CONSTRAIN = False
    cfg.MODEL.BUDGET.LOSS_WEIGHT = 0.0
    # Target fraction of FLOPS_ALL.
    cfg.MODEL.BUDGET.LOSS_MU = 0.0
    # Expected MFLOPs of the whole routing space; <= 0: derived per batch from its actual size
    # (all routes open), so the ratio is right at any crop. The original's 26300 is Layer16 at 768².
    cfg.MODEL.BUDGET.FLOPS_ALL = 0.0
    # Fraction of training before the budget loss starts.
    cfg.MODEL.BUDGET.UNUPDATE_RATE = 0.4
    # Ramp the budget loss in linearly over WARM_UP_RATE of training after it starts.
    cfg.MODEL.BUDGET.WARM_UP = True
    cfg.MODEL.BUDGET.WARM_UP_RATE = 0.02

    # Learning-rate multiplier of the gate networks' parameters (0 or 1: none).
    cfg.SOLVER.OPTIMIZER.GATE_LR_MULTI = 0.0

"""Library defaults for semantic segmentation.

Key names follow the DynamicRouting / detectron2 configs that users of this field already know.
A playground ``config.py`` holds only what differs from these (see ``dl_lib.config.config_from_delta``).
Core keys are declared here; a method family declares its own in ``add_<family>_config(cfg)``
(``dl_lib/modeling/<family>/config.py``, see ``dl_lib.config.families``). An unknown key in a
delta is an error.
"""
from fvcore.common.config import CfgNode as _FvCfgNode


class CfgNode(_FvCfgNode):
    """fvcore's CfgNode; errors for unknown keys and wrong types are raised by
    ``dl_lib.config.merge_delta`` / ``merge_opts`` with the closest valid keys."""


_C = CfgNode()
_C.VERSION = 1

# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
_C.MODEL = CfgNode()
_C.MODEL.DEVICE = "cpu"
# Path (or iopath URI) of weights to initialise from. Loads the model only, never the iteration.
_C.MODEL.WEIGHTS = ""
# dl_test / --eval-only stop when MODEL.WEIGHTS lacks a model tensor or holds one with another
# shape (a half-random network would be scored); False loads what fits and logs the rest.
_C.MODEL.WEIGHTS_STRICT = True
# Backbone ImageNet weights (path or URI) for a fresh training run, in a layout the backbone's
# convert_pretrained maps (torchvision / deep-stem ResNet, ...); loaded before MODEL.WEIGHTS,
# ignored on --resume. Stops when less than half of the backbone's tensors match.
_C.MODEL.PRETRAINED = ""
# Images are read as RGB uint8; normalisation happens inside the model, (x - mean) / std.
_C.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
_C.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
# Data-parallel wrapper options. Dynamic networks (routing, exits, gates) skip parameters per
# iteration, which needs find_unused_parameters=True.
_C.MODEL.DDP = CfgNode()
_C.MODEL.DDP.FIND_UNUSED_PARAMETERS = False
_C.MODEL.DDP.BROADCAST_BUFFERS = False
# --- modeling (baseline segmentor) ---------------------------------------------------------
# Class in dl_lib.modeling.META_ARCH_REGISTRY that dl_lib.modeling.build_model instantiates.
_C.MODEL.META_ARCHITECTURE = "SemanticSegmentor"

_C.MODEL.BACKBONE = CfgNode()
_C.MODEL.BACKBONE.NAME = "resnet18"
_C.MODEL.BACKBONE.NORM = "BN"
_C.MODEL.BACKBONE.FREEZE_AT = 0
_C.MODEL.BACKBONE.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
# Deep stem (three 3x3 convs) as in ResNet-C / PSPNet / MFARANet.
_C.MODEL.BACKBONE.DEEP_STEM = False
# Dilate the last stages to keep output stride 8 or 16 (32 = no dilation).
_C.MODEL.BACKBONE.OUTPUT_STRIDE = 32
# Dilation of each block's conv2 in res2..res5, strides kept (stride 32); MFARANet [1, 1, 2, 4].
_C.MODEL.BACKBONE.STAGE_DILATIONS = [1, 1, 1, 1]
# --- modeling (baseline segmentor) ---
# ResNet channels of the stem and res2 (64 = torchvision); each later stage doubles. Narrower is faster.
_C.MODEL.BACKBONE.WIDTH = 64
# ResNet stem output channels (0 = WIDTH); 128 for the PSPNet / MFARANet deep-stem ImageNet files.
_C.MODEL.BACKBONE.STEM_WIDTH = 0

_C.MODEL.SEM_SEG_HEAD = CfgNode()
_C.MODEL.SEM_SEG_HEAD.NAME = "FPNHead"
_C.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
_C.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 19
_C.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
_C.MODEL.SEM_SEG_HEAD.CONVS_DIM = 128
_C.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4
_C.MODEL.SEM_SEG_HEAD.NORM = "BN"
_C.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0
# Loss weight of each exit (cheapest first) for models whose forward_logits returns several exits
# (anytime exits, MFARANet branches); empty = 1.0 each. Its length must equal the number of exits.
_C.MODEL.EXIT_LOSS_WEIGHTS = []

# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------
_C.INPUT = CfgNode()
_C.INPUT.FORMAT = "RGB"
# Shortest-edge sizes for training: a list to choose from ("choice") or [min, max] ("range").
_C.INPUT.MIN_SIZE_TRAIN = [1024]
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
_C.INPUT.MAX_SIZE_TRAIN = 4096
_C.INPUT.MIN_SIZE_TEST = 1024
_C.INPUT.MAX_SIZE_TEST = 2048
# Random crop to SIZE = [h, w]; images smaller than that are padded with the pixel mean and the
# labels with the ignore value.
_C.INPUT.CROP_PAD = CfgNode()
_C.INPUT.CROP_PAD.ENABLED = True
_C.INPUT.CROP_PAD.SIZE = [768, 768]
# DeepLab-style crop: resample (up to 10 times) while one category covers more than this share.
_C.INPUT.CROP_PAD.SINGLE_CATEGORY_MAX_AREA = 1.0
_C.INPUT.RANDOM_FLIP = "horizontal"
# Photometric jitter (brightness, contrast, saturation), off by default.
_C.INPUT.COLOR_AUG = CfgNode()
_C.INPUT.COLOR_AUG.ENABLED = False
_C.INPUT.COLOR_AUG.BRIGHTNESS = 0.2
_C.INPUT.COLOR_AUG.CONTRAST = 0.2
_C.INPUT.COLOR_AUG.SATURATION = 0.2
# [h, w] at which static FLOPs are counted (DynamicRouting's convention).
_C.INPUT.FIX_SIZE_FOR_FLOPS = [1024, 2048]

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
_C.DATASETS = CfgNode()
_C.DATASETS.TRAIN = ("cityscapes_fine_sem_seg_train",)
_C.DATASETS.TEST = ("cityscapes_fine_sem_seg_val",)
# Label values: "sample" checks each mask as the mapper reads it (a value outside 0..NUM_CLASSES-1
# and IGNORE_VALUE stops, naming the file); "all" also reads every training mask once before
# training starts; "none" checks nothing (a bad value then fails deep in the loss, unnamed).
_C.DATASETS.CHECK_LABELS = "sample"

_C.DATALOADER = CfgNode()
_C.DATALOADER.NUM_WORKERS = 2
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"

# ---------------------------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------------------------
_C.SOLVER = CfgNode()
_C.SOLVER.OPTIMIZER = CfgNode()
_C.SOLVER.OPTIMIZER.NAME = "SGD"
_C.SOLVER.OPTIMIZER.BASE_LR = 0.01
_C.SOLVER.OPTIMIZER.MOMENTUM = 0.9
_C.SOLVER.OPTIMIZER.NESTEROV = False
_C.SOLVER.OPTIMIZER.WEIGHT_DECAY = 1e-4
# Decay for normalisation-layer parameters and for biases (DynamicRouting: 0 and 1e-4).
_C.SOLVER.OPTIMIZER.WEIGHT_DECAY_NORM = 0.0
_C.SOLVER.OPTIMIZER.WEIGHT_DECAY_BIAS = 1e-4
_C.SOLVER.OPTIMIZER.BIAS_LR_FACTOR = 1.0
_C.SOLVER.OPTIMIZER.BETAS = [0.9, 0.999]
_C.SOLVER.OPTIMIZER.EPS = 1e-8

_C.SOLVER.LR_SCHEDULER = CfgNode()
# One of: PolyLR, WarmupPolyLR, WarmupCosineLR, WarmupMultiStepLR.
_C.SOLVER.LR_SCHEDULER.NAME = "WarmupPolyLR"
_C.SOLVER.LR_SCHEDULER.MAX_ITER = 40000
_C.SOLVER.LR_SCHEDULER.POLY_POWER = 0.9
_C.SOLVER.LR_SCHEDULER.STEPS = []
_C.SOLVER.LR_SCHEDULER.GAMMA = 0.1
_C.SOLVER.LR_SCHEDULER.WARMUP_ITERS = 0
_C.SOLVER.LR_SCHEDULER.WARMUP_FACTOR = 0.001
_C.SOLVER.LR_SCHEDULER.WARMUP_METHOD = "linear"
# LR at the end of the schedule, as a fraction of BASE_LR (cosine and poly).
_C.SOLVER.LR_SCHEDULER.END_LR_FACTOR = 0.0

# Global batch size over all processes (detectron2 semantics).
_C.SOLVER.IMS_PER_BATCH = 8
_C.SOLVER.CHECKPOINT_PERIOD = 5000
# Number of periodic checkpoints kept (model_final is always kept).
_C.SOLVER.CHECKPOINT_MAX_KEEP = 3
_C.SOLVER.GRAD_CLIP = 0.0  # max L2 norm of all gradients; 0 disables clipping
_C.SOLVER.AMP = CfgNode()
_C.SOLVER.AMP.ENABLED = False
_C.SOLVER.AMP.DTYPE = "float16"

# ---------------------------------------------------------------------------------------------
# Test
# ---------------------------------------------------------------------------------------------
_C.TEST = CfgNode()
# Evaluate every EVAL_PERIOD iterations (0: only at the end of training).
_C.TEST.EVAL_PERIOD = 0
# Images per process in one test batch (dl_lib.data.build_test_loader); the model pads them.
_C.TEST.IMS_PER_BATCH = 1
# Multi-scale (+ flip) inference, dl_lib.modeling.test_time: softmax averaged over the scales
# (shorter side MIN_SIZES, longer side <= MAX_SIZE, from the original size) and their flips.
_C.TEST.AUG = CfgNode()
_C.TEST.AUG.ENABLED = False
_C.TEST.AUG.MIN_SIZES = [512, 768, 1024, 1280, 1536, 1792]
_C.TEST.AUG.MAX_SIZE = 4096
_C.TEST.AUG.FLIP = True
# "whole": the model sees the whole (resized) image; "slide": overlapping CROP_SIZE windows every
# STRIDE pixels, logits averaged where they overlap (mmsegmentation's slide), for images larger
# than the training crop. Combines with TEST.AUG (windows slide at each scale).
_C.TEST.MODE = "whole"
_C.TEST.SLIDE = CfgNode()
_C.TEST.SLIDE.CROP_SIZE = [768, 768]
_C.TEST.SLIDE.STRIDE = [512, 512]
_C.TEST.PRECISE_BN = CfgNode()
_C.TEST.PRECISE_BN.ENABLED = False
_C.TEST.PRECISE_BN.NUM_ITER = 200
# Write image | ground truth | prediction panels for this many images after evaluation.
_C.TEST.VIS_NUM_IMAGES = 0
# During training, TensorBoard images (image | prediction over it | ground truth) of this many
# test images at every evaluation (dl_lib.engine.tensorboard); 0 = none.
_C.TEST.VIS_IMAGES = 2
# Executed cost per image counted while the model runs, in these dl_lib.analysis conventions
# ("gmac", "hrnet", "dynamic_routing"); reported as cost/<convention>/{mean,min,max}. [] = off.
_C.TEST.COST_CONVENTIONS = []
# --- evaluation (dl_lib/evaluation) ---
# For "cityscapes_sem_seg" datasets also run the official cityscapesscripts evaluation (single
# machine only; slow in pure Python). The confusion-matrix evaluator always runs and gives the
# same class mIoU; turn this on for iIoU / category scores or a number straight from the script.
_C.TEST.CITYSCAPES_OFFICIAL_EVAL = False

# ---------------------------------------------------------------------------------------------
# Misc
# ---------------------------------------------------------------------------------------------
# Empty: $DL_OUTPUT_ROOT/<Group>/<Name> for a playground run.
_C.OUTPUT_DIR = ""
# Method families whose add_<family>_config added keys (config_from_delta(..., family=...));
# recorded so a dumped config.yaml re-loads with the same keys (dl_lib.config.load_config_file).
_C.FAMILIES = []
# Negative: a different random seed per run.
_C.SEED = -1
_C.DETERMINISTIC = False
_C.CUDNN_BENCHMARK = False
# Iterations between console / metrics.json / TensorBoard writes.
_C.LOG_PERIOD = 20


def get_default_cfg() -> CfgNode:
    """A fresh copy of the library defaults."""
    return _C.clone()

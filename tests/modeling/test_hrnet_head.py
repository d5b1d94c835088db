"""HRNetV2's segmentation head (``dl_lib/modeling/heads/hrnet_head.py``) and the plain HRNet
playgrounds ``playground/Anytime/HRNet_W48`` / ``HRNet_W18`` against the ADP-C reference
(``anytime.md`` sections 2.1, 2.3, 3.6, 4, 6 and 7; key dumps ``keys/anytime_keys_*.txt``):
``last_layer``'s keys and shapes, its forward, the parameter counts, the original recipe, one
training iteration on CPU, and 696.2 GFLOPs for HRNet-W48 at 1024x2048 (HRNet's convention).
"""
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F
from toy_data import write_split
from torch import nn

from dl_lib import playground
from dl_lib.analysis import flop_count
from dl_lib.data import DatasetCatalog, MetadataCatalog, build_train_loader, register_sem_seg
from dl_lib.data.transforms import ResizeShortestEdge
from dl_lib.engine import SimpleTrainer
from dl_lib.modeling.heads import HRNetClassifier, HRNetV2Head
from dl_lib.modeling.shape_spec import ShapeSpec
from dl_lib.solver import build_optimizer
from dl_lib.solver.lr_scheduler import build_lr_multiplier

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEYS = os.path.join(REPO, "tests", "modeling", "anytime")  # copies of reference/keys/anytime_keys_*
ANYTIME = os.path.join(REPO, "playground", "Anytime")
BRANCHES = ["hr0", "hr1", "hr2", "hr3"]
WIDTHS = {"w18": [18, 36, 72, 144], "w48": [48, 96, 192, 384]}

# playground -> (backbone, ImageNet file (reference section 1.5), key-dump width, parameters).
# Parameters: the original's RH model (section 6) less its exits 1-3 (section 2.3), which the
# EE model less its (original-head) exits gives too:
#   W48  66,062,700 - (102,675 + 54,803 + 45,843) = 66,074,796 - (71,187 + 23,923 + 120,307)
#   W18   3,997,492 - (34,963 + 13,459 + 9,491)   =  4,033,556 - (71,187 + 4,123 + 18,667)
PLAYGROUNDS = {
    "HRNet_W48": ("hrnet_w48", "hrnetv2_w48_imagenet_pretrained.pth", "w48", 65_859_379),
    "HRNet_W18": ("hrnet_w18_small_v2", "hrnet_w18_small_model_v2.pth", "w18", 3_939_579),
}

# The original's training augmentation (reference section 4.4): long side int(2048 s + 0.5) for
# s = 0.5 + k / 10, k = 0..16, the short side of a 1024x2048 image int(1024 long / 2048 + 0.5).
ORIGINAL_LONG_SIDES = [int(2048 * (0.5 + k / 10) + 0.5) for k in range(17)]
ORIGINAL_SHORT_SIDES = [int(1024 * long / 2048 + 0.5) for long in ORIGINAL_LONG_SIDES]

# Reference sections 4.2-4.4 in our keys; shared by both playgrounds.
RECIPE = {
    "MODEL.META_ARCHITECTURE": "SemanticSegmentor",
    "MODEL.WEIGHTS": "",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],  # ImageNet mean / std of 0-1 RGB, x 255
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
    "MODEL.BACKBONE.NORM": "nnSyncBN",
    "MODEL.BACKBONE.OUT_FEATURES": BRANCHES,
    "MODEL.SEM_SEG_HEAD.NAME": "HRNetV2Head",
    "MODEL.SEM_SEG_HEAD.IN_FEATURES": BRANCHES,
    "MODEL.SEM_SEG_HEAD.NORM": "nnSyncBN",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 19,
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 255,
    "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": 1.0,
    "INPUT.MIN_SIZE_TRAIN": ORIGINAL_SHORT_SIDES,
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice",
    "INPUT.CROP_PAD.ENABLED": True,
    "INPUT.CROP_PAD.SIZE": [512, 1024],
    "INPUT.CROP_PAD.SINGLE_CATEGORY_MAX_AREA": 1.0,
    "INPUT.RANDOM_FLIP": "horizontal",
    "INPUT.COLOR_AUG.ENABLED": False,
    "INPUT.MIN_SIZE_TEST": 1024,  # the full 1024x2048 val images
    "INPUT.MAX_SIZE_TEST": 2048,
    "DATASETS.TRAIN": ("cityscapes_fine_sem_seg_train",),
    "DATASETS.TEST": ("cityscapes_fine_sem_seg_val",),
    "SOLVER.OPTIMIZER.NAME": "SGD",
    "SOLVER.OPTIMIZER.BASE_LR": 0.01,
    "SOLVER.OPTIMIZER.MOMENTUM": 0.9,
    "SOLVER.OPTIMIZER.NESTEROV": False,
    "SOLVER.OPTIMIZER.WEIGHT_DECAY": 5e-4,
    "SOLVER.OPTIMIZER.WEIGHT_DECAY_NORM": 5e-4,  # no exclusions (section 4.3)
    "SOLVER.OPTIMIZER.WEIGHT_DECAY_BIAS": 5e-4,
    "SOLVER.OPTIMIZER.BIAS_LR_FACTOR": 1.0,
    "SOLVER.LR_SCHEDULER.NAME": "PolyLR",
    "SOLVER.LR_SCHEDULER.POLY_POWER": 0.9,
    "SOLVER.LR_SCHEDULER.MAX_ITER": 119_548,  # 484 epochs x int(2975 / 3 / 4) = 247
    "SOLVER.LR_SCHEDULER.END_LR_FACTOR": 0.0,
    "SOLVER.IMS_PER_BATCH": 12,
    "SOLVER.GRAD_CLIP": 0.0,
    "SOLVER.AMP.ENABLED": False,
    "TEST.EVAL_PERIOD": 0,  # the original never validates during training
    "TEST.AUG.ENABLED": False,
    "TEST.MODE": "whole",
}


def _get(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def read_dump(name):
    """``(header lines, [(key, shape, dtype name)])`` of a reference key dump."""
    header, rows = [], []
    with open(os.path.join(KEYS, name)) as f:
        for line in f:
            if line.startswith("#"):
                header.append(line)
            elif line.strip():
                key, shape, dtype = line.rstrip("\n").split("\t")
                rows.append((key, tuple(int(s) for s in re.findall(r"\d+", shape)), dtype))
    return header, rows


def _input_shape(width):
    return {f"hr{i}": ShapeSpec(channels=c, stride=4 * 2 ** i) for i, c in enumerate(WIDTHS[width])}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ the head
@pytest.mark.parametrize("width", ["w18", "w48"])
def test_last_layer_is_the_originals(width):
    head = HRNetV2Head(_input_shape(width), BRANCHES, 19)
    header, rows = read_dump(f"anytime_keys_{width}_EE.txt")
    expected = [(k[len("last_layer."):], s, d) for k, s, d in rows if k.startswith("last_layer.")]
    ours = [(k, tuple(v.shape), str(v.dtype)) for k, v in head.last_layer.state_dict().items()]
    assert ours == expected  # 0: 1x1 conv C->C with bias, 1: BN, 3: 1x1 conv C->19 with bias
    params = {"w18": 78_859, "w48": 534_259}[width]  # reference section 2.3
    assert sum(p.numel() for p in head.parameters()) == params
    assert f'"last_layer": {params}' in next(h for h in header if "per top-level" in h)
    assert isinstance(head.last_layer[2], nn.ReLU) and head.output_stride == 4


def test_head_forward_is_upsample_concat_then_classifier():
    torch.manual_seed(0)
    head = HRNetV2Head(_input_shape("w18"), ["hr3", "hr1", "hr0", "hr2"], 19).eval()
    assert head.in_features == BRANCHES  # finest first, whatever order they were given in
    features = {f"hr{i}": torch.randn(2, c, 16 >> i, 24 >> i)
                for i, c in enumerate(WIDTHS["w18"])}
    with torch.no_grad():
        out = head(features)
        cat = torch.cat([features["hr0"]] + [
            F.interpolate(features[f"hr{i}"], size=(16, 24), mode="bilinear", align_corners=False)
            for i in (1, 2, 3)], 1)
        expected = head.last_layer[3](F.relu(head.last_layer[1](head.last_layer[0](cat))))
    assert out.shape == (2, 19, 16, 24)
    assert torch.equal(out, expected)


def test_classifier_kernel_norm_and_errors():
    head = HRNetClassifier(8, 5, kernel_size=3, norm_layer=nn.SyncBatchNorm)
    assert tuple(head[3].weight.shape) == (5, 8, 3, 3) and head[3].padding == (1, 1)
    assert head[0].bias is not None and head[3].bias is not None
    assert isinstance(head[1], nn.SyncBatchNorm) and head[1].momentum == 0.01
    assert HRNetClassifier(8, 5)[1].momentum == 0.01
    with pytest.raises(ValueError, match=r"asks for \['hr2', 'hr3'\], which the backbone does not "
                                         r"output \(it has \['hr0', 'hr1'\]\)"):
        HRNetV2Head({k: v for k, v in _input_shape("w18").items() if k in ("hr0", "hr1")},
                    BRANCHES, 19)


# ------------------------------------------------------------------ the playgrounds
@pytest.fixture(scope="module")
def built():
    """(cfg, model) of each playground on CPU, built once (W48 has 65.9M parameters)."""
    torch.manual_seed(0)
    return {name: playground.build(os.path.join(ANYTIME, name), ["MODEL.DEVICE", "cpu"])
            for name in PLAYGROUNDS}


@pytest.mark.parametrize("name", sorted(PLAYGROUNDS))
def test_config_holds_the_original_recipe(name):
    cfg = playground.load_config(os.path.join(ANYTIME, name))
    backbone, imagenet, _, _ = PLAYGROUNDS[name]
    assert cfg.MODEL.BACKBONE.NAME == backbone
    # The ImageNet file of the reference by its name, never an absolute path.
    assert cfg.MODEL.PRETRAINED == f"pretrained_models/{imagenet}"
    wrong = {k: (_get(cfg, k), v) for k, v in RECIPE.items()
             if (list(_get(cfg, k)) if isinstance(v, list) else _get(cfg, k)) != v}
    assert not wrong, f"{name}: (ours, original's) {wrong}"
    assert cfg.FAMILIES == []  # a plain segmentor
    # Our short-side resize of a 1024x2048 image at each drawn size: the original's short side,
    # and its long side or one pixel more where the original's is odd (not capped at 4096).
    for short, long in zip(cfg.INPUT.MIN_SIZE_TRAIN, ORIGINAL_LONG_SIDES):
        t = ResizeShortestEdge(short, cfg.INPUT.MAX_SIZE_TRAIN, "choice").get_transform(
            torch.zeros(1024, 2048, 3).numpy())
        assert (t.new_h, t.new_w) == (short, long + long % 2)


@pytest.mark.parametrize("name", sorted(PLAYGROUNDS))
def test_parameters_equal_the_originals_without_exits(built, name):
    _, model = built[name]
    assert sum(p.numel() for p in model.parameters()) == PLAYGROUNDS[name][3]
    # The backbone: the original's backbone attributes (key-dump header, test_hrnet.py).
    head = {"HRNet_W48": 534_259, "HRNet_W18": 78_859}[name]
    assert sum(p.numel() for p in model.head.parameters()) == head
    # nnSyncBN at world size 1 is plain BatchNorm, with HRNet's momentum.
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert {type(m) for m in norms} == {nn.BatchNorm2d} and {m.momentum for m in norms} == {0.01}


# ------------------------------------------------------------------ GFLOPs (HRNet's convention)
def _rh_head_macs(c_in, d, pools, h, w):
    """ADP-C's redesigned exit head (reference 2.2) at a 1/4-resolution h x w input: 1x1 convs
    C->D at 1/8, D->D down to 1/(4 * 2^pools) and back up to 1/8, then D->19 at 1/4."""
    macs = c_in * d * (h // 2) * (w // 2)
    scales = list(range(2, pools + 1)) + list(range(pools - 1, 0, -1))
    macs += sum(d * d * (h >> s) * (w >> s) for s in scales)
    return macs + d * 19 * h * w


def _ee_head_macs(c_in, h, w):
    """The 'original' head (reference 2.1): 1x1 convs C->C and C->19 at 1/4."""
    return (c_in * c_in + c_in * 19) * h * w


# The original counter's exit-4 GFLOPs at 1024x2048 (reference 3.6): the network with exits 1-3.
# name -> (exit inputs C of exits 1-3 (reference 1.6), RH width D, RH exit 4, EE exit 4).
EXIT_HEADS = {"HRNet_W48": ((256, 144, 336), 128, 701.35, 722.20),
              "HRNet_W18": ((256, 54, 126), 64, 73.23, 82.88)}


@pytest.mark.parametrize("name", sorted(PLAYGROUNDS))
def test_gflops_at_1024x2048_in_hrnet_convention(built, name):
    """Counted at 64x128 and 96x160 (seconds instead of W48's minute at 1024x2048): every conv
    output is at 1/2..1/32 of a size divisible by 32, so MACs are exactly proportional to the
    pixels. Measured once at 1024x2048: W48 747,513,053,184 MACs = 696.17578125 GFLOPs."""
    _, model = built[name]
    small = flop_count(model, (64, 128), "hrnet")
    other = flop_count(model, (96, 160), "hrnet")
    assert small.unsupported_ops == {}
    assert other.raw * 64 * 128 == small.raw * 96 * 160  # linear in the pixels
    raw = small.raw * (1024 * 2048) // (64 * 128)
    gflops = raw / 2 ** 30
    assert small.total * 256 == pytest.approx(gflops, rel=1e-12)
    if name == "HRNet_W48":
        assert raw == 747_513_053_184
        assert round(gflops, 1) == 696.2  # reference section 7 (HRNet's published count)
    else:
        assert raw == 76_856_885_248 and round(gflops, 2) == 71.58
    # With the three early-exit heads of ADP-C added we get the original counter's exit-4
    # numbers, for the redesigned heads and for the original ones (reference 3.6).
    inputs, d, rh_exit4, ee_exit4 = EXIT_HEADS[name]
    h, w = 256, 512
    rh = sum(_rh_head_macs(c, d, pools, h, w) for c, pools in zip(inputs, (3, 2, 1)))
    ee = sum(_ee_head_macs(c, h, w) for c in inputs)
    assert round((raw + rh) / 2 ** 30, 2) == rh_exit4
    assert round((raw + ee) / 2 ** 30, 2) == ee_exit4


# ------------------------------------------------------------------ one training iteration
TOY = "hrnet_playground_toy"
SMALL = ["MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
         "DATASETS.TRAIN", f"('{TOY}',)", "DATASETS.TEST", "()", "MODEL.PRETRAINED", "",
         "INPUT.MIN_SIZE_TRAIN", "[64, 80]", "INPUT.CROP_PAD.SIZE", "[64, 128]", "SEED", "0"]


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    """``TOY``: four 48x80 RGB images, labels 0/1 with an ignored top row, 19 class names."""
    root = str(tmp_path_factory.mktemp("hrnet_playground_toy"))
    write_split(root, "train", 4, seed=0, size=(48, 80))
    register_sem_seg(TOY, os.path.join(root, "train", "images"),
                     os.path.join(root, "train", "labels"),
                     classes=[f"class{i}" for i in range(19)], image_ext=".png")
    yield TOY
    DatasetCatalog.remove(TOY)
    MetadataCatalog.remove(TOY)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if "W48" in n else n
                                  for n in sorted(PLAYGROUNDS)])
def test_playground_trains_one_iteration_on_cpu(name, toy_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path))
    torch.manual_seed(0)
    cfg, model = playground.build(os.path.join(ANYTIME, name), SMALL)
    optimizer = build_optimizer(cfg, model)
    # Weight decay 5e-4 on every parameter, norms and biases included (reference 4.3).
    assert {g["weight_decay"] for g in optimizer.param_groups} == {5e-4}
    assert {g["lr"] for g in optimizer.param_groups} == {0.01}
    multiplier = build_lr_multiplier(cfg)  # of BASE_LR, at a fraction of MAX_ITER
    assert multiplier(0.0) == 1.0 and multiplier(0.5) == pytest.approx(0.5 ** 0.9)  # no warm-up
    before = model.head.last_layer[3].weight.detach().clone()
    trainer = SimpleTrainer(model, build_train_loader(cfg), optimizer)
    trainer.train(0, 1)
    latest = {k: v for k, (v, _) in trainer.storage.latest().items()}
    assert math.isfinite(latest["total_loss"]) and latest["loss_sem_seg"] > 0
    assert not torch.equal(model.head.last_layer[3].weight, before)  # one SGD step was taken

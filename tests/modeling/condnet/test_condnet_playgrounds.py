"""``playground/CondNet``: the ADE20K and Pascal Context experiments hold the original's mmseg
recipe (reference ``condnet.md`` section 4, written out below so that a wrong value fails), build
with the published parameter counts (section 1.4) and train one iteration on CPU at a small crop
through the library's loader, optimizer (Pascal Context: both heads at x10) and trainer, every
loss term present (CE, 0.2 Dice on the guidance, 0.4 aux CE)."""
import os

import pytest
import torch
from toy_data import registered_split

from dl_lib import playground
from dl_lib.data import build_train_loader
from dl_lib.engine import SimpleTrainer
from dl_lib.solver import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CONDNET = os.path.join(REPO, "playground", "CondNet")
ADE = ("ade20k_sem_seg_train", "ade20k_sem_seg_val")
PC59 = ("pascal_context_59_sem_seg_train", "pascal_context_59_sem_seg_val")

# name: depth, classes, data sets, parameters (with the auxiliary head, section 1.4)
EXPERIMENTS = {
    "DeepLabV3Plus_R50_D8.ADE20K": (50, 150, ADE, 83_166_098),
    "DeepLabV3Plus_R101_D8.ADE20K": (101, 150, ADE, 102_158_226),
    "DeepLabV3Plus_R50_D8.PascalContext59": (50, 59, PC59, 59_147_649),
    "DeepLabV3Plus_R101_D8.PascalContext59": (101, 59, PC59, 78_139_777),
}
IMAGENET = {50: "pretrained_models/resnet50_v1c-2cccc1ad.pth",
            101: "pretrained_models/resnet101_v1c-e67eebb6.pth"}

# condnet_r50-d8.py, shared by every experiment, in our key names.
MODEL = {
    "MODEL.META_ARCHITECTURE": "CondNet",
    "MODEL.WEIGHTS": "",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
    "MODEL.BACKBONE.DEEP_STEM": True,
    "MODEL.BACKBONE.STEM_WIDTH": 64,
    "MODEL.BACKBONE.WIDTH": 64,
    "MODEL.BACKBONE.OUTPUT_STRIDE": 8,
    "MODEL.BACKBONE.NORM": "nnSyncBN",
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 255,
    "MODEL.CONDNET.HEAD": "sep_aspp",
    "MODEL.CONDNET.CLASSIFIER": "conditional",
    "MODEL.CONDNET.CHANNELS": 512,
    "MODEL.CONDNET.DILATIONS": [1, 12, 24, 36],
    "MODEL.CONDNET.LOW_LEVEL_CHANNELS": 48,
    "MODEL.CONDNET.NORM": "nnSyncBN",
    "MODEL.CONDNET.NUM_COND_LAYERS": 1,
    "MODEL.CONDNET.COND_LAYER_WITH_BIAS": True,
    "MODEL.CONDNET.DROPOUT": 0.1,
    "MODEL.CONDNET.AUX_HEAD": True,
    "MODEL.CONDNET.AUX_CHANNELS": 256,
    "MODEL.CONDNET.SEG_LOSS_WEIGHT": 1.0,
    "MODEL.CONDNET.DICE_LOSS_WEIGHT": 0.2,
    "MODEL.CONDNET.DICE_SMOOTH": 1e-5,
    "MODEL.CONDNET.AUX_LOSS_WEIGHT": 0.4,
    "MODEL.CONDNET.OHEM_THRESH": -1.0,
    "SOLVER.OPTIMIZER.NAME": "SGD",
    "SOLVER.OPTIMIZER.MOMENTUM": 0.9,
    "SOLVER.LR_SCHEDULER.NAME": "PolyLR",
    "SOLVER.LR_SCHEDULER.POLY_POWER": 0.9,
    "SOLVER.LR_SCHEDULER.WARMUP_ITERS": 0,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.AMP.ENABLED": False,
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "range",
    "INPUT.CROP_PAD.ENABLED": True,
    "INPUT.CROP_PAD.SINGLE_CATEGORY_MAX_AREA": 0.75,
    "INPUT.RANDOM_FLIP": "horizontal",
    "INPUT.COLOR_AUG.ENABLED": True,
    "TEST.AUG.ENABLED": False,
    "SEED": 0,
}
# datasets/ade20k.py + schedules/schedule_160k.py; pascal_context_59.py + schedule_80k.py and the
# headlrx10_lr1e-3 delta.
RECIPES = {
    150: {"INPUT.MIN_SIZE_TRAIN": [256, 1024],  # short side 512 x U[0.5, 2]
          "INPUT.MAX_SIZE_TRAIN": 4096, "INPUT.MIN_SIZE_TEST": 512, "INPUT.MAX_SIZE_TEST": 2048,
          "INPUT.CROP_PAD.SIZE": [512, 512], "TEST.MODE": "whole",
          "SOLVER.OPTIMIZER.BASE_LR": 0.01, "SOLVER.OPTIMIZER.WEIGHT_DECAY": 5e-4,
          "SOLVER.OPTIMIZER.WEIGHT_DECAY_NORM": 5e-4, "SOLVER.OPTIMIZER.WEIGHT_DECAY_BIAS": 5e-4,
          "SOLVER.LR_SCHEDULER.MAX_ITER": 160_000, "SOLVER.CHECKPOINT_PERIOD": 16_000,
          "TEST.EVAL_PERIOD": 16_000, "MODEL.CONDNET.HEAD_LR_MULTIPLIER": 1.0},
    59: {"INPUT.MIN_SIZE_TRAIN": [195, 780],  # long side 520 x U[0.5, 2] of 4:3 frames
         "INPUT.MAX_SIZE_TRAIN": 1040, "INPUT.MIN_SIZE_TEST": 520, "INPUT.MAX_SIZE_TEST": 520,
         "INPUT.CROP_PAD.SIZE": [480, 480], "TEST.MODE": "slide",
         "TEST.SLIDE.CROP_SIZE": [480, 480], "TEST.SLIDE.STRIDE": [320, 320],
         "SOLVER.OPTIMIZER.BASE_LR": 1e-3, "SOLVER.OPTIMIZER.WEIGHT_DECAY": 1e-4,
         "SOLVER.OPTIMIZER.WEIGHT_DECAY_NORM": 1e-4, "SOLVER.OPTIMIZER.WEIGHT_DECAY_BIAS": 1e-4,
         "SOLVER.LR_SCHEDULER.MAX_ITER": 80_000, "SOLVER.CHECKPOINT_PERIOD": 8_000,
         "TEST.EVAL_PERIOD": 8_000, "MODEL.CONDNET.HEAD_LR_MULTIPLIER": 10.0},
}

TOY = "condnet_playground_toy"
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.PRETRAINED", "", "SOLVER.IMS_PER_BATCH", "2",
         "DATALOADER.NUM_WORKERS", "0", "DATASETS.TRAIN", f"('{TOY}',)", "DATASETS.TEST", "()",
         "INPUT.MIN_SIZE_TRAIN", "[48, 64]", "INPUT.MAX_SIZE_TRAIN", "512",
         "INPUT.CROP_PAD.SIZE", "[64, 64]"]


def _get(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_the_experiments_are_all_there_with_their_readme():
    folders = sorted(d for d in os.listdir(CONDNET) if os.path.isdir(os.path.join(CONDNET, d)))
    assert set(EXPERIMENTS) <= set(folders)
    readme = open(os.path.join(CONDNET, "README.md")).read()
    for name in folders:
        assert f"`{name}`" in readme, f"playground/CondNet/README.md does not list {name}"


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_config_holds_the_original_recipe(name):
    cfg = playground.load_config(os.path.join(CONDNET, name))
    depth, classes, (train, test), _ = EXPERIMENTS[name]
    assert cfg.MODEL.BACKBONE.NAME == f"resnet{depth}"
    assert cfg.MODEL.PRETRAINED == IMAGENET[depth]
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == classes
    assert (tuple(cfg.DATASETS.TRAIN), tuple(cfg.DATASETS.TEST)) == ((train,), (test,))
    # mmseg's poly ends at min_lr 1e-4 (absolute)
    end_lr = cfg.SOLVER.OPTIMIZER.BASE_LR * cfg.SOLVER.LR_SCHEDULER.END_LR_FACTOR
    assert end_lr == pytest.approx(1e-4)
    expected = dict(MODEL, **RECIPES[classes])
    wrong = {k: (_get(cfg, k), v) for k, v in expected.items()
             if (list(_get(cfg, k)) if isinstance(v, list) else _get(cfg, k)) != v}
    assert not wrong, f"{name}: (ours, original's) {wrong}"
    assert "condnet" in cfg.FAMILIES


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    """``TOY``: four 48x80 RGB images, labels 0/1 with an ignored top row, 150 class names."""
    with registered_split(TOY, str(tmp_path_factory.mktemp("condnet_toy")), 4,
                          num_classes=150) as name:
        yield name


# The R101 runs take 13-18 s each on the shared CPU: slow (the R50 ones cover the same code).
TRAIN_CASES = [pytest.param(n, marks=pytest.mark.slow) if "R101" in n else n
               for n in sorted(EXPERIMENTS)]


@pytest.mark.parametrize("name", TRAIN_CASES)
def test_playground_trains_one_iteration_on_cpu(name, toy_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path))
    torch.manual_seed(0)
    depth, classes, _, params = EXPERIMENTS[name]
    cfg, model = playground.build(os.path.join(CONDNET, name), SMALL)
    assert sum(p.numel() for p in model.parameters()) == params
    optimizer = build_optimizer(cfg, model)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    decays = {g["weight_decay"] for g in optimizer.param_groups}
    base = cfg.SOLVER.OPTIMIZER.BASE_LR
    head_lr = base * (10.0 if classes == 59 else 1.0)  # mmcv's custom_keys {'head': lr_mult 10}
    assert {lrs[id(p)] for p in model.backbone.parameters()} == {base}
    heads = list(model.head.parameters()) + list(model.aux_head.parameters())
    assert [lrs[id(p)] for p in heads] == pytest.approx([head_lr] * len(heads))
    assert decays == {5e-4 if classes == 150 else 1e-4}  # every parameter decays, as mmcv's SGD
    trainer = SimpleTrainer(model, build_train_loader(cfg), optimizer)
    trainer.train(0, 1)
    latest = {k: v for k, (v, _) in trainer.storage.latest().items()}
    assert torch.isfinite(torch.tensor(latest["total_loss"]))
    for term in ("loss_sem_seg", "loss_guidance", "loss_aux"):
        assert latest[term] > 0, term
    assert all(p.grad is not None for p in model.parameters())


def test_street_scene_variant_and_its_plain_twin_differ_only_in_the_classifier():
    folder = os.path.join(CONDNET, "DeepLabV3Plus_R18_D8.Tiny.Synthetic")
    cfg = playground.load_config(folder)
    assert cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.PRETRAINED == ""
    assert tuple(cfg.DATASETS.TRAIN) == ("synthetic_cityscapes_train",)
    _, cond = playground.build(folder, ["MODEL.DEVICE", "cpu"])
    _, plain = playground.build(folder, ["MODEL.DEVICE", "cpu",
                                         "MODEL.CONDNET.CLASSIFIER", "plain"])
    c, k = cfg.MODEL.CONDNET.CHANNELS, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    sizes = {n: p.shape for n, p in cond.named_parameters()}
    plain_sizes = {n: p.shape for n, p in plain.named_parameters()}
    common = {n for n in sizes if not n.startswith("head.classifier.")}
    assert common == {n for n in plain_sizes if not n.startswith("head.classifier.")}
    assert all(sizes[n] == plain_sizes[n] for n in common)
    count = lambda m: sum(p.numel() for n, p in m.named_parameters() if "classifier." in n)  # noqa
    # guidance 1x1 (K·C + K) + generator (K·(C+1) rows of C inputs, + biases) vs conv_seg K·C + K
    assert count(cond) == (k * c + k) + (k * (c + 1) * c + k * (c + 1))
    assert count(plain) == k * c + k

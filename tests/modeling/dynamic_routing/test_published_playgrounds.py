"""The published experiments in ``playground/Dynamic``: their configs hold the original's values
(reference ``dynamic_routing.md`` sections 3.5 and 6.1, written out below so that a wrong value
fails), and each builds with its real config (the published parameter count) and trains one
iteration on CPU at world size 1, through the library's data loader, optimizer and trainer, on a
tiny data set at a small crop.
"""
import os
import re

import pytest
import torch
from toy_data import write_split

from dl_lib import playground
from dl_lib.data import DatasetCatalog, MetadataCatalog, build_train_loader, register_sem_seg
from dl_lib.engine import SimpleTrainer
from dl_lib.solver import build_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DYNAMIC = os.path.join(REPO, "playground", "Dynamic")

# Reference section 3.5, one row per experiment folder (Fix: Seg.Layer16 without gates). gate_lr 0
# is our "no multiplier"; flops_all 0 (derived) where no budget is applied.
EXPERIMENTS = {
    # name: layers, gate_on, small_gate, constrain, loss_weight, loss_mu, flops_all, drop_prob,
    #       base_lr, gate_lr, max_iter, checkpoint_period, precise_bn, parameters
    "Seg.Layer16":
        (16, True, False, False, 0.0, 0.0, 0.0, 0.0, 0.05, 0.0, 190000, 5000, True, 17_784_968),
    "Seg.Layer16.ImageNet":
        (16, True, False, False, 0.0, 0.0, 0.0, 0.0, 0.02, 2.5, 190000, 5000, True, 17_784_968),
    "Seg.Layer33.ImageNet":
        (33, True, False, False, 0.0, 0.0, 0.0, 0.0, 0.02, 2.5, 190000, 5000, True, 38_871_666),
    "Seg.Layer16.SmallGate.Dynamic_A":
        (16, True, True, True, 0.8, 0.1, 26300.0, 0.0, 0.05, 0.0, 190000, 5000, False, 17_784_968),
    "Seg.Layer16.SmallGate.Dynamic_B":
        (16, True, True, True, 0.5, 0.1, 26300.0, 0.0, 0.05, 0.0, 190000, 5000, False, 17_784_968),
    "Seg.Layer16.SmallGate.Dynamic_C":
        (16, True, True, True, 0.5, 0.2, 26300.0, 0.0, 0.05, 0.0, 190000, 5000, False, 17_784_968),
    "Seg.Layer16.Iter560k.SDP0_3":
        (16, True, False, False, 0.0, 0.0, 0.0, 0.3, 0.05, 0.0, 560000, 10000, True, 17_784_968),
    # Layer16 less its gate networks (2,523,125 parameters, reference section 5.2).
    "Seg.Layer16.Fix":
        (16, False, False, False, 0.0, 0.0, 0.0, 0.0, 0.05, 0.0, 190000, 5000, True, 15_261_843),
}
FIELDS = ("LAYER_NUM", "GATE_ON", "SMALL_GATE", "CONSTRAIN", "BUDGET_LOSS_WEIGHT", "LOSS_MU",
          "FLOPS_ALL", "DROP_PROB", "BASE_LR", "GATE_LR_MULTI", "MAX_ITER", "CHECKPOINT_PERIOD",
          "PRECISE_BN", "parameters")

# Reference section 6.1 (effective defaults shared by every experiment), in our key names.
COMMON = {
    "MODEL.META_ARCHITECTURE": "DynamicRoutingSegmentor",
    "MODEL.WEIGHTS": "",  # never a /data path: the ImageNet files are passed on the command line
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],  # the original's BGR mean, in RGB order
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    "MODEL.BACKBONE.CELL_TYPE": ["sep_conv_3x3", "skip_connect"],
    "MODEL.BACKBONE.INIT_CHANNEL": 64,
    "MODEL.BACKBONE.MAX_STRIDE": 32,
    "MODEL.BACKBONE.SEPT_STEM": True,
    "MODEL.BACKBONE.NORM": "nnSyncBN",
    "MODEL.GATE.GATE_INIT_BIAS": 1.5,
    "MODEL.GATE.SKIP_THRESHOLD": 1e-4,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 19,
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 255,
    "MODEL.SEM_SEG_HEAD.NORM": "nnSyncBN",
    "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": 1.0,
    "MODEL.BUDGET.UNUPDATE_RATE": 0.4,
    "MODEL.BUDGET.WARM_UP": True,
    "MODEL.BUDGET.WARM_UP_RATE": 0.02,
    "INPUT.FORMAT": "RGB",
    "INPUT.MIN_SIZE_TRAIN": [512, 768, 1024, 1280, 1536, 2048],
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice",
    "INPUT.MAX_SIZE_TRAIN": 4096,
    "INPUT.MIN_SIZE_TEST": 1024,
    "INPUT.MAX_SIZE_TEST": 2048,
    "INPUT.CROP_PAD.ENABLED": True,
    "INPUT.CROP_PAD.SIZE": [768, 768],
    "INPUT.RANDOM_FLIP": "horizontal",
    "INPUT.COLOR_AUG.ENABLED": False,
    "DATASETS.TRAIN": ("cityscapes_fine_sem_seg_train",),
    "DATASETS.TEST": ("cityscapes_fine_sem_seg_val",),
    "SOLVER.OPTIMIZER.NAME": "SGD",
    "SOLVER.OPTIMIZER.MOMENTUM": 0.9,
    "SOLVER.OPTIMIZER.NESTEROV": False,
    "SOLVER.OPTIMIZER.WEIGHT_DECAY": 1e-4,
    "SOLVER.OPTIMIZER.WEIGHT_DECAY_NORM": 0.0,
    "SOLVER.OPTIMIZER.WEIGHT_DECAY_BIAS": 1e-4,
    "SOLVER.OPTIMIZER.BIAS_LR_FACTOR": 1.0,
    "SOLVER.LR_SCHEDULER.NAME": "WarmupPolyLR",
    "SOLVER.LR_SCHEDULER.POLY_POWER": 0.9,
    "SOLVER.LR_SCHEDULER.WARMUP_ITERS": 1000,
    "SOLVER.LR_SCHEDULER.WARMUP_FACTOR": 0.001,
    "SOLVER.LR_SCHEDULER.WARMUP_METHOD": "linear",
    "SOLVER.LR_SCHEDULER.END_LR_FACTOR": 0.0,
    "SOLVER.IMS_PER_BATCH": 8,
    "SOLVER.GRAD_CLIP": 5.0,
    "SOLVER.AMP.ENABLED": False,
    "TEST.EVAL_PERIOD": 0,
    "TEST.IMS_PER_BATCH": 1,
    "TEST.AUG.ENABLED": False,
    "TEST.MODE": "whole",
    "TEST.PRECISE_BN.NUM_ITER": 200,
    "MODEL.DDP.BROADCAST_BUFFERS": False,
}

TOY = "dynamic_routing_playground_toy"
SMALL = ["MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
         "DATASETS.TRAIN", f"('{TOY}',)", "DATASETS.TEST", "()",
         "INPUT.MIN_SIZE_TRAIN", "[96, 128]", "INPUT.MAX_SIZE_TRAIN", "512",
         "INPUT.CROP_PAD.SIZE", "[128, 128]", "SEED", "0"]
# 128x128: the stride-32 cells are 4x4, the smallest size a small gate (1/4 of it) can run at.


def _get(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _expected(name):
    return dict(zip(FIELDS, EXPERIMENTS[name]))


def test_the_published_experiments_are_all_there():
    folders = sorted(d for d in os.listdir(DYNAMIC) if os.path.isdir(os.path.join(DYNAMIC, d)))
    assert folders == sorted(EXPERIMENTS)
    readme = open(os.path.join(DYNAMIC, "README.md")).read()
    for name in EXPERIMENTS:
        assert f"`{name}`" in readme, f"playground/Dynamic/README.md does not list {name}"


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_config_holds_the_original_values(name):
    cfg = playground.load_config(os.path.join(DYNAMIC, name))
    e = _expected(name)
    b, g, bud, opt = cfg.MODEL.BACKBONE, cfg.MODEL.GATE, cfg.MODEL.BUDGET, cfg.SOLVER.OPTIMIZER
    got = dict(LAYER_NUM=b.LAYER_NUM, GATE_ON=g.GATE_ON, SMALL_GATE=g.SMALL_GATE,
               CONSTRAIN=bud.CONSTRAIN, BUDGET_LOSS_WEIGHT=bud.LOSS_WEIGHT, LOSS_MU=bud.LOSS_MU,
               FLOPS_ALL=bud.FLOPS_ALL, DROP_PROB=b.DROP_PROB, BASE_LR=opt.BASE_LR,
               GATE_LR_MULTI=opt.GATE_LR_MULTI, MAX_ITER=cfg.SOLVER.LR_SCHEDULER.MAX_ITER,
               CHECKPOINT_PERIOD=cfg.SOLVER.CHECKPOINT_PERIOD,
               PRECISE_BN=cfg.TEST.PRECISE_BN.ENABLED)
    assert got == {k: v for k, v in e.items() if k != "parameters"}
    # Layer16: [2, 3, 4] + [4] * 13; Layer33: [2, 3, 4] + [4] * 30 (reference section 1.1).
    assert list(b.CELL_NUM_LIST[:b.LAYER_NUM]) == [2, 3, 4] + [4] * (b.LAYER_NUM - 3)
    wrong = {k: (_get(cfg, k), v) for k, v in COMMON.items()
             if (list(_get(cfg, k)) if isinstance(v, list) else _get(cfg, k)) != v}
    assert not wrong, f"{name}: (ours, original's) {wrong}"
    assert "dynamic_routing" in cfg.FAMILIES
    # No absolute data or weights path written into the recipe (the original's /data/...).
    assert not re.search(r"[\"']/data", open(os.path.join(DYNAMIC, name, "config.py")).read())


@pytest.fixture(autouse=True)
def _one_thread():
    # Several intra-op threads on a loaded 2-core machine wait on each other (30x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    """``TOY``: four 48x80 RGB images, labels 0/1 with an ignored top row, 19 class names."""
    root = str(tmp_path_factory.mktemp("dynamic_routing_toy"))
    write_split(root, "train", 4, seed=0, size=(48, 80))
    register_sem_seg(TOY, os.path.join(root, "train", "images"),
                     os.path.join(root, "train", "labels"),
                     classes=[f"class{i}" for i in range(19)], image_ext=".png")
    yield TOY
    DatasetCatalog.remove(TOY)
    MetadataCatalog.remove(TOY)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if "Layer33" in n else n
                                  for n in sorted(EXPERIMENTS)])
def test_playground_trains_one_iteration_on_cpu(name, toy_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path))
    torch.manual_seed(0)
    e = _expected(name)
    cfg, model = playground.build(os.path.join(DYNAMIC, name), SMALL)
    assert sum(p.numel() for p in model.parameters()) == e["parameters"]
    # nnSyncBN at world size 1 is plain BatchNorm (nothing to synchronise, no process group).
    norms = {type(m) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert norms == {torch.nn.BatchNorm2d}
    assert model.backbone.small_gate == e["SMALL_GATE"] and model.backbone.gate_on == e["GATE_ON"]

    optimizer = build_optimizer(cfg, model)
    trainer = SimpleTrainer(model, build_train_loader(cfg), optimizer, grad_clip=cfg.SOLVER.GRAD_CLIP)
    # Iteration 1 of 2: training progress 0.5, past UNUPDATE_RATE (0.4) and its 2% ramp, so the
    # budget loss is on in full where the experiment has one.
    trainer.train(1, 2)
    assert model.step_rate == 0.5
    latest = {k: v for k, (v, _) in trainer.storage.latest().items()}
    assert torch.isfinite(torch.tensor(latest["total_loss"]))
    assert latest["loss_sem_seg"] > 0
    assert ("loss_budget" in latest) == e["CONSTRAIN"]
    if e["CONSTRAIN"]:
        # LOSS_WEIGHT * (expected / 26300 - mu)^2 with the expected MFLOPs of this 128x128 batch.
        expt = latest["expt_gflops"] * 1e3
        assert latest["loss_budget"] == pytest.approx(
            e["BUDGET_LOSS_WEIGHT"] * (expt / e["FLOPS_ALL"] - e["LOSS_MU"]) ** 2, rel=1e-4)
    assert latest["real_gflops"] > latest["expt_gflops"] > 0


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_config_says_only_what_differs_from_the_shared_recipe(name):
    # The recipe lives once in dynamic_routing/recipes.py; a playground repeating it drifts.
    code = open(os.path.join(DYNAMIC, name, "config.py")).read().split('"""', 2)[2]
    repeated = [k for k in ("META_ARCHITECTURE", "PIXEL_MEAN", "nnSyncBN", "MIN_SIZE_TRAIN",
                            "GRAD_CLIP", "WARMUP_ITERS", "FLOPS_ALL") if k in code]
    assert not repeated, f"playground/Dynamic/{name}/config.py repeats the recipe's {repeated}"
    assert "dynamic_routing.recipes import" in code


def test_recipes_return_a_new_config_each_call():
    from dl_lib.modeling.dynamic_routing.recipes import cityscapes_config, small_gate_budget_config

    first = small_gate_budget_config()
    first.INPUT.MIN_SIZE_TRAIN.append(4096)
    first.MODEL.BUDGET.LOSS_MU = 0.7
    again = small_gate_budget_config()
    assert list(again.INPUT.MIN_SIZE_TRAIN) == COMMON["INPUT.MIN_SIZE_TRAIN"]
    assert again.MODEL.BUDGET.LOSS_MU == 0.0 and again.MODEL.BUDGET.FLOPS_ALL == 26300.0
    assert cityscapes_config().MODEL.GATE.SMALL_GATE is False

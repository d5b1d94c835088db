"""``playground/MFARANet``: the Cityscapes experiments hold the original's recipe (reference
``mfaranet.md`` section 3, written out below so that a wrong value fails), build with the
published parameter counts and train one iteration on CPU at a small crop through the library's
loader, optimizer (backbone at the base rate, decoder x10) and trainer; the street-scene variant
trains with ``dl_train`` and ``dl_test`` scores its fused output and each branch."""
import json
import os

import pytest
import torch
from toy_data import write_split

from dl_lib import playground
from dl_lib.data import DatasetCatalog, MetadataCatalog, build_train_loader, register_sem_seg
from dl_lib.data.datasets import synthetic
from dl_lib.engine import SimpleTrainer
from dl_lib.modeling.mfaranet.recipes import iterations_per_epoch
from dl_lib.solver import build_optimizer
from dl_lib.tools import train_net

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MFARANET = os.path.join(REPO, "playground", "MFARANet")
TINY = "R18_DeepStem.Tiny.Synthetic"
TRAIN = ("cityscapes_fine_sem_seg_train",)
TRAINVAL = ("cityscapes_fine_sem_seg_train", "cityscapes_fine_sem_seg_val")

# name: backbone, branch_only, train sets, max_iter, checkpoint_period, ImageNet file, parameters
EXPERIMENTS = {
    "R18_DeepStem.Cityscapes": ("resnet18", 0, TRAIN, 42_400, 424,
                                "pretrained_models/resnet18-deep-inplane128.pth", 12_997_264),
    "R18_DeepStem.Cityscapes.TrainVal": ("resnet18", 0, TRAINVAL, 49_600, 496,
                                         "pretrained_models/resnet18-deep-inplane128.pth",
                                         12_997_264),
    # The branch-2 subgraph (the whole model's file loads into it): 12,997,264 less the ASFM
    # heads 300,288, bottom_up.{1,2} 295,424, stage_fuse.1 147,712, align.{1,2} 37,376, branch
    # heads 1, 3, 4 7,353 and the boundary heads 516 (reference section 1.2).
    "R18_DeepStem.Branch2": ("resnet18", 2, TRAIN, 42_400, 424,
                             "pretrained_models/resnet18-deep-inplane128.pth", 12_208_595),
    # The key dump's 25,672,204 (counted without the training-only boundary heads) + 516.
    "R50_DeepStem.Cityscapes": ("resnet50", 0, TRAIN, 42_400, 424,
                                "pretrained_models/resnet50-deep.pth", 25_672_720),
}

# Section 3 (and section 2 for the losses), shared by every experiment, in our key names.
COMMON = {
    "MODEL.META_ARCHITECTURE": "MFARANet",
    "MODEL.WEIGHTS": "",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],  # ImageNet mean / std x 255
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
    "MODEL.BACKBONE.DEEP_STEM": True,
    "MODEL.BACKBONE.STEM_WIDTH": 128,
    "MODEL.BACKBONE.WIDTH": 64,
    "MODEL.BACKBONE.STAGE_DILATIONS": [1, 1, 2, 4],
    "MODEL.BACKBONE.OUTPUT_STRIDE": 32,
    "MODEL.BACKBONE.NORM": "nnSyncBN",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 19,
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 255,
    "MODEL.DDP.FIND_UNUSED_PARAMETERS": False,  # every parameter gets a gradient
    "MODEL.MFARANET.DECODER_CHANNELS": 128,
    "MODEL.MFARANET.NORM": "nnSyncBN",
    "MODEL.MFARANET.FUSED_BRANCHES": [1, 2, 3, 4],
    "MODEL.MFARANET.STAGE_DROPOUT": [0.0] * 5,
    "MODEL.MFARANET.ATTENTION_DROPOUT": 0.5,
    "MODEL.MFARANET.BOUNDARY_HEADS": True,
    "MODEL.MFARANET.OHEM_THRESHOLD": 0.7,
    "MODEL.MFARANET.OHEM_MIN_KEPT": 100_000,
    "MODEL.MFARANET.BOUNDARY_LOSS_WEIGHT": 0.3,
    "MODEL.MFARANET.BOUNDARY_ATTENTION_LOSS_WEIGHT": 0.1,
    "MODEL.MFARANET.BOUNDARY_ATTENTION_THRESHOLD": 0.8,
    "MODEL.MFARANET.BOUNDARY_KERNEL": 5,
    "MODEL.MFARANET.HEAD_LR_MULTIPLIER": 10.0,
    "INPUT.MIN_SIZE_TRAIN": [512, 2048],  # RandScale U[0.5, 2] of 1024x2048 frames
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "range",
    "INPUT.MAX_SIZE_TRAIN": 4096,
    "INPUT.MIN_SIZE_TEST": 1024,
    "INPUT.MAX_SIZE_TEST": 2048,
    "INPUT.CROP_PAD.ENABLED": True,
    "INPUT.CROP_PAD.SIZE": [1024, 2048],
    "INPUT.RANDOM_FLIP": "horizontal",
    "SOLVER.OPTIMIZER.NAME": "SGD",
    "SOLVER.OPTIMIZER.BASE_LR": 0.005,
    "SOLVER.OPTIMIZER.MOMENTUM": 0.9,
    "SOLVER.OPTIMIZER.WEIGHT_DECAY": 5e-4,
    "SOLVER.OPTIMIZER.WEIGHT_DECAY_NORM": 5e-4,
    "SOLVER.OPTIMIZER.WEIGHT_DECAY_BIAS": 5e-4,
    "SOLVER.LR_SCHEDULER.NAME": "PolyLR",
    "SOLVER.LR_SCHEDULER.POLY_POWER": 0.9,
    "SOLVER.IMS_PER_BATCH": 14,
    "SOLVER.CHECKPOINT_MAX_KEEP": 2,
    "SOLVER.AMP.ENABLED": False,
    "TEST.MODE": "whole",
    "TEST.AUG.ENABLED": False,
    "SEED": 0,
}

TOY = "mfaranet_playground_toy"
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.PRETRAINED", "", "SOLVER.IMS_PER_BATCH", "2",
         "DATALOADER.NUM_WORKERS", "0", "DATASETS.TRAIN", f"('{TOY}',)", "DATASETS.TEST", "()",
         "INPUT.MIN_SIZE_TRAIN", "[48, 64]", "INPUT.MAX_SIZE_TRAIN", "512",
         "INPUT.CROP_PAD.SIZE", "[64, 64]", "MODEL.MFARANET.OHEM_MIN_KEPT", "1000"]


def _get(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_the_experiments_are_all_there_with_their_readme():
    folders = sorted(d for d in os.listdir(MFARANET) if os.path.isdir(os.path.join(MFARANET, d)))
    assert folders == sorted(list(EXPERIMENTS) + [TINY])
    readme = open(os.path.join(MFARANET, "README.md")).read()
    for name in folders:
        assert f"`{name}`" in readme, f"playground/MFARANet/README.md does not list {name}"


def test_epochs_of_the_original_loader():
    # 2 GPUs, DistributedSampler (ceil(n / 2) each), batches of 7, the last incomplete one dropped.
    assert iterations_per_epoch(2975) == 212 and iterations_per_epoch(3475) == 248


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_config_holds_the_original_recipe(name):
    cfg = playground.load_config(os.path.join(MFARANET, name))
    backbone, branch_only, train, max_iter, period, pretrained, _ = EXPERIMENTS[name]
    got = (cfg.MODEL.BACKBONE.NAME, cfg.MODEL.MFARANET.BRANCH_ONLY, tuple(cfg.DATASETS.TRAIN),
           cfg.SOLVER.LR_SCHEDULER.MAX_ITER, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.MODEL.PRETRAINED)
    assert got == (backbone, branch_only, train, max_iter, period, pretrained)
    wrong = {k: (_get(cfg, k), v) for k, v in COMMON.items()
             if (list(_get(cfg, k)) if isinstance(v, list) else _get(cfg, k)) != v}
    assert not wrong, f"{name}: (ours, original's) {wrong}"
    test_sets = () if train == TRAINVAL else ("cityscapes_fine_sem_seg_val",)
    assert tuple(cfg.DATASETS.TEST) == test_sets
    assert "mfaranet" in cfg.FAMILIES


@pytest.fixture(autouse=True)
def _one_thread():
    # Several intra-op threads on a loaded 2-core machine wait on each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    """``TOY``: four 48x80 RGB images, labels 0/1 with an ignored top row, 19 class names."""
    root = str(tmp_path_factory.mktemp("mfaranet_toy"))
    write_split(root, "train", 4, seed=0, size=(48, 80))
    register_sem_seg(TOY, os.path.join(root, "train", "images"),
                     os.path.join(root, "train", "labels"),
                     classes=[f"class{i}" for i in range(19)], image_ext=".png")
    yield TOY
    DatasetCatalog.remove(TOY)
    MetadataCatalog.remove(TOY)


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_playground_trains_one_iteration_on_cpu(name, toy_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path))
    torch.manual_seed(0)
    cfg, model = playground.build(os.path.join(MFARANET, name), SMALL)
    assert sum(p.numel() for p in model.parameters()) == EXPERIMENTS[name][-1]
    # The decoder learns at 10x the backbone's rate (the original's two parameter groups).
    optimizer = build_optimizer(cfg, model)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert {lrs[id(p)] for p in model.backbone.parameters()} == {0.005}
    assert [lrs[id(p)] for p in model.head.parameters()] == pytest.approx(
        [0.05] * len(list(model.head.parameters())))
    trainer = SimpleTrainer(model, build_train_loader(cfg), optimizer)
    trainer.train(0, 1)
    latest = {k: v for k, (v, _) in trainer.storage.latest().items()}
    assert torch.isfinite(torch.tensor(latest["total_loss"]))
    branches = [2] if EXPERIMENTS[name][1] == 2 else [1, 2, 3, 4]
    for b in branches:
        assert latest[f"loss_branch{b}"] > 0
        assert (f"loss_boundary{b}" in latest) == (branches != [2])
    # Every parameter took part (DDP runs with FIND_UNUSED_PARAMETERS False).
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
def test_street_scene_variant_trains_with_dl_train_and_dl_test_scores_each_branch(
        tmp_path, monkeypatch):
    monkeypatch.setenv("DL_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "output"))
    monkeypatch.setitem(synthetic.SYNTHETIC_OPTIONS, "num_train", 4)
    monkeypatch.setitem(synthetic.SYNTHETIC_OPTIONS, "num_val", 2)
    monkeypatch.setitem(synthetic.SYNTHETIC_OPTIONS, "size", (32, 64))
    folder = os.path.join(MFARANET, TINY)
    cfg = playground.load_config(folder)
    assert cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.PRETRAINED == ""
    assert (cfg.MODEL.BACKBONE.WIDTH, cfg.MODEL.MFARANET.DECODER_CHANNELS) == (32, 32)
    small = ["SOLVER.LR_SCHEDULER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2",
             "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "[32]",
             "INPUT.CROP_PAD.SIZE", "[32, 64]", "INPUT.MIN_SIZE_TEST", "32",
             "TEST.VIS_NUM_IMAGES", "0", "LOG_PERIOD", "1"]
    assert train_net.main_train(["--playground", folder, "--num-gpus", "1"] + small) in (0, None)
    out = tmp_path / "output" / "MFARANet" / TINY
    log = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    steps = [m for m in log if "total_loss" in m]
    assert [m["iteration"] for m in steps] == [0, 1, 2]
    assert all("loss_boundary_attention4" in m for m in steps)

    train_net.main_test(["--playground", folder, "MODEL.WEIGHTS", str(out / "model_final.pth")]
                        + small)
    results = json.loads((out / "inference" / "model_final" / "results.json").read_text())
    val = results["synthetic_cityscapes_val"]
    seg = val["sem_seg"]
    # Branches 1..4, then the fused output, which is the prediction.
    assert [f"exit{k}" in seg for k in range(5)] == [True] * 5
    assert seg["mIoU"] == pytest.approx(seg["exit4"]["mIoU"])
    assert val["exits"]["num_exits"] == 5
    assert val["exits"]["mIoU"] == pytest.approx([seg[f"exit{k}"]["mIoU"] for k in range(5)])

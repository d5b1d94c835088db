"""The ``playground/Anytime`` experiments: the six published ADP-C settings hold the original's
recipe (reference ``anytime.md`` sections 4.2-4.5 and 6, written out below so that a wrong value
fails), every Anytime playground builds with its real config and trains one iteration on CPU at
a tiny crop through the library's loader, optimizer and trainer, and the street-scene variant
trains through ``dl_train`` and reports each exit through ``dl_test``.
"""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from toy_data import registered_split

from dl_lib import playground
from dl_lib.data import build_train_loader
from dl_lib.engine import SimpleTrainer
from dl_lib.solver import build_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ANYTIME = os.path.join(REPO, "playground", "Anytime")
TINY = "HRNet_W18.ADP_C.Tiny.Synthetic"
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# name: backbone, ImageNet file, exit type, RH width, masks, trainable parameters (section 6).
SETTINGS = {
    "HRNet_W48.EE": ("hrnet_w48", "hrnetv2_w48_imagenet_pretrained.pth", "original", 128, False,
                     66_074_796),
    "HRNet_W48.RH": ("hrnet_w48", "hrnetv2_w48_imagenet_pretrained.pth", "flex", 128, False,
                     66_062_700),
    "HRNet_W48.ADP_C": ("hrnet_w48", "hrnetv2_w48_imagenet_pretrained.pth", "flex", 128, True,
                        66_062_998),
    "HRNet_W18.EE": ("hrnet_w18_small_v2", "hrnet_w18_small_model_v2.pth", "original", 64, False,
                     4_033_556),
    "HRNet_W18.RH": ("hrnet_w18_small_v2", "hrnet_w18_small_model_v2.pth", "flex", 64, False,
                     3_997_492),
    "HRNet_W18.ADP_C": ("hrnet_w18_small_v2", "hrnet_w18_small_model_v2.pth", "flex", 64, True,
                        3_997_635),
}

# Sections 4.2-4.5 in our key names: what all six share.
CLASS_WEIGHTS = [0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023,
                 0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507]
COMMON = {
    "MODEL.META_ARCHITECTURE": "AnytimeSegmentor",
    "MODEL.WEIGHTS": "",
    # RGB / 255 minus the ImageNet mean (0.485, 0.456, 0.406), over its std (0.229, 0.224,
    # 0.225), in our 0-255 convention.
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
    "MODEL.BACKBONE.NORM": "nnSyncBN",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 19,
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 255,
    "MODEL.EXIT_LOSS_WEIGHTS": [1.0, 1.0, 1.0, 1.0],
    "MODEL.EXIT.FINAL_CONV_KERNEL": 1,
    "MODEL.EXIT.STOP": -1,
    "MODEL.MASK.CONF_THRE": 0.998,
    "MODEL.MASK.CRIT": "conf_thre",
    "MODEL.MASK.AGGR": "copy",
    "MODEL.MASK.INTERPOLATION": "rbf",
    "MODEL.MASK.RESIZE": "nearest",
    "MODEL.ANYTIME.CLASS_WEIGHTS": CLASS_WEIGHTS,
    "DATASETS.TRAIN": ("cityscapes_fine_sem_seg_train",),
    "DATASETS.TEST": ("cityscapes_fine_sem_seg_val",),
    "INPUT.FORMAT": "RGB",
    # 2048 x s long side, s = 0.5, 0.6, .., 2.1, as short sides of the 2:1 images
    "INPUT.MIN_SIZE_TRAIN": [512, 615, 717, 819, 922, 1024, 1127, 1229, 1331, 1434, 1536, 1639,
                             1741, 1843, 1946, 2048, 2151],
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice",
    "INPUT.MAX_SIZE_TRAIN": 0,
    "INPUT.CROP_PAD.ENABLED": True,
    "INPUT.CROP_PAD.SIZE": [512, 1024],
    "INPUT.CROP_PAD.SINGLE_CATEGORY_MAX_AREA": 1.0,
    "INPUT.RANDOM_FLIP": "horizontal",
    "INPUT.COLOR_AUG.ENABLED": False,
    "INPUT.MIN_SIZE_TEST": 1024,
    "INPUT.MAX_SIZE_TEST": 2048,
    "SOLVER.OPTIMIZER.NAME": "SGD",
    "SOLVER.OPTIMIZER.BASE_LR": 0.01,
    "SOLVER.OPTIMIZER.MOMENTUM": 0.9,
    "SOLVER.OPTIMIZER.NESTEROV": False,
    "SOLVER.OPTIMIZER.WEIGHT_DECAY": 5e-4,
    "SOLVER.OPTIMIZER.WEIGHT_DECAY_NORM": 5e-4,
    "SOLVER.OPTIMIZER.WEIGHT_DECAY_BIAS": 5e-4,
    "SOLVER.OPTIMIZER.BIAS_LR_FACTOR": 1.0,
    "SOLVER.LR_SCHEDULER.NAME": "PolyLR",
    "SOLVER.LR_SCHEDULER.MAX_ITER": 119_548,  # 484 epochs x int(2975 / 3 / 4)
    "SOLVER.LR_SCHEDULER.POLY_POWER": 0.9,
    "SOLVER.LR_SCHEDULER.END_LR_FACTOR": 0.0,
    "SOLVER.IMS_PER_BATCH": 12,
    "SOLVER.GRAD_CLIP": 0.0,
    "SOLVER.AMP.ENABLED": False,
    "TEST.IMS_PER_BATCH": 1,
    "TEST.AUG.ENABLED": False,
    "TEST.MODE": "whole",
    "TEST.PRECISE_BN.ENABLED": False,
}

TOY = "anytime_playground_toy"
SMALL = ["MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
         "DATASETS.TRAIN", f"('{TOY}',)", "DATASETS.TEST", "()",
         "INPUT.MIN_SIZE_TRAIN", "[64]", "INPUT.MAX_SIZE_TRAIN", "512",
         "INPUT.CROP_PAD.SIZE", "[64, 64]", "SEED", "0"]


def _get(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) and not isinstance(value, str) else value


def test_the_published_settings_are_all_there():
    folders = {d for d in os.listdir(ANYTIME) if os.path.isfile(os.path.join(ANYTIME, d, "net.py"))}
    assert set(SETTINGS) | {TINY} <= folders
    readme = open(os.path.join(ANYTIME, "README.md")).read()
    for name in list(SETTINGS) + [TINY]:
        assert f"`{name}`" in readme, f"playground/Anytime/README.md does not list {name}"


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_config_holds_the_original_values(name):
    cfg = playground.load_config(os.path.join(ANYTIME, name))
    backbone, imagenet, exit_type, width, masks, _ = SETTINGS[name]
    got = (cfg.MODEL.BACKBONE.NAME, os.path.basename(cfg.MODEL.PRETRAINED), cfg.MODEL.EXIT.TYPE,
           cfg.MODEL.EXIT.INTER_CHANNEL, cfg.MODEL.MASK.USE)
    assert got == (backbone, imagenet, exit_type, width, masks)
    # A relative path: the file is looked up under the folder dl_train runs in.
    assert cfg.MODEL.PRETRAINED == f"pretrained_models/{imagenet}"
    wrong = {k: (_get(cfg, k), v) for k, v in COMMON.items() if _plain(_get(cfg, k)) != _plain(v)}
    assert not wrong, f"{name}: (ours, original's) {wrong}"
    assert list(cfg.FAMILIES) == ["anytime"]


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_config_says_only_what_differs_from_the_shared_recipe(name):
    # The recipe lives once in anytime/recipes.py; a playground repeating it drifts.
    code = open(os.path.join(ANYTIME, name, "config.py")).read().split('"""', 2)[2]
    repeated = [k for k in ("META_ARCHITECTURE", "PIXEL_MEAN", "nnSyncBN", "MIN_SIZE_TRAIN",
                            "BASE_LR", "MAX_ITER", "IMS_PER_BATCH", "INTER_CHANNEL", "PRETRAINED")
                if k in code]
    assert not repeated, f"playground/Anytime/{name}/config.py repeats the recipe's {repeated}"
    assert "anytime.recipes import" in code


def test_recipe_returns_a_new_config_each_call_and_names_the_networks():
    from dl_lib.modeling.anytime.recipes import cityscapes_config

    first = cityscapes_config("w18")
    first.INPUT.MIN_SIZE_TRAIN.append(4096)
    first.MODEL.MASK.USE = True
    again = cityscapes_config("w18")
    assert list(again.INPUT.MIN_SIZE_TRAIN) == COMMON["INPUT.MIN_SIZE_TRAIN"]
    assert again.MODEL.MASK.USE is False and again.MODEL.EXIT.TYPE == "original"
    with pytest.raises(ValueError, match="'w32'.*'w18', 'w48'"):
        cityscapes_config("w32")


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    """``TOY``: four 48x80 RGB images, labels 0/1 with an ignored top row, 19 class names."""
    with registered_split(TOY, str(tmp_path_factory.mktemp("anytime_toy")), 4) as name:
        yield name


def _all_playgrounds():
    names = sorted(d for d in os.listdir(ANYTIME)
                   if os.path.isfile(os.path.join(ANYTIME, d, "net.py")))
    return [pytest.param(n, marks=pytest.mark.slow) if "W48" in n else n for n in names]


@pytest.mark.parametrize("name", _all_playgrounds())
def test_playground_trains_one_iteration_on_cpu(name, toy_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path))
    torch.manual_seed(0)
    cfg, model = playground.build(os.path.join(ANYTIME, name), SMALL)
    if name in SETTINGS:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable == SETTINGS[name][-1]
    # nnSyncBN at world size 1 is plain BatchNorm (nothing to synchronise, no process group);
    # under CA the masked segments' norms are its AnytimeBatchNorm2d subclass.
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.BatchNorm2d) for m in norms)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)

    trainer = SimpleTrainer(model, build_train_loader(cfg), build_optimizer(cfg, model),
                            grad_clip=cfg.SOLVER.GRAD_CLIP)
    trainer.train(0, 1)
    latest = {k: v for k, (v, _) in trainer.storage.latest().items()}
    assert torch.isfinite(torch.tensor(latest["total_loss"]))
    exits = sorted(k for k in latest if re.fullmatch(r"loss_sem_seg(_\d)?", k))
    if cfg.MODEL.META_ARCHITECTURE == "AnytimeSegmentor":
        assert exits == [f"loss_sem_seg_{i}" for i in range(4)]  # every exit is trained
    assert all(latest[k] > 0 for k in exits)


def _command(name):
    # dl_train / dl_test are main_train / main_test; the scenes are made small first (their
    # documented knob, read on first use), in the same process.
    main = "main_train" if name == "dl_train" else "main_test"
    code = ("import sys; from dl_lib.data.datasets import synthetic; "
            "synthetic.SYNTHETIC_OPTIONS.update(num_train=4, num_val=2, size=(128, 256)); "
            f"from dl_lib.tools.train_net import {main}; sys.exit({main}())")
    return [sys.executable, "-c", code]


@pytest.mark.slow
def test_street_scene_variant_trains_with_dl_train_and_dl_test_reports_each_exit(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", DL_OUTPUT_ROOT=str(tmp_path / "out"),
               DL_DATASETS=str(tmp_path / "datasets"))
    folder = os.path.join(ANYTIME, TINY)

    def run(name, *args):
        proc = subprocess.run(_command(name) + ["--num-gpus", "1", *args], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    run("dl_train", "SOLVER.LR_SCHEDULER.MAX_ITER", "3", "SOLVER.LR_SCHEDULER.WARMUP_ITERS", "1",
        "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "TEST.VIS_NUM_IMAGES", "0")
    out = tmp_path / "out" / "Anytime" / TINY
    assert (out / "model_final.pth").is_file()

    log = run("dl_test", "TEST.VIS_NUM_IMAGES", "1")
    inference = out / "inference" / "model_final"
    lines = (inference / "result.txt").read_text().splitlines()
    mious = [float(v) for v in lines[0].split("\t")]
    results = json.loads((inference / "results.json").read_text())["synthetic_cityscapes_val"]
    seg = results["sem_seg"]
    # The original's line: four exits' mIoU and their mean, tab-separated, two decimals.
    assert mious == pytest.approx([round(seg[f"exit{k}"]["mIoU"], 2) for k in range(4)]
                                  + [round(sum(seg[f"exit{k}"]["mIoU"] for k in range(4)) / 4, 2)],
                                  abs=0.006)
    assert lines[0] in log
    assert "GFLOPs per exit" in log and "latency per exit" in log
    gflops = results["exits"]["gflops"]
    # Cumulative, never above the dense W18 RH count at 128x256 (73.23 / 64 at exit 4).
    assert len(gflops) == 4 and gflops == sorted(gflops) and gflops[-1] <= 73.23 / 64 + 1e-3
    assert len(results["exits"]["time"]["ms_per_image"]) == 4
    assert (inference / "exits_tradeoff.png").is_file()

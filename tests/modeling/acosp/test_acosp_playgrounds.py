"""``playground/ACoSP``: every experiment holds the original's recipe (reference ``acosp.md``
section 4, written out below so that a wrong value fails) and trains one iteration on CPU at a
tiny crop through its Trainer's loader (semseg's augmentation), the library's optimizer (head
x10 for PSPNet, the logits' own group) and the channel masks of its sparsity."""
import math
import os

import pytest
import torch
from toy_data import write_split

from dl_lib import playground
from dl_lib.data import DatasetCatalog, MetadataCatalog, register_sem_seg
from dl_lib.engine import SimpleTrainer
from dl_lib.modeling.pruning import channel_masks
from dl_lib.solver import build_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ACOSP = os.path.join(REPO, "playground", "ACoSP")

# Reference section 4: crop, scale, batch, schedule, wd, epochs, aux, prune end, test base,
# test crop, classes, train images (train_aug for VOC; CamVid train), train / test sets.
RECIPES = {
    ("PSPNet50", "Cityscapes"): ((713, 713), (0.5, 2.0), 16, "PolyLR", 1e-4, 200, 0.4, 50, 2048,
                                 (713, 713), 19, 2975, "cityscapes_fine_sem_seg_train",
                                 "cityscapes_fine_sem_seg_val"),
    ("PSPNet50", "ADE20K"): ((473, 473), (0.5, 2.0), 16, "PolyLR", 1e-4, 100, 0.4, 30, 512,
                             (473, 473), 150, 20210, "ade20k_sem_seg_train", "ade20k_sem_seg_val"),
    ("PSPNet50", "VOC2012"): ((473, 473), (0.5, 2.0), 16, "PolyLR", 1e-4, 50, 0.4, 20, 512,
                              (473, 473), 21, 10582, "voc_2012_sem_seg_train_aug",
                              "voc_2012_sem_seg_val"),
    ("SegNet", "Cityscapes"): ((512, 1024), (0.25, 1.0), 16, "PolyLR", 1e-4, 200, 0.0, 50, 2048,
                               (1024, 2048), 19, 2975, "cityscapes_fine_sem_seg_train",
                               "cityscapes_fine_sem_seg_val"),
    ("SegNet", "CamVid"): ((360, 480), (0.25, 1.0), 8, "WarmupCosineLR", 5e-4, 450, 0.0, 300, 480,
                           (360, 480), 11, 367, "camvid_sem_seg_train", "camvid_sem_seg_test"),
}
RATIOS = {0: 0.0, 2: 0.5, 4: 0.75, 8: 0.875, 16: 0.9375}
EXPERIMENTS = {f"{m}.{d}" + (f".ACoSP_{r}" if r else ""): (m, d, s)
               for (m, d) in RECIPES for r, s in RATIOS.items()}
# Published (README): mIoU of dense, ACoSP-2/4/8/16.
PUBLISHED = {("PSPNet50", "ADE20K"): [41.42, 38.97, 33.67, 28.04, 19.39],
             ("PSPNet50", "VOC2012"): [77.30, 72.71, 65.84, 58.26, 48.06],
             ("PSPNet50", "Cityscapes"): [77.35, 74.11, 71.50, 66.06, 59.49],
             ("SegNet", "Cityscapes"): [65.12, 64.62, 60.77, 54.34, 44.12],
             ("SegNet", "CamVid"): [55.49, 51.85, 50.10, 47.25, 42.27]}


def test_the_experiments_are_all_there_with_their_readme_lines():
    folders = {d for d in os.listdir(ACOSP) if os.path.isdir(os.path.join(ACOSP, d))}
    assert set(EXPERIMENTS) <= folders
    readme = open(os.path.join(ACOSP, "README.md")).read()
    lines = {line.split("|")[1].strip().strip("`"): line for line in readme.splitlines()
             if line.startswith("| `")}
    for name, (m, d, s) in EXPERIMENTS.items():
        assert name in lines, f"playground/ACoSP/README.md has no line for {name}"
        published = PUBLISHED[(m, d)][[0.0, 0.5, 0.75, 0.875, 0.9375].index(s)]
        assert f"{published:.2f}" in lines[name], (name, lines[name])


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_config_holds_the_original_recipe(name):
    model, dataset, sparsity = EXPERIMENTS[name]
    crop, scale, batch, sched, wd, epochs, aux, end, base, test_crop, classes, images, train, \
        test = RECIPES[(model, dataset)]
    cfg = playground.load_config(os.path.join(ACOSP, name))
    iters = images // batch
    s = cfg.SOLVER
    got = dict(
        arch=cfg.MODEL.META_ARCHITECTURE, classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        ignore=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE, crop=tuple(cfg.INPUT.CROP_PAD.SIZE),
        scale=tuple(cfg.INPUT.SEMSEG_AUG.SCALE), rotate=tuple(cfg.INPUT.SEMSEG_AUG.ROTATE),
        aug=(cfg.INPUT.SEMSEG_AUG.ENABLED, cfg.INPUT.SEMSEG_AUG.ROTATE_PROB,
             cfg.INPUT.SEMSEG_AUG.BLUR_PROB, cfg.INPUT.SEMSEG_AUG.BLUR_KERNEL,
             cfg.INPUT.RANDOM_FLIP),
        batch=s.IMS_PER_BATCH,
        sgd=(s.OPTIMIZER.NAME, s.OPTIMIZER.BASE_LR, s.OPTIMIZER.MOMENTUM),
        wd=(s.OPTIMIZER.WEIGHT_DECAY, s.OPTIMIZER.WEIGHT_DECAY_NORM, s.OPTIMIZER.WEIGHT_DECAY_BIAS),
        sched=(s.LR_SCHEDULER.NAME, s.LR_SCHEDULER.WARMUP_ITERS, s.LR_SCHEDULER.MAX_ITER),
        head=cfg.MODEL.ACOSP.HEAD_LR_MULTIPLIER, aux=cfg.MODEL.ACOSP.AUX_WEIGHT,
        pruning=(cfg.MODEL.PRUNING.ENABLED, cfg.MODEL.PRUNING.SPARSITY if sparsity else None,
                 cfg.MODEL.PRUNING.PLACEMENT, cfg.MODEL.PRUNING.START_EPOCH,
                 cfg.MODEL.PRUNING.END_EPOCH, cfg.MODEL.PRUNING.ITERS_PER_EPOCH,
                 cfg.MODEL.PRUNING.TEMPERATURE_START, cfg.MODEL.PRUNING.TEMPERATURE_END,
                 cfg.MODEL.PRUNING.TEMPERATURE_SCHEDULE, cfg.MODEL.PRUNING.MIN_CHANNELS),
        sets=(tuple(cfg.DATASETS.TRAIN), tuple(cfg.DATASETS.TEST)),
        test=(cfg.TEST.AUG.ENABLED, list(cfg.TEST.AUG.MIN_SIZES), cfg.TEST.AUG.MAX_SIZE,
              cfg.TEST.AUG.FLIP, cfg.TEST.MODE, tuple(cfg.TEST.SLIDE.CROP_SIZE),
              tuple(cfg.TEST.SLIDE.STRIDE)),
    )
    want = dict(
        arch="ACoSPPSPNet" if model == "PSPNet50" else "ACoSPSegNet", classes=classes,
        ignore=255, crop=crop, scale=scale, rotate=(-10.0, 10.0),
        aug=(True, 0.5, 0.5, 5, "horizontal"), batch=batch, sgd=("SGD", 0.01, 0.9),
        wd=(wd, wd, wd), sched=(sched, 0, epochs * iters),
        head=10.0 if model == "PSPNet50" else 1.0, aux=aux,
        pruning=(sparsity > 0, sparsity or None, "original", 0, end, iters, 1.0, 0.001, "epoch", 8),
        sets=((train,), (test,)),
        # Long side = base size, flip-averaged windows every ceil(2/3 crop).
        test=(True, [base], base, True, "slide", test_crop,
              tuple(math.ceil(2 * c / 3) for c in test_crop)),
    )
    assert got == want
    assert cfg.FAMILIES == ["pruning", "acosp"]
    if model == "PSPNet50":
        b = cfg.MODEL.BACKBONE
        assert (b.NAME, b.DEEP_STEM, b.STEM_WIDTH, b.OUTPUT_STRIDE) == ("resnet50", True, 128, 8)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TOY = "acosp_playground_toy"


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    """Four 24x40 RGB images, labels 0/1 with an ignored top row."""
    root = str(tmp_path_factory.mktemp("acosp_toy"))
    write_split(root, "train", 4, seed=0, size=(24, 40))
    register_sem_seg(TOY, os.path.join(root, "train", "images"),
                     os.path.join(root, "train", "labels"),
                     classes=[f"class{i}" for i in range(2)], image_ext=".png")
    yield TOY
    DatasetCatalog.remove(TOY)
    MetadataCatalog.remove(TOY)


SMALL = ["MODEL.DEVICE", "cpu", "MODEL.PRETRAINED", "", "SOLVER.IMS_PER_BATCH", "2",
         "DATALOADER.NUM_WORKERS", "0", "DATASETS.TRAIN", f"('{TOY}',)", "DATASETS.TEST", "()",
         "INPUT.CROP_PAD.SIZE", "[32, 32]"]  # SegNet pools 5 times


@pytest.mark.slow  # ~2-6 s per playground (15 PSPNet-50s) on a shared 2-core machine
@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_playground_trains_one_iteration_on_cpu(name, toy_dataset, tmp_path, monkeypatch):
    model_name, _, sparsity = EXPERIMENTS[name]
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path))
    torch.manual_seed(0)
    folder = os.path.join(ACOSP, name)
    cfg, model = playground.build(folder, SMALL)
    masks = channel_masks(model)
    assert len(masks) == (0 if not sparsity else 61 if model_name == "PSPNet50" else 25)
    optimizer = build_optimizer(cfg, model)
    lrs = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    head = 0.1 if model_name == "PSPNet50" else 0.01
    logits = {id(m.weight) for m in masks.values()}
    for pname, p in model.named_parameters():
        if id(p) in logits:
            assert lrs[id(p)] == (0.01, 0.0), pname  # the logits: own group
        elif pname.startswith("backbone."):
            assert lrs[id(p)][0] == pytest.approx(0.01), pname
        else:
            assert lrs[id(p)][0] == pytest.approx(head), pname
    Trainer = playground.load_net(folder).Trainer
    loader = Trainer.build_train_loader(cfg)
    batch = next(iter(loader))
    assert [tuple(d["image"].shape) for d in batch] == [(3, 32, 32)] * 2
    before = {k: m.weight.detach().clone() for k, m in masks.items()}
    trainer = SimpleTrainer(model, loader, optimizer)
    trainer.train(0, 1)
    latest = {k: v for k, (v, _) in trainer.storage.latest().items()}
    assert math.isfinite(latest["total_loss"])
    assert ("loss_aux" in latest) == (model_name == "PSPNet50")
    if sparsity:  # the logits learned in that step
        assert any(not torch.equal(masks[k].weight, v) for k, v in before.items())

"""Two Gloo processes train and evaluate like one process with the same global batch.

One spawned job (``dl_lib.engine.launch``, 2 CPU processes) and one in-process run of the same
function (world size 1) each train a tiny segmentor with ``SyncBN`` (all-reduce
``NaiveSyncBatchNorm`` on Gloo, plain BatchNorm in one process) through ``DefaultTrainer`` and
the real data loader for a few iterations, then evaluate a fixed set of weights.

* Training: final weights, BN running statistics and SGD momentum buffers (``model_final.pth``)
  agree within float tolerance. Exact equality is not expected: the two runs sum the same
  numbers in a different order (per-rank partial sums, then the all-reduce). Equal results need
  equal labelled pixels per rank (DDP averages the ranks' mean losses), which these masks have.
* Evaluation of the same weights: the confusion matrix and every score are equal exactly
  (integer counts gathered over ranks; 5 images over 2 ranks, so the shards are uneven).
"""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dl_lib.config import get_cfg
from toy_data import without_timing
from dl_lib.data.catalog import DatasetCatalog, MetadataCatalog
from dl_lib.engine import DefaultTrainer, launch
from dl_lib.layers import get_norm

NUM_CLASSES = 3
TRAIN, VAL = "dist_equality_train", "dist_equality_val"
H, W = 16, 24


def _write_split(root: str, split: str, n: int, seed: int) -> None:
    """n random RGB images; class = which third of the range the red channel falls in (every
    pixel labelled, so each rank's loss averages the same number of pixels)."""
    os.makedirs(os.path.join(root, split), exist_ok=True)
    rng = np.random.RandomState(seed)
    for i in range(n):
        image = rng.randint(0, 256, size=(H, W, 3)).astype(np.uint8)
        label = np.minimum(image[:, :, 0] // 86, NUM_CLASSES - 1).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(root, split, f"{i}.png"))
        Image.fromarray(label).save(os.path.join(root, split, f"{i}_gt.png"))


def _register(root: str) -> None:
    for name, split in ((TRAIN, "train"), (VAL, "val")):
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
        folder = os.path.join(root, split)
        files = sorted(f for f in os.listdir(folder) if not f.endswith("_gt.png"))
        dicts = [{"file_name": os.path.join(folder, f), "image_id": f"{split}_{f}",
                  "sem_seg_file_name": os.path.join(folder, f.replace(".png", "_gt.png")),
                  "height": H, "width": W} for f in files]
        DatasetCatalog.register(name, lambda d=dicts: d)
        MetadataCatalog.get(name).set(stuff_classes=[str(k) for k in range(NUM_CLASSES)],
                                      ignore_label=255, evaluator_type="sem_seg")


class TinySyncBNSegmentor(nn.Module):
    """conv - SyncBN - ReLU - conv - SyncBN - ReLU - 1x1 conv, in the dl_lib model contract."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), get_norm("SyncBN", 8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False), get_norm("SyncBN", 8), nn.ReLU(),
            nn.Conv2d(8, NUM_CLASSES, 1))

    def forward(self, batched_inputs):
        x = torch.stack([d["image"].float() for d in batched_inputs]) / 255.0 - 0.5
        logits = self.body(x)
        if self.training:
            target = torch.stack([d["sem_seg"] for d in batched_inputs])
            return {"loss_sem_seg": F.cross_entropy(logits, target, ignore_index=255)}
        return [{"sem_seg": F.interpolate(lg[None], size=(d["height"], d["width"]),
                                          mode="bilinear", align_corners=False)[0]}
                for lg, d in zip(logits, batched_inputs)]


def _config(output_dir: str):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = output_dir
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES
    cfg.DATASETS.TRAIN = (TRAIN,)
    cfg.DATASETS.TEST = ()  # evaluated explicitly below, on fixed weights
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = [H]
    cfg.INPUT.MAX_SIZE_TRAIN = 4 * W
    cfg.INPUT.MIN_SIZE_TEST = H
    cfg.INPUT.MAX_SIZE_TEST = 4 * W
    cfg.INPUT.CROP_PAD.ENABLED = False
    cfg.INPUT.RANDOM_FLIP = "horizontal"  # per-item seeds: the same flips at any world size
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SOLVER.OPTIMIZER.BASE_LR = 0.1
    cfg.SOLVER.LR_SCHEDULER.MAX_ITER = 5
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.TEST.IMS_PER_BATCH = 2
    cfg.SEED = 7
    cfg.LOG_PERIOD = 1000
    return cfg


def train_then_evaluate(data_root: str, output_dir: str, reference_weights: str) -> None:
    """Every process: train 5 iterations (``OUTPUT_DIR/model_final.pth``), then evaluate
    ``reference_weights`` on the val set (``OUTPUT_DIR/eval/sem_seg_evaluation.json``)."""
    _register(data_root)
    cfg = _config(output_dir)
    torch.manual_seed(0)  # the same initial weights in every run (DDP also broadcasts rank 0's)
    trainer = DefaultTrainer(cfg, TinySyncBNSegmentor())
    trainer.resume_or_load(resume=False)
    trainer.train()

    model = TinySyncBNSegmentor()
    model.load_state_dict(torch.load(reference_weights, map_location="cpu"))
    eval_cfg = cfg.clone()
    eval_cfg.DATASETS.TEST = (VAL,)
    evaluator = DefaultTrainer.build_evaluator(eval_cfg, VAL, os.path.join(output_dir, "eval"))
    DefaultTrainer.test(eval_cfg, model, evaluators=[evaluator])


def _final_state(output_dir):
    ckpt = torch.load(os.path.join(output_dir, "model_final.pth"), map_location="cpu",
                      weights_only=False)
    momenta = [s["momentum_buffer"] for _, s in sorted(ckpt["optimizer"]["state"].items())]
    return ckpt["model"], momenta


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path, monkeypatch):
    # One thread per process: 2 workers on 2 cores, and no spin-waiting on a busy machine.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # read by the spawned workers' torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _compare_one_and_two_processes(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _compare_one_and_two_processes(tmp_path):
    data_root = str(tmp_path / "data")
    _write_split(data_root, "train", 8, seed=0)
    _write_split(data_root, "val", 5, seed=1)
    reference = str(tmp_path / "reference.pth")
    torch.manual_seed(1)
    trained_like = TinySyncBNSegmentor()
    for m in trained_like.modules():  # non-trivial BN statistics in eval mode
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(trained_like.state_dict(), reference)

    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    launch(train_then_evaluate, 1, args=(data_root, one, reference))  # runs here, world size 1
    launch(train_then_evaluate, 2, backend="gloo", args=(data_root, two, reference))

    # Training: the same weights, BN statistics and momentum, up to summation order.
    model1, momenta1 = _final_state(one)
    model2, momenta2 = _final_state(two)
    assert sorted(model1) == sorted(model2)
    assert any("running_var" in k for k in model1)  # the all-reduce BN is part of the check
    for k in model1:
        assert torch.allclose(model1[k].float(), model2[k].float(), rtol=1e-4, atol=1e-5), \
            (k, (model1[k].float() - model2[k].float()).abs().max())
    assert len(momenta1) == len(momenta2) > 0
    for a, b in zip(momenta1, momenta2):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a - b).abs().max()
    # ... and training moved the weights (so the comparison is not between two initialisations)
    torch.manual_seed(0)
    initial = TinySyncBNSegmentor().state_dict()
    assert (model1["body.0.weight"] - initial["body.0.weight"]).abs().max() > 1e-3

    # Evaluation of one set of weights: identical counts and scores.
    ev1 = json.loads(open(os.path.join(one, "eval", "sem_seg_evaluation.json")).read())
    ev2 = json.loads(open(os.path.join(two, "eval", "sem_seg_evaluation.json")).read())
    assert ev1["num_images"] == ev2["num_images"] == 5
    assert ev1["confusion_matrix"] == ev2["confusion_matrix"]
    assert sum(map(sum, ev1["confusion_matrix"])) == 5 * H * W
    assert ev1["sem_seg"] == ev2["sem_seg"]
    results1 = json.loads(open(os.path.join(one, "results.json")).read())
    results2 = json.loads(open(os.path.join(two, "results.json")).read())
    assert without_timing(results1) == without_timing(results2)  # latency is wall-clock

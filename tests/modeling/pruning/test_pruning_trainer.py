"""PruningTrainer end to end on the street scenes (tiny): the hook's place, the logits' group,
the conversion during training, pruning metrics in metrics.json, a resume across the
conversion, and the final (hard) checkpoint reloading strictly into a HARD_MASKS model."""
import json
import os

import torch
import torch.nn.functional as F
from torch import nn

from dl_lib.checkpoint import Checkpointer
from dl_lib.config import config_from_delta
from dl_lib.data.datasets import synthetic
from dl_lib.engine import hooks
from dl_lib.modeling.pruning import channel_keep_masks, channel_masks, prepare_model
from dl_lib.modeling.pruning.training import PruningHook, PruningTrainer


class TinyMaskedSegmentor(nn.Module):
    """conv-BN-ReLU x2 and an unprunable 1x1 classifier (19 classes)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.cls = nn.Conv2d(16, 19, 1)
        self.cls.unprunable = True
        self.register_buffer("mean", torch.tensor([123.7, 116.3, 103.5]).view(1, 3, 1, 1), False)

    def forward(self, batched_inputs):
        x = torch.stack([d["image"].float() for d in batched_inputs])
        logits = F.interpolate(self.cls(self.body((x - self.mean) / 58.0)), size=x.shape[-2:],
                               mode="bilinear", align_corners=False)
        if self.training:
            target = torch.stack([d["sem_seg"] for d in batched_inputs])
            return {"loss_sem_seg": F.cross_entropy(logits, target, ignore_index=255)}
        return [{"sem_seg": lg} for lg in logits]


def _cfg(output_dir, **pruning):
    pruning = dict(dict(ENABLED=True, SPARSITY=0.5, ITERS_PER_EPOCH=2, END_EPOCH=2,
                        LOGIT_LR_FACTOR=3.0), **pruning)
    return config_from_delta(dict(
        OUTPUT_DIR=output_dir, SEED=0, LOG_PERIOD=1,
        MODEL=dict(PRUNING=pruning, SEM_SEG_HEAD=dict(NUM_CLASSES=19)),
        DATASETS=dict(TRAIN=("synthetic_cityscapes_train",), TEST=()),
        DATALOADER=dict(NUM_WORKERS=0),
        INPUT=dict(MIN_SIZE_TRAIN=[32], MAX_SIZE_TRAIN=64, CROP_PAD=dict(SIZE=[32, 32])),
        SOLVER=dict(IMS_PER_BATCH=2, OPTIMIZER=dict(BASE_LR=0.01),
                    LR_SCHEDULER=dict(MAX_ITER=6), CHECKPOINT_PERIOD=3)), family="pruning")


def _build(cfg):
    torch.manual_seed(0)
    return prepare_model(cfg, TinyMaskedSegmentor())


def test_pruning_trainer_converts_logs_and_reloads(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("DL_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setitem(synthetic.SYNTHETIC_OPTIONS, "num_train", 4)
    monkeypatch.setitem(synthetic.SYNTHETIC_OPTIONS, "num_val", 2)
    monkeypatch.setitem(synthetic.SYNTHETIC_OPTIONS, "size", (32, 64))
    out = str(tmp_path / "out")
    cfg = _cfg(out)
    model = _build(cfg)
    trainer = PruningTrainer(cfg, model)
    kinds = [type(h) for h in trainer._hooks]
    assert kinds.index(PruningHook) == kinds.index(hooks.LRScheduler) + 1
    assert kinds.index(PruningHook) < kinds.index(hooks.PeriodicCheckpointer)
    logits = [m.weight for m in channel_masks(model).values()]
    groups = [g for g in trainer.optimizer.param_groups
              if any(p is logits[0] for p in g["params"])]
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0
    assert all(any(p is q for q in groups[0]["params"]) for p in logits)

    trainer.resume_or_load(resume=False)
    trainer.train()
    assert all(m.is_hard for m in channel_masks(model).values())
    assert {m.k for m in channel_masks(model).values()} == {8}

    lines = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    assert [line["iteration"] for line in lines] == list(range(6))
    assert [line["pruning/body.0/temperature"] for line in lines[:4]] == [1.0] * 4
    assert "pruning/body.0/temperature" not in lines[4]  # hard from iteration 4
    assert lines[5]["pruning/chosen"] == 0.5 and lines[5]["pruning/body.3/pruned"] == 0.5
    assert 0.0 < lines[0]["pruning/undecided"] <= 1.0

    # resume from the soft checkpoint of iteration 2 (model_0000002): converts at 4 again
    resumed = _build(cfg)
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000002.pth")
    trainer = PruningTrainer(cfg, resumed)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 3 and not channel_masks(resumed)["body.0"].is_hard
    trainer.train()
    for path, keep in channel_keep_masks(resumed).items():
        assert torch.equal(keep, channel_keep_masks(model)[path]), path  # an exact resume

    # the final checkpoint is hard: it rebuilds with HARD_MASKS and loads strictly
    rebuilt = _build(_cfg(out, HARD_MASKS=True))
    Checkpointer(rebuilt).load(os.path.join(out, "model_final.pth"), strict=True)
    for path, keep in channel_keep_masks(rebuilt).items():
        assert torch.equal(keep, channel_keep_masks(model)[path]), path

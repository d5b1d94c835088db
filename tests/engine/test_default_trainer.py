"""DefaultTrainer and default_setup, in one process, on the fixture playground.

The fixture's ``Trainer`` overrides only the data loaders (in-memory); optimizer, LR schedule,
checkpointer and evaluator are the library's.
"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dl_lib import playground
from dl_lib.data import DatasetCatalog
from dl_lib.engine import DefaultTrainer, default_setup, hooks


def _trainer(folder, *opts):
    cfg, model = playground.build(folder, list(opts))
    default_setup(cfg)
    return playground.load_net(folder).Trainer(cfg, model)


def _iou_of_saved_model(folder, weights):
    """``{"mIoU", "IoU-dark", "IoU-red"}`` (percent) of the weights in ``weights`` on toy_tiny_val,
    computed here from a fresh model's argmax and the label files (no dl_lib evaluator)."""
    cfg, model = playground.build(folder)
    model.load_state_dict(torch.load(weights, weights_only=True)["model"])
    model.eval()
    net = playground.load_net(folder)
    inter, union = np.zeros(2), np.zeros(2)
    for d in DatasetCatalog.get("toy_tiny_val"):
        with torch.no_grad():
            pred = model([net._mapped(d)])[0]["sem_seg"].argmax(0).numpy()
        gt = np.asarray(Image.open(d["sem_seg_file_name"]))
        valid = gt != 255
        for k in range(2):
            inter[k] += np.sum((pred == k) & (gt == k) & valid)
            union[k] += np.sum(((pred == k) | (gt == k)) & valid)
    iou = 100 * inter / union
    return {"mIoU": iou.mean(), "IoU-dark": iou[0], "IoU-red": iou[1]}


@pytest.mark.slow  # about 10 s on a loaded 2-core machine
def test_training_learns_the_separable_toy_data(toy_playground):
    """15 iterations on "class 1 where the red channel is bright": a trainer that does not train
    (no optimizer step, LR 0, gradients dropped, eval of the initial weights) stays near chance
    (an untrained Tiny model scores about 25 mIoU here); the trained one reaches about 96."""
    trainer = _trainer(toy_playground, "SOLVER.LR_SCHEDULER.MAX_ITER", "15",
                       "SOLVER.OPTIMIZER.BASE_LR", "0.5", "SOLVER.CHECKPOINT_PERIOD", "100")
    trainer.resume_or_load(resume=False)
    untrained = trainer.test(trainer.cfg, trainer.model)["sem_seg"]["mIoU"]
    results = trainer.train()
    losses = [v for v, _ in trainer.storage.history("loss_sem_seg").values()]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert untrained < 50 < 80 < results["sem_seg"]["mIoU"]


def test_train_writes_outputs_and_resume_follows_a_longer_schedule(toy_playground):
    trainer = _trainer(toy_playground, "SOLVER.LR_SCHEDULER.MAX_ITER", "4")
    out = trainer.cfg.OUTPUT_DIR
    trainer.resume_or_load(resume=True)  # nothing to resume yet: a fresh start
    assert trainer.start_iter == 0
    results = trainer.train()
    # the reported numbers are those of the saved final model, evaluated here independently
    expected = _iou_of_saved_model(toy_playground, os.path.join(out, "model_final.pth"))
    assert {k: results["sem_seg"][k] for k in expected} == pytest.approx(expected, abs=1e-4)
    for name in ("config.yaml", "metrics.json", "log.txt", "model_final.pth", "results.json",
                 "last_checkpoint"):
        assert os.path.exists(os.path.join(out, name)), name
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.json"))]
    assert [l["iteration"] for l in lines[:4]] == [0, 1, 2, 3]
    assert "sem_seg/mIoU" in lines[-1]
    final_weight = trainer.model.body[0].weight.detach().clone()

    # Resume with MAX_ITER 6: continue at 4, weights restored, LR from the new schedule.
    resumed = _trainer(toy_playground, "SOLVER.LR_SCHEDULER.MAX_ITER", "6")
    assert not torch.equal(resumed.model.body[0].weight, final_weight)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    assert torch.equal(resumed.model.body[0].weight, final_weight)
    base_lr = resumed.cfg.SOLVER.OPTIMIZER.BASE_LR
    lr = max(g["lr"] for g in resumed.optimizer.param_groups)
    assert lr == pytest.approx(base_lr * (1 - 4 / 6) ** 0.9)  # PolyLR at iteration 4 of 6
    resumed.train()
    assert resumed.iter == 6
    assert json.loads(open(os.path.join(out, "metrics.json")).readlines()[-2])["iteration"] == 5


def test_model_weights_initialise_the_model_only(toy_playground, tmp_path):
    src = _trainer(toy_playground, "SOLVER.LR_SCHEDULER.MAX_ITER", "2", "DATASETS.TEST", "()",
                   "OUTPUT_DIR", str(tmp_path / "src"))
    src.resume_or_load(resume=False)
    src.train()
    weights = str(tmp_path / "src" / "model_final.pth")
    assert torch.load(weights, weights_only=True)["iteration"] == 1

    dst = _trainer(toy_playground, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / "dst"))
    dst.resume_or_load(resume=True)  # no checkpoint in dst: MODEL.WEIGHTS, model only
    assert dst.start_iter == 0
    assert torch.equal(dst.model.body[0].weight, src.model.body[0].weight)
    assert dst.optimizer.state_dict()["state"] == {}  # the saved optimizer state was ignored
    assert dst.optimizer.param_groups[0]["lr"] == pytest.approx(dst.cfg.SOLVER.OPTIMIZER.BASE_LR)


def test_default_hook_order(toy_playground):
    trainer = _trainer(toy_playground, "TEST.PRECISE_BN.ENABLED", "True")
    assert [type(h) for h in trainer._hooks] == [
        hooks.IterationTimer, hooks.LRScheduler, hooks.PreciseBN, hooks.PeriodicCheckpointer,
        hooks.EvalHook, hooks.PeriodicWriter]
    no_test = _trainer(toy_playground, "DATASETS.TEST", "()")
    assert hooks.EvalHook not in [type(h) for h in no_test._hooks]


def test_builders_can_be_overridden(toy_playground):
    class Adam(playground.load_net(toy_playground).Trainer):
        @classmethod
        def build_optimizer(cls, cfg, model):
            return torch.optim.Adam(model.parameters(), lr=1e-3)

    cfg, model = playground.build(toy_playground)
    trainer = Adam(cfg, model)
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    assert isinstance(trainer, DefaultTrainer)


def test_default_setup_seeds_and_determinism(toy_playground):
    cfg = playground.load_config(toy_playground, ["SEED", "123", "DETERMINISTIC", "True"])
    try:
        default_setup(cfg)
        a = torch.rand(3)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        default_setup(cfg)
        assert torch.equal(torch.rand(3), a)
        with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml")) as f:
            assert "SEED: 123" in f.read()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False

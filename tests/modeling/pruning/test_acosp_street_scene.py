"""playground/ACoSP/SegNet.Tiny.Synthetic end to end at a tiny size: ``dl_train`` prunes (soft
masks annealed, converted to hard ones, fine-tuned), ``tools/compress.py`` turns the hard-masked
checkpoint into a smaller dense one, and ``dl_test`` scores both with the same mIoU."""
import importlib.util
import json
import os

import pytest
import torch

from dl_lib import playground
from dl_lib.checkpoint import Checkpointer
from dl_lib.data.datasets import synthetic
from dl_lib.modeling.pruning import channel_masks
from dl_lib.modeling.pruning.training import PruningTrainer
from dl_lib.tools import train_net

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
FOLDER = os.path.join(ROOT, "playground", "ACoSP", "SegNet.Tiny.Synthetic")


def _compress_tool():
    spec = importlib.util.spec_from_file_location("compress_tool",
                                                  os.path.join(ROOT, "tools", "compress.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_and_model():
    cfg = playground.load_config(FOLDER)
    p = cfg.MODEL.PRUNING
    assert (p.ENABLED, p.SPARSITY, p.PLACEMENT, p.MIN_CHANNELS) == (True, 0.5, "after_bn", 8)
    assert (p.ITERS_PER_EPOCH, p.START_EPOCH, p.END_EPOCH, cfg.SOLVER.LR_SCHEDULER.MAX_ITER) == (
        8, 0, 15, 240)
    assert (p.TEMPERATURE_START, p.TEMPERATURE_END, p.TEMPERATURE_SCHEDULE) == (1.0, 1e-3, "epoch")
    assert (p.LOGIT_LR_FACTOR, p.LOGIT_WEIGHT_DECAY, p.LOGITS_FOLLOW_HOST) == (10.0, 0.0, False)
    assert cfg.MODEL.DDP.FIND_UNUSED_PARAMETERS
    assert playground.load_net(FOLDER).Trainer is PruningTrainer
    torch.manual_seed(0)
    _, model = playground.build(FOLDER)
    masks = channel_masks(model)
    # 25 masked convs (all but the classifier); k = max(ceil(C / 2), 8) of 8/16/32/64 channels
    assert len(masks) == 25
    assert sum(m.channels for m in masks.values()) == 992
    assert sum(m.k for m in masks.values()) == sum(max((m.channels + 1) // 2, min(8, m.channels))
                                                   for m in masks.values()) == 512


@pytest.mark.slow
def test_prunes_compresses_and_evaluates(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setenv("DL_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "output"))
    monkeypatch.setitem(synthetic.SYNTHETIC_OPTIONS, "num_train", 4)
    monkeypatch.setitem(synthetic.SYNTHETIC_OPTIONS, "num_val", 2)
    monkeypatch.setitem(synthetic.SYNTHETIC_OPTIONS, "size", (32, 64))
    small = ["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
             "INPUT.MIN_SIZE_TRAIN", "[32]", "INPUT.CROP_PAD.SIZE", "[32, 64]",
             "INPUT.MIN_SIZE_TEST", "32", "LOG_PERIOD", "1"]
    schedule = ["SOLVER.LR_SCHEDULER.MAX_ITER", "5", "SOLVER.LR_SCHEDULER.WARMUP_ITERS", "0",
                "MODEL.PRUNING.ITERS_PER_EPOCH", "1", "MODEL.PRUNING.END_EPOCH", "3"]
    assert train_net.main_train(["--playground", FOLDER, "--num-gpus", "1"] + small
                                + schedule) in (0, None)
    out = tmp_path / "output" / "ACoSP" / "SegNet.Tiny.Synthetic"
    log = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    steps = [m for m in log if "total_loss" in m]
    assert [m["iteration"] for m in steps] == [0, 1, 2, 3, 4]
    # soft for iterations 0..2 (T = 1, 1, T(1)), hard from iteration 3
    assert [m.get("pruning/temperature") for m in steps] == pytest.approx(
        [1.0, 1.0, 1e-3 ** (1 / 3), None, None])
    assert steps[-1]["pruning/chosen"] == pytest.approx(512 / 992)

    masked = str(out / "model_final.pth")
    saved = torch.load(masked, map_location="cpu", weights_only=True)
    assert saved["architecture"] == {"MODEL.PRUNING.HARD_MASKS": True}
    compressed = str(tmp_path / "compressed" / "compressed.pth")
    assert _compress_tool().main(["--playground", FOLDER, "--weights", masked, "--output",
                                  compressed, "--size", "32", "64", "--runs", "1", "--warmup",
                                  "0", "--trace-size", "32"]) == 0
    assert "total" in capsys.readouterr().out

    _, before = playground.build(FOLDER, ["MODEL.WEIGHTS", masked])
    Checkpointer(before).load(masked, checkpointables=[], strict=True)
    _, after = playground.build(FOLDER, ["MODEL.WEIGHTS", compressed])
    Checkpointer(after).load(compressed, checkpointables=[], strict=True)
    assert not channel_masks(after)
    n_before = sum(p.numel() for p in before.parameters())
    n_after = sum(p.numel() for p in after.parameters())
    assert n_after < 0.5 * n_before

    for weights in (masked, compressed):
        train_net.main_test(["--playground", FOLDER, "MODEL.WEIGHTS", weights] + small)
    scores = [json.loads((out / "inference" / name / "results.json").read_text())[
        "synthetic_cityscapes_val"]["sem_seg"] for name in ("model_final", "compressed")]
    assert scores[0]["mIoU"] == pytest.approx(scores[1]["mIoU"], abs=1e-6)
    assert scores[0]["pACC"] == pytest.approx(scores[1]["pACC"], abs=1e-6)

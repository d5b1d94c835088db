"""inference_on_dataset and build_evaluator with a fake model."""
import logging

import numpy as np
import pytest
import torch
import torch.nn as nn

from dl_lib.config import get_cfg
from dl_lib.evaluation import (CityscapesSemSegEvaluator, DatasetEvaluator, DatasetEvaluators,
                               SemSegEvaluator, build_evaluator, inference_on_dataset)

from .helpers import logits_from_labels, register


class EchoModel(nn.Module):
    """Predicts the ground truth (ignore -> class 0) and reports a cost; records its state."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, batched_inputs):
        self.seen.append((self.training, torch.is_grad_enabled()))
        return [{"sem_seg": logits_from_labels(np.where(x["sem_seg"] == 255, 0, x["sem_seg"]), 2),
                 "flops": float(i + 1)} for i, x in enumerate(batched_inputs)]


def test_inference_on_dataset(caplog, monkeypatch):
    register("test_infer", [], stuff_classes=["a", "b"], ignore_label=255)
    loader = [[{"sem_seg": torch.tensor([[0, 1], [1, 255]])}] for _ in range(8)]
    model = EchoModel().train()
    with caplog.at_level(logging.INFO, logger="dl_lib"):
        monkeypatch.setattr(logging.getLogger("dl_lib"), "propagate", True)
        res = inference_on_dataset(model, loader, SemSegEvaluator("test_infer", distributed=False))
    assert res["sem_seg"]["mIoU"] == pytest.approx(100)
    assert res["sem_seg"]["mean_flops"] == 1.0
    assert model.training  # mode restored
    assert all(s == (False, False) for s in model.seen) and len(model.seen) == 8
    assert "Total inference pure compute time" in caplog.text


def test_evaluators_merge_and_reject_duplicates():
    class Fixed(DatasetEvaluator):
        def __init__(self, key):
            self.key = key

        def evaluate(self):
            return {self.key: {"x": 1.0}}

    assert set(DatasetEvaluators([Fixed("a"), Fixed("b")]).evaluate()) == {"a", "b"}
    with pytest.raises(KeyError, match="distinct task names"):
        DatasetEvaluators([Fixed("a"), Fixed("a")]).evaluate()


def test_build_evaluator(tmp_path):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    register("test_build_plain", [], stuff_classes=["a"], ignore_label=255, evaluator_type="sem_seg")
    ev = build_evaluator(cfg, "test_build_plain")
    assert isinstance(ev, SemSegEvaluator) and ev._output_dir == str(tmp_path / "inference")

    register("test_build_cs", [], stuff_classes=["a"], ignore_label=255,
             evaluator_type="cityscapes_sem_seg")
    assert isinstance(build_evaluator(cfg, "test_build_cs"), SemSegEvaluator)
    cfg.TEST.CITYSCAPES_OFFICIAL_EVAL = True
    both = build_evaluator(cfg, "test_build_cs")
    assert [type(e) for e in both._evaluators] == [SemSegEvaluator, CityscapesSemSegEvaluator]

    register("test_build_bad", [], stuff_classes=["a"], evaluator_type="coco")
    with pytest.raises(ValueError, match="evaluator_type"):
        build_evaluator(cfg, "test_build_bad")

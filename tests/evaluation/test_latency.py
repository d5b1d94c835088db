"""inference_on_dataset measures the model's compute time per image on its device:
``results["time"] = {"ms_per_image": median, "mean_ms_per_image", "num_images", "device"}``."""
import time

import pytest
import torch
import torch.nn as nn

from dl_lib.evaluation import SemSegEvaluator, inference_on_dataset

from .helpers import logits_from_labels, register


class SleepyModel(nn.Module):
    """Takes ``seconds[i]`` for batch i (plus nothing else), predicts class 0."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = list(seconds)
        self.weight = nn.Parameter(torch.zeros(1))  # on the CPU: the device to report
        self.calls = 0

    def forward(self, batched_inputs):
        time.sleep(self.seconds[self.calls])
        self.calls += 1
        return [{"sem_seg": logits_from_labels(torch.zeros(2, 2, dtype=torch.long).numpy(), 2)}
                for _ in batched_inputs]


def _loader(batch_sizes):
    gt = torch.tensor([[0, 0], [0, 255]])
    return [[{"sem_seg": gt} for _ in range(n)] for n in batch_sizes]


def test_latency_per_image_median_without_warm_up():
    register("test_latency", [], stuff_classes=["a", "b"], ignore_label=255)
    # 7 batches: 5 warm-up ones (slow, excluded), then a batch of 2 at 30 ms and one of 1 at 40 ms
    sizes = [1, 1, 1, 1, 1, 2, 1]
    model = SleepyModel([0.3] * 5 + [0.06, 0.04])
    res = inference_on_dataset(model, _loader(sizes),
                               SemSegEvaluator("test_latency", distributed=False))
    t = res["time"]
    assert t["num_images"] == 3
    assert t["device"] == f"cpu ({torch.get_num_threads()} threads)"
    # per image: 30, 30, 40 ms (a batch's time shared by its images) -> median 30, mean 33.3
    assert 30 <= t["ms_per_image"] < 30 + 25
    assert 33.3 <= t["mean_ms_per_image"] < 33.4 + 25
    assert t["ms_per_image"] < t["mean_ms_per_image"] + 1e-9
    assert t["with_cost_counting"] is False
    # the existing results are unchanged
    assert res["sem_seg"]["mIoU"] == pytest.approx(100.0)


def test_latency_of_a_single_batch_is_timed():
    register("test_latency_one", [], stuff_classes=["a", "b"], ignore_label=255)
    res = inference_on_dataset(SleepyModel([0.02]), _loader([2]),
                               SemSegEvaluator("test_latency_one", distributed=False))
    assert res["time"]["num_images"] == 2 and res["time"]["ms_per_image"] >= 10


def test_latency_says_when_it_includes_cost_counting():
    register("test_latency_cost", [], stuff_classes=["a", "b"], ignore_label=255)
    res = inference_on_dataset(SleepyModel([0.0]), _loader([1]),
                               SemSegEvaluator("test_latency_cost", distributed=False),
                               cost_conventions=["gmac"])
    assert res["time"]["with_cost_counting"] is True and "gmac" in res["cost"]

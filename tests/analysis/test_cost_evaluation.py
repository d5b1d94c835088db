"""Executed cost per image in the evaluation loop: inference_on_dataset, DefaultTrainer.test."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dl_lib.config import get_cfg
from dl_lib.data.catalog import MetadataCatalog
from dl_lib.engine import DefaultTrainer
from dl_lib.evaluation import SemSegEvaluator, inference_on_dataset
from dl_lib.layers import MaskedConv2d

H, W = 4, 5
C_IN, C_OUT = 3, 2
MACS_PER_POSITION = C_OUT * C_IN * 3 * 3
ACTIVE = [3, 10, 6]            # active positions of the three images
OWN_FLOPS = [1.0, 2.0, 4.0]    # what the model itself reports per image


class MaskedModel(nn.Module):
    """Detectron2 contract: a 3x3 MaskedConv2d whose mask is the image's non-zero pixels; also
    reports its own "flops" per image (taken from the input)."""

    def __init__(self):
        super().__init__()
        self.conv = MaskedConv2d(C_IN, C_OUT, 3, padding=1, bias=False)

    def forward(self, batched_inputs):
        x = torch.stack([d["image"].float() for d in batched_inputs])
        mask = x[:, :1] > 0
        logits = self.conv(x, mask)
        return [{"sem_seg": F.one_hot(torch.zeros(H, W, dtype=torch.long), 2).permute(2, 0, 1)
                 .float() + 0 * logits[i, :2], "flops": d["own_flops"]}
                for i, d in enumerate(batched_inputs)]


def _image(active):
    img = torch.zeros(C_IN, H, W)
    img[0].view(-1)[:active] = 1
    return {"image": img, "sem_seg": torch.zeros(H, W, dtype=torch.long)}


def _loader():
    images = [dict(_image(a), own_flops=f) for a, f in zip(ACTIVE, OWN_FLOPS)]
    return [[images[0]], [images[1], images[2]]]  # batches of 1 and 2 images


def _evaluator(distributed=False):
    MetadataCatalog.get("cost_eval_test").set(stuff_classes=["a", "b"], ignore_label=255)
    return SemSegEvaluator("cost_eval_test", distributed=distributed)


def _expected(divisor):
    per_image = [MACS_PER_POSITION * a / divisor for a in ACTIVE]
    return {"mean": sum(per_image) / 3, "min": min(per_image), "max": max(per_image)}


def test_mean_min_max_per_convention_and_model_flops_untouched():
    res = inference_on_dataset(MaskedModel(), _loader(), _evaluator(),
                               cost_conventions=["gmac", "hrnet"])
    for conv, divisor in (("gmac", 1e9), ("hrnet", 2 ** 30)):
        got, want = res["cost"][conv], _expected(divisor)
        assert set(got) == {"mean", "min", "max"}
        assert all(got[k] == pytest.approx(want[k], rel=1e-12) for k in want)
    # the model's own entry is aggregated as before, not mixed with the tracker's counts
    assert res["sem_seg"]["mean_flops"] == pytest.approx(sum(OWN_FLOPS) / 3)
    assert res["sem_seg"]["max_flops"] == 4.0
    assert not any(k.startswith(("mean_gmac", "mean_hrnet")) for k in res["sem_seg"])


def test_off_by_default_and_bad_names():
    res = inference_on_dataset(MaskedModel(), _loader(), _evaluator())
    assert "cost" not in res and res["sem_seg"]["mean_flops"] == pytest.approx(7 / 3)
    with pytest.raises(ValueError, match="TEST.COST_CONVENTIONS.*'gflops'"):
        inference_on_dataset(MaskedModel(), _loader(), _evaluator(), cost_conventions=["gflops"])


def test_default_trainer_test_reads_the_config_key(tmp_path, monkeypatch):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.DATASETS.TEST = ("cost_eval_test",)
    cfg.TEST.COST_CONVENTIONS = ["dynamic_routing"]
    monkeypatch.setattr(DefaultTrainer, "build_test_loader",
                        classmethod(lambda c, cfg, n: _loader()))
    res = DefaultTrainer.test(cfg, MaskedModel(), evaluators=[_evaluator()])
    # no bias: DynamicRouting's count equals the MACs here
    assert res["cost"]["dynamic_routing"]["max"] == pytest.approx(MACS_PER_POSITION * 10 / 1e9)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["cost_eval_test"]["cost"]["dynamic_routing"]["min"] == pytest.approx(
        MACS_PER_POSITION * 3 / 1e9)


def _worker(rank, world, init_file, out_file):
    import torch.distributed as dist

    from dl_lib.engine.launch import _exit_spawned_worker

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        shard = [[img] for batch in _loader() for img in batch][rank::world]  # 2 + 1 images
        res = inference_on_dataset(MaskedModel(), shard, _evaluator(distributed=True),
                                   cost_conventions=["gmac"])
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump(res["cost"], f)
        else:
            assert res == {}
        dist.barrier()  # leave together: destroying a Gloo group under a live peer aborts it
    finally:
        dist.destroy_process_group()
    _exit_spawned_worker()


@pytest.mark.slow  # two spawned Gloo processes
def test_costs_gathered_over_processes(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "cost.json"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    got, want = json.loads(out.read_text())["gmac"], _expected(1e9)
    assert all(got[k] == pytest.approx(want[k], rel=1e-12) for k in want)

"""Per-exit report of multi-exit models (dl_lib.evaluation.exits): the original ADP-C line, GFLOPs
and latency per exit; ``exit_ms`` aggregated by inference_on_dataset (warm-up excluded, all
ranks); dl_test's result.txt / results.json["exits"] on the toy four-exit playground."""
import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from dl_lib.engine.launch import _exit_spawned_worker
from dl_lib.evaluation import SemSegEvaluator, inference_on_dataset
from dl_lib.evaluation.exits import exit_lines, exit_report, format_exit_report, report_exits

from .helpers import logits_from_labels, register

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = os.path.join(TESTS, "fixtures", "families")
FOUR_EXIT = os.path.join(TESTS, "fixtures", "playground", "Toy", "FourExit")

# reference anytime.md section 7 (ADP-C W48 mIoU, and its 5-column line) and 3.6 (W18 RH GFLOPs)
ADPC_W48_MIOU = [44.34, 60.13, 76.82, 81.31]
ADPC_W48_LINE = "44.34\t60.13\t76.82\t81.31\t65.65"
W18_RH_GFLOPS = [23.69, 34.74, 49.87, 73.23]
W18_RH_LINE = "23.69\t34.74\t49.87\t73.23\t45.38"


def _results(miou, gflops=None, ms=None, device="cpu (2 threads)"):
    seg = {"mIoU": miou[-1]}
    for k, m in enumerate(miou):
        seg[f"exit{k}"] = {"mIoU": m, "pACC": 90.0}
        if gflops is not None:
            seg[f"mean_exit{k}"] = gflops[k]
    res = {"sem_seg": seg}
    if ms is not None:
        res["time"] = {"ms_per_image": 1.0, "exit_ms_per_image": ms, "device": device}
    return res


def test_the_originals_line_then_gflops_and_latency():
    report = exit_report(_results(ADPC_W48_MIOU, W18_RH_GFLOPS, [10.0, 20.0, 30.5, 41.25]))
    assert report["num_exits"] == 4
    assert exit_lines(report) == [ADPC_W48_LINE, W18_RH_LINE, "10.00\t20.00\t30.50\t41.25\t25.44"]
    assert report["mIoU"] == ADPC_W48_MIOU and report["gflops"] == W18_RH_GFLOPS
    assert report["time"] == {"ms_per_image": [10.0, 20.0, 30.5, 41.25],
                              "mean_ms_per_image": 25.4375, "device": "cpu (2 threads)"}
    text = format_exit_report(report)
    assert ADPC_W48_LINE in text and "cpu (2 threads)" in text
    assert "| exit3  |  81.31 |    73.23 | 41.25 |" in text  # the table row of the last exit


def test_costs_only_where_reported():
    report = exit_report(_results([30.0, 40.0]))
    assert exit_lines(report) == ["30.00\t40.00\t35.00"]
    assert report["gflops"] is None and "time" not in report
    # flops of some exits only, or latency of another number of exits: left out
    partial = _results([30.0, 40.0], ms=[1.0, 2.0, 3.0])
    partial["sem_seg"]["mean_exit0"] = 5.0
    report = exit_report(partial)
    assert report["gflops"] is None and "time" not in report


def test_no_exits_no_report(tmp_path):
    results = {"sem_seg": {"mIoU": 50.0, "mean_flops": 3.0}, "time": {"ms_per_image": 2.0}}
    assert exit_report(results) is None
    assert report_exits(results, str(tmp_path)) is None
    assert "exits" not in results and not os.listdir(tmp_path)


class _Published(nn.Module):
    def published_exit_points(self):
        return {"paper": {"mIoU": ADPC_W48_MIOU, "gflops": [41.9, 93.9, 259.3, 387.1]}}


class _Wrapper(nn.Module):  # as the test-time wrapper holds the model
    def __init__(self, model):
        super().__init__()
        self.model = model


def test_report_exits_writes_result_txt_and_stores_the_report(tmp_path):
    results = _results(ADPC_W48_MIOU, W18_RH_GFLOPS, [1.0, 2.0, 3.0, 4.0])
    report = report_exits(results, str(tmp_path), model=_Wrapper(_Published()), run="A/B")
    assert results["exits"] is report and report["run"] == "A/B"
    assert report["published"]["paper"]["gflops"] == [41.9, 93.9, 259.3, 387.1]
    lines = (tmp_path / "result.txt").read_text().splitlines()
    assert lines == [ADPC_W48_LINE, W18_RH_LINE, "1.00\t2.00\t3.00\t4.00\t2.50"]
    assert (tmp_path / "exits_tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(results)  # results.json-ready


class _TimedExits(nn.Module):
    """Returns the per-image ``exit_ms`` rows it is given, one list of rows per batch."""

    def __init__(self, batches):
        super().__init__()
        self.batches = list(batches)
        self.weight = nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(self, inputs):
        rows = self.batches[self.calls]
        self.calls += 1
        pred = logits_from_labels(np.zeros((2, 2), np.int64), 2)
        return [{"sem_seg": pred, "sem_seg_exits": [pred] * len(r), "exit_ms": r}
                if r is not None else {"sem_seg": pred} for r in rows]


def _loader(batches):
    gt = torch.zeros(2, 2, dtype=torch.long)
    return [[{"sem_seg": gt} for _ in rows] for rows in batches]


def test_exit_ms_median_per_exit_without_warm_up():
    register("test_exit_ms", [], stuff_classes=["a", "b"], ignore_label=255)
    warm_up = [[[1000.0, 2000.0]]] * 5  # 5 slow warm-up batches, excluded
    batches = warm_up + [[[1.0, 3.0], [2.0, 5.0]], [[4.0, 10.0]]]
    res = inference_on_dataset(_TimedExits(batches), _loader(batches),
                               SemSegEvaluator("test_exit_ms", distributed=False))
    assert res["time"]["num_images"] == 3
    assert res["time"]["exit_ms_per_image"] == [2.0, 5.0]  # medians of (1, 2, 4), (3, 5, 10)
    # a model without exit_ms: no key
    plain = inference_on_dataset(_TimedExits([[None]]), _loader([[None]]),
                                 SemSegEvaluator("test_exit_ms", distributed=False))
    assert "exit_ms_per_image" not in plain["time"]


def _gather_worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        register("test_exit_ms_dist", [], stuff_classes=["a", "b"], ignore_label=255)
        rows = [[[1.0, 10.0], [2.0, 20.0]], [[3.0, 30.0], [4.0, 40.0]]][rank]
        res = inference_on_dataset(_TimedExits([rows]), _loader([rows]),
                                   SemSegEvaluator("test_exit_ms_dist", distributed=True))
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump(res["time"], f)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    _exit_spawned_worker()


@pytest.mark.slow
def test_exit_ms_of_every_rank_reach_the_main_one(tmp_path):
    out = tmp_path / "time.json"
    mp.spawn(_gather_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    time = json.loads(out.read_text())
    assert time["num_images"] == 4
    assert time["exit_ms_per_image"] == [2.5, 25.0]  # rank 0 alone would give 1.5, 15


def test_dl_test_prints_the_four_exit_line_and_writes_result_txt(tmp_path, monkeypatch, caplog):
    from dl_lib.tools import train_net

    monkeypatch.syspath_prepend(FAMILIES)
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "out"))
    monkeypatch.setenv("FOUR_EXIT_TOY_DATA", str(tmp_path / "data"))
    train_net.main_test(["--playground", FOUR_EXIT, "--random-weights"])
    folder = tmp_path / "out" / "Toy" / "FourExit" / "inference" / "random_init"
    results = json.loads((folder / "results.json").read_text())["four_exit_toy_val"]
    report = results["exits"]
    seg = results["sem_seg"]
    assert report["mIoU"] == [seg[f"exit{k}"]["mIoU"] for k in range(4)]
    line = "\t".join(f"{v:.2f}" for v in report["mIoU"] + [np.mean(report["mIoU"])])
    result_txt = (folder / "result.txt").read_text().splitlines()
    assert result_txt[0] == line and len(result_txt) == 3  # mIoU, GFLOPs, ms
    assert line in (folder / "log.txt").read_text()
    assert report["time"]["device"] == results["time"]["device"]
    assert report["time"]["ms_per_image"] == results["time"]["exit_ms_per_image"]
    assert report["run"] == "Toy/FourExit random_init"
    assert report["published"] == {"toy paper": {"mIoU": [20.0, 30.0, 40.0, 45.0],
                                                 "gflops": [1e-5, 2e-5, 3e-5, 4e-5]}}

    # GFLOPs: the evaluator's mean over images of the model's flops["exit{k}"], cumulative
    assert report["gflops"] == [seg[f"mean_exit{k}"] for k in range(4)]
    assert all(a < b for a, b in zip(report["gflops"], report["gflops"][1:]))

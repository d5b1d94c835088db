"""SemSegEvaluator with several predictions per image (``sem_seg_exits``): one confusion matrix
per exit, gathered over processes, reported as ``sem_seg/exit{k}/...`` next to the final scores."""
import json
import logging
import re

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dl_lib.engine.hooks import flatten_results_dict
from dl_lib.engine.launch import _exit_spawned_worker
from dl_lib.evaluation import SemSegEvaluator

from .helpers import logits_from_labels, register

NAME = "test_semseg_exits"
CLASSES = ["a", "b"]
K = 2
GT = np.array([[0, 0, 1, 1],
               [0, 0, 1, 1]])
# exit 0 calls everything class a: a: tp 4, fp 4 -> IoU 50; b: IoU 0 -> mIoU 25, pACC 50
EXIT0 = np.zeros_like(GT)
# exit 1 gets one b pixel wrong: a: 4/(4+1) = 80; b: 3/4 = 75 -> mIoU 77.5
EXIT1 = GT.copy()
EXIT1[0, 2] = 0


@pytest.fixture(autouse=True)
def dataset():
    register(NAME, [], stuff_classes=CLASSES, ignore_label=255, evaluator_type="sem_seg")


def _out(final, exits=None):
    out = {"sem_seg": logits_from_labels(final, K)}
    if exits is not None:
        out["sem_seg_exits"] = [logits_from_labels(e, K) for e in exits]
    return out


def _inp(i):
    return {"sem_seg": torch.as_tensor(GT), "file_name": f"img{i}.png"}


def test_each_exit_scored_by_hand(tmp_path, caplog):
    ev = SemSegEvaluator(NAME, distributed=False, output_dir=str(tmp_path))
    ev.reset()
    ev.process([_inp(0), _inp(1)], [_out(GT, [EXIT0, EXIT1]), _out(GT, [EXIT0, EXIT1])])
    with caplog.at_level(logging.INFO, logger="dl_lib.evaluation.sem_seg"):
        res = ev.evaluate()
    flat = flatten_results_dict(res)
    assert flat["sem_seg/mIoU"] == pytest.approx(100)  # the final prediction, as before
    assert flat["sem_seg/exit0/mIoU"] == pytest.approx(25)
    assert flat["sem_seg/exit0/pACC"] == pytest.approx(50)
    assert flat["sem_seg/exit0/IoU-a"] == pytest.approx(50)
    assert flat["sem_seg/exit1/mIoU"] == pytest.approx(77.5)
    assert flat["sem_seg/exit1/fwIoU"] == pytest.approx(77.5)  # equal class frequencies
    assert "sem_seg/exit2/mIoU" not in flat
    saved = json.loads((tmp_path / "sem_seg_evaluation.json").read_text())
    assert [e["sem_seg"]["IoU-b"] for e in saved["exits"]] == pytest.approx([0, 75])
    assert saved["exits"][0]["confusion_matrix"][1][0] == 8  # 2 images x 4 b-pixels called a
    assert re.search(r"\| exit1 +\| +77\.500 \| +87\.500 \| +87\.500 \|", caplog.text)  # summary
    assert "exit 1 of 2" in caplog.text  # a per-class table per exit


def test_model_without_exits_reports_no_exit_keys():
    ev = SemSegEvaluator(NAME, distributed=False)
    ev.reset()
    ev.process([_inp(0)], [_out(EXIT1)])
    res = ev.evaluate()["sem_seg"]
    assert not any(k.startswith("exit") for k in res)
    assert res["mIoU"] == pytest.approx(77.5)


def test_images_without_exits_are_fine():
    ev = SemSegEvaluator(NAME, distributed=False)
    ev.reset()
    ev.process([_inp(0), _inp(1)], [_out(GT, [EXIT0, EXIT1]), _out(GT)])
    res = ev.evaluate()["sem_seg"]
    assert res["exit0"]["mIoU"] == pytest.approx(25)  # over the one image with exits


def test_varying_number_of_exits_names_the_image():
    ev = SemSegEvaluator(NAME, distributed=False)
    ev.reset()
    ev.process([_inp(0)], [_out(GT, [EXIT0, EXIT1])])
    with pytest.raises(ValueError, match=r"img1\.png.*1 exits.*img0\.png.*2"):
        ev.process([_inp(1)], [_out(GT, [EXIT1])])


def test_exit_of_wrong_size_is_an_error():
    ev = SemSegEvaluator(NAME, distributed=False)
    ev.reset()
    out = _out(GT, [EXIT0])
    out["sem_seg_exits"][0] = out["sem_seg_exits"][0][:, :1]
    with pytest.raises(ValueError, match=r"sem_seg_exits\[0\]"):
        ev.process([_inp(0)], [out])


# ---- two Gloo processes: exit matrices gathered like the main one ------------------------------
def _evaluate_shard(rank, out_dir):
    ev = SemSegEvaluator(NAME, distributed=True, output_dir=out_dir)
    ev.reset()
    if rank == 0:
        ev.process([_inp(0)], [_out(GT, [EXIT0, EXIT1])])
    else:  # a process whose image has no exits, then one that has
        ev.process([_inp(1), _inp(2)], [_out(EXIT1), _out(GT, [EXIT1, EXIT1])])
    return ev.evaluate()


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        register(NAME, [], stuff_classes=CLASSES, ignore_label=255)
        res = _evaluate_shard(rank, out_dir)
        assert (res is None) == (rank != 0)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    _exit_spawned_worker()


def test_two_process_gather_of_exits(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    saved = json.loads((tmp_path / "sem_seg_evaluation.json").read_text())
    assert saved["num_images"] == 3 and saved["num_exit_images"] == 2
    # exit 0: one image all-a (4 b-pixels called a) + one image with EXIT1 (1 b-pixel called a)
    assert saved["exits"][0]["confusion_matrix"][1][0] == 5
    assert saved["exits"][1]["confusion_matrix"][1][0] == 2
    # final: two perfect images + one EXIT1
    assert saved["confusion_matrix"][1][0] == 1

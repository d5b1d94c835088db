"""SemSegEvaluator against hand-computed confusion matrices (framework_anchors §3.5 vectors)."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dl_lib.evaluation import SemSegEvaluator, confusion_matrix, metrics_from_confusion

from .helpers import logits_from_labels, register

CLASSES = ["a", "b", "c"]
IGN = 255


@pytest.fixture
def dataset():
    register("test_semseg_3", [], stuff_classes=CLASSES, ignore_label=IGN, evaluator_type="sem_seg")
    return "test_semseg_3"


def run(dataset, pairs, flops=None, **kw):
    ev = SemSegEvaluator(dataset, distributed=False, **kw)
    ev.reset()
    for i, (pred, gt) in enumerate(pairs):
        out = {"sem_seg": logits_from_labels(pred, 3)}
        if flops is not None:
            out["flops"] = flops[i]
        ev.process([{"sem_seg": torch.as_tensor(gt), "file_name": f"{i}.png"}], [out])
    return ev.evaluate()["sem_seg"]


GT = np.array([[0, 0, 1, 1],
               [0, 0, 1, 1],
               [IGN, IGN, 1, 1]])


def test_all_correct_is_100(dataset):
    pred = np.where(GT == IGN, 2, GT)  # whatever is predicted on ignore does not matter
    r = run(dataset, [(pred, GT)])
    assert r["mIoU"] == pytest.approx(100) and r["pACC"] == pytest.approx(100)
    assert r["mACC"] == pytest.approx(100) and r["fwIoU"] == pytest.approx(100)
    assert math.isnan(r["IoU-c"])  # absent from GT and from valid predictions: excluded


def test_prediction_on_ignore_region_unchanged(dataset):
    pred = GT.copy()
    pred[0, 0] = 1  # one real mistake
    pred_ign_a = np.where(GT == IGN, 0, pred)
    pred_ign_c = np.where(GT == IGN, 2, pred)
    r_a, r_c = run(dataset, [(pred_ign_a, GT)]), run(dataset, [(pred_ign_c, GT)])
    assert list(r_a) == list(r_c)
    np.testing.assert_allclose(list(r_a.values()), list(r_c.values()))  # NaN == NaN here
    assert r_a["IoU-a"] == pytest.approx(75)


def test_predicted_but_absent_class_counts_zero(dataset):
    pred = np.where(GT == IGN, 1, GT)
    pred[0, 0] = 2  # class c predicted where GT is a; c never in GT
    r = run(dataset, [(pred, GT)])
    # a: tp 3, gt 4, pred 3 -> 3/4; b: 6/6; c: 0/(0+1) = 0, counted in the mean
    assert r["IoU-a"] == pytest.approx(75) and r["IoU-b"] == pytest.approx(100)
    assert r["IoU-c"] == pytest.approx(0)
    assert r["mIoU"] == pytest.approx((75 + 100 + 0) / 3)
    # accuracy only over classes present in GT
    assert r["mACC"] == pytest.approx((75 + 100) / 2)
    assert math.isnan(r["ACC-c"])


def test_fwiou_macc_pacc_by_hand(dataset):
    gt = np.array([[0, 0, 0, 1, 1, 2]])
    pred = np.array([[0, 1, 1, 1, 2, 2]])
    # conf[gt, pred]: a->a 1, a->b 2; b->b 1, b->c 1; c->c 1
    conf = confusion_matrix(pred, gt, 3, IGN)
    expect = np.zeros((4, 4), dtype=np.int64)
    expect[0, 0], expect[0, 1], expect[1, 1], expect[1, 2], expect[2, 2] = 1, 2, 1, 1, 1
    assert (conf == expect).all()
    iou = [1 / 3, 1 / 4, 1 / 2]       # a: 1/(3+1-1); b: 1/(2+3-1); c: 1/(1+2-1)
    acc = [1 / 3, 1 / 2, 1]
    r = run(dataset, [(pred, gt)])
    assert r["mIoU"] == pytest.approx(100 * sum(iou) / 3)
    assert r["fwIoU"] == pytest.approx(100 * (3 * iou[0] + 2 * iou[1] + 1 * iou[2]) / 6)
    assert r["mACC"] == pytest.approx(100 * sum(acc) / 3)
    assert r["pACC"] == pytest.approx(100 * 3 / 6)
    m = metrics_from_confusion(conf, CLASSES)
    assert m["mIoU"] == pytest.approx(r["mIoU"])


def test_accumulates_over_images_and_reports_flops(dataset, tmp_path):
    gt1 = np.array([[0, 1]])
    gt2 = np.array([[1, 1]])
    r = run(dataset, [(gt1, gt1), (np.array([[0, 1]]), gt2)],
            flops=[{"real_flops": 2.0}, {"real_flops": 4.0}], output_dir=str(tmp_path))
    # a: tp1, gt1, pred2 -> 1/2; b: tp 2, gt 3, pred 2 -> 2/3
    assert r["mIoU"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert (r["mean_real_flops"], r["min_real_flops"], r["max_real_flops"]) == (3.0, 2.0, 4.0)
    saved = json.loads((tmp_path / "sem_seg_evaluation.json").read_text())
    assert saved["sem_seg"]["mIoU"] == pytest.approx(r["mIoU"])
    assert saved["sem_seg"]["IoU-c"] is None  # NaN written as null (valid JSON)
    assert saved["num_images"] == 2


def test_ground_truth_from_file_and_errors(dataset, tmp_path):
    path = tmp_path / "gt.png"
    Image.fromarray(GT.astype(np.uint8)).save(path)
    ev = SemSegEvaluator(dataset, distributed=False)
    ev.process([{"sem_seg_file_name": str(path)}], [{"sem_seg": logits_from_labels(np.where(GT == IGN, 0, GT), 3)}])
    assert ev.evaluate()["sem_seg"]["mIoU"] == pytest.approx(100)

    Image.fromarray(np.full((3, 4), 26, np.uint8)).save(path)  # a labelId, not a train id
    with pytest.raises(ValueError, match="labelTrainIds"):
        ev.process([{"sem_seg_file_name": str(path)}], [{"sem_seg": logits_from_labels(np.zeros((3, 4), int), 3)}])
    with pytest.raises(ValueError, match="height, width"):
        ev.process([{"sem_seg_file_name": str(path)}], [{"sem_seg": logits_from_labels(np.zeros((2, 2), int), 3)}])


def test_metadata_required(tmp_path):
    register("test_semseg_nometa", [])
    with pytest.raises(ValueError, match="stuff_classes"):
        SemSegEvaluator("test_semseg_nometa")
    ev = SemSegEvaluator("test_semseg_nometa", num_classes=2, ignore_label=0)
    assert ev._ignore_label == 0 and len(ev._class_names) == 2

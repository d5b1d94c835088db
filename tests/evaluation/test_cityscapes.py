"""The official cityscapesscripts evaluation agrees with the confusion-matrix evaluator."""
import math

import numpy as np
import pytest

from dl_lib.data.datasets.common import read_mask
from dl_lib.evaluation import CityscapesSemSegEvaluator, SemSegEvaluator
from dl_lib.evaluation.cityscapes import train_id_to_label_id

from .cityscapes_tree import write_tree
from .helpers import logits_from_labels, register

NAME = "test_cityscapes_tiny_val"


def test_train_id_to_label_id():
    assert train_id_to_label_id(np.array([[0, 13, 18]])).tolist() == [[7, 26, 33]]


@pytest.mark.parametrize("seed", [0, 1])
def test_official_agrees_with_confusion_matrix(tmp_path, seed):
    from cityscapesscripts.helpers.labels import trainId2label

    dicts, gt_dir = write_tree(str(tmp_path), n_images=3, seed=seed)
    classes = [trainId2label[i].name for i in range(19)]
    register(NAME, dicts, stuff_classes=classes, ignore_label=255,
             evaluator_type="cityscapes_sem_seg", gt_dir=gt_dir)
    ours, official = SemSegEvaluator(NAME, distributed=False), CityscapesSemSegEvaluator(NAME)
    ours.reset()
    official.reset()
    rng = np.random.RandomState(seed)
    for d in dicts:
        gt = read_mask(d["sem_seg_file_name"]).astype(np.int64)
        # mostly right; some pixels get any of the 19 classes, so classes absent from the
        # ground truth get predicted (IoU 0 under both rules) and void pixels get predictions
        pred = np.where(gt == 255, 0, gt)
        noise = rng.rand(*gt.shape) < 0.3
        pred[noise] = rng.randint(0, 19, size=int(noise.sum()))
        out = [{"sem_seg": logits_from_labels(pred, 19)}]
        ours.process([d], out)
        official.process([d], out)
    a = ours.evaluate()["sem_seg"]
    b = official.evaluate()["cityscapes_sem_seg"]
    assert a["mIoU"] == pytest.approx(b["mIoU"], abs=1e-6)
    assert not math.isnan(b["iIoU"]) and not math.isnan(b["mIoU_category"])
    for name in classes:
        if math.isnan(a[f"IoU-{name}"]):
            assert math.isnan(b[f"IoU-{name}"])
        else:
            assert a[f"IoU-{name}"] == pytest.approx(b[f"IoU-{name}"], abs=1e-6)
    # the noise predicts classes missing from the ground truth: scored 0 and counted by both
    assert any(a[f"IoU-{n}"] == 0 for n in classes)


def test_missing_label_ids_is_clear(tmp_path):
    register(NAME + "_broken", [], stuff_classes=["x"], ignore_label=255)
    ev = CityscapesSemSegEvaluator(NAME + "_broken")
    ev.reset()
    with pytest.raises(FileNotFoundError, match="labelIds"):
        ev.process([{"file_name": str(tmp_path / "c_0_1_leftImg8bit.png"),
                     "sem_seg_file_name": str(tmp_path / "c_0_1_gtFine_labelTrainIds.png")}],
                   [{"sem_seg": logits_from_labels(np.zeros((2, 2), int), 19)}])

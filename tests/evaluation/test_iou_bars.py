"""Per-class IoU bars (dl_lib.evaluation.plots): bar lengths, colours, n/a classes, the figure
size per class, errors naming the file, and the PNG dl_test writes next to its results.json."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from dl_lib.evaluation import plots
from dl_lib.evaluation.sem_seg import metrics_from_confusion
from dl_lib.tools import train_net


def _results(conf, names):
    return {"sem_seg": dict(metrics_from_confusion(np.asarray(conf), names))}


CONF = [[8, 2, 0, 0],   # gt 0: 8 right, 2 as class 1
        [1, 3, 0, 0],   # gt 1
        [0, 0, 0, 0],   # class 2: absent from gt and prediction -> no IoU
        [0, 0, 0, 5]]   # ignore row


def test_scores_are_the_evaluators_iou_in_metadata_order():
    names = ["road", "car", "sky"]
    key, scores, miou = plots.class_iou_scores(_results(CONF, names), names[::-1])
    assert key == "sem_seg"
    # independent: IoU = TP / (TP + FP + FN)
    assert [n for n, _ in scores] == ["sky", "car", "road"]
    assert scores[0][1] is None
    assert scores[1][1] == pytest.approx(100 * 3 / (3 + 2 + 1))
    assert scores[2][1] == pytest.approx(100 * 8 / (8 + 1 + 2))
    assert miou == pytest.approx((100 * 8 / 11 + 100 * 3 / 6) / 2)
    # a results.json's null for NaN reads the same
    _, again, _ = plots.class_iou_scores(json.loads(json.dumps(
        {"sem_seg": {k: (None if v != v else v) for k, v in _results(CONF, names)["sem_seg"]
                     .items()}})))
    assert again == list(zip(names, [scores[2][1], scores[1][1], None]))


def test_png_size_grows_with_classes_and_bars_have_the_class_colours(tmp_path):
    names = [f"class{i}" for i in range(3)]
    colors = [[200, 0, 0], [0, 180, 0], [0, 0, 160]]
    _, scores, miou = plots.class_iou_scores(_results(CONF, names), names)
    path = tmp_path / "bars.png"
    fig = plots.plot_class_iou(scores, str(path), title="t", colors=colors, miou=miou)
    image = np.asarray(Image.open(path).convert("RGB"))
    height = round((plots.BAR_INCHES * 3 + plots.EXTRA_INCHES) * plots.DPI)
    assert image.shape[:2] == (height, round(plots.WIDTH_INCHES * plots.DPI))
    pixels = {tuple(p) for p in image.reshape(-1, 3)}
    assert (200, 0, 0) in pixels and (0, 180, 0) in pixels
    assert (0, 0, 160) not in pixels  # class2 has no IoU: no bar
    bars = list(fig.axes[0].patches)
    assert [b.get_width() for b in bars[:2]] == pytest.approx([scores[0][1], scores[1][1]])
    assert "n/a" in [t.get_text() for t in fig.axes[0].texts]

    many = [(f"c{i}", float(i)) for i in range(40)]
    plots.plot_class_iou(many, str(tmp_path / "many.png"))
    assert Image.open(tmp_path / "many.png").size[1] == round(
        (plots.BAR_INCHES * 40 + plots.EXTRA_INCHES) * plots.DPI)


def test_errors_name_the_source(tmp_path):
    with pytest.raises(ValueError, match=r"x\.json: no per-class IoU"):
        plots.class_iou_scores({"sem_seg": {"mIoU": 1.0}}, source="x.json")
    with pytest.raises(ValueError, match=r"no IoU for classes \['bus'\]"):
        plots.class_iou_scores(_results(CONF, ["a", "b", "c"]), ["a", "bus"], source="r")
    with pytest.raises(ValueError, match="3 colours for 1 classes"):
        plots.plot_class_iou([("a", 1.0)], colors=[[0, 0, 0]] * 3)
    broken = tmp_path / "results.json"
    broken.write_text('{"toy": {"sem_seg": ')
    with pytest.raises(SystemExit) as e:
        plots.main([str(tmp_path / "o.png"), str(broken)])
    assert e.value.code == 2
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"a": _results(CONF, ["x", "y", "z"]), "b": {}}))
    with pytest.raises(SystemExit):
        plots.main([str(tmp_path / "o.png"), str(two)])
    assert plots.main([str(tmp_path / "o.png"), str(two), "--dataset", "a"]) == 0
    assert (tmp_path / "o.png").is_file()


def test_dl_test_writes_the_bars_next_to_results_json(toy_playground, one_thread):
    assert train_net.main_test(["--playground", toy_playground, "--random-weights"]) == 0
    out = os.path.join(os.environ["DL_OUTPUT_ROOT"], "Toy", "Tiny", "inference", "random_init")
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    png = os.path.join(out, plots.CLASS_IOU_PNG)
    # the toy data set's metadata names two classes: one bar each
    assert Image.open(png).size == (round(plots.WIDTH_INCHES * plots.DPI),
                                    round((plots.BAR_INCHES * 2 + plots.EXTRA_INCHES) * plots.DPI))
    _, scores, _ = plots.class_iou_scores(results["toy_tiny_val"], ["dark", "red"])
    assert [n for n, _ in scores] == ["dark", "red"]

"""TensorBoard outputs of a training run (``dl_lib.engine.tensorboard``): the tiny dynamic-routing
and ADP-C playgrounds train two iterations and evaluate once; the event file, read back with
TensorBoard's own ``EventAccumulator``, holds the prediction images (image | prediction | ground
truth at the test images' size), the per-exit and cost scalars equal to ``results.json`` and the
gate / mask statistics with finite values and the counts the models imply."""
import glob
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from toy_data import registered_split

from dl_lib import playground
from dl_lib.engine import DefaultTrainer
from dl_lib.engine.hooks import CallbackHook
from dl_lib.engine.tensorboard import (ModelTrainingStats, TrainingStatsHook, evaluation_scalars,
                                       prediction_image)
from dl_lib.utils import visualizer as vis
from dl_lib.utils.events import EventStorage

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROUTING = os.path.join(REPO, "playground", "Quickstart", "Seg.Layer6.Tiny.Synthetic")
ADP_C = os.path.join(REPO, "playground", "Anytime", "HRNet_W18.ADP_C.Tiny.Synthetic")
TOY = "tensorboard_outputs_toy"
SIZE = (48, 80)  # the toy images' height, width
NUM_VIS = 2
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    with registered_split(TOY, str(tmp_path_factory.mktemp("tb_toy")), 3, size=SIZE) as name:
        yield name


def _small(out_dir):
    return ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out_dir),
            "DATASETS.TRAIN", f"('{TOY}',)", "DATASETS.TEST", f"('{TOY}',)",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.LR_SCHEDULER.MAX_ITER", "2", "SOLVER.LR_SCHEDULER.WARMUP_ITERS", "0",
            "INPUT.MIN_SIZE_TRAIN", f"[{SIZE[0]}]", "INPUT.MIN_SIZE_TEST", str(SIZE[0]),
            "TEST.EVAL_PERIOD", "0", "TEST.VIS_NUM_IMAGES", "0", "TEST.VIS_IMAGES", str(NUM_VIS),
            "TEST.COST_CONVENTIONS", "['gmac']", "LOG_PERIOD", "1", "SEED", "0"]


def _train(folder, out_dir, opts=(), setup=None):
    """Two iterations of the playground's model under DefaultTrainer (final evaluation at the
    end); returns (model, event accumulator of OUTPUT_DIR, results.json)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    cfg, model = playground.build(folder, _small(out_dir) + list(opts))
    trainer = DefaultTrainer(cfg, model)
    if setup is not None:
        setup(trainer)
    trainer.resume_or_load(resume=False)
    trainer.train()
    files = glob.glob(os.path.join(out_dir, "events.out.tfevents.*"))
    assert len(files) == 1, files
    acc = EventAccumulator(files[0], size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    with open(os.path.join(out_dir, "results.json")) as f:
        return model, acc, json.load(f)[TOY]  # one dataset: {name: results}


def _scalar(acc, tag):
    events = acc.Scalars(tag)
    assert events, tag
    return events[-1].value


def _check_images(acc):
    tags = acc.Tags()["images"]
    for i in range(NUM_VIS):
        (event,) = acc.Images(f"eval/prediction/{i}")  # one evaluation: one image each
        assert (event.height, event.width) == (SIZE[0], 3 * SIZE[1])
    assert f"eval/prediction/{NUM_VIS}" not in tags  # TEST.VIS_IMAGES of them, no more


def _check_cost_scalars(acc, results):
    assert _scalar(acc, "eval/mIoU") == pytest.approx(results["sem_seg"]["mIoU"], rel=1e-6)
    for stat in ("mean", "min", "max"):
        assert _scalar(acc, f"eval/cost/gmac/{stat}") == pytest.approx(
            results["cost"]["gmac"][stat], rel=1e-6)


def test_routing_playground_writes_images_costs_and_gate_statistics(toy_dataset, tmp_path):
    narrow = ["MODEL.BACKBONE.LAYER_NUM", "4", "MODEL.BACKBONE.INIT_CHANNEL", "8"]
    model, acc, results = _train(ROUTING, tmp_path / "routing", narrow)
    _check_images(acc)
    _check_cost_scalars(acc, results)
    seg = results["sem_seg"]
    for name in ("real_gflops", "real_corrected_gflops", "expt_gflops"):
        assert _scalar(acc, f"eval/cost/model/{name}/mean") == pytest.approx(seg[f"mean_{name}"],
                                                                           rel=1e-6)
    scalars = acc.Tags()["scalars"]
    # the gate statistics at both iterations (LOG_PERIOD 1), finite, fractions in [0, 1]
    for tag in ("stats/routing/gate_mean", "stats/routing/closed_fraction",
                "stats/routing/keep/gate_mean", "stats/routing/down/closed_fraction"):
        assert tag in scalars, tag
        values = [e.value for e in acc.Scalars(tag)]
        assert [e.step for e in acc.Scalars(tag)] == [0, 1]
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values), (tag, values)
    # one histogram value per gate of every cell and image of the batch of 2
    gates = sum(cell.gate_num for _, cell in model.backbone.cells())
    hist = acc.Histograms("stats/routing/gates")
    assert [h.step for h in hist] == [0, 1]
    assert all(h.histogram_value.num == 2 * gates for h in hist)
    assert all(math.isfinite(h.histogram_value.sum) for h in hist)
    keep = sum(1 for _, cell in model.backbone.cells())  # every cell has a keep route
    assert acc.Histograms("stats/routing/keep/gates")[-1].histogram_value.num == 2 * keep
    # the mean over the histogram equals the scalar of the same step
    last = hist[-1].histogram_value
    assert last.sum / last.num == pytest.approx(acc.Scalars("stats/routing/gate_mean")[-1].value,
                                                rel=1e-5)
    assert model.backbone.record_gates is False  # recording stopped after the steps
    assert "eval/exits_tradeoff" not in acc.Tags()["images"]  # no exits: no figure


def _force_masks_while_training(trainer):
    """During the training steps, the masked segments compute all pixels of image 0 and the top
    half of image 1 (``forced_masks``, resized to each exit's even-sized stride-4 output):
    fractions 1 and 0.5; evaluation runs with the model's own masks."""
    model = trainer.model
    forced = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    forced[0] = True
    forced[1, :, 0] = True

    def start(t):
        model.forced_masks = [forced] * 3

    def stop(t):
        if t.iter == t.max_iter - 1:
            model.forced_masks = None

    trainer.register_hooks([CallbackHook(before_train=start, after_step=stop)])


def test_adp_c_playground_writes_per_exit_scalars_figure_and_mask_statistics(toy_dataset, tmp_path):
    model, acc, results = _train(ADP_C, tmp_path / "adp_c", setup=_force_masks_while_training)
    _check_images(acc)
    _check_cost_scalars(acc, results)
    report = results["exits"]
    assert report["num_exits"] == 4
    for k in range(4):
        assert _scalar(acc, f"eval/exit_{k}/mIoU") == pytest.approx(
            results["sem_seg"][f"exit{k}"]["mIoU"], rel=1e-6)
        assert _scalar(acc, f"eval/exit_{k}/gflops") == pytest.approx(report["gflops"][k], rel=1e-6)
        assert math.isfinite(_scalar(acc, f"eval/exit_{k}/ms"))
    assert "eval/exit_4/mIoU" not in acc.Tags()["scalars"]
    (figure,) = acc.Images("eval/exits_tradeoff")
    # plot_exit_tradeoff's 11 x 4.2 inches at 100 dpi
    assert (figure.height, figure.width) == (420, 1100)
    # masked segments after exits 0, 1, 2: the fraction each of the 2 images computes
    for j in range(3):
        fractions = acc.Scalars(f"stats/anytime/after_exit{j}/computed_fraction")
        assert [e.step for e in fractions] == [0, 1]
        assert [e.value for e in fractions] == [0.75, 0.75]
        hist = acc.Histograms(f"stats/anytime/after_exit{j}/computed")[-1].histogram_value
        assert (hist.num, hist.min, hist.max, hist.sum) == (2, 0.5, 1.0, 1.5)
    assert "stats/anytime/after_exit3/computed_fraction" not in acc.Tags()["scalars"]
    assert not any(h for m in model.head.modules() for h in m._forward_hooks.values())


def test_prediction_image_is_image_overlay_and_ground_truth_scaled_down():
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (600, 1000, 3)).astype(np.uint8)
    pred = np.zeros((600, 1000), np.int64)
    pred[:, 500:] = 1
    gt = np.full((600, 1000), 255, np.int64)
    gt[:300] = 1
    colors = vis.palette(2, [(0, 0, 255), (255, 0, 0)])
    out = prediction_image(image, pred, gt, colors, 255, max_side=500)
    assert out.shape == (300, 1500, 3)
    # ground truth panel: class 1 red on the top half, ignore black below
    assert (out[:150, 1000:] == (255, 0, 0)).all() and (out[150:, 1000:] == 0).all()
    # the overlay is the image blended half-half with the prediction's colour
    small = np.asarray(Image.fromarray(image).resize((500, 300), Image.BILINEAR))
    expected = (small[:, 300].astype(np.float32) * 0.5
                + np.array([255, 0, 0]) * 0.5).astype(np.uint8)
    assert (out[:, 500 + 300] == expected).all()
    assert (out[:, :500] == small).all()
    with pytest.raises(ValueError, match="same size"):
        prediction_image(image, pred[:10], gt, colors)


def test_evaluation_scalars_name_each_exit_and_cost():
    results = {"sem_seg": {"mIoU": 50.0, "exit0": {"mIoU": 30.0}, "exit1": {"mIoU": 40.0},
                           "mean_exit0": 0.1, "min_exit0": 0.05, "max_exit0": 0.2, "fwIoU": 1.0},
               "exits": {"num_exits": 2, "gflops": [0.1, 0.3],
                         "time": {"ms_per_image": [1.0, 2.0]}},
               "cost": {"hrnet": {"mean": 0.3, "min": 0.2, "max": 0.4}},
               "time": {"ms_per_image": 3.0, "device": "cpu"}}
    assert evaluation_scalars(results) == {
        "mIoU": 50.0, "exit_0/mIoU": 30.0, "exit_1/mIoU": 40.0, "exit_0/gflops": 0.1,
        "exit_1/gflops": 0.3, "exit_0/ms": 1.0, "exit_1/ms": 2.0, "cost/model/exit0/mean": 0.1,
        "cost/model/exit0/min": 0.05, "cost/model/exit0/max": 0.2, "cost/hrnet/mean": 0.3,
        "cost/hrnet/min": 0.2, "cost/hrnet/max": 0.4, "time/ms_per_image": 3.0}
    results["sem_seg"]["exit1"]["mIoU"] = float("nan")  # a class-free exit: left out
    assert "exit_1/mIoU" not in evaluation_scalars(results)


class _WithStats(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.values = torch.tensor([0.0, 0.25, 1.0])

    def training_stats(self):
        return {"toy/mean": float(self.values.mean()), "toy/values": self.values,
                "toy/bad": float("nan")}


class _FakeTrainer:
    def __init__(self, storage, iteration, max_iter):
        self.storage, self.iter, self.max_iter = storage, iteration, max_iter


def test_training_stats_contract_records_scalars_and_histograms_at_the_period():
    model = _WithStats()
    hook = TrainingStatsHook.for_model(model, period=2)
    assert [type(r) for r in hook._readers] == [ModelTrainingStats]
    assert TrainingStatsHook.for_model(torch.nn.Conv2d(1, 1, 1), 2) is None  # nothing to read
    with EventStorage(0) as storage:
        for it in range(3):  # iterations 1 ((1 + 1) % 2 == 0) and 2 (the last) are recorded
            storage.iter = it
            hook.trainer = _FakeTrainer(storage, it, 3)
            hook.before_step()
            hook.after_step()
        assert [i for _, i in storage.history("stats/toy/mean").values()] == [1, 2]
        assert "stats/toy/bad" not in storage.histories()  # non-finite numbers are left out
        (first, second) = storage.histograms
        assert first["tag"] == "stats/toy/values" and first["num"] == 3
        assert first["sum"] == pytest.approx(1.25) and first["sum_squares"] == pytest.approx(1.0625)
        assert (first["min"], first["max"]) == (0.0, 1.0) and sum(first["bucket_counts"]) == 3
        assert second["global_step"] == 2


def test_channel_mask_histograms_hold_each_masks_values():
    from dl_lib.engine.tensorboard import ChannelMaskStats
    from dl_lib.modeling.pruning.pruner import attach_channel_masks

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16),
                                torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 1))
    masks = attach_channel_masks(model, sparsity=0.5, min_channels=1)
    reader = ChannelMaskStats()
    assert reader.applies(model) and not reader.applies(torch.nn.Conv2d(1, 1, 1))
    stats = reader.collect(model)
    assert set(stats) == {f"pruning/{p}/mask" for p in masks} | {"pruning/masks"}
    for path, mask in masks.items():
        assert torch.equal(stats[f"pruning/{path}/mask"], mask.current_mask().detach().float())
    assert stats["pruning/masks"].numel() == sum(m.channels for m in masks.values())

"""The worked example of docs/CONTRACTS.md "Method families": the ``two_exit`` family
(``tests/fixtures/families/two_exit``) and its playground ``tests/fixtures/playground/Toy/TwoExit``.

It adds its config keys, registers its model and a checkpoint converter, reports executed cost
through masked convolutions, and is trained with ``dl_train`` and evaluated with ``dl_test`` per
exit. Expected numbers are computed here by hand (costs from the layer shapes and the confidence
masks, per-exit IoU from our own confusion counts), not by the library's counters.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from toy_data import write_split

from dl_lib import playground
from dl_lib.analysis import CostTracker
from dl_lib.checkpoint import Checkpointer
from dl_lib.config import ConfigError

TESTS = os.path.dirname(os.path.abspath(__file__))
FAMILIES = os.path.join(TESTS, "fixtures", "families")
FIXTURE = os.path.join(TESTS, "fixtures", "playground", "Toy", "TwoExit")
H, W = 32, 64  # image size; the logits are at stride 2


@pytest.fixture(autouse=True)
def _family_on_path(monkeypatch):
    monkeypatch.syspath_prepend(FAMILIES)



def _expected_macs(width: int, num_classes: int, active: int) -> int:
    """MACs of one image: dense stem and exit-0 classifier at every stride-2 position, masked
    refinement (3x3) and exit-1 classifier (1x1) at the ``active`` positions only; biases,
    BN, ReLU and softmax are not MACs."""
    positions = (H // 2) * (W // 2)
    dense = (width * 3 * 3 * 3 + num_classes * width) * positions
    return dense + (width * width * 3 * 3 + num_classes * width) * active


def _unsure_counts(model, images):
    """Active positions of exit 1 per image, from exit 0's logits (computed here, not by the head)."""
    from two_exit.two_exit import unsure_pixels

    with torch.no_grad():
        x = torch.stack([(img.float() - model.pixel_mean) / model.pixel_std for img in images])
        logits0 = model.head.exit0(model.backbone(x)["res2"])
        unsure = unsure_pixels(logits0, model.head.conf_thresh)
    return [int(u.sum()) for u in unsure]


def _inputs(seed, n=2):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, H, W), generator=g, dtype=torch.uint8),
             "height": H, "width": W} for _ in range(n)]


def _built(opts=()):
    cfg, model = playground.build(FIXTURE, list(opts))
    return cfg, model.eval()


def test_family_adds_its_keys_and_names_them_in_errors():
    cfg = playground.load_config(FIXTURE)
    assert list(cfg.FAMILIES) == ["two_exit"]
    assert cfg.MODEL.TWO_EXIT.CONF_THRESH == 0.7 and cfg.MODEL.TWO_EXIT.WIDTH == 8
    with pytest.raises(ConfigError, match="MODEL.TWO_EXIT.CONF_THRESH"):
        playground.load_config(FIXTURE, ["MODEL.TWO_EXIT.CONF_THRES", "0.5"])
    with pytest.raises(ConfigError, match="MODEL.TWO_EXIT.WIDTH"):
        playground.load_config(FIXTURE, ["MODEL.TWO_EXIT.WIDTH", "wide"])


def test_confident_pixels_keep_exit0_and_cost_nothing_in_exit1():
    cfg, model = _built()
    inputs = _inputs(0)
    with torch.no_grad():
        # A large bias makes exit 0 sure of class 0 everywhere: exit 1 runs on no pixel.
        model.head.exit0.bias.copy_(torch.tensor([20.0, 0.0]))
        with CostTracker(model, conventions=["gmac"], num_images=2) as tracker:
            outputs = model(inputs)
    for out in outputs:
        assert len(out["sem_seg_exits"]) == 2
        torch.testing.assert_close(out["sem_seg_exits"][1], out["sem_seg_exits"][0])
        torch.testing.assert_close(out["sem_seg"], out["sem_seg_exits"][1])
    expected = _expected_macs(8, 2, active=0)
    assert [c["gmac"] for c in tracker.per_image(raw=True)] == [expected, expected]


def test_unsure_pixels_equal_the_dense_computation():
    cfg, model = _built(["MODEL.TWO_EXIT.CONF_THRESH", "1.01"])  # no pixel is sure enough
    inputs = _inputs(1)
    with torch.no_grad():
        outputs = model(inputs)
        x = torch.stack([(d["image"].float() - model.pixel_mean) / model.pixel_std for d in inputs])
        f = model.backbone(x)["res2"]
        head = model.head
        dense1 = F.conv2d(F.relu(F.conv2d(f, head.refine.weight, head.refine.bias, padding=1)),
                          head.exit1.weight, head.exit1.bias)
        dense1 = F.interpolate(dense1, size=(H, W), mode="bilinear", align_corners=False)
    for i, out in enumerate(outputs):
        torch.testing.assert_close(out["sem_seg"], dense1[i], rtol=1e-4, atol=1e-4)


def test_executed_cost_per_image_counts_active_pixels_only():
    cfg, model = _built()
    inputs = _inputs(2)
    inputs[0]["image"][:, :, : W // 2] = 255  # the two images differ in how sure exit 0 is
    with torch.no_grad():
        x = torch.stack([(d["image"].float() - model.pixel_mean) / model.pixel_std for d in inputs])
        sure = model.head.exit0(model.backbone(x)["res2"]).softmax(1).amax(1)
    model.head.conf_thresh = float(sure.flatten().quantile(0.4))  # exit 1 on ~40 % of the pixels
    active = _unsure_counts(model, [d["image"] for d in inputs])
    assert active[0] != active[1] and 0 < min(active) and max(active) < (H // 2) * (W // 2)
    with torch.no_grad(), CostTracker(model, conventions=["gmac", "hrnet"], num_images=2) as tracker:
        model(inputs)
    per_image = tracker.per_image(raw=True)
    assert [c["gmac"] for c in per_image] == [_expected_macs(8, 2, a) for a in active]
    # HRNet's summary also prices convs by numel(weight) x positions (no bias): the same count.
    assert [c["hrnet"] for c in per_image] == [c["gmac"] for c in per_image]


def test_released_layout_loads_strictly_through_the_family_converter(tmp_path):
    from two_exit.convert import RELEASED_TO_OURS

    cfg, model = _built()
    ours = model.state_dict()
    released = {}
    for key, value in ours.items():
        for old, new in RELEASED_TO_OURS.items():
            if key.startswith(new):
                key = old + key[len(new):]
                break
        released[key] = value.clone() + 1.0 if value.is_floating_point() else value.clone()
    assert any(k.startswith("cls_early.") for k in released)
    path = str(tmp_path / "released.pth")
    torch.save(released, path)

    cfg, fresh = _built()
    Checkpointer(fresh).load(path, checkpointables=[], strict=True)
    for key, value in fresh.state_dict().items():
        expected = ours[key] + 1.0 if ours[key].is_floating_point() else ours[key]
        torch.testing.assert_close(value, expected, msg=key)


def _command(name):
    script = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(script):
        return [script]
    main = "main_train" if name == "dl_train" else "main_test"
    return [sys.executable, "-c", f"import sys; from dl_lib.tools.train_net import {main}; sys.exit({main}())"]


def _iou(pred, gt, k):
    valid = gt != 255
    pred, gt = pred[valid], gt[valid]
    ious = []
    for c in range(k):
        inter = np.sum((pred == c) & (gt == c))
        union = np.sum((pred == c) | (gt == c))
        if union:
            ious.append(inter / union)
    return 100 * float(np.mean(ious))


@pytest.mark.slow
def test_dl_train_then_dl_test_reports_each_exit_and_executed_cost(tmp_path, monkeypatch):
    data = str(tmp_path / "data")
    write_split(data, "train", 4, 0)
    write_split(data, "val", 3, 1)
    env = dict(os.environ, OMP_NUM_THREADS="1", DL_OUTPUT_ROOT=str(tmp_path / "out"),
               TWO_EXIT_TOY_DATA=data,
               PYTHONPATH=os.pathsep.join([FAMILIES] + [p for p in [os.environ.get("PYTHONPATH")] if p]))

    def run(name, *args):
        proc = subprocess.run(_command(name) + ["--playground", FIXTURE, "--num-gpus", "1", *args],
                              cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # A narrower model than the playground's default: dl_test rebuilds it from the checkpoint.
    run("dl_train", "MODEL.TWO_EXIT.WIDTH", "6")
    out = tmp_path / "out" / "Toy" / "TwoExit"
    trained = json.loads((out / "results.json").read_text())["two_exit_toy_val"]
    assert set(trained["sem_seg"]["exit0"]) >= {"mIoU", "IoU-dark", "IoU-red"}

    run("dl_test", "MODEL.WEIGHTS", str(out / "model_final.pth"))
    tested = json.loads((out / "inference" / "model_final" / "results.json").read_text())
    tested = tested["two_exit_toy_val"]
    seg = tested["sem_seg"]
    assert seg["mIoU"] == pytest.approx(seg["exit1"]["mIoU"])  # the final prediction is exit 1
    assert seg["mIoU"] == pytest.approx(trained["sem_seg"]["mIoU"], abs=1e-6)

    # Independent expectation from the saved weights: per-exit IoU and executed cost per image.
    monkeypatch.setenv("TWO_EXIT_TOY_DATA", data)
    cfg, model = _built(["MODEL.TWO_EXIT.WIDTH", "6"])
    model.load_state_dict(torch.load(out / "model_final.pth", weights_only=True)["model"])
    images, labels = [], []
    for i in range(3):
        images.append(torch.from_numpy(np.asarray(
            Image.open(os.path.join(data, "val", "images", f"{i}.png"))).transpose(2, 0, 1).copy()))
        labels.append(np.asarray(Image.open(os.path.join(data, "val", "labels", f"{i}.png"))))
    with torch.no_grad():
        outputs = model([{"image": img, "height": H, "width": W} for img in images])
    for k in range(2):
        pred = np.concatenate([o["sem_seg_exits"][k].argmax(0).numpy().ravel() for o in outputs])
        gt = np.concatenate([lab.ravel() for lab in labels])
        assert seg[f"exit{k}"]["mIoU"] == pytest.approx(_iou(pred, gt, 2), abs=1e-4)

    macs = [_expected_macs(6, 2, a) for a in _unsure_counts(model, images)]
    for convention, divisor in (("gmac", 1e9), ("hrnet", 2.0 ** 30)):
        cost = tested["cost"][convention]
        assert cost["mean"] == pytest.approx(np.mean(macs) / divisor, rel=1e-9)
        assert cost["min"] == pytest.approx(min(macs) / divisor, rel=1e-9)
        assert cost["max"] == pytest.approx(max(macs) / divisor, rel=1e-9)
    assert cost["max"] <= _expected_macs(6, 2, (H // 2) * (W // 2)) / divisor

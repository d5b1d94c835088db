"""dl_demo on the embedded street scenes: a folder with --gt-dir, a video, a glob, the default
weights (OUTPUT_DIR/last_checkpoint) and its errors with the FPN quickstart; the extra rows of an
anytime (ADP-C: exits + confidence masks), a routing (routes picture + routes.json) and an
MFARANet (branches + fused, ASFM attention maps) playground. The tests write the checkpoints."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dl_lib import playground
from dl_lib.checkpoint import Checkpointer
from dl_lib.data import DatasetCatalog, MetadataCatalog
from dl_lib.data.datasets.common import read_mask
from dl_lib.data.mapper import read_image
from dl_lib.engine import Predictor
from dl_lib.evaluation.visualize import MASK_COMPUTED_COLOR, MASK_SKIPPED_COLOR
from dl_lib.tools.demo_images import (TITLE_HEIGHT, attention_maps, capture_attention,
                                      exit_titles, heat_map, main)
from dl_lib.utils import visualizer as vis

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FPN = os.path.join(REPO, "playground", "Quickstart", "FPN.R18W32.Synthetic")
ROUTING = os.path.join(REPO, "playground", "Quickstart", "Seg.Layer6.Tiny.Synthetic")
ANYTIME = os.path.join(REPO, "playground", "Anytime", "HRNet_W18.ADP_C.Tiny.Synthetic")
MFARANET = os.path.join(REPO, "playground", "MFARANet", "R18_DeepStem.Tiny.Synthetic")
H, W = 64, 128
VAL = "synthetic_cityscapes_val"


@pytest.fixture
def scenes(tmp_path, monkeypatch):
    from dl_lib.data.datasets import synthetic

    monkeypatch.setenv("DL_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "output"))
    for key, value in dict(num_train=2, num_val=2, size=(H, W)).items():
        monkeypatch.setitem(synthetic.SYNTHETIC_OPTIONS, key, value)
    return DatasetCatalog.get(VAL)


def _train_run(folder, opts):
    """A 'training run' of ``folder``: its model saved as OUTPUT_DIR/model_final.pth with
    last_checkpoint pointing at it. Returns the config."""
    torch.manual_seed(0)
    cfg, model = playground.build(folder, opts)
    Checkpointer(model, cfg.OUTPUT_DIR, save_to_disk=True).save("model_final")
    return cfg


def _panel(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _legend_rows(num_entries, width):
    return math.ceil(num_entries / (width // 110))  # legend entries are 110 px wide, 14 high


def _colors():
    return vis.palette(19, MetadataCatalog.get(VAL).stuff_colors)


def test_folder_with_gt_dir_default_weights_and_legend(scenes, tmp_path, capsys):
    opts = ["INPUT.MIN_SIZE_TEST", "48"]  # predicted at 48x96, drawn at 64x128
    cfg = _train_run(FPN, opts)
    images, gts = tmp_path / "images", tmp_path / "gt"
    images.mkdir(), gts.mkdir()
    for i, d in enumerate(scenes):  # a user's folder: photos and label maps named after them
        shutil.copy(d["file_name"], images / f"shot{i}.png")
        shutil.copy(d["sem_seg_file_name"], gts / f"shot{i}.png")
    out = tmp_path / "demo"
    assert main(["--playground", FPN, "--input", str(images), "--gt-dir", str(gts),
                 "--output", str(out)] + opts) == 0
    printed = capsys.readouterr().out
    assert os.path.join(cfg.OUTPUT_DIR, "model_final.pth") in printed  # last_checkpoint's file
    assert "no extra rows" in printed
    paths = sorted(out / f for f in os.listdir(out))
    assert [p.name for p in paths] == ["0000_shot0.png", "0001_shot1.png"]

    weights_cfg = cfg.clone()
    weights_cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    predictor = Predictor(weights_cfg, playground=FPN)
    colors = _colors()
    image = read_image(str(images / "shot0.png"))
    pred = predictor(image).labels
    gt = read_mask(str(gts / "shot0.png"))
    present = sorted(c for c in set(np.unique(pred)) | set(np.unique(gt)) if c != 255)
    panel = _panel(paths[0])
    assert panel.shape == (TITLE_HEIGHT + H + 14 * _legend_rows(len(present), 3 * W), 3 * W, 3)
    body = panel[TITLE_HEIGHT:TITLE_HEIGHT + H]
    np.testing.assert_array_equal(body[:, :W], image)
    np.testing.assert_array_equal(body[:, W:2 * W],
                                  vis.overlay(image, vis.colorize(pred, colors), 0.5))
    np.testing.assert_array_equal(body[:, 2 * W:],
                                  vis.overlay(image, vis.colorize(gt, colors), 0.5))
    legend = panel[TITLE_HEIGHT + H:].reshape(-1, 3)
    for c in present:
        assert (legend == colors[c]).all(axis=1).any(), c


def test_video_glob_and_errors(scenes, tmp_path, capsys):
    import cv2

    opts = ["INPUT.MIN_SIZE_TEST", "64"]
    frames = [read_image(d["file_name"]) for d in scenes]
    video = tmp_path / "drive.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (W, H))
    for k in range(5):
        writer.write(np.ascontiguousarray(frames[k % 2][:, :, ::-1]))
    writer.release()

    # no training run yet: the default weights do not exist
    assert_exit = pytest.raises(SystemExit)
    with assert_exit as e:
        main(["--playground", FPN, "--input", str(video)] + opts)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "last_checkpoint does not exist" in err and "--weights" in err

    _train_run(FPN, opts)
    out = tmp_path / "demo"
    assert main(["--playground", FPN, "--input", str(video), "--every", "2",
                 "--input", str(tmp_path / "datasets" / "synthetic_cityscapes" / "leftImg8bit"
                                / "val" / "*" / "*.png"),
                 "--output", str(out)] + opts) == 0
    names = sorted(os.listdir(out))
    assert names[:3] == ["0000_drive_f000000.png", "0001_drive_f000002.png",
                         "0002_drive_f000004.png"]
    assert len(names) == 3 + len(scenes)  # the glob's two images after the video's frames
    for n in names:
        assert _panel(out / n).shape[1:] == (3 * W, 3)

    (tmp_path / "broken.mp4").write_text("not a video")
    for argv, message in ((["--input", str(tmp_path / "broken.mp4")], "cannot read the video"),
                          (["--input", str(tmp_path / "nothing*.png")], "matches no file"),
                          (["--input", str(video), "--weights", str(tmp_path / "x.pth")],
                           "no such file")):
        with pytest.raises(SystemExit) as e:
            main(["--playground", FPN, "--output", str(out)] + argv + opts)
        assert e.value.code == 2
        assert message in capsys.readouterr().err


def test_anytime_exits_and_confidence_masks(scenes, tmp_path, capsys):
    opts = ["INPUT.MIN_SIZE_TEST", "64"]
    cfg = _train_run(ANYTIME, opts)
    out = tmp_path / "demo"
    assert main(["--playground", ANYTIME, "--dataset", VAL, "--num-images", "1",
                 "--output", str(out)] + opts) == 0
    assert "4 exits, 3 confidence masks" in capsys.readouterr().out
    (path,) = [out / n for n in os.listdir(out)]
    cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    predictor = Predictor(cfg, playground=ANYTIME)
    image = read_image(scenes[0]["file_name"])
    pred = predictor(image)
    assert len(pred.exit_logits) == 4 and len(pred.exit_masks) == 3
    gt = read_mask(scenes[0]["sem_seg_file_name"])
    labels = [pred.labels, gt] + pred.exit_labels
    present = sorted(set().union(*(np.unique(x).tolist() for x in labels)) - {255})
    row = TITLE_HEIGHT + H
    # image row, 2 rows of exits (3 + 1), 3 mask rows, legend
    panel = _panel(path)
    assert panel.shape == ((1 + 2 + 3) * row + 14 * _legend_rows(len(present), 3 * W), 3 * W, 3)
    colors = _colors()
    for k, labels_k in enumerate(pred.exit_labels):
        y, x = row * (1 + k // 3) + TITLE_HEIGHT, W * (k % 3)
        np.testing.assert_array_equal(panel[y:y + H, x:x + W],
                                      vis.overlay(image, vis.colorize(labels_k, colors), 0.5))
    for j, mask in enumerate(pred.exit_masks):
        y = row * (3 + j) + TITLE_HEIGHT
        drawn = panel[y:y + H, :W]
        want = np.where(mask[..., None], np.uint8(MASK_COMPUTED_COLOR),
                        np.uint8(MASK_SKIPPED_COLOR))
        np.testing.assert_array_equal(drawn, want)
    np.testing.assert_array_equal(panel[TITLE_HEIGHT:row, 2 * W:],  # the GT of the data set
                                  vis.overlay(image, vis.colorize(gt, colors), 0.5))


def test_routing_routes_and_mfaranet_branches(scenes, tmp_path, capsys):
    from dl_lib.modeling.dynamic_routing.routes import routes_from_gates

    opts = ["INPUT.MIN_SIZE_TEST", "64"]
    cfg = _train_run(ROUTING, opts)
    out = tmp_path / "routing"
    assert main(["--playground", ROUTING, "--input", scenes[0]["file_name"],
                 "--output", str(out)] + opts) == 0
    assert "extra rows: the routes taken" in capsys.readouterr().out
    stem = "0000_" + os.path.splitext(os.path.basename(scenes[0]["file_name"]))[0]
    cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    pred = Predictor(cfg, playground=ROUTING)(read_image(scenes[0]["file_name"]))
    assert pred.gates
    with open(out / f"{stem}.routes.json") as f:
        assert json.load(f)["routes"] == routes_from_gates(pred.gates)
    present = sorted(set(np.unique(pred.labels).tolist()) - {255})
    panel = _panel(out / f"{stem}.png")
    route_picture = max(200, 3 * W // 4)  # draw_routes' default height at the panel's width
    assert panel.shape == (TITLE_HEIGHT + H + 14 * _legend_rows(len(present), 3 * W)
                           + route_picture, 3 * W, 3)

    cfg = _train_run(MFARANET, opts)
    out = tmp_path / "mfaranet"
    assert main(["--playground", MFARANET, "--input", scenes[1]["file_name"],
                 "--output", str(out)] + opts) == 0
    assert "4 branches + fused, 4 attention maps" in capsys.readouterr().out
    cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    predictor = Predictor(cfg, playground=MFARANET)
    image = read_image(scenes[1]["file_name"])
    pred = predictor(image)
    # the hooks capture the ASFM weights: fused = sum over branches of scores x attention
    x = (predictor.model_input(image)["image"].float()[None] - predictor.model.pixel_mean) \
        / predictor.model.pixel_std
    with capture_attention(predictor.model) as captured, torch.no_grad():
        outputs = predictor.model.forward_outputs(x)
    assert [b for b, _ in captured] == [1, 2, 3, 4]
    torch.testing.assert_close(sum(outputs.branches[b] * a for b, a in captured), outputs.fused)
    maps = attention_maps(captured, pred.labels, (H, W))
    assert all(m.shape == (H, W) and 0 <= m.min() and m.max() <= 1 for _, m in maps)
    assert exit_titles(predictor.model, len(pred.exit_logits)) == [
        "branch 1 (stride 4)", "branch 2 (stride 8)", "branch 3 (stride 16)",
        "branch 4 (stride 32)", "fused"]
    torch.testing.assert_close(pred.exit_logits[-1], pred.logits)  # sem_seg is the fused one
    labels = [pred.labels] + pred.exit_labels
    present = sorted(set().union(*(np.unique(x).tolist() for x in labels)) - {255})
    (name,) = os.listdir(out)
    panel = _panel(out / name)
    row = TITLE_HEIGHT + H
    # image row, 2 rows of the 5 outputs, 2 rows of the 4 attention maps, legend
    assert panel.shape == (5 * row + 14 * _legend_rows(len(present), 3 * W), 3 * W, 3)
    for j, (_, values) in enumerate(maps):
        y, x0 = row * (3 + j // 3) + TITLE_HEIGHT, W * (j % 3)
        np.testing.assert_array_equal(panel[y:y + H, x0:x0 + W], heat_map(values))

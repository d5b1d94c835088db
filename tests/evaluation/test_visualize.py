"""write_panels writes image | GT | prediction PNGs three panels wide."""
import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from dl_lib.config import get_cfg
from dl_lib.evaluation import write_panels
from dl_lib.utils.visualizer import colorize, palette

from .helpers import register

H, W = 12, 20


class ChannelModel(nn.Module):
    """Predicts class 1 where the red channel is bright, else 0, at (height, width)."""

    def forward(self, batched_inputs):
        outs = []
        for x in batched_inputs:
            red = (x["image"][0] > 127).float()
            logits = torch.stack([1 - red, red])[None]
            size = (x["height"], x["width"])  # the mapper may have resized the image
            outs.append({"sem_seg": torch.nn.functional.interpolate(logits, size=size)[0]})
        return outs


def test_write_panels(tmp_path):
    dicts = []
    for i in range(3):
        img = np.zeros((H, W, 3), np.uint8)
        img[:, : W // 2, 0] = 255
        gt = np.zeros((H, W), np.uint8)
        gt[:, : W // 2] = 1
        gt[0] = 255
        Image.fromarray(img).save(tmp_path / f"{i}.jpg")
        Image.fromarray(gt).save(tmp_path / f"{i}.png")
        dicts.append({"file_name": str(tmp_path / f"{i}.jpg"),
                      "sem_seg_file_name": str(tmp_path / f"{i}.png"), "image_id": f"img{i}"})
    register("test_vis", dicts, stuff_classes=["bg", "fg"], stuff_colors=[(0, 0, 255), (0, 255, 0)],
             ignore_label=255)
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 2 * H  # the test mapper upsamples; panels stay at the original size
    cfg.INPUT.MAX_SIZE_TEST = 4 * W
    paths = write_panels(cfg, ChannelModel(), "test_vis", str(tmp_path / "out"), 2)
    assert len(paths) == 2 and all(p.startswith(str(tmp_path / "out" / "vis")) for p in paths)
    panel = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert panel.shape[1] == 3 * W and panel.shape[0] > H
    # the GT panel shows stuff_colors, with the ignore row black; find the body rows by colour
    gt_panel = panel[:, W: 2 * W]
    rows = np.where((gt_panel[:, -1] == (0, 0, 255)).all(axis=1))[0]
    top = rows[0] - 1
    assert (gt_panel[top] == 0).all()  # ignore row
    assert (gt_panel[top + 1, 0] == (0, 255, 0)).all()
    pred_panel = panel[top + 1: top + H, 2 * W:]
    assert (pred_panel[:, 0] == (0, 255, 0)).all() and (pred_panel[:, -1] == (0, 0, 255)).all()


def test_colorize_and_palette():
    colors = palette(3)
    assert colors.shape == (3, 3) and (colors[0] != 0).any()  # class 0 is not black
    out = colorize(np.array([[0, 2, 255, 7]]), colors)
    assert (out[0, 2] == 0).all() and (out[0, 3] == 0).all() and (out[0, 1] == colors[2]).all()

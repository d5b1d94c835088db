"""Panels of a multi-exit model: the final prediction as before, plus rows of exit predictions."""
import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from dl_lib.config import get_cfg
from dl_lib.evaluation import make_panel, write_panels
from dl_lib.evaluation.visualize import TITLE_HEIGHT

from .helpers import logits_from_labels, register

H, W = 6, 8
BLUE, GREEN = (0, 0, 255), (0, 255, 0)


def test_make_panel_draws_exit_rows_three_wide():
    gt = np.ones((H, W), np.int64)
    gt[0, 0] = 0  # both classes in the legend, with or without exits
    pred = np.ones((H, W), np.int64)
    exits = [np.zeros((H, W), np.int64), np.ones((H, W), np.int64)]
    panel = make_panel(np.zeros((H, W, 3), np.uint8), gt, pred, ["bg", "fg"], [BLUE, GREEN],
                       exits=exits)
    assert panel.shape[1] == 3 * W
    top = TITLE_HEIGHT + H + TITLE_HEIGHT  # below the first body and the exit titles
    row = panel[top: top + H]
    assert (row[:, :W] == BLUE).all()          # exit 0: all class 0
    assert (row[:, W: 2 * W] == GREEN).all()   # exit 1: all class 1
    assert (row[:, 2 * W:] == 0).all()         # padding to three panels
    plain = make_panel(np.zeros((H, W, 3), np.uint8), gt, pred, ["bg", "fg"], [BLUE, GREEN])
    assert panel.shape[0] == plain.shape[0] + TITLE_HEIGHT + H


class TwoExitModel(nn.Module):
    """Exit 0 predicts class 0 everywhere, exit 1 (final) class 1."""

    def forward(self, batched_inputs):
        outs = []
        for x in batched_inputs:
            size = (x["height"], x["width"])
            exits = [logits_from_labels(np.full(size, c), 2) for c in (0, 1)]
            outs.append({"sem_seg": exits[-1], "sem_seg_exits": exits})
        return outs


def test_write_panels_of_a_multi_exit_model(tmp_path):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "0.png")
    register("test_vis_exits", [{"file_name": str(tmp_path / "0.png"), "image_id": "x"}],
             stuff_classes=["bg", "fg"], stuff_colors=[BLUE, GREEN], ignore_label=255)
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 0
    with torch.no_grad():
        path, = write_panels(cfg, TwoExitModel(), "test_vis_exits", str(tmp_path / "out"), 1)
    panel = np.asarray(Image.open(path).convert("RGB"))
    body = panel[TITLE_HEIGHT: TITLE_HEIGHT + H]
    assert (body[:, 2 * W:] == GREEN).all()  # the final prediction
    top = TITLE_HEIGHT + H + TITLE_HEIGHT
    assert panel.shape[0] > top + H  # the extra row is there
    assert (panel[top: top + H, :W] == BLUE).all()  # exit 0 in it

"""The per-exit trade-off plot (mIoU against GFLOPs and against latency; one line per run, the
published points dashed and hollow), its CLI over results.json files, and the exit-mask rows
of the panels."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from dl_lib.config import get_cfg
from dl_lib.evaluation import make_panel, visualize, write_panels
from dl_lib.evaluation.exits import exit_report, load_exit_runs, main, plot_exit_tradeoff
from dl_lib.evaluation.visualize import (MASK_COMPUTED_COLOR, MASK_SKIPPED_COLOR, TITLE_HEIGHT,
                                         mask_title)

from .helpers import logits_from_labels, register

PUBLISHED = {"ADP-C W48": {"mIoU": [44.34, 60.13, 76.82, 81.31],
                           "gflops": [41.9, 93.9, 259.3, 387.1]}}


def _report(miou, gflops=None, ms=None, published=None, run=""):
    seg = {f"exit{k}": {"mIoU": m} for k, m in enumerate(miou)}
    seg.update({f"mean_exit{k}": g for k, g in enumerate(gflops or [])})
    res = {"sem_seg": seg}
    if ms:
        res["time"] = {"exit_ms_per_image": ms, "device": "cpu (2 threads)"}
    return exit_report(res, published, run=run)


def _lines(ax):
    return [(line.get_label(), line.get_linestyle(), line.get_markerfacecolor(),
             list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines]


def test_one_line_per_run_and_the_published_points(tmp_path):
    a = _report([40.0, 50.0, 60.0], [1.0, 2.0, 3.0], [5.0, 9.0, 14.0], PUBLISHED)
    b = _report([45.0, 55.0], [1.5, 2.5], [6.0, 11.0], PUBLISHED)
    path = tmp_path / "sub" / "plot.png"
    fig = plot_exit_tradeoff([("run a", a), ("run b", b)], str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax_flops, ax_ms = fig.axes
    flops = _lines(ax_flops)
    assert [l[0] for l in flops] == ["run a", "run b", "published: ADP-C W48"]  # published once
    assert flops[0][1:] == ("-", flops[0][2], [1.0, 2.0, 3.0], [40.0, 50.0, 60.0])
    assert flops[0][2] != "none"  # filled markers
    label, style, face, x, y = flops[2]
    assert (style, face) == ("--", "none")  # dashed, hollow markers
    assert (x, y) == (PUBLISHED["ADP-C W48"]["gflops"], PUBLISHED["ADP-C W48"]["mIoU"])
    ms = _lines(ax_ms)  # the published points have no latency
    assert [l[0] for l in ms] == ["run a", "run b"]
    assert ms[1][3:] == ([6.0, 11.0], [45.0, 55.0])
    assert "cpu (2 threads)" in ax_ms.get_xlabel()


def test_a_run_without_costs_draws_no_line():
    fig = plot_exit_tradeoff([("plain", _report([40.0, 50.0]))])
    assert all(not ax.lines for ax in fig.axes)
    assert any("no run reported GFLOPs" in t.get_text() for t in fig.axes[0].texts)


def _results_json(path, report, dataset="val", nested=True):
    results = {"sem_seg": {"mIoU": report["mIoU"][-1]}, "exits": report}
    path.write_text(json.dumps({dataset: results} if nested else results))
    return str(path)


def test_cli_draws_several_results_files(tmp_path, capsys):
    one = _results_json(tmp_path / "one.json", _report([40.0, 50.0], [1.0, 2.0], run="A/X"))
    two = _results_json(tmp_path / "two.json", _report([42.0, 52.0], [1.1, 2.2], [3.0, 4.0],
                                                       PUBLISHED, run="A/Y"), nested=False)
    assert [label for label, _ in load_exit_runs([one, two])] == ["A/X", "A/Y"]
    assert [label for label, _ in load_exit_runs([one, two], ["x", "y"])] == ["x", "y"]
    out = tmp_path / "all.png"
    assert main([str(out), one, two]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "A/X: 40.00 50.00 45.00 | 1.00 2.00 1.50" in printed and "2 runs" in printed

    empty = tmp_path / "none.json"
    empty.write_text(json.dumps({"val": {"sem_seg": {"mIoU": 1.0}}}))
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "x.png"), str(empty)])
    assert e.value.code == 2 and "no per-exit report" in capsys.readouterr().err


H, W = 6, 8
BLUE, GREEN = (0, 0, 255), (0, 255, 0)


def _masks():
    m0 = np.zeros((H, W), bool)
    m0[:, : W // 4] = True  # 25 % computed after exit 0
    m1 = np.zeros((H, W), bool)
    m1[0, 0] = True  # 1 of 48 after exit 1
    return [m0, m1]


def test_make_panel_adds_one_row_per_masked_segment(monkeypatch):
    titles = []
    real_strip = visualize.vis.title_strip
    monkeypatch.setattr(visualize.vis, "title_strip",
                        lambda t, w, h=16: titles.append(list(t)) or real_strip(t, w, h))
    gt = pred = np.ones((H, W), np.int64)
    image = np.full((H, W, 3), 200, np.uint8)
    plain = make_panel(image, gt, pred, ["bg", "fg"], [BLUE, GREEN])
    titles.clear()
    panel = make_panel(image, gt, pred, ["bg", "fg"], [BLUE, GREEN], masks=_masks())
    assert panel.shape == (plain.shape[0] + 2 * (TITLE_HEIGHT + H), 3 * W, 3)
    assert titles[1][0] == "after exit 0: 25.0% computed" and titles[1][0] == mask_title(
        _masks()[0], 0)
    assert titles[2][0] == "after exit 1: 2.1% computed"
    top = TITLE_HEIGHT + H + TITLE_HEIGHT  # below the body and the first mask row's titles
    row = panel[top: top + H]
    assert (row[:, : W // 4] == MASK_COMPUTED_COLOR).all()
    assert (row[:, W // 4: W] == MASK_SKIPPED_COLOR).all()
    # the mask over the image: computed and skipped pixels differ there too
    assert (row[0, W] != row[0, W + W // 4]).any()


class _MaskedModel(nn.Module):
    """Two exits and one mask (tensor, at image size): the left half computed after exit 0."""

    def forward(self, batched_inputs):
        outs = []
        for x in batched_inputs:
            size = (x["height"], x["width"])
            exits = [logits_from_labels(np.full(size, c), 2) for c in (0, 1)]
            mask = torch.zeros(size, dtype=torch.bool)
            mask[:, : size[1] // 2] = True
            outs.append({"sem_seg": exits[-1], "sem_seg_exits": exits, "exit_masks": [mask]})
        return outs


def test_write_panels_draws_the_exit_masks(tmp_path):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "0.png")
    register("test_vis_masks", [{"file_name": str(tmp_path / "0.png"), "image_id": "x"}],
             stuff_classes=["bg", "fg"], stuff_colors=[BLUE, GREEN], ignore_label=255)
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 0
    with torch.no_grad():
        path, = write_panels(cfg, _MaskedModel(), "test_vis_masks", str(tmp_path / "out"), 1)
    panel = np.asarray(Image.open(path).convert("RGB"))
    top = 2 * (TITLE_HEIGHT + H) + TITLE_HEIGHT  # body, one exit row, the mask titles
    row = panel[top: top + H]
    assert (row[:, : W // 2] == MASK_COMPUTED_COLOR).all()
    assert (row[:, W // 2: W] == MASK_SKIPPED_COLOR).all()


def test_write_panels_refuses_a_mask_of_another_size(tmp_path):
    class Small(_MaskedModel):
        def forward(self, batched_inputs):
            outs = super().forward(batched_inputs)
            for o in outs:
                o["exit_masks"] = [torch.ones(2, 2, dtype=torch.bool)]
            return outs

    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "0.png")
    register("test_vis_masks_small", [{"file_name": str(tmp_path / "0.png"), "image_id": "x"}],
             stuff_classes=["bg", "fg"], ignore_label=255)
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 0
    with pytest.raises(ValueError, match=r"exit_masks\[0\]"):
        write_panels(cfg, Small(), "test_vis_masks_small", str(tmp_path / "out"), 1)

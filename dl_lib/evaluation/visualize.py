"""image | ground truth | prediction panels for the first images of a dataset."""
import logging
import os
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from dl_lib.data.catalog import DatasetCatalog, MetadataCatalog
from dl_lib.utils import visualizer as vis
from dl_lib.utils.file_io import atomic_write

from .evaluator import inference_context

__all__ = ["write_panels", "make_panel", "mask_title"]

logger = logging.getLogger(__name__)

TITLE_HEIGHT = 16


PANELS_PER_ROW = 3

# exit_masks panels: pixels computed after an exit (not confident) and those skipped (confident)
MASK_COMPUTED_COLOR = (255, 140, 0)
MASK_SKIPPED_COLOR = (60, 60, 60)


def _exit_rows(exits: Sequence[np.ndarray], colors, ignore_label: int, h: int, w: int):
    """Rows of three colourised exit predictions under titles ``exit k`` (the last row padded
    with black), so they line up with image | GT | prediction."""
    rows = []
    for start in range(0, len(exits), PANELS_PER_ROW):
        chunk = list(exits[start: start + PANELS_PER_ROW])
        titles = [f"exit {start + i}" for i in range(len(chunk))]
        panels = [vis.colorize(e, colors, ignore_label) for e in chunk]
        while len(panels) < PANELS_PER_ROW:
            panels.append(np.zeros((h, w, 3), np.uint8))
            titles.append("")
        rows += [vis.title_strip(titles, w, TITLE_HEIGHT), vis.hstack(panels)]
    return rows


def mask_title(mask: np.ndarray, after_exit: int) -> str:
    """``"after exit 0: 62.5% computed"``: the share of True (computed) pixels of ``mask``."""
    share = 100.0 * float(np.mean(mask)) if mask.size else 0.0
    return f"after exit {after_exit}: {share:.1f}% computed"


def _mask_rows(masks: Sequence[np.ndarray], image: np.ndarray, h: int, w: int):
    """One row per masked segment: the mask (computed pixels in ``MASK_COMPUTED_COLOR``, skipped
    ones in ``MASK_SKIPPED_COLOR``) | the mask over the image | black, under their titles."""
    rows = []
    for j, mask in enumerate(masks):
        colored = np.empty((h, w, 3), np.uint8)
        colored[...] = MASK_SKIPPED_COLOR
        colored[mask] = MASK_COMPUTED_COLOR
        panels = [colored, vis.overlay(image, colored, 0.5), np.zeros((h, w, 3), np.uint8)]
        titles = [mask_title(mask, j), "computed on the image", ""]
        rows += [vis.title_strip(titles, w, TITLE_HEIGHT), vis.hstack(panels)]
    return rows


def make_panel(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, class_names, colors,
               ignore_label: int = 255, title: str = "",
               exits: Optional[Sequence[np.ndarray]] = None,
               masks: Optional[Sequence[np.ndarray]] = None) -> np.ndarray:
    """Compose ``[title strip] / image | GT | prediction / [exit rows] / [mask rows] / legend
    strip`` as H' x 3W x 3 uint8.

    ``image``: H x W x 3 RGB uint8; ``gt``/``pred``: H x W train ids (ignore shown in black).
    ``exits``: for multi-exit models, the H x W prediction of each exit (cheapest first), drawn
    three per row below the final prediction. ``masks``: for models that skip confident pixels
    (the outputs' ``exit_masks``), H x W bool per masked segment, True = computed after exit j;
    one row each (the mask, the mask over the image), titled with the computed share. The
    legend lists the classes present in the ground truth or any prediction.
    """
    h, w = pred.shape
    exits = list(exits or [])
    colors = vis.palette(len(class_names), colors)
    body = vis.hstack([image, vis.colorize(gt, colors, ignore_label),
                       vis.colorize(pred, colors, ignore_label)])
    titles = ["image" + (f" {title}" if title else ""), "ground truth", "prediction"]
    present = set(np.unique(gt).tolist()) | set(np.unique(pred).tolist())
    for e in exits:
        present |= set(np.unique(e).tolist())
    present = [c for c in sorted(present) if 0 <= c < len(class_names) and c != ignore_label]
    masks = [np.asarray(m, dtype=bool) for m in masks or []]
    return vis.vstack([vis.title_strip(titles, w, TITLE_HEIGHT), body]
                      + _exit_rows(exits, colors, ignore_label, h, w)
                      + _mask_rows(masks, image, h, w)
                      + [vis.legend_strip(present, class_names, colors, 3 * w)])


def _load_rgb(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def write_panels(cfg, model: torch.nn.Module, dataset_name: str, output_dir: str,
                 num_images: int) -> List[str]:
    """Run ``model`` on the first ``num_images`` of ``dataset_name`` and write
    ``output_dir/vis/<image_id>.png`` panels (image | ground truth | prediction, colourised with
    the metadata's ``stuff_colors``, ignore in black, titles on top and a legend below). For a
    model returning ``sem_seg_exits`` the prediction is the final ``sem_seg`` and the exits are
    drawn in extra rows, three per row; its ``exit_masks`` (H x W bool per masked segment,
    True = computed after that exit) add one row each (:func:`make_panel`).

    For a dynamic-routing model (a ``backbone`` with ``record_gates``) the gates are recorded
    while the panels are made: the picture of the routes the image took is drawn below its
    panels and the routes are written next to it as ``<panel>.routes.json``
    (``dl_lib.modeling.dynamic_routing.routes.save_routes``; ``MODEL.GATE.ROUTES_FILE`` forces them).

    Inputs are made by the test mapper (``SemSegDatasetMapper(cfg, is_train=False)``), exactly
    as in evaluation; the model must return ``sem_seg`` at the original (height, width). The
    panels show the original image and ground truth. Call it on the main process only.
    Returns the written paths.
    """
    dicts = DatasetCatalog.get(dataset_name)[: max(0, int(num_images))]
    meta = MetadataCatalog.get(dataset_name)
    names = meta.get("stuff_classes") or [str(i) for i in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)]
    colors = meta.get("stuff_colors")
    ignore = meta.get("ignore_label", cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
    out_dir = os.path.join(output_dir, "vis")
    os.makedirs(out_dir, exist_ok=True)
    from dl_lib.data.mapper import SemSegDatasetMapper

    mapper = SemSegDatasetMapper(cfg, is_train=False)

    paths = []
    backbone = getattr(model, "backbone", None)
    records_gates = hasattr(backbone, "record_gates")
    was_recording = records_gates and backbone.record_gates
    if records_gates:
        backbone.record_gates = True
    try:
        with inference_context(model), torch.no_grad():
            paths = _write_panels(model, mapper, dicts, names, colors, ignore, out_dir,
                                  getattr(backbone, "skip_threshold", 1e-4))
    finally:
        if records_gates:
            backbone.record_gates = was_recording
    logger.info(f"Wrote {len(paths)} panels to {out_dir}")
    return paths


def _write_panels(model, mapper, dicts, names, colors, ignore, out_dir, gate_threshold) -> List[str]:
    """The panels of ``dicts`` (see :func:`write_panels`), the model in eval mode, no grad."""
    from dl_lib.data.datasets.common import read_mask

    paths = []
    for i, d in enumerate(dicts):
        image = _load_rgb(d["file_name"])
        h, w = image.shape[:2]
        out = model([mapper(d)])[0]
        pred = out["sem_seg"].argmax(dim=0).cpu().numpy()
        exits = [e.argmax(dim=0).cpu().numpy() for e in out.get("sem_seg_exits") or []]
        masks = [m.cpu().numpy() if torch.is_tensor(m) else np.asarray(m)
                 for m in out.get("exit_masks") or []]
        for what, p in ([("sem_seg", pred)] + [(f"sem_seg_exits[{k}]", e)
                                              for k, e in enumerate(exits)]
                        + [(f"exit_masks[{k}]", m) for k, m in enumerate(masks)]):
            if p.shape != (h, w):
                raise ValueError(f"write_panels: model returned {what} of size {p.shape} for "
                                 f"an image of size {(h, w)}; it must resize to (height, width)")
        gt = (read_mask(d["sem_seg_file_name"]) if d.get("sem_seg_file_name")
              else np.full((h, w), ignore, dtype=np.int64))
        panel = make_panel(image, gt, pred, names, colors, ignore,
                           title=str(d.get("image_id", i)), exits=exits, masks=masks)
        stem = str(d.get("image_id", os.path.splitext(os.path.basename(d["file_name"]))[0]))
        path = os.path.join(out_dir, f"{i:04d}_{stem.replace(os.sep, '_')}.png")
        if out.get("gates"):  # a dynamic-routing model: the routes this image took
            from dl_lib.modeling.dynamic_routing.routes import draw_routes, save_routes

            flops = out.get("flops", {})
            gflops = (f"real {flops['real_gflops']:.3f} / corrected "
                      f"{flops['real_corrected_gflops']:.3f} GFLOPs;" if flops else "")
            panel = vis.vstack([panel, draw_routes(out["gates"], gate_threshold, title=gflops,
                                                   width=panel.shape[1])])
            save_routes(os.path.splitext(path)[0] + ".routes.json", out["gates"],
                        image_id=stem, flops=flops)
        with atomic_write(path, "wb") as f:  # never a half-written panel over an old one
            Image.fromarray(panel).save(f, format="PNG")
        paths.append(path)
    return paths

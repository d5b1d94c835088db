"""Cityscapes' official pixel-level evaluation (``cityscapesscripts``), for reporting numbers
that match the benchmark exactly: class mIoU, iIoU and category IoU.

Predictions (train ids 0..18) are mapped to label ids and written as single-channel uint8 PNGs at
ground-truth size into a temporary folder; the main process then runs
``evalPixelLevelSemanticLabeling.evaluateImgLists`` on explicit (prediction, ground truth) lists.
Single machine only: the temporary folder must be visible to every process.
"""
import copy
import io
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from contextlib import contextmanager, redirect_stdout

import numpy as np
import torch
from PIL import Image

from dl_lib.data.catalog import MetadataCatalog
from dl_lib.utils import comm

from .evaluator import DatasetEvaluator

__all__ = ["CityscapesSemSegEvaluator", "train_id_to_label_id"]

logger = logging.getLogger(__name__)


def train_id_to_label_id(pred: np.ndarray) -> np.ndarray:
    """H x W train ids (0..18) -> uint8 label ids; unknown train ids become 0 ("unlabeled")."""
    from cityscapesscripts.helpers.labels import trainId2label

    lut = np.zeros(256, dtype=np.uint8)
    for train_id, label in trainId2label.items():
        if 0 <= train_id < 255 and not label.ignoreInEval:
            lut[train_id] = label.id
    return lut[np.clip(pred, 0, 255).astype(np.int64)]


class _NumpyWithIn1d:
    """numpy as seen by the official script, plus ``in1d`` (removed in numpy 2.4; the script's
    iIoU code still calls it). Installed only inside :meth:`CityscapesSemSegEvaluator.evaluate`."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def in1d(ar1, ar2, assume_unique=False, invert=False):
        return np.isin(np.ravel(ar1), ar2, assume_unique=assume_unique, invert=invert)


@contextmanager
def _numpy_compat(module):
    if hasattr(np, "in1d"):
        yield
        return
    saved = module.np
    module.np = _NumpyWithIn1d()
    try:
        yield
    finally:
        module.np = saved


def _stem(file_name: str) -> str:
    """``.../frankfurt_000000_000294_leftImg8bit.png`` -> ``frankfurt_000000_000294``."""
    base = os.path.splitext(os.path.basename(file_name))[0]
    return base[: -len("_leftImg8bit")] if base.endswith("_leftImg8bit") else base


class CityscapesSemSegEvaluator(DatasetEvaluator):
    """Runs the official script; results under ``"cityscapes_sem_seg"``: ``mIoU`` (19 classes),
    ``iIoU`` (8 instance classes, needs ``*_gtFine_instanceIds.png``), ``mIoU_category``,
    ``iIoU_category`` and ``IoU-<class>``, all in percent.

    The label-id ground truth of an input is found by replacing ``labelTrainIds`` with
    ``labelIds`` in its ``sem_seg_file_name``, or else as
    ``<metadata.gt_dir>/<city>/<stem>_gtFine_labelIds.png``.
    """

    def __init__(self, dataset_name: str):
        self.dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        self._temp_dir = None
        self._pairs = []

    def reset(self):
        if comm.get_local_size() != comm.get_world_size():
            raise RuntimeError(
                "CityscapesSemSegEvaluator works on a single machine only (its temporary "
                f"prediction folder must be shared): local size {comm.get_local_size()} != world "
                f"size {comm.get_world_size()}. Use SemSegEvaluator (the confusion-matrix one, "
                "same mIoU) for multi-machine evaluation.")
        if self._temp_dir is not None and comm.is_main_process():
            shutil.rmtree(self._temp_dir, ignore_errors=True)
        temp_dir = tempfile.mkdtemp(prefix="cityscapes_eval_") if comm.is_main_process() else None
        # every process writes into the main process's folder
        self._temp_dir = comm.all_gather(temp_dir)[0]
        self._pairs = []

    def _gt_label_ids(self, inp: dict) -> str:
        candidates = []
        sem = inp.get("sem_seg_file_name")
        if sem and "labelTrainIds" in sem:
            candidates.append(sem.replace("labelTrainIds", "labelIds"))
        gt_dir = self._metadata.get("gt_dir")
        stem = _stem(inp["file_name"])
        if gt_dir:
            city = stem.split("_")[0]
            candidates.append(os.path.join(gt_dir, city, stem + "_gtFine_labelIds.png"))
        for c in candidates:
            if os.path.isfile(c):
                return c
        raise FileNotFoundError(
            f"CityscapesSemSegEvaluator: no *_gtFine_labelIds.png for {inp['file_name']!r} "
            f"(looked at {candidates}). The official evaluation needs label-id ground truth next to "
            "the labelTrainIds files, or metadata gt_dir pointing at gtFine/<split>.")

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            pred = out["sem_seg"].argmax(dim=0).to(torch.int64).cpu().numpy()
            gt_path = self._gt_label_ids(inp)
            path = os.path.join(self._temp_dir, _stem(inp["file_name"]) + "_pred.png")
            Image.fromarray(train_id_to_label_id(pred)).save(path)
            self._pairs.append((path, gt_path))

    def evaluate(self):
        comm.synchronize()
        gathered = comm.gather(self._pairs)
        if not comm.is_main_process():
            return None
        pairs = [p for g in gathered for p in g]
        if not pairs:
            logger.warning(f"CityscapesSemSegEvaluator on {self.dataset_name!r} got no images")
            return OrderedDict(cityscapes_sem_seg=OrderedDict())
        # imported lazily: the module reads CITYSCAPES_DATASET / CITYSCAPES_EXPORT_DIR at import
        import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs_eval

        args = copy.deepcopy(cs_eval.args)
        args.predictionPath = os.path.abspath(self._temp_dir)
        args.predictionWalk = None
        args.JSONOutput = False
        args.colorized = False
        args.bold = args.nocol = ""
        args.quiet = True
        args.evalInstLevelScore = all(
            os.path.isfile(gt.replace("labelIds", "instanceIds")) for _, gt in pairs)
        if not args.evalInstLevelScore:
            logger.warning("CityscapesSemSegEvaluator: *_gtFine_instanceIds.png missing; iIoU is NaN")
        preds, gts = [p for p, _ in pairs], [g for _, g in pairs]
        buf = io.StringIO()
        try:
            # the script prints progress even when quiet
            with redirect_stdout(buf), _numpy_compat(cs_eval):
                r = cs_eval.evaluateImgLists(preds, gts, args)
        except SystemExit as e:  # its printError() calls sys.exit
            raise RuntimeError("cityscapesscripts evaluation failed: "
                               f"{buf.getvalue().strip().splitlines()[-1:]}") from e
        finally:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
        res = OrderedDict()
        res["mIoU"] = 100.0 * r["averageScoreClasses"]
        res["iIoU"] = 100.0 * r["averageScoreInstClasses"]
        res["mIoU_category"] = 100.0 * r["averageScoreCategories"]
        res["iIoU_category"] = 100.0 * r["averageScoreInstCategories"]
        from cityscapesscripts.helpers.labels import name2label

        for name, score in r["classScores"].items():
            if not name2label[name].ignoreInEval:  # void labels are always NaN
                res[f"IoU-{name}"] = 100.0 * score
        logger.info(f"Cityscapes official evaluation on {self.dataset_name} ({len(pairs)} images): "
                    f"mIoU {res['mIoU']:.3f}, iIoU {res['iIoU']:.3f}, category mIoU "
                    f"{res['mIoU_category']:.3f}")
        return OrderedDict(cityscapes_sem_seg=res)

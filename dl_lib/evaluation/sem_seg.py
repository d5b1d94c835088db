"""Semantic segmentation metrics from a train-id confusion matrix (fast, distributed).

The matrix ``conf[gt, pred]`` is ``(K+1) x (K+1)``: ground-truth pixels equal to ``ignore_label``
go to row ``K`` and never count; predictions are argmaxes over the K classes. Scores follow the
Cityscapes / mmseg rule, so they agree with the official script on any subset of images:

- ``IoU_c = TP / (TP + FP + FN)`` with FP counted on valid (non-ignored) ground truth only;
- a class **predicted but absent from the ground truth scores IoU 0 and is averaged in**;
  a class absent from both is excluded (NaN);
- ``mACC`` averages per-class accuracy over classes present in the ground truth, ``pACC`` is
  pixel accuracy, ``fwIoU`` weights IoU by ground-truth frequency. All in percent.

(detectron2's SemSegEvaluator instead drops classes without ground truth from mIoU; on the full
Cityscapes val set the two agree.)
"""
import json
import logging
import math
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tabulate import tabulate

from dl_lib.analysis.costs import summarize_costs
from dl_lib.data.catalog import MetadataCatalog
from dl_lib.utils import comm
from dl_lib.utils.file_io import atomic_write

from .evaluator import DatasetEvaluator

__all__ = ["SemSegEvaluator", "confusion_matrix", "metrics_from_confusion"]

logger = logging.getLogger(__name__)


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int,
                     ignore_label: int = 255) -> np.ndarray:
    """``(K+1) x (K+1)`` int64 matrix ``conf[gt, pred]`` for one image.

    ``pred``/``gt``: H x W integer arrays of train ids (same shape). GT pixels equal to
    ``ignore_label`` land in row K. A GT value outside ``[0, K)`` that is not the ignore label is
    an error (the usual cause: labelIds given where labelTrainIds are expected).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}; the "
                         "model must return sem_seg at the original (height, width)")
    k = num_classes
    gt = gt.astype(np.int64, copy=True)
    valid = gt != ignore_label
    bad = valid & ((gt < 0) | (gt >= k))
    if bad.any():
        v = int(gt[bad][0])
        raise ValueError(f"ground-truth label {v} is >= num_classes {k} and is not the ignore "
                         f"label {ignore_label}; did you mean labelTrainIds (not labelIds)?")
    gt[~valid] = k
    pred = pred.astype(np.int64)
    if pred.size and (pred.min() < 0 or pred.max() >= k):
        raise ValueError(f"prediction holds class {int(pred.max())} outside [0, {k})")
    return np.bincount((k + 1) * gt.reshape(-1) + pred.reshape(-1),
                       minlength=(k + 1) ** 2).reshape(k + 1, k + 1)


def metrics_from_confusion(conf: np.ndarray, class_names: Sequence[str]) -> "OrderedDict[str, float]":
    """Scores (percent) from a ``(K+1) x (K+1)`` ``conf[gt, pred]`` matrix (last row = ignore).

    Returns ``mIoU, fwIoU, mACC, pACC`` then ``IoU-<class>`` and ``ACC-<class>`` for every class
    (NaN where the class is excluded: IoU when absent from GT and prediction, ACC when absent
    from GT).
    """
    k = conf.shape[0] - 1
    assert len(class_names) == k, (len(class_names), k)
    valid = conf[:k, :k].astype(np.float64)  # rows = valid GT, so FPs on ignore never count
    tp = np.diag(valid)
    pos_gt = valid.sum(1)
    pos_pred = valid.sum(0)
    union = pos_gt + pos_pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(pos_gt > 0, tp / pos_gt, np.nan)
    total = pos_gt.sum()
    res = OrderedDict()
    res["mIoU"] = 100 * float(np.nanmean(iou)) if np.any(union > 0) else float("nan")
    res["fwIoU"] = 100 * float(np.nansum(iou * pos_gt) / total) if total > 0 else float("nan")
    res["mACC"] = 100 * float(np.nanmean(acc)) if np.any(pos_gt > 0) else float("nan")
    res["pACC"] = 100 * float(tp.sum() / total) if total > 0 else float("nan")
    for i, name in enumerate(class_names):
        res[f"IoU-{name}"] = 100 * float(iou[i])
    for i, name in enumerate(class_names):
        res[f"ACC-{name}"] = 100 * float(acc[i])
    return res


def _read_gt(path: str) -> np.ndarray:
    from dl_lib.data.datasets.common import read_mask

    return read_mask(path)


def _nan_to_none(d):
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


class SemSegEvaluator(DatasetEvaluator):
    """mIoU & co. over a confusion matrix, gathered across processes; also aggregates the
    per-image ``"flops"`` that input-dependent models return (mean/min/max per name).

    Args:
        dataset_name: a name in ``MetadataCatalog``; ``stuff_classes`` and ``ignore_label`` are
            read from it unless given.
        distributed: gather the matrices (and costs) of every process to the main one.
        output_dir: where ``sem_seg_evaluation.json`` is written (None: not written).
        num_classes, ignore_label: override the metadata (for datasets without ``stuff_classes``).

    Ground truth per image: the input's ``sem_seg`` if it has the output's size, else
    ``sem_seg_file_name`` read as a train-id PNG. Predictions: argmax of ``output["sem_seg"]``
    (K x height x width logits).

    Several predictions per image: an output may also carry ``"sem_seg_exits"``, a list of
    K x height x width logits (anytime exits, a model's branches; cheapest first). Each exit gets
    its own confusion matrix, reported as ``results["sem_seg"]["exit{k}"]`` (flattened:
    ``sem_seg/exit{k}/mIoU``), next to the final ``sem_seg`` scores. Outputs without exits are
    fine (exit scores cover the images that have them); a number of exits that differs between
    images is an error naming the image.
    """

    def __init__(self, dataset_name: str, distributed: bool = True,
                 output_dir: Optional[str] = None, num_classes: Optional[int] = None,
                 ignore_label: Optional[int] = None):
        self.dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        meta = MetadataCatalog.get(dataset_name)
        classes = meta.get("stuff_classes")
        if num_classes is None:
            if classes is None:
                raise ValueError(
                    f"SemSegEvaluator: dataset {dataset_name!r} has no stuff_classes in its "
                    "metadata; set MetadataCatalog.get(name).stuff_classes or pass num_classes=")
            num_classes = len(classes)
        if classes is None or len(classes) != num_classes:
            if classes is not None:
                logger.warning(f"SemSegEvaluator: num_classes={num_classes} but {dataset_name!r} "
                               f"has {len(classes)} stuff_classes; naming classes by index")
            classes = [str(i) for i in range(num_classes)]
        self._class_names = list(classes)
        self._num_classes = int(num_classes)
        self._ignore_label = int(ignore_label if ignore_label is not None
                                 else meta.get("ignore_label", 255))
        self.reset()

    def reset(self):
        k = self._num_classes
        self._conf = np.zeros((k + 1, k + 1), dtype=np.int64)
        # one matrix per exit, created by the first output that has "sem_seg_exits"
        self._exit_confs: Optional[List[np.ndarray]] = None
        self._exit_source: Optional[str] = None  # the image that fixed the number of exits
        self._num_exit_images = 0
        self._costs: List = []
        self._num_images = 0

    def _ground_truth(self, inp: dict, shape) -> np.ndarray:
        sem_seg = inp.get("sem_seg")
        if sem_seg is not None and tuple(sem_seg.shape[-2:]) == tuple(shape):
            return sem_seg.cpu().numpy() if isinstance(sem_seg, torch.Tensor) else np.asarray(sem_seg)
        path = inp.get("sem_seg_file_name")
        if path is None:
            raise KeyError(
                f"SemSegEvaluator: input {inp.get('file_name', inp.get('image_id'))!r} has neither "
                f"'sem_seg' of size {tuple(shape)} nor 'sem_seg_file_name'; cannot find its "
                "ground truth")
        return _read_gt(path)

    def _prediction(self, logits: torch.Tensor, inp: dict, gt: Optional[np.ndarray],
                    what: str = "sem_seg"):
        """Argmax of K x H x W ``logits`` and the image's ground truth (read once per image)."""
        pred = logits.argmax(dim=0).to(torch.int64).cpu().numpy()
        if gt is None:
            gt = self._ground_truth(inp, pred.shape)
        if gt.shape != pred.shape:
            raise ValueError(
                f"SemSegEvaluator: {what} for {inp.get('file_name')!r} is {pred.shape} but "
                f"its ground truth is {gt.shape}; the model must resize it to the input's "
                "(height, width) before returning it")
        return pred, gt

    def _process_exits(self, exits, inp: dict, gt: np.ndarray) -> None:
        name = inp.get("file_name", inp.get("image_id"))
        if not isinstance(exits, (list, tuple)) or len(exits) == 0:
            raise TypeError(f"SemSegEvaluator: 'sem_seg_exits' of {name!r} must be a non-empty "
                            f"list of K x H x W logits, got {type(exits).__name__}")
        if self._exit_confs is None:
            k = self._num_classes
            self._exit_confs = [np.zeros((k + 1, k + 1), dtype=np.int64) for _ in exits]
            self._exit_source = name
        if len(exits) != len(self._exit_confs):
            raise ValueError(
                f"SemSegEvaluator: image {name!r} has {len(exits)} exits in 'sem_seg_exits' but "
                f"{self._exit_source!r} had {len(self._exit_confs)}; a model must return the same "
                "number of exits for every image")
        for e, logits in enumerate(exits):
            pred, _ = self._prediction(logits, inp, gt, what=f"sem_seg_exits[{e}]")
            self._exit_confs[e] += confusion_matrix(pred, gt, self._num_classes,
                                                    self._ignore_label)
        self._num_exit_images += 1

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            pred, gt = self._prediction(out["sem_seg"], inp, None)
            self._conf += confusion_matrix(pred, gt, self._num_classes, self._ignore_label)
            if out.get("sem_seg_exits") is not None:
                self._process_exits(out["sem_seg_exits"], inp, gt)
            if "flops" in out:
                self._costs.append(out["flops"])
            self._num_images += 1

    def evaluate(self):
        conf, costs, n = self._conf, self._costs, self._num_images
        exit_confs, n_exit = self._exit_confs, self._num_exit_images
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            gathered = comm.gather((conf, costs, n, exit_confs, n_exit, self._exit_source))
            if not comm.is_main_process():
                return None
            conf = sum(g[0] for g in gathered)
            costs = [c for g in gathered for c in g[1]]
            n = sum(g[2] for g in gathered)
            exit_confs = _sum_exit_confs([(g[3], g[5]) for g in gathered])
            n_exit = sum(g[4] for g in gathered)
        if n == 0:
            logger.warning(f"SemSegEvaluator on {self.dataset_name!r} received no images")
            return OrderedDict(sem_seg=OrderedDict())
        res = metrics_from_confusion(conf, self._class_names)
        for name, stats in summarize_costs(costs).items():
            for stat in ("mean", "min", "max"):
                res[f"{stat}_{name}"] = stats[stat]
        exit_res = [metrics_from_confusion(c, self._class_names) for c in exit_confs or []]
        self._log_table(res, n)
        for e, r in enumerate(exit_res):
            self._log_table(r, n_exit, what=f"exit {e} of {len(exit_res)}")
        if exit_res:
            self._log_exit_summary(exit_res, res)
            if n_exit != n:
                logger.warning(f"SemSegEvaluator: only {n_exit} of {n} images had "
                               "'sem_seg_exits'; the exit scores cover those images only")
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            path = os.path.join(self._output_dir, "sem_seg_evaluation.json")
            record = {"dataset": self.dataset_name, "num_images": n,
                      "sem_seg": _nan_to_none(res), "confusion_matrix": conf.tolist()}
            if exit_res:
                record["num_exit_images"] = n_exit
                record["exits"] = [{"sem_seg": _nan_to_none(r), "confusion_matrix": c.tolist()}
                                   for r, c in zip(exit_res, exit_confs)]
            with atomic_write(path) as f:  # a crash mid-write keeps the previous file
                json.dump(record, f, indent=2)
            logger.info(f"Saved evaluation results to {path}")
        for e, r in enumerate(exit_res):
            res[f"exit{e}"] = r
        return OrderedDict(sem_seg=res)

    def _log_table(self, res: Dict[str, float], n: int, what: str = "") -> None:
        rows = [[name, res[f"IoU-{name}"], res[f"ACC-{name}"]] for name in self._class_names]
        per_class = tabulate(rows, headers=["class", "IoU", "Acc"], tablefmt="pipe",
                             floatfmt=".2f", missingval="nan")
        summary_keys = [k for k in res if not k.startswith(("IoU-", "ACC-"))]
        summary = tabulate([[res[k] for k in summary_keys]], headers=summary_keys,
                           tablefmt="pipe", floatfmt=".3f")
        what = f", {what}" if what else ""
        logger.info(f"Semantic segmentation on {self.dataset_name} ({n} images{what}):\n"
                    f"{per_class}\n{summary}")

    def _log_exit_summary(self, exit_res: List[Dict[str, float]], final: Dict[str, float]) -> None:
        keys = ("mIoU", "mACC", "pACC")
        rows = [[f"exit{e}"] + [r[k] for k in keys] for e, r in enumerate(exit_res)]
        rows.append(["final"] + [final[k] for k in keys])
        table = tabulate(rows, headers=("exit",) + keys, tablefmt="pipe", floatfmt=".3f")
        logger.info(f"Per-exit scores on {self.dataset_name}:\n{table}")


def _sum_exit_confs(per_rank) -> Optional[List[np.ndarray]]:
    """Sum the per-exit matrices of every process; ``per_rank``: (matrices or None, the image
    that fixed their number). Processes must agree on the number of exits."""
    total, source = None, None
    for confs, name in per_rank:
        if confs is None:
            continue
        if total is None:
            total, source = [c.copy() for c in confs], name
        elif len(confs) != len(total):
            raise ValueError(f"SemSegEvaluator: image {name!r} has {len(confs)} exits but "
                             f"{source!r} (another process) had {len(total)}; a model must "
                             "return the same number of exits for every image")
        else:
            total = [a + b for a, b in zip(total, confs)]
    return total

"""Evaluation: the evaluator protocol, inference loop, semantic segmentation metrics (confusion
matrix, Cityscapes-rule mIoU), the official Cityscapes script, result panels; the per-exit
report and trade-off plot of multi-exit models are in ``dl_lib.evaluation.exits``."""
from .build import build_evaluator
from .cityscapes import CityscapesSemSegEvaluator
from .evaluator import DatasetEvaluator, DatasetEvaluators, inference_context, inference_on_dataset
from .sem_seg import SemSegEvaluator, confusion_matrix, metrics_from_confusion
from .visualize import make_panel, write_panels

__all__ = [
    "CityscapesSemSegEvaluator", "DatasetEvaluator", "DatasetEvaluators", "SemSegEvaluator",
    "build_evaluator", "confusion_matrix", "inference_context", "inference_on_dataset",
    "make_panel", "metrics_from_confusion", "write_panels",
]

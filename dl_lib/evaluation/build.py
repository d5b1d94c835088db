"""Pick the evaluator(s) of a dataset from its metadata's ``evaluator_type``."""
import logging
import os
from typing import Optional

from dl_lib.data.catalog import MetadataCatalog
from dl_lib.utils import comm

from .cityscapes import CityscapesSemSegEvaluator
from .evaluator import DatasetEvaluator, DatasetEvaluators
from .sem_seg import SemSegEvaluator

__all__ = ["build_evaluator"]

logger = logging.getLogger(__name__)


def build_evaluator(cfg, dataset_name: str, output_dir: Optional[str] = None) -> DatasetEvaluator:
    """The evaluator for ``dataset_name``:

    - ``"sem_seg"``: :class:`SemSegEvaluator` (confusion matrix, distributed);
    - ``"cityscapes_sem_seg"``: the same, plus the official :class:`CityscapesSemSegEvaluator`
      when ``cfg.TEST.CITYSCAPES_OFFICIAL_EVAL`` is on and the run is on one machine.

    ``output_dir`` (default ``cfg.OUTPUT_DIR/inference``) receives ``sem_seg_evaluation.json``.
    ``num_classes``/``ignore_label`` fall back to ``MODEL.SEM_SEG_HEAD`` when the metadata has
    no ``stuff_classes``/``ignore_label``.
    """
    if output_dir is None and cfg.OUTPUT_DIR:
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference")
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = meta.get("evaluator_type", "sem_seg")
    num_classes = None if meta.get("stuff_classes") else cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    ignore = None if meta.get("ignore_label") is not None else cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    if evaluator_type not in ("sem_seg", "cityscapes_sem_seg"):
        raise ValueError(
            f"build_evaluator: dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; "
            "known types are 'sem_seg' and 'cityscapes_sem_seg'. Set "
            "MetadataCatalog.get(name).evaluator_type to one of them.")
    evaluators = [SemSegEvaluator(dataset_name, distributed=True, output_dir=output_dir,
                                  num_classes=num_classes, ignore_label=ignore)]
    if evaluator_type == "cityscapes_sem_seg" and cfg.TEST.get("CITYSCAPES_OFFICIAL_EVAL", False):
        if comm.get_local_size() == comm.get_world_size():
            evaluators.append(CityscapesSemSegEvaluator(dataset_name))
        else:
            logger.warning("TEST.CITYSCAPES_OFFICIAL_EVAL is on but the run spans several machines; "
                           "the official evaluator needs one machine and is skipped (the "
                           "confusion-matrix mIoU is the same number)")
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)

"""``ACoSPTrainer``: the pruning trainer (``PruningTrainer``: temperature schedule, soft -> hard
conversion) with the original's augmentation (``INPUT.SEMSEG_AUG``) and ImageNet initialisation
of a masked backbone (``MODEL.PRETRAINED`` into ``X.0.weight`` of every masked conv ``X``: the
original loads the ImageNet weights before it attaches the masks) or of SegNet's encoder from
the BN-free torchvision ``vgg16``."""
import logging
from typing import Dict, List

import torch
from torch import nn

from dl_lib.data import SemSegDatasetMapper, build_train_loader
from dl_lib.data.transforms import (Augmentation, RandomCropPad, RandomFlip, RandomGaussianBlur,
                                    RandomRotate, RandomScale)
from dl_lib.modeling.pruning import channel_masks
from dl_lib.modeling.pruning.training import PruningTrainer

__all__ = ["ACoSPTrainer", "semseg_augmentations", "load_pretrained_masked"]

logger = logging.getLogger(__name__)


def semseg_augmentations(cfg) -> List[Augmentation]:
    """The original's training pipeline (reference 4): RandScale U[SCALE] -> RandRotate U[ROTATE]
    (p ROTATE_PROB; image padded with the mean, labels with ignore) -> Gaussian blur (p
    BLUR_PROB) -> horizontal flip (p 0.5, ``INPUT.RANDOM_FLIP``) -> random crop
    ``INPUT.CROP_PAD.SIZE`` padded with the mean / ignore."""
    a, ignore = cfg.INPUT.SEMSEG_AUG, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    mean = list(cfg.MODEL.PIXEL_MEAN)
    augs: List[Augmentation] = [RandomScale(*a.SCALE)]
    if a.ROTATE_PROB > 0:
        augs.append(RandomRotate(*a.ROTATE, prob=a.ROTATE_PROB, pad_value=mean,
                                 seg_pad_value=ignore))
    if a.BLUR_PROB > 0:
        augs.append(RandomGaussianBlur(a.BLUR_KERNEL, prob=a.BLUR_PROB))
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(RandomFlip(0.5, horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal"))
    augs.append(RandomCropPad(cfg.INPUT.CROP_PAD.SIZE, pad_value=mean, seg_pad_value=ignore))
    return augs


def load_pretrained_masked(model: nn.Module, path: str, min_fraction: float = 0.5):
    """``MODEL.PRETRAINED`` into ``model.backbone``, whose convs may carry channel masks: the
    file's ``X.weight`` / ``X.bias`` of a masked conv go to ``X.0.*``. Otherwise as
    ``load_pretrained_backbone`` (the backbone's converter, the report, an error below
    ``min_fraction``), except that a file without any BN tensors (VGG-16) is compared on the
    convs only."""
    from dl_lib.checkpoint.pretrained import (PretrainedWeightsError, _compare, _table,
                                              read_state_dict)

    backbone = model.backbone
    sd = read_state_dict(path)
    convert = getattr(type(backbone), "convert_pretrained", None)
    if convert is not None:
        sd = convert(sd)
    masked = {m.conv_path[len("backbone."):] for m in channel_masks(model).values()
              if m.conv_path.startswith("backbone.")}
    renamed: Dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        conv, _, leaf = key.rpartition(".")
        renamed[f"{conv}.0.{leaf}" if conv in masked and leaf in ("weight", "bias") else key] = value
    model_sd = backbone.state_dict()

    def is_mask_tensor(key: str) -> bool:  # X.1.{weight,temperature,mask} of a masked conv X
        parts = key.rsplit(".", 2)
        return len(parts) == 3 and parts[1] == "1" and parts[0] in masked

    counted = {k: v for k, v in model_sd.items() if not is_mask_tensor(k)}
    norms = tuple(f"{n}." for n, m in backbone.named_modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm))
    if not any(k.startswith(norms) for k in renamed):
        # A network without BN (torchvision's vgg16 for SegNet): only the convs are compared;
        # the BNs keep their initialisation, as the original's copy of the VGG weights.
        counted = {k: v for k, v in counted.items() if not k.startswith(norms)}
    report = _compare(counted, renamed, path)
    if report.fraction < min_fraction:
        raise PretrainedWeightsError(
            f"MODEL.PRETRAINED {path} does not fit the masked backbone: {report.summary()} "
            f"(first unmatched: {', '.join(report.missing[:5]) or 'none'}; first unexpected: "
            f"{', '.join(report.unexpected[:5]) or 'none'})")
    loadable = {k: renamed[k] for k in report.matched}
    loadable.update({k: renamed[k] for k in model_sd
                     if k.endswith("num_batches_tracked") and k in renamed})
    backbone.load_state_dict(loadable, strict=False)
    logger.info(f"Loaded MODEL.PRETRAINED {path} into the masked backbone: "
                f"{report.summary()}\n{_table(report)}")
    return report


class ACoSPTrainer(PruningTrainer):
    """``PruningTrainer`` + ``INPUT.SEMSEG_AUG`` + ImageNet weights into masked convs."""

    @classmethod
    def build_train_loader(cls, cfg):
        if not cfg.INPUT.SEMSEG_AUG.ENABLED:
            return super().build_train_loader(cfg)
        return build_train_loader(cfg, mapper=SemSegDatasetMapper(
            cfg, True, augmentations=semseg_augmentations(cfg)))

    def resume_or_load(self, resume: bool = True) -> None:
        model = getattr(self.model, "module", self.model)
        pretrained = self.cfg.MODEL.PRETRAINED
        resuming = resume and self.checkpointer.has_checkpoint()
        if not pretrained or resuming:
            return super().resume_or_load(resume)
        load_pretrained_masked(model, pretrained)
        was_frozen = self.cfg.is_frozen()
        self.cfg.defrost()
        self.cfg.MODEL.PRETRAINED = ""  # loaded above (masked names, BN-free VGG files)
        try:
            super().resume_or_load(resume)
        finally:
            self.cfg.MODEL.PRETRAINED = pretrained
            if was_frozen:
                self.cfg.freeze()

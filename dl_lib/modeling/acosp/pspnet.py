"""PSPNet of the ACoSP / hszhao-semseg lineage (reference ``acosp.md`` section 1.1) on the
library's deep-stem ResNet dilated to output stride 8.

Backbone: ``dl_lib.modeling.backbone.ResNet`` with ``DEEP_STEM`` (3x3 convs 3->64->64->128,
``STEM_WIDTH 128``), ``OUTPUT_STRIDE 8``, torchvision Bottlenecks (stride on the 3x3). The
original dilates *every* ``conv2`` of ``layer3`` by 2 and of ``layer4`` by 4 (its first blocks
too), where the library's DeepLab convention keeps the previous dilation in a stage's first
block; :func:`semseg_dilation` applies the original's. Head (``head.*``): the pyramid pooling
module ``ppm.features.{i}`` = AdaptiveAvgPool(bin) -> 1x1 conv -> BN -> ReLU, upsampled
(bilinear, ``align_corners=True``) and concatenated with res5; ``cls`` = 3x3 conv -> BN -> ReLU
-> Dropout2d -> 1x1 classifier (unprunable); the training-only ``aux`` head on res4 (layer3), the
same without the PPM, its loss weighted by ``MODEL.ACOSP.AUX_WEIGHT`` (0.4). Logits are upsampled
to the input size with ``align_corners=True`` as the original (``output_stride`` 1).

Parameters with 19 classes: 49,080,038 with the aux head, 46,715,347 without (the original's).
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv_resnet

from dl_lib.modeling.backbone.resnet import ResNet

from ..meta_arch import SemanticSegmentor
from ..registry import META_ARCH_REGISTRY
from .common import apply_pruning, mark_unprunable, pruning_arch

__all__ = ["PPM", "PSPHead", "ACoSPPSPNet", "backbone_config", "semseg_dilation",
           "pspnet50", "pspnet101", "pspnet18"]

# MODEL.BACKBONE of the original's deep-base ResNets (from ImageNet ``resnet50_v2.pth``).
_BACKBONES = {
    "resnet50": dict(NAME="resnet50", DEEP_STEM=True, STEM_WIDTH=128, OUTPUT_STRIDE=8,
                     OUT_FEATURES=["res4", "res5"], NORM="BN", FREEZE_AT=0),
    "resnet101": dict(NAME="resnet101", DEEP_STEM=True, STEM_WIDTH=128, OUTPUT_STRIDE=8,
                      OUT_FEATURES=["res4", "res5"], NORM="BN", FREEZE_AT=0),
    # BasicBlock ResNet-18 with the same deep stem: the small CPU variant (not in the original).
    "resnet18": dict(NAME="resnet18", DEEP_STEM=True, STEM_WIDTH=128, OUTPUT_STRIDE=8,
                     OUT_FEATURES=["res4", "res5"], NORM="BN", FREEZE_AT=0),
}


def backbone_config(name: str = "resnet50") -> dict:
    """``MODEL.BACKBONE`` values of the PSPNet backbone ``name`` (resnet50 / resnet101 / resnet18)."""
    if name not in _BACKBONES:
        raise KeyError(f"PSPNet backbone {name!r}: choose one of {sorted(_BACKBONES)}")
    return dict(_BACKBONES[name])


def semseg_dilation(backbone: ResNet) -> None:
    """The original's dilation surgery on an output-stride-8 Bottleneck ResNet, in place: every
    ``conv2`` of ``layer3`` dilation/padding 2, of ``layer4`` 4 (strides are already 1), and each
    residual branch's ``bn3`` back to gamma = 1 (the original's init; the library zero-inits it).
    BasicBlock ResNets (the small variant) keep the library's convention."""
    for stage, d in (("layer3", 2), ("layer4", 4)):
        for block in getattr(backbone, stage, ()):
            if isinstance(block, tv_resnet.Bottleneck):
                block.conv2.dilation, block.conv2.padding = (d, d), (d, d)
    for m in backbone.modules():
        if isinstance(m, tv_resnet.Bottleneck) and isinstance(m.bn3, nn.BatchNorm2d):
            nn.init.ones_(m.bn3.weight)


def _upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class PPM(nn.Module):
    """Pyramid pooling: N x C x h x w -> N x (C + len(bins) * channels) x h x w. Keys
    ``features.{i}.{1,2}`` (conv, BN) as the original."""

    def __init__(self, in_channels: int, channels: int, bins: Sequence[int]):
        super().__init__()
        self.features = nn.ModuleList(nn.Sequential(
            nn.AdaptiveAvgPool2d(int(b)), nn.Conv2d(in_channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True)) for b in bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [_upsample(f(x), size) for f in self.features], 1)


def _classifier(in_channels: int, channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """3x3 conv -> BN -> ReLU -> Dropout2d -> 1x1 classifier (keys 0, 1, 4; 4 unprunable)."""
    seq = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                        nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Dropout2d(dropout),
                        nn.Conv2d(channels, num_classes, 1))
    mark_unprunable(seq[4])
    return seq


class PSPHead(nn.Module):
    """PPM + ``cls`` on res5, ``aux`` on res4 (None without the auxiliary head).

    ``forward(res5)`` -> N x K x h x w logits at the backbone's stride; ``auxiliary(res4)`` the
    aux logits."""

    def __init__(self, in_channels: int, aux_in_channels: int, num_classes: int,
                 bins: Sequence[int] = (1, 2, 3, 6), ppm_channels: int = 0,
                 channels: int = 512, aux_channels: int = 256, dropout: float = 0.1,
                 with_aux: bool = True):
        super().__init__()
        bins = [int(b) for b in bins]
        if not bins:
            raise ValueError("MODEL.ACOSP.PPM_BINS must not be empty")
        ppm_channels = ppm_channels or in_channels // len(bins)
        self.ppm = PPM(in_channels, ppm_channels, bins)
        self.cls = _classifier(in_channels + len(bins) * ppm_channels, channels, num_classes,
                               dropout)
        self.aux = (_classifier(aux_in_channels, aux_channels, num_classes, dropout)
                    if with_aux else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.ppm(x))

    def auxiliary(self, x: torch.Tensor) -> torch.Tensor:
        return self.aux(x)


@META_ARCH_REGISTRY.register()
class ACoSPPSPNet(SemanticSegmentor):
    """PSPNet (see the module doc) as a segmentor.

    Args:
        backbone: ResNet with ``res4`` and ``res5`` outputs.
        head: :class:`PSPHead`.
        aux_weight: weight of the auxiliary cross-entropy (training, when ``head.aux`` exists).
        head_lr_multiplier: learning-rate factor of every parameter outside the backbone (10).
        pruning: the ``MODEL.PRUNING`` node, applied last (``prepare_model``); None: dense.
        Others as :class:`SemanticSegmentor` (``size_divisibility`` 1: no padding; the
        original takes any ``8k+1`` size as it is).

    Training returns ``loss_sem_seg`` and ``loss_aux`` (already times ``aux_weight``); eval as
    the contract. ``forward_logits`` (what ``compress`` traces) never runs the aux head.
    """

    def __init__(self, *, backbone: nn.Module, head: PSPHead, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], ignore_value: int = 255, size_divisibility: int = 1,
                 aux_weight: float = 0.4, head_lr_multiplier: float = 10.0, pruning=None):
        super().__init__(backbone=backbone, head=head, pixel_mean=pixel_mean,
                         pixel_std=pixel_std, ignore_value=ignore_value,
                         size_divisibility=size_divisibility)
        self.aux_weight = float(aux_weight)
        self.head_lr_multiplier = float(head_lr_multiplier)
        apply_pruning(self, pruning)

    @classmethod
    def from_config(cls, cfg) -> dict:
        from ..build import build_backbone

        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [f for f in ("res4", "res5") if f not in shapes]
        if missing:
            raise ValueError(f"ACoSPPSPNet needs MODEL.BACKBONE.OUT_FEATURES with res4 and res5 "
                             f"(missing {missing}); use dl_lib.modeling.acosp.backbone_config()")
        if isinstance(backbone, ResNet) and cfg.MODEL.BACKBONE.OUTPUT_STRIDE == 8:
            semseg_dilation(backbone)
        a = cfg.MODEL.ACOSP
        head = PSPHead(shapes["res5"].channels, shapes["res4"].channels,
                       cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, bins=a.PPM_BINS,
                       ppm_channels=a.PPM_CHANNELS, channels=a.HEAD_CHANNELS,
                       aux_channels=a.AUX_CHANNELS, dropout=a.DROPOUT,
                       with_aux=a.AUX_WEIGHT > 0)
        return dict(backbone=backbone, head=head, pixel_mean=cfg.MODEL.PIXEL_MEAN,
                    pixel_std=cfg.MODEL.PIXEL_STD,
                    ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                    aux_weight=a.AUX_WEIGHT, head_lr_multiplier=a.HEAD_LR_MULTIPLIER,
                    pruning=cfg.MODEL.PRUNING if "PRUNING" in cfg.MODEL else None)

    @property
    def output_stride(self) -> int:
        return 1

    def param_lr_multiplier(self, name: str) -> float:
        """1 in the backbone (the original's layer0..4), ``head_lr_multiplier`` in ppm/cls/aux."""
        return 1.0 if name.startswith("backbone.") else self.head_lr_multiplier

    def architecture(self) -> dict:
        return pruning_arch(self)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised N x 3 x H x W -> N x K x H x W logits (``align_corners=True`` upsampling)."""
        return _upsample(self.head(self.backbone(x)["res5"]), x.shape[-2:])

    def compression_forward(self, x: torch.Tensor):
        """What ``dl_lib.modeling.pruning.compress`` traces: every output, the training-only aux
        head included, so that it is compressed with the trunk (its input channels follow
        res4's) and the compressed network still trains. N x 3 x H x W -> (logits, aux logits)
        at the backbone's stride (logits alone without the aux head)."""
        features = self.backbone(x)
        logits = self.head(features["res5"])
        if self.head.aux is None:
            return logits
        return logits, self.head.auxiliary(features["res4"])

    def forward(self, batched_inputs: List[dict]):
        if not self.training or self.head.aux is None or not self.aux_weight:
            return super().forward(batched_inputs)
        images, _ = self.preprocess_images(batched_inputs)
        targets = self.preprocess_targets(batched_inputs, images.shape[-2:])
        features = self.backbone(images)
        size = images.shape[-2:]
        main = _upsample(self.head(features["res5"]), size)
        aux = _upsample(self.head.auxiliary(features["res4"]), size)
        losses = self.losses(main, targets)
        losses["loss_aux"] = self.aux_weight * F.cross_entropy(
            aux, targets, ignore_index=self.ignore_value)
        return losses


def _pspnet(depth: str, num_classes: int, aux: bool, **kwargs) -> ACoSPPSPNet:
    b = _BACKBONES[depth]
    backbone = ResNet(depth, out_features=b["OUT_FEATURES"], deep_stem=True,
                      output_stride=8, stem_width=b["STEM_WIDTH"])
    semseg_dilation(backbone)
    shapes = backbone.output_shape()
    head = PSPHead(shapes["res5"].channels, shapes["res4"].channels, num_classes, with_aux=aux)
    return ACoSPPSPNet(backbone=backbone, head=head, pixel_mean=[123.675, 116.28, 103.53],
                       pixel_std=[58.395, 57.12, 57.375], aux_weight=0.4 if aux else 0.0,
                       **kwargs)


def pspnet50(num_classes: int = 19, aux: bool = True, **kwargs) -> ACoSPPSPNet:
    """The original's PSPNet-50 (49,080,038 parameters with 19 classes and aux)."""
    return _pspnet("resnet50", num_classes, aux, **kwargs)


def pspnet101(num_classes: int = 19, aux: bool = True, **kwargs) -> ACoSPPSPNet:
    """PSPNet-101 (semseg's layout; the ACoSP repository references but lacks it)."""
    return _pspnet("resnet101", num_classes, aux, **kwargs)


def pspnet18(num_classes: int = 19, aux: bool = True, **kwargs) -> ACoSPPSPNet:
    """PSPNet on the deep-stem ResNet-18 (not in the original): a small variant."""
    return _pspnet("resnet18", num_classes, aux, **kwargs)

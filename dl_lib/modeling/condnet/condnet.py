"""CondNet (Yu et al., IEEE SPL 2021; reference ``condnet.md``): segmentation heads whose final
classifier is the :class:`~.conditional_classifier.ConditionalClassifier`, on a dilated
ResNet-V1c-D8 (the library's ResNet, :func:`backbone_config`).

Hosts (``MODEL.CONDNET.HEAD``), all ending in the conditional (or, for the baseline, a plain 1×1)
classifier:

- ``sep_aspp`` (:class:`CondSepASPPHead`, DeepLabV3+, the shipped configs): image pool + 1×1 +
  depthwise-separable dilated 3×3 branches on res5 -> 3×3 bottleneck -> upsampled to stride 4,
  concatenated with the 1×1-projected res2 (48 ch) -> two depthwise-separable 3×3 convs; stride 4.
- ``aspp`` (:class:`CondSepASPPHead` with ``separable=False`` and no low-level branch): plain
  dilated 3×3 ASPP branches -> 3×3 bottleneck; stride 8.
- ``fcn`` (:class:`CondFCNHead`): ``num_convs`` 3×3 convs (+ the input concatenated and fused by
  a 3×3 conv); stride 8.

The auxiliary :class:`FCNHead` (one 3×3 conv on res4, Dropout2d(0.1), 1×1 classifier) is trained
with 0.4 × cross-entropy and not run in eval. Module names follow mmseg's with the library's
``Conv2d`` (``conv.weight`` -> ``weight``, ``bn`` -> ``norm``; see ``convert.py``).

Training losses (:class:`CondNet`): ``loss_sem_seg`` = CE(conditional logits↑) (or mmseg's OHEM
CE), ``loss_guidance`` = 0.2 × mmseg Dice(guidance logits, labels↓ nearest), ``loss_aux`` = 0.4 ×
CE(aux logits↑); ↑ = bilinear to the label size (``align_corners=False``, as mmseg).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dl_lib.layers import Conv2d, get_norm

from ..meta_arch.semantic_segmentor import SemanticSegmentor, resize_logits
from ..registry import META_ARCH_REGISTRY
from .conditional_classifier import ConditionalClassifier
from .losses import dice_loss, ohem_cross_entropy

__all__ = ["VARIANTS", "backbone_config", "ConvNormAct", "DepthwiseSeparableConv",
           "PlainClassifier", "CondSepASPPHead", "CondFCNHead", "FCNHead", "CondNet", "build_classifier"]

# mmseg's ResNetV1c-D8: deep stem 3->32->32->64, res4 / res5 dilated 2 / 4 (first block 1 / 2).
VARIANTS = {
    depth: dict(NAME=f"resnet{depth}", DEEP_STEM=True, STEM_WIDTH=64, WIDTH=64, OUTPUT_STRIDE=8,
                STAGE_DILATIONS=[1, 1, 1, 1], OUT_FEATURES=["res2", "res3", "res4", "res5"])
    for depth in (50, 101)
}


def backbone_config(depth: int = 50) -> dict:
    """``MODEL.BACKBONE`` delta of ResNetV1c-D8 (depth 50 or 101), for ``config_from_delta``."""
    if depth not in VARIANTS:
        raise KeyError(f"CondNet backbone: depth {depth!r} unknown; choose one of "
                       f"{sorted(VARIANTS)}")
    return {k: list(v) if isinstance(v, list) else v for k, v in VARIANTS[depth].items()}


def ConvNormAct(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1, groups: int = 1,
                norm: str = "BN") -> Conv2d:
    """mmcv's ConvModule: conv (bias only without norm) -> norm -> ReLU; "same" padding."""
    norm_layer = get_norm(norm, c_out)
    return Conv2d(c_in, c_out, kernel, padding=dilation * (kernel // 2), dilation=dilation,
                  groups=groups, bias=norm_layer is None, norm=norm_layer,
                  activation=nn.ReLU(inplace=True))


class DepthwiseSeparableConv(nn.Module):
    """Depthwise k×k (dilated) conv + norm + ReLU, then 1×1 pointwise + norm + ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, dilation: int = 1, norm: str = "BN"):
        super().__init__()
        self.depthwise_conv = ConvNormAct(c_in, c_in, kernel, dilation, groups=c_in, norm=norm)
        self.pointwise_conv = ConvNormAct(c_in, c_out, 1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class PlainClassifier(nn.Module):
    """The baseline: Dropout2d + global 1×1 classifier; ``(logits, None)`` like the conditional."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, None]:
        return self.conv_seg(self.dropout(x)), None


def build_classifier(kind: str, in_channels: int, num_classes: int, layout: str = "clean",
                     num_layers: int = 1, with_bias: bool = True,
                     dropout: float = 0.1) -> nn.Module:
    """``MODEL.CONDNET.CLASSIFIER``: ``"conditional"`` or ``"plain"``."""
    if kind == "conditional":
        return ConditionalClassifier(in_channels, num_classes, layout=layout, num_layers=num_layers,
                                     with_bias=with_bias, dropout=dropout)
    if kind == "plain":
        return PlainClassifier(in_channels, num_classes, dropout)
    raise ValueError(f"MODEL.CONDNET.CLASSIFIER {kind!r}: use 'conditional' or 'plain'")


class CondSepASPPHead(nn.Module):
    """(Separable) ASPP host with the conditional classifier.

    Args:
        in_channels: channels of the high-level feature (res5: 2048).
        channels: C of every branch and of the classifier (512).
        num_classes: K.
        dilations: ASPP branch dilations; 1 = a 1×1 branch.
        separable: depthwise-separable dilated branches (mmseg's DepthwiseSeparableASPPHead) or
            plain dilated 3×3 (ASPPHead).
        low_level_channels: channels of the stride-4 feature (res2: 256); 0 = no decoder (the
            ``aspp`` host, stride 8).
        low_level_proj: its 1×1 projection width (48).
        classifier: the final module, ``features -> (logits, guidance or None)``.

    ``forward(high N×in×h×w, low N×c1×4h×4w or None)`` -> (logits, guidance) at stride 4 (with
    the low-level branch) or at the input's stride.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int,
                 dilations: Sequence[int] = (1, 12, 24, 36), separable: bool = True,
                 low_level_channels: int = 256, low_level_proj: int = 48, norm: str = "BN",
                 classifier: Optional[nn.Module] = None):
        super().__init__()
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                        ConvNormAct(in_channels, channels, 1, norm=norm))
        branches = []
        for d in dilations:
            if d == 1:
                branches.append(ConvNormAct(in_channels, channels, 1, norm=norm))
            elif separable:
                branches.append(DepthwiseSeparableConv(in_channels, channels, 3, d, norm=norm))
            else:
                branches.append(ConvNormAct(in_channels, channels, 3, d, norm=norm))
        self.aspp_modules = nn.ModuleList(branches)
        self.bottleneck = ConvNormAct((len(dilations) + 1) * channels, channels, 3, norm=norm)
        self.has_low_level = low_level_channels > 0
        if self.has_low_level:
            self.c1_bottleneck = ConvNormAct(low_level_channels, low_level_proj, 1, norm=norm)
            self.sep_bottleneck = nn.Sequential(
                DepthwiseSeparableConv(channels + low_level_proj, channels, 3, norm=norm),
                DepthwiseSeparableConv(channels, channels, 3, norm=norm))
        if classifier is None:
            classifier = ConditionalClassifier(channels, num_classes)
        self.classifier = classifier

    def features(self, x: torch.Tensor, low: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The host's N×C features the classifier sees."""
        pooled = F.interpolate(self.image_pool(x), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)
        out = self.bottleneck(torch.cat([pooled] + [m(x) for m in self.aspp_modules], dim=1))
        if self.has_low_level:
            if low is None:
                raise ValueError("CondSepASPPHead: this host needs the stride-4 low-level feature")
            c1 = self.c1_bottleneck(low)
            out = F.interpolate(out, size=c1.shape[-2:], mode="bilinear", align_corners=False)
            out = self.sep_bottleneck(torch.cat([out, c1], dim=1))
        return out

    def forward(self, x: torch.Tensor, low: Optional[torch.Tensor] = None):
        return self.classifier(self.features(x, low))


class CondFCNHead(nn.Module):
    """mmseg's FCNHead layout with the conditional classifier: ``num_convs`` 3×3 convs
    (in -> C -> C ...), with ``concat_input`` the input concatenated and fused by a 3×3 conv
    (``conv_cat``). ``forward(x)`` -> (logits, guidance) at the input's stride."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_convs: int = 2,
                 concat_input: bool = True, norm: str = "BN",
                 classifier: Optional[nn.Module] = None):
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"CondFCNHead: MODEL.CONDNET.FCN_NUM_CONVS must be >= 1, "
                             f"got {num_convs}")
        self.convs = nn.Sequential(*[
            ConvNormAct(in_channels if i == 0 else channels, channels, 3, norm=norm)
            for i in range(num_convs)])
        self.conv_cat = (ConvNormAct(in_channels + channels, channels, 3, norm=norm)
                         if concat_input else None)
        if classifier is None:
            classifier = ConditionalClassifier(channels, num_classes)
        self.classifier = classifier

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return out

    def forward(self, x: torch.Tensor, low: Optional[torch.Tensor] = None):
        return self.classifier(self.features(x))


class FCNHead(nn.Module):
    """mmseg's auxiliary FCNHead (``num_convs=1, concat_input=False``): 3×3 conv + norm + ReLU,
    Dropout2d, 1×1 classifier with bias. N×in×h×w -> N×K×h×w."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, norm: str = "BN",
                 dropout: float = 0.1):
        super().__init__()
        self.convs = nn.Sequential(ConvNormAct(in_channels, channels, 3, norm=norm))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))


@META_ARCH_REGISTRY.register()
class CondNet(SemanticSegmentor):
    """CondNet segmentor: backbone -> host head (conditional classifier) [+ auxiliary FCN head].

    Args:
        backbone: Backbone with the host's features (``res2``/``res4``/``res5``).
        head: :class:`CondSepASPPHead` or :class:`CondFCNHead`.
        in_feature, low_level_feature, aux_in_feature: backbone feature names the heads read
            (``low_level_feature`` None for hosts without a decoder).
        aux_head: :class:`FCNHead` or None.
        head_stride: stride of the head's logits.
        seg_loss_weight, dice_loss_weight, dice_smooth, aux_loss_weight: loss weights (1, 0.2,
            1e-5, 0.4).
        ohem_thresh: None = plain CE; a float >= 0: mmseg's OHEM on the main CE (0 = top-loss).
        ohem_min_kept: OHEM's kept pixels per image.
        head_lr_multiplier: learning-rate factor outside the backbone.

    ``forward_logits(x)`` -> the conditional N×K×(H/s)×(W/s) logits (eval output ``sem_seg``);
    ``forward_outputs(x, with_aux)`` -> ``(logits, guidance or None, aux or None)``.
    """

    def __init__(self, *, backbone: nn.Module, head: nn.Module, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], ignore_value: int = 255, size_divisibility: int = 0,
                 in_feature: str = "res5", low_level_feature: Optional[str] = "res2",
                 aux_head: Optional[nn.Module] = None, aux_in_feature: str = "res4",
                 head_stride: int = 4, seg_loss_weight: float = 1.0, dice_loss_weight: float = 0.2,
                 dice_smooth: float = 1e-5, aux_loss_weight: float = 0.4,
                 ohem_thresh: Optional[float] = None, use_ohem: bool = False,
                 ohem_min_kept: int = 100000, head_lr_multiplier: float = 1.0):
        super().__init__(backbone=backbone, head=head, pixel_mean=pixel_mean, pixel_std=pixel_std,
                         ignore_value=ignore_value, size_divisibility=size_divisibility)
        self.in_feature = in_feature
        self.low_level_feature = low_level_feature
        self.aux_head = aux_head
        self.aux_in_feature = aux_in_feature
        self.head_stride = int(head_stride)
        self.seg_loss_weight = float(seg_loss_weight)
        self.dice_loss_weight = float(dice_loss_weight)
        self.dice_smooth = float(dice_smooth)
        self.aux_loss_weight = float(aux_loss_weight)
        self.use_ohem = bool(use_ohem)
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = int(ohem_min_kept)
        self.head_lr_multiplier = float(head_lr_multiplier)

    @classmethod
    def from_config(cls, cfg) -> dict:
        from ..build import build_backbone

        c = cfg.MODEL.CONDNET
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()

        def channels_of(name: str, key: str) -> int:
            if name not in shapes:
                raise ValueError(f"MODEL.CONDNET.{key} {name!r} is not a backbone output; "
                                 f"MODEL.BACKBONE.OUT_FEATURES gives {sorted(shapes)}")
            return shapes[name].channels

        classifier = build_classifier(c.CLASSIFIER, c.CHANNELS, num_classes, c.KERNEL_LAYOUT,
                                      c.NUM_COND_LAYERS, c.COND_LAYER_WITH_BIAS, c.DROPOUT)
        in_channels = channels_of(c.IN_FEATURE, "IN_FEATURE")
        low = None
        if c.HEAD == "sep_aspp":
            low = c.LOW_LEVEL_FEATURE
            head = CondSepASPPHead(in_channels, c.CHANNELS, num_classes, c.DILATIONS, True,
                                   channels_of(low, "LOW_LEVEL_FEATURE"), c.LOW_LEVEL_CHANNELS,
                                   c.NORM, classifier)
            stride = shapes[low].stride
        elif c.HEAD == "aspp":
            head = CondSepASPPHead(in_channels, c.CHANNELS, num_classes, c.DILATIONS, False, 0,
                                   norm=c.NORM, classifier=classifier)
            stride = shapes[c.IN_FEATURE].stride
        elif c.HEAD == "fcn":
            head = CondFCNHead(in_channels, c.CHANNELS, num_classes, c.FCN_NUM_CONVS,
                               c.FCN_CONCAT_INPUT, c.NORM, classifier)
            stride = shapes[c.IN_FEATURE].stride
        else:
            raise ValueError(f"MODEL.CONDNET.HEAD {c.HEAD!r}: use 'sep_aspp', 'aspp' or 'fcn'")
        aux = None
        if c.AUX_HEAD:
            aux = FCNHead(channels_of(c.AUX_IN_FEATURE, "AUX_IN_FEATURE"), c.AUX_CHANNELS,
                          num_classes, c.NORM)
        return dict(backbone=backbone, head=head, pixel_mean=cfg.MODEL.PIXEL_MEAN,
                    pixel_std=cfg.MODEL.PIXEL_STD, ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                    in_feature=c.IN_FEATURE, low_level_feature=low, aux_head=aux,
                    aux_in_feature=c.AUX_IN_FEATURE, head_stride=stride,
                    seg_loss_weight=c.SEG_LOSS_WEIGHT, dice_loss_weight=c.DICE_LOSS_WEIGHT,
                    dice_smooth=c.DICE_SMOOTH, aux_loss_weight=c.AUX_LOSS_WEIGHT,
                    use_ohem=c.OHEM_THRESH >= 0,
                    ohem_thresh=(c.OHEM_THRESH if c.OHEM_THRESH > 0 else None),
                    ohem_min_kept=c.OHEM_MIN_KEPT, head_lr_multiplier=c.HEAD_LR_MULTIPLIER)

    @property
    def output_stride(self) -> int:
        return self.head_stride

    def architecture(self) -> dict:
        """The kernel layout the generator's rows were trained in: a checkpoint read in the
        other layout would load (same shapes) but compute another classifier."""
        layout = getattr(self.head.classifier, "layout", None)
        return {"MODEL.CONDNET.KERNEL_LAYOUT": layout} if layout else {}

    def param_lr_multiplier(self, name: str) -> float:
        """1 in the backbone, ``head_lr_multiplier`` in both heads (mmcv's ``'head'`` key)."""
        return 1.0 if name.startswith("backbone.") else self.head_lr_multiplier

    def forward_outputs(self, x: torch.Tensor, with_aux: bool = False):
        """Normalised N×3×H×W -> (logits, guidance logits or None, aux logits or None)."""
        features = self.backbone(x)
        low = features[self.low_level_feature] if self.low_level_feature else None
        logits, guidance = self.head(features[self.in_feature], low)
        aux = None
        if with_aux and self.aux_head is not None:
            aux = self.aux_head(features[self.aux_in_feature])
        return logits, guidance, aux

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_outputs(x)[0]

    def losses(self, outputs, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """CE (or OHEM CE) on the logits, Dice on the guidance, CE on the aux logits."""
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs, None, None)
        logits, guidance, aux = outputs
        up = resize_logits(logits, targets.shape[-2:])
        if self.use_ohem:
            seg = ohem_cross_entropy(up, targets, self.ohem_thresh, self.ohem_min_kept,
                                     self.ignore_value)
        else:
            seg = F.cross_entropy(up, targets, ignore_index=self.ignore_value)
        out = {"loss_sem_seg": seg * self.seg_loss_weight}
        if guidance is not None and self.dice_loss_weight > 0:
            out["loss_guidance"] = self.dice_loss_weight * dice_loss(
                guidance, targets, ignore_index=self.ignore_value, smooth=self.dice_smooth)
        if aux is not None and self.aux_loss_weight > 0:
            out["loss_aux"] = self.aux_loss_weight * F.cross_entropy(
                resize_logits(aux, targets.shape[-2:]), targets, ignore_index=self.ignore_value)
        return out

    def forward(self, batched_inputs: List[dict]):
        """As :class:`SemanticSegmentor`; training also runs the auxiliary head."""
        if not self.training:
            return super().forward(batched_inputs)
        images, _ = self.preprocess_images(batched_inputs)
        targets = self.preprocess_targets(batched_inputs, images.shape[-2:])
        return self.losses(self.forward_outputs(images, with_aux=True), targets)

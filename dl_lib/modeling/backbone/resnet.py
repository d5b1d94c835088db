"""ResNet-18/34/50/101 backbones on torchvision's definitions, randomly initialised.

Additions over torchvision's classifier: named multi-scale outputs (``stem``, ``res2``..``res5``),
an optional deep stem (three 3×3 convs, ResNet-C), dilated last stages for output stride 8 or 16,
dilation of each stage's ``conv2`` with the strides kept (MFARANet's receptive-field enlargement:
``stage_dilations``), a configurable normalisation layer and frozen early stages (``FREEZE_AT``).
Parameter names of the plain-stem variant match torchvision's (``conv1``, ``bn1``,
``layer1``..``layer4``); ``ResNet.convert_pretrained`` maps the deep-stem ImageNet layouts
(semseg/PSPNet ``resnet50_v2``, SFNet/MFARANet ``resnet18-deep-inplane128``) to ours, for
``MODEL.PRETRAINED``. Those files have a 128-channel deep stem: build with
``MODEL.BACKBONE.STEM_WIDTH 128``. mmseg's ResNetV1c-D8 (CondNet, DeepLabV3+) is ``DEEP_STEM True``,
``STEM_WIDTH 64`` (3->32->32->64), ``OUTPUT_STRIDE 8`` (res4 / res5 dilated 2 / 4, first block
1 / 2: mmseg's ``contract_dilation``); the open-mmlab ``resnet{50,101}_v1c`` files
(``stem.{0,1,3,4,6,7}``, ``layerX.Y.convZ``) already have our names, and whole mmseg models'
``backbone.*`` load too.
"""
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from dl_lib.checkpoint.converters import rename_prefixes
from dl_lib.layers import FrozenBatchNorm2d, get_norm

from ..registry import BACKBONE_REGISTRY
from .backbone import Backbone

__all__ = ["ResNet", "build_resnet_backbone", "RESNET_DEPTHS"]

# name -> (torchvision block class, blocks per stage)
RESNET_DEPTHS = {
    "resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tv_resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3]),
    "resnet101": (tv_resnet.Bottleneck, [3, 4, 23, 3]),
}
_STAGES = ["res2", "res3", "res4", "res5"]

# Deep-stem ImageNet layouts: key prefix in the file -> ours. Our deep stem is the Sequential
# ``stem`` = conv, norm, relu, conv, norm, relu, conv, norm, relu (indices 0..8).
_DEEP_STEM_LAYOUTS = {
    # hszhao/semseg ``resnet50_v2.pth`` (PSPNet, ACoSP): top-level conv1..3 / bn1..3.
    "semseg": {"conv1.": "stem.0.", "bn1.": "stem.1.", "conv2.": "stem.3.", "bn2.": "stem.4.",
               "conv3.": "stem.6.", "bn3.": "stem.7."},
    # SFNet / MFARANet ``resnet18-deep-inplane128.pth``: Sequential conv1 (0, 1, 3, 4, 6) + bn1.
    "sfnet": {"conv1.0.": "stem.0.", "conv1.1.": "stem.1.", "conv1.3.": "stem.3.",
              "conv1.4.": "stem.4.", "conv1.6.": "stem.6.", "bn1.": "stem.7."},
    # Whole PSPNet models (semseg, ACoSP): layer0 = the stem Sequential with our indices.
    "pspnet_layer0": {"layer0.": "stem."},
    # Whole MFARANet models: layer0 = Sequential(conv1 Sequential, bn1, relu, maxpool).
    "mfaranet_layer0": {"layer0.0.": "stem.", "layer0.1.": "stem.7."},
    # Whole mmseg models (CondNet, DeepLabV3+ on ResNetV1c): the backbone under ``backbone.``.
    "mmseg_model": {"backbone.": ""},
}


def norm_factory(name: str) -> Callable[[int], nn.Module]:
    """``channels -> norm module`` for ``MODEL.BACKBONE.NORM`` via ``dl_lib.layers.get_norm``.

    ``""`` (no normalisation) gives ``nn.Identity`` so torchvision's blocks still build.
    """

    def make(channels: int) -> nn.Module:
        module = get_norm(name, channels)
        return nn.Identity() if module is None else module

    return make


def _dilate_stage(stage: nn.Sequential, dilation: int, first_dilation: int) -> None:
    """Turn a stride-2 stage into a stride-1 dilated one, in place.

    The first block keeps the previous stage's dilation (``first_dilation``) so its receptive
    field grows smoothly, later blocks use ``dilation`` (DeepLab / torchvision convention).
    """
    for i, block in enumerate(stage):
        d = first_dilation if i == 0 else dilation
        for module in block.modules():
            if isinstance(module, nn.Conv2d):
                if module.stride != (1, 1):
                    module.stride = (1, 1)
                if module.kernel_size == (3, 3):
                    module.dilation = (d, d)
                    module.padding = (d, d)
        block.stride = 1


def _dilate_conv2_keep_stride(stage: nn.Sequential, dilation: int) -> None:
    """Dilate (and pad by) ``dilation`` the ``conv2`` of every block of ``stage``, in place,
    keeping every stride: the stage's output size does not change, only its receptive field.

    ``conv2`` is the second 3×3 of a BasicBlock and the (strided) 3×3 of a Bottleneck. This is
    MFARANet's ``use_dilation`` (layer3 2, layer4 4 at output stride 32), unlike
    ``output_stride`` 8/16, which removes strides (DeepLab)."""
    for block in stage:
        block.conv2.dilation = (dilation, dilation)
        block.conv2.padding = (dilation, dilation)


def _make_stage(block, in_channels: int, planes: int, blocks: int, stride: int,
                norm_layer: Callable[[int], nn.Module]) -> nn.Sequential:
    """``blocks`` torchvision residual blocks; the first one changes stride/channels (1×1 shortcut)."""
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(tv_resnet.conv1x1(in_channels, out_channels, stride), norm_layer(out_channels))
    layers = [block(in_channels, planes, stride, downsample, norm_layer=norm_layer)]
    layers += [block(out_channels, planes, norm_layer=norm_layer) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def _init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """torchvision's initialisation: He (fan-out) convs, unit norms, optionally zeroed residuals."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            last = getattr(m, "bn3", None) if isinstance(m, tv_resnet.Bottleneck) else (
                getattr(m, "bn2", None) if isinstance(m, tv_resnet.BasicBlock) else None)
            if getattr(last, "weight", None) is not None:
                nn.init.zeros_(last.weight)


class ResNet(Backbone):
    """A torchvision ResNet trunk returning a dict of feature maps.

    Args:
        depth: one of ``RESNET_DEPTHS`` (``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"``).
        out_features: names among ``stem``, ``res2``..``res5``.
        norm_layer: ``channels -> nn.Module``.
        deep_stem: replace the 7×7 stem conv with three 3×3 convs (width/2, width/2, width channels).
        output_stride: 32 (plain), 16 (dilate res5) or 8 (dilate res4 and res5).
        freeze_at: 0 trains everything; k >= 1 freezes the stem and the first k-1 stages
            (no gradient, BatchNorm replaced by FrozenBatchNorm2d).
        width: channels of the stem and of res2's 3×3 convs (64 in torchvision); stage i has
            ``width * 2**(i-2)`` (times the block expansion at its output). Narrower is faster.
        stem_width: output channels of the stem (the deep stem's convs have stem_width/2,
            stem_width/2, stem_width); None: ``width``. 128 for the PSPNet/MFARANet deep-stem
            ImageNet files, whose res2 then starts with a 128 -> res2 shortcut.
        zero_init_residual: zero the last norm of each residual branch so every block starts as
            the identity; this makes training from scratch converge much faster.
        stage_dilations: dilation of the ``conv2`` of every block of res2..res5, strides kept
            (output stride stays 32; only with ``output_stride`` 32). MFARANet: (1, 1, 2, 4).

    Input: N×3×H×W normalised images. Output: ``{name: N×C×ceil(H/s)×ceil(W/s)}``.
    """

    def __init__(self, depth: str = "resnet18", out_features: Sequence[str] = tuple(_STAGES),
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d, deep_stem: bool = False,
                 output_stride: int = 32, freeze_at: int = 0, width: int = 64,
                 zero_init_residual: bool = True, stem_width: Optional[int] = None,
                 stage_dilations: Sequence[int] = (1, 1, 1, 1)):
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"Unknown ResNet depth {depth!r} (MODEL.BACKBONE.NAME); choose one of "
                             f"{sorted(RESNET_DEPTHS)}.")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"MODEL.BACKBONE.OUTPUT_STRIDE must be 8, 16 or 32, got {output_stride}.")
        unknown = [f for f in out_features if f not in ["stem"] + _STAGES]
        if unknown or not out_features:
            raise ValueError(f"ResNet out_features {list(out_features)} must be a non-empty subset of "
                             f"{['stem'] + _STAGES} (MODEL.BACKBONE.OUT_FEATURES).")
        stage_dilations = [int(d) for d in stage_dilations]
        if len(stage_dilations) != 4 or min(stage_dilations) < 1:
            raise ValueError(f"MODEL.BACKBONE.STAGE_DILATIONS must be 4 integers >= 1 "
                             f"(res2..res5), got {stage_dilations}.")
        if output_stride != 32 and stage_dilations != [1, 1, 1, 1]:
            raise ValueError(f"MODEL.BACKBONE.STAGE_DILATIONS {stage_dilations} dilates with the "
                             f"strides kept; it cannot be combined with OUTPUT_STRIDE "
                             f"{output_stride} (which removes strides): use one of the two.")
        block, layers = RESNET_DEPTHS[depth]
        stem_width = stem_width or width
        if deep_stem:
            half = max(stem_width // 2, 1)
            self.stem = nn.Sequential(
                nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False), norm_layer(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, half, 3, padding=1, bias=False), norm_layer(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, stem_width, 3, padding=1, bias=False), norm_layer(stem_width),
                nn.ReLU(inplace=True),
            )
        else:
            self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = norm_layer(stem_width)
            self.stem = None
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = stem_width
        for i, blocks in enumerate(layers):
            planes = width * 2 ** i
            setattr(self, f"layer{i + 1}", _make_stage(block, in_channels, planes, blocks,
                                                        1 if i == 0 else 2, norm_layer))
            in_channels = planes * block.expansion
        _init_weights(self, zero_init_residual)
        for i, d in enumerate(stage_dilations):
            if d != 1:
                _dilate_conv2_keep_stride(getattr(self, f"layer{i + 1}"), d)

        strides = {"stem": 4, "res2": 4, "res3": 8}
        if output_stride == 8:
            _dilate_stage(self.layer3, dilation=2, first_dilation=1)
            _dilate_stage(self.layer4, dilation=4, first_dilation=2)
            strides.update(res4=8, res5=8)
        elif output_stride == 16:
            _dilate_stage(self.layer4, dilation=2, first_dilation=1)
            strides.update(res4=16, res5=16)
        else:
            strides.update(res4=16, res5=32)
        widths = [width * block.expansion * 2 ** i for i in range(4)]
        channels = {"stem": stem_width, **dict(zip(_STAGES, widths))}

        # Stages after the last requested one are removed: unused parameters would break DDP.
        last = max((["stem"] + _STAGES).index(f) for f in out_features)
        for i, name in enumerate(_STAGES, start=1):
            if i > last:
                delattr(self, f"layer{i}")
        self._out_features = list(out_features)
        self._out_feature_channels = {f: channels[f] for f in out_features}
        self._out_feature_strides = {f: strides[f] for f in out_features}
        self._num_stages = last
        self.freeze(freeze_at)

    @classmethod
    def convert_pretrained(cls, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """ImageNet ResNet files -> our names; the classifier (``fc.*``) is dropped.

        Recognised by their keys: torchvision (``conv1``/``bn1``/``layer1..4``, 7×7 stem: our
        plain-stem names already), semseg ``resnet50_v2`` (top-level ``conv1..3``/``bn1..3``),
        SFNet/MFARANet deep stem (``conv1.0``, ``conv1.3``, ``conv1.6``, ``bn1``), and whole
        PSPNet / MFARANet models (``layer0.*``; their heads stay unexpected keys), open-mmlab
        ``resnet*_v1c`` (``stem.*``: our names) and whole mmseg models (``backbone.*``).
        """
        keys = set(state_dict)
        if "conv1.0.weight" in keys:
            layout = "sfnet"
        elif "conv3.weight" in keys and "conv2.weight" in keys:
            layout = "semseg"
        elif "layer0.0.0.weight" in keys:
            layout = "mfaranet_layer0"
        elif "layer0.0.weight" in keys:
            layout = "pspnet_layer0"
        elif "backbone.stem.0.weight" in keys or "backbone.conv1.weight" in keys:
            layout = "mmseg_model"
        else:
            layout = None
        return rename_prefixes(state_dict, _DEEP_STEM_LAYOUTS.get(layout, {}), drop=("fc.",))

    def freeze(self, freeze_at: int) -> "ResNet":
        """Freeze the stem (freeze_at >= 1) and stages res2..res{freeze_at} (freeze_at >= 2).

        Frozen parts get no gradient and their BatchNorms become ``FrozenBatchNorm2d``, so their
        statistics stay fixed in training too.
        """
        names = []
        if freeze_at >= 1:
            names += ["stem"] if self.stem is not None else ["conv1", "bn1"]
        names += [f"layer{i}" for i in range(1, min(freeze_at, 5)) if hasattr(self, f"layer{i}")]
        for name in names:
            module = FrozenBatchNorm2d.convert_frozen_batchnorm(getattr(self, name))
            for p in module.parameters():
                p.requires_grad_(False)
            setattr(self, name, module)
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs = {}
        x = self.stem(x) if self.stem is not None else self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for i, name in enumerate(_STAGES, start=1):
            if i > self._num_stages:
                break
            x = getattr(self, f"layer{i}")(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg) -> ResNet:
    """ResNet from ``MODEL.BACKBONE.{NAME, NORM, OUT_FEATURES, DEEP_STEM, OUTPUT_STRIDE, FREEZE_AT,
    WIDTH, STEM_WIDTH, STAGE_DILATIONS}``."""
    b = cfg.MODEL.BACKBONE
    return ResNet(depth=b.NAME, out_features=b.OUT_FEATURES, norm_layer=norm_factory(b.NORM),
                  deep_stem=b.DEEP_STEM, output_stride=b.OUTPUT_STRIDE, freeze_at=b.FREEZE_AT,
                  width=b.WIDTH, stem_width=b.STEM_WIDTH or None,
                  stage_dilations=b.STAGE_DILATIONS)


# Registering each depth under its own name lets MODEL.BACKBONE.NAME be "resnet18" directly.
for _depth in RESNET_DEPTHS:
    BACKBONE_REGISTRY._do_register(_depth, build_resnet_backbone)

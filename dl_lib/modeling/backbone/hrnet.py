"""HRNetV2 backbones (W18-Small-v2, W18, W32, W48): parallel branches at strides 4, 8, 16 and 32,
exchanging information after every module.

Layout and parameter names follow HRNet-Semantic-Segmentation / HRNet-Image-Classification (and the
ADP-C code built on them): ``conv1, bn1, conv2, bn2`` (the stride-4 stem), ``layer1`` (Bottlenecks),
then ``transition{1,2,3}`` and ``stage{2,3,4}``; blocks are torchvision's ``BasicBlock`` /
``Bottleneck``, which have the same child names (``conv1``, ``bn1``, ..., ``downsample.{0,1}``). So
the ImageNet checkpoints load by name through :meth:`HighResolutionNet.convert_pretrained`, which
drops the classification head (``incre_modules``, ``downsamp_modules``, ``final_layer``,
``classifier``).

Besides ``forward`` (the four branch outputs), the stages are exposed one by one
(:meth:`forward_stem`, :meth:`forward_stage`) for models that predict in between (ADP-C's early
exits). Every convolution is a plain ``nn.Conv2d``; a family that computes some of them sparsely
swaps them afterwards (``dl_lib.modeling.anytime`` does for stages 2-4).
"""
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..registry import BACKBONE_REGISTRY
from ..shape_spec import ShapeSpec
from .backbone import Backbone
from .resnet import norm_factory

__all__ = ["HRNET_VARIANTS", "HighResolutionNet", "HighResolutionModule", "concat_branches",
           "build_hrnet_backbone"]

# name -> Bottlenecks of layer1, then per stage 2..4: (modules, blocks per branch, branch widths).
# Every block of stages 2-4 is a BasicBlock (expansion 1).
HRNET_VARIANTS = {
    "w18_small_v2": dict(layer1_blocks=2, stages=[(1, 2, [18, 36]), (3, 2, [18, 36, 72]),
                                                  (2, 2, [18, 36, 72, 144])]),
    "w18": dict(layer1_blocks=4, stages=[(1, 4, [18, 36]), (4, 4, [18, 36, 72]),
                                         (3, 4, [18, 36, 72, 144])]),
    "w32": dict(layer1_blocks=4, stages=[(1, 4, [32, 64]), (4, 4, [32, 64, 128]),
                                         (3, 4, [32, 64, 128, 256])]),
    "w48": dict(layer1_blocks=4, stages=[(1, 4, [48, 96]), (4, 4, [48, 96, 192]),
                                         (3, 4, [48, 96, 192, 384])]),
}
_BRANCH_STRIDES = (4, 8, 16, 32)
# HRNet's BatchNorm momentum (the original sets 0.01 everywhere, also for SyncBN).
BN_MOMENTUM = 0.01
# Keys of the ImageNet classification head, which segmentation never uses.
_CLASSIFIER_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def _make_blocks(block, inplanes: int, planes: int, blocks: int, norm) -> nn.Sequential:
    """``blocks`` blocks; the first gets a 1x1 conv + norm shortcut when the width changes."""
    downsample = None
    if inplanes != planes * block.expansion:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * block.expansion, 1, bias=False),
                                   norm(planes * block.expansion))
    layers = [block(inplanes, planes, downsample=downsample, norm_layer=norm)]
    layers += [block(planes * block.expansion, planes, norm_layer=norm) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def concat_branches(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Every branch bilinearly resized to the first one's size, concatenated on channels (the
    input of HRNetV2's head and of ADP-C's exits): N x sum(C_b) x H/4 x W/4."""
    size = features[0].shape[-2:]
    return torch.cat([features[0]] + [F.interpolate(f, size=size, mode="bilinear",
                                                    align_corners=False) for f in features[1:]], 1)


class HighResolutionModule(nn.Module):
    """One multi-resolution module: a chain of BasicBlocks per branch, then every output i is
    ReLU(sum_j fuse[i][j](x_j)):

    - j > i: 1x1 conv + norm, bilinearly upsampled to x_i's size;
    - j = i: identity (``None`` in ``fuse_layers``, no keys);
    - j < i: (i - j) stride-2 3x3 convs + norm (ReLU after all but the last).
    """

    def __init__(self, widths: Sequence[int], blocks: int, norm):
        super().__init__()
        n = len(widths)
        self.branches = nn.ModuleList(
            [_make_blocks(BasicBlock, w, w, blocks, norm) for w in widths])
        self.fuse_layers = nn.ModuleList()
        for i in range(n):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(widths[j], widths[i], 1, bias=False),
                                             norm(widths[i])))
                elif j == i:
                    row.append(None)
                else:
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        cout = widths[i] if last else widths[j]
                        step = [_conv3x3(widths[j], cout, 2), norm(cout)]
                        if not last:
                            step.append(nn.ReLU(inplace=False))
                        steps.append(nn.Sequential(*step))
                    row.append(nn.Sequential(*steps))
            self.fuse_layers.append(row)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: List[torch.Tensor]) -> List[torch.Tensor]:
        x = [branch(t) for branch, t in zip(self.branches, x)]
        out = []
        for i, row in enumerate(self.fuse_layers):
            # Summed in the original's order (j = 0, 1, ...), so released weights give its values.
            y = x[0] if i == 0 else row[0](x[0])
            for j in range(1, len(x)):
                if j == i:
                    y = y + x[j]
                elif j > i:
                    y = y + F.interpolate(row[j](x[j]), size=x[i].shape[-2:], mode="bilinear",
                                          align_corners=False)
                else:
                    y = y + row[j](x[j])
            out.append(self.relu(y))
        return out


def _transition(widths_pre: Sequence[int], widths: Sequence[int], norm) -> nn.ModuleList:
    """Branch i of the next stage: unchanged (``None``), a 3x3 conv when its width changes, or for
    a new branch a stride-2 3x3 conv from the last previous branch."""
    layers = nn.ModuleList()
    for i, w in enumerate(widths):
        if i < len(widths_pre):
            if widths_pre[i] != w:
                layers.append(nn.Sequential(_conv3x3(widths_pre[i], w), norm(w),
                                            nn.ReLU(inplace=False)))
            else:
                layers.append(None)
        else:
            steps = []
            for k in range(i + 1 - len(widths_pre)):
                cin = widths_pre[-1]
                cout = w if k == i - len(widths_pre) else cin
                steps.append(nn.Sequential(_conv3x3(cin, cout, 2), norm(cout),
                                           nn.ReLU(inplace=False)))
            layers.append(nn.Sequential(*steps))
    return layers


class HighResolutionNet(Backbone):
    """HRNetV2 feature extractor.

    Args:
        variant: a key of :data:`HRNET_VARIANTS` (``w18_small_v2`` is ADP-C's "w18").
        norm: ``channels -> norm module`` (BatchNorm with momentum 0.01 by default).
        out_features: subset of ``hr0..hr3`` (strides 4, 8, 16, 32) returned by ``forward``.

    ``forward(x)`` (N x 3 x H x W) -> ``{"hr0": N x C0 x H/4 x W/4, ...}``.
    """

    def __init__(self, variant: str = "w48", norm: Optional[Callable[[int], nn.Module]] = None,
                 out_features: Sequence[str] = ("hr0", "hr1", "hr2", "hr3")):
        super().__init__()
        if variant not in HRNET_VARIANTS:
            raise ValueError(f"HRNet variant {variant!r} is unknown; choose one of "
                             f"{sorted(HRNET_VARIANTS)} (MODEL.HRNET.VARIANT)")
        spec = HRNET_VARIANTS[variant]
        norm = norm or nn.BatchNorm2d
        self.variant = variant
        self.conv1 = _conv3x3(3, 64, 2)
        self.bn1 = norm(64)
        self.conv2 = _conv3x3(64, 64, 2)
        self.bn2 = norm(64)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = _make_blocks(Bottleneck, 64, 64, spec["layer1_blocks"], norm)
        widths_pre = [64 * Bottleneck.expansion]
        self.stage_widths: List[List[int]] = []
        for s, (modules, blocks, widths) in enumerate(spec["stages"], start=2):
            setattr(self, f"transition{s - 1}", _transition(widths_pre, widths, norm))
            setattr(self, f"stage{s}", nn.Sequential(
                *[HighResolutionModule(widths, blocks, norm) for _ in range(modules)]))
            self.stage_widths.append(list(widths))
            widths_pre = widths
        self.layer1_channels = 64 * Bottleneck.expansion
        names = [f"hr{i}" for i in range(4)]
        unknown = [f for f in out_features if f not in names]
        if unknown:
            raise ValueError(f"HighResolutionNet: unknown out_features {unknown}; choose from {names}")
        self._out_features = list(out_features)
        self._out_feature_channels = {n: c for n, c in zip(names, widths_pre)}
        self._out_feature_strides = {n: s for n, s in zip(names, _BRANCH_STRIDES)}
        for m in self.modules():
            # _BatchNorm: also nn.SyncBatchNorm (NCCL "SyncBN"), which is no BatchNorm2d.
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = BN_MOMENTUM
        self.init_weights()

    def init_weights(self) -> None:
        """HRNet's initialisation: conv weights ~ N(0, 0.001), norm weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W -> ``layer1``'s output, N x 256 x H/4 x W/4."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.layer1(x)

    def forward_stage(self, stage: int, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Stage 2, 3 or 4 (its transition, then its modules): the previous stage's branch outputs
        (``[layer1 output]`` for stage 2) -> this stage's, highest resolution first."""
        transition = getattr(self, f"transition{stage - 1}")
        x = []
        for i, t in enumerate(transition):
            src = features[i] if i < len(features) else features[-1]
            x.append(src if t is None else t(src))
        return getattr(self, f"stage{stage}")(x)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = [self.forward_stem(x)]
        for stage in (2, 3, 4):
            features = self.forward_stage(stage, features)
        return {f"hr{i}": f for i, f in enumerate(features) if f"hr{i}" in self._out_features}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {n: ShapeSpec(channels=self._out_feature_channels[n],
                             stride=self._out_feature_strides[n]) for n in self._out_features}

    @classmethod
    def convert_pretrained(cls, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """HRNet-Image-Classification checkpoints (``hrnetv2_w48_imagenet_pretrained.pth``,
        ``hrnet_w18_small_model_v2.pth``; also a ``{"state_dict": ...}`` or ``module.``-prefixed
        file): the same names as ours, minus the classification head."""
        if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
            state_dict = state_dict["state_dict"]
        out = {}
        for k, v in state_dict.items():
            k = k[len("module."):] if k.startswith("module.") else k
            if not k.startswith(_CLASSIFIER_PREFIXES):
                out[k] = v
        return out


def build_hrnet_backbone(cfg) -> HighResolutionNet:
    """HRNetV2 from ``MODEL.BACKBONE.NAME`` (``hrnet_w48``, ``hrnet_w18_small_v2``, ...) and
    ``MODEL.BACKBONE.{NORM, OUT_FEATURES}`` (the ``hr*`` names; all four when none is given)."""
    name = cfg.MODEL.BACKBONE.NAME
    out = [f for f in cfg.MODEL.BACKBONE.OUT_FEATURES if f.startswith("hr")] or \
        ["hr0", "hr1", "hr2", "hr3"]
    return HighResolutionNet(name[len("hrnet_"):], norm=norm_factory(cfg.MODEL.BACKBONE.NORM),
                             out_features=out)


# One registry name per variant, so MODEL.BACKBONE.NAME is "hrnet_w48" directly (as for ResNets).
for _variant in HRNET_VARIANTS:
    BACKBONE_REGISTRY._do_register(f"hrnet_{_variant}", build_hrnet_backbone)

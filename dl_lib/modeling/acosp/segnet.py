"""SegNet of the ACoSP repository (from meetps/pytorch-semseg; reference ``acosp.md`` section 1.2).

Encoder (``backbone.*``): the VGG-16 layout, ``down1`` .. ``down5`` with 2, 2, 3, 3, 3
conv(bias) -> BN -> ReLU units (``convK.cbr_unit.{0,1}``) of 64, 128, 256, 512, 512 channels,
each stage ending with a 2x2 max-pool that keeps its indices and the pre-pool size. Decoder
(``head.*``): ``up5`` .. ``up1``, each a max-unpool with the mirrored stage's indices then
``convs.{j}.cbr_unit`` (3, 3, 3, 2, 2 units); every unit keeps the stage's width but the last,
which goes to the next stage's width (``up1``: the classes). The last conv is unprunable, yet
followed by BN and ReLU as in the original (``MODEL.ACOSP.SEGNET_FINAL_BN_RELU``), so its class
scores are normalised and non-negative. The widths are ``MODEL.ACOSP.SEGNET_WIDTHS``.

Parameters with 19 classes: 29,454,009 (11 classes: 29,449,377), the original's.
"""
from typing import List, Sequence, Tuple

import torch
from torch import nn

from ..meta_arch import SemanticSegmentor
from ..registry import META_ARCH_REGISTRY
from .common import apply_pruning, mark_unprunable, pruning_arch

__all__ = ["ConvBNReLU", "SegNetDown", "SegNetUp", "SegNetEncoder", "SegNetDecoder",
           "ACoSPSegNet", "segnet", "segnet_narrow", "VGG16_WIDTHS", "VGG16_DEPTHS"]

VGG16_WIDTHS = (64, 128, 256, 512, 512)
VGG16_DEPTHS = (2, 2, 3, 3, 3)


class ConvBNReLU(nn.Module):
    """The original's ``conv2DBatchNormRelu``: ``cbr_unit`` = 3x3 conv (bias) -> BN -> ReLU (the
    last two optional: ``bn_relu=False``)."""

    def __init__(self, in_channels: int, out_channels: int, bn_relu: bool = True):
        super().__init__()
        layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True)]
        if bn_relu:
            layers += [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        self.cbr_unit = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr_unit(x)


class SegNetDown(nn.Module):
    """``convs`` units (``conv1`` ..) then a 2x2 max-pool: x -> (pooled, indices, pre-pool x)."""

    def __init__(self, in_channels: int, out_channels: int, num_convs: int):
        super().__init__()
        for i in range(num_convs):
            self.add_module(f"conv{i + 1}", ConvBNReLU(in_channels if i == 0 else out_channels,
                                                       out_channels))
        self.num_convs = num_convs
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)

    def forward(self, x: torch.Tensor):
        for i in range(self.num_convs):
            x = getattr(self, f"conv{i + 1}")(x)
        pooled, indices = self.pool(x)
        return pooled, indices, x


class SegNetUp(nn.Module):
    """A 2x2 max-unpool to the stored size, then ``convs``: ``num_convs`` units of
    ``in_channels``, the last to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, num_convs: int,
                 last_bn_relu: bool = True):
        super().__init__()
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.convs = nn.Sequential(*[
            ConvBNReLU(in_channels, in_channels if i < num_convs - 1 else out_channels,
                       bn_relu=last_bn_relu or i < num_convs - 1) for i in range(num_convs)])

    def forward(self, x: torch.Tensor, indices: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.convs(self.unpool(x, indices, output_size=like.shape))


class SegNetEncoder(nn.Module):
    """``down1`` .. ``down5``: N x 3 x H x W -> (x, [indices per stage], [pre-pool maps])."""

    def __init__(self, widths: Sequence[int] = VGG16_WIDTHS, depths: Sequence[int] = VGG16_DEPTHS):
        super().__init__()
        widths, depths = [int(w) for w in widths], [int(d) for d in depths]
        if len(widths) != 5 or min(widths) < 1:
            raise ValueError(f"MODEL.ACOSP.SEGNET_WIDTHS must be 5 positive channel counts "
                             f"(down1..down5), got {widths}")
        self.widths = widths
        for i, (w, d) in enumerate(zip(widths, depths)):
            self.add_module(f"down{i + 1}", SegNetDown(3 if i == 0 else widths[i - 1], w, d))

    @classmethod
    def convert_pretrained(cls, state_dict):
        """torchvision ``vgg16`` (ImageNet) -> ours, for ``MODEL.PRETRAINED``: its 13 convs
        ``features.{0,2,5,...,28}`` in order to ``down1.conv1`` .. ``down5.conv3`` (the
        original copies them the same way); the classifier is dropped. Other layouts pass."""
        if "features.0.weight" not in state_dict:
            return dict(state_dict)
        ours = [f"down{i + 1}.conv{j + 1}.cbr_unit.0" for i, d in enumerate(VGG16_DEPTHS)
                for j in range(d)]
        convs = sorted({int(k.split(".")[1]) for k in state_dict
                        if k.startswith("features.") and k.endswith(".weight")
                        and state_dict[k].dim() == 4})
        out = {}
        for name, index in zip(ours, convs):
            for leaf in ("weight", "bias"):
                if f"features.{index}.{leaf}" in state_dict:
                    out[f"{name}.{leaf}"] = state_dict[f"features.{index}.{leaf}"]
        return out

    def forward(self, x: torch.Tensor):
        indices, shapes = [], []
        for i in range(5):
            x, idx, before = getattr(self, f"down{i + 1}")(x)
            indices.append(idx)
            shapes.append(before)
        return x, indices, shapes


class SegNetDecoder(nn.Module):
    """``up5`` .. ``up1`` mirroring the encoder; the last conv (to the classes) is unprunable."""

    def __init__(self, widths: Sequence[int], num_classes: int, depths: Sequence[int] = VGG16_DEPTHS,
                 final_bn_relu: bool = True):
        super().__init__()
        widths = [int(w) for w in widths]
        for i in range(5, 0, -1):
            out = widths[i - 2] if i > 1 else num_classes
            self.add_module(f"up{i}", SegNetUp(widths[i - 1], out, int(depths[i - 1]),
                                               last_bn_relu=final_bn_relu if i == 1 else True))
        mark_unprunable(self.up1.convs[-1].cbr_unit[0])

    def forward(self, encoded) -> torch.Tensor:
        x, indices, shapes = encoded
        for i in range(5, 0, -1):
            x = getattr(self, f"up{i}")(x, indices[i - 1], shapes[i - 1])
        return x


@META_ARCH_REGISTRY.register()
class ACoSPSegNet(SemanticSegmentor):
    """SegNet (module doc) as a segmentor: ``backbone`` = :class:`SegNetEncoder`, ``head`` =
    :class:`SegNetDecoder`; logits at the input size (``output_stride`` 1). Any input size
    works (the unpooling restores each stage's size). Training: ``loss_sem_seg`` only (the
    original's aux loss is 0). ``pruning``: the ``MODEL.PRUNING`` node, applied last."""

    def __init__(self, *, backbone: SegNetEncoder, head: SegNetDecoder,
                 pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 ignore_value: int = 255, size_divisibility: int = 1,
                 head_lr_multiplier: float = 1.0, pruning=None):
        super().__init__(backbone=backbone, head=head, pixel_mean=pixel_mean,
                         pixel_std=pixel_std, ignore_value=ignore_value,
                         size_divisibility=size_divisibility)
        self.head_lr_multiplier = float(head_lr_multiplier)
        apply_pruning(self, pruning)

    @classmethod
    def from_config(cls, cfg) -> dict:
        a = cfg.MODEL.ACOSP
        encoder = SegNetEncoder(a.SEGNET_WIDTHS)
        decoder = SegNetDecoder(a.SEGNET_WIDTHS, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
                                final_bn_relu=a.SEGNET_FINAL_BN_RELU)
        return dict(backbone=encoder, head=decoder, pixel_mean=cfg.MODEL.PIXEL_MEAN,
                    pixel_std=cfg.MODEL.PIXEL_STD,
                    ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                    head_lr_multiplier=a.HEAD_LR_MULTIPLIER,
                    pruning=cfg.MODEL.PRUNING if "PRUNING" in cfg.MODEL else None)

    @property
    def output_stride(self) -> int:
        return 1

    def param_lr_multiplier(self, name: str) -> float:
        """1 in the encoder (``down1..5``), ``head_lr_multiplier`` in the decoder (1 as the
        original's SegNet configs)."""
        return 1.0 if name.startswith("backbone.") else self.head_lr_multiplier

    def architecture(self) -> dict:
        return pruning_arch(self)


def segnet(num_classes: int = 19, widths: Sequence[int] = VGG16_WIDTHS, **kwargs) -> ACoSPSegNet:
    """The original's SegNet (29,454,009 parameters with 19 classes)."""
    return ACoSPSegNet(backbone=SegNetEncoder(widths), head=SegNetDecoder(widths, num_classes),
                       pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
                       **kwargs)


# The small CPU variant: every VGG-16 stage at 1/8 of its width.
NARROW_WIDTHS = (8, 16, 32, 64, 64)


def segnet_narrow(num_classes: int = 19, **kwargs) -> ACoSPSegNet:
    """SegNet at 1/8 width (``MODEL.ACOSP.SEGNET_WIDTHS [8, 16, 32, 64, 64]``): the street-scene
    variant that prunes and compresses on CPU."""
    return segnet(num_classes, NARROW_WIDTHS, **kwargs)

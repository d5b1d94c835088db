"""ADP-C: HRNetV2 with four exits and confidence adaptivity (Liu et al., ICLR 2022).

Exits after stage 1 (``layer1``), 2, 3 and the final head after stage 4, each on its stage's branches
upsampled to stride 4 and concatenated (reference ``anytime.md`` sections 1.6-2). With
``MODEL.MASK.USE`` every convolution after exit 1 computes only the pixels the previous exit is not
confident about (:mod:`.confidence`), and an exit's logits at confident pixels are the previous
exit's (copy aggregation), so a pixel's final prediction is the first confident one.

Names follow the released checkpoints: ``backbone.*`` is the original's top level (``conv1``,
``layer1``, ``stage2``, ...), ``head.exit{1,2,3}`` and ``head.last_layer`` its exits (``convert.py``).
"""
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dl_lib.checkpoint import IncompatibleCheckpointError
from dl_lib.layers import prefers_channels_last

from ..backbone.hrnet import BN_MOMENTUM, HighResolutionNet, concat_branches
from ..backbone.resnet import norm_factory
from ..heads.hrnet_head import HRNetClassifier
from ..meta_arch.semantic_segmentor import SemanticSegmentor, resize_logits
from ..registry import META_ARCH_REGISTRY
from .confidence import ForwardState, SegmentMasks, pair_norms, swap_convs

__all__ = ["ANYTIME_VARIANTS", "PUBLISHED", "PoolUpsampleHead", "AnytimeExits",
           "AnytimeSegmentor", "anytime_hrnet_w48", "anytime_hrnet_w18"]

# ADP-C's two networks: backbone variant and the README's RH hidden width.
ANYTIME_VARIANTS = {
    "w48": dict(backbone="w48", inter_channel=128),
    "w18": dict(backbone="w18_small_v2", inter_channel=64),
}
# Poolings of the "flex" (RH) heads of exits 1, 2, 3: earlier exits see shallower features and get
# more context.
FLEX_DEPTHS = (3, 2, 1)
NUM_EXITS = 4
_GIB = float(2 ** 30)

# Published Cityscapes val numbers (README of the original; GFLOPs = 2^30 MACs at 1024x2048).
# The README's EE GFLOPs cannot come from its own counter: its counter's values are used.
PUBLISHED = {
    ("w48", "original", False): {"EE (published)": {
        "mIoU": [34.33, 59.01, 76.90, 80.43], "gflops": [48.44, 113.46, 388.88, 722.20]}},
    ("w48", "flex", False): {"EE+RH (published)": {
        "mIoU": [44.61, 60.19, 76.64, 79.89], "gflops": [41.9, 105.6, 368.0, 701.3]}},
    ("w48", "flex", True): {"ADP-C (published)": {
        "mIoU": [44.34, 60.13, 76.82, 81.31], "gflops": [41.9, 93.9, 259.3, 387.1]}},
}


class _UpsampleToPooled(nn.Module):
    """Bilinear upsampling back to the size before the matching pooling (the original's fixed x2,
    which breaks for sizes not divisible by 2^depth; equal to it when they are)."""

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PoolUpsampleHead(nn.Sequential):
    """The redesigned ("flex") exit: ``depth`` x (2x2 average pool, 1x1 conv-BN-ReLU to
    ``inter_channels``), ``depth - 1`` x (upsample, 1x1 conv-BN-ReLU), upsample, 1x1 classifier.

    N x C x h x w -> N x K x h x w. The Sequential indices are the released checkpoints' names.
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int, inter_channels: int,
                 norm_layer=None):
        norm_layer = norm_layer or nn.BatchNorm2d

        def conv_norm_relu(cin):
            norm = norm_layer(inter_channels)
            if isinstance(norm, nn.BatchNorm2d):
                norm.momentum = BN_MOMENTUM
            return [nn.Conv2d(cin, inter_channels, 1), norm, nn.ReLU(inplace=False)]

        layers, c = [], in_channels
        for _ in range(depth):
            layers += [nn.AvgPool2d(2, 2)] + conv_norm_relu(c)
            c = inter_channels
        for _ in range(depth - 1):
            layers += [_UpsampleToPooled()] + conv_norm_relu(c)
        layers += [_UpsampleToPooled(), nn.Conv2d(c, num_classes, 1)]
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = []
        for layer in self:
            if isinstance(layer, nn.AvgPool2d):
                sizes.append(x.shape[-2:])
                x = layer(x)
            elif isinstance(layer, _UpsampleToPooled):
                x = layer(x, sizes.pop())
            else:
                x = layer(x)
        return x


class AnytimeExits(nn.Module):
    """The four exits: ``exit1`` (on ``layer1``'s 256 channels), ``exit2``, ``exit3`` (on the
    concatenated branches of stages 2 and 3) and ``last_layer`` (stage 4), all at stride 4."""

    output_stride = 4

    def __init__(self, in_channels: Sequence[int], num_classes: int, exit_type: str = "original",
                 inter_channels: int = 64, kernel_size: int = 1, norm_layer=None):
        super().__init__()
        if exit_type not in ("original", "flex"):
            raise ValueError(f"MODEL.EXIT.TYPE must be 'original' (EE) or 'flex' (RH), got "
                             f"{exit_type!r}")
        for k, c in enumerate(in_channels[:3], start=1):
            head = (HRNetClassifier(c, num_classes, kernel_size, norm_layer)
                    if exit_type == "original" else
                    PoolUpsampleHead(c, num_classes, FLEX_DEPTHS[k - 1], inter_channels,
                                     norm_layer))
            setattr(self, f"exit{k}", head)
        self.last_layer = HRNetClassifier(in_channels[3], num_classes, kernel_size, norm_layer)

    def exit(self, k: int) -> nn.Module:
        return self.last_layer if k == NUM_EXITS else getattr(self, f"exit{k}")


class _ExitTimer:
    """Milliseconds from the start of a forward to each exit (device synchronised)."""

    def __init__(self, device: torch.device, enabled: bool):
        self.enabled, self.device = enabled, device
        self.ms: List[float] = []
        self._start = self._now() if enabled else 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self) -> None:
        if self.enabled:
            self.ms.append(1e3 * (self._now() - self._start))


@META_ARCH_REGISTRY.register()
class AnytimeSegmentor(SemanticSegmentor):
    """HRNetV2 with early exits (EE), redesigned heads (RH) and confidence adaptivity (CA).

    Args:
        backbone: a :class:`HighResolutionNet`.
        head: its :class:`AnytimeExits`.
        mask_use, conf_threshold, criterion, entropy_threshold, aggregation, interpolation,
            mask_resize: ``MODEL.MASK.*`` (see the family config).
        stop_exit: run up to this exit (1-based; <= 0 = all).
        class_weights: cross-entropy weight per class (empty = none).
        report_exits: in eval, outputs carry ``"flops"`` (``exit{k}``: cumulative GFLOPs of one
            image up to exit k, the original counter's rule) and ``"exit_ms"``.
        Other arguments as :class:`SemanticSegmentor`.

    ``forward_logits`` returns the (aggregated) logits of every exit run, cheapest first; eval
    outputs add ``sem_seg_exits`` and, with masks, ``exit_masks`` (per masked segment, the
    computed pixels at image size).
    """

    def __init__(self, *, backbone: HighResolutionNet, head: AnytimeExits,
                 pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 ignore_value: int = 255, exit_loss_weights: Sequence[float] = (),
                 mask_use: bool = False, conf_threshold: float = 0.998,
                 criterion: str = "conf_thre", entropy_threshold: float = 0.0,
                 aggregation: str = "copy", interpolation: str = "rbf",
                 mask_resize: str = "nearest", stop_exit: int = -1,
                 class_weights: Sequence[float] = (), report_exits: bool = True,
                 channels_last: Optional[bool] = None):
        super().__init__(backbone=backbone, head=head, pixel_mean=pixel_mean,
                         pixel_std=pixel_std, ignore_value=ignore_value,
                         exit_loss_weights=exit_loss_weights)
        if aggregation not in ("copy", "none"):
            raise ValueError(f"MODEL.MASK.AGGR must be 'copy' or 'none', got {aggregation!r}")
        if not -1 <= int(stop_exit) <= NUM_EXITS:
            raise ValueError(f"MODEL.EXIT.STOP must be 1..{NUM_EXITS} (or -1 / 0 for all), got "
                             f"{stop_exit}")
        self.mask_use = bool(mask_use)
        self.threshold = float(entropy_threshold if criterion == "entropy_thre"
                               else conf_threshold)
        self.criterion = criterion
        self.aggregation = aggregation
        self.mask_resize = mask_resize
        self.stop_exit = int(stop_exit) if int(stop_exit) > 0 else NUM_EXITS
        self.report_exits = report_exits
        self.variant_key = None  # (variant, exit type, mask use) for published_exit_points
        # Every convolution reports its cost; those after exit 1 are masked under CA.
        for name in ("transition1", "stage2", "transition2", "stage3", "transition3", "stage4"):
            swap_convs(getattr(self.backbone, name), interpolation if mask_use else "none")
        for k in (2, 3, 4):
            swap_convs(self.head.exit(k), interpolation if mask_use else "none")
        if mask_use:  # masked convolutions may apply their BatchNorm at inference (fold_norm)
            for name in ("transition1", "stage2", "transition2", "stage3", "transition3",
                         "stage4"):
                pair_norms(getattr(self.backbone, name))
            for k in (2, 3, 4):
                pair_norms(self.head.exit(k))
        swap_convs(self.backbone)  # the stem and layer1 (the others are swapped already)
        swap_convs(self.head.exit1)
        if class_weights:
            self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32),
                                 False)
        else:
            self.class_weights = None
        self.channels_last = channels_last
        # Benchmarks/tests: per masked segment (exits 2..4) a bool N x 1 x h x w mask at stride 4
        # (True = computed) used instead of the one from the previous exit's logits (None: the
        # model's own masks). Copy aggregation uses it like a computed mask.
        self.forced_masks: Optional[Sequence[torch.Tensor]] = None
        self._register_load_state_dict_pre_hook(self._refuse_interpolation_weights)

    def _refuse_interpolation_weights(self, state_dict, prefix, *args) -> None:
        """An ADP-C checkpoint (per-layer ``Lambda`` / ``square_dis``) loaded into a model without
        masks would run densely as an RH/EE model: the original filtered such keys silently."""
        if self.mask_use:
            return
        extra = [k for k in state_dict if k.startswith(prefix)
                 and k.endswith((".Lambda", ".square_dis"))]
        if extra:
            raise IncompatibleCheckpointError(
                f"The checkpoint is an ADP-C (confidence-adaptive) model: it has {len(extra)} "
                f"interpolation tensors such as {extra[0]!r}, but this model has MODEL.MASK.USE "
                "False. Set MODEL.MASK.USE True (and MODEL.MASK.CONF_THRE, 0.998 as published) to "
                "evaluate it as trained; to run its weights densely on purpose, drop the keys "
                "ending in '.Lambda' and '.square_dis' from the file first.")

    @classmethod
    def from_config(cls, cfg) -> dict:
        b, e, m = cfg.MODEL.BACKBONE, cfg.MODEL.EXIT, cfg.MODEL.MASK
        if not b.NAME.startswith("hrnet_"):
            raise ValueError(f"AnytimeSegmentor needs an HRNet backbone (MODEL.BACKBONE.NAME "
                             f"hrnet_w48 or hrnet_w18_small_v2), got {b.NAME!r}")
        norm = norm_factory(b.NORM)
        backbone = HighResolutionNet(b.NAME[len("hrnet_"):], norm=norm)
        widths = [w for w in backbone.stage_widths]
        in_channels = [backbone.layer1_channels] + [sum(w) for w in widths]
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        weights = list(cfg.MODEL.ANYTIME.CLASS_WEIGHTS)
        if weights and len(weights) != num_classes:
            raise ValueError(f"MODEL.ANYTIME.CLASS_WEIGHTS has {len(weights)} values but "
                             f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {num_classes}; give one weight "
                             "per class or [] for an unweighted loss")
        head = AnytimeExits(in_channels, num_classes, e.TYPE, e.INTER_CHANNEL,
                            e.FINAL_CONV_KERNEL, norm)
        return dict(backbone=backbone, head=head, pixel_mean=cfg.MODEL.PIXEL_MEAN,
                    pixel_std=cfg.MODEL.PIXEL_STD,
                    ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                    exit_loss_weights=cfg.MODEL.EXIT_LOSS_WEIGHTS, mask_use=m.USE,
                    conf_threshold=m.CONF_THRE, criterion=m.CRIT,
                    entropy_threshold=m.ENTROPY_THRE, aggregation=m.AGGR,
                    interpolation=m.INTERPOLATION, mask_resize=m.RESIZE, stop_exit=e.STOP,
                    class_weights=weights, report_exits=cfg.MODEL.ANYTIME.REPORT_EXITS)

    @property
    def output_stride(self) -> int:
        return AnytimeExits.output_stride

    def published_exit_points(self) -> Dict[str, dict]:
        """Published per-exit mIoU / GFLOPs of this setting (for plots), or {}."""
        variant = {"w48": "w48", "w18_small_v2": "w18"}.get(self.backbone.variant)
        exit_type = "flex" if isinstance(self.head.exit1, PoolUpsampleHead) else "original"
        return dict(PUBLISHED.get((variant, exit_type, self.mask_use), {}))

    # ---------------------------------------------------------------- logits
    def _use_channels_last(self, x: torch.Tensor) -> bool:
        if self.channels_last is not None:
            return self.channels_last
        return self.mask_use and prefers_channels_last(x.device)

    def forward_exits(self, x: torch.Tensor, report: bool = False
                      ) -> Tuple[List[torch.Tensor], dict]:
        """Normalised N x 3 x H x W -> (aggregated logits of exits 1..STOP at stride 4, info).

        ``info`` (with ``report``): ``"gflops"``: per exit, N cumulative GFLOPs (conv MACs / 2^30,
        a masked convolution at the fraction it computes plus the original counter's
        interpolation term); ``"ms"``: per exit, ms from the start; ``"masks"``: per masked
        segment, the N x 1 x h x w computed pixels at stride 4.
        """
        if self._use_channels_last(x):
            x = x.contiguous(memory_format=torch.channels_last)
            if not self.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last):
                self.to(memory_format=torch.channels_last)
        n = x.shape[0]
        timer = _ExitTimer(x.device, report)
        info = {"gflops": [], "ms": timer.ms, "masks": []}
        macs = [0.0] * n
        with ForwardState(count=report) as state:
            features = [self.backbone.forward_stem(x)]
            logits = self.head.exit1(features[0])
            outputs = [logits]
            self._add_cost(state, macs, info)
            timer.lap()
            for k in range(2, self.stop_exit + 1):
                masks = None
                if self.mask_use and self.forced_masks is not None:
                    masks = SegmentMasks.from_uncertain(self.forced_masks[k - 2],
                                                        self.mask_resize)
                elif self.mask_use:
                    masks = SegmentMasks(logits, self.threshold, self.criterion,
                                         self.mask_resize)
                state.masks = masks
                features = self.backbone.forward_stage(k, features)
                z = self.head.exit(k)(concat_branches(features))
                if masks is not None and self.aggregation == "copy":
                    z = torch.where(masks.mask(z.shape[-2:]), z, logits)
                if masks is not None:
                    info["masks"].append(masks.mask(z.shape[-2:]))
                logits = z
                outputs.append(logits)
                self._add_cost(state, macs, info)
                timer.lap()
        return outputs, info

    @staticmethod
    def _add_cost(state: ForwardState, macs: List[float], info: dict) -> None:
        """Add the segment that just ran to each image's MACs; append the cumulative GFLOPs."""
        if not state.count:
            return
        for i in range(len(macs)):
            macs[i] += state.dense_macs
        state.dense_macs = 0
        masks = state.masks
        if masks is not None and masks.records:
            sizes = sorted({r[0] for r in masks.records})
            p = torch.stack([masks.computed_fraction(s) for s in sizes], 1).tolist()  # N x S
            index = {s: j for j, s in enumerate(sizes)}
            for size, dense, cout, interpolated in masks.records:
                for i in range(len(macs)):
                    pi = p[i][index[size]]
                    macs[i] += dense * pi
                    if interpolated:  # the original counter's model of its interpolation
                        macs[i] += (1 - pi) * pi * cout * 49 * size[0] * size[1]
            masks.records.clear()
        info["gflops"].append([m / _GIB for m in macs])

    def forward_logits(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.forward_exits(x)[0]

    # ---------------------------------------------------------------- training
    def losses(self, logits, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Class-weighted cross-entropy of every exit's (aggregated, upsampled) logits."""
        weights = self._exit_weights(len(logits))
        out = {}
        for i, (t, w) in enumerate(zip(logits, weights)):
            t = resize_logits(t, targets.shape[-2:])
            out[f"loss_sem_seg_{i}"] = w * F.cross_entropy(
                t, targets, weight=self.class_weights, ignore_index=self.ignore_value)
        return out

    # ---------------------------------------------------------------- eval
    def forward(self, batched_inputs: List[dict]):
        if self.training:
            return super().forward(batched_inputs)
        images, image_sizes = self.preprocess_images(batched_inputs)
        logits, info = self.forward_exits(images, report=self.report_exits)
        results = self.postprocess(logits, images.shape[-2:], image_sizes, batched_inputs)
        n = len(results)
        for i, (r, d, (h, w)) in enumerate(zip(results, batched_inputs, image_sizes)):
            if self.report_exits:
                r["flops"] = {f"exit{k}": g[i] for k, g in enumerate(info["gflops"])}
                r["exit_ms"] = [t / n for t in info["ms"]]
            if info["masks"]:
                size = (d.get("height", h), d.get("width", w))
                r["exit_masks"] = [_mask_at_image_size(m[i], images.shape[-2:], (h, w), size)
                                   for m in info["masks"]]
        return results


def _mask_at_image_size(mask: torch.Tensor, padded, valid, size) -> torch.Tensor:
    """A 1 x h x w stride-4 mask of a padded batch -> bool H x W at the image's output size."""
    m = F.interpolate(mask[None].float(), size=tuple(padded), mode="nearest")[0, 0]
    m = m[: valid[0], : valid[1]]
    if tuple(m.shape) != tuple(size):
        m = F.interpolate(m[None, None], size=tuple(size), mode="nearest")[0, 0]
    return m > 0.5


def _anytime(variant: str, exit_type: str, mask_use: bool, num_classes: int = 19,
             **kwargs) -> AnytimeSegmentor:
    spec = ANYTIME_VARIANTS[variant]
    backbone = HighResolutionNet(spec["backbone"])
    in_channels = [backbone.layer1_channels] + [sum(w) for w in backbone.stage_widths]
    head = AnytimeExits(in_channels, num_classes, exit_type, spec["inter_channel"])
    kwargs.setdefault("pixel_mean", [123.675, 116.28, 103.53])
    kwargs.setdefault("pixel_std", [58.395, 57.12, 57.375])
    return AnytimeSegmentor(backbone=backbone, head=head, mask_use=mask_use, **kwargs)


def anytime_hrnet_w48(exit_type: str = "flex", mask_use: bool = True, **kwargs) -> AnytimeSegmentor:
    """HRNet-W48 with four exits; defaults = ADP-C (RH heads of 128 channels, CA)."""
    return _anytime("w48", exit_type, mask_use, **kwargs)


def anytime_hrnet_w18(exit_type: str = "flex", mask_use: bool = True, **kwargs) -> AnytimeSegmentor:
    """HRNet-W18-Small-v2 with four exits; defaults = ADP-C (RH heads of 64 channels, CA)."""
    return _anytime("w18", exit_type, mask_use, **kwargs)

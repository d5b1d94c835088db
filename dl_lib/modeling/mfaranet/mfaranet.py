"""MFARANet (Zhang et al., arXiv 2402.02286): a real-time segmentation network on a deep-stem
ResNet-18 with multi-level feature aggregation, recursive flow alignment and score fusion.

    image -> ResNet (deep stem, conv2 of res4/res5 dilated 2/4, output stride 32) -> c1..c4
          -> 1x1 compressions to 128 channels
          -> top-down pyramid u4..u1 and bottom-up pyramid d1..d4 (bilinear resampling + sum +
             3x3 conv), merged: F1 = u1, F2 = fuse(u2 + d2), F3 = fuse(u3 + d3), F4 = d4
          -> offset grids between adjacent levels (from the un-warped F_k, F_k+1); F_i is warped
             by grid_sample with grid_i-1, ..., grid_1, one level finer each step, to stride 4
          -> four 1x1 branch classifiers S_i, ASFM: fused = sum_i S_i * sigmoid attention A_i
          -> bilinear x4 to the input size

Every interpolation is bilinear with ``align_corners=True`` and ``grid_sample`` uses
``align_corners=True`` and zero padding, as the original (reference ``mfaranet.md`` section 1.3).
Eval outputs ``sem_seg`` (the fused prediction) and ``sem_seg_exits`` (branches 1..4, then the
fused one), so the evaluator scores each.

One class expresses both original classes: ``fused_branches`` is the scale-choice class's
``Branch_Choose`` and ``stage_dropout`` its ``Dropout_Rate_CNN`` (convert.py maps both checkpoint
layouts). ``branch_only=k`` builds and runs only the subgraph branch k needs (k=2: the "pruned"
MFARANet of the README, which the original only emulates by returning branch 2 of the whole
network); it loads the whole model's weights, strictly for the tensors it has.

Our names (``convert.py`` maps the original's): ``backbone.*`` (the library's ResNet: ``stem``,
``layer1..4``), ``head.compress.{0..3}`` (channel_changes), ``head.top_down.{0..2}`` (stages 1..3,
feature_fuses_up), ``head.bottom_up.{0..2}`` (stages 2..4, feature_fuses_down),
``head.stage_fuse.{0,1}`` (stages 2, 3), ``head.align.{0..2}`` (level pairs (1,2), (2,3), (3,4),
stages_offset: ``coarse_proj``/``fine_proj``/``offset``), ``head.branch_heads.{0..3}``
(multi_loss_head), ``head.attention.{j}`` (one per fused branch, HMSA/ASFM_attentions:
``conv``/``score``), ``head.boundary_heads.{0..3}``.

Training losses (``losses.py``, reference section 2): cross-entropy on the fused output
(``loss_sem_seg``) and per branch OHEM cross-entropy (``loss_branch{i}``), 0.3 x the balanced
boundary BCE of its boundary head (``loss_boundary{i}``) and 0.1 x the cross-entropy on the pixels
that head marks (``loss_boundary_attention{i}``), boundary targets from the labels on the device.
Every parameter gets a gradient, so DDP needs no ``MODEL.DDP.FIND_UNUSED_PARAMETERS``. The
decoder learns at ``MODEL.MFARANET.HEAD_LR_MULTIPLIER`` (10) x the backbone's rate.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dl_lib.layers import Conv2d, get_norm

from ..backbone.resnet import ResNet, norm_factory
from ..meta_arch.semantic_segmentor import SemanticSegmentor, resize_logits
from ..registry import META_ARCH_REGISTRY
from ..shape_spec import ShapeSpec
from .losses import MFARANetLoss

__all__ = ["VARIANTS", "backbone_config", "identity_grid", "offset_grid", "warp",
           "upsample_logits", "StemMaxPool", "OffsetGrid", "ScoreAttention", "MFARANetOutput",
           "MFARANetDecoder", "MFARANet", "mfaranet_r18_deep_stem", "mfaranet_r50_deep_stem"]

# Encoders of the released models: the deep-stem (128-channel stem) ImageNet ResNets, conv2 of
# res4 / res5 dilated 2 / 4 with the strides kept (the original's use_dilation): output stride 32.
VARIANTS = {
    "r18_deep_stem": dict(NAME="resnet18", DEEP_STEM=True, STEM_WIDTH=128,
                          STAGE_DILATIONS=[1, 1, 2, 4], OUTPUT_STRIDE=32,
                          OUT_FEATURES=["res2", "res3", "res4", "res5"]),
    "r50_deep_stem": dict(NAME="resnet50", DEEP_STEM=True, STEM_WIDTH=128,
                          STAGE_DILATIONS=[1, 1, 2, 4], OUTPUT_STRIDE=32,
                          OUT_FEATURES=["res2", "res3", "res4", "res5"]),
}
IN_FEATURES = ("res2", "res3", "res4", "res5")
NUM_LEVELS = 4


def backbone_config(variant: str = "r18_deep_stem") -> dict:
    """``MODEL.BACKBONE`` delta of a variant, for a playground's ``config_from_delta``:
    ``dict(MODEL=dict(BACKBONE=backbone_config("r18_deep_stem"), ...))``."""
    if variant not in VARIANTS:
        raise KeyError(f"Unknown MFARANet variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return {k: list(v) if isinstance(v, list) else v for k, v in VARIANTS[variant].items()}


# ------------------------------------------------------------------------------- functions
def upsample_logits(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize, ``align_corners=True`` (every MFARANet interpolation); no-op if equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def identity_grid(n: int, h: int, w: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The sampling grid of no displacement: N×h×w×2, ``[..., 0]`` = x = linspace(-1, 1, w) along
    the width, ``[..., 1]`` = y = linspace(-1, 1, h) (the ``align_corners=True`` convention)."""
    ys = torch.linspace(-1.0, 1.0, h, dtype=dtype, device=device)
    xs = torch.linspace(-1.0, 1.0, w, dtype=dtype, device=device)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # h x w x 2
    return grid.unsqueeze(0).expand(n, h, w, 2)


def offset_grid(flow: torch.Tensor) -> torch.Tensor:
    """N×2×h×w flow (channel 0 along x, 1 along y) -> N×h×w×2 grid ``identity + flow / (w, h)``.

    The original divides by (w, h), not by (w/2, h/2) as the paper's Eq. (2) (one grid unit is
    half the image): we keep its code, which the released weights were trained with."""
    n, _, h, w = flow.shape
    norm = torch.tensor([w, h], dtype=flow.dtype, device=flow.device)
    return identity_grid(n, h, w, flow.dtype, flow.device) + flow.permute(0, 2, 3, 1) / norm


def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample N×C×H×W ``x`` at an N×h×w×2 ``grid`` -> N×C×h×w (bilinear, zero padding,
    ``align_corners=True``: with :func:`identity_grid` this is an ``align_corners=True`` resize)."""
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class StemMaxPool(nn.MaxPool2d):
    """The stem's 3×3 / stride 2 / pad 1 max-pool, without the argmax indices at inference.

    ``nn.MaxPool2d`` on an NCHW CPU tensor runs ``max_pool2d_with_indices`` even under
    ``inference_mode`` (about 6% of MFARANet's eval at 512×1024: its input is the 128-channel
    stride-2 map). Where no gradient is wanted, the input is NCHW-contiguous and H, W are even,
    this computes the same maxima as two separable ``torch.maximum`` passes (each output takes
    columns / rows 2j-1, 2j, 2j+1; NaN propagates like the native kernel), the result equal
    bit for bit, in about half the time on this CPU. Otherwise (training with gradients,
    channels-last, odd sizes) it is ``nn.MaxPool2d``. No parameters: checkpoints do not change.
    """

    def __init__(self):
        super().__init__(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if ((torch.is_grad_enabled() and x.requires_grad) or x.dim() != 4 or x.shape[-1] % 2
                or x.shape[-2] % 2 or x.shape[-1] < 2 or x.shape[-2] < 2
                or not x.is_contiguous()):
            return super().forward(x)
        even, odd = x[..., 0::2], x[..., 1::2]
        cols = torch.maximum(even, odd)
        cols[..., 1:] = torch.maximum(cols[..., 1:], odd[..., :-1])
        even, odd = cols[..., 0::2, :], cols[..., 1::2, :]
        out = torch.maximum(even, odd)
        out[..., 1:, :] = torch.maximum(out[..., 1:, :], odd[..., :-1, :])
        return out


def _uses_stem_max_pool(backbone: nn.Module) -> None:
    """Give the library ResNet's stem a :class:`StemMaxPool` (same outputs, no indices at eval)."""
    pool = getattr(backbone, "maxpool", None)
    if (isinstance(backbone, ResNet) and type(pool) is nn.MaxPool2d
            and (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
            in ((3, 2, 1, 1, False), ((3, 3), (2, 2), (1, 1), (1, 1), False))):
        backbone.maxpool = StemMaxPool()


def _conv_norm_relu(c_in: int, c_out: int, kernel: int, norm: str) -> Conv2d:
    return Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False, norm=get_norm(norm, c_out),
                  activation=nn.ReLU(inplace=True))


# ------------------------------------------------------------------------------- blocks
class OffsetGrid(nn.Module):
    """The recursive-alignment offset network of one pair of adjacent levels (SFNet's flow).

    ``forward(fine, coarse)``: fine N×C×h×w, coarse N×C×h'×w' (h' < h) -> the N×h×w×2 grid that
    samples the coarse level onto the fine one: ``offset_grid(offset([fine_proj(fine),
    up(coarse_proj(coarse))]))``, all convs bias-free. A grid, not a warped feature: the model
    chains the grids of several pairs.
    """

    def __init__(self, channels: int, mid_channels: int):
        super().__init__()
        self.coarse_proj = nn.Conv2d(channels, mid_channels, 1, bias=False)
        self.fine_proj = nn.Conv2d(channels, mid_channels, 1, bias=False)
        self.offset = nn.Conv2d(2 * mid_channels, 2, 3, padding=1, bias=False)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        coarse = upsample_logits(self.coarse_proj(coarse), fine.shape[-2:])
        flow = self.offset(torch.cat([self.fine_proj(fine), coarse], dim=1))
        return offset_grid(flow)


class ScoreAttention(nn.Module):
    """ASFM attention of one branch: N×C×h×w features -> N×K×h×w weights in (0, 1) =
    sigmoid(score(dropout(ReLU(BN(conv3x3(x)))))); the dropout is element-wise (nn.Dropout)."""

    def __init__(self, channels: int, num_classes: int, norm: str = "BN", dropout: float = 0.5):
        super().__init__()
        self.conv = _conv_norm_relu(channels, channels // 2, 3, norm)
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Conv2d(channels // 2, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.score(self.dropout(self.conv(x))))


@dataclass
class MFARANetOutput:
    """What the decoder computed, all at stride 4 (N×K×H/4×W/4; boundaries N×1×H/4×W/4).

    ``branches``: branch index (1..4) -> scores of the branches computed (one with
    ``branch_only``); ``fused``: the ASFM sum (None with ``branch_only``); ``boundaries``: branch
    index -> boundary logits, only when asked for and the heads exist."""

    branches: Dict[int, torch.Tensor]
    fused: Optional[torch.Tensor]
    boundaries: Dict[int, torch.Tensor]


class MFARANetDecoder(nn.Module):
    """MFARANet's decoder on four backbone stages (strides 4, 8, 16, 32).

    Args:
        in_channels: channels of the four stages (ResNet-18: 64, 128, 256, 512).
        num_classes: K.
        channels: width of every decoder feature (128).
        norm: norm after the decoder convs (``"BN"``; ``""``: the BN-free copy).
        fused_branches: branches (1..4) the ASFM fuses, one attention head each in this order;
            a single branch: no attention, the fused output is that branch's scores.
        attention_dropout: dropout rate inside the attention heads.
        boundary_heads: build the per-branch boundary logits (training only).
        branch_only: 0 = everything; k = only the subgraph of branch k (no attention, no
            boundary heads, only the pyramid paths, fusions and grids branch k reads).

    ``forward(features)``: list of the four N×C_i×H_i×W_i stages -> :class:`MFARANetOutput`.
    ``output_stride`` = 4.
    """

    output_stride = 4

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 128,
                 norm: str = "BN", fused_branches: Sequence[int] = (1, 2, 3, 4),
                 attention_dropout: float = 0.5, boundary_heads: bool = True,
                 branch_only: int = 0):
        super().__init__()
        if len(in_channels) != NUM_LEVELS:
            raise ValueError(f"MFARANet needs four backbone stages (res2..res5), got channels "
                             f"{list(in_channels)}")
        fused_branches = [int(b) for b in fused_branches]
        if (not fused_branches or len(set(fused_branches)) != len(fused_branches)
                or not all(1 <= b <= NUM_LEVELS for b in fused_branches)):
            raise ValueError(f"MODEL.MFARANET.FUSED_BRANCHES {fused_branches} must be distinct "
                             "branch indices in 1..4 (1 = stride 4), e.g. [1, 2, 3, 4]")
        if branch_only not in range(NUM_LEVELS + 1):
            raise ValueError(f"MODEL.MFARANET.BRANCH_ONLY {branch_only} must be 0 (the whole "
                             "network) or a branch index 1..4 (2 = the pruned model)")
        self.num_classes = num_classes
        self.fused_branches = fused_branches
        self.branch_only = int(branch_only)
        # Levels the output needs: F_1..F_k (grid_j reads F_j and F_j+1) for branch k.
        self.num_levels = self.branch_only or NUM_LEVELS
        n = self.num_levels
        idx = lambda r: [str(i) for i in r]  # noqa: E731  ModuleDict keys = original indices

        self.compress = nn.ModuleList(_conv_norm_relu(c, channels, 1, norm) for c in in_channels)
        # top_down[i] fuses at stage i+1 (applied for stages 3, 2, 1): u1 needs all of them.
        self.top_down = nn.ModuleDict({i: _conv_norm_relu(channels, channels, 3, norm)
                                       for i in idx(range(NUM_LEVELS - 1))})
        # bottom_up[i] fuses at stage i+2: d_k needs bottom_up[0..k-2].
        self.bottom_up = nn.ModuleDict({i: _conv_norm_relu(channels, channels, 3, norm)
                                        for i in idx(range(n - 1))})
        # stage_fuse[i] merges u + d at stage i+2 (stages 2 and 3 only).
        self.stage_fuse = nn.ModuleDict({i: _conv_norm_relu(channels, channels, 3, norm)
                                         for i in idx(range(min(n, NUM_LEVELS - 1) - 1))})
        outputs = [self.branch_only] if self.branch_only else list(range(1, NUM_LEVELS + 1))
        self.branch_heads = nn.ModuleDict({str(b - 1): nn.Conv2d(channels, num_classes, 1)
                                           for b in outputs})
        # align[j]: grid of level pair (j+1, j+2).
        self.align = nn.ModuleDict({i: OffsetGrid(channels, channels // 2)
                                    for i in idx(range(n - 1))})
        self.attention = None
        if not self.branch_only and len(fused_branches) > 1:
            self.attention = nn.ModuleList(
                ScoreAttention(channels, num_classes, norm, attention_dropout)
                for _ in fused_branches)
        self.boundary_heads = None
        if boundary_heads and not self.branch_only:
            self.boundary_heads = nn.ModuleList(nn.Conv2d(channels, 1, 1)
                                                for _ in range(NUM_LEVELS))

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        missing = [f for f in IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(f"MFARANet reads backbone features {list(IN_FEATURES)}; the backbone "
                             f"gives {list(input_shape)} (set MODEL.BACKBONE.OUT_FEATURES)")
        m = cfg.MODEL.MFARANET
        return dict(in_channels=[input_shape[f].channels for f in IN_FEATURES],
                    num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
                    channels=m.DECODER_CHANNELS, norm=m.NORM, fused_branches=m.FUSED_BRANCHES,
                    attention_dropout=m.ATTENTION_DROPOUT, boundary_heads=m.BOUNDARY_HEADS,
                    branch_only=m.BRANCH_ONLY)

    def levels(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The merged, un-warped level features F_1..F_n (n = ``num_levels``); F_i has stride
        4·2^(i-1)."""
        c = [conv(f) for conv, f in zip(self.compress, features)]
        up = [None] * NUM_LEVELS
        up[-1] = f = c[-1]
        for i in reversed(range(NUM_LEVELS - 1)):  # top-down: stages 3, 2, 1
            f = self.top_down[str(i)](upsample_logits(f, c[i].shape[-2:]) + c[i])
            up[i] = f
        down = [c[0]]
        f = c[0]
        for i in range(1, self.num_levels):  # bottom-up: bilinear downsampling, not strided convs
            f = self.bottom_up[str(i - 1)](upsample_logits(f, c[i].shape[-2:]) + c[i])
            down.append(f)
        levels = [up[0]]
        for i in range(1, self.num_levels):
            levels.append(down[i] if i == NUM_LEVELS - 1 else
                          self.stage_fuse[str(i - 1)](up[i] + down[i]))
        return levels

    def forward(self, features: Sequence[torch.Tensor],
                with_boundaries: bool = False) -> MFARANetOutput:
        levels = self.levels(features)
        # Grids from the un-warped levels, then each level warped down to stride 4.
        grids = [self.align[str(j)](levels[j], levels[j + 1]) for j in range(self.num_levels - 1)]
        wanted = [self.branch_only] if self.branch_only else range(1, NUM_LEVELS + 1)
        aligned = {}
        for b in wanted:
            x = levels[b - 1]
            for j in reversed(range(b - 1)):
                x = warp(x, grids[j])
            aligned[b] = x
        branches = {b: self.branch_heads[str(b - 1)](aligned[b]) for b in wanted}
        fused = None
        if not self.branch_only:
            if self.attention is None:
                fused = branches[self.fused_branches[0]]
            else:
                fused = sum(branches[b] * att(aligned[b])
                            for b, att in zip(self.fused_branches, self.attention))
        boundaries = {}
        if with_boundaries and self.boundary_heads is not None:
            boundaries = {b: self.boundary_heads[b - 1](aligned[b]) for b in wanted}
        return MFARANetOutput(branches=branches, fused=fused, boundaries=boundaries)


# ------------------------------------------------------------------------------- the model
@META_ARCH_REGISTRY.register()
class MFARANet(SemanticSegmentor):
    """MFARANet segmentor (see the module doc).

    Args:
        backbone: a Backbone with ``res2``..``res5`` (a :class:`ResNet` when ``stage_dropout``
            is used: the dropouts sit between its stages).
        head: :class:`MFARANetDecoder`.
        stage_dropout: five Dropout2d rates: after the stem (before the max-pool) and after
            res2..res5 (the scale-choice class's ``Dropout_Rate_CNN``); zeros = none.
        criterion: the training losses (:class:`MFARANetLoss`; default: the original's values).
        head_lr_multiplier: learning-rate factor of every parameter outside the backbone.
        Others as :class:`SemanticSegmentor`.

    ``forward_logits(x)`` -> stride-4 logits ``[S_1, S_2, S_3, S_4, fused]`` (a single tensor
    with ``branch_only``). Eval: ``sem_seg`` = fused (or branch k), ``sem_seg_exits`` = the list,
    each upsampled x4 with ``align_corners=True`` to the input size, then to (height, width).
    """

    def __init__(self, *, backbone: nn.Module, head: MFARANetDecoder, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], ignore_value: int = 255, size_divisibility: int = 0,
                 stage_dropout: Sequence[float] = (0.0,) * 5,
                 criterion: Optional[MFARANetLoss] = None, head_lr_multiplier: float = 10.0,
                 predict: str = "all"):
        if predict not in ("all", "fused"):
            raise ValueError(f"MODEL.MFARANET.PREDICT {predict!r} must be 'all' (every branch and "
                             "the fused output) or 'fused' (the fused output alone)")
        super().__init__(backbone=backbone, head=head, pixel_mean=pixel_mean, pixel_std=pixel_std,
                         ignore_value=ignore_value, size_divisibility=size_divisibility)
        self.predict = predict
        _uses_stem_max_pool(self.backbone)
        self.criterion = criterion or MFARANetLoss(ignore_index=ignore_value)
        self.head_lr_multiplier = float(head_lr_multiplier)
        rates = [float(p) for p in stage_dropout]
        if len(rates) != 5 or not all(0.0 <= p < 1.0 for p in rates):
            raise ValueError(f"MODEL.MFARANET.STAGE_DROPOUT {rates} must be five rates in [0, 1) "
                             "(after the stem and after res2..res5)")
        self.stage_dropout = None
        if any(rates):
            if not isinstance(backbone, ResNet):
                raise ValueError("MODEL.MFARANET.STAGE_DROPOUT needs the library's ResNet backbone "
                                 f"(dropouts between its stages), got {type(backbone).__name__}")
            self.stage_dropout = nn.ModuleList(nn.Dropout2d(p) if p else nn.Identity()
                                               for p in rates)

    @classmethod
    def from_config(cls, cfg) -> dict:
        from ..build import build_backbone

        backbone = build_backbone(cfg)
        head = MFARANetDecoder(**MFARANetDecoder.from_config(cfg, backbone.output_shape()))
        return dict(backbone=backbone, head=head, pixel_mean=cfg.MODEL.PIXEL_MEAN,
                    pixel_std=cfg.MODEL.PIXEL_STD,
                    ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                    stage_dropout=cfg.MODEL.MFARANET.STAGE_DROPOUT,
                    criterion=MFARANetLoss(**MFARANetLoss.from_config(cfg)),
                    head_lr_multiplier=cfg.MODEL.MFARANET.HEAD_LR_MULTIPLIER,
                    predict=cfg.MODEL.MFARANET.PREDICT)

    def param_lr_multiplier(self, name: str) -> float:
        """The optimizer's factor on parameter ``name``: 1 in the backbone, ``head_lr_multiplier``
        elsewhere (the original: backbone at the base rate, every other child x10)."""
        return 1.0 if name.startswith("backbone.") else self.head_lr_multiplier

    def published_cost_convention(self) -> dict:
        """How the authors count the cost (reference section 5), for ``dl_bench``: HRNet's
        summary (conv MACs / 2^30, labelled "GFLOPs") on the copy without decoder BNs and
        without the training-only boundary heads (their ``MFARANet_Speed``)."""
        return {"label": "authors' GFLOPs", "convention": "hrnet",
                "opts": {"MODEL.MFARANET.NORM": "", "MODEL.MFARANET.BOUNDARY_HEADS": False}}

    def architecture(self) -> dict:
        """Config values the weights depend on beyond the playground's. ``BRANCH_ONLY`` only
        when set: a whole model's checkpoint must still load into a branch-only model."""
        arch = {"MODEL.MFARANET.FUSED_BRANCHES": list(self.head.fused_branches)}
        if self.head.branch_only:
            arch["MODEL.MFARANET.BRANCH_ONLY"] = self.head.branch_only
        if self.head.boundary_heads is None and not self.head.branch_only:
            arch["MODEL.MFARANET.BOUNDARY_HEADS"] = False
        return arch

    @property
    def output_stride(self) -> int:
        return MFARANetDecoder.output_stride

    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Normalised N×3×H×W -> the four backbone stages (res2..res5), with the stage dropouts."""
        if self.stage_dropout is None:
            features = self.backbone(x)
            return [features[f] for f in IN_FEATURES]
        b, drop = self.backbone, self.stage_dropout
        x = b.stem(x) if b.stem is not None else b.relu(b.bn1(b.conv1(x)))
        x = b.maxpool(drop[0](x))
        stages = []
        for i in range(1, 5):
            x = drop[i](getattr(b, f"layer{i}")(x))
            stages.append(x)
        return stages

    def forward_outputs(self, x: torch.Tensor, with_boundaries: bool = False) -> MFARANetOutput:
        """Normalised, padded N×3×H×W -> everything the decoder computed (stride 4)."""
        return self.head(self.encode(x), with_boundaries=with_boundaries)

    def forward_logits(self, x: torch.Tensor):
        out = self.forward_outputs(x)
        if self.head.branch_only:
            return out.branches[self.head.branch_only]
        return [out.branches[b] for b in sorted(out.branches)] + [out.fused]

    def predict_logits(self, x: torch.Tensor, native_resolution: bool = False):
        if native_resolution:
            return super().predict_logits(x, native_resolution=True)
        height, width = x.shape[-2:]
        d = max(self.size_divisibility, 1)
        padded = F.pad(x, (0, -width % d, 0, -height % d))
        logits = self.forward_logits(padded)
        if self.predict == "fused" and isinstance(logits, list):
            logits = logits[-1]  # only the fused output is resized to the input

        def finish(t):
            return upsample_logits(t, padded.shape[-2:])[..., :height, :width]

        return [finish(t) for t in logits] if isinstance(logits, list) else finish(logits)

    def forward(self, batched_inputs: List[dict]):
        """As :class:`SemanticSegmentor`; training also runs the boundary heads for the losses."""
        if not self.training:
            return super().forward(batched_inputs)
        images, _ = self.preprocess_images(batched_inputs)
        targets = self.preprocess_targets(batched_inputs, images.shape[-2:])
        return self.losses(self.forward_outputs(images, with_boundaries=True), targets)

    def losses(self, outputs: MFARANetOutput, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The original's joint supervision of ``outputs`` (from ``forward_outputs``) against
        N×H×W ``targets`` (:class:`MFARANetLoss`): ``loss_sem_seg``, and per branch i
        ``loss_branch{i}``, ``loss_boundary{i}``, ``loss_boundary_attention{i}`` (the last two
        with boundary heads). One fused branch: no ``loss_sem_seg`` (the output is that branch;
        the original skips the fused CE). ``branch_only`` k: ``loss_branch{k}`` alone."""
        fused = outputs.fused if len(self.head.fused_branches) > 1 else None
        return self.criterion(outputs.branches, fused, outputs.boundaries, targets)

    def postprocess(self, logits, padded_size: Sequence[int], image_sizes: List[Tuple[int, int]],
                    batched_inputs: List[dict]) -> List[dict]:
        """x4 upsampling (``align_corners=True``) to the padded input, crop, resize to
        (height, width) when that differs: ``sem_seg`` (and ``sem_seg_exits`` for the whole net)."""
        several = isinstance(logits, list)
        exits = [upsample_logits(t, padded_size) for t in (logits if several else [logits])]
        results = []
        for i, (d, (h, w)) in enumerate(zip(batched_inputs, image_sizes)):
            size = (d.get("height", h), d.get("width", w))
            per_exit = [resize_logits(t[i, :, :h, :w], size) for t in exits]
            out = {"sem_seg": per_exit[-1]}
            if several:
                out["sem_seg_exits"] = per_exit
            results.append(out)
        return results


# ------------------------------------------------------------------------------- constructors
def _mfaranet(variant: str, num_classes: int = 19, **kwargs) -> MFARANet:
    b = VARIANTS[variant]
    backbone = ResNet(b["NAME"], norm_layer=norm_factory("BN"), deep_stem=True,
                      stem_width=b["STEM_WIDTH"], stage_dilations=b["STAGE_DILATIONS"])
    stage_dropout = kwargs.pop("stage_dropout", (0.0,) * 5)
    head = MFARANetDecoder([backbone.output_shape()[f].channels for f in IN_FEATURES],
                           num_classes, **kwargs)
    return MFARANet(backbone=backbone, head=head, pixel_mean=[123.675, 116.28, 103.53],
                    pixel_std=[58.395, 57.12, 57.375], stage_dropout=stage_dropout)


def mfaranet_r18_deep_stem(num_classes: int = 19, **kwargs) -> MFARANet:
    """The released MFARANet: deep-stem ResNet-18 (12,997,264 parameters with K=19)."""
    return _mfaranet("r18_deep_stem", num_classes, **kwargs)


def mfaranet_r50_deep_stem(num_classes: int = 19, **kwargs) -> MFARANet:
    """MFARANet on the deep-stem ResNet-50 (25,672,720 parameters with K=19; 25,672,204
    without the training-only boundary heads)."""
    return _mfaranet("r50_deep_stem", num_classes, **kwargs)

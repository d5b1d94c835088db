"""The ORIGINAL MFARANet eval forward, restated as plain functions on the original state-dict
names, from the reference doc (``mfaranet.md`` sections 1.1-1.4) and its key dump.

It shares no code with ``dl_lib.modeling.mfaranet``: it reads the weights by the original's names
(``layer0.0.0``, ``channel_changes``, ``HMSA_attentions``...; the scale-choice class's nesting
``layerX.0.<block>`` and ``ASFM_attentions`` with ``scale_choice=True``), so a test comparing the
two checks the converters and our model against the described computation.

- layer0: conv 3x3 s2 (0.0.0) BN (0.0.1) ReLU, conv (0.0.3) BN (0.0.4) ReLU, conv (0.0.6),
  BN (0.1), ReLU, max-pool 3x3 s2 p1.
- layer1..4: BasicBlocks, stride 2 on conv1 of the first block of layers 2-4 (and its 1x1
  downsample); conv2 of layer3 / layer4 dilated (and padded) 2 / 4, strides kept.
- c_i = ReLU(BN(conv1x1(stage_i))); top-down f = c4, f = fuse_up[i](up(f) + c_i) for i = 3, 2, 1
  (fuse_up index i-1); bottom-up f = c1, f = fuse_down[i](resize(f) + c_i) for i = 2, 3, 4 (index
  i-2); F1 = u1, F2 = stage_fuses.0(u2 + d2), F3 = stage_fuses.1(u3 + d3), F4 = d4.
- grid_k (k = 1, 2, 3) from F_k (low) and F_k+1 (high): h = up(cc1(high)), l = cc2(low),
  flow = offset_map([l, h]); grid = linspace base (x along the width first) + flow / (W, H).
- F_i warped by grid_i-1, ..., grid_1 (grid_sample, align_corners=True); S_i = head_i(F_i);
  final = sum over the chosen branches of S_i * sigmoid(att_j(F_i)) (one branch: S_i);
  out = bilinear (align_corners=True) to the input size. Every resize is bilinear with
  align_corners=True.

``original_forward(..., train=True)`` is the training forward: BN on batch statistics (running
statistics updated, momentum 0.1), the attention heads' element-wise Dropout(0.5) between their
ReLU and last conv, and the boundary logits E_i = boundary_heads.i.0(F_i) of the aligned levels.
The training loss (reference section 2), restated as the original computes it:

- ``original_boundary_target``: the data loader's boundary GT, one sample at a time on the CPU:
  the label map mean-filtered with a 5x5 box (border: reflect-101, OpenCV's default **[inference]**,
  the reference does not name the border), boundary where |filtered - label| > 0.005;
- ``original_ohem_ce``: softmax probability of the label, all pixels of the batch argsorted, the
  threshold 0.7 raised to the probability of the ``min_kept``-th hardest valid pixel when larger,
  CE over the pixels at or below it; fewer than ``min_kept`` valid pixels: plain CE;
- ``original_edge_bce``: BCE-with-logits, weights from numpy on the CPU (positives #neg/#all,
  negatives #pos/#all, labels > 1 weight 0), mean over all pixels;
- ``original_edge_attention_ce``: labels kept where the raw boundary logit > 0.8 (others 255),
  per image a numpy histogram of the kept labels (bins 0..K) gives w_c = 1 + (1 - f_c) for the
  classes present (1 otherwise), the weighted NLL mean of that image; images **summed** (an image
  with no kept pixel gives NaN, as the original);
- ``original_training_loss``: CE(out, y) + sum_i [OHEM(S_i up) + 0.3 BCE(E_i up, b) +
  0.1 att(S_i up, y, E_i up)], up = bilinear align_corners=True to the label size.
"""
from collections import OrderedDict
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-5  # nn.BatchNorm2d's default


def read_key_dump(path: str) -> Dict[str, "OrderedDict"]:
    """Sections of the key dump: title line (between two ``====`` lines) -> key -> shape."""
    sections, title, lines = {}, None, open(path).read().splitlines()
    for i, line in enumerate(lines):
        between = 0 < i < len(lines) - 1 and lines[i - 1].startswith("====")
        if between and lines[i + 1].startswith("===="):
            title = line
            sections[title] = OrderedDict()
        elif "\t" in line and title is not None:
            key, shape = line.split("\t")
            sections[title][key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return sections


def random_state_dict(shapes: Dict[str, tuple], seed: int = 0) -> "OrderedDict":
    """Weights of the given shapes: conv weights ~N(0, 1/fan_in), BN affine around (1, 0),
    running stats of a plausible range, ``num_batches_tracked`` counters."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            sd[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean"):
            sd[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            sd[key] = torch.randn(shape, generator=g) / fan_in ** 0.5
        elif key.endswith("weight"):  # BN scale
            sd[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:  # BN shift, conv bias
            sd[key] = 0.1 * torch.randn(shape, generator=g)
    return sd


class _W:
    def __init__(self, sd: Dict[str, torch.Tensor], scale_choice: bool, train: bool = False):
        self.sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
        self.scale_choice = scale_choice
        self.train = train  # BN on batch statistics, running statistics updated

    def name(self, prefix: str) -> str:
        if self.scale_choice:
            if prefix.startswith(("layer1.", "layer2.", "layer3.", "layer4.")):
                prefix = prefix[:7] + "0." + prefix[7:]
            prefix = prefix.replace("HMSA_attentions.", "ASFM_attentions.")
        return prefix

    def conv(self, prefix, x, stride=1, padding=0, dilation=1):
        p = self.name(prefix)
        return F.conv2d(x, self.sd[p + ".weight"], self.sd.get(p + ".bias"), stride, padding,
                        dilation)

    def bn(self, prefix, x):
        p = self.name(prefix)
        return F.batch_norm(x, self.sd[p + ".running_mean"], self.sd[p + ".running_var"],
                            self.sd[p + ".weight"], self.sd[p + ".bias"], self.train, 0.1, EPS)


def _resize(x, size):
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _basic_block(w: _W, prefix: str, x, stride: int, dilation: int):
    out = F.relu(w.bn(f"{prefix}.bn1", w.conv(f"{prefix}.conv1", x, stride, 1)))
    out = w.bn(f"{prefix}.bn2", w.conv(f"{prefix}.conv2", out, 1, dilation, dilation))
    if w.name(f"{prefix}.downsample.0") + ".weight" in w.sd:
        x = w.bn(f"{prefix}.downsample.1", w.conv(f"{prefix}.downsample.0", x, stride))
    return F.relu(out + x)


def backbone_stages(w: _W, x) -> List[torch.Tensor]:
    x = F.relu(w.bn("layer0.0.1", w.conv("layer0.0.0", x, 2, 1)))
    x = F.relu(w.bn("layer0.0.4", w.conv("layer0.0.3", x, 1, 1)))
    x = F.relu(w.bn("layer0.1", w.conv("layer0.0.6", x, 1, 1)))
    x = F.max_pool2d(x, 3, 2, 1)
    stages = []
    for layer, (stride, dilation) in enumerate([(1, 1), (2, 1), (2, 2), (2, 4)], start=1):
        for block in range(2):  # ResNet-18
            x = _basic_block(w, f"layer{layer}.{block}", x, stride if block == 0 else 1, dilation)
        stages.append(x)
    return stages


def _cbr(w: _W, prefix, x, padding):
    return F.relu(w.bn(f"{prefix}.1", w.conv(f"{prefix}.0", x, 1, padding)))


def _grid(w: _W, k: int, low, high):
    n, _, h, wd = low.shape
    hi = _resize(w.conv(f"stages_offset.{k}.channel_change1", high), (h, wd))
    lo = w.conv(f"stages_offset.{k}.channel_change2", low)
    flow = w.conv(f"stages_offset.{k}.offset_map", torch.cat([lo, hi], 1), 1, 1)
    base_y = torch.linspace(-1, 1, h).view(-1, 1).repeat(1, wd)
    base_x = torch.linspace(-1, 1, wd).repeat(h, 1)
    base = torch.stack([base_x, base_y], dim=2).unsqueeze(0).repeat(n, 1, 1, 1)
    return base + flow.permute(0, 2, 3, 1) / torch.tensor([wd, h], dtype=low.dtype)


def original_forward(sd: Dict[str, torch.Tensor], x: torch.Tensor,
                     fused_branches: Sequence[int] = (1, 2, 3, 4), scale_choice: bool = False,
                     train: bool = False, attention_dropout: float = 0.5) -> Dict[str, object]:
    """Eval forward of the original on normalised N×3×H×W ``x`` -> ``{"out": N×K×H×W,
    "branches": [S_1..S_4] at stride 4, "final": the fused stride-4 map}``. ``train``: the
    training forward (BN batch statistics, attention dropout ``attention_dropout``), which adds
    ``"boundaries"``: [E_1..E_4] (N×1 at stride 4) when the state dict has the boundary heads."""
    w = _W(sd, scale_choice, train)
    c = [_cbr(w, f"channel_changes.{i}", s, 0) for i, s in enumerate(backbone_stages(w, x))]
    up = [None, None, None, c[3]]
    f = c[3]
    for i in (2, 1, 0):
        f = _cbr(w, f"feature_fuses_up.{i}", _resize(f, c[i].shape[-2:]) + c[i], 1)
        up[i] = f
    down = [c[0]]
    f = c[0]
    for i in (1, 2, 3):
        f = _cbr(w, f"feature_fuses_down.{i - 1}", _resize(f, c[i].shape[-2:]) + c[i], 1)
        down.append(f)
    feats = [up[0], _cbr(w, "stage_fuses.0", up[1] + down[1], 1),
             _cbr(w, "stage_fuses.1", up[2] + down[2], 1), down[3]]
    grids = [_grid(w, k, feats[k], feats[k + 1]) for k in range(3)]
    for i in (2, 3, 4):
        for k in reversed(range(i - 1)):
            feats[i - 1] = F.grid_sample(feats[i - 1], grids[k], align_corners=True)
    scores = [w.conv(f"multi_loss_head.{i}.0", feats[i]) for i in range(4)]
    if len(fused_branches) == 1:
        final = scores[fused_branches[0] - 1]
    else:
        final = 0
        for j, b in enumerate(fused_branches):
            a = F.relu(w.bn(f"HMSA_attentions.{j}.1",
                            w.conv(f"HMSA_attentions.{j}.0", feats[b - 1], 1, 1)))
            if train:  # HMSA_attentions.{j}.3: element-wise Dropout
                a = F.dropout(a, attention_dropout, training=True)
            a = torch.sigmoid(w.conv(f"HMSA_attentions.{j}.4", a))
            final = final + scores[b - 1] * a
    out = {"out": _resize(final, x.shape[-2:]), "branches": scores, "final": final}
    if train and "boundary_heads.0.0.weight" in w.sd:
        out["boundaries"] = [w.conv(f"boundary_heads.{i}.0", feats[i]) for i in range(4)]
    return out


# ------------------------------------------------------------------------- training loss
IGNORE = 255


def original_boundary_target(label: np.ndarray, kernel: int = 5) -> np.ndarray:
    """The data loader's boundary GT of one H×W label map (numpy, per sample) -> 1×H×W float32:
    1 where the ``kernel``×``kernel`` box mean of the labels (reflect-101 border) differs from
    the label by more than 0.005."""
    lab = label.astype(np.float64)
    pad = kernel // 2
    padded = np.pad(lab, pad, mode="reflect")  # reflect-101: the edge pixel is not repeated
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel, kernel))
    mean = windows.mean(axis=(-1, -2))
    return (np.abs(mean - lab) > 0.005).astype(np.float32)[None]


def original_ohem_ce(scores: torch.Tensor, labels: torch.Tensor, thresh: float = 0.7,
                     min_kept: int = 100_000) -> torch.Tensor:
    """OHEM cross-entropy of N×K×H×W ``scores`` against N×H×W ``labels``, over the batch."""
    n, k = scores.shape[:2]
    target = labels.reshape(-1)
    valid = target != IGNORE
    num_valid = int(valid.sum())
    if min_kept > num_valid:  # the original only prints the count
        return F.cross_entropy(scores, labels, ignore_index=IGNORE)
    prob = F.softmax(scores, dim=1).transpose(0, 1).reshape(k, -1)
    prob = prob.masked_fill(~valid[None], 1.0)  # ignored pixels sort last
    label_prob = prob[target.masked_fill(~valid, 0), torch.arange(target.numel())]
    threshold = thresh
    if min_kept > 0:
        order = label_prob.argsort()
        at = label_prob[order[min(order.numel(), min_kept) - 1]]
        if at > thresh:
            threshold = at
    kept = valid & (label_prob <= threshold)
    target = target.masked_fill(~kept, IGNORE).view_as(labels)
    return F.cross_entropy(scores, target, ignore_index=IGNORE)


def original_edge_bce(edge_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class-balanced BCE of N×1×H×W boundary logits against N×1×H×W {0, 1} targets, the
    weights computed in numpy on the CPU every call."""
    log_p = edge_logits.transpose(1, 2).transpose(2, 3).contiguous().view(1, -1)
    t = target.transpose(1, 2).transpose(2, 3).contiguous().view(1, -1)
    t_np = t.detach().cpu().numpy()
    pos, neg = t_np == 1, t_np == 0
    pos_num, neg_num = pos.sum(), neg.sum()
    total = pos_num + neg_num
    weight = np.zeros(log_p.shape, dtype=np.float32)
    weight[pos] = neg_num / total
    weight[neg] = pos_num / total
    return F.binary_cross_entropy_with_logits(log_p, t, torch.from_numpy(weight),
                                              reduction="mean")


def _image_class_weights(target: np.ndarray, num_classes: int) -> np.ndarray:
    hist = np.histogram(target.flatten(), range(num_classes + 1), density=True)[0]
    return ((hist != 0) * 1.0 * (1 - hist) + 1).astype(np.float32)


def original_edge_attention_ce(scores: torch.Tensor, labels: torch.Tensor,
                               edge_logits: torch.Tensor, thresh: float = 0.8) -> torch.Tensor:
    """Image-weighted CE on the pixels whose raw boundary logit exceeds ``thresh``, summed
    over the images of the batch."""
    k = scores.shape[1]
    target = torch.where(edge_logits.max(1)[0] > thresh, labels, torch.full_like(labels, IGNORE))
    target_np = target.cpu().numpy()
    loss = 0.0
    for i in range(scores.shape[0]):
        with np.errstate(invalid="ignore", divide="ignore"):  # no kept pixel: NaN, as the original
            weight = torch.from_numpy(_image_class_weights(target_np[i], k))
        loss = loss + F.nll_loss(F.log_softmax(scores[i:i + 1], dim=1), target[i:i + 1],
                                 weight=weight, ignore_index=IGNORE)
    return loss


def original_training_loss(out: Dict[str, object], labels: torch.Tensor,
                           boundary: torch.Tensor, min_kept: int = 100_000,
                           ohem_thresh: float = 0.7, attention_thresh: float = 0.8
                           ) -> Dict[str, torch.Tensor]:
    """Every term of the original's joint loss of a ``original_forward(train=True)`` output
    against N×H×W labels and the loader's N×1×H×W boundary GT, named as ours (the boundary
    terms already weighted 0.3 / 0.1); ``"total"`` is their sum."""
    size = labels.shape[-2:]
    terms = {"loss_sem_seg": F.cross_entropy(out["out"], labels, ignore_index=IGNORE)}
    for i, (s, e) in enumerate(zip(out["branches"], out["boundaries"]), start=1):
        s, e = _resize(s, size), _resize(e, size)
        terms[f"loss_branch{i}"] = original_ohem_ce(s, labels, ohem_thresh, min_kept)
        terms[f"loss_boundary{i}"] = 0.3 * original_edge_bce(e, boundary)
        terms[f"loss_boundary_attention{i}"] = 0.1 * original_edge_attention_ce(
            s, labels, e, attention_thresh)
    terms["total"] = sum(terms.values())
    return terms

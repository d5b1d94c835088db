"""MFARANet's multi-scale joint supervision (reference ``mfaranet.md`` section 2):

    L = CE(fused↑, y) + sum_i [ OHEM-CE(S_i↑, y) + 0.3 · BCE(E_i↑, b) + 0.1 · CE_b(S_i↑, y, E_i↑) ]

↑ = bilinear (``align_corners=True``) to the label size, S_i the branch scores, E_i the branch's
1-channel boundary logits, b the binary boundary map of the labels and CE_b the cross-entropy on
the pixels whose boundary logit passes a threshold. Every term runs on the logits' device with
tensor ops (the original computed the BCE weights in numpy and called ``.cuda()``), and none is
0/0: where no pixel is selected (the original's NaN at the first step, when no boundary logit is
yet above 0.8) a term is 0, still connected to the graph so every head gets a (zero) gradient.

Functions take N×K×H×W logits and N×H×W long labels at the same size:

- :func:`boundary_targets`: labels -> N×H×W float {0, 1}, computed on the device;
- :func:`ohem_cross_entropy`: cross-entropy over the hard pixels;
- :func:`balanced_boundary_bce`: class-balanced BCE of the boundary logits;
- :func:`boundary_attention_cross_entropy`: image-weighted cross-entropy on boundary pixels;
- :class:`MFARANetLoss`: all terms of one model output, weights and thresholds from the config.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F

__all__ = ["boundary_targets", "masked_mean_cross_entropy", "ohem_cross_entropy",
           "balanced_boundary_bce", "boundary_attention_cross_entropy", "MFARANetLoss"]


def _zero(x: torch.Tensor) -> torch.Tensor:
    """A 0 that keeps ``x`` in the graph (its parameters get a zero gradient, DDP sees them)."""
    return x.sum() * 0.0


def boundary_targets(labels: torch.Tensor, kernel: int = 5) -> torch.Tensor:
    """Binary boundary map of N×H×W labels -> N×H×W float: 1 where the ``kernel``×``kernel``
    window around a pixel (clipped at the image border) holds another label value than the
    pixel's, the ignore value included (edges towards void regions and crop padding count).

    The original (its ``util_onehot_boundary``, in the data loader, per sample) marks pixels
    whose 5×5 box-filtered label differs from the label by more than 0.005; here the same window
    is tested with one max-pool and one min-pool on the whole batch (max != min). The two differ
    only where other labels in a window average out to exactly the centre's value.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"MODEL.MFARANET.BOUNDARY_KERNEL {kernel} must be an odd size >= 1")
    x = labels[:, None].float()
    pad = kernel // 2
    # max_pool2d pads with -inf, so the border windows see only pixels inside the image.
    high = F.max_pool2d(x, kernel, stride=1, padding=pad)
    low = -F.max_pool2d(-x, kernel, stride=1, padding=pad)
    return (high != low)[:, 0].to(torch.float32)


def masked_mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                              ignore_index: int = 255) -> torch.Tensor:
    """Cross-entropy averaged over the pixels whose label is not ``ignore_index``; 0 (in the
    graph) when there is none, where ``F.cross_entropy`` returns NaN."""
    valid = labels != ignore_index
    if not bool(valid.any()):
        return _zero(logits)
    return F.cross_entropy(logits, labels, ignore_index=ignore_index)


def ohem_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
                       threshold: float = 0.7, min_kept: int = 100_000) -> torch.Tensor:
    """Online hard example mining cross-entropy (the original's OHEM, over the whole batch).

    A valid pixel is kept when the softmax probability of its label is at most ``t``, where
    ``t = threshold`` raised to the probability of the ``min_kept``-th hardest valid pixel when
    that is larger (so at least ``min_kept`` pixels are kept); the loss is the mean
    cross-entropy of the kept pixels. With fewer than ``min_kept`` valid pixels every valid
    pixel is used (plain cross-entropy), as the original. Probabilities only select pixels:
    no gradient flows through the selection.
    """
    return _ohem_nll(F.log_softmax(logits, dim=1), labels, ignore_index, threshold, min_kept)


def _ohem_nll(log_probs: torch.Tensor, labels: torch.Tensor, ignore_index: int,
              threshold: float, min_kept: int) -> torch.Tensor:
    """:func:`ohem_cross_entropy` on N×K×H×W log-softmax ``log_probs`` (which the loss shares
    with the attention term: one softmax and one softmax backward per branch, not three)."""
    valid = labels != ignore_index
    num_valid = int(valid.sum())
    if num_valid == 0:
        return _zero(log_probs)
    if num_valid < min_kept:
        return F.nll_loss(log_probs, labels, ignore_index=ignore_index)
    with torch.no_grad():
        safe = labels.masked_fill(~valid, 0)
        prob = log_probs.gather(1, safe[:, None])[:, 0].float().exp()  # N×H×W
        t = torch.tensor(float(threshold), device=prob.device)
        if min_kept > 0:
            # ignored pixels as 2 (above every probability): the min_kept-th smallest of the
            # whole map is that of the valid pixels, without gathering them first
            kth = torch.kthvalue(prob.masked_fill(~valid, 2.0).flatten(), min_kept).values
            t = torch.maximum(t, kth)
        kept = valid & (prob <= t)
    if not bool(kept.any()):
        return _zero(log_probs)
    return F.nll_loss(log_probs, labels.masked_fill(~kept, ignore_index),
                      ignore_index=ignore_index)


def balanced_boundary_bce(boundary_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Class-balanced BCE-with-logits over the whole batch (the original's ``bce2d``).

    ``boundary_logits`` N×1×H×W (or N×H×W), ``targets`` N×H×W in {0, 1} (values > 1 ignored).
    Boundary pixels are weighted by #non-boundary / #all, the others by #boundary / #all, and
    the weighted sum is divided by the number of pixels (ignored ones included, weight 0), as
    the original's ``size_average``. No boundary pixel: every weight is 0, the loss 0.
    """
    x = boundary_logits.reshape(targets.shape)
    pos = targets == 1
    neg = targets == 0
    num_pos = pos.sum().to(x.dtype)
    num_neg = neg.sum().to(x.dtype)
    total = (num_pos + num_neg).clamp(min=1)
    weight = pos.to(x.dtype) * (num_neg / total) + neg.to(x.dtype) * (num_pos / total)
    return F.binary_cross_entropy_with_logits(x, pos.to(x.dtype), weight=weight)


def boundary_attention_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                                     boundary_logits: torch.Tensor, ignore_index: int = 255,
                                     threshold: float = 0.8) -> torch.Tensor:
    """Cross-entropy on the pixels the boundary head marks, image-weighted (the original's
    edge attention with ``ImageBasedCrossEntropyLoss2d``, ``upper_bound`` 1, no norm).

    Pixels whose raw boundary logit (N×1×H×W, not its sigmoid, as the original) is at most
    ``threshold`` are ignored. Per image, class c present with frequency f_c among the kept
    pixels weighs ``w_c = 2 - f_c`` (absent classes 1); the image's loss is the w-weighted mean
    cross-entropy of its kept pixels, and the losses of the images are **summed** (not
    averaged), as the original. An image without a kept pixel adds 0 (the original: NaN).
    """
    return _attention_nll(F.log_softmax(logits, dim=1), labels, boundary_logits, ignore_index,
                          threshold)


def _attention_nll(log_probs: torch.Tensor, labels: torch.Tensor, boundary_logits: torch.Tensor,
                   ignore_index: int, threshold: float) -> torch.Tensor:
    """:func:`boundary_attention_cross_entropy` on N×K×H×W log-softmax ``log_probs``."""
    n, k = log_probs.shape[:2]
    marked = boundary_logits.reshape(labels.shape) > threshold
    kept = marked & (labels != ignore_index) & (labels < k)
    if not bool(kept.any()):
        return _zero(log_probs)
    with torch.no_grad():
        target = labels.masked_fill(~kept, 0)
        counts = torch.zeros(n, k, device=labels.device, dtype=torch.float32)
        counts.scatter_add_(1, target.flatten(1), kept.flatten(1).to(torch.float32))
        freq = counts / counts.sum(1, keepdim=True).clamp(min=1)
        class_weight = torch.where(counts > 0, 2.0 - freq, torch.ones_like(freq))  # N×K
        pixel_weight = class_weight.gather(1, target.flatten(1)) * kept.flatten(1)  # N×HW
    nll = F.nll_loss(log_probs, target, reduction="none").flatten(1)  # N×HW
    pixel_weight = pixel_weight.to(nll.dtype)
    per_image = (nll * pixel_weight).sum(1) / pixel_weight.sum(1).clamp(min=1e-12)
    return per_image.sum()


def _upsample(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class MFARANetLoss:
    """All loss terms of an :class:`~dl_lib.modeling.mfaranet.MFARANetOutput` against N×H×W
    labels: ``loss_sem_seg`` (CE of the fused output, absent when one branch is "fused"),
    ``loss_branch{i}`` (OHEM-CE), ``loss_boundary{i}`` (``boundary_weight`` × balanced BCE) and
    ``loss_boundary_attention{i}`` (``attention_weight`` × the boundary-attention CE), the last
    two for branches whose boundary logits the output holds. Logits are upsampled to the label
    size with ``align_corners=True`` first; boundary targets come from the labels.

    Args (the ``MODEL.MFARANET`` keys of the same names in ``config.py``):
        ignore_index: label value without a loss.
        ohem_threshold, ohem_min_kept: :func:`ohem_cross_entropy` (0.7, 100,000).
        boundary_weight: of the BCE (0.3). attention_weight: of the attention CE (0.1).
        attention_threshold: boundary logit above which a pixel enters the attention CE (0.8).
        boundary_kernel: window of :func:`boundary_targets` (5).
    """

    def __init__(self, ignore_index: int = 255, ohem_threshold: float = 0.7,
                 ohem_min_kept: int = 100_000, boundary_weight: float = 0.3,
                 attention_weight: float = 0.1, attention_threshold: float = 0.8,
                 boundary_kernel: int = 5):
        if not 0.0 <= ohem_threshold <= 1.0:
            raise ValueError(f"MODEL.MFARANET.OHEM_THRESHOLD {ohem_threshold} must be a "
                             "probability in [0, 1] (the original: 0.7)")
        if ohem_min_kept < 0:
            raise ValueError(f"MODEL.MFARANET.OHEM_MIN_KEPT {ohem_min_kept} must be >= 0 "
                             "(the original: 100000)")
        if boundary_kernel < 1 or boundary_kernel % 2 == 0:
            raise ValueError(f"MODEL.MFARANET.BOUNDARY_KERNEL {boundary_kernel} must be an odd "
                             "size >= 1 (the original: 5)")
        self.ignore_index = ignore_index
        self.ohem_threshold = float(ohem_threshold)
        self.ohem_min_kept = int(ohem_min_kept)
        self.boundary_weight = float(boundary_weight)
        self.attention_weight = float(attention_weight)
        self.attention_threshold = float(attention_threshold)
        self.boundary_kernel = int(boundary_kernel)

    @classmethod
    def from_config(cls, cfg) -> dict:
        m = cfg.MODEL.MFARANET
        return dict(ignore_index=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                    ohem_threshold=m.OHEM_THRESHOLD, ohem_min_kept=m.OHEM_MIN_KEPT,
                    boundary_weight=m.BOUNDARY_LOSS_WEIGHT,
                    attention_weight=m.BOUNDARY_ATTENTION_LOSS_WEIGHT,
                    attention_threshold=m.BOUNDARY_ATTENTION_THRESHOLD,
                    boundary_kernel=m.BOUNDARY_KERNEL)

    def __call__(self, branches: Dict[int, torch.Tensor], fused: Optional[torch.Tensor],
                 boundaries: Dict[int, torch.Tensor],
                 labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        size = labels.shape[-2:]
        losses = {}
        if fused is not None:
            losses["loss_sem_seg"] = masked_mean_cross_entropy(
                _upsample(fused, size), labels, self.ignore_index)
        edges = boundary_targets(labels, self.boundary_kernel) if boundaries else None
        for b in sorted(branches):
            log_probs = F.log_softmax(_upsample(branches[b], size), dim=1)
            losses[f"loss_branch{b}"] = _ohem_nll(
                log_probs, labels, self.ignore_index, self.ohem_threshold, self.ohem_min_kept)
            if b not in boundaries:
                continue
            edge_logits = _upsample(boundaries[b], size)
            losses[f"loss_boundary{b}"] = self.boundary_weight * balanced_boundary_bce(
                edge_logits, edges)
            losses[f"loss_boundary_attention{b}"] = (
                self.attention_weight * _attention_nll(
                    log_probs, labels, edge_logits, self.ignore_index, self.attention_threshold))
        return losses

"""CondNet's training losses (reference ``condnet.md`` section 3) and mmseg's OHEM pixel sampler.

The original sums, over its mmseg heads,

    L = CE(conditional logits↑, y) + 0.2 · Dice(guidance logits, y↓) + 0.4 · CE(aux logits↑, y)

with ↑ a bilinear resize of the logits to the label size and y↓ a nearest resize of the label to
the guidance logits' size (stride 4). This module holds the parts that are not a plain
cross-entropy:

- :func:`dice_loss`: mmseg's (0.x) multi-class Dice loss on raw guidance logits, as the original
  configured it (``smooth=1e-5``, ``exponent=2``); its exact semantics are in the docstring;
- :func:`ohem_pixel_weights`: mmseg's ``OHEMPixelSampler`` (``thresh``, ``min_kept`` per image):
  an N×H×W {0, 1} weight map of the hard pixels;
- :func:`ohem_cross_entropy`: cross-entropy weighted by that map, reduced as mmseg does.

Logits are N×K×H×W, labels N×H×W integer (``ignore_index`` marks void pixels). Every function
works on the logits' device and dtype; no selection step carries a gradient.
"""
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["resize_labels_nearest", "dice_loss", "ohem_pixel_weights", "ohem_cross_entropy"]


def _check_shapes(logits: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if logits.dim() != 4 or labels.dim() != 3 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{name}: expected N×K×H×W logits and N×H×W labels, got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")


def resize_labels_nearest(labels: torch.Tensor, size) -> torch.Tensor:
    """N×H×W labels -> N×h×w by nearest-neighbour sampling (``F.interpolate(mode='nearest')``,
    source index ``floor(i · H / h)``), the way the original brought the label to the guidance
    logits' stride-4 grid. Returns ``labels`` itself when the size already matches."""
    size = tuple(int(s) for s in size)
    if tuple(labels.shape[-2:]) == size:
        return labels
    resized = F.interpolate(labels[:, None].float(), size=size, mode="nearest")
    return resized[:, 0].to(labels.dtype)


def dice_loss(guidance_logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
              smooth: float = 1e-5, exponent: float = 2.0,
              class_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """mmseg's multi-class Dice loss, as the original CondNet used it on its guidance map.

    Args:
        guidance_logits: N×K×h×w raw logits (not probabilities).
        labels: N×H×W integer labels; when H×W differs from h×w they are first resized
            **nearest** to h×w (:func:`resize_labels_nearest`), as the original did.
        ignore_index: label value of void pixels (mmseg's default 255; the original's
            ``ignore_index=`` keyword was swallowed by mmseg's ``DiceLoss``, which always used
            its own 255, so pass 255 to reproduce it).
        smooth: s, added to numerator and denominator (the original: 1e-5; mmseg's default 1).
        exponent: e, the power of p and y in the denominator (mmseg's default 2).
        class_weight: optional K weights multiplying each class's term.

    Returns:
        A scalar: the loss **before** the 0.2 loss weight.

    Semantics (mmseg 0.x ``dice_loss.py``, the same formula in its later 0.x releases):

    1. p = softmax of the logits over the class axis (K channels).
    2. y = one-hot of the label **clamped to [0, K-1]**: an ignored pixel (255) becomes a
       one-hot of the last class K-1.
    3. v = 1 for pixels whose label is not ``ignore_index``, else 0.
    4. For each image n and class k, over all h·w pixels:
       ``D_nk = 1 - (2 · Σ p·y·v + s) / (Σ p^e + Σ y^e + s)`` — v masks only the numerator,
       so ignored pixels still add their p^e to every class's denominator and their y^e = 1 to
       the last class's denominator.
    5. The loss is the mean of D_nk over images, then over all K classes (each term times its
       ``class_weight``, the sum still divided by K; classes absent from an image are not
       skipped: their term is 1 - s / (Σ p^e + s), close to 1 unless p is ~0 there).
    """
    _check_shapes(guidance_logits, labels, "dice_loss")
    num_classes = guidance_logits.shape[1]
    labels = resize_labels_nearest(labels, guidance_logits.shape[-2:])
    prob = F.softmax(guidance_logits, dim=1).flatten(2)                       # N×K×P
    target = F.one_hot(labels.long().clamp(0, num_classes - 1), num_classes)  # N×h×w×K
    target = target.flatten(1, 2).transpose(1, 2).to(prob.dtype)              # N×K×P
    valid = (labels != ignore_index).flatten(1)[:, None].to(prob.dtype)       # N×1×P
    numerator = 2.0 * (prob * target * valid).sum(dim=2) + smooth
    denominator = prob.pow(exponent).sum(dim=2) + target.pow(exponent).sum(dim=2) + smooth
    per_class = 1.0 - numerator / denominator                                # N×K
    if class_weight is not None:
        class_weight = torch.as_tensor(class_weight, dtype=prob.dtype, device=prob.device)
        if class_weight.shape != (num_classes,):
            raise ValueError(f"dice_loss: class_weight has shape {tuple(class_weight.shape)}, "
                             f"expected ({num_classes},) (one weight per class)")
        per_class = per_class * class_weight
    return per_class.mean(dim=0).sum() / num_classes


def _pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                         ignore_index: int) -> torch.Tensor:
    """N×H×W per-pixel cross-entropy, 0 at ignored pixels."""
    return F.cross_entropy(logits, labels.long(), ignore_index=ignore_index, reduction="none")


@torch.no_grad()
def ohem_pixel_weights(logits: torch.Tensor, labels: torch.Tensor, thresh: Optional[float] = None,
                       min_kept: int = 100000, ignore_index: int = 255) -> torch.Tensor:
    """mmseg's ``OHEMPixelSampler.sample``: N×H×W float weights, 1 at the hard pixels, else 0.

    With B = ``min_kept`` × N (``min_kept`` is per image) and only valid (non-ignored) pixels:

    - ``thresh`` given: q = softmax probability of each pixel's label; sorted ascending,
      t = max(``thresh``, q_sorted[min(B, #valid - 1)]) (0-based index: the (B+1)-th smallest);
      a pixel is kept when q < t (strictly). At least B pixels are kept when there are
      more than B, and every pixel below ``thresh`` is kept, however many.
    - ``thresh`` None: the B pixels with the largest cross-entropy are kept.

    ``logits`` N×K×H×W at the label size, ``labels`` N×H×W. No valid pixel: all weights 0.
    """
    _check_shapes(logits, labels, "ohem_pixel_weights")
    if min_kept <= 1:
        raise ValueError(f"ohem_pixel_weights: min_kept {min_kept} must be > 1 (as mmseg's "
                         "OHEMPixelSampler asserts)")
    labels = labels.long()
    batch_kept = int(min_kept) * labels.shape[0]
    valid = labels != ignore_index
    weights = torch.zeros(labels.shape, dtype=logits.dtype, device=logits.device)
    num_valid = int(valid.sum())
    if num_valid == 0:
        return weights
    kept = torch.zeros(num_valid, dtype=torch.bool, device=logits.device)
    if thresh is not None:
        safe = labels.masked_fill(~valid, 0)
        prob = F.softmax(logits, dim=1).gather(1, safe[:, None])[:, 0][valid]
        sorted_prob = prob.sort().values
        threshold = max(float(sorted_prob[min(batch_kept, num_valid - 1)]), float(thresh))
        kept = prob < threshold
    else:
        loss = _pixel_cross_entropy(logits, labels, ignore_index)[valid]
        kept[loss.sort(descending=True).indices[:batch_kept]] = True
    weights[valid] = kept.to(weights.dtype)
    return weights


def ohem_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, thresh: Optional[float] = None,
                       min_kept: int = 100000, ignore_index: int = 255,
                       avg_non_ignore: bool = False) -> torch.Tensor:
    """Cross-entropy over the pixels :func:`ohem_pixel_weights` keeps, reduced as mmseg's
    ``CrossEntropyLoss`` with a pixel weight: ``Σ w·CE / D`` with D the number of **all**
    N·H·W pixels (mmseg 0.x, ``avg_non_ignore=False``; the loss is therefore smaller than the
    mean over kept pixels) or, with ``avg_non_ignore=True`` (mmseg >= 0.21's option), the
    number of non-ignored pixels. The weights carry no gradient."""
    weights = ohem_pixel_weights(logits, labels, thresh, min_kept, ignore_index)
    loss = _pixel_cross_entropy(logits, labels, ignore_index) * weights
    if avg_non_ignore:
        return loss.sum() / (labels != ignore_index).sum().clamp(min=1).to(loss.dtype)
    return loss.mean()

"""CondNet's losses (reference ``condnet.md`` section 3): mmseg's Dice semantics on the guidance
map against a hand computation (softmax, one-hot of the clamped label, the valid mask only in the
numerator, smooth, exponent, mean over images and classes), the nearest label resize, and mmseg's
OHEM pixel sampler (threshold with the (B+1)-th smallest probability, strict <, min_kept per
image, the top-loss mode) with its mmseg reduction."""
import math

import pytest
import torch
import torch.nn.functional as F

from dl_lib.modeling.condnet.losses import (dice_loss, ohem_cross_entropy, ohem_pixel_weights,
                                            resize_labels_nearest)

IGNORE = 255


def _hand_dice(logits, labels, smooth, exponent, ignore=IGNORE):
    """Dice loss written out pixel by pixel with Python floats (mmseg 0.x semantics)."""
    n_img, k_cls, h, w = logits.shape
    total = 0.0
    for k in range(k_cls):
        per_image = []
        for n in range(n_img):
            num, den = 0.0, 0.0
            for i in range(h):
                for j in range(w):
                    z = [float(logits[n, c, i, j]) for c in range(k_cls)]
                    p = math.exp(z[k]) / sum(math.exp(v) for v in z)
                    lab = int(labels[n, i, j])
                    y = 1.0 if min(lab, k_cls - 1) == k else 0.0  # clamp: 255 -> last class
                    v = 0.0 if lab == ignore else 1.0
                    num += p * y * v
                    den += p ** exponent + y ** exponent
            per_image.append(1.0 - (2.0 * num + smooth) / (den + smooth))
        total += sum(per_image) / n_img
    return total / k_cls


def test_dice_matches_the_hand_computation():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 3, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 3, 4), generator=gen)
    labels[0, 0, :2] = IGNORE
    labels[1, 2, 3] = IGNORE
    for smooth, exponent in [(1e-5, 2.0), (1.0, 2.0), (0.5, 1.0)]:
        got = dice_loss(logits, labels, smooth=smooth, exponent=exponent)
        assert got.item() == pytest.approx(_hand_dice(logits, labels, smooth, exponent), rel=1e-12)
    # The ignored pixels count in the denominators: dropping them changes the loss.
    without_ignore = labels.clone()
    without_ignore[labels == IGNORE] = 0
    assert dice_loss(logits, without_ignore).item() != pytest.approx(
        dice_loss(logits, labels).item(), rel=1e-6)


def test_dice_of_a_tiny_case_by_hand():
    # One image, two classes, two pixels: logits (0, 0) and (ln 3, 0) -> p = (.5, .5), (.75, .25).
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]], dtype=torch.float64)
    labels = torch.tensor([[[0, IGNORE]]])  # pixel 2 ignored -> one-hot of class 1
    s = 1e-5
    # class 0: num 2·(.5·1) + s; den (.25 + .5625) + 1 + s.  class 1: num 0 + s (pixel 2 masked);
    # den (.25 + .0625) + 1 + s (its y = 1 at the ignored pixel).
    d0 = 1 - (1.0 + s) / (0.8125 + 1 + s)
    d1 = 1 - s / (0.3125 + 1 + s)
    assert dice_loss(logits, labels, smooth=s).item() == pytest.approx((d0 + d1) / 2, rel=1e-12)


def test_dice_gradient_flows_and_perfect_prediction_is_near_zero():
    labels = torch.tensor([[[0, 1], [2, 1]]])
    logits = (F.one_hot(labels, 3).permute(0, 3, 1, 2).double() * 60.0).requires_grad_()
    assert dice_loss(logits, labels).item() == pytest.approx(0.0, abs=1e-6)
    noisy = torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    dice_loss(noisy, labels).backward()
    assert noisy.grad is not None and noisy.grad.abs().sum() > 0


def test_dice_resizes_the_label_nearest_to_the_guidance_size():
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (1, 8, 8), generator=gen)
    labels[0, 1, 1] = IGNORE
    logits = torch.randn(1, 4, 2, 2, generator=gen, dtype=torch.float64)
    small = labels[:, ::4, ::4]  # nearest at 1/4: source index floor(i * 8 / 2) = 4 i
    assert torch.equal(resize_labels_nearest(labels, (2, 2)), small)
    assert dice_loss(logits, labels).item() == pytest.approx(dice_loss(logits, small).item())


def test_dice_class_weight_and_bad_input():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 2, 2, 3, generator=gen, dtype=torch.float64)
    labels = torch.tensor([[[0, 1, 1], [0, 0, IGNORE]]])
    d = [dice_loss(logits[:, [0, 1]], labels, class_weight=torch.tensor(w, dtype=torch.float64))
         for w in ([1.0, 0.0], [0.0, 1.0], [2.0, 3.0])]
    assert d[2].item() == pytest.approx(2 * d[0].item() + 3 * d[1].item())
    with pytest.raises(ValueError, match="class_weight"):
        dice_loss(logits, labels, class_weight=torch.ones(3))
    with pytest.raises(ValueError, match="N×K×H×W"):
        dice_loss(logits[0], labels)


def _logits_with_label_prob(probs, labels):
    """1×2×1×P logits whose softmax gives each pixel's label the probability in ``probs``."""
    logits = torch.zeros(1, 2, 1, len(probs), dtype=torch.float64)
    for i, (p, y) in enumerate(zip(probs, labels)):
        logits[0, y if y != IGNORE else 0, 0, i] = math.log(p / (1 - p))
    return logits, torch.tensor(labels).view(1, 1, -1)


def test_ohem_threshold_mode():
    probs = [0.9, 0.6, 0.8, 0.3, 0.95, 0.7]
    logits, labels = _logits_with_label_prob(probs, [1, 0, 1, 0, IGNORE, 1])
    # 5 valid pixels, sorted q = .3 .6 .7 .8 .9. min_kept 2 -> index 2 -> .7; t = max(.65, .7):
    # kept q < .7 strictly -> pixels 1 and 3 (the pixel that set t is not kept).
    w = ohem_pixel_weights(logits, labels, thresh=0.65, min_kept=2)
    assert w[0, 0].tolist() == [0, 1, 0, 1, 0, 0]
    # min_kept 3 -> index 3 -> .8 -> .3 .6 .7 kept.
    w = ohem_pixel_weights(logits, labels, thresh=0.7, min_kept=3)
    assert w[0, 0].tolist() == [0, 1, 0, 1, 0, 1]
    # min_kept past the count -> index #valid - 1 -> .9 -> all but the easiest valid pixel.
    w = ohem_pixel_weights(logits, labels, thresh=0.5, min_kept=50)
    assert w[0, 0].tolist() == [0, 1, 1, 1, 0, 1]
    # thresh above every q: all valid pixels below it kept, more than min_kept.
    w = ohem_pixel_weights(logits, labels, thresh=0.99, min_kept=2)
    assert w[0, 0].tolist() == [1, 1, 1, 1, 0, 1]


def test_ohem_min_kept_is_per_image_and_top_loss_mode():
    probs = [0.9, 0.6, 0.8, 0.3]
    one, lab = _logits_with_label_prob(probs, [1, 0, 1, 0])
    two = torch.cat([one, one]), torch.cat([lab, lab])
    # Two images, min_kept 2 -> B = 4 -> index 4 of the 8 sorted q (.3 .3 .6 .6 .8 ...) -> .8.
    w = ohem_pixel_weights(*two, thresh=0.1, min_kept=2)
    assert w[:, 0].tolist() == [[0, 1, 0, 1], [0, 1, 0, 1]] and w.sum() == 4
    # Top-loss mode (thresh None): the 2 highest cross-entropies = the two lowest q.
    w = ohem_pixel_weights(one, lab, thresh=None, min_kept=2)
    assert w[0, 0].tolist() == [0, 1, 0, 1]
    assert ohem_pixel_weights(one, torch.full_like(lab, IGNORE), 0.7, 2).sum() == 0
    with pytest.raises(ValueError, match="min_kept"):
        ohem_pixel_weights(one, lab, 0.7, min_kept=1)


def test_ohem_cross_entropy_reduction_and_gradient():
    probs = [0.9, 0.6, 0.8, 0.3, 0.95]
    logits, labels = _logits_with_label_prob(probs, [1, 0, 1, 0, IGNORE])
    logits.requires_grad_()
    nll = [-math.log(p) for p in probs]
    # valid q sorted .3 .6 .8 .9; kept: q < max(.7, sorted[2] = .8) -> pixels 1 and 3.
    got = ohem_cross_entropy(logits, labels, thresh=0.7, min_kept=2)
    assert got.item() == pytest.approx((nll[1] + nll[3]) / 5)  # mmseg 0.x: / all pixels
    mean_valid = ohem_cross_entropy(logits, labels, thresh=0.7, min_kept=2, avg_non_ignore=True)
    assert mean_valid.item() == pytest.approx((nll[1] + nll[3]) / 4)
    got.backward()
    # Only the kept pixels get a gradient.
    assert logits.grad[0, :, 0].abs().sum(0).ne(0).tolist() == [False, True, False, True, False]

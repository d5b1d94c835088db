"""MFARANet's training losses (reference ``mfaranet.md`` section 2), each term against a hand
computation on tiny tensors: boundary targets of a small label map, OHEM's selection, the balanced
BCE weights, the image-weighted boundary-attention CE; the cases where the original divided 0 by 0
(no boundary pixel, no marked pixel, only ignored labels) are finite; every parameter, the
boundary heads included, gets a gradient (so DDP runs without FIND_UNUSED_PARAMETERS)."""
import math

import pytest
import torch
import torch.nn.functional as F

from dl_lib.config import config_from_delta
from dl_lib.modeling import build_model
from dl_lib.modeling.mfaranet import backbone_config
from dl_lib.modeling.mfaranet.losses import (MFARANetLoss, balanced_boundary_bce,
                                             boundary_attention_cross_entropy, boundary_targets,
                                             ohem_cross_entropy)

IGNORE = 255


def _logits_with_label_prob(probs, labels):
    """1×2×1×P logits whose softmax gives each pixel's label the probability in ``probs``."""
    p = torch.tensor(probs, dtype=torch.float64)
    margin = torch.log(p / (1 - p))  # logit(label) - logit(other)
    lab = torch.tensor(labels)
    logits = torch.zeros(1, 2, 1, len(probs), dtype=torch.float64)
    for i, (m, y) in enumerate(zip(margin, lab)):
        logits[0, int(y) if y != IGNORE else 0, 0, i] = m
    return logits, lab.view(1, 1, -1)


def test_boundary_targets_of_a_small_label_map():
    labels = torch.zeros(1, 6, 7, dtype=torch.long)
    labels[0, :, 4:] = 1          # a vertical edge between columns 3 and 4
    labels[0, 5, :2] = IGNORE     # a void patch in the bottom-left corner
    got = boundary_targets(labels, kernel=3)
    expected = torch.zeros(1, 6, 7)
    expected[0, :, 3:5] = 1       # both sides of the class edge
    expected[0, 4:6, 0:3] = 1     # the void patch and the pixels next to it
    assert torch.equal(got, expected)
    # 5x5: two pixels on each side; the image border does not make a boundary.
    wide = boundary_targets(labels[:, :, :], kernel=5)
    assert wide[0, 0].tolist() == [0, 0, 1, 1, 1, 1, 0]
    assert boundary_targets(torch.full((2, 5, 5), 3), 5).sum() == 0
    assert got.device == labels.device and got.dtype == torch.float32
    with pytest.raises(ValueError, match="BOUNDARY_KERNEL"):
        boundary_targets(labels, kernel=4)


def test_ohem_keeps_the_hard_pixels():
    probs = [0.9, 0.6, 0.8, 0.3, 0.95]
    logits, labels = _logits_with_label_prob(probs, [1, 0, 1, 0, IGNORE])
    nll = [-math.log(p) for p in probs]
    # min_kept 1: the 1st hardest is 0.3 < 0.7, threshold stays 0.7 -> pixels 0.6 and 0.3.
    got = ohem_cross_entropy(logits, labels, IGNORE, threshold=0.7, min_kept=1)
    assert got.item() == pytest.approx((nll[1] + nll[3]) / 2)
    # min_kept 3: the 3rd hardest valid pixel has 0.8 > 0.7 -> threshold 0.8, three pixels.
    got = ohem_cross_entropy(logits, labels, IGNORE, threshold=0.7, min_kept=3)
    assert got.item() == pytest.approx((nll[1] + nll[3] + nll[2]) / 3)
    # min_kept 0: only the threshold.
    got = ohem_cross_entropy(logits, labels, IGNORE, threshold=0.85, min_kept=0)
    assert got.item() == pytest.approx((nll[1] + nll[3] + nll[2]) / 3)
    # Fewer valid pixels (4) than min_kept: plain CE over every valid one, the ignored excluded.
    got = ohem_cross_entropy(logits, labels, IGNORE, threshold=0.7, min_kept=5)
    assert got.item() == pytest.approx(sum(nll[:4]) / 4)
    # Only ignored labels, or nothing below the threshold: 0, not NaN, still in the graph.
    logits.requires_grad_(True)
    cases = ((torch.full_like(labels, IGNORE), {}), (labels, dict(threshold=0.1, min_kept=0)))
    for lab, kw in cases:
        loss = ohem_cross_entropy(logits, lab, IGNORE, **kw)
        assert loss.item() == 0.0
        loss.backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_balanced_bce_weights_boundary_by_the_other_side():
    x = torch.tensor([[[[2.0, -1.0, 0.5, -0.3, 4.0]]]])
    targets = torch.tensor([[[1.0, 0.0, 0.0, 0.0, 2.0]]])  # 1 boundary, 3 not, 1 ignored
    bce = [math.log1p(math.exp(-2.0)), math.log1p(math.exp(-1.0)), math.log1p(math.exp(0.5)),
           math.log1p(math.exp(-0.3))]
    expected = (0.75 * bce[0] + 0.25 * (bce[1] + bce[2] + bce[3])) / 5  # size_average: / all 5
    assert balanced_boundary_bce(x, targets).item() == pytest.approx(expected, rel=1e-6)
    # No boundary pixel (one region): every weight is 0, the loss 0, finite, in the graph.
    x.requires_grad_(True)
    loss = balanced_boundary_bce(x, torch.zeros(1, 1, 5))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_boundary_attention_ce_weights_classes_per_image_and_sums_images():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 1, 6, dtype=torch.float64)
    labels = torch.tensor([[[0, 0, 1, 2, IGNORE, 1]], [[2, 2, 2, 0, 1, 1]]])
    edges = torch.tensor([[[[0.9, 2.0, 1.0, 0.8, 3.0, -1.0]]],   # kept: pixels 0, 1, 2
                          [[[0.0, 0.1, 0.2, 0.3, 0.4, 0.5]]]])   # none above 0.8
    nll = -F.log_softmax(logits, dim=1)
    # Image 1 keeps labels 0, 0, 1 (the 0.8 logit is not above 0.8, the ignored pixel is out):
    # f_0 = 2/3, f_1 = 1/3 -> w_0 = 1 + 1/3, w_1 = 1 + 2/3.
    w0, w1 = 1 + 1 / 3, 1 + 2 / 3
    image1 = (w0 * (nll[0, 0, 0, 0] + nll[0, 0, 0, 1]) + w1 * nll[0, 1, 0, 2]) / (2 * w0 + w1)
    got = boundary_attention_cross_entropy(logits, labels, edges, IGNORE, threshold=0.8)
    assert got.item() == pytest.approx(image1.item())  # image 2 adds 0 (the original: NaN)
    # Summed over images, not averaged: the same image twice gives twice the loss.
    twice = boundary_attention_cross_entropy(logits[[0, 0]], labels[[0, 0]], edges[[0, 0]],
                                             IGNORE, threshold=0.8)
    assert twice.item() == pytest.approx(2 * image1.item())
    # Nothing marked anywhere (the first step of training): 0 with a gradient, not 0/0.
    logits.requires_grad_(True)
    loss = boundary_attention_cross_entropy(logits, labels, edges - 10, IGNORE, threshold=0.8)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def _narrow_model(**mfaranet):
    backbone = dict(backbone_config("r18_deep_stem"), WIDTH=8, STEM_WIDTH=16)
    cfg = config_from_delta(dict(MODEL=dict(META_ARCHITECTURE="MFARANet", BACKBONE=backbone,
                                            MFARANET=dict(dict(DECODER_CHANNELS=16), **mfaranet))),
                            family="mfaranet")
    return build_model(cfg).train()


def _batch(labels):
    g = torch.Generator().manual_seed(1)
    return [{"image": torch.randint(0, 255, (3,) + lab.shape, generator=g, dtype=torch.uint8),
             "sem_seg": lab} for lab in labels]


def _two_regions(h=64, w=64):
    lab = torch.zeros(h, w, dtype=torch.long)
    lab[:, w // 2:] = 5
    lab[: h // 8] = IGNORE
    return lab


def test_model_losses_are_the_terms_with_the_original_weights():
    torch.manual_seed(0)
    # No attention dropout: the recomputation below must see the same fused output.
    model = _narrow_model(OHEM_MIN_KEPT=1000, BOUNDARY_ATTENTION_THRESHOLD=-10.0,
                          ATTENTION_DROPOUT=0.0)
    batch = _batch([_two_regions(), _two_regions().flip(1)])
    losses = model(batch)
    expected_keys = {"loss_sem_seg"} | {f"loss_{t}{i}" for i in range(1, 5)
                                        for t in ("branch", "boundary", "boundary_attention")}
    assert set(losses) == expected_keys
    # Recompute every term from the decoder's outputs with the functions and the weights.
    images, _ = model.preprocess_images(batch)
    labels = model.preprocess_targets(batch, images.shape[-2:])
    out = model.forward_outputs(images, with_boundaries=True)
    up = lambda t: F.interpolate(t, size=(64, 64), mode="bilinear", align_corners=True)  # noqa
    edges = boundary_targets(labels, 5)
    for b in range(1, 5):
        s, e = up(out.branches[b]), up(out.boundaries[b])
        torch.testing.assert_close(losses[f"loss_branch{b}"],
                                   ohem_cross_entropy(s, labels, IGNORE, 0.7, 1000))
        torch.testing.assert_close(losses[f"loss_boundary{b}"],
                                   0.3 * balanced_boundary_bce(e, edges))
        torch.testing.assert_close(
            losses[f"loss_boundary_attention{b}"],
            0.1 * boundary_attention_cross_entropy(s, labels, e, IGNORE, -10.0))
        assert losses[f"loss_boundary{b}"] > 0 and losses[f"loss_boundary_attention{b}"] > 0
    torch.testing.assert_close(losses["loss_sem_seg"],
                               F.cross_entropy(up(out.fused), labels, ignore_index=IGNORE))


def test_every_parameter_gets_a_gradient_so_ddp_needs_no_unused_search():
    torch.manual_seed(0)
    model = _narrow_model()
    sum(model(_batch([_two_regions(), _two_regions()])).values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient (DDP would need FIND_UNUSED_PARAMETERS): {missing[:5]}"
    # The boundary heads really learn from the boundary BCE.
    assert all(h.weight.grad.abs().sum() > 0 for h in model.head.boundary_heads)
    # One fused branch (no attention heads, no fused CE) and the branch-2 model: the same.
    for kw in (dict(FUSED_BRANCHES=[2]), dict(BRANCH_ONLY=2)):
        model = _narrow_model(**kw)
        losses = model(_batch([_two_regions()]))
        assert "loss_sem_seg" not in losses
        sum(losses.values()).backward()
        assert all(p.grad is not None for p in model.parameters()), kw


def test_no_boundary_pixel_and_only_ignored_labels_give_a_finite_loss():
    torch.manual_seed(0)
    model = _narrow_model()
    for lab in (torch.full((64, 64), 3), torch.full((64, 64), IGNORE)):
        model.zero_grad()
        losses = model(_batch([lab, lab]))
        total = sum(losses.values())
        assert torch.isfinite(total), {k: float(v) for k, v in losses.items()}
        assert all(losses[f"loss_boundary{b}"] == 0 for b in range(1, 5))  # no boundary pixel
        total.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all()
                   for p in model.parameters())


def test_loss_keys_reach_the_criterion():
    model = _narrow_model(OHEM_THRESHOLD=0.6, OHEM_MIN_KEPT=7, BOUNDARY_LOSS_WEIGHT=0.5,
                          BOUNDARY_ATTENTION_LOSS_WEIGHT=0.2, BOUNDARY_ATTENTION_THRESHOLD=0.4,
                          BOUNDARY_KERNEL=3)
    c = model.criterion
    assert (c.ohem_threshold, c.ohem_min_kept, c.boundary_weight, c.attention_weight,
            c.attention_threshold, c.boundary_kernel) == (0.6, 7, 0.5, 0.2, 0.4, 3)
    default = MFARANetLoss()  # the original's values (reference section 2)
    assert (default.ohem_threshold, default.ohem_min_kept, default.boundary_weight,
            default.attention_weight, default.attention_threshold,
            default.boundary_kernel) == (0.7, 100_000, 0.3, 0.1, 0.8, 5)
    with pytest.raises(ValueError, match="OHEM_THRESHOLD"):
        MFARANetLoss(ohem_threshold=1.5)

"""Training ADP-C (reference ``anytime.md`` sections 3.5, 4.2): one iteration of W18 RH+CA through
the SemanticSegmentor contract with mixed masks: four finite per-exit losses on the aggregated
logits, gradients reaching the interpolation bandwidths Lambda, class-weighted cross-entropy."""
import math

import pytest
import torch
import torch.nn.functional as F

from dl_lib.config import config_from_delta
from dl_lib.modeling import build_model
from dl_lib.modeling.anytime.config import CITYSCAPES_CLASS_WEIGHTS
from dl_lib.modeling.meta_arch.semantic_segmentor import resize_logits

from anytime_helpers import exit_classifier, max_prob, randomize


def _cfg(**mask):
    return config_from_delta(dict(MODEL=dict(
        DEVICE="cpu", META_ARCHITECTURE="AnytimeSegmentor",
        BACKBONE=dict(NAME="hrnet_w18_small_v2"), EXIT=dict(TYPE="flex"),
        MASK=dict(USE=True, **mask))), family="anytime")


def _batch(n=2, h=64, w=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        target = torch.randint(0, 19, (h, w), generator=gen)
        target[: h // 8] = 255  # some ignored pixels
        out.append({"image": torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8),
                    "sem_seg": target, "height": h, "width": w})
    return out


@pytest.fixture(scope="module")
def trained_once():
    """A randomised W18 ADP-C model in training mode whose threshold leaves part of the image
    confident after each exit on the batch, and the losses and gradients of one step."""
    model = randomize(build_model(_cfg()), seed=2).train()
    batch = _batch()
    images, _ = model.preprocess_images(batch)
    with torch.no_grad():  # same training-mode BN statistics as the step below
        model.threshold = 2.0
        logits, _ = model.forward_exits(images)
        for k, z in enumerate(logits, start=1):
            conv = exit_classifier(model, k)
            scale = 3.0 / float(z.std(dim=1).mean())
            conv.weight.mul_(scale)
            conv.bias.mul_(scale)
        logits, _ = model.forward_exits(images)
        model.threshold = float(max_prob(logits[0]).quantile(0.7))
        aggregated, info = model.forward_exits(images, report=True)
    losses = model(batch)
    sum(losses.values()).backward()
    return model, batch, images, aggregated, info, losses


def test_one_iteration_with_mixed_masks(trained_once):
    model, _, _, _, info, losses = trained_once
    fractions = [float(m.float().mean()) for m in info["masks"]]
    assert all(0.02 < f < 0.98 for f in fractions), fractions
    assert sorted(losses) == [f"loss_sem_seg_{i}" for i in range(4)]
    assert all(math.isfinite(float(v.detach())) and float(v.detach()) > 0 for v in losses.values())
    # every trainable tensor gets a gradient, the masked layers' Lambda included
    lambdas = {n: p for n, p in model.named_parameters() if n.endswith("Lambda")}
    assert len(lambdas) == 143
    with_grad = [n for n, p in lambdas.items() if p.grad is not None and float(p.grad.abs()) > 0]
    assert len(with_grad) > 0.9 * len(lambdas), sorted(set(lambdas) - set(with_grad))[:5]
    for name in ("backbone.stage2.0.branches.0.0.conv1.Lambda", "head.last_layer.0.Lambda",
                 "backbone.stage4.1.fuse_layers.0.3.0.Lambda"):
        assert name in with_grad, name
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_losses_are_class_weighted_ce_of_the_aggregated_logits(trained_once):
    """Each exit's loss is the class-weighted CE of its aggregated (copied) logits, upsampled to
    the label size; the copied pixels give exit 4's loss a gradient in exit 1's head."""
    model, batch, _, aggregated, _, losses = trained_once
    targets = torch.stack([b["sem_seg"] for b in batch])
    weight = torch.tensor(CITYSCAPES_CLASS_WEIGHTS)
    assert torch.equal(model.class_weights, weight)
    for i, z in enumerate(aggregated):
        expected = F.cross_entropy(resize_logits(z, targets.shape[-2:]), targets, weight=weight,
                                   ignore_index=255)
        loss = float(losses[f"loss_sem_seg_{i}"].detach())
        assert loss == pytest.approx(float(expected), rel=1e-5)
    # gradient of the last exit's loss alone reaches exit 1's classifier (copied pixels)
    model.zero_grad()
    model(batch)["loss_sem_seg_3"].backward()
    assert float(exit_classifier(model, 1).weight.grad.abs().sum()) > 0


def test_class_weights_on_a_tiny_case():
    """Weighted CE = sum_i w[y_i] nll_i / sum_i w[y_i] over non-ignored pixels; it differs from
    the unweighted mean by what the weights say."""
    model = build_model(_cfg())
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(1, 19, 2, 2, generator=gen)]
    targets = torch.tensor([[[0, 12], [17, 255]]])
    nll = torch.stack([-torch.log_softmax(logits[0][0, :, i, j], 0)[c]
                       for (i, j), c in zip([(0, 0), (0, 1), (1, 0)], (0, 12, 17))])
    w = torch.tensor([CITYSCAPES_CLASS_WEIGHTS[c] for c in (0, 12, 17)])
    weighted = float(model.losses(logits, targets)["loss_sem_seg_0"])
    assert weighted == pytest.approx(float((w * nll).sum() / w.sum()), rel=1e-6)
    model.class_weights = None
    unweighted = float(model.losses(logits, targets)["loss_sem_seg_0"])
    assert unweighted == pytest.approx(float(nll.mean()), rel=1e-6)
    assert abs(weighted - unweighted) > 1e-3
    # one weight per class or an error naming the key
    cfg = _cfg()
    cfg.MODEL.ANYTIME.CLASS_WEIGHTS = [1.0] * 5
    with pytest.raises(ValueError, match="MODEL.ANYTIME.CLASS_WEIGHTS"):
        build_model(cfg)

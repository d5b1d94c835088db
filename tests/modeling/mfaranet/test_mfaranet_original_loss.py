"""Our training losses against the original's, restated from the reference
(``mfaranet_original_reference.py``: the loader's per-sample box-filter boundary GT, argsort
OHEM, numpy-weighted BCE, histogram-weighted attention CE), term by term on the same inputs, and
the whole training loss and its gradients of the R18 model against the original's training
forward on the same weights. Where the two differ by design it is shown too: the boundary GT at
a window whose other labels average exactly to the centre's, and the image without a marked
pixel (the original: NaN; ours: 0)."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dl_lib.config import config_from_delta
from dl_lib.modeling import build_model
from dl_lib.modeling.mfaranet import backbone_config
from dl_lib.modeling.mfaranet.convert import convert_released, to_released
from dl_lib.modeling.mfaranet.losses import (MFARANetLoss, boundary_attention_cross_entropy,
                                             boundary_targets, ohem_cross_entropy)
from mfaranet_original_reference import (original_boundary_target, original_edge_attention_ce,
                                         original_forward, original_ohem_ce,
                                         original_training_loss, random_state_dict,
                                         read_key_dump)

IGNORE = 255
DUMP = read_key_dump(os.path.join(os.path.dirname(__file__), "mfaranet_keys.txt"))
MAIN = next(v for k, v in DUMP.items() if k.startswith("MFARANet (model_MFARANet.py)"))


def _blocky_labels(n, h, w, classes, cell, seed):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, classes, (n, h // cell, w // cell), generator=g)
    lab = lab.repeat_interleave(cell, 1).repeat_interleave(cell, 2)
    lab[:, : cell // 2 + 1] = IGNORE  # a void band (crop padding / unlabelled)
    return lab


def _loader_boundaries(labels):
    """The original's boundary GT, sample by sample as its data loader builds it: N×1×H×W."""
    return torch.from_numpy(np.stack([original_boundary_target(l.numpy()) for l in labels]))


def _confident_scores(labels, k, seed):
    """N×K×H×W logits whose label probabilities spread over (0, 1): right on ~half the pixels."""
    g = torch.Generator().manual_seed(seed)
    s = 3.0 * torch.randn((labels.shape[0], k) + labels.shape[1:], generator=g)
    right = (torch.rand(labels.shape, generator=g) < 0.5) & (labels != IGNORE)
    s.scatter_add_(1, labels.masked_fill(labels == IGNORE, 0)[:, None], 4.0 * right[:, None])
    return s


def test_the_restated_box_filter_is_opencvs_blur():
    cv2 = pytest.importorskip("cv2")
    lab = _blocky_labels(1, 40, 56, 19, 8, seed=2)[0].numpy()
    expected = np.abs(cv2.blur(lab.astype(np.float32), (5, 5)) - lab) > 0.005
    assert np.array_equal(original_boundary_target(lab)[0], expected)


def test_boundary_targets_equal_the_loaders_except_exact_averages():
    # Two classes and void: no window of other labels can average to the centre's value.
    labels = _blocky_labels(2, 48, 64, 2, 8, seed=0)
    labels[1, 20:30, 5:9] = IGNORE
    expected = _loader_boundaries(labels)[:, 0]
    assert expected.sum() > 100
    assert torch.equal(boundary_targets(labels, 5), expected)
    # Differs by design: a 1 between 0s and 2s whose 5x5 mean is exactly 1 is no boundary for
    # the box filter (mean == label) but is one for ours (another label in the window).
    row = torch.tensor([0, 0, 1, 2, 2, 2, 2])
    lab = row.repeat(7, 1)[None]
    assert original_boundary_target(lab[0].numpy())[0, 3, 2] == 0
    assert boundary_targets(lab, 5)[0, 3, 2] == 1


@pytest.mark.parametrize("min_kept", [0, 1000, 4500, 10_000])
def test_ohem_equals_the_originals(min_kept):
    labels = _blocky_labels(2, 48, 64, 5, 8, seed=1)
    scores = _confident_scores(labels, 5, seed=3)
    valid = int((labels != IGNORE).sum())
    prob = F.softmax(scores, 1).gather(1, labels.clamp(max=4)[:, None])[:, 0][labels != IGNORE]
    below = int((prob <= 0.7).sum())
    # the cases: threshold only; the threshold kept (min_kept below it); raised; plain CE
    assert 1000 < below < 4500 < valid < 10_000
    ours = ohem_cross_entropy(scores, labels, IGNORE, 0.7, min_kept)
    torch.testing.assert_close(ours, original_ohem_ce(scores, labels, 0.7, min_kept))
    if min_kept == 4500:  # raised: exactly min_kept pixels kept, so not the threshold-only loss
        assert not torch.allclose(ours, ohem_cross_entropy(scores, labels, IGNORE, 0.7, 0))


def test_every_loss_term_equals_the_originals():
    labels = _blocky_labels(2, 48, 64, 2, 8, seed=4)
    k = 2
    g = torch.Generator().manual_seed(5)
    branches = {b: _confident_scores(labels[:, ::4, ::4], k, seed=b)
                for b in range(1, 5)}
    edges = {b: 2.0 * torch.randn(2, 1, 12, 16, generator=g) for b in range(1, 5)}
    fused = torch.randn(2, k, 12, 16, generator=g)
    up = lambda t: F.interpolate(t, size=(48, 64), mode="bilinear", align_corners=True)  # noqa
    ours = MFARANetLoss(ohem_min_kept=1000)(branches, fused, edges, labels)
    original = {"out": up(fused), "branches": [branches[b] for b in range(1, 5)],
                "boundaries": [edges[b] for b in range(1, 5)]}
    theirs = original_training_loss(original, labels, _loader_boundaries(labels), min_kept=1000)
    assert set(theirs) == set(ours) | {"total"}
    for name, value in ours.items():
        torch.testing.assert_close(value, theirs[name], msg=name)
    assert all(ours[f"loss_boundary_attention{b}"] > 0 for b in range(1, 5))


def test_an_image_without_marked_pixels_is_nan_for_the_original_and_zero_for_ours():
    labels = _blocky_labels(2, 16, 16, 3, 4, seed=6)
    scores = torch.randn(2, 3, 16, 16)
    edges = torch.full((2, 1, 16, 16), -1.0)
    edges[0, :, 8:] = 2.0  # the first image has marked pixels, the second none
    assert math.isnan(original_edge_attention_ce(scores, labels, edges).item())
    ours = boundary_attention_cross_entropy(scores, labels, edges, IGNORE, 0.8)
    first = original_edge_attention_ce(scores[:1], labels[:1], edges[:1])
    torch.testing.assert_close(ours, first)


def test_whole_training_loss_and_gradients_equal_the_originals():
    """R18 model, the original's weights, BN in training mode, attention dropout 0 (so both
    runs see the same fused output); labels of two classes (boundary GT identical), boundary
    logits that mark pixels in every image (where none are, the original's term is NaN)."""
    torch.manual_seed(0)
    sd = random_state_dict(MAIN, seed=7)
    for i in range(4):  # boundary logits around 1: every image has pixels above 0.8 (no NaN)
        sd[f"boundary_heads.{i}.0.bias"] = torch.ones(1)
    cfg = config_from_delta(dict(MODEL=dict(
        META_ARCHITECTURE="MFARANet", BACKBONE=backbone_config("r18_deep_stem"),
        SEM_SEG_HEAD=dict(NUM_CLASSES=19),
        MFARANET=dict(ATTENTION_DROPOUT=0.0, OHEM_MIN_KEPT=2000))), family="mfaranet")
    model = build_model(cfg).train()
    model.load_state_dict(convert_released(sd))
    x = torch.randn(2, 3, 64, 96)
    labels = _blocky_labels(2, 64, 96, 2, 8, seed=8) * 7  # classes 0 and 7 of 19
    labels[labels == IGNORE * 7] = IGNORE
    ours = model.losses(model.forward_outputs(x, with_boundaries=True), labels)
    sum(ours.values()).backward()

    params = {k: v.clone().requires_grad_(v.is_floating_point() and "running" not in k)
              for k, v in sd.items()}
    out = original_forward(params, x, train=True, attention_dropout=0.0)
    theirs = original_training_loss(out, labels, _loader_boundaries(labels), min_kept=2000)
    theirs["total"].backward()
    for name, value in ours.items():
        torch.testing.assert_close(value, theirs[name], rtol=1e-4, atol=1e-5, msg=name)
    grads = to_released({n: p.grad for n, p in model.named_parameters()})
    for name in ("layer0.0.0.weight", "layer3.1.conv2.weight", "stages_offset.0.offset_map.weight",
                 "HMSA_attentions.2.0.weight", "boundary_heads.1.0.weight",
                 "multi_loss_head.3.0.bias"):
        assert params[name].grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[name], params[name].grad, rtol=1e-3, atol=1e-5,
                                   msg=name)

"""ADP-C inference policies (``AnytimeConv2d.fold_norm``, ``ring_matrix``; forced masks): every
combination gives the original's per-exit logits (``anytime_original_reference.py``) with mixed
masks on a channels-last W18, the fast paths really run, and training mode never folds."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from dl_lib.modeling.anytime import AnytimeConv2d
from dl_lib.modeling.anytime.confidence import (AnytimeBatchNorm2d, ForwardState, RingIndex,
                                                SegmentMasks)

from anytime_helpers import build, classifiers, images, max_prob, randomize
from anytime_original_reference import original_forward

POLICIES = list(itertools.product((True, False), repeat=2))  # (fold_norm, ring_matrix)


def _rel_err(ours, ref):
    return float((ours - ref).abs().max() / ref.abs().max())


@pytest.fixture
def policy():
    """Set (fold_norm, ring_matrix) on the class for a test; restored afterwards."""
    saved = AnytimeConv2d.fold_norm, AnytimeConv2d.ring_matrix

    def set_policy(fold_norm, ring_matrix):
        AnytimeConv2d.fold_norm, AnytimeConv2d.ring_matrix = fold_norm, ring_matrix

    yield set_policy
    AnytimeConv2d.fold_norm, AnytimeConv2d.ring_matrix = saved


def _mixed_model(interpolation="rbf"):
    """W18 ADP-C, channels-last (the fast paths need it), random weights, exit classifiers scaled
    so that every exit's logits have the same spread, threshold at a quantile: part of the image
    confident after each exit."""
    model = randomize(build("w18_RHCA", interpolation=interpolation, channels_last=True),
                      seed=3).eval()
    x = images(2, 64, 128)
    with torch.no_grad():
        model.threshold = 1.0  # every pixel computed: the dense logits
        logits, _ = model.forward_exits(x)
        for conv, z in zip(classifiers(model), logits):
            scale = 3.0 / float(z.std(dim=1).mean())
            conv.weight.mul_(scale)
            conv.bias.mul_(scale)
        logits, _ = model.forward_exits(x)
    model.threshold = float(max_prob(logits[0]).quantile(0.7))
    return model, x


@pytest.mark.parametrize("fold_norm,ring_matrix", POLICIES)
def test_every_policy_gives_the_original_logits(policy, fold_norm, ring_matrix, monkeypatch):
    model, x = _mixed_model()
    calls = {"folded": 0, "ring": 0}
    for name in ("_forward_folded", "_fill_ring_in_place"):
        original = getattr(AnytimeConv2d, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls["folded" if _name == "_forward_folded" else "ring"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(AnytimeConv2d, name, counted)
    policy(fold_norm, ring_matrix)
    with torch.no_grad():
        ours, info = model.forward_exits(x, report=True)
    fractions = [float(m.float().mean()) for m in info["masks"]]
    assert all(0.02 < f < 0.98 for f in fractions), fractions  # masks are mixed
    ref = original_forward(model, x)
    for k, (o, r) in enumerate(zip(ours, ref), start=1):
        assert _rel_err(o, r) < 1e-4, f"exit {k}: {_rel_err(o, r):.2e}"
    # the paths under test ran (folding always fills the ring with the sparse matrix)
    assert (calls["folded"] > 0) == fold_norm
    assert (calls["ring"] > 0) == (fold_norm or ring_matrix)
    # not a tautology: another bandwidth gives other logits
    lam = model.backbone.stage3[0].branches[0][0].conv1.Lambda
    with torch.no_grad():
        lam.mul_(0.3)
        other, _ = model.forward_exits(x)
    assert _rel_err(other[3], ref[3]) > 1e-3


def test_normalized_interpolation_is_the_same_under_every_policy(policy):
    model, x = _mixed_model("normalized")
    results = {}
    with torch.no_grad():
        for p in POLICIES:
            policy(*p)
            results[p] = model.forward_exits(x)[0]
    reference = results[(False, False)]  # the masked depthwise convolution on the ring
    for p, outs in results.items():
        for k, (o, r) in enumerate(zip(outs, reference), start=1):
            assert _rel_err(o, r) < 1e-5, f"{p} exit {k}: {_rel_err(o, r):.2e}"


def _row_masks(n=2, h=16, w=32):
    """Computed = the top 75%, 50%, 25% of the rows (stride 4 of a 64 x 128 input)."""
    forced = [torch.zeros(n, 1, h, w, dtype=torch.bool) for _ in range(3)]
    for k, m in enumerate(forced):
        m[:, :, : h * (3 - k) // 4] = True
    return forced


def test_training_mode_never_folds(policy, monkeypatch):
    model, x = _mixed_model()
    model.train()
    model.forced_masks = _row_masks()
    policy(True, True)
    monkeypatch.setattr(AnytimeConv2d, "_forward_folded",
                        lambda *a, **k: pytest.fail("folded in training mode"))
    out, _ = model.forward_exits(x)
    sum(o.sum() for o in out).backward()  # the masked training path stays differentiable
    assert model.backbone.stage2[0].branches[1][0].conv1.Lambda.grad is not None


def test_ring_index_is_the_interpolation_at_the_ring():
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(2, 1, 11, 17, generator=gen) < 0.3  # computed pixels, touching the borders
    masks = SegmentMasks.from_uncertain(mask)
    index = masks.ring_index((11, 17))
    y = torch.randn(2, 5, 11, 17, generator=gen) * mask
    kernel = torch.rand(7, 7, generator=gen)
    dense = F.conv2d(y, kernel.expand(5, 1, 7, 7), padding=3, groups=5)
    ring = masks.ring((11, 17))
    pixels = y.permute(0, 2, 3, 1).reshape(-1, 5)
    rows = index.matrix(kernel, pixels.shape[0]) @ pixels
    expected = dense.permute(0, 2, 3, 1).reshape(-1, 5)[ring.reshape(-1)]
    assert torch.equal(index.rows, ring.reshape(-1).nonzero().squeeze(1))
    torch.testing.assert_close(rows, expected, rtol=1e-5, atol=1e-6)
    # only computed neighbours are entries, and K * m at the ring is the row sum
    weight_sum = F.conv2d(mask.float(), kernel[None, None], padding=3)
    torch.testing.assert_close(index.row_sums(kernel), weight_sum.reshape(-1)[index.rows])
    assert bool(mask.reshape(-1)[index.col].all())


def test_a_folded_norm_passes_through_only_its_convolution_output():
    norm = AnytimeBatchNorm2d.from_norm(torch.nn.BatchNorm2d(3).eval())
    with torch.no_grad():
        norm.running_mean.fill_(1.0)
    x, other = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    with ForwardState() as state:
        state.folded = x
        assert norm(other) is not other  # another tensor: normalised
        assert norm(x) is x and state.folded is None  # the folded output, once
        assert not torch.equal(norm(x), x)


def test_forced_masks_replace_the_logits_masks():
    model, x = _mixed_model()
    forced = _row_masks()
    model.forced_masks = forced
    with torch.no_grad():
        _, info = model.forward_exits(x, report=True)
    assert all(torch.equal(a, b) for a, b in zip(info["masks"], forced))
    with pytest.raises(ValueError, match="bool N x 1 x h x w"):
        SegmentMasks.from_uncertain(forced[0].float())


def test_tap_floor_drops_only_negligible_taps_and_keeps_the_logits(policy, monkeypatch):
    """Taps below 2^-70 of the kernel's largest (at Lambda 3: squared distance >= 8) are left
    out of the ring matrix, the logits stay the original's; the restricted pattern is the full
    one with those entries removed."""
    model, x = _mixed_model()
    policy(True, True)
    sizes = []
    original = RingIndex.restricted

    def counted(self, keep):
        sizes.append((self.col.numel(), int(keep.sum())))
        return original(self, keep)

    monkeypatch.setattr(RingIndex, "restricted", counted)
    with torch.no_grad():
        ours, _ = model.forward_exits(x)
        monkeypatch.setattr(AnytimeConv2d, "tap_floor", 0.0)
        full, _ = model.forward_exits(x)
    # (randomize draws each Lambda: the kept sets differ; the centre, K(0) ~ 0, is never kept)
    assert sizes and all(k <= 48 for _, k in sizes) and any(k < 44 for _, k in sizes)
    ref = original_forward(model, x)
    for k, (o, f, r) in enumerate(zip(ours, full, ref), start=1):
        assert _rel_err(o, r) < 1e-4, f"exit {k}: {_rel_err(o, r):.2e}"
        assert _rel_err(o, f) < 1e-6, f"exit {k}: {_rel_err(o, f):.2e}"
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(1, 1, 9, 13, generator=gen) < 0.4
    masks = SegmentMasks.from_uncertain(mask)
    keep = torch.zeros(49, dtype=torch.bool)
    keep[[17, 23, 25, 31]] = True  # the 4 taps at distance 1
    full_index, part = masks.ring_index((9, 13)), masks.ring_index((9, 13), keep)
    assert part is masks.ring_index((9, 13), keep)  # cached
    kernel = torch.rand(7, 7, generator=gen) * keep.view(7, 7)
    pixels = (torch.randn(1, 3, 9, 13, generator=gen) * mask).permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(part.matrix(kernel, 117) @ pixels,
                               full_index.matrix(kernel, 117) @ pixels)
    assert bool(keep[part.tap].all()) and part.col.numel() < full_index.col.numel()

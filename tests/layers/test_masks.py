"""Tests of the mask helpers in dl_lib.layers.masks."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dl_lib.layers import (
    add_grid_prior,
    block_density,
    dilate_mask,
    dilate_mask_same,
    fill_inactive,
    mask_density,
    masked_conv2d,
    resize_mask,
)
from dl_lib.layers.masked_conv_reference import conv_output_size


def test_resize_mask_nearest_and_any():
    m = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    m[0, 0, 1, 1] = True  # not on the nearest-sampling grid of a 2x downsample
    assert not resize_mask(m, (4, 4), "nearest").any()
    down = resize_mask(m, (4, 4), "any")
    assert down.shape == (1, 1, 4, 4) and down.sum() == 1 and down[0, 0, 0, 0]
    up = resize_mask(down, (8, 8), "nearest")
    assert up.sum() == 4 and up[0, 0, :2, :2].all()
    assert torch.equal(resize_mask(down, (8, 8), "any"), up)
    with pytest.raises(ValueError, match="mode"):
        resize_mask(m, 4, "bilinear")


@settings(max_examples=25, deadline=None)
@given(k=st.sampled_from([1, 3, 5]), stride=st.sampled_from([1, 2]),
       dilation=st.sampled_from([1, 2]), padding=st.integers(0, 3), h=st.integers(6, 12),
       w=st.integers(6, 12), seed=st.integers(0, 1000))
def test_dilate_mask_makes_chained_masked_convs_exact(k, stride, dilation, padding, h, w, seed):
    """conv2(conv1(x)) at the active outputs of conv2 only needs conv1 on dilate_mask(mask2)."""
    g = torch.Generator().manual_seed(seed)
    ho, wo = conv_output_size((h, w), k, stride, padding, dilation)
    if ho < 1 or wo < 1:
        return
    x = torch.randn(1, 2, h, w, generator=g, dtype=torch.float64)
    w1 = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    w2 = torch.randn(2, 3, k, k, generator=g, dtype=torch.float64)
    mask2 = torch.rand(1, 1, ho, wo, generator=g) < 0.3
    mask1 = dilate_mask(mask2, k, stride, padding, dilation, input_size=(h, w))
    assert mask1.shape == (1, 1, h, w) and mask1.dtype == torch.bool
    y1 = masked_conv2d(x, w1, None, mask1, 1, 1)
    y2 = masked_conv2d(y1, w2, None, mask2, stride, padding, dilation)
    dense = F.conv2d(F.conv2d(x, w1, None, 1, 1), w2, None, stride, padding, dilation) * mask2
    torch.testing.assert_close(y2, dense)
    # Minimal: every input pixel marked is read by some active output (none wasted).
    reads = torch.autograd.functional.jacobian(
        lambda t: (F.conv2d(t, torch.ones(1, 1, k, k, dtype=t.dtype), None, stride, padding,
                            dilation) * mask2).sum(), torch.ones(1, 1, h, w, dtype=torch.float64))
    assert torch.equal(reads != 0, mask1)


def test_dilate_mask_same_and_errors():
    m = torch.zeros(1, 1, 7, 7, dtype=torch.bool)
    m[0, 0, 3, 3] = True
    d = dilate_mask_same(m, 3)
    assert d.sum() == 9 and d[0, 0, 2:5, 2:5].all()
    d2 = dilate_mask_same(m, 3, dilation=2)
    assert d2.sum() == 9 and d2[0, 0, 1, 1] and not d2[0, 0, 2, 2]
    with pytest.raises(ValueError, match="input_size"):
        dilate_mask(m, 3, stride=2)
    with pytest.raises(ValueError, match="symmetric"):
        dilate_mask_same(m, 2)


def test_fill_inactive_modes():
    torch.manual_seed(0)
    y = torch.randn(2, 3, 6, 6)
    mask = torch.rand(2, 1, 6, 6) < 0.5
    z = fill_inactive(y, mask, "zero")
    torch.testing.assert_close(z, y * mask)
    keep = torch.randn_like(y)
    k = fill_inactive(y, mask, "keep", keep=keep)
    torch.testing.assert_close(k, torch.where(mask, y, keep))
    i = fill_inactive(y, mask, "interp", sigma=1.0, kernel_size=5)
    torch.testing.assert_close(i[mask.expand_as(y)], y[mask.expand_as(y)])
    # A constant field is reproduced exactly wherever some neighbour is active.
    const = torch.full((1, 2, 6, 6), 3.0)
    sparse = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    sparse[0, 0, ::2, ::2] = True
    torch.testing.assert_close(fill_inactive(const, sparse, "interp"), const)
    with pytest.raises(ValueError, match="keep"):
        fill_inactive(y, mask, "keep")
    with pytest.raises(ValueError, match="mode"):
        fill_inactive(y, mask, "nearest")
    with pytest.raises(ValueError, match="does not match"):
        fill_inactive(y, mask[..., :5], "zero")


def test_fill_inactive_interp_is_differentiable():
    y = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(1, 1, 5, 5) < 0.5
    assert torch.autograd.gradcheck(lambda t: fill_inactive(t, mask, "interp", kernel_size=3), (y,))


def test_grid_prior_and_densities():
    m = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    g = add_grid_prior(m, 4)
    assert g.sum() == 2 * 4 and g[0, 0, 0, 0] and g[0, 0, 4, 4] and not m.any()
    assert float(mask_density(g)) == pytest.approx(1 / 16)
    assert mask_density(g, per_sample=True).shape == (2,)
    one = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    one[0, 0, 0, 0] = True
    assert float(block_density(one, 4)) == pytest.approx(0.25)
    assert float(block_density(one, 3)) == pytest.approx(1 / 9)  # 3x3 tiles, partial ones count
    assert float(block_density(torch.ones(1, 1, 5, 5), 2)) == 1.0

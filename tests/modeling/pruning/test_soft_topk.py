"""The soft top-k mask, its gradient, the detached threshold, keep counts and the temperature
schedule against the formulas of reference acosp.md 2.1-2.2 written out here with NumPy."""
import math

import numpy as np
import pytest
import torch

from dl_lib.modeling.pruning import (hard_topk_mask, keep_count, soft_topk_mask, temperature_at,
                                     temperature_at_iteration)


def numpy_mask(w: np.ndarray, k: int, temperature: float) -> np.ndarray:
    """m = sigmoid((z - x0) / T), z standardised (unbiased std, floor 1e-3), x0 the linear
    (1 - k/C) quantile of z."""
    z = (w - w.mean()) / max(w.std(ddof=1), 1e-3)
    x0 = np.quantile(z, 1.0 - k / w.size)  # NumPy's default is linear interpolation
    return 1.0 / (1.0 + np.exp(-(z - x0) / temperature))


def numpy_grad_fixed_threshold(w: np.ndarray, k: int, temperature: float, c: np.ndarray):
    """d(sum c*m)/dw with x0 held constant: the chain rule through the sigmoid and the
    standardisation (mean and std depend on w)."""
    n = w.size
    mu, sigma = w.mean(), w.std(ddof=1)
    m = numpy_mask(w, k, temperature)
    dl_dz = c * m * (1 - m) / temperature
    d = w - mu
    # dz_i/dw_j = (delta_ij - 1/n) / sigma - d_i d_j / ((n - 1) sigma^3)
    jac = (np.eye(n) - 1.0 / n) / sigma - np.outer(d, d) / ((n - 1) * sigma ** 3)
    return jac.T @ dl_dz


@pytest.mark.parametrize("channels,k,temperature", [(64, 16, 1.0), (20, 7, 0.3), (9, 8, 0.05)])
def test_mask_values_match_the_formula(channels, k, temperature):
    w = torch.randn(channels, generator=torch.Generator().manual_seed(channels), dtype=torch.float64)
    got = soft_topk_mask(w.float(), k, temperature).double().numpy()
    np.testing.assert_allclose(got, numpy_mask(w.numpy(), k, temperature), rtol=1e-4, atol=1e-6)


def test_mask_is_all_ones_when_every_channel_is_kept():
    w = torch.randn(8)
    assert torch.equal(soft_topk_mask(w, 8, 0.5), torch.ones(8))


def test_small_temperature_tends_to_the_top_k():
    w = torch.randn(32, generator=torch.Generator().manual_seed(3))
    soft = soft_topk_mask(w, 10, 1e-4)
    top = torch.zeros(32)
    top[w.argsort(descending=True)[:10]] = 1
    assert torch.allclose(soft, top, atol=1e-3)
    assert torch.equal(hard_topk_mask(w, 10), top)


def test_gradient_matches_the_formula_with_a_detached_threshold():
    channels, k, temperature = 12, 5, 0.7
    w0 = np.random.RandomState(1).randn(channels)
    c = np.random.RandomState(2).randn(channels)
    w = torch.tensor(w0, requires_grad=True)
    (soft_topk_mask(w, k, temperature) * torch.tensor(c)).sum().backward()
    expected = numpy_grad_fixed_threshold(w0, k, temperature, c)
    np.testing.assert_allclose(w.grad.numpy(), expected, rtol=1e-8, atol=1e-10)

    # The full function's numerical gradient also moves the quantile; it must differ.
    def loss(v):
        return float((numpy_mask(v, k, temperature) * c).sum())
    eps = 1e-6
    numeric = np.array([(loss(w0 + eps * e) - loss(w0 - eps * e)) / (2 * eps)
                        for e in np.eye(channels)])
    assert np.abs(numeric - expected).max() > 1e-3


def test_threshold_is_detached():
    # The same values with the quantile left in the graph give another gradient.
    w = torch.randn(16, dtype=torch.float64, requires_grad=True)
    m = soft_topk_mask(w, 4, 1.0)
    z = (w - w.mean()) / w.std().clamp_min(1e-3)
    attached = torch.sigmoid(z - torch.quantile(z, 0.75))
    g_ours = torch.autograd.grad(m[0], w, retain_graph=True)[0]
    g_attached = torch.autograd.grad(attached[0], w)[0]
    assert torch.allclose(m, attached)
    assert not torch.allclose(g_ours, g_attached)


def test_std_floor():
    w = torch.full((10,), 2.0)
    w[0] += 1e-5  # std ~ 3e-6 < 1e-3: z uses the floor
    expected = numpy_mask(w.double().numpy(), 3, 1.0)
    np.testing.assert_allclose(soft_topk_mask(w, 3, 1.0).double().numpy(), expected, atol=1e-5)


def test_keep_count_with_the_floor():
    for channels, s, k in [(64, 0.75, 16), (128, 0.75, 32), (256, 0.75, 64), (512, 0.75, 128),
                           (64, 0.9375, 8), (128, 0.9375, 8), (256, 0.9375, 16), (64, 0.5, 32),
                           (2048, 0.875, 256), (10, 0.5, 8), (5, 0.5, 5), (19, 0.5, 10)]:
        assert keep_count(channels, s) == max(math.ceil((1 - s) * channels), min(8, channels)), \
            (channels, s)
        assert keep_count(channels, s) == k, (channels, s)
    assert keep_count(64, 0.9375, floor=2) == 4
    with pytest.raises(ValueError, match="SPARSITY"):
        keep_count(64, 1.0)


def test_hard_topk_keeps_exactly_k():
    w = torch.tensor([0.5, 3.0, -1.0, 3.0, 2.0, 0.0])
    assert hard_topk_mask(w, 3).sum() == 3
    assert hard_topk_mask(w, 3)[[1, 3, 4]].tolist() == [1, 1, 1]


def test_temperature_values_of_the_reference():
    # acosp.md 2.2, e_e = 50: T at e = 0, 1, 10, 25, 49, 50.
    expected = [1.0, 0.871, 0.251, 0.0316, 0.00115, 0.001]
    got = [temperature_at(e, 0, 50) for e in (0, 1, 10, 25, 49, 50)]
    for g, e in zip(got, expected):
        assert g == pytest.approx(e, rel=5e-3)
    assert temperature_at(70, 0, 50) == pytest.approx(1e-3)
    assert temperature_at(5, 10, 20) == 1.0  # before the start
    assert temperature_at(15, 10, 20) == pytest.approx(1e-3 ** 0.5)


def test_per_epoch_schedule_is_one_epoch_late_as_the_original():
    ipe = 4
    temps = [temperature_at_iteration(i, ipe, 0, 50) for i in range(0, 4 * ipe)]
    assert temps[:2 * ipe] == [1.0] * (2 * ipe)  # epochs 0 and 1 use T0
    assert temps[2 * ipe:3 * ipe] == [pytest.approx(temperature_at(1, 0, 50))] * ipe
    # the last soft epoch (49) trains with T(48)
    assert temperature_at_iteration(49 * ipe, ipe, 0, 50) == pytest.approx(
        1e-3 ** (48 / 50))


def test_per_iteration_schedule_is_smooth():
    got = temperature_at_iteration(25 * 10 + 5, 10, 0, 50, schedule="iteration")
    assert got == pytest.approx(1e-3 ** (25.5 / 50))
    with pytest.raises(ValueError, match="TEMPERATURE_SCHEDULE"):
        temperature_at_iteration(0, 10, 0, 50, schedule="cosine")

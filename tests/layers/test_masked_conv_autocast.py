"""masked_conv2d / MaskedConv2d under torch.autocast: the dtype F.conv2d would give, values within
the low-precision tolerance of the float32 reference, gradients to input and parameters."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dl_lib.layers import MaskedConv2d, masked_conv2d
from dl_lib.layers.masked_conv_reference import masked_conv2d_dense

BF16_TOL = dict(rtol=2e-2, atol=5e-2)


def _layer(groups=1, cin=8, cout=8, seed=0):
    torch.manual_seed(seed)
    conv = MaskedConv2d(cin, cout, 3, padding=1, groups=groups)
    x = torch.randn(2, cin, 10, 12)
    mask = torch.rand(2, 1, 10, 12) < 0.3
    return conv, x, mask


@pytest.mark.parametrize("groups", [1, 8])
@pytest.mark.parametrize("dense_fallback", [False, True])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_cpu_bf16_autocast_matches_reference(groups, dense_fallback, input_dtype):
    conv, x, mask = _layer(groups)
    conv.dense_fallback = dense_fallback
    # A bf16 input is what the previous layer gives under autocast (weights stay float32).
    x = x.to(input_dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x, mask)
        want_dtype = F.conv2d(x, conv.weight, conv.bias, 1, 1, 1, groups).dtype
    assert want_dtype == torch.bfloat16
    assert y.dtype == want_dtype
    ref = masked_conv2d_dense(x.detach().float(), conv.weight.detach(), conv.bias.detach(), mask,
                              1, 1, 1, groups)
    torch.testing.assert_close(y.float(), ref, **BF16_TOL)
    assert float(y.detach()[~mask.expand_as(y)].abs().sum()) == 0.0
    y.float().square().sum().backward()
    assert x.grad is not None and x.grad.dtype == x.dtype and torch.isfinite(x.grad).all()
    assert conv.weight.grad is not None and conv.weight.grad.dtype == torch.float32
    assert conv.bias.grad is not None and float(conv.weight.grad.abs().sum()) > 0


def test_functional_autocast_and_keep_variant():
    conv, x, mask = _layer()
    w, b = conv.weight.detach(), conv.bias.detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = masked_conv2d(x, w, b, mask, padding=1)
        # The keep variant writes into out in out's dtype.
        out = torch.zeros(2, 8, 10, 12, dtype=torch.bfloat16)
        r = masked_conv2d(x, w, b, mask, padding=1, out=out)
    assert y.dtype == torch.bfloat16 and r is out
    ref = masked_conv2d_dense(x, w, b, mask, 1, 1, 1, 1)
    torch.testing.assert_close(y.float(), ref, **BF16_TOL)
    torch.testing.assert_close(out.float(), ref, **BF16_TOL)
    # float64 stays float64 under autocast, as for F.conv2d.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y64 = masked_conv2d(x.double(), w.double(), b.double(), mask, padding=1)
    assert y64.dtype == torch.float64


def test_autocast_in_a_model():
    conv, x, mask = _layer()
    model = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model(x)
        assert h.dtype == torch.bfloat16
        y = conv(h, mask)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert model[0].weight.grad is not None and conv.weight.grad is not None

"""The in-place ("keep") masked convolution: masked_conv2d(..., out=t) writes the active positions
into t and leaves the others untouched; gradients against the pure-PyTorch reference."""
import pytest
import torch
import torch.nn.functional as F

import dl_lib
from dl_lib.layers import MaskedConv2d, masked_conv2d
from dl_lib.layers.masked_conv_reference import masked_conv2d_keep

needs_ops = pytest.mark.skipif(not dl_lib.has_compiled_ops(), reason="dl_lib._C not built")

# (cin, cout, k, stride, groups): 3x3, depthwise, 1x1, strided, grouped
LAYERS = [(4, 6, 3, 1, 1), (8, 8, 3, 1, 8), (6, 5, 1, 1, 1), (4, 6, 3, 2, 1), (4, 6, 3, 1, 2)]


def _problem(cin, cout, k, stride, groups, dtype=torch.float32, seed=0, hw=(9, 11)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, cin, *hw, generator=g, dtype=dtype)
    w = torch.randn(cout, cin // groups, k, k, generator=g, dtype=dtype)
    b = torch.randn(cout, generator=g, dtype=dtype)
    y = F.conv2d(x, w, b, stride, k // 2, 1, groups)
    mask = torch.rand(2, 1, *y.shape[-2:], generator=g) < 0.4
    previous = torch.randn(y.shape, generator=g, dtype=dtype)
    return x, w, b, mask, previous, dict(stride=stride, padding=k // 2, groups=groups)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_keep_writes_active_positions_and_leaves_the_rest(layer, layout):
    x, w, b, mask, previous, kw = _problem(*layer)
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    out = previous.clone().contiguous(memory_format=fmt)
    ptr = out.data_ptr()
    y = masked_conv2d(x, w, b, mask, out=out, **kw)
    assert y.data_ptr() == ptr and out.data_ptr() == ptr
    want = masked_conv2d_keep(x, w, b, mask, previous, **kw)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    inactive = ~mask.expand_as(out)
    # Untouched: bit-identical to what was there, not recomputed or zeroed.
    assert torch.equal(out[inactive], previous[inactive])


@needs_ops
def test_keep_calls_the_compiled_op_without_zero_fill(monkeypatch):
    x, w, b, mask, previous, kw = _problem(4, 6, 3, 1, 1)
    out = torch.full_like(previous, float("nan"))
    masked_conv2d(x, w, b, mask, out=out, **kw)
    # NaN at the inactive positions survives: nothing was written there.
    assert torch.isnan(out[~mask.expand_as(out)]).all()
    assert not torch.isnan(out[mask.expand_as(out)]).any()
    # The raw op: same semantics, writes its out argument (and returns nothing).
    out2 = previous.clone()
    assert torch.ops.dl_lib.masked_conv2d_out(x, w, b, mask, 1, 1, 1, 1, 1, 1, 1, out2) is None
    torch.testing.assert_close(out2, masked_conv2d_keep(x, w, b, mask, previous, **kw),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layer", [LAYERS[0], LAYERS[1], LAYERS[3]])
def test_keep_gradcheck_float64(layer):
    x, w, b, mask, previous, kw = _problem(*layer, dtype=torch.float64, hw=(5, 6))
    x, w, b, previous = (t.requires_grad_() for t in (x, w, b, previous))

    def keep(x, w, b, previous):
        return masked_conv2d(x, w, b, mask, out=previous.clone(), **kw)

    torch.autograd.gradcheck(keep, (x, w, b, previous), eps=1e-6, atol=1e-6)
    # Same gradients as the reference, including grad_output at the inactive positions of out.
    grad = torch.randn(keep(x, w, b, previous).shape, dtype=torch.float64)
    got = torch.autograd.grad(keep(x, w, b, previous), (x, w, b, previous), grad)
    want = torch.autograd.grad(masked_conv2d_keep(x, w, b, mask, previous, **kw),
                               (x, w, b, previous), grad)
    for g_got, g_want in zip(got, want):
        torch.testing.assert_close(g_got, g_want)
    torch.testing.assert_close(got[3], grad * ~mask)


def test_keep_dense_fallback_and_module():
    x, w, b, mask, previous, kw = _problem(4, 6, 3, 1, 1)
    conv = MaskedConv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b)
    for m in (mask, torch.ones_like(mask), torch.rand(mask.shape) < 0.99):
        want = masked_conv2d_keep(x, w, b, m, previous, **kw)
        out = previous.clone()
        torch.testing.assert_close(masked_conv2d(x, w, b, m, out=out, dense_fallback=True, **kw),
                                   want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
        out = previous.clone()
        conv(x, m, out=out)
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    # No mask: a dense layer written into out.
    out = previous.clone()
    torch.testing.assert_close(conv(x, out=out), conv(x))
    torch.testing.assert_close(out, conv(x))
    # Training through the dense fallback: out still gets grad_output at the inactive positions.
    prev = previous.clone().requires_grad_()
    dense_m = torch.rand(mask.shape) < 0.99
    y = conv(x, dense_m, out=prev.clone())
    (g,) = torch.autograd.grad(y.sum(), prev)
    torch.testing.assert_close(g, (~dense_m).expand_as(g).to(g.dtype))


def test_keep_without_kernel_dtype_uses_reference():
    # bfloat16 on the CPU has no compiled kernel: the reference path, same semantics.
    x, w, b, mask, previous, kw = _problem(4, 6, 3, 1, 1)
    x, w, b, previous = (t.bfloat16() for t in (x, w, b, previous))
    out = previous.clone()
    masked_conv2d(x, w, b, mask, out=out, **kw)
    torch.testing.assert_close(out, masked_conv2d_keep(x, w, b, mask, previous, **kw))
    assert torch.equal(out[~mask.expand_as(out)], previous[~mask.expand_as(out)])


def test_keep_rejects_bad_out():
    x, w, b, mask, previous, kw = _problem(4, 6, 3, 1, 1)
    with pytest.raises(ValueError, match="output shape"):
        masked_conv2d(x, w, b, mask, out=previous[:, :3], **kw)
    with pytest.raises(TypeError, match="float32"):
        masked_conv2d(x, w, b, mask, out=previous.double(), **kw)


@needs_ops
def test_keep_op_schema_and_fake():
    x, w, b, mask, previous, _ = _problem(4, 6, 3, 1, 1, hw=(5, 6))
    torch.library.opcheck(torch.ops.dl_lib.masked_conv2d_out.default,
                          (x, w, b, mask, 1, 1, 1, 1, 1, 1, 1, previous.clone()),
                          test_utils=("test_schema", "test_faketensor"))


@needs_ops
def test_keep_under_torch_compile():
    # The op returns nothing (an output aliasing `out` could not be functionalized).
    x, w, b, mask, previous, kw = _problem(4, 6, 3, 1, 1, hw=(6, 7))
    w, b = w.requires_grad_(), b.requires_grad_()

    def keep(x, previous):
        return masked_conv2d(x, w, b, mask, out=previous.clone(), **kw)

    compiled = torch.compile(keep, backend="aot_eager", fullgraph=False)
    y = compiled(x, previous)
    torch.testing.assert_close(y, masked_conv2d_keep(x, w, b, mask, previous, **kw),
                               rtol=1e-4, atol=1e-4)
    (gw,) = torch.autograd.grad(y.sum(), w)
    (gw_ref,) = torch.autograd.grad(masked_conv2d_keep(x, w, b, mask, previous, **kw).sum(), w)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-4, atol=1e-4)

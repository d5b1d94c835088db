"""One masked layer (reference ``anytime.md`` section 3.4): ``AnytimeConv2d`` inside a masked
segment (computed with ``dl_lib.layers.masked_conv2d``, interpolation on the ring only) against the
original's dense computation, values and gradients (input, weight, bias, Lambda); the
"normalized" and "none" interpolations against their formulas; mask resizing "nearest" vs "any"."""
import pytest
import torch
import torch.nn.functional as F

from dl_lib.modeling.anytime import AnytimeConv2d, ForwardState, SegmentMasks

from anytime_original_reference import _original_conv, _original_mask

THRESHOLD = 0.5
# (kernel, stride, padding)
CONVS = [(3, 1, 1), (3, 2, 1), (1, 1, 0)]


def _logits(n, h, w, confident_fraction, seed=0):
    """Logits whose max probability is ~1 (confident) at about ``confident_fraction`` of the
    pixels (in blobs, so the ring is not everything) and 1/19 elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    blobs = F.interpolate(torch.rand(n, 1, (h + 3) // 4, (w + 3) // 4, generator=gen),
                          size=(h, w), mode="bilinear", align_corners=False)
    confident = blobs < blobs.flatten(1).quantile(confident_fraction, dim=1)[:, None, None, None]
    logits = torch.zeros(n, 19, h, w)
    logits[:, 3:4] = 20.0 * confident
    return logits


def _conv(k, stride, pad, interpolation, lam=1.3, seed=0):
    torch.manual_seed(seed)
    conv = AnytimeConv2d(6, 8, k, stride, pad, bias=True, interpolation=interpolation)
    if interpolation != "none":
        with torch.no_grad():
            conv.Lambda.fill_(lam)
    return conv


def _ours(conv, x, logits, resize="nearest"):
    with ForwardState() as state:
        state.masks = SegmentMasks(logits, THRESHOLD, "conf_thre", resize)
        return conv(x)


def _close(a, b, what, rtol=1e-5):
    a, b = a.detach(), b.detach()
    err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
    assert err < rtol, f"{what}: max |ours - reference| / max |reference| = {err:.2e}"


@pytest.mark.parametrize("k,stride,pad", CONVS)
@pytest.mark.parametrize("confident", [0.3, 0.85])
def test_op_equals_the_original_dense_computation(k, stride, pad, confident):
    """Values and gradients w.r.t. input, weight, bias and Lambda (training), at a low and a
    high computed fraction (the sparse kernel and the dense fallback)."""
    conv = _conv(k, stride, pad, "rbf")
    logits = _logits(2, 14, 18, confident)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 14, 18, generator=gen)
    for layout in (torch.contiguous_format, torch.channels_last):
        xs = [x.clone().contiguous(memory_format=layout).requires_grad_() for _ in range(2)]
        ours = _ours(conv, xs[0], logits)
        grad_out = torch.randn(ours.shape, generator=gen)
        grads_ours = torch.autograd.grad((ours * grad_out).sum(),
                                         [xs[0], conv.weight, conv.bias, conv.Lambda])
        ref = _original_conv(conv, xs[1], logits, THRESHOLD, "conf_thre")
        grads_ref = torch.autograd.grad((ref * grad_out).sum(),
                                        [xs[1], conv.weight, conv.bias, conv.Lambda])
        m = _original_mask(logits, ref.shape[-2:], THRESHOLD)
        assert 0.05 < float(m.mean()) < 0.95
        _close(ours, ref, f"values {layout}")
        for name, a, b in zip(("input", "weight", "bias", "Lambda"), grads_ours, grads_ref):
            # Lambda's gradient is one sum over every output (float32 summation order)
            _close(a, b, f"grad {name} {layout}", rtol=3e-4 if name == "Lambda" else 1e-5)
        assert float(grads_ref[3].abs()) > 0  # Lambda gets a gradient at all


def test_the_comparison_sees_a_wrong_bandwidth():
    conv = _conv(3, 1, 1, "rbf")
    logits = _logits(1, 14, 18, 0.5)
    x = torch.randn(1, 6, 14, 18)
    with torch.no_grad():
        ours = _ours(conv, x, logits)
        conv.Lambda.fill_(0.7)
        ref = _original_conv(conv, x, logits, THRESHOLD, "conf_thre")
    assert float((ours - ref).abs().max()) > 1e-3


@pytest.mark.parametrize("k,stride,pad", CONVS)
@pytest.mark.parametrize("confident", [0.3, 0.85])
def test_inference_in_both_layouts(k, stride, pad, confident):
    """Without autograd (where channels-last outputs may be filled in place): the same values."""
    conv = _conv(k, stride, pad, "rbf")
    logits = _logits(2, 14, 18, confident)
    x = torch.randn(2, 6, 14, 18)
    with torch.no_grad():
        ref = _original_conv(conv, x, logits, THRESHOLD, "conf_thre")
        for layout in (torch.contiguous_format, torch.channels_last):
            _close(_ours(conv, x.contiguous(memory_format=layout), logits), ref, str(layout))


@pytest.mark.parametrize("k,stride,pad", CONVS)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_normalized_interpolation(k, stride, pad, layout):
    """Confident outputs = (K * (m y)) / (K * m), 0 where no computed pixel is in the window."""
    conv = _conv(k, stride, pad, "normalized", lam=1.0)
    logits = _logits(2, 14, 18, 0.6)
    x = torch.randn(2, 6, 14, 18).contiguous(memory_format=layout)
    with torch.no_grad():
        ours = _ours(conv, x, logits)
        y = F.conv2d(x, conv.weight, conv.bias, stride, pad)
        m = _original_mask(logits, y.shape[-2:], THRESHOLD)
        kernel = torch.exp(-conv.Lambda ** 2 * conv.square_dis)[None, None]
        num = F.conv2d(m * y, kernel.expand(8, 1, 7, 7), padding=3, groups=8)
        den = F.conv2d(m, kernel, padding=3)
        ref = m * y + (1 - m) * torch.where(den > 0, num / den.clamp_min(1e-30), 0.0)
    _close(ours, ref, "normalized")
    # unlike "rbf", a confident pixel inside a confident region is not pulled towards 0
    with torch.no_grad():
        rbf = _original_conv(conv, x, logits, THRESHOLD, "conf_thre")
    ring = ((den > 0) & (m == 0)).expand_as(ref)
    assert float(ours[ring].abs().mean()) > 1.05 * float(rbf[ring].abs().mean())


@pytest.mark.parametrize("k,stride,pad", CONVS)
def test_no_interpolation(k, stride, pad):
    """Confident outputs are 0 (no bias either) and the layer has no Lambda."""
    conv = _conv(k, stride, pad, "none")
    assert not hasattr(conv, "Lambda") and "square_dis" not in dict(conv.named_buffers())
    logits = _logits(2, 14, 18, 0.6)
    x = torch.randn(2, 6, 14, 18)
    with torch.no_grad():
        ours = _ours(conv, x, logits)
        y = F.conv2d(x, conv.weight, conv.bias, stride, pad)
        m = _original_mask(logits, y.shape[-2:], THRESHOLD)
    _close(ours, m * y, "none")
    assert bool((ours[(m == 0).expand_as(ours)] == 0).all())


def test_outside_a_forward_state_it_is_a_plain_conv():
    conv = _conv(3, 2, 1, "rbf")
    x = torch.randn(1, 6, 14, 18)
    with torch.no_grad():
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, 2, 1))
        with ForwardState():  # a dense segment (exit 1 and before)
            assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, 2, 1))


def test_resize_any_never_drops_an_uncertain_pixel():
    """"nearest" (the original's top-left sampling) can drop an uncertain pixel at a lower
    resolution; "any" computes a low-resolution pixel when any of its children is computed."""
    logits = torch.zeros(1, 19, 8, 8)
    logits[:, 3] = 20.0  # confident everywhere ...
    logits[:, 3, 5, 3] = 0.0  # ... but one pixel at an odd position
    nearest = SegmentMasks(logits, THRESHOLD, resize="nearest")
    any_ = SegmentMasks(logits, THRESHOLD, resize="any")
    assert int(nearest.mask((8, 8)).sum()) == int(any_.mask((8, 8)).sum()) == 1
    assert int(nearest.mask((4, 4)).sum()) == 0 and int(nearest.mask((2, 2)).sum()) == 0
    assert any_.mask((4, 4))[0, 0, 2, 1] and int(any_.mask((4, 4)).sum()) == 1
    assert any_.mask((2, 2))[0, 0, 1, 0] and int(any_.mask((2, 2)).sum()) == 1
    # on random masks: "nearest" samples the top-left child, "any" is the max over children
    m = _logits(2, 16, 24, 0.7, seed=4)
    full = SegmentMasks(m, THRESHOLD, resize="any").mask((16, 24))
    for size, f in (((8, 12), 2), ((4, 6), 4), ((2, 3), 8)):
        assert torch.equal(SegmentMasks(m, THRESHOLD, resize="nearest").mask(size),
                           full[..., ::f, ::f])
        assert torch.equal(SegmentMasks(m, THRESHOLD, resize="any").mask(size),
                           F.max_pool2d(full.float(), f).bool())

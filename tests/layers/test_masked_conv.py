"""Tests of dl_lib.layers.masked_conv2d / MaskedConv2d against the pure-PyTorch references."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dl_lib
from dl_lib.layers import MaskedConv2d, masked_conv2d
from dl_lib.layers import masked_conv_policy as policy
from dl_lib.layers.masked_conv_reference import (
    conv_output_size,
    masked_conv2d_dense,
    masked_conv2d_gather,
)

needs_ops = pytest.mark.skipif(not dl_lib.has_compiled_ops(), reason="dl_lib._C not built")
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and dl_lib.compiled_with_cuda()),
    reason="needs a GPU and dl_lib._C built with CUDA")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _make_mask(n, ho, wo, density, generator):
    if density == "few":
        m = torch.zeros(n, 1, ho, wo, dtype=torch.bool)
        m.view(-1)[torch.randint(0, m.numel(), (3,), generator=generator)] = True
        return m
    return torch.rand(n, 1, ho, wo, generator=generator) < density


def _layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "noncontiguous":
        # Same values, strided storage: every other element of a wider tensor.
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


@st.composite
def conv_cases(draw):
    k = draw(st.sampled_from([1, 3, 5]))
    stride = draw(st.sampled_from([1, 2]))
    dilation = draw(st.sampled_from([1, 2])) if k > 1 else 1
    padding = draw(st.integers(0, (k // 2) * dilation + 1))
    group_kind = draw(st.sampled_from(["one", "depthwise", "other"]))
    if group_kind == "one":
        groups, c_in, c_out = 1, draw(st.integers(1, 6)), draw(st.integers(1, 6))
    elif group_kind == "depthwise":
        c_in = draw(st.integers(1, 8))
        groups, c_out = c_in, c_in
    else:
        groups = draw(st.sampled_from([2, 3]))
        c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    need = (k - 1) * dilation + 1 - 2 * padding
    h = draw(st.integers(max(1, need), max(1, need) + 9))
    w = draw(st.integers(max(1, need), max(1, need) + 9))
    return dict(
        n=draw(st.integers(1, 2)), c_in=c_in, c_out=c_out, k=k, stride=stride, padding=padding,
        dilation=dilation, groups=groups, h=h, w=w,
        density=draw(st.sampled_from([0.0, "few", 0.5, 1.0])),
        layout=draw(st.sampled_from(["contiguous", "noncontiguous", "channels_last"])),
        bias=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@needs_ops
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases())
def test_values_and_gradients_match_reference(case):
    g = torch.Generator().manual_seed(case["seed"])
    dt = torch.float64
    x = torch.randn(case["n"], case["c_in"], case["h"], case["w"], generator=g, dtype=dt)
    wt = torch.randn(case["c_out"], case["c_in"] // case["groups"], case["k"], case["k"],
                     generator=g, dtype=dt)
    b = torch.randn(case["c_out"], generator=g, dtype=dt) if case["bias"] else None
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])
    ho, wo = conv_output_size((case["h"], case["w"]), case["k"], *args[:3])
    mask = _make_mask(case["n"], ho, wo, case["density"], g)
    grad = torch.randn(case["n"], case["c_out"], ho, wo, generator=g, dtype=dt)

    def run(fn, layout):
        xi = _layout(x, layout).requires_grad_(True)
        wi = wt.clone().requires_grad_(True)
        bi = b.clone().requires_grad_(True) if b is not None else None
        y = fn(xi, wi, bi, mask, *args)
        inputs = [xi, wi] + ([bi] if bi is not None else [])
        grads = torch.autograd.grad(y, inputs, grad, allow_unused=True)
        return y, [torch.zeros_like(t) if gr is None else gr for t, gr in zip(inputs, grads)]

    y_ref, g_ref = run(masked_conv2d_dense, "contiguous")
    y, gs = run(masked_conv2d, case["layout"])
    torch.testing.assert_close(y, y_ref)
    for got, want in zip(gs, g_ref):
        torch.testing.assert_close(got, want)
    if (case["layout"] == "channels_last" and min(case["c_in"], case["c_out"]) > 1
            and min(ho * wo, case["h"] * case["w"]) > 1):
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("stride,dilation,groups", [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 3),
                                                      (2, 2, 3)])
def test_gather_reference_matches_dense(stride, dilation, groups):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    w = torch.randn(6, 3 // groups, 3, 3, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    ho, wo = conv_output_size((9, 8), 3, stride, 1, dilation)
    mask = torch.rand(2, 1, ho, wo) < 0.5
    torch.testing.assert_close(masked_conv2d_gather(x, w, b, mask, stride, 1, dilation, groups),
                               masked_conv2d_dense(x, w, b, mask, stride, 1, dilation, groups))


@needs_ops
@pytest.mark.parametrize("stride,padding,dilation,groups,c", [
    (1, 1, 1, 1, 3), (2, 1, 1, 1, 3), (1, 2, 2, 1, 3), (1, 1, 1, 3, 3), (2, 0, 1, 2, 4)])
def test_gradcheck(stride, padding, dilation, groups, c):
    torch.manual_seed(0)
    x = torch.randn(2, c, 7, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(c, c // groups, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c, dtype=torch.float64, requires_grad=True)
    ho, wo = conv_output_size((7, 7), 3, stride, padding, dilation)
    mask = torch.rand(2, 1, ho, wo) < 0.6
    fn = lambda x_, w_, b_: masked_conv2d(x_, w_, b_, mask, stride, padding, dilation, groups)  # noqa
    assert torch.autograd.gradcheck(fn, (x, w, b))


def _opcheck_samples():
    torch.manual_seed(0)
    samples = []
    for requires_grad in (False, True):
        for density in (0.0, 0.5, 1.0):
            for groups, bias in ((1, True), (4, False)):
                x = torch.randn(2, 4, 6, 5, requires_grad=requires_grad)
                w = torch.randn(4, 4 // groups, 3, 3, requires_grad=requires_grad)
                b = torch.randn(4, requires_grad=requires_grad) if bias else None
                mask = torch.rand(2, 1, 6, 5) < density
                samples.append((x, w, b, mask, 1, 1, 1, 1, 1, 1, groups))
    return samples


@needs_ops
@pytest.mark.parametrize("sample", _opcheck_samples())
def test_opcheck(sample):
    torch.library.opcheck(torch.ops.dl_lib.masked_conv2d.default, sample)


@needs_ops
def test_double_backward_raises():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    y = masked_conv2d(x, w, None, mask, 1, 1)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def test_mask_gets_no_gradient_and_float_masks_work():
    x = torch.randn(1, 2, 5, 5)
    w = torch.randn(3, 2, 3, 3)
    mask = (torch.rand(1, 1, 5, 5) < 0.5).float()
    y = masked_conv2d(x, w, None, mask, 1, 1)
    torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1) * mask)


@pytest.mark.parametrize("bad,match", [
    (torch.ones(2, 1, 4, 4, dtype=torch.bool), r"\(N, 1, Ho, Wo\) = \(2, 1, 5, 5\).*got \(2, 1, 4, 4\)"),
    (torch.ones(2, 5, 5, dtype=torch.bool), r"got \(2, 5, 5\)"),
    (torch.full((2, 1, 5, 5), 0.5), "only 0 and 1"),
    (torch.ones(2, 1, 5, 5, dtype=torch.complex64), "bool or hold 0/1"),
    (torch.ones(2, 1, 5, 5, dtype=torch.bool, device="meta"), "mask is on meta"),
])
def test_clear_mask_errors(bad, match):
    x = torch.randn(2, 3, 5, 5)
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises((ValueError, TypeError), match=match):
        masked_conv2d(x, w, None, bad, 1, 1)


def test_module_state_dict_and_dense_without_mask():
    torch.manual_seed(0)
    ref = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True)
    mod = MaskedConv2d(4, 6, 3, stride=2, padding=1, bias=True)
    assert list(mod.state_dict()) == list(ref.state_dict())
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(mod(x), ref(x))
    mask = torch.rand(2, 1, 5, 5) < 0.4
    want = ref(x) * mask
    mod.dense_fallback = False
    torch.testing.assert_close(mod(x, mask), want)
    with mod.masked(mask):
        torch.testing.assert_close(mod(x), want)
    torch.testing.assert_close(mod(x), ref(x))
    mod.set_mask(mask)
    torch.testing.assert_close(mod(x), want)
    mod.clear_mask()
    torch.testing.assert_close(mod(x), ref(x))
    ref.load_state_dict(mod.state_dict())


@pytest.mark.parametrize("padding_mode,padding", [("reflect", 1), ("zeros", "same"),
                                                  ("replicate", 2)])
def test_module_padding_modes(padding_mode, padding):
    torch.manual_seed(0)
    mod = MaskedConv2d(3, 5, 3, padding=padding, padding_mode=padding_mode, dilation=1)
    x = torch.randn(1, 3, 8, 7)
    dense = mod(x)
    mask = torch.rand(1, 1, *dense.shape[-2:]) < 0.5
    torch.testing.assert_close(mod(x, mask), dense * mask)


def test_dense_fallback_follows_policy(monkeypatch):
    calls = []
    import dl_lib.layers.masked_conv as mc

    def spy(*args, **kwargs):
        calls.append(1)
        return masked_conv2d_dense(*args, **kwargs)

    monkeypatch.setattr(mc, "masked_conv2d_dense", spy)
    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 4, 3, 3)
    full = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    sparse = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    sparse[0, 0, 0, 0] = True
    y = mc.masked_conv2d(x, w, None, full, 1, 1, dense_fallback=True)
    assert calls, "density 1.0 is above every break-even point: the dense path must run"
    torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1))
    calls.clear()
    mc.masked_conv2d(x, w, None, sparse, 1, 1, dense_fallback=True)
    assert bool(calls) == (not dl_lib.has_compiled_ops())
    # Above the break-even point but not all active: the fallback still zeroes the hole.
    calls.clear()
    almost = full.clone()
    almost[0, 0, 2, 3] = False
    y = mc.masked_conv2d(x, w, None, almost, 1, 1, dense_fallback=True)
    assert calls
    torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1) * almost)
    assert float(y[0, :, 2, 3].abs().sum()) == 0.0


def test_policy_table_and_writer(tmp_path):
    assert policy.layer_kind((8, 1, 3, 3), 8) == "depthwise"
    assert policy.layer_kind((8, 8, 1, 1), 1) == "1x1"
    assert policy.layer_kind((8, 4, 3, 3), 2) == "kxk"
    assert policy.channel_bucket(64) == "le64" and policy.channel_bucket(300) == "gt128"
    for value in policy.BREAK_EVEN.values():
        assert 0.0 < value <= 1.0
    path = tmp_path / "policy_copy.py"
    path.write_text(open(policy.__file__).read())
    saved = dict(policy.BREAK_EVEN)
    try:
        policy.write_break_even_table({("kxk", "le64", "cpu"): 0.42}, "bench --x", path=str(path),
                                      date="2026-01-01")
        text = path.read_text()
        assert "('kxk', 'le64', 'cpu'): 0.42," in text and "bench --x" in text
        namespace = {}
        exec(compile(text, str(path), "exec"), namespace)
        assert namespace["BREAK_EVEN"][("kxk", "le64", "cpu")] == 0.42
    finally:
        policy.BREAK_EVEN.clear()
        policy.BREAK_EVEN.update(saved)


@needs_ops
def test_fallback_without_extension_matches(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 8)
    w = torch.randn(6, 2, 3, 3)
    b = torch.randn(6)
    mask = torch.rand(2, 1, 5, 4) < 0.5
    torch.save((x, w, b, mask), tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import torch, dl_lib
        from dl_lib.layers import masked_conv2d
        assert not dl_lib.has_compiled_ops()
        x, w, b, mask = torch.load({str(tmp_path / 'inputs.pt')!r})
        torch.save(masked_conv2d(x, w, b, mask, 2, 1, 1, 2), {str(tmp_path / 'out.pt')!r})
    """)
    env = dict(os.environ, DL_LIB_DISABLE_EXT="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", script], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"),
                               masked_conv2d(x, w, b, mask, 2, 1, 1, 2))


@needs_ops
def test_torch_compile_fullgraph():
    def f(x, w, b, mask):
        return torch.relu(masked_conv2d(x, w, b, mask, 1, 1))

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    mask = torch.rand(1, 1, 6, 6) < 0.5
    y = compiled(x, w, b, mask)
    torch.testing.assert_close(y, f(x, w, b, mask))
    y.sum().backward()
    assert x.grad is not None and w.grad is not None and b.grad is not None


@needs_cuda
@pytest.mark.parametrize("groups,c", [(1, 16), (16, 16), (2, 16)])
@pytest.mark.parametrize("stride", [1, 2])
def test_cuda_matches_cpu(groups, c, stride):
    torch.manual_seed(0)
    x = torch.randn(2, c, 17, 19)
    w = torch.randn(c, c // groups, 3, 3)
    b = torch.randn(c)
    ho, wo = conv_output_size((17, 19), 3, stride, 1, 1)
    mask = torch.rand(2, 1, ho, wo) < 0.3
    grad = torch.randn(2, c, ho, wo)
    outs = []
    for dev in ("cpu", "cuda"):
        xi, wi, bi = (t.to(dev).requires_grad_(True) for t in (x, w, b))
        y = masked_conv2d(xi, wi, bi, mask.to(dev), stride, 1, 1, groups)
        y.backward(grad.to(dev))
        outs.append([t.detach().cpu() for t in (y, xi.grad, wi.grad, bi.grad)])
    for a, c_ in zip(*outs):
        torch.testing.assert_close(a, c_, atol=1e-4, rtol=1e-4)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_half_precision(dtype, channels_last):
    torch.manual_seed(0)
    x = torch.randn(2, 32, 24, 24, device="cuda")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 32, 3, 3, device="cuda") * 0.1
    mask = torch.rand(2, 1, 24, 24, device="cuda") < 0.3
    y = masked_conv2d(x.to(dtype), w.to(dtype), None, mask, 1, 1)
    want = masked_conv2d_dense(x, w, None, mask, 1, 1)
    torch.testing.assert_close(y.float(), want, atol=5e-2, rtol=5e-2)
    torch.library.opcheck(torch.ops.dl_lib.masked_conv2d.default,
                          (x.to(dtype), w.to(dtype), None, mask, 1, 1, 1, 1, 1, 1, 1))


@needs_ops
@pytest.mark.parametrize("groups,c_out,stride", [(1, 5, 1), (4, 4, 2), (2, 6, 1)])
def test_multithreaded_backward_matches_reference(groups, c_out, stride):
    """Enough active positions for several parts: exercises the per-part bands and reduction."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(2, previous))
    try:
        torch.manual_seed(0)
        x = torch.randn(2, 4, 40, 36, dtype=torch.float64).contiguous(
            memory_format=torch.channels_last)
        w = torch.randn(c_out, 4 // groups, 3, 3, dtype=torch.float64)
        b = torch.randn(c_out, dtype=torch.float64)
        ho, wo = conv_output_size((40, 36), 3, stride, 1, 1)
        mask = torch.rand(2, 1, ho, wo) < 0.7
        grad = torch.randn(2, c_out, ho, wo, dtype=torch.float64)
        results = []
        for fn in (masked_conv2d, masked_conv2d_dense):
            xi, wi, bi = (t.clone().requires_grad_(True) for t in (x, w, b))
            y = fn(xi, wi, bi, mask, stride, 1, 1, groups)
            results.append([y] + list(torch.autograd.grad(y, (xi, wi, bi), grad)))
        for got, want in zip(*results):
            torch.testing.assert_close(got, want)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.skipif(not dl_lib.has_compiled_ops(), reason="the packed-weight cache is in dl_lib._C")
def test_packed_weight_cache_sees_every_weight_change():
    # The CPU kernel caches the packed weight per weight tensor; any change must repack.
    torch.manual_seed(0)
    x = torch.randn(1, 64, 12, 12).contiguous(memory_format=torch.channels_last)
    mask = torch.rand(1, 1, 12, 12) > 0.5

    def check(w):
        ref = F.conv2d(x, w, None, 1, 1) * mask
        torch.testing.assert_close(masked_conv2d(x, w, None, mask, 1, 1), ref, rtol=1e-4, atol=1e-4)

    w = torch.randn(64, 64, 3, 3)
    check(w)
    with torch.no_grad():
        w.mul_(-2.0)  # in-place update (an optimizer step): the version counter moves
    check(w)
    conv = MaskedConv2d(64, 64, 3, padding=1, bias=False)
    conv.weight.data = torch.randn(64, 64, 3, 3)  # .data swap: a new storage
    check(conv.weight.detach())
    for _ in range(5):  # fresh weights of the same shape, possibly at a reused address
        check(torch.randn(64, 64, 3, 3))
    opt = torch.optim.SGD(conv.parameters(), lr=0.5)
    conv(x, mask).sum().backward()
    opt.step()
    check(conv.weight.detach())


def test_training_uses_its_own_break_even_table(tmp_path):
    w = torch.randn(64, 64, 3, 3)
    key = ("kxk", "le64", "cpu")
    assert policy.break_even_density("kxk", 64, "cpu") == policy.BREAK_EVEN[key]
    assert policy.break_even_density("kxk", 64, "cpu", training=True) == \
        policy.BREAK_EVEN_TRAINING[key]
    density = (policy.BREAK_EVEN_TRAINING[key] + policy.BREAK_EVEN[key]) / 2
    assert policy.BREAK_EVEN_TRAINING[key] < density < policy.BREAK_EVEN[key]
    assert not policy.use_dense(w, 1, density, "cpu")
    assert policy.use_dense(w, 1, density, "cpu", training=True)
    # A key with no training entry falls back to the forward one (here the hand-set CUDA guess).
    assert policy.break_even_density("kxk", 64, "cuda", training=True) == \
        policy.HAND_SET[("kxk", "le64", "cuda")]
    path = tmp_path / "policy_copy.py"
    path.write_text(open(policy.__file__).read())
    saved = dict(policy.BREAK_EVEN_TRAINING)
    try:
        policy.write_break_even_table({key: 0.31}, "bench --y", path=str(path), mode="fwdbwd")
        namespace = {}
        exec(compile(path.read_text(), str(path), "exec"), namespace)
        assert namespace["BREAK_EVEN_TRAINING"][key] == 0.31
        assert namespace["BREAK_EVEN"][key] == policy.BREAK_EVEN[key]
    finally:
        policy.BREAK_EVEN_TRAINING.clear()
        policy.BREAK_EVEN_TRAINING.update(saved)
    with pytest.raises(ValueError, match="mode"):
        policy.write_break_even_table({key: 0.3}, "x", path=str(path), mode="train")


def _striped_mask(n, ho, wo, generator):
    """Random density per row band, with all-empty and all-full bands: active runs start and end
    on both sides of the kernel's 16384-position blocks and of its 8-byte words."""
    m = torch.zeros(n, 1, ho, wo, dtype=torch.bool)
    for i in range(n):
        for y0 in range(0, ho, 7):
            d = float(torch.rand(1, generator=generator)) ** 2
            band = m[i, 0, y0:y0 + 7]
            band.copy_(torch.rand(band.shape, generator=generator) < d)
        m[i, 0, 20:40] = True
        m[i, 0, 50:90] = False
    return m


@needs_ops
@pytest.mark.parametrize("groups,c_out", [(1, 24), (24, 24)])
def test_large_masks_match_reference(groups, c_out):
    """Masks of > 4 x 16384 positions go through the parallel active-position scan."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 24, 190, 230).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c_out, 24 // groups, 3, 3)
    b = torch.randn(c_out)
    for mask in (_striped_mask(2, 190, 230, g), torch.rand(2, 1, 190, 230, generator=g) < 0.3):
        y = masked_conv2d(x, w, b, mask, padding=1, groups=groups)
        ref = masked_conv2d_dense(x, w, b, mask, 1, 1, 1, groups)
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


@needs_ops
@pytest.mark.parametrize("c", [7, 16, 20, 32, 40, 70])
@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (3, 2, 1), (5, 1, 2)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_depthwise_channel_blocks_and_chunks(c, k, stride, dilation, channels_last):
    """The depthwise kernel walks 32-channel blocks (16 and masked tails) over chunks of 32
    pixels with the next block prefetched: channel counts around those edges, more than one chunk
    per work unit, taps in the padding, NCHW and NHWC outputs."""
    g = torch.Generator().manual_seed(c * 100 + k)
    x = torch.randn(2, c, 37, 45, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, 1, k, k, generator=g)
    b = torch.randn(c, generator=g)
    pad = k // 2 * dilation
    ho, wo = (37 + 2 * pad - dilation * (k - 1) - 1) // stride + 1, (45 + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    for density in (0.3, 1.0):
        mask = torch.rand(2, 1, ho, wo, generator=g) < density
        y = masked_conv2d(x, w, b, mask, stride, pad, dilation, c)
        ref = masked_conv2d_dense(x, w, b, mask, stride, pad, dilation, c)
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


@needs_ops
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("padding", [0, 1])
def test_pointwise_over_several_images(groups, channels_last, padding):
    """A 1x1 convolution without padding reads input pixel f for output position f across the
    whole batch (a fast path); with padding, positions and pixels differ."""
    g = torch.Generator().manual_seed(groups)
    x = torch.randn(3, 20, 23, 29, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(40, 20 // groups, 1, 1, generator=g)
    b = torch.randn(40, generator=g)
    mask = torch.rand(3, 1, 23 + 2 * padding, 29 + 2 * padding, generator=g) < 0.3
    y = masked_conv2d(x, w, b, mask, 1, padding, 1, groups)
    ref = masked_conv2d_dense(x, w, b, mask, 1, padding, 1, groups)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


@needs_ops
def test_output_buffers_are_reused_and_fully_rewritten():
    """Large outputs come from the pool of freed outputs; a reused buffer holds the previous
    layer's values, so every position must be written again (computed or zero)."""
    pool = torch.ops.dl_lib._masked_conv2d_output_pool
    pool(True)
    x = torch.randn(1, 32, 96, 128).contiguous(memory_format=torch.channels_last)  # 1.5 MB out
    w = torch.randn(32, 32, 3, 3)
    g = torch.Generator().manual_seed(0)
    dense_mask = torch.rand(1, 1, 96, 128, generator=g) < 0.95
    y = masked_conv2d(x, w, None, dense_mask, padding=1)
    ptr = y.data_ptr()
    del y
    assert pool() >= 32 * 96 * 128 * 4
    sparse_mask = torch.rand(1, 1, 96, 128, generator=g) < 0.05
    y = masked_conv2d(x, w, None, sparse_mask, padding=1)
    assert y.data_ptr() == ptr and pool() == 0
    torch.testing.assert_close(y, masked_conv2d_dense(x, w, None, sparse_mask, 1, 1, 1, 1),
                               rtol=1e-4, atol=1e-4)
    # An ordinary tensor otherwise: autograd views, in-place ops, serialisation.
    y.add_(1)
    assert torch.equal(torch.load(_roundtrip(y), weights_only=True), y)
    del y
    assert pool(True) == 0


def _roundtrip(t):
    import io

    buf = io.BytesIO()
    torch.save(t, buf)
    buf.seek(0)
    return buf


@needs_ops
def test_output_pool_can_be_turned_off():
    script = textwrap.dedent("""
        import torch, dl_lib
        from dl_lib.layers import masked_conv2d
        x = torch.randn(1, 32, 96, 128)
        y = masked_conv2d(x, torch.randn(32, 32, 3, 3), None, torch.ones(1, 1, 96, 128, dtype=torch.bool), padding=1)
        del y
        print(torch.ops.dl_lib._masked_conv2d_output_pool())
    """)
    env = dict(os.environ, DL_LIB_MASKED_CONV_POOL_MB="0")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "0"


@needs_ops
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="2 MiB pages are a Linux path")
def test_large_pooled_outputs_sit_on_huge_page_boundaries():
    """Pooled outputs of >= 2 MiB start on a 2 MiB boundary (so that transparent huge pages can
    back them) and are still exact."""
    pool = torch.ops.dl_lib._masked_conv2d_output_pool
    pool(True)
    x = torch.randn(1, 64, 96, 128).contiguous(memory_format=torch.channels_last)  # 3 MB out
    w = torch.randn(64, 64, 1, 1)
    mask = torch.rand(1, 1, 96, 128, generator=torch.Generator().manual_seed(0)) < 0.5
    y = masked_conv2d(x, w, None, mask)
    assert y.data_ptr() % (2 << 20) == 0
    torch.testing.assert_close(y, masked_conv2d_dense(x, w, None, mask, 1, 0, 1, 1),
                               rtol=1e-4, atol=1e-4)
    del y
    pool(True)

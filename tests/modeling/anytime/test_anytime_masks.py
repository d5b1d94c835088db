"""Confidence adaptivity of the whole model (reference ``anytime.md`` sections 3.3-3.5.1):
threshold 1 is the dense RH / EE model bit for bit, threshold 0 makes every exit exit 1's and
every masked conv output 0; copy aggregation is monotone; masks are stateless (a new input size,
another threshold, the first call); ``MODEL.EXIT.STOP K`` runs (and costs) only up to exit K."""
import pytest
import torch

from dl_lib.config import config_from_delta
from dl_lib.modeling import build_model
from dl_lib.modeling.anytime import AnytimeConv2d

from anytime_helpers import build, images, mixed_model, randomize
from anytime_original_reference import original_forward


def _rel_err(ours, ref):
    return float((ours - ref).abs().max() / ref.abs().max())


def _pair(dense_setting, masked_setting, **kw):
    """A dense model with random weights and a masked model with the same weights."""
    dense = randomize(build(dense_setting, **kw), seed=1).eval()
    masked = build(masked_setting, **kw).eval()
    result = masked.load_state_dict(dense.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all(k.endswith(("Lambda", "square_dis")) for k in result.missing_keys)
    return dense, masked


@pytest.fixture(scope="module")
def mixed():
    x = images(2, 64, 128)
    return mixed_model("w18_RHCA", x, channels_last=False), x


def _run(model, x, **kw):
    with torch.no_grad():
        return model.forward_exits(x, **kw)


# ----------------------------------------------------------------------------- thresholds 1 and 0
@pytest.mark.parametrize("dense_setting,masked_setting,channels_last", [
    ("w18_RH", "w18_RHCA", True), ("w18_RH", "w18_RHCA", False), ("w18_EE", "w18_CA", True)])
def test_threshold_one_is_the_dense_model(dense_setting, masked_setting, channels_last):
    dense, masked = _pair(dense_setting, masked_setting, channels_last=channels_last)
    masked.threshold = 1.0
    x = images(2, 64, 128)
    a, _ = _run(dense, x)
    b, info = _run(masked, x, report=True)
    assert [bool(m.all()) for m in info["masks"]] == [True] * 3
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert all(p.is_contiguous(memory_format=torch.channels_last) == channels_last for p in b)
    # a threshold just below the most confident pixel is not the dense model any more
    masked.threshold = float(torch.softmax(b[0], 1).max(1).values.max()) * 0.999999
    c, _ = _run(masked, x)
    assert not torch.equal(c[3], a[3])


def test_threshold_zero_every_exit_is_exit_one():
    """Every pixel confident after exit 1: every exit is exit 1, and every masked conv outputs
    K_hat * 0 = 0, so its BN gives BN(0) = beta - gamma mu / sqrt(var + eps) everywhere (checked
    after the BN: the same whether or not the conv applies the BN itself at inference)."""
    dense, masked = _pair("w18_RH", "w18_RHCA", channels_last=True)
    masked.threshold = 0.0
    block = masked.backbone.stage3[1].branches[1][0]
    norm_output = {}
    # a copy: the block adds its residual to the norm's output in place
    hook = block.bn2.register_forward_hook(
        lambda m, args, out: norm_output.__setitem__("y", out.detach().clone()))
    try:
        out, info = _run(masked, images(2, 64, 128), report=True)
    finally:
        hook.remove()
    assert isinstance(block.conv2, AnytimeConv2d) and block.conv2.interpolation == "rbf"
    assert [int(m.sum()) for m in info["masks"]] == [0, 0, 0]
    assert all(torch.equal(t, out[0]) for t in out[1:])
    bn = block.bn2
    with torch.no_grad():
        of_zero = bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps)
    y = norm_output["y"]
    assert y.shape[1] == block.conv2.out_channels
    assert torch.allclose(y, of_zero[None, :, None, None].expand_as(y), rtol=0, atol=1e-6)
    assert float(of_zero.abs().min()) > 1e-3  # the check can fail: BN(0) is not 0
    dense_out, _ = _run(dense, images(2, 64, 128))
    assert torch.equal(out[0], dense_out[0]) and not torch.equal(out[3], dense_out[3])
    # in training mode the BN normalises the conv's own output: that is exactly 0
    masked.train()
    hook = block.bn2.register_forward_pre_hook(
        lambda m, args: norm_output.__setitem__("x", args[0].detach().clone()))
    try:
        _run(masked, images(2, 64, 128))
    finally:
        hook.remove()
    assert norm_output["x"].shape == y.shape and not norm_output["x"].any()


# ----------------------------------------------------------------------------- copy aggregation
def test_copy_aggregation_is_monotone(mixed):
    model, x = mixed
    out, info = _run(model, x, report=True)
    masks = info["masks"]  # computed pixels of segments 2, 3, 4 at stride 4
    fractions = [float(m.float().mean()) for m in masks]
    assert all(0.02 < f < 0.98 for f in fractions), fractions
    assert fractions[0] > fractions[1] > fractions[2]
    for k in (1, 2):
        assert not bool((masks[k] & ~masks[k - 1]).any())  # never computed again
    # a pixel confident after exit k keeps exit k's logits at every later exit
    for k in range(3):
        confident = ~masks[k].expand_as(out[k])
        for later in out[k + 1:]:
            assert torch.equal(later[confident], out[k][confident])
        computed = masks[k].expand_as(out[k])
        assert not torch.equal(out[k + 1][computed], out[k][computed])


def test_aggregation_none_keeps_each_exits_own_logits(mixed):
    model, x = mixed
    copy, _ = _run(model, x)
    model.aggregation = "none"
    try:
        own, info = _run(model, x, report=True)
    finally:
        model.aggregation = "copy"
    confident = ~info["masks"][0].expand_as(own[1])
    assert torch.equal(own[0], copy[0])
    assert not torch.equal(own[1][confident], copy[1][confident])


# ----------------------------------------------------------------------------- statelessness
def test_new_input_size_in_the_same_process(mixed):
    """The original crashed on a second size (stale mask sizes); each call here equals the
    original computation at its own size, and a size seen before gives the same result."""
    model, x = mixed
    first, _ = _run(model, x)
    for h, w in ((96, 160), (40, 72), (64, 128)):
        xi = x if (h, w) == (64, 128) else images(1, h, w, seed=h)
        out, info = _run(model, xi, report=True)
        assert tuple(out[0].shape[-2:]) == (-(-h // 4), -(-w // 4))
        ref = original_forward(model, xi)
        assert all(_rel_err(o, r) < 1e-4 for o, r in zip(out, ref)), (h, w)
    assert all(torch.equal(p, q) for p, q in zip(first, out))


def test_no_state_between_calls_or_models(mixed):
    """Two thresholds in turn, and a fresh model with the same weights on its first call (no
    warm-up; the original used random masks then): independent, identical results."""
    model, x = mixed
    base, _ = _run(model, x)
    t = model.threshold
    model.threshold = 1.0
    dense, _ = _run(model, x)
    model.threshold = t
    again, _ = _run(model, x)
    assert all(torch.equal(p, q) for p, q in zip(base, again))
    assert not torch.equal(dense[3], base[3])
    fresh = build("w18_RHCA", channels_last=False)
    fresh.load_state_dict(model.state_dict())
    fresh.eval().threshold = t
    first, _ = _run(fresh, x)
    assert all(torch.equal(p, q) for p, q in zip(base, first))
    ref = original_forward(model, x)
    assert all(_rel_err(o, r) < 1e-4 for o, r in zip(first, ref))


def test_no_forward_state_leaks_into_a_plain_call(mixed):
    """Outside a forward the convolutions are plain convolutions (no mask is kept)."""
    model, x = mixed
    _run(model, x)
    conv = model.head.last_layer[0]
    feats = torch.randn(1, conv.in_channels, 8, 8)
    with torch.no_grad():
        assert torch.equal(conv(feats), torch.nn.functional.conv2d(feats, conv.weight, conv.bias))


# ----------------------------------------------------------------------------- MODEL.EXIT.STOP
def _count_convs(model):
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in model.modules()
             if isinstance(m, AnytimeConv2d)]
    return calls, hooks


def test_stop_k_returns_k_exits_and_runs_fewer_convolutions(mixed):
    model, x = mixed
    full, full_info = _run(model, x, report=True)
    counts = []
    try:
        for k in (1, 2, 3, 4):
            model.stop_exit = k
            calls, hooks = _count_convs(model)
            out, info = _run(model, x, report=True)
            for h in hooks:
                h.remove()
            counts.append(len(calls))
            assert len(out) == k and len(info["gflops"]) == k and len(info["masks"]) == k - 1
            assert all(torch.equal(p, q) for p, q in zip(out, full[:k]))
            assert info["gflops"] == full_info["gflops"][:k]
    finally:
        model.stop_exit = 4
    assert counts == sorted(set(counts)) and counts[0] < counts[1] < counts[2] < counts[3]
    # W18: stem 2 + layer1 7 (2 Bottlenecks and a downsample) + flex exit1 6 before exit 1
    assert counts[0] == 15


def test_stop_from_the_config():
    cfg = config_from_delta(dict(MODEL=dict(
        DEVICE="cpu", META_ARCHITECTURE="AnytimeSegmentor",
        BACKBONE=dict(NAME="hrnet_w18_small_v2"), EXIT=dict(TYPE="flex", STOP=2),
        MASK=dict(USE=True))), family="anytime")
    model = build_model(cfg).eval()
    img = torch.randint(0, 256, (3, 64, 128), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": img, "height": 64, "width": 128}])[0]
    assert len(out["sem_seg_exits"]) == 2 and sorted(out["flops"]) == ["exit0", "exit1"]
    assert torch.equal(out["sem_seg"], out["sem_seg_exits"][1])
    assert out["flops"]["exit1"] > out["flops"]["exit0"] > 0
    cfg.MODEL.EXIT.STOP = 5
    with pytest.raises(ValueError, match="MODEL.EXIT.STOP"):
        build_model(cfg)

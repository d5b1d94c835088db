"""ADP-C exits and heads (reference ``anytime.md`` sections 1.6-2, 6): layer shapes of the EE and
RH heads of W18 and W48, the flex heads' resolutions, odd input sizes; our state_dict in the
released layout equals all eight key dumps of the original (keys, shapes, dtypes, counts)."""
import pytest
import torch
from torch import nn

from dl_lib.modeling.anytime import AnytimeConv2d, PoolUpsampleHead
from dl_lib.modeling.anytime.convert import to_released

from anytime_helpers import SETTINGS, build, images, read_key_dump

# exit input channels (section 1.6): exit1 .. exit3, last_layer
EXIT_CHANNELS = {"w48": [256, 144, 336, 720], "w18": [256, 54, 126, 270]}
HIDDEN = {"w48": 128, "w18": 64}
# trainable parameters per head (section 2.3): exit1, exit2, exit3, last_layer
HEAD_PARAMS = {("w48", "EE"): [71187, 23923, 120307, 534259],
               ("w48", "RH"): [102675, 54803, 45843, 534259],
               ("w18", "EE"): [71187, 4123, 18667, 78859],
               ("w18", "RH"): [34963, 13459, 9491, 78859]}
# The targets (trainable parameters)
TARGETS = {"w18_EE": 4_033_556, "w18_RH": 3_997_492, "w18_RHCA": 3_997_635,
           "w48_RHCA": 66_062_998, "w48_EE": 66_074_796}
# the flex heads' Sequential indices of convs (section 2.2) and the stride of each one's output
FLEX_CONVS = {1: [(1, 8), (5, 16), (9, 32), (13, 16), (17, 8), (21, 4)],
              2: [(1, 8), (5, 16), (9, 8), (13, 4)],
              3: [(1, 8), (5, 4)]}


def _params(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _marks(width):
    return [pytest.mark.slow] if width == "w48" else []


@pytest.fixture(scope="module")
def meta_models():
    """Every setting on the meta device (shapes only), built once."""
    cache = {}

    def get(setting):
        if setting not in cache:
            cache[setting] = build(setting, device="meta")
        return cache[setting]
    return get


# ----------------------------------------------------------------------------- heads
@pytest.mark.parametrize("width", [pytest.param(w, marks=_marks(w)) for w in ("w18", "w48")])
def test_original_heads(width, meta_models):
    """EE exits 1-3 and every last_layer: 0 1x1 conv C->C with bias, 1 BN(C), 2 ReLU, 3 1x1
    conv C->19 with bias."""
    for setting in (f"{width}_EE", f"{width}_RH"):
        model = meta_models(setting)
        ks = (1, 2, 3, 4) if setting.endswith("EE") else (4,)
        for k in ks:
            head, c = model.head.exit(k), EXIT_CHANNELS[width][k - 1]
            assert [type(m) for m in head] == [AnytimeConv2d, nn.BatchNorm2d, nn.ReLU,
                                               AnytimeConv2d]
            assert head[0].weight.shape == (c, c, 1, 1) and head[0].bias.shape == (c,)
            assert head[1].num_features == c and head[1].momentum == 0.01
            assert head[3].weight.shape == (19, c, 1, 1) and head[3].bias.shape == (19,)
    ee = meta_models(f"{width}_EE")
    assert [_params(ee.head.exit(k)) for k in (1, 2, 3, 4)] == HEAD_PARAMS[(width, "EE")]


@pytest.mark.parametrize("width", [pytest.param(w, marks=_marks(w)) for w in ("w18", "w48")])
def test_flex_heads(width, meta_models):
    """RH exits: pool / 1x1 conv-BN-ReLU of D channels at the Sequential indices of section 2.2,
    the classifier last; D = 128 (W48) or 64 (W18)."""
    model, d = meta_models(f"{width}_RH"), HIDDEN[width]
    for k, convs in FLEX_CONVS.items():
        head, c = model.head.exit(k), EXIT_CHANNELS[width][k - 1]
        assert isinstance(head, PoolUpsampleHead) and len(head) == convs[-1][0] + 1
        for n, (index, _) in enumerate(convs):
            conv = head[index]
            last = n == len(convs) - 1
            assert isinstance(conv, AnytimeConv2d) and conv.kernel_size == (1, 1)
            assert conv.weight.shape == (19 if last else d, d if n else c, 1, 1), (k, index)
            assert conv.bias is not None
            if not last:
                norm = head[index + 1]
                assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == d
                assert isinstance(head[index + 2], nn.ReLU)
            pooled = isinstance(head[index - 1], nn.AvgPool2d)
            assert pooled == (n < 4 - k), (k, index)  # exit k pools 4 - k times, first
    assert [_params(model.head.exit(k)) for k in (1, 2, 3, 4)] == HEAD_PARAMS[(width, "RH")]


def test_flex_head_resolutions():
    """Each flex head's convs run at the strides of section 2.2 (exit1: 1/8, 1/16, 1/32, 1/16,
    1/8, 1/4) and every exit gives stride-4 logits."""
    model = build("w18_RH").eval()
    x = images(1, 64, 128)
    sizes = {}
    hooks = [conv.register_forward_hook(
        lambda m, i, o, key=(k, idx): sizes.__setitem__(key, tuple(o.shape[-2:])))
        for k in (1, 2, 3) for idx, _ in FLEX_CONVS[k] for conv in [model.head.exit(k)[idx]]]
    with torch.no_grad():
        logits, _ = model.forward_exits(x)
    for h in hooks:
        h.remove()
    for k, convs in FLEX_CONVS.items():
        for idx, stride in convs:
            assert sizes[(k, idx)] == (64 // stride, 128 // stride), (k, idx)
    assert [tuple(t.shape) for t in logits] == [(1, 19, 16, 32)] * 4


@pytest.mark.parametrize("setting", ["w18_RH", "w18_RHCA"])
def test_odd_input_sizes(setting):
    """Sizes not divisible by 32 (the original's flex heads broke there): every exit's logits
    have the stride-4 size, with masks too (copy aggregation needs equal sizes)."""
    model = build(setting, conf_threshold=0.5).eval()
    with torch.no_grad():
        for h, w in ((100, 140), (36, 76)):
            logits, info = model.forward_exits(images(1, h, w), report=True)
            size = (-(-h // 4), -(-w // 4))  # two stride-2 convs with padding 1
            assert [tuple(t.shape[-2:]) for t in logits] == [size] * 4
            if model.mask_use:
                assert [tuple(m.shape[-2:]) for m in info["masks"]] == [size] * 3


# ----------------------------------------------------------------------------- key dumps
@pytest.mark.parametrize("setting", [pytest.param(s, marks=_marks(s[:3])) for s in SETTINGS])
def test_state_dict_equals_key_dump(setting, meta_models):
    """After ``to_released`` our state_dict has the dump's keys, shapes and dtypes exactly, and
    the counts of its header: trainable parameters (also per top-level attribute), all
    parameters incl. square_dis (a buffer here), state_dict elements, number of keys."""
    entries, header = read_key_dump(setting)
    model = meta_models(setting)
    released = to_released(model.state_dict())
    ours = {k[len("model."):]: (tuple(v.shape), v.dtype) for k, v in released.items()}
    dump = {k: (s, d) for k, s, d in entries}
    assert len(ours) == len(released) and len(dump) == len(entries) == header["num_keys"]
    assert sorted(set(dump) - set(ours))[:5] == [] and sorted(set(ours) - set(dump))[:5] == []
    assert {k: v for k, v in ours.items() if dump[k] != v} == {}

    trainable = _params(model)
    square_dis = sum(b.numel() for n, b in model.named_buffers() if n.endswith("square_dis"))
    assert trainable == header["trainable"]
    assert trainable + square_dis == header["all_params"]
    assert sum(v.numel() for v in model.state_dict().values()) == header["elements"]
    if setting in TARGETS:
        assert trainable == TARGETS[setting]
    assert all(not p.requires_grad or not n.endswith("square_dis")
               for n, p in model.named_parameters())

    per_attr = {}
    for name, p in model.named_parameters():
        top = name.split(".")[1]
        key = f"stem({top})" if top in ("conv1", "bn1", "conv2", "bn2") else top
        per_attr[key] = per_attr.get(key, 0) + p.numel()
    assert per_attr == header["per_attr"]


def test_masked_settings_add_lambda_to_every_conv_after_exit1(meta_models):
    """CA: every conv of transition1.. and exits 2-4 has Lambda and square_dis (143 for W18
    RH+CA, section 3.2); the stem, layer1 and exit1 have none."""
    model = meta_models("w18_RHCA")
    masked = [n for n, m in model.named_modules() if isinstance(m, AnytimeConv2d)
              and m.interpolation == "rbf"]
    assert len(masked) == 143
    assert not [n for n in masked if n.startswith(("backbone.conv", "backbone.layer1",
                                                   "head.exit1"))]
    assert len([n for n, _ in model.named_parameters() if n.endswith("Lambda")]) == 143
    assert len(dict(meta_models("w18_CA").named_buffers())) - len(
        dict(meta_models("w18_EE").named_buffers())) == 141

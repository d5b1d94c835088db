"""Executed cost per image (CostTracker) against hand-computed numbers, in every convention."""
import pytest
import torch
import torch.nn as nn

import dl_lib.layers.masked_conv as masked_conv_module
from dl_lib import has_compiled_ops
from dl_lib.analysis import CONVENTIONS, CostTracker, cost_scope, report_cost
from dl_lib.layers import MaskedConv2d

C_IN, C_OUT, K = 4, 6, 3
H, W = 5, 7
MACS_PER_POSITION = C_OUT * C_IN * K * K        # numel(weight): one output position
DR_PER_POSITION = (C_IN * K * K + 1) * C_OUT     # DynamicRouting adds the bias
ACTIVE = (7, 12)                                 # active output positions of image 0 and 1


def _mask(active=ACTIVE):
    """N x 1 x H x W bool mask whose image i has ``active[i]`` active positions."""
    m = torch.zeros(len(active), 1, H * W, dtype=torch.bool)
    for i, a in enumerate(active):
        m[i, 0, torch.randperm(H * W)[:a]] = True
    return m.view(len(active), 1, H, W)


def _conv():
    torch.manual_seed(0)
    return MaskedConv2d(C_IN, C_OUT, K, padding=1, bias=True).eval()


def _expected(active):
    """Raw count of one masked conv call per convention, for ``active`` positions."""
    return {"gmac": MACS_PER_POSITION * active, "hrnet": MACS_PER_POSITION * active,
            "dynamic_routing": DR_PER_POSITION * active}


def _raw_per_image(model, run, n, conventions=tuple(CONVENTIONS)):
    with torch.no_grad(), CostTracker(model, conventions, num_images=n) as t:
        run()
    return t, t.per_image(raw=True)


@pytest.mark.parametrize("how", ["argument", "set_mask", "kwarg"])
def test_masked_conv_costs_active_positions_per_image(how):
    conv, mask, x = _conv(), _mask(), torch.randn(2, C_IN, H, W)
    if how == "set_mask":
        conv.set_mask(mask)
        run = lambda: conv(x)  # noqa: E731
    elif how == "kwarg":
        run = lambda: conv(x, mask=mask)  # noqa: E731
    else:
        run = lambda: conv(x, mask)  # noqa: E731
    t, raw = _raw_per_image(conv, run, 2)
    assert raw == [_expected(ACTIVE[0]), _expected(ACTIVE[1])]
    # counting the active positions is the tracker's work, not an op of the model
    assert t.unsupported("gmac") == {} and t.unsupported("hrnet") == {}
    # the two images differ, and the unit is each convention's
    gflops = t.per_image()
    assert gflops[0]["gmac"] == pytest.approx(MACS_PER_POSITION * 7 / 1e9)
    assert gflops[1]["hrnet"] == pytest.approx(MACS_PER_POSITION * 12 / 2 ** 30)
    assert t.total("dynamic_routing") == pytest.approx(DR_PER_POSITION * 19 / 1e9)


def test_unmasked_conv_is_dense():
    conv, x = _conv(), torch.randn(2, C_IN, H, W)
    _, raw = _raw_per_image(conv, lambda: conv(x), 2)
    assert raw == [_expected(H * W)] * 2


def _force_dense_fallback(monkeypatch):
    monkeypatch.setattr(masked_conv_module, "use_dense", lambda *a, **k: True)


def _force_no_kernel(monkeypatch):
    monkeypatch.setattr(masked_conv_module, "_has_kernel", lambda *a, **k: False)


@pytest.mark.parametrize("path", ["default", "dense_fallback", "no_compiled_kernel"])
def test_every_execution_path_counts_the_same(path, monkeypatch):
    """The sparse kernel, the dense fallback (F.conv2d * mask) and the pure-PyTorch path."""
    if path == "dense_fallback":
        _force_dense_fallback(monkeypatch)
    elif path == "no_compiled_kernel":
        _force_no_kernel(monkeypatch)
    conv, mask, x = _conv(), _mask(), torch.randn(2, C_IN, H, W)
    conv.set_mask(mask)
    _, raw = _raw_per_image(conv, lambda: conv(x), 2)
    assert raw == [_expected(ACTIVE[0]), _expected(ACTIVE[1])]


def test_functional_masked_conv_seen_by_gmac_only():
    from dl_lib.layers import masked_conv2d

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(C_OUT, C_IN, K, K))

        def forward(self, x, mask):
            return masked_conv2d(x, self.weight, None, mask, padding=1)

    m, mask, x = Functional(), _mask(), torch.randn(2, C_IN, H, W)
    _, raw = _raw_per_image(m, lambda: m(x, mask), 2)
    assert [r["gmac"] for r in raw] == [MACS_PER_POSITION * a for a in ACTIVE]
    # like F.conv2d, a functional call is invisible to the module-hook conventions
    assert [r["hrnet"] for r in raw] == [0, 0]


@pytest.mark.skipif(not has_compiled_ops(), reason="needs the compiled op dl_lib::masked_conv2d")
def test_flop_counter_mode_formula_counts_active_positions():
    from torch.utils.flop_counter import FlopCounterMode

    conv, mask, x = _conv(), _mask(), torch.randn(2, C_IN, H, W)
    w = conv.weight.detach()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        torch.ops.dl_lib.masked_conv2d(x, w, None, mask, 1, 1, 1, 1, 1, 1, 1)
    assert counter.get_total_flops() == 2 * MACS_PER_POSITION * sum(ACTIVE)


class SkippingModel(nn.Module):
    """stem (dense 1x1 conv) -> gate (1x1 conv to one channel) -> a 3x3 branch only for the
    images whose gate mean is positive; the others skip it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, C_IN, 1, bias=False)
        self.gate = nn.Conv2d(C_IN, 1, 1, bias=False)
        self.branch = nn.Conv2d(C_IN, C_OUT, K, padding=1, bias=False)

    def forward(self, x, run_branch):
        x = self.stem(x)
        g = self.gate(x)  # computed for every image: costs what it ran
        outs = []
        for i in range(x.shape[0]):
            if run_branch[i]:
                with cost_scope([i]):
                    outs.append(self.branch(x[i:i + 1]))
        return g, outs


def test_skipped_branch_costs_nothing():
    m = SkippingModel().eval()
    x = torch.randn(2, 3, H, W)
    _, raw = _raw_per_image(m, lambda: m(x, [True, False]), 2, ["gmac", "hrnet"])
    stem, gate, branch = 3 * C_IN * H * W, C_IN * H * W, MACS_PER_POSITION * H * W
    assert [r["gmac"] for r in raw] == [stem + gate + branch, stem + gate]
    assert [r["hrnet"] for r in raw] == [stem + gate + branch, stem + gate]


def test_branch_over_whole_batch_is_split_evenly():
    m = SkippingModel().eval()
    x = torch.randn(2, 3, H, W)
    _, raw = _raw_per_image(m, lambda: m.branch(m.stem(x)), 2, ["gmac"])
    assert [r["gmac"] for r in raw] == [3 * C_IN * H * W + MACS_PER_POSITION * H * W] * 2


def test_report_cost_and_scope():
    class Reporting(nn.Module):
        def forward(self, x):
            report_cost(macs=10)                    # batch total: 5 per image
            report_cost(per_image=[1, 2])
            with cost_scope([1]):
                report_cost(per_image=[100], conventions=["hrnet"])
            with cost_scope([]):  # a route no image took
                report_cost(macs=0)
            return x

    m = Reporting()
    _, raw = _raw_per_image(m, lambda: m(torch.zeros(2)), 2, ["gmac", "hrnet"])
    assert raw == [{"gmac": 6, "hrnet": 6}, {"gmac": 7, "hrnet": 107}]
    report_cost(macs=1)  # no tracker: a no-op
    with cost_scope([5]):
        pass


def test_bad_uses_name_the_problem():
    m = SkippingModel()
    with pytest.raises(ValueError, match="unknown cost convention"):
        CostTracker(m, ["mmcv"])
    with CostTracker(m, ["gmac"], num_images=2):
        with pytest.raises(IndexError, match="outside the tracker's batch of 2"):
            with cost_scope([2]):
                pass
        with pytest.raises(ValueError, match="per_image has 1 values"):
            report_cost(per_image=[1])
        with pytest.raises(RuntimeError, match="already active"):
            with CostTracker(m, ["gmac"]):
                pass


def test_nothing_left_hooked_after_the_block():
    m = SkippingModel()
    with CostTracker(m, list(CONVENTIONS), num_images=1):
        m(torch.randn(1, 3, H, W), [True])
    from dl_lib.analysis import current_tracker
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    assert current_tracker() is None and _get_current_dispatch_mode() is None
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


class InputMasked(nn.Module):
    """A MaskedConv2d whose mask (positive input pixels) depends on the image."""

    def __init__(self):
        super().__init__()
        self.conv = MaskedConv2d(3, C_OUT, K, padding=1, bias=False)

    def predict_logits(self, x):
        return self.conv(x, x[:, :1] > 0)


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_flop_count_gives_the_trackers_numbers(convention):
    from dl_lib.analysis import flop_count

    m, x = InputMasked().eval(), torch.randn(2, 3, H, W)
    active = [8, 20]
    x[:, 0] = -1
    for i, a in enumerate(active):
        x[i, 0].view(-1)[:a] = 1
    r = flop_count(m, inputs=x, convention=convention)
    with torch.no_grad(), CostTracker(m, [convention], num_images=2) as t:
        m.predict_logits(x)
    assert r.per_image == [c[convention] for c in t.per_image()]
    assert r.raw == 3 * C_OUT * K * K * sum(active)
    assert r.by_module["conv"] == r.total


_NO_EXT_SCRIPT = """
import torch
from dl_lib.analysis import CostTracker
from dl_lib.layers import MaskedConv2d
conv = MaskedConv2d(4, 6, 3, padding=1).eval()
mask = torch.zeros(2, 1, 5, 7, dtype=torch.bool)
mask.view(2, -1)[0, :7] = True
mask.view(2, -1)[1, :12] = True
with torch.no_grad(), CostTracker(conv, ["gmac", "hrnet", "dynamic_routing"], num_images=2) as t:
    conv(torch.randn(2, 4, 5, 7), mask)
print(t.per_image(raw=True))
"""


@pytest.mark.slow  # a fresh interpreter imports torch and dl_lib (~10-30 s on a loaded 2-core box)
def test_pure_pytorch_build_counts_the_same():
    """Without dl_lib._C (DL_LIB_DISABLE_EXT=1) the counts are those of the compiled op."""
    import ast
    import os
    import subprocess
    import sys

    env = dict(os.environ, DL_LIB_DISABLE_EXT="1")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", _NO_EXT_SCRIPT], env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert ast.literal_eval(out.strip()) == [_expected(ACTIVE[0]), _expected(ACTIVE[1])]


@pytest.mark.parametrize("path", ["default", "dense_fallback", "no_compiled_kernel"])
def test_keep_variant_and_autocast_count_active_positions_once(path, monkeypatch):
    """masked_conv2d(..., out=) writes into an existing tensor; under autocast the wrapper casts
    and calls itself undecorated: either way one masked conv's active positions are counted."""
    if path == "dense_fallback":
        _force_dense_fallback(monkeypatch)
    elif path == "no_compiled_kernel":
        _force_no_kernel(monkeypatch)
    conv, mask, x = _conv(), _mask(), torch.randn(2, C_IN, H, W)
    out = torch.full((2, C_OUT, H, W), 7.0)
    _, raw = _raw_per_image(conv, lambda: conv(x, mask, out=out), 2)
    assert raw == [_expected(ACTIVE[0]), _expected(ACTIVE[1])]
    assert bool((out[:, :, ~mask[0, 0]][0] == 7).all())  # inactive positions kept

    def autocast_run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv(x, mask)

    _, raw = _raw_per_image(conv, autocast_run, 2)
    assert raw == [_expected(ACTIVE[0]), _expected(ACTIVE[1])]

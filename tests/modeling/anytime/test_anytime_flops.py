"""Per-exit GFLOPs in the original counter's convention (reference ``anytime.md`` section 3.6,
``anytime_flops_log.txt``): conv MACs / 2^30, cumulative per exit, a masked conv at the fraction
it computes plus ``(1 - p) p C_out 49 H W`` for its interpolation. Dense models at 1024x2048 are
counted on the meta device (shapes only: the count needs no values), which a CPU run at a small
size confirms; the masked count follows the log's per-segment decomposition; the library's
CostTracker ("hrnet") sees the same forward without the interpolation term."""
import pytest
import torch

from dl_lib.analysis import CostTracker
from dl_lib.modeling.anytime import SegmentMasks
from dl_lib.modeling.anytime import anytime as anytime_module

from anytime_helpers import build, images, randomize

# anytime_flops_log.txt: cumulative GFLOPs per exit at 1x3x1024x2048
FLOP_LOG = {"w48_RH": [41.92, 105.56, 368.03, 701.35], "w48_EE": [48.44, 113.46, 388.88, 722.20],
            "w18_RH": [23.69, 34.74, 49.87, 73.23], "w18_EE": [31.44, 42.56, 59.53, 82.88]}
FLOP_LOG_MEAN = {"w48_RH": 304.22, "w48_EE": 318.24, "w18_RH": 45.38, "w18_EE": 54.10}
# ... and its per-segment decomposition (GiB-MACs at 1024x2048): seg1 D; seg2..4 (A, B)
SEGMENTS = {"w18": (23.688, [(11.049, 1.217), (15.137, 3.042), (23.353, 3.919)]),
            "w48": (41.922, [(63.641, 4.636), (262.469, 18.393), (333.316, 19.624)])}
FULL = 1024 * 2048


def _marks(setting):
    return [pytest.mark.slow] if setting.startswith("w48") else []


def _meta_gflops(setting, eval_outputs=False):
    model = build(setting, device="meta").eval()
    with torch.no_grad():
        if eval_outputs:
            out = model([{"image": torch.empty(3, 1024, 2048, device="meta")}])[0]
            return [out["flops"][f"exit{k}"] for k in range(4)]
        _, info = model.forward_exits(torch.empty(1, 3, 1024, 2048, device="meta"), report=True)
    return [g[0] for g in info["gflops"]]


def _small_gflops(model, eval_outputs=False, h=64, w=128):
    """Real run at h x w, scaled to 1024x2048 by the pixel ratio (exact: see below)."""
    scale = FULL / (h * w)
    with torch.no_grad():
        if eval_outputs:
            img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
            out = model([{"image": img, "height": h, "width": w}])[0]
            return [out["flops"][f"exit{k}"] * scale for k in range(4)]
        _, info = model.forward_exits(images(1, h, w), report=True)
    return [g[0] * scale for g in info["gflops"]]


@pytest.mark.parametrize("setting", [pytest.param(s, marks=_marks(s)) for s in FLOP_LOG])
def test_dense_gflops_at_1024x2048_equal_the_flop_log(setting):
    """``forward_exits(report=True)`` and the eval outputs' ``flops`` (exit0..exit3); W48 on the
    meta device at 1024x2048, W18 at 64x128 scaled."""
    if setting.startswith("w48"):
        gflops = _meta_gflops(setting)
    else:
        model = build(setting).eval()
        gflops = _small_gflops(model)
        assert _small_gflops(model, eval_outputs=True) == gflops
    assert [round(g, 2) for g in gflops] == FLOP_LOG[setting]
    assert round(sum(gflops) / 4, 2) == FLOP_LOG_MEAN[setting]


@pytest.mark.slow
def test_w48_eval_outputs_report_the_same_gflops():
    assert [round(g, 2) for g in _meta_gflops("w48_RH", eval_outputs=True)] == FLOP_LOG["w48_RH"]


def test_meta_count_equals_a_real_run_and_scales_with_pixels():
    """The count on real tensors at 64x128 and 128x256, scaled by the pixel ratio, is the meta
    count at 1024x2048 exactly (every term is numel(W) x output pixels, all a fixed fraction of
    the input's for sizes divisible by 32)."""
    full = _meta_gflops("w18_RH")
    model = build("w18_RH").eval()
    for h, w in ((64, 128), (128, 256)):
        with torch.no_grad():
            _, info = model.forward_exits(images(2, h, w), report=True)
        for g in info["gflops"]:
            assert g[0] == g[1]  # per image
        assert [g[0] * FULL / (h * w) for g in info["gflops"]] == full


def _left_columns_computed(fraction):
    """A SegmentMasks factory for the model: the left ``fraction`` of the columns is uncertain
    (computed), the rest confident, whatever the exit's logits; nearest resizing keeps exactly
    that fraction at every resolution of a 64x128 input."""
    def factory(logits, threshold, criterion, resize):
        n, k, h, w = logits.shape
        fake = torch.zeros(n, k, h, w)
        fake[:, 0, :, int(w * fraction):] = 30.0  # confident
        return SegmentMasks(fake, threshold, criterion, resize)
    return factory


@pytest.mark.parametrize("width", ["w18", pytest.param("w48", marks=pytest.mark.slow)])
def test_masked_gflops_follow_the_segment_decomposition(width, monkeypatch):
    """GFLOPs(exit k) = D1 + sum_{j<=k} (A_j p + B_j p (1 - p)) with a fixed computed fraction p,
    and the CostTracker's "hrnet" convention on the same forward counts the masked convs at
    their computed positions: the same without the interpolation terms B_j p (1 - p)."""
    model = randomize(build(f"{width}_RHCA")).eval()
    x = images(1, 64, 128)
    scale = FULL / (64 * 128)
    d1, segments = SEGMENTS[width]
    for p in (0.25, 0.5):
        monkeypatch.setattr(anytime_module, "SegmentMasks", _left_columns_computed(p))
        with torch.no_grad(), CostTracker(model, conventions=["hrnet"], num_images=1) as tracker:
            _, info = model.forward_exits(x, report=True)
        assert [float(m.float().mean()) for m in info["masks"]] == [p] * 3
        expected, conv_only = [d1], d1
        for a, b in segments:
            expected.append(expected[-1] + a * p + b * p * (1 - p))
            conv_only += a * p
        ours = [g[0] * scale for g in info["gflops"]]
        assert ours == pytest.approx(expected, abs=0.01), p
        hrnet = tracker.per_image()[0]["hrnet"] * scale
        assert hrnet == pytest.approx(conv_only, abs=0.01), p
        interpolation = sum(b * p * (1 - p) for _, b in segments)
        assert ours[3] - hrnet == pytest.approx(interpolation, abs=0.01), p


def test_tracker_and_model_agree_on_a_dense_forward():
    model = build("w18_RH").eval()
    with torch.no_grad(), CostTracker(model, conventions=["hrnet"], num_images=2) as tracker:
        _, info = model.forward_exits(images(2, 64, 128), report=True)
    assert [t["hrnet"] for t in tracker.per_image()] == pytest.approx(
        info["gflops"][3], rel=1e-12)

"""Evaluating a dynamic-routing model reports, next to mIoU, its own per-image counts (the
original's real GFLOPs, the corrected ones, the expected ones) as mean/min/max over the data set,
and the measured latency per image (reference Appendix C: ``sem_seg/mean_real_flops`` & co.)."""
import pytest
import torch

from dl_lib.evaluation import SemSegEvaluator, inference_on_dataset
from dl_lib.modeling.dynamic_routing import dynamic_routing_layer16

from .helpers import register

NAMES = ("real_gflops", "real_corrected_gflops", "expt_gflops")


def _tiny_model():
    torch.manual_seed(0)
    model = dynamic_routing_layer16(layer_num=3, cell_num_list=[2, 3, 4], init_channel=8,
                                    norm="BN", num_classes=3).eval()
    # The init cell's down route opens for textured images and closes for a flat one (all its
    # features are 0 there, so the gate is max(0, tanh(bias)) = 0): two route sets in the data.
    last = model.backbone.init_layer.gate_conv_beta[2]
    with torch.no_grad():
        last.weight[1].fill_(1e4)
        last.bias[1] = -0.5
    return model


def _dataset(model):
    torch.manual_seed(1)
    flat = model.pixel_mean.expand(3, 64, 64).clone()  # normalises to 0
    images = [torch.rand(3, 64, 64) * 255, flat, torch.rand(3, 64, 64) * 255, flat.clone()]
    return [{"image": im, "height": 64, "width": 64, "sem_seg": torch.randint(0, 3, (64, 64))}
            for im in images]


def test_evaluation_reports_the_models_counts_and_latency():
    register("test_dr_eval", [], stuff_classes=["a", "b", "c"], ignore_label=255)
    model = _tiny_model()
    data = _dataset(model)
    with torch.no_grad():
        per_image = [model([d])[0]["flops"] for d in data]
    # the two route sets cost differently
    assert per_image[0]["real_gflops"] != pytest.approx(per_image[1]["real_gflops"])
    loader = [data[:3], data[3:]]  # a mixed batch, then one image
    res = inference_on_dataset(model, loader, SemSegEvaluator("test_dr_eval", distributed=False))
    sem_seg = res["sem_seg"]
    assert "mIoU" in sem_seg
    for name in NAMES:
        values = [f[name] for f in per_image]
        assert sem_seg[f"mean_{name}"] == pytest.approx(sum(values) / 4, rel=1e-6)
        assert sem_seg[f"min_{name}"] == pytest.approx(min(values), rel=1e-6)
        assert sem_seg[f"max_{name}"] == pytest.approx(max(values), rel=1e-6)
    assert sem_seg["min_real_gflops"] < sem_seg["max_real_gflops"]
    assert res["time"]["num_images"] >= 1 and res["time"]["ms_per_image"] > 0
    assert res["time"]["device"].startswith("cpu")

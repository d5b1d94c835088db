"""optimize_for_inference on PSPNet: BN folded, 1x1 convs switched, channels-last, and the
logits unchanged at 1 thread (the matmul path) and 2 threads (the conv path)."""
import pytest
import torch
from torch import nn

from dl_lib.layers import PointwiseConv2d
from dl_lib.modeling.acosp.pspnet import pspnet18
from dl_lib.modeling.inference import optimize_for_inference


def randomized_pspnet():
    torch.manual_seed(0)
    model = pspnet18(num_classes=5, aux=False)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g)
            m.running_mean.data = torch.randn(m.num_features, generator=g)
            m.running_var.data = torch.rand(m.num_features, generator=g) + 0.5
    return model.eval()


def test_optimize_for_inference_on_pspnet_is_exact():
    model = randomized_pspnet()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        expected = model.predict_logits(x)
    done = optimize_for_inference(model, torch.randn(1, 3, 33, 33))
    assert done["folded_bn"] > 20
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 0
    assert done["pointwise"] > 0 and any(isinstance(m, PointwiseConv2d) for m in model.modules())
    assert model.head.cls[0].weight.is_contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):  # the matmul path (1 thread) and the conv path
            torch.set_num_threads(n)
            with torch.no_grad():
                got = model.predict_logits(x.contiguous(memory_format=torch.channels_last))
            err = (got - expected).abs().max() / expected.abs().max()
            assert err < 1e-5, (n, err)
    finally:
        torch.set_num_threads(threads)


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval"):
        optimize_for_inference(pspnet18(num_classes=3, aux=False).train(), torch.randn(1, 3, 33, 33))

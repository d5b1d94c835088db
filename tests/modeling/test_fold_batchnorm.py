"""fold_batchnorm / optimize_for_inference: exact to float rounding, only the pairs that are
safe (conv output read by the BN alone, each module run once), FoldedConv2d's border term
scaled too, training mode refused."""
import copy

import pytest
import torch
from torch import nn

from dl_lib.layers import Conv2d as WrapperConv2d
from dl_lib.layers import FrozenBatchNorm2d, PointwiseConv2d
from dl_lib.modeling.acosp.pspnet import pspnet18
from dl_lib.modeling.fold_batchnorm import fold_batchnorm
from dl_lib.modeling.inference import optimize_for_inference
from dl_lib.modeling.pruning.channels import FoldedConv2d


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g)
            m.running_mean.data = torch.randn(m.num_features, generator=g)
            m.running_var.data = torch.rand(m.num_features, generator=g) + 0.5
    return model.eval()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(8)
        self.folded = FoldedConv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(8)
        self.shared = nn.Conv2d(8, 8, 1, bias=False)   # its output also feeds the add
        self.bn3 = nn.BatchNorm2d(8)
        self.wrapped = WrapperConv2d(8, 8, 3, padding=1, bias=False, norm=nn.BatchNorm2d(8),
                                     activation=nn.ReLU())
        self.twice = nn.BatchNorm2d(8)                  # runs twice: not folded

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.folded(x))
        s = self.shared(x)
        x = self.bn3(s) + s
        x = self.wrapped(x)
        return self.twice(self.twice(x))


def test_folding_is_exact_and_skips_unsafe_pairs():
    torch.manual_seed(0)
    net = randomize(Net())
    net.folded.fold_kernel.normal_()
    x = torch.randn(2, 3, 11, 13)
    with torch.no_grad():
        expected = net(x)
    pairs = fold_batchnorm(net)
    assert sorted(pairs) == [("conv1", "bn1"), ("folded", "bn2"), ("wrapped", "wrapped.norm")]
    assert isinstance(net.bn1, nn.Identity) and isinstance(net.bn2, nn.Identity)
    assert isinstance(net.bn3, nn.BatchNorm2d) and isinstance(net.twice, nn.BatchNorm2d)
    assert net.wrapped.norm is None and net.folded.bias is not None
    with torch.no_grad():
        got = net(x)
        other = net(torch.randn(1, 3, 7, 9))  # another size: FoldedConv2d recomputes its term
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (got - expected).abs().max()
    assert other.shape == (1, 8, 7, 9)


def test_fold_kernel_must_be_scaled_too():
    # Folding the weights and bias but not FoldedConv2d's border term would be wrong at borders.
    torch.manual_seed(1)
    net = randomize(Net())
    net.folded.fold_kernel.normal_()
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        expected = net(x)
        broken = copy.deepcopy(net)
        fold_batchnorm(broken)
        broken.folded.fold_kernel.mul_(2.0)
        broken.folded._fold_cache = None
        assert not torch.allclose(broken(x), expected, atol=1e-3)


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(Net().train())


def test_optimize_for_inference_on_pspnet_is_exact():
    torch.manual_seed(0)
    model = randomize(pspnet18(num_classes=5, aux=True))
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        expected = model.predict_logits(x)
    done = optimize_for_inference(model)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert done["folded_bn"] > 20 and bns == 0  # the aux head too (compression_forward traces it)
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

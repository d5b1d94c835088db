"""fuse_batch_norms: folded = unfused outputs (to float rounding), no BN left where every BN
follows a convolution only it reads; the other norms are left with the reason."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dl_lib.analysis.fuse_bn import FuseError, fuse_batch_norms
from dl_lib.layers.norm import FrozenBatchNorm2d
from dl_lib.modeling.mfaranet import mfaranet_r18_deep_stem


def randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Statistics and affine parameters far from the identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                c = m.num_features
                m.running_mean.copy_(0.5 * torch.randn(c, generator=g))
                m.running_var.copy_(0.2 + 2 * torch.rand(c, generator=g))
                m.weight.copy_(1 + 0.5 * torch.randn(c, generator=g))
                m.bias.copy_(0.5 * torch.randn(c, generator=g))


def count_norms(model):
    return sum(isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d))
               for m in model.modules())


def test_mfaranet_folds_every_bn_and_keeps_its_outputs():
    model = mfaranet_r18_deep_stem(num_classes=5).eval()
    randomize_norms(model)
    x = torch.randn(1, 3, 64, 96)
    fused, report = fuse_batch_norms(model, torch.randn(1, 3, 32, 64))
    # backbone: stem 3 + 8 blocks x 2 + 3 downsamples; decoder: 4 + 3 + 3 + 2 + 4 attention convs
    assert len(report.folded) == 39 and report.left == {}
    assert count_norms(fused) == 0 and count_norms(model) == 39  # a copy: model unchanged
    with torch.no_grad():
        ref, out = model.predict_logits(x), fused.predict_logits(x)  # another size than folded on
    for r, o in zip(ref, out):
        assert torch.allclose(o, r, rtol=1e-4, atol=1e-4 * r.abs().max().item())
    assert report.folded["head.compress.0.norm"] == "head.compress.0"
    assert report.folded["backbone.layer1.0.bn2"] == "backbone.layer1.0.conv2"


class Shapes(nn.Module):
    """conv_a -> bn_a (foldable); conv_b's output read by bn_b and by the residual sum (not
    foldable); conv_c run twice (shared weight: not foldable); a frozen BN after a bias-free conv
    (foldable, gets a bias); a BN after a ReLU (no conv before it)."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv_b, self.bn_b = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.conv_c, self.bn_c = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.conv_d, self.bn_d = nn.Conv2d(4, 4, 3, padding=1, bias=False), FrozenBatchNorm2d(4)
        self.bn_relu = nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.bn_a(self.conv_a(x))
        y = self.conv_b(x)
        x = self.bn_b(y) + y
        x = self.bn_c(self.conv_c(x)) + self.conv_c(x)
        x = self.bn_d(self.conv_d(x))
        return self.bn_relu(F.relu(x))


def test_only_norms_whose_conv_output_nothing_else_reads_are_folded():
    model = Shapes().eval()
    randomize_norms(model)
    x = torch.randn(2, 3, 8, 8)
    fused, report = fuse_batch_norms(model, x)
    assert report.folded == {"bn_a": "conv_a", "bn_d": "conv_d"}
    assert "also read elsewhere" in report.left["bn_b"]
    assert "conv_c ran 2 times" in report.left["bn_c"]
    assert "not the output of a convolution" in report.left["bn_relu"]
    assert isinstance(fused.bn_a, nn.Identity) and isinstance(fused.bn_b, nn.BatchNorm2d)
    assert model.conv_d.bias is None and fused.conv_d.bias is not None
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), atol=1e-5)


class IgnoresBias(nn.Conv2d):
    def forward(self, x):
        return F.conv2d(x, self.weight, None, self.stride, self.padding)


def test_a_fold_that_changes_the_outputs_is_refused():
    model = nn.Sequential(IgnoresBias(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)).eval()
    randomize_norms(model)
    with pytest.raises(FuseError, match="without --fuse-bn"):
        fuse_batch_norms(model, torch.randn(1, 3, 8, 8))


def test_inplace_changes_the_model_itself():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).eval()
    fused, report = fuse_batch_norms(model, torch.randn(1, 3, 4, 4), inplace=True)
    assert fused is model and isinstance(model[1], nn.Identity) and report.folded == {"1": "0"}

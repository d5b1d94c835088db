"""Small conv/BN/ReLU nets for the compression tests: residual streams (torchvision
bottlenecks with a downsample), a PPM-like concatenation of pooled and resized branches, and a
SegNet-like max-pool / max-unpool pair."""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck


def cbr(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ResidualNet(nn.Module):
    """stem (2 x conv-BN-ReLU) -> two bottlenecks (one stream of 32) -> cat(x, 2 pooled
    branches) -> 3x3 fusion -> 1x1 classifier (unprunable)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(cbr(3, 16), cbr(16, 16))
        ds = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.layer = nn.Sequential(Bottleneck(16, 8, downsample=ds), Bottleneck(32, 8))
        self.ppm = nn.ModuleList([nn.Sequential(
            nn.AdaptiveAvgPool2d(b), nn.Conv2d(32, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
            for b in (1, 2)])
        self.fuse = cbr(32 + 16, 16)
        self.cls = nn.Conv2d(16, 5, 1)
        self.cls.unprunable = True

    def forward(self, x):
        x = self.layer(self.stem(x))
        feats = [x] + [F.interpolate(p(x), size=x.shape[-2:], mode="bilinear", align_corners=True)
                       for p in self.ppm]
        return self.cls(self.fuse(torch.cat(feats, 1)))


class UnpoolNet(nn.Module):
    """conv-BN-ReLU x2 -> max-pool (indices) -> conv-BN-ReLU -> max-unpool -> conv-BN-ReLU ->
    3x3 classifier with bias (unprunable)."""

    def __init__(self):
        super().__init__()
        self.e1, self.e2 = cbr(3, 16), cbr(16, 16)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.e3 = cbr(16, 16)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.d1 = cbr(16, 16)
        self.cls = nn.Conv2d(16, 4, 3, padding=1)
        self.cls.unprunable = True

    def forward(self, x):
        x = self.e2(self.e1(x))
        shape = x.shape
        pooled, indices = self.pool(x)
        y = self.unpool(self.e3(pooled), indices, output_size=shape)
        return self.cls(self.d1(y))


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Nonzero running means and betas, so a pruned channel carries a constant."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model

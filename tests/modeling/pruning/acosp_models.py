"""PSPNet-50 and SegNet in the layouts of reference section 1 for the compression tests (the eval
path: PSPNet without its training-only aux head), built from the library's ResNet-50."""
import torch
import torch.nn.functional as F
from torch import nn

from dl_lib.modeling.backbone.resnet import ResNet


class PSPNet50(nn.Module):
    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.backbone = ResNet("resnet50", out_features=["res5"], deep_stem=True,
                               output_stride=8, stem_width=128)
        self.ppm = nn.ModuleList([nn.Sequential(
            nn.AdaptiveAvgPool2d(b), nn.Conv2d(2048, 512, 1, bias=False), nn.BatchNorm2d(512),
            nn.ReLU(inplace=True)) for b in (1, 2, 3, 6)])
        self.cls = nn.Sequential(nn.Conv2d(4096, 512, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(512), nn.ReLU(inplace=True), nn.Dropout2d(0.1),
                                 nn.Conv2d(512, num_classes, 1))
        self.cls[4].unprunable = True

    def forward(self, x):
        size = x.shape[-2:]
        x = self.backbone(x)["res5"]
        feats = [x] + [F.interpolate(p(x), x.shape[-2:], mode="bilinear", align_corners=True)
                       for p in self.ppm]
        return F.interpolate(self.cls(torch.cat(feats, 1)), size, mode="bilinear",
                             align_corners=True)


def _cbr(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SegNet(nn.Module):
    """VGG-16 encoder (2, 2, 3, 3, 3 convs), max-pool indices to a mirrored max-unpool decoder;
    the last conv (unprunable) keeps its BN and ReLU as in the original."""

    def __init__(self, num_classes: int = 19):
        super().__init__()
        enc = [(3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3)]
        self.down = nn.ModuleList(nn.Sequential(*[_cbr(cin if i == 0 else cout, cout)
                                                  for i in range(n)]) for cin, cout, n in enc)
        dec = [(512, 512, 3), (512, 256, 3), (256, 128, 3), (128, 64, 2), (64, num_classes, 2)]
        self.up = nn.ModuleList(nn.Sequential(*[_cbr(cin, cin if i < n - 1 else cout)
                                                for i in range(n)]) for cin, cout, n in dec)
        self.up[-1][-1][0].unprunable = True
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)

    def forward(self, x):
        stack = []
        for block in self.down:
            x = block(x)
            shape = x.shape
            x, indices = self.pool(x)
            stack.append((indices, shape))
        for block in self.up:
            indices, shape = stack.pop()
            x = block(self.unpool(x, indices, output_size=shape))
        return x


def build_pspnet50(num_classes: int = 19) -> PSPNet50:
    return PSPNet50(num_classes)


def build_segnet(num_classes: int = 19) -> SegNet:
    return SegNet(num_classes)

"""The original ADP-C computation, written from the reference (``anytime.md`` sections 3.3-3.5)
for tests: every masked convolution computes densely, then overwrites the confident outputs with
``K_hat * (m y)``; masks come from nearest-resized logits, one per output size and segment.

``original_forward(model, x)`` runs one of our ``AnytimeSegmentor`` s this way (patching its
``AnytimeConv2d`` forwards for the call) and returns the aggregated logits of every exit.
"""
import contextlib

import torch
import torch.nn.functional as F

from dl_lib.modeling.anytime import AnytimeConv2d
from dl_lib.modeling.anytime import confidence
from dl_lib.modeling.backbone.hrnet import concat_branches


def _original_mask(logits, size, threshold, criterion="conf_thre"):
    z = F.interpolate(logits, size=size, mode="nearest")
    p = F.softmax(z, dim=1)
    if criterion == "conf_thre":
        return (p.max(dim=1)[0] <= threshold).float()[:, None]
    entropy = -(p * torch.log(p)).sum(dim=1)
    return (entropy >= threshold).float()[:, None]


def _original_conv(conv, x, logits, threshold, criterion):
    y = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if logits is None:
        return y
    m = _original_mask(logits, y.shape[-2:], threshold, criterion)
    if conv.interpolation == "none":
        return y * m
    k = torch.exp(-conv.Lambda ** 2 * conv.square_dis)
    k = (k / (k.sum() + 1e-5))[None, None].expand(y.shape[1], 1, 7, 7)
    interp = F.conv2d(y * m, k, padding=3, groups=y.shape[1])
    return m * y + (1 - m) * interp


@contextlib.contextmanager
def _patched(source):
    original = AnytimeConv2d.forward

    def forward(self, x):
        return _original_conv(self, x, source["logits"], source["threshold"], source["criterion"])

    AnytimeConv2d.forward = forward
    try:
        yield
    finally:
        AnytimeConv2d.forward = original


@torch.no_grad()
def original_forward(model, x):
    """Aggregated logits of exits 1..4 computed the original's way (NCHW, dense)."""
    source = {"logits": None, "threshold": model.threshold, "criterion": model.criterion}
    with _patched(source):
        features = [model.backbone.forward_stem(x)]
        logits = model.head.exit1(features[0])
        outs = [logits]
        for k in (2, 3, 4):
            source["logits"] = logits if model.mask_use else None
            features = model.backbone.forward_stage(k, features)
            z = model.head.exit(k)(concat_branches(features))
            if model.mask_use and model.aggregation == "copy":
                m = _original_mask(logits, z.shape[-2:], model.threshold, model.criterion)
                z = (1 - m) * logits + m * z
            logits = z
            outs.append(logits)
            source["logits"] = None
    return outs

"""Shared pieces of the ADP-C tests: the key dumps of the original models, our models of each
setting, and weights that make masks mixed (part of the image confident, part not)."""
import json
import math
import os
import re

import torch
from torch import nn

from dl_lib.modeling.anytime import anytime_hrnet_w18, anytime_hrnet_w48

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))

# Copies of shared/docs/reference/keys/anytime_keys_<setting>.txt (the original's state dicts,
# measured by instantiating it), kept with the tests so that they run in any clone.
# setting -> (constructor, keyword arguments of our model)
SETTINGS = {
    "w18_EE": (anytime_hrnet_w18, dict(exit_type="original", mask_use=False)),
    "w18_RH": (anytime_hrnet_w18, dict(exit_type="flex", mask_use=False)),
    "w18_CA": (anytime_hrnet_w18, dict(exit_type="original", mask_use=True)),
    "w18_RHCA": (anytime_hrnet_w18, dict(exit_type="flex", mask_use=True)),
    "w48_EE": (anytime_hrnet_w48, dict(exit_type="original", mask_use=False)),
    "w48_RH": (anytime_hrnet_w48, dict(exit_type="flex", mask_use=False)),
    "w48_CA": (anytime_hrnet_w48, dict(exit_type="original", mask_use=True)),
    "w48_RHCA": (anytime_hrnet_w48, dict(exit_type="flex", mask_use=True)),
}


def key_dump_path(setting):
    return os.path.join(HERE, f"anytime_keys_{setting}.txt")


def read_key_dump(setting):
    """([(key, shape, dtype)], header) of a key dump; ``header``: ``trainable``, ``all_params``
    (incl. the frozen square_dis), ``elements`` (state_dict total), ``num_keys``, ``per_attr``
    (trainable per top-level attribute)."""
    entries, header = [], {}
    with open(key_dump_path(setting)) as f:
        for line in f:
            if line.startswith("# trainable params:"):
                numbers = [int(n) for n in re.findall(r":\s*(\d+)", line)]
                header.update(zip(("trainable", "all_params", "elements", "num_keys"), numbers))
            elif line.startswith("# trainable params per top-level attribute:"):
                header["per_attr"] = json.loads(line.split(":", 1)[1])
            elif line.strip() and not line.startswith("#"):
                key, shape, dtype = line.rstrip("\n").split("\t")
                shape = tuple(int(s) for s in re.findall(r"\d+", shape))
                entries.append((key, shape, getattr(torch, dtype.replace("torch.", ""))))
    return entries, header


def build(setting, device=None, **kwargs):
    """Our model of a key-dump setting (``device="meta"``: shapes only, fast)."""
    fn, kw = SETTINGS[setting]
    kw = dict(kw, **kwargs)
    if device is None:
        return fn(**kw)
    with torch.device(device):
        return fn(**kw)


def random_released_weights(entries, seed=0):
    """A state dict in the released layout (``model.`` prefix, ``loss.criterion.weight``) from a
    key dump: convs with variance ~2/fan_in (activations stay O(1)), BN affine and statistics
    away from the identity, Lambda in [0.5, 3], square_dis as the original's."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape, dtype in entries:
        if dtype == torch.int64:
            sd["model." + key] = torch.tensor(100, dtype=torch.int64)
            continue
        u = torch.rand(shape, generator=gen)
        if key.endswith("square_dis"):
            t = torch.arange(-3, 4, dtype=torch.float32)
            v = t[:, None] ** 2 + t[None, :] ** 2
            v[3, 3] = 1e5
        elif key.endswith("Lambda"):
            v = 0.5 + 2.5 * u
        elif key.endswith("running_var"):
            v = 0.5 + u
        elif key.endswith("running_mean"):
            v = 0.2 * (u - 0.5)
        elif len(shape) == 1 and key.endswith("weight"):  # BN gamma
            v = 0.5 + u
        elif key.endswith("bias"):
            v = 0.2 * (u - 0.5)
        else:  # conv weight
            v = (u - 0.5) * math.sqrt(24.0 / math.prod(shape[1:]))
        sd["model." + key] = v.to(dtype)
    sd["loss.criterion.weight"] = torch.rand(19, generator=gen) + 0.5
    return sd


def randomize(model, seed=0):
    """Our model with weights like :func:`random_released_weights` (in place)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.2 * (torch.rand(m.num_features, generator=gen) - 0.5))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.2 * (torch.rand(m.num_features, generator=gen) - 0.5))
            elif isinstance(m, nn.Conv2d):
                fan_in = math.prod(m.weight.shape[1:])
                m.weight.copy_((torch.rand(m.weight.shape, generator=gen) - 0.5)
                               * math.sqrt(24.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(0.2 * (torch.rand(m.bias.shape, generator=gen) - 0.5))
                if hasattr(m, "Lambda"):
                    m.Lambda.fill_(0.5 + 2.5 * float(torch.rand((), generator=gen)))
    return model


def classifiers(model):
    """The exits' final convolutions (C -> num_classes)."""
    return [m for m in model.head.modules()
            if isinstance(m, nn.Conv2d) and m.out_channels == model.head.last_layer[3].out_channels]


def max_prob(logits):
    """N x h x w max softmax probability."""
    return torch.softmax(logits.float(), dim=1).max(dim=1).values


def images(n=2, h=64, w=128, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=gen)


def exit_classifier(model, k):
    """Exit k's final convolution (C -> num_classes)."""
    return model.head.exit(k)[-1]


def calibrate(model, x, spread=3.0, quantile=0.7):
    """Scale every exit classifier so that its logits on ``x`` have the same spread (std over
    classes ~ ``spread``) and set the threshold at a ``quantile`` of exit 1's confidence: part of
    the image then turns confident after each exit (mixed masks). Returns the model (eval)."""
    model.eval()
    threshold, model.threshold = model.threshold, 2.0  # dense
    with torch.no_grad():
        logits, _ = model.forward_exits(x)
        for k, z in enumerate(logits, start=1):
            conv = exit_classifier(model, k)
            scale = spread / float(z.std(dim=1).mean())
            conv.weight.mul_(scale)
            conv.bias.mul_(scale)
        logits, _ = model.forward_exits(x)
    model.threshold = float(max_prob(logits[0]).quantile(quantile)) if model.mask_use else threshold
    return model


def mixed_model(setting="w18_RHCA", x=None, seed=0, **kwargs):
    """A randomised model of ``setting`` with mixed masks on ``x`` (default :func:`images`)."""
    model = randomize(build(setting, **kwargs), seed)
    return calibrate(model, images() if x is None else x)

"""The channel configuration of a compressed network: ``MODEL.PRUNING.CHANNELS``.

``compress`` (``compress.py``) shrinks convolutions and norms in place; what it changed is a list
of entries ``"module.path=in,out"`` (a conv: its input and output channels; a norm: ``C,C``) with
an optional third field for a conv that gained a bias when the constants of removed channels were
folded into it:

* ``bias``: a plain bias (the conv has no zero padding on a spatial kernel: the fold is exact);
* ``fold``: a :class:`FoldedConv2d`, whose constant term is the convolution of the removed
  channels' constants with the removed weights over the zero-padded input, so it is exact at the
  borders too (a plain bias would be exact only in the interior).

``apply_channel_config(model, entries)`` rebuilds those modules at their compressed sizes in a
freshly built (dense, unmasked) model, so the compressed checkpoint loads strictly into it;
``channel_config_of(model)`` gives the entries back (what a compressed model's
``architecture()`` returns as ``MODEL.PRUNING.CHANNELS``).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FoldedConv2d", "parse_entry", "format_entry", "apply_channel_config",
           "channel_config_of", "CHANNELS_ATTR"]

# The attribute of the root module holding the entries of its compressed modules.
CHANNELS_ATTR = "pruning_channels"
_BIAS_KINDS = ("", "bias", "fold")


class FoldedConv2d(nn.Conv2d):
    """A conv plus the exact contribution of removed constant input channels.

    ``fold_kernel`` (C_out x 1 x kh x kw) = sum over the removed channels c of const_c * W[:, c];
    the forward adds ``conv2d(ones(1, 1, H, W), fold_kernel)`` with the conv's stride, padding and
    dilation: the constant in the interior, less at the zero-padded borders, exactly what the
    removed channels contributed. Input N x C_in x H x W -> N x C_out x H' x W'.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("fold_kernel", torch.zeros(self.out_channels, 1, *self.kernel_size))
        self._fold_cache: Optional[Tuple[tuple, torch.Tensor]] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        kernel = self.fold_kernel.to(dtype=x.dtype)
        key = (tuple(x.shape[-2:]), x.dtype, x.device, self.fold_kernel._version,
               self.fold_kernel.data_ptr())
        if self._fold_cache is None or self._fold_cache[0] != key or torch.is_grad_enabled():
            ones = torch.ones((1, 1) + tuple(x.shape[-2:]), dtype=x.dtype, device=x.device)
            term = F.conv2d(ones, kernel, None, self.stride, self.padding, self.dilation)
            self._fold_cache = (key, term.detach()) if not torch.is_grad_enabled() else None
        else:
            term = self._fold_cache[1]
        return out + term


def parse_entry(entry: str) -> Tuple[str, int, int, str]:
    """``"path=in,out[,bias|fold]"`` -> ``(path, in, out, kind)``; a clear error otherwise."""
    path, sep, spec = str(entry).partition("=")
    fields = [f.strip() for f in spec.split(",")]
    ok = sep and path and len(fields) in (2, 3) and all(f.isdigit() for f in fields[:2])
    if ok and len(fields) == 3 and fields[2] not in _BIAS_KINDS[1:]:
        ok = False
    if not ok:
        raise ValueError(f"MODEL.PRUNING.CHANNELS entry {entry!r}: expected 'module.path=in,out' "
                         f"or 'module.path=in,out,bias' / ',fold' (integers in, out)")
    return path.strip(), int(fields[0]), int(fields[1]), fields[2] if len(fields) == 3 else ""


def format_entry(path: str, in_channels: int, out_channels: int, kind: str = "") -> str:
    return f"{path}={in_channels},{out_channels}" + (f",{kind}" if kind else "")


def _norm_types() -> Tuple[type, ...]:
    from dl_lib.layers.norm import FrozenBatchNorm2d

    return (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)


def _resized_conv(conv: nn.Conv2d, in_channels: int, out_channels: int, kind: str) -> nn.Conv2d:
    if conv.groups != 1:
        raise ValueError(f"compress: grouped conv (groups={conv.groups}) is not supported")
    cls = FoldedConv2d if kind == "fold" else nn.Conv2d
    new = cls(in_channels, out_channels, conv.kernel_size, stride=conv.stride,
              padding=conv.padding, dilation=conv.dilation,
              bias=(conv.bias is not None) or bool(kind),
              padding_mode=conv.padding_mode)
    for name, value in vars(conv).items():  # flags such as ``unprunable``
        if not name.startswith("_") and name not in vars(new):
            setattr(new, name, value)
    return new.to(device=conv.weight.device, dtype=conv.weight.dtype)


def _resized_norm(norm: nn.Module, channels: int) -> nn.Module:
    from dl_lib.layers.norm import FrozenBatchNorm2d

    if isinstance(norm, FrozenBatchNorm2d):
        new = FrozenBatchNorm2d(channels, eps=norm.eps)
    else:
        new = type(norm)(channels, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                         track_running_stats=norm.track_running_stats)
    ref = next(iter(norm.buffers()), None)
    return new if ref is None else new.to(device=ref.device)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    parent._modules[name] = module


def apply_channel_config(model: nn.Module, entries: Sequence[str]) -> nn.Module:
    """Replace the convs / norms named by ``entries`` by ones of the compressed sizes (in place;
    their weights are left to the checkpoint). Returns ``model``; records the entries on it."""
    parsed = [parse_entry(e) for e in entries]
    modules: Dict[str, nn.Module] = dict(model.named_modules())
    for path, cin, cout, kind in parsed:
        module = modules.get(path)
        if module is None:
            raise ValueError(f"MODEL.PRUNING.CHANNELS entry '{path}=...': the model "
                             f"({type(model).__name__}) has no module '{path}' (a checkpoint of "
                             f"another architecture?)")
        if isinstance(module, nn.Conv2d):
            _set(model, path, _resized_conv(module, cin, cout, kind))
        elif isinstance(module, _norm_types()):
            if cin != cout or kind:
                raise ValueError(f"MODEL.PRUNING.CHANNELS entry '{path}={cin},{cout}"
                                 f"{',' + kind if kind else ''}': a norm takes 'C,C'")
            _set(model, path, _resized_norm(module, cout))
        else:
            raise ValueError(f"MODEL.PRUNING.CHANNELS entry '{path}=...': '{path}' is a "
                             f"{type(module).__name__}, not a Conv2d or a BatchNorm")
    setattr(model, CHANNELS_ATTR, [format_entry(*p) for p in parsed])
    return model


def channel_config_of(model: nn.Module) -> List[str]:
    """The ``MODEL.PRUNING.CHANNELS`` entries of a compressed model (``[]``: dense)."""
    model = getattr(model, "module", model)
    return list(getattr(model, CHANNELS_ATTR, []) or [])

"""Normalisation layers and ``get_norm``: one place that turns a config name into a module.

``"SyncBN"`` (and DynamicRouting's ``"nnSyncBN"``) resolve when the module is built, which is
after ``init_process_group`` and before DDP wrapping:
- no process group or world size 1: ``nn.BatchNorm2d`` (there is nothing to synchronise);
- NCCL backend: ``nn.SyncBatchNorm`` (fused CUDA kernels);
- any other backend (Gloo, CPU training): ``NaiveSyncBatchNorm``, an all-reduce implementation,
  because ``nn.SyncBatchNorm`` raises on CPU tensors in training.
Use ``revert_sync_batchnorm`` to turn a trained model back into plain BN for CPU use or export.
"""
from typing import Callable, Optional, Union

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "FrozenBatchNorm2d", "NaiveSyncBatchNorm", "get_norm", "convert_frozen_batchnorm",
    "revert_sync_batchnorm", "NORM_NAMES",
]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (all four are buffers).

    Computes ``x * scale + shift`` with ``scale = weight / sqrt(running_var + eps)`` and
    ``shift = bias - running_mean * scale``, i.e. BN in eval mode, in training too. Input and
    output are N×C×H×W. Loads BatchNorm state dicts (``num_batches_tracked`` is ignored).
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.reshape(shape).to(x.dtype) + shift.reshape(shape).to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # BatchNorm checkpoints carry a step counter that frozen statistics have no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Return ``module`` with every BatchNorm (plain or synchronised) replaced by a frozen copy.

        ``module`` itself is returned converted when it is a BatchNorm; children are replaced in
        place otherwise.
        """
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen = cls(module.num_features, module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            return frozen.to(_device_of(module))
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm in ``module`` by ``FrozenBatchNorm2d``; see the class method."""
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)


def _device_of(module: nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


class NaiveSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are all-reduced over the default process group.

    Works with any backend (Gloo included) because it only needs ``all_gather``/``all_reduce``
    through ``fvcore.nn.distributed.differentiable_all_reduce``, so gradients flow through the
    statistics as in BN on the concatenated batch. Each rank contributes in proportion to its
    number of values per channel (N×H×W), so ranks with uneven or empty batches are weighted
    correctly. Eval mode, or a world size of 1, is plain BatchNorm2d. Input/output: N×C×H×W.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_available() or not dist.is_initialized() \
                or dist.get_world_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        channels = x.shape[1]
        # Sums in float32: fp16 sums of squares overflow on large feature maps.
        xf = x.float()
        count = torch.full((1,), float(xf.numel() // channels), dtype=torch.float32,
                           device=x.device)
        stats = torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), count])
        # Imported here: fvcore.nn pulls in torch.jit.script helpers that warn on import.
        from fvcore.nn.distributed import differentiable_all_reduce

        stats = differentiable_all_reduce(stats)
        # clamp: an all-empty step gives zeros instead of NaN (no .item(), which syncs the GPU).
        total = torch.clamp(stats[-1], min=1.0)
        mean = stats[:channels] / total
        var = torch.clamp(stats[channels:2 * channels] / total - mean * mean, min=0.0)

        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None \
                else 1.0 / float(self.num_batches_tracked)
            n = total.detach()
            # Running variance is unbiased, as in nn.BatchNorm2d.
            unbiased = var.detach() * n / torch.clamp(n - 1, min=1.0)
            self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
            self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)

        invstd = torch.rsqrt(var + self.eps)
        scale = invstd if self.weight is None else self.weight * invstd
        shift = -mean * scale if self.bias is None else self.bias - mean * scale
        out = xf * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
        return out.to(x.dtype)


class _BatchNormAnyDim(nn.BatchNorm2d):
    """BatchNorm2d that accepts any N×C×... input, as ``nn.SyncBatchNorm`` does; used when
    reverting SyncBN, whose input rank is unknown."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace ``nn.SyncBatchNorm`` and ``NaiveSyncBatchNorm`` by plain BatchNorm2d copies.

    Parameters, buffers, ``requires_grad`` and train/eval mode are kept; a new module is returned
    when ``module`` itself is synchronised, children are replaced in place otherwise. Use it
    before CPU inference or export of a model trained with SyncBN.
    """
    if isinstance(module, (nn.SyncBatchNorm, NaiveSyncBatchNorm)):
        cls = nn.BatchNorm2d if isinstance(module, NaiveSyncBatchNorm) else _BatchNormAnyDim
        new = cls(module.num_features, module.eps, module.momentum, module.affine,
                  module.track_running_stats)
        new = new.to(_device_of(module))
        with torch.no_grad():
            if module.affine:
                new.weight.copy_(module.weight)
                new.bias.copy_(module.bias)
                new.weight.requires_grad_(module.weight.requires_grad)
                new.bias.requires_grad_(module.bias.requires_grad)
            if module.track_running_stats:
                new.running_mean.copy_(module.running_mean)
                new.running_var.copy_(module.running_var)
                new.num_batches_tracked.copy_(module.num_batches_tracked)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = revert_sync_batchnorm(child)
        if new_child is not child:
            module.add_module(name, new_child)
    return module


def _sync_bn(channels: int) -> nn.Module:
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return nn.BatchNorm2d(channels)
    if dist.get_backend() == dist.Backend.NCCL:
        return nn.SyncBatchNorm(channels)
    return NaiveSyncBatchNorm(channels)


def _group_norm(channels: int) -> nn.Module:
    if channels % 32 != 0:
        raise ValueError(f"get_norm('GN', {channels}): GroupNorm uses 32 groups, so the channel "
                         f"count must be a multiple of 32")
    return nn.GroupNorm(32, channels)


_NORMS = {
    "BN": nn.BatchNorm2d,
    "SyncBN": _sync_bn,
    "nnSyncBN": _sync_bn,  # DynamicRouting's name; resolved the same way
    "NaiveSyncBN": NaiveSyncBatchNorm,
    "FrozenBN": FrozenBatchNorm2d,
    "GN": _group_norm,
}
NORM_NAMES = tuple(_NORMS)


def get_norm(norm: Union[str, Callable[[int], nn.Module], None],
             channels: int) -> Optional[nn.Module]:
    """Build the normalisation layer named ``norm`` over ``channels`` channels.

    Args:
        norm: ``""``/None (no normalisation: returns None), one of ``NORM_NAMES`` (``"BN"``,
            ``"SyncBN"``, ``"nnSyncBN"``, ``"NaiveSyncBN"``, ``"FrozenBN"``, ``"GN"``), or a
            callable ``channels -> nn.Module``.
        channels: number of channels C of the N×C×H×W input.
    """
    if norm is None or (isinstance(norm, str) and norm == ""):
        return None
    if isinstance(norm, str):
        if norm not in _NORMS:
            raise ValueError(f"Unknown norm {norm!r}; valid names: {', '.join(NORM_NAMES)}, "
                             "or '' for none")
        norm = _NORMS[norm]
    elif not callable(norm):
        raise TypeError(f"norm must be a name or a callable, got {type(norm).__name__}")
    return norm(channels)

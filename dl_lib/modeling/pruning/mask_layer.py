"""``ChannelMask``: multiplies a N x C x ... tensor channel-wise by a soft or a hard top-k mask.

Soft: the parameter ``weight`` holds the per-channel logits (the original's name, so its keys
``X.1.weight`` are kept) and the buffer ``temperature`` the current temperature; the mask is
computed from them on every call, in training and in eval alike (the original cached the mask
of the last training batch in a buffer during ``forward``: stale under ``eval()``, lost on
DataParallel replicas). Hard: the buffer ``mask`` (C,) of zeros and ones, the original's
``X.1.mask``.

Loading a state dict that holds ``mask`` but no ``weight`` into a soft layer makes it hard first,
so released (hard-masked) checkpoints and checkpoints saved after the conversion load into a
freshly built, soft-masked model.
"""
from typing import Optional, Tuple

import torch
from torch import nn

from .soft_topk import hard_topk_mask, soft_topk_mask

__all__ = ["ChannelMask"]


class ChannelMask(nn.Module):
    """A channel mask over ``channels`` channels keeping ``k``.

    Args:
        channels: C, the channels of the masked tensor (dim 1).
        k: channels kept (the top-k of the logits).
        temperature: initial soft top-k temperature.
        learnable: logits as an ``nn.Parameter`` (else a fixed random buffer, the "annealed" runs).
        logit_group: ``(lr_factor, weight_decay)`` of the logits' own optimiser group, or None to
            let them follow their host's group (see ``param_group_override``).
        conv_path: module path, in the unmasked model, of the conv whose output channels this
            masks (set by ``attach_channel_masks``; ``channel_keep_masks`` is keyed by it).
        placement: ``"original"`` (before the conv's BN) or ``"after_bn"``.
    """

    def __init__(self, channels: int, k: int, temperature: float = 1.0, learnable: bool = True,
                 logit_group: Optional[Tuple[float, float]] = (1.0, 0.0), conv_path: str = "",
                 placement: str = "original"):
        super().__init__()
        if not 1 <= k <= channels:
            raise ValueError(f"ChannelMask({conv_path or '?'}): k={k} must be in [1, {channels}]")
        self.channels, self.k = int(channels), int(k)
        # k == C: the mask is all ones whatever the logits, which then get no gradient (DDP
        # without find_unused_parameters would wait for it), so they are a fixed buffer.
        self.learnable = bool(learnable) and self.k < self.channels
        self.logit_group = None if logit_group is None else (float(logit_group[0]),
                                                             float(logit_group[1]))
        self.conv_path, self.placement = conv_path, placement
        logits = torch.randn(self.channels)  # N(0, 1) as the original
        if self.learnable:
            self.weight = nn.Parameter(logits)
        else:
            self.register_buffer("weight", logits)
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    # ---- state -------------------------------------------------------------------------------
    @property
    def is_hard(self) -> bool:
        return "mask" in self._buffers

    def set_temperature(self, value: float) -> None:
        if self.is_hard:
            return
        self.temperature.fill_(float(value))

    def current_mask(self) -> torch.Tensor:
        """The mask (C,) this layer multiplies by now (float; differentiable when soft)."""
        if self.is_hard:
            return self.mask
        return soft_topk_mask(self.weight, self.k, self.temperature)

    def keep_mask(self) -> torch.Tensor:
        """Bool (C,): the channels kept (hard: the mask's ones; soft: the top-k of the logits,
        what ``to_hard`` would keep now)."""
        if self.is_hard:
            return self.mask > 0.5
        return hard_topk_mask(self.weight, self.k) > 0.5

    def to_hard(self, mask: Optional[torch.Tensor] = None) -> None:
        """Replace the logits by the fixed 0/1 ``mask`` (default: the top-k of the logits)."""
        if self.is_hard:
            return
        if mask is None:
            mask = hard_topk_mask(self.weight, self.k)
        mask = mask.detach().to(device=self.temperature.device, dtype=torch.float32).clone()
        if mask.shape != (self.channels,):
            raise ValueError(f"ChannelMask({self.conv_path}): a mask of shape {tuple(mask.shape)} "
                             f"for {self.channels} channels")
        if "weight" in self._parameters:
            del self._parameters["weight"]
        else:
            del self._buffers["weight"]
        del self._buffers["temperature"]
        self.register_buffer("mask", mask)
        self.k = int(mask.sum().item())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        saved_mask = state_dict.get(prefix + "mask")
        if saved_mask is not None and prefix + "weight" not in state_dict and not self.is_hard:
            if tuple(saved_mask.shape) == (self.channels,):
                self.to_hard(torch.zeros(self.channels))  # the values are copied just below
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if self.is_hard and saved_mask is not None and tuple(saved_mask.shape) == (self.channels,):
            self.k = int((self.mask > 0.5).sum().item())  # a released mask sets k (any sparsity)

    # ---- optimiser ---------------------------------------------------------------------------
    def param_group_override(self, name: str, base_lr: float) -> Optional[Tuple[float, float]]:
        """``(lr, weight_decay)`` of this layer's parameter ``name`` for ``build_optimizer``, or
        None for the usual rules (``LOGITS_FOLLOW_HOST``: the host's weight decay and lr factor,
        as in the original)."""
        if self.logit_group is None:
            return None
        lr_factor, weight_decay = self.logit_group
        return base_lr * lr_factor, weight_decay

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N x C x ... -> x * mask broadcast over every dim but C."""
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(f"ChannelMask({self.conv_path}): input of shape {tuple(x.shape)}, "
                             f"expected N x {self.channels} x ...")
        mask = self.current_mask().to(x.dtype)
        return x * mask.view((1, self.channels) + (1,) * (x.dim() - 2))

    def extra_repr(self) -> str:
        kind = "hard" if self.is_hard else f"soft, T={float(self.temperature):.4g}"
        return f"{self.conv_path or '?'}: keep {self.k}/{self.channels} ({kind}, {self.placement})"

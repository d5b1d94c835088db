"""The soft top-k channel mask of ACoSP and its temperature schedule (reference ``acosp.md`` 2.1-2.3).

For a layer with C output channels, logits ``w`` (C,) and a keep count k:

    z  = (w - mean(w)) / max(std(w), 1e-3)          (unbiased std, as torch's default)
    x0 = quantile(z, 1 - k / C)                     (linear interpolation, no gradient)
    m  = sigmoid((z - x0) / T)

so about k entries are above 1/2, and as T -> 0 the mask tends to the 0/1 top-k of ``w``. The
gradient reaches ``w`` through the sigmoid and the standardisation, never through ``x0``.
"""
import math
from typing import Union

import torch

__all__ = ["keep_count", "soft_topk_mask", "hard_topk_mask", "temperature_at",
           "temperature_at_iteration", "TEMPERATURE_SCHEDULES"]

TEMPERATURE_SCHEDULES = ("epoch", "iteration")


def keep_count(channels: int, sparsity: float, floor: int = 8) -> int:
    """Channels a layer of ``channels`` outputs keeps at ``sparsity``:
    ``max(ceil((1 - sparsity) * channels), floor)``, never more than ``channels``."""
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity={sparsity} must be in [0, 1) (MODEL.PRUNING.SPARSITY; "
                         "ACoSP-2/4/8/16 are 0.5/0.75/0.875/0.9375)")
    if channels < 1:
        raise ValueError(f"keep_count: channels={channels} must be positive")
    return min(int(channels), max(int(math.ceil((1.0 - float(sparsity)) * channels)), int(floor)))


def soft_topk_mask(logits: torch.Tensor, k: int, temperature: Union[float, torch.Tensor]
                   ) -> torch.Tensor:
    """The soft top-k mask (C,) of ``logits`` (C,) at ``temperature`` (a float or 0-d tensor).

    All ones when ``k >= C`` (nothing to choose)."""
    if logits.dim() != 1:
        raise ValueError(f"soft_topk_mask: logits must be 1-D (C,), got shape {tuple(logits.shape)}")
    channels = logits.numel()
    if k >= channels:
        return torch.ones_like(logits)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # quantile and the standardisation need the range
    z = (logits - logits.mean()) / logits.std().clamp_min(1e-3)
    threshold = torch.quantile(z.detach(), 1.0 - k / channels)
    return torch.sigmoid((z - threshold) / temperature)


def hard_topk_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The 0/1 float mask (C,) with ones at the ``k`` largest ``logits`` (exactly k: a tie is
    broken by ``torch.topk``, where the original's quantile comparison could keep more)."""
    if logits.dim() != 1:
        raise ValueError(f"hard_topk_mask: logits must be 1-D (C,), got shape {tuple(logits.shape)}")
    mask = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
    k = min(int(k), logits.numel())
    mask[torch.topk(logits.detach().float(), k).indices] = 1.0
    return mask


def temperature_at(epoch: float, start_epoch: float, end_epoch: float, initial: float = 1.0,
                   final: float = 1e-3) -> float:
    """``T(e)``: ``initial`` up to ``start_epoch``, then log-linear down to ``final`` at
    ``end_epoch`` and after: ``initial * (final / initial) ** min((e - e_s) / (e_e - e_s), 1)``.
    ``epoch`` may be fractional (the per-iteration schedule)."""
    if initial <= 0 or final <= 0:
        raise ValueError(f"temperatures must be positive: TEMPERATURE_START={initial}, "
                         f"TEMPERATURE_END={final}")
    if end_epoch < start_epoch:
        raise ValueError(f"MODEL.PRUNING.END_EPOCH={end_epoch} is before "
                         f"START_EPOCH={start_epoch}")
    if epoch <= start_epoch:
        return float(initial)
    if end_epoch == start_epoch:
        return float(final)
    progress = min((epoch - start_epoch) / (end_epoch - start_epoch), 1.0)
    return float(math.exp(math.log(initial) - progress * (math.log(initial) - math.log(final))))


def temperature_at_iteration(iteration: int, iters_per_epoch: int, start_epoch: float,
                             end_epoch: float, initial: float = 1.0, final: float = 1e-3,
                             schedule: str = "epoch") -> float:
    """The temperature iteration ``iteration`` trains with.

    ``"epoch"`` (the original): the schedule is stepped after each epoch with that epoch's index,
    so epoch ``E`` trains with ``T(E - 1)`` and epochs 0 and 1 both use ``initial``.
    ``"iteration"``: ``T(iteration / iters_per_epoch)``, a smooth decay.
    """
    if iters_per_epoch < 1:
        raise ValueError(f"MODEL.PRUNING.ITERS_PER_EPOCH={iters_per_epoch} must be >= 1")
    if schedule == "epoch":
        epoch = iteration // iters_per_epoch
        if epoch == 0:
            return float(initial)
        return temperature_at(epoch - 1, start_epoch, end_epoch, initial, final)
    if schedule == "iteration":
        return temperature_at(iteration / iters_per_epoch, start_epoch, end_epoch, initial, final)
    raise ValueError(f"MODEL.PRUNING.TEMPERATURE_SCHEDULE={schedule!r} must be one of "
                     f"{TEMPERATURE_SCHEDULES}")

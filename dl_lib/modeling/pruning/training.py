"""The pruning schedule during training: ``PruningHook`` and ``PruningTrainer``.

``PruningHook`` sets the soft masks' temperature before every step (``temperature_at_iteration``),
turns them into fixed 0/1 masks at the start of iteration ``END_EPOCH * ITERS_PER_EPOCH`` (then
training fine-tunes with fixed masks) and, with ``HARD_AT_END``, converts what is still soft
when training ends. Every ``period`` iterations it records in the ``EventStorage`` (so in
``metrics.json`` and TensorBoard), per masked conv ``pruning/<conv path>/{temperature, chosen,
pruned, undecided}`` and over all masks ``pruning/{temperature, chosen, pruned, undecided}``
(fractions of all masked channels).

A playground whose model has channel masks uses ``PruningTrainer`` (``Trainer = PruningTrainer``
in its ``net.py``), which puts the hook right after the LR scheduler, so the conversion at the
end precedes the final checkpoint and evaluation. The logits' optimiser group comes from
``ChannelMask.param_group_override`` through ``dl_lib.solver.build_optimizer``.

Under DDP the conversion removes the logits from the module; ``MODEL.DDP.FIND_UNUSED_PARAMETERS``
must then be True so DDP stops waiting for their gradients (checked before training).
"""
import logging
from typing import List

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dl_lib.engine import DefaultTrainer, hooks
from dl_lib.engine.train_loop import HookBase

from .pruner import channel_masks, pruning_statistics, set_temperature, to_hard_masks
from .soft_topk import TEMPERATURE_SCHEDULES, temperature_at_iteration

__all__ = ["PruningHook", "PruningTrainer"]

logger = logging.getLogger(__name__)


class PruningHook(HookBase):
    """Temperature schedule, soft -> hard conversion and mask metrics of ``model``'s masks.

    Args:
        model: the model (or its DDP wrapper) holding ``ChannelMask`` layers.
        iters_per_epoch: iterations of one epoch of the recipe.
        start_epoch, end_epoch: the temperature falls from ``start_epoch``; the masks become hard
            at the start of iteration ``end_epoch * iters_per_epoch``.
        initial, final: temperatures at the start and at the end.
        schedule: ``"epoch"`` (the original: one step per epoch, one epoch late) or ``"iteration"``.
        hard_at_end: convert the masks still soft after the last iteration.
        period: record the metrics every ``period`` iterations and at the last one.
    """

    def __init__(self, model: nn.Module, iters_per_epoch: int, start_epoch: float,
                 end_epoch: float, initial: float = 1.0, final: float = 1e-3,
                 schedule: str = "epoch", hard_at_end: bool = True, period: int = 20):
        if schedule not in TEMPERATURE_SCHEDULES:
            raise ValueError(f"MODEL.PRUNING.TEMPERATURE_SCHEDULE={schedule!r} must be one of "
                             f"{TEMPERATURE_SCHEDULES}")
        if iters_per_epoch < 1:
            raise ValueError(f"MODEL.PRUNING.ITERS_PER_EPOCH={iters_per_epoch} must be >= 1")
        self._model = model
        self.iters_per_epoch = int(iters_per_epoch)
        self.start_epoch, self.end_epoch = start_epoch, end_epoch
        self.initial, self.final = float(initial), float(final)
        self.schedule, self.hard_at_end, self.period = schedule, bool(hard_at_end), int(period)
        self.hard_iteration = int(round(end_epoch * self.iters_per_epoch))

    @classmethod
    def from_config(cls, cfg, model: nn.Module) -> "PruningHook":
        p = cfg.MODEL.PRUNING
        return cls(model, p.ITERS_PER_EPOCH, p.START_EPOCH, p.END_EPOCH, p.TEMPERATURE_START,
                   p.TEMPERATURE_END, p.TEMPERATURE_SCHEDULE, p.HARD_AT_END, cfg.LOG_PERIOD)

    def temperature(self, iteration: int) -> float:
        return temperature_at_iteration(iteration, self.iters_per_epoch, self.start_epoch,
                                        self.end_epoch, self.initial, self.final, self.schedule)

    def _has_soft(self) -> bool:
        return any(not m.is_hard for m in channel_masks(self._model).values())

    def before_train(self):
        if not channel_masks(self._model):
            raise ValueError("PruningHook: the model has no channel masks (MODEL.PRUNING.ENABLED "
                             "False, or the builder does not call pruning.prepare_model)")
        converts = self._has_soft() and (self.trainer.start_iter <= self.hard_iteration
                                         < self.trainer.max_iter or self.hard_at_end)
        ddp = self.trainer.model if isinstance(self.trainer.model, DistributedDataParallel) else None
        if converts and ddp is not None and not ddp.find_unused_parameters:
            raise ValueError(
                "Pruning under DDP: the soft masks become hard during this run, which removes "
                "their logits from the model; set MODEL.DDP.FIND_UNUSED_PARAMETERS True so DDP "
                "does not wait for their gradients.")

    def before_step(self):
        iteration = self.trainer.iter
        if iteration >= self.hard_iteration:
            if self._has_soft():
                count = to_hard_masks(self._model)
                logger.info(f"Iteration {iteration} (epoch {iteration // self.iters_per_epoch}): "
                            f"{count} soft channel masks fixed to their top-k; fine-tuning "
                            "with fixed masks from now on.")
            return
        set_temperature(self._model, self.temperature(iteration))

    def after_step(self):
        iteration = self.trainer.iter
        if (iteration + 1) % self.period == 0 or iteration == self.trainer.max_iter - 1:
            self.write_metrics()

    def after_train(self):
        if self.hard_at_end and self._has_soft():
            count = to_hard_masks(self._model)
            logger.info(f"End of training: {count} channel masks still soft, fixed to their "
                        "top-k (MODEL.PRUNING.HARD_AT_END).")

    def write_metrics(self) -> None:
        storage = self.trainer.storage
        stats = pruning_statistics(self._model)
        if not stats:
            return
        total = sum(s["channels"] for s in stats.values())
        summary = {key: sum(s[key] * s["channels"] for s in stats.values()) / total
                   for key in ("chosen", "pruned", "undecided")}
        temperatures = [s["temperature"] for s in stats.values() if "temperature" in s]
        if temperatures:
            summary["temperature"] = max(temperatures)
        for path, s in stats.items():
            for key in ("temperature", "chosen", "pruned", "undecided"):
                if key in s:
                    storage.put_scalar(f"pruning/{path}/{key}", s[key], smoothing_hint=False)
        for key, value in summary.items():
            storage.put_scalar(f"pruning/{key}", value, smoothing_hint=False)


class PruningTrainer(DefaultTrainer):
    """``DefaultTrainer`` with a ``PruningHook`` after the LR scheduler (when the model has
    channel masks)."""

    def build_hooks(self) -> List[HookBase]:
        ret = super().build_hooks()
        if channel_masks(self.model):
            at = next((i + 1 for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler)), 0)
            ret.insert(at, PruningHook.from_config(self.cfg, self.model))
        return ret

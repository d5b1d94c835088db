"""Hooks the default trainer registers, in this order (detectron2's):

``IterationTimer`` → ``LRScheduler`` → ``PreciseBN`` → ``PeriodicCheckpointer`` (main process)
→ ``EvalHook`` → ``PeriodicWriter`` (main process).

The timer comes first so the time it measures is the step alone; the writer comes last so it
sees the learning rate, the evaluation results and the timings of the same iteration.
"""
import datetime
import itertools
import logging
import numbers
import time
from typing import Callable, Iterable, List, Mapping, Optional

import torch

from dl_lib.utils import comm
from dl_lib.utils.events import EventWriter

from .train_loop import HookBase

__all__ = [
    "CallbackHook", "IterationTimer", "LRScheduler", "PeriodicCheckpointer", "EvalHook",
    "PreciseBN", "PeriodicWriter",
]

logger = logging.getLogger(__name__)


class CallbackHook(HookBase):
    """A hook made of plain functions, each taking the trainer."""

    def __init__(self, *, before_train=None, after_train=None, before_step=None, after_step=None):
        self._before_train, self._after_train = before_train, after_train
        self._before_step, self._after_step = before_step, after_step

    def before_train(self):
        if self._before_train:
            self._before_train(self.trainer)

    def after_train(self):
        if self._after_train:
            self._after_train(self.trainer)

    def before_step(self):
        if self._before_step:
            self._before_step(self.trainer)

    def after_step(self):
        if self._after_step:
            self._after_step(self.trainer)


class IterationTimer(HookBase):
    """Records the duration of each step as the scalar ``time`` and logs the total at the end.

    Register it first, so ``after_step`` of other hooks is not counted in the step time. The
    first ``warmup_iter`` steps (slow: allocator, cudnn autotuning) are left out of the average
    speed logged at the end.
    """

    def __init__(self, warmup_iter: int = 3):
        self._warmup_iter = warmup_iter
        self._step_start = None
        self._train_start = None
        self._total_step_time = 0.0
        self._num_timed = 0

    def before_train(self):
        self._train_start = time.perf_counter()
        self._total_step_time, self._num_timed = 0.0, 0

    def before_step(self):
        self._step_start = time.perf_counter()

    def after_step(self):
        seconds = time.perf_counter() - self._step_start
        if self.trainer.iter - self.trainer.start_iter >= self._warmup_iter:
            self._total_step_time += seconds
            self._num_timed += 1
        self.trainer.storage.put_scalars(time=seconds)

    def after_train(self):
        total = time.perf_counter() - self._train_start
        if self._num_timed > 0:
            logger.info(
                f"Overall training speed: {self._num_timed} iterations in "
                f"{datetime.timedelta(seconds=int(self._total_step_time))} "
                f"({self._total_step_time / self._num_timed:.4f} s / it)"
            )
        logger.info(f"Total training time: {datetime.timedelta(seconds=int(total))}")


class LRScheduler(HookBase):
    """Records the learning rate as ``lr`` and steps the scheduler once per iteration.

    Args:
        optimizer, scheduler: default to the trainer's ``optimizer`` / ``scheduler`` (read at
            every step, so a trainer that rebuilds its scheduler on resume is followed).
    """

    def __init__(self, optimizer=None, scheduler=None):
        self._optimizer = optimizer
        self._scheduler = scheduler

    @property
    def optimizer(self):
        return self._optimizer or self.trainer.optimizer

    @property
    def scheduler(self):
        return self._scheduler or self.trainer.scheduler

    @staticmethod
    def _reported_lr(optimizer) -> float:
        # With per-group LR factors (e.g. bias) report the LR of the largest group, which holds
        # the ordinary weights.
        group = max(optimizer.param_groups, key=lambda g: len(g["params"]))
        return group["lr"]

    def after_step(self):
        self.trainer.storage.put_scalar("lr", self._reported_lr(self.optimizer),
                                        smoothing_hint=False)
        self.scheduler.step()


class PeriodicCheckpointer(HookBase):
    """Saves ``model_{iter:07d}.pth`` every ``period`` iterations and ``model_final.pth`` at the
    end, keeping the last ``max_to_keep`` periodic files (None: all).

    Args:
        checkpointer: a ``dl_lib.checkpoint.Checkpointer``; each save stores ``iteration``.
    """

    def __init__(self, checkpointer, period: int, max_to_keep: Optional[int] = None,
                 file_prefix: str = "model"):
        self.checkpointer = checkpointer
        self.period = int(period)
        self.max_to_keep = max_to_keep
        self.file_prefix = file_prefix
        self._periodic = None

    def before_train(self):
        from dl_lib.checkpoint import PeriodicCheckpointer as _Periodic

        self._periodic = _Periodic(self.checkpointer, self.period, max_iter=self.trainer.max_iter,
                                   max_to_keep=self.max_to_keep, file_prefix=self.file_prefix)

    def after_step(self):
        # fvcore semantics: saves at (iter + 1) % period == 0 and model_final at max_iter - 1.
        self._periodic.step(self.trainer.iter)

    def after_train(self):
        # The final checkpoint is written by step() at max_iter - 1; nothing to do when training
        # stopped early (an exception), so a crash never produces a "final" model.
        pass


class EvalHook(HookBase):
    """Runs ``eval_function()`` every ``eval_period`` iterations and after the last one.

    ``eval_function`` returns a nested dict of numbers (e.g. ``{"sem_seg": {"mIoU": 71.2}}``)
    on the main process; it is flattened to ``sem_seg/mIoU`` and recorded in the storage. It
    must be called on every process (it contains collectives), which this hook does.
    """

    def __init__(self, eval_period: int, eval_function: Callable[[], Optional[Mapping]]):
        self._period = int(eval_period)
        self._func = eval_function
        self.last_results: Optional[Mapping] = None

    def _do_eval(self):
        results = self._func()
        if results and comm.is_main_process():
            flat = flatten_results_dict(results)
            for k, v in flat.items():
                # Per-class lists or file names are kept in the results JSON, not the metrics.
                if isinstance(v, numbers.Real) and not isinstance(v, bool):
                    self.trainer.storage.put_scalar(k, float(v), smoothing_hint=False)
        self.last_results = results
        # Evaluation can take very different times on different ranks; wait for all before the
        # next training step so the first collective of that step does not time out.
        comm.synchronize()

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0 and next_iter != self.trainer.max_iter:
            self._do_eval()

    def after_train(self):
        # Only after a completed run (not after an exception part-way).
        if self.trainer.iter >= self.trainer.max_iter:
            self._do_eval()
        # The function may hold references to the trainer and loaders; release them.
        del self._func


class PreciseBN(HookBase):
    """Recomputes BatchNorm running statistics over ``num_iter`` training batches (with the
    model's weights fixed) every ``period`` iterations and at the end, right before evaluation.

    The running statistics gathered during training mix batches seen with older weights;
    recomputing them with the final weights gives a better evaluation (fvcore's
    ``update_bn_stats``). Does nothing for models without BatchNorm in training mode.
    """

    def __init__(self, period: int, model: torch.nn.Module, data_loader: Iterable,
                 num_iter: int):
        self._period = int(period)
        self._model = model
        self._data_loader = data_loader
        self._num_iter = int(num_iter)
        self._data_iter = None
        self._disabled = len(_precise_bn().get_bn_modules(model)) == 0
        if self._disabled:
            logger.info("PreciseBN is disabled: the model has no BatchNorm layer in training mode.")

    def before_train(self):
        # After a resume, continue the loader where the updates before start_iter left it (each
        # took num_iter batches), so the statistics equal those of an uninterrupted run.
        done = self.trainer.start_iter // self._period if self._period > 0 else 0
        if done and self._data_iter is None:
            from dl_lib.data.build import seek_train_loader

            seek_train_loader(self._data_loader, done * self._num_iter)

    def after_step(self):
        next_iter = self.trainer.iter + 1
        is_final = next_iter == self.trainer.max_iter
        if is_final or (self._period > 0 and next_iter % self._period == 0):
            self.update_stats()

    def update_stats(self):
        if self._disabled:
            return
        if self._data_iter is None:
            self._data_iter = iter(self._data_loader)

        def data_loader():
            for num_iter in itertools.count(1):
                if num_iter % 100 == 0:
                    logger.info(f"Running precise-BN ... {num_iter}/{self._num_iter} iterations.")
                yield next(self._data_iter)

        # Statistics of the network as it runs at inference: a model with a training schedule
        # (drop path) is set to progress 0 meanwhile, as DynamicRouting's precise BN ran it.
        # The trainer sets the progress again before the next step.
        set_progress = getattr(getattr(self._model, "module", self._model),
                               "set_training_progress", None)
        if set_progress is not None:
            set_progress(0, self.trainer.max_iter)
        with torch.no_grad():  # update_bn_stats discards the outputs (losses in training mode)
            logger.info(f"Running precise-BN for {self._num_iter} iterations ...")
            _precise_bn().update_bn_stats(self._model, data_loader(), self._num_iter)


class PeriodicWriter(HookBase):
    """Calls each writer every ``period`` iterations, at the last iteration and after training."""

    def __init__(self, writers: List[EventWriter], period: int = 20):
        for w in writers:
            assert isinstance(w, EventWriter), w
        self._writers = writers
        self._period = int(period)

    def after_step(self):
        if (self.trainer.iter + 1) % self._period == 0 or self.trainer.iter == self.trainer.max_iter - 1:
            for w in self._writers:
                w.write()

    def after_train(self):
        for w in self._writers:
            # Metrics recorded after the last step (final evaluation) are written here.
            w.write()
            w.close()


def _precise_bn():
    """fvcore.nn.precise_bn, imported on use: importing fvcore.nn scripts functions with
    torch.jit, which warns on current torch and slows every start-up."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import precise_bn
    return precise_bn


def flatten_results_dict(results: Mapping, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` → ``{"a/b": 1}``."""
    out = {}
    for k, v in results.items():
        if isinstance(v, Mapping):
            out.update(flatten_results_dict(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out

"""The iteration loop with hooks, and the plain single-optimizer training step.

``TrainerBase`` owns the loop (``train(start_iter, max_iter)``) and calls the hooks around each
``run_step``. ``SimpleTrainer`` implements the step for the usual case: one data loader, one
optimizer, a model that returns a dict of losses; optional mixed precision and gradient clipping.
For anything else (several optimizers, GAN-style steps), subclass ``TrainerBase`` and write
``run_step`` yourself. ``dl_lib.engine.DefaultTrainer`` builds all of this from a config.
"""
import logging
import time
import weakref
from typing import Dict, List, Mapping, Optional

import torch

from dl_lib.utils import comm
from dl_lib.utils.events import EventStorage, get_event_storage
from dl_lib.utils.rng import derive_seed, seed_global_rngs

__all__ = ["HookBase", "TrainerBase", "SimpleTrainer", "StorageCheckpointable"]

logger = logging.getLogger(__name__)


class HookBase:
    """Code run by the trainer around each iteration.

    Order of calls::

        hook.before_train()
        for iter in range(start_iter, max_iter):
            hook.before_step(); trainer.run_step(); hook.after_step()
        hook.after_train()

    ``self.trainer`` is set by ``TrainerBase.register_hooks`` (a weak proxy, so hooks that keep
    a reference to the trainer do not create a cycle).
    """

    trainer: "TrainerBase" = None

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_step(self):
        pass

    def after_backward(self):
        """Called after ``loss.backward()`` and before the optimizer step."""

    def after_step(self):
        pass

    def state_dict(self) -> dict:
        """State saved with the trainer's checkpoint (empty for stateless hooks)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class TrainerBase:
    """An iteration loop with hooks.

    Attributes:
        iter: the current iteration (the last one that ran, after ``train``).
        start_iter: the first iteration of this run (``resume_or_load`` may change it).
        max_iter: training stops before this iteration.
        storage: the ``EventStorage`` of this run.
        iteration_seed: when not None, every iteration starts by seeding Python, NumPy and
            torch with ``derive_seed(iteration_seed, rank, iter)``, so the randomness of an
            iteration (dropout, random routing) is the same after a resume as without one.
    """

    def __init__(self) -> None:
        self._hooks: List[HookBase] = []
        self.iter: int = 0
        self.start_iter: int = 0
        self.max_iter: int = 0
        self.storage: Optional[EventStorage] = None
        self.iteration_seed: Optional[int] = None
        self._storage_state: Optional[dict] = None  # restored into the next run's storage

    def register_hooks(self, hooks: List[Optional[HookBase]]) -> None:
        """Add hooks (``None`` entries are skipped); they run in the given order."""
        hooks = [h for h in hooks if h is not None]
        for h in hooks:
            assert isinstance(h, HookBase), f"{h!r} is not a HookBase"
            h.trainer = weakref.proxy(self)
        self._hooks.extend(hooks)

    def train(self, start_iter: int, max_iter: int) -> None:
        """Run iterations ``start_iter .. max_iter - 1`` with the hooks."""
        logger.info(f"Starting training from iteration {start_iter} (max_iter={max_iter})")
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        with EventStorage(start_iter) as self.storage:
            if self._storage_state:  # the metric histories of the checkpoint resumed from
                self.storage.load_state_dict(self._storage_state)
                self._storage_state = None
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                # The loop leaves ``iter`` at the last finished iteration; the hooks'
                # after_train (final eval, final checkpoint) expect iter == max_iter.
                self.iter = max(max_iter, start_iter)
            except Exception:
                logger.exception(f"Exception during training at iteration {self.iter}:")
                raise
            finally:
                self.after_train()

    def before_train(self) -> None:
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        # Writers and hooks read the storage's iteration, so keep it in sync before anything.
        self.storage.iter = self.iter
        if self.iteration_seed is not None:
            seed_global_rngs(derive_seed(self.iteration_seed, comm.get_rank(), self.iter))
        for h in self._hooks:
            h.before_step()

    def after_backward(self) -> None:
        for h in self._hooks:
            h.after_backward()

    def after_step(self) -> None:
        for h in self._hooks:
            h.after_step()

    def run_step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        ret = {"iteration": self.iter}
        hooks_state = {}
        for h in self._hooks:
            sd = h.state_dict()
            if sd:
                hooks_state[type(h).__qualname__] = sd
        if hooks_state:
            ret["hooks"] = hooks_state
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        self.iter = state_dict["iteration"]
        for key, value in state_dict.get("hooks", {}).items():
            for h in self._hooks:
                if type(h).__qualname__ == key:
                    h.load_state_dict(value)
                    break
            else:
                logger.warning(f"No hook of type {key} to restore its state into.")


class StorageCheckpointable:
    """The trainer's metric histories as a checkpointable (``Checkpointer(..., storage=this)``):
    saved from the live ``EventStorage``, restored into the storage of the next ``train()``,
    so smoothed values (medians over the last iterations) continue exactly after a resume."""

    def __init__(self, trainer: TrainerBase):
        self._trainer = weakref.proxy(trainer)

    def state_dict(self) -> dict:
        storage = self._trainer.storage
        return storage.state_dict() if storage is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._trainer._storage_state = state


_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class SimpleTrainer(TrainerBase):
    """One step = next batch → ``model(batch)`` → sum of losses → backward → optimizer step.

    Args:
        model: in training mode returns a dict; keys starting with ``loss`` are scalar tensors
            summed into the loss, the others (e.g. ``real_flops``) are numbers (Python or tensors,
            averaged if not 0-d) that are only logged.
        data_loader: an iterable of batches (lists of dicts); iterated forever.
        optimizer: a ``torch.optim.Optimizer`` over the model's parameters.
        grad_clip: clip the total L2 norm of all gradients to this value (0 disables).
        amp: run forward in ``torch.autocast`` of ``amp_dtype`` ("float16" uses a GradScaler;
            "bfloat16" does not need one).

    A loss that is NaN or infinite stops training with ``FloatingPointError`` naming the
    iteration and every loss term, before the weights are touched.
    """

    def __init__(self, model: torch.nn.Module, data_loader, optimizer: torch.optim.Optimizer,
                 grad_clip: float = 0.0, amp: bool = False, amp_dtype: str = "float16"):
        super().__init__()
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter_obj = None
        self.optimizer = optimizer
        self.grad_clip = float(grad_clip)
        self.amp = bool(amp)
        if amp_dtype not in _AMP_DTYPES:
            raise ValueError(f"SOLVER.AMP.DTYPE must be one of {sorted(_AMP_DTYPES)}, got {amp_dtype!r}")
        self.amp_dtype = _AMP_DTYPES[amp_dtype]
        self.device_type = _device_type(model)
        # A GradScaler is needed for float16 only (its range is too small for small gradients).
        self.grad_scaler = None
        if self.amp and self.amp_dtype == torch.float16:
            self.grad_scaler = torch.amp.GradScaler(self.device_type)

    @property
    def _data_loader_iter(self):
        # Created on first use so building a trainer does not start loader workers.
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def run_step(self) -> None:
        assert self.model.training, "SimpleTrainer: the model was switched to eval mode"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        # Models whose training depends on progress (drop-path schedules, a budget loss that
        # starts part-way) define set_training_progress(iteration, max_iter).
        set_progress = getattr(getattr(self.model, "module", self.model), "set_training_progress", None)
        if set_progress is not None:
            set_progress(self.iter, self.max_iter)
        with torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"loss": loss_dict}
        if not isinstance(loss_dict, Mapping):
            raise TypeError(
                "In training mode the model must return a dict of scalar losses, got "
                f"{type(loss_dict).__name__}."
            )
        loss_terms = _loss_terms(loss_dict)
        losses = sum(v.float() for v in loss_terms.values())
        self._check_finite(losses, loss_terms)

        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        self.after_backward()
        if self.grad_clip > 0:
            if self.grad_scaler is not None:
                self.grad_scaler.unscale_(self.optimizer)  # clip the true gradients
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

        self._write_metrics(loss_dict, data_time)

    def _check_finite(self, total: torch.Tensor, loss_terms: Dict[str, torch.Tensor]) -> None:
        if torch.isfinite(total).all():
            return
        values = ", ".join(f"{k}={float(v.detach()):.6g}" for k, v in loss_terms.items())
        raise FloatingPointError(
            f"Loss became infinite or NaN at iteration {self.iter}: {values}. Common causes: "
            "a learning rate that is too high (lower SOLVER.OPTIMIZER.BASE_LR or add warm-up), "
            "labels outside [0, NUM_CLASSES) that are not the ignore value, or float16 overflow "
            "(SOLVER.AMP.DTYPE bfloat16)."
        )

    def _write_metrics(self, loss_dict: Mapping[str, torch.Tensor], data_time: float,
                       prefix: str = "") -> None:
        """Average the scalars over processes and record them on the main process."""
        metrics = {k: _scalar_value(k, v) for k, v in loss_dict.items()}
        metrics["data_time"] = data_time
        # Gather (on the Gloo group) rather than all-reduce: the dicts may differ between ranks.
        all_metrics = comm.gather(metrics)
        if not comm.is_main_process():
            return
        storage = get_event_storage()
        # The slowest process sets the pace, so report the maximum data time.
        storage.put_scalar("data_time", max(m.pop("data_time") for m in all_metrics))
        keys = set().union(*[m.keys() for m in all_metrics])
        averaged = {k: sum(m[k] for m in all_metrics if k in m) /
                    sum(1 for m in all_metrics if k in m) for k in keys}
        total = sum(v for k, v in averaged.items() if k.startswith("loss"))
        storage.put_scalar(prefix + "total_loss", total)
        storage.put_scalars(**{prefix + k: v for k, v in averaged.items()})

    def state_dict(self) -> dict:
        ret = super().state_dict()
        ret["optimizer"] = self.optimizer.state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.optimizer.load_state_dict(state_dict["optimizer"])
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def _loss_terms(loss_dict: Mapping) -> Dict[str, torch.Tensor]:
    """The entries of a training output that are summed into the loss (keys starting with
    ``loss``); each must be a floating-point tensor, since it is back-propagated."""
    loss_terms = {k: v for k, v in loss_dict.items() if k.startswith("loss")}
    if not loss_terms:
        raise ValueError(f"The model returned no loss terms (keys starting with 'loss'): "
                         f"{sorted(loss_dict)}")
    for k, v in loss_terms.items():
        if not (torch.is_tensor(v) and v.is_floating_point()):
            what = f"tensor of dtype {v.dtype}" if torch.is_tensor(v) else type(v).__name__
            raise TypeError(
                f"The model's training output {k!r} is a {what}; keys starting with 'loss' are "
                "summed and back-propagated, so they must be floating-point tensors. Rename it "
                "(e.g. without the 'loss' prefix) if it is only meant to be logged.")
    return loss_terms


def _scalar_value(key: str, value) -> float:
    """A logged value of the training output as a float: a Python number, or a tensor's mean."""
    if torch.is_tensor(value):
        return float(value.detach().float().mean())
    try:  # int, float, bool, numpy scalars; a string is not a number even when it reads as one
        if not isinstance(value, (str, bytes)):
            return float(value)
    except (TypeError, ValueError):
        pass
    raise TypeError(
        f"The model's training output {key!r} is a {type(value).__name__} ({value!r:.60}); "
        "values other than losses are logged as scalars, so they must be numbers or tensors.")


def _device_type(model: torch.nn.Module) -> str:
    for p in model.parameters():
        return p.device.type
    return "cpu"

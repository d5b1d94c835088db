"""Checkpointer: atomic saves, resume vs. weights-only initialisation, released-checkpoint loading.

Built on ``fvcore.common.checkpoint.Checkpointer``; what this adds:

- **Atomic writes.** A checkpoint (and the ``last_checkpoint`` pointer) is written to a temporary
  file in the same folder, flushed and fsync'ed, then moved over the final name with
  ``os.replace``. A job killed mid-save leaves the previous checkpoint and pointer intact.
- **Resume vs. init.** ``resume_or_load(path, resume=True)`` restores everything (model,
  optimizer, scheduler, every checkpointable, ``iteration``) from ``save_dir/last_checkpoint``
  when that exists; otherwise it loads ``path`` (``MODEL.WEIGHTS``) as model weights only and
  returns ``{}``, so a weights file that happens to hold an iteration or an optimizer never
  restarts training mid-schedule. It logs which of the two happened.
- **Released checkpoints.** A bare state dict (no ``"model"`` key) or a ``{"state_dict": ...}``
  file is accepted; ``module.`` / ``_orig_mod.`` prefixes are stripped when every key has them;
  converters registered for the model's class (``dl_lib.checkpoint.converters``) rename foreign
  layouts; shape mismatches are dropped with a warning naming both shapes; missing and
  unexpected keys are logged as a table.
- **Strict loading.** ``load(path, strict=True)`` (``dl_test`` / ``--eval-only`` unless
  ``MODEL.WEIGHTS_STRICT False``) raises ``IncompatibleCheckpointError`` naming the file and the
  first missing or shape-mismatched keys before anything is copied into the model: evaluating a
  half-random network is never what was meant. Unexpected keys are only logged.
- **Architecture.** A model may define ``architecture() -> {"MODEL.X.Y": value}``, the config
  values that describe its shape (channel counts of a pruned model, a chosen branch); ``save``
  stores it under ``"architecture"``, and ``dl_lib.checkpoint.apply_checkpoint_architecture``
  merges it into the config before the model is built (see ``architecture.py``).
- **``weights_only``** (fvcore calls ``torch.load`` without it). The constructor argument
  chooses the policy:
    * ``None`` (default): load with ``weights_only=True``; if that refuses the file *and* the
      file lies in this checkpointer's ``save_dir`` (a file we wrote: a resume), load it again
      with ``weights_only=False`` and log a note. Any other file that needs full unpickling is
      an error that names the blocked globals.
    * ``True``: never unpickle arbitrary objects.
    * ``False``: always full unpickling; only for files from sources you trust.
  Our own checkpoints hold only tensors and plain Python values, so they normally load with
  ``weights_only=True``; the fallback covers checkpointables that store other objects.
"""
import logging
import os
import pickle
import re
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from fvcore.common.checkpoint import Checkpointer as _FvCheckpointer
from fvcore.common.checkpoint import PeriodicCheckpointer as _FvPeriodicCheckpointer
from fvcore.common.checkpoint import (
    _filter_reused_missing_keys,
    _group_checkpoint_keys,
    _group_to_str,
    _IncompatibleKeys,
    _strip_prefix_if_present,
)
from tabulate import tabulate
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from dl_lib.utils import comm

from .architecture import ARCHITECTURE_KEY, architecture_of
from .converters import find_converter

__all__ = ["Checkpointer", "PeriodicCheckpointer", "IncompatibleCheckpointError"]

_POINTER = "last_checkpoint"


def _unwrap_model(model: nn.Module) -> nn.Module:
    """The module whose state dict is saved: without DDP/DataParallel or torch.compile wrappers."""
    while True:
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(getattr(model, "_orig_mod"), nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


class IncompatibleCheckpointError(ValueError):
    """A strict load found model tensors that the checkpoint lacks or holds with another shape."""


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, (torch.Tensor, np.ndarray)) for k, v in obj.items())


class Checkpointer(_FvCheckpointer):
    """Save and load a model plus any objects with ``state_dict``/``load_state_dict``.

    Args:
        model: the model; DDP / DataParallel / torch.compile wrappers are removed.
        save_dir: folder for checkpoints and the ``last_checkpoint`` pointer ("" or None: saving
            is disabled and there is never a checkpoint to resume from).
        save_to_disk: whether :meth:`save` writes; default: only on the main process.
        weights_only: ``torch.load`` policy, see the module docstring (None: safe, with a
            fallback for this checkpointer's own files).
        checkpointables: e.g. ``optimizer=..., scheduler=...``; restored on resume only.

    Typical use: ``Checkpointer(model).load(path)`` for evaluation, and
    ``Checkpointer(model, out_dir, optimizer=opt, scheduler=sched).resume_or_load(cfg.MODEL.WEIGHTS,
    resume=args.resume)`` for training (start at ``returned.get("iteration", -1) + 1``).
    """

    def __init__(self, model: nn.Module, save_dir: Optional[str] = "", *,
                 save_to_disk: Optional[bool] = None, weights_only: Optional[bool] = None,
                 **checkpointables: Any) -> None:
        if save_to_disk is None:
            save_to_disk = comm.is_main_process()
        super().__init__(_unwrap_model(model), save_dir or "", save_to_disk=save_to_disk,
                         **checkpointables)
        self.weights_only = weights_only
        # fvcore logs under "fvcore..."; ours propagates to the "dl_lib" logger set up per rank.
        self.logger = logging.getLogger(__name__)

    # ------------------------------------------------------------------------------- saving
    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``save_dir/<name>.pth`` atomically and point ``last_checkpoint`` at it.

        The file holds ``{"model": state_dict, <checkpointable>: state_dict, **kwargs}``, and
        ``"architecture"`` when the model defines ``architecture()``; pass ``iteration=...`` in
        ``kwargs`` for resumable checkpoints.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        architecture = architecture_of(self.model)
        if architecture is not None:
            data[ARCHITECTURE_KEY] = architecture
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)

        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"Checkpoint name {name!r} must not contain a path separator")
        self.path_manager.mkdirs(self.save_dir)
        self.logger.info(f"Saving checkpoint to {save_file}")
        self._atomic_write(save_file, "wb", lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomically point ``save_dir/last_checkpoint`` at ``last_filename_basename``."""
        self._atomic_write(os.path.join(self.save_dir, _POINTER), "w",
                           lambda f: f.write(last_filename_basename))

    def _atomic_write(self, path: str, mode: str, write) -> None:
        """Write with ``write(file)`` to a temporary sibling of ``path``, fsync, then rename.

        The rename is atomic on local file systems (``os.replace``); for other iopath backends it
        falls back to ``PathManager.mv``. The temporary file is removed on any failure.
        """
        folder, base = os.path.split(path)
        tmp = os.path.join(folder, f".{base}.tmp.{os.getpid()}")
        try:
            with self.path_manager.open(tmp, mode) as f:
                write(f)
                f.flush()
                try:
                    os.fsync(f.fileno())
                except (AttributeError, OSError, ValueError):
                    pass  # not a local file: nothing to fsync
            if "://" in path:
                self.path_manager.mv(tmp, path)
            else:
                os.replace(tmp, path)
                _fsync_dir(folder)
        except BaseException:
            try:
                if self.path_manager.exists(tmp):
                    self.path_manager.rm(tmp)
            except Exception:  # keep the original error
                pass
            raise

    # ------------------------------------------------------------------------------ loading
    def has_checkpoint(self) -> bool:
        """Whether ``save_dir/last_checkpoint`` exists (never true without a ``save_dir``)."""
        return bool(self.save_dir) and super().has_checkpoint()

    def load(self, path: str, checkpointables: Optional[List[str]] = None, *,
             strict: bool = False) -> Dict[str, Any]:
        """Load the model from ``path`` and the named checkpointables (None: all of them).

        Args:
            path: a local path or iopath URI of one of our checkpoints, a bare state dict, or a
                ``{"state_dict": ...}`` file. "" loads nothing.
            checkpointables: names to restore; ``[]`` loads the model only.
            strict: every tensor of the model must be in the file with the model's shape
                (``num_batches_tracked`` counters excepted); checked before anything is loaded.
        Returns:
            The remaining entries of the checkpoint (e.g. ``iteration``, ``architecture``);
            ``{}`` for bare files.
        Raises:
            FileNotFoundError: ``path`` does not exist.
            IncompatibleCheckpointError: ``strict`` and a tensor is missing or has another shape.
        """
        if not path:
            self.logger.info("No checkpoint given: the model keeps its initialisation")
            return {}
        names = list(self.checkpointables) if checkpointables is None else list(checkpointables)
        unknown = [n for n in names if n not in self.checkpointables]
        if unknown:
            raise KeyError(f"Checkpointables {unknown} were not given to this Checkpointer; "
                           f"known: {list(self.checkpointables)}")

        local = self._local_path(path)
        self.logger.info(f"Loading checkpoint from {path}")
        checkpoint = self._as_checkpoint(self._load_file(local), path)
        self._warn_if_other_architecture(checkpoint.get(ARCHITECTURE_KEY), path)
        if strict:
            self._check_complete(checkpoint["model"], path)
        self._log_incompatible_keys(self._load_model(checkpoint))

        # LR schedulers last: loading an optimizer restores its old LRs, and the scheduler then
        # sets the LR of the restored iteration under the (possibly new) schedule.
        names.sort(key=lambda n: isinstance(self.checkpointables[n],
                                            torch.optim.lr_scheduler.LRScheduler))
        for key in names:
            if key in checkpoint:
                self.logger.info(f"Loading {key} from {path}")
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
            else:
                self.logger.warning(f"Checkpoint {path} has no {key!r}; it keeps its fresh state")
        return checkpoint

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Resume from ``save_dir/last_checkpoint`` if ``resume`` and it exists, else init weights.

        Returns:
            On resume, the checkpoint's extra data (``"iteration"``: the last finished
            iteration). Otherwise ``{}``: ``path`` (``MODEL.WEIGHTS``) is loaded as model weights
            only; optimizer, scheduler and iteration start fresh.
        """
        if resume and self.has_checkpoint():
            last = self.get_checkpoint_file()
            data = self.load(last)
            restored = ", ".join(["model"] + list(self.checkpointables))
            self.logger.info(f"Resumed from {last} ({restored}); last finished iteration: "
                             f"{data.get('iteration', 'not recorded')}")
            return data
        if resume:
            self.logger.info(f"No checkpoint to resume from in {self.save_dir or '(no save_dir)'}")
        if path:
            self.load(path, checkpointables=[])
            self.logger.info(f"Initialised model weights from {path} (weights only: optimizer, "
                             "scheduler and iteration start fresh)")
        else:
            self.logger.info("No MODEL.WEIGHTS given: training starts from the model's own "
                             "initialisation")
        return {}

    def _local_path(self, path: str) -> str:
        if os.path.isfile(path):
            return path
        try:
            local = self.path_manager.get_local_path(path)
        except Exception:  # unknown scheme or a download error: report the path itself
            local = None
        if not local or not os.path.isfile(local):
            raise FileNotFoundError(
                f"Checkpoint not found: {path!r}. Check MODEL.WEIGHTS (or the path given to "
                "Checkpointer.load), and for a resume, the file named in "
                f"{os.path.join(self.save_dir, _POINTER) if self.save_dir else _POINTER}.")
        return local

    def _is_own_file(self, f: str) -> bool:
        return bool(self.save_dir) and os.path.isdir(self.save_dir) and os.path.samefile(
            os.path.dirname(os.path.abspath(f)), self.save_dir)

    def _load_file(self, f: str) -> Any:
        """``torch.load`` on CPU under this checkpointer's ``weights_only`` policy."""
        if self.weights_only is False:
            return torch.load(f, map_location="cpu", weights_only=False)
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            try:
                blocked = torch.serialization.get_unsafe_globals_in_checkpoint(f)
            except Exception:
                blocked = ["(unknown: not a zip-format torch file)"]
            if self.weights_only is None and self._is_own_file(f):
                self.logger.info(
                    f"{f} holds objects beyond tensors and plain values ({', '.join(blocked)}); "
                    "it was written by this checkpointer in its save_dir, so it is trusted and "
                    "loaded with weights_only=False")
                return torch.load(f, map_location="cpu", weights_only=False)
            raise pickle.UnpicklingError(
                f"torch.load(weights_only=True) refused {f}: it needs the globals "
                f"{blocked}. If you trust the file's source, load it with "
                "Checkpointer(..., weights_only=False).") from e

    def _as_checkpoint(self, obj: Any, path: str) -> Dict[str, Any]:
        """Normalise a loaded file to ``{"model": state_dict, ...}`` and apply converters."""
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            checkpoint = obj
        elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            self.logger.info(f"{path}: using its 'state_dict' entry as the model weights")
            checkpoint = {"model": obj["state_dict"]}
        elif _is_state_dict(obj):
            self.logger.info(f"{path}: a bare state dict; loading it as the model weights")
            checkpoint = {"model": obj}
        else:
            top = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{path}: not a checkpoint this library can read (expected a dict "
                             f"with 'model' or 'state_dict', or a state dict); found {top}")
        # Strip wrapper prefixes first, so converters see the layout the model was saved with.
        self._strip_wrapper_prefixes(checkpoint["model"])
        converter = find_converter(checkpoint["model"].keys(), self.model)
        if converter is not None:
            self.logger.info(f"{path}: converting parameter names with converter "
                             f"{converter.name!r}")
            checkpoint["model"] = converter.convert(checkpoint["model"])
        return checkpoint

    def _strip_wrapper_prefixes(self, state_dict: Dict[str, Any]) -> None:
        """A file saved from a DDP-wrapped and/or compiled model: strip the wrappers' prefixes."""
        for prefix in ("module.", "_orig_mod."):
            if state_dict and all(k.startswith(prefix) for k in state_dict):
                self.logger.info(f"Stripping the {prefix!r} prefix from the checkpoint's keys")
                _strip_prefix_if_present(state_dict, prefix)

    def _check_complete(self, state_dict: Dict[str, Any], path: str, show: int = 8) -> None:
        """Raise ``IncompatibleCheckpointError`` when a model tensor is missing from
        ``state_dict`` or has another shape there (``num_batches_tracked`` excepted)."""
        model_sd = self.model.state_dict()
        missing = [k for k in model_sd if k not in state_dict
                   and not k.endswith("num_batches_tracked")]
        kept = set(_filter_reused_missing_keys(self.model, missing))  # tied weights load once
        missing = [k for k in missing if k in kept]
        mismatched = [f"{k}: {tuple(state_dict[k].shape)} in the file, {tuple(v.shape)} in the "
                      "model" for k, v in model_sd.items()
                      if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
        if not missing and not mismatched:
            return
        parts = [f"Checkpoint {path} does not fit the model {type(self.model).__name__} "
                 f"({len(model_sd)} tensors): {len(missing)} missing, {len(mismatched)} with "
                 "another shape."]
        if missing:
            parts.append(f"First missing: {', '.join(missing[:show])}.")
        if mismatched:
            parts.append(f"First shape mismatches: {'; '.join(mismatched[:show])}.")
        parts.append("Check MODEL.WEIGHTS and that the config builds the network the file was "
                     "saved from (a pruned or other-width model stores its 'architecture'; "
                     "older files may not). To load what fits anyway, set "
                     "MODEL.WEIGHTS_STRICT False.")
        raise IncompatibleCheckpointError(" ".join(parts))

    def _warn_if_other_architecture(self, stored: Optional[Dict[str, Any]], path: str) -> None:
        """Name the architecture entries where the file and the model differ."""
        current = architecture_of(self.model)
        if not stored or current is None:
            return
        diff = {k: (v, current.get(k)) for k, v in stored.items() if current.get(k) != v}
        if diff:
            self.logger.warning(
                f"{path} was saved from another architecture than this model's: "
                + ", ".join(f"{k}={a!r} in the file, {b!r} here" for k, (a, b) in diff.items())
                + ". Build the model with dl_lib.playground.build (it applies the file's "
                "architecture) or merge it with apply_checkpoint_architecture(cfg).")

    def _log_incompatible_keys(self, incompatible: _IncompatibleKeys) -> None:
        """Warn per shape mismatch (both shapes), then one table of everything not loaded."""
        rows = []
        for key, shape_ckpt, shape_model in incompatible.incorrect_shapes:
            self.logger.warning(f"Skip loading '{key}': shape {tuple(shape_ckpt)} in the "
                                f"checkpoint but {tuple(shape_model)} in the model")
            rows.append((key, "shape mismatch (kept as initialised)", tuple(shape_ckpt),
                         tuple(shape_model)))
        missing = _filter_reused_missing_keys(self.model, incompatible.missing_keys)
        for head, tails in sorted(_group_checkpoint_keys(missing).items()):
            rows.append((head + _group_to_str(tails), "missing in checkpoint (kept as "
                         "initialised)", "", ""))
        for head, tails in sorted(_group_checkpoint_keys(incompatible.unexpected_keys).items()):
            rows.append((head + _group_to_str(tails), "unexpected (ignored)", "", ""))
        if rows:
            table = tabulate(rows, headers=["key", "status", "checkpoint shape", "model shape"],
                             tablefmt="pipe")
            self.logger.warning("Model weights not loaded one-to-one from the checkpoint:\n"
                                + table)


def _fsync_dir(folder: str) -> None:
    """Persist a rename: fsync the folder entry (POSIX only; a no-op elsewhere)."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class PeriodicCheckpointer(_FvPeriodicCheckpointer):
    """fvcore's periodic checkpointer: ``<prefix>_<iter:07d>.pth`` every ``period`` iterations,
    ``<prefix>_final.pth`` at ``max_iter - 1``, keeping the ``max_to_keep`` latest periodic files.

    Differences: files from before a resume count towards ``max_to_keep`` (fvcore only counts
    files written by this process), and ``step`` is a no-op where the checkpointer does not write
    (non-main ranks), so those never delete files.
    """

    def __init__(self, checkpointer: Checkpointer, period: int, max_iter: Optional[int] = None,
                 max_to_keep: Optional[int] = None, file_prefix: str = "model") -> None:
        if period <= 0:
            raise ValueError(f"Checkpoint period must be positive, got {period} "
                             "(SOLVER.CHECKPOINT_PERIOD)")
        super().__init__(checkpointer, period, max_iter=max_iter, max_to_keep=max_to_keep,
                         file_prefix=file_prefix)
        self.recent_checkpoints = self._existing_periodic_files()

    def _writes(self) -> bool:
        return bool(self.checkpointer.save_dir) and self.checkpointer.save_to_disk

    def _existing_periodic_files(self) -> List[str]:
        folder = self.checkpointer.save_dir
        if self.max_to_keep is None or not self._writes() or not self.path_manager.exists(folder):
            return []
        pattern = re.compile(re.escape(self.file_prefix) + r"_\d{7}\.pth")
        names = sorted(n for n in self.path_manager.ls(folder) if pattern.fullmatch(n))
        return [os.path.join(folder, n) for n in names]

    def step(self, iteration: int, **kwargs: Any) -> None:
        """Save when ``iteration + 1`` is a multiple of ``period`` or ``iteration >= max_iter - 1``
        (the latter as ``<prefix>_final.pth``)."""
        if not self._writes():
            return
        name = os.path.join(self.checkpointer.save_dir,
                            f"{self.file_prefix}_{int(iteration):07d}.pth")
        if name in self.recent_checkpoints:
            # Re-saving a file kept from before a resume: count it once, or fvcore would later
            # delete the fresh file as its own old copy.
            self.recent_checkpoints.remove(name)
        super().step(iteration, **kwargs)

"""Checkpointer: atomic saves, resume vs. weights-only initialisation, released-checkpoint loading.

Built on ``fvcore.common.checkpoint.Checkpointer``; what this adds:

- **Atomic writes.** A checkpoint (and the ``last_checkpoint`` pointer) is written to a temporary
  file in the same folder, flushed and fsync'ed, then moved over the final name with
  ``os.replace``. A job killed mid-save leaves the previous checkpoint and pointer intact.
  A resume whose pointer names a missing or truncated file falls back to the newest complete
  checkpoint of the folder, with a warning (``resume_candidates``).
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
import zipfile
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
from .file_check import CheckpointReadError, check_torch_file, unreadable_checkpoint_error

__all__ = ["Checkpointer", "PeriodicCheckpointer", "IncompatibleCheckpointError",
           "CheckpointReadError", "MIN_INIT_MATCHED_FRACTION", "resume_candidates",
           "readable_resume_checkpoint"]

_POINTER = "last_checkpoint"

# MODEL.WEIGHTS that initialise a training run must match at least this share of the model's
# tensors by name and shape (the rule of MODEL.PRETRAINED for the backbone): a file in another
# layout (a torchvision classifier, another family's model) matches ~0 and would train a random
# network; fine-tuning with another head or class count still matches most tensors.
MIN_INIT_MATCHED_FRACTION = 0.5


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
        self.resumed_file: Optional[str] = None  # the file the last resume_or_load resumed from
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
        """Whether ``save_dir`` holds something to resume from: a ``last_checkpoint`` pointer,
        or ``*.pth`` files without one (never true without a ``save_dir``)."""
        return bool(self.save_dir) and (super().has_checkpoint()
                                         or bool(resume_candidates(self.save_dir)))

    def load(self, path: str, checkpointables: Optional[List[str]] = None, *,
             strict: bool = False, min_matched: float = 0.0) -> Dict[str, Any]:
        """Load the model from ``path`` and the named checkpointables (None: all of them).

        Args:
            path: a local path or iopath URI of one of our checkpoints, a bare state dict, or a
                ``{"state_dict": ...}`` file. "" loads nothing.
            checkpointables: names to restore; ``[]`` loads the model only.
            strict: every tensor of the model must be in the file with the model's shape
                (``num_batches_tracked`` counters excepted); checked before anything is loaded.
            min_matched: the share of the model's tensors (``num_batches_tracked`` excepted)
                that must be in the file with the model's shape; checked before loading
                (``resume_or_load`` uses ``MIN_INIT_MATCHED_FRACTION`` for MODEL.WEIGHTS).
        Returns:
            The remaining entries of the checkpoint (e.g. ``iteration``, ``architecture``);
            ``{}`` for bare files.
        Raises:
            FileNotFoundError: ``path`` does not exist.
            IncompatibleCheckpointError: ``strict`` and a tensor is missing or has another
                shape, or less than ``min_matched`` of the model matched.
            CheckpointReadError: the file is not a torch checkpoint, or is truncated.
        """
        if not path:
            self.logger.info("No checkpoint given: the model keeps its initialisation")
            return {}
        names = list(self.checkpointables) if checkpointables is None else list(checkpointables)
        unknown = [n for n in names if n not in self.checkpointables]
        if unknown:
            raise KeyError(f"Checkpointables {unknown} were not given to this Checkpointer; "
                           f"known: {list(self.checkpointables)}")

        checkpoint = self._read_checkpoint(path)
        self._warn_if_other_architecture(checkpoint.get(ARCHITECTURE_KEY), path)
        if strict:
            self._check_complete(checkpoint["model"], path)
        if min_matched > 0:
            self._check_enough_matched(checkpoint["model"], path, min_matched)
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
        self.resumed_file = None
        if resume and self.has_checkpoint():
            last = self._newest_complete_checkpoint()
            data = self.load(last)
            self.resumed_file = last
            restored = ", ".join(["model"] + list(self.checkpointables))
            self.logger.info(f"Resumed from {last} ({restored}); last finished iteration: "
                             f"{data.get('iteration', 'not recorded')}")
            return data
        if resume:
            self.logger.info(f"No checkpoint to resume from in {self.save_dir or '(no save_dir)'}")
        if path:
            self.load(path, checkpointables=[], min_matched=MIN_INIT_MATCHED_FRACTION)
            self.logger.info(f"Initialised model weights from {path} (weights only: optimizer, "
                             "scheduler and iteration start fresh)")
        else:
            self.logger.info("No MODEL.WEIGHTS given: training starts from the model's own "
                             "initialisation")
        return {}

    def _read_checkpoint(self, path: str) -> Dict[str, Any]:
        """The file at ``path`` as ``{"model": state_dict, ...}`` (read ahead by a resume's
        search for a complete checkpoint: then not read twice)."""
        ahead = getattr(self, "_read_ahead", None)
        self._read_ahead = None
        if ahead is not None and ahead[0] == path:
            return ahead[1]
        local = self._local_path(path)
        self.logger.info(f"Loading checkpoint from {path}")
        return self._as_checkpoint(self._load_file(local), path)

    def _newest_complete_checkpoint(self) -> str:
        """The checkpoint a resume uses: the file ``last_checkpoint`` names when it reads; when
        it is missing or truncated, the newest other readable checkpoint of ``save_dir`` that
        records an ``iteration`` (saying so). Raises ``CheckpointReadError`` when none reads."""
        candidates = resume_candidates(self.save_dir)
        has_pointer = os.path.isfile(os.path.join(self.save_dir, _POINTER))
        pointed, problems = (candidates[0] if has_pointer else None), []
        for path in candidates:
            try:
                checkpoint = self._read_checkpoint(path)
            except (FileNotFoundError, CheckpointReadError) as e:  # missing or truncated
                problems.append(f"{path}: {e}")
                self.logger.warning(f"Cannot resume from {path}: {e}")
                continue
            except Exception as e:  # e.g. refused by weights_only: the pointed file's error stands
                if path == pointed:
                    raise
                problems.append(f"{path}: {e}")
                self.logger.warning(f"Cannot resume from {path}: {e}")
                continue
            if path != pointed and "iteration" not in checkpoint:
                continue  # a weights file placed in the folder, not a resumable checkpoint
            if path != pointed:
                why = (f"{os.path.join(self.save_dir, _POINTER)} names {os.path.basename(pointed)}, "
                       "which cannot be read" if pointed else
                       f"{self.save_dir} has no {_POINTER} file")
                self.logger.warning(
                    f"{why}; resuming from the newest complete checkpoint, {path} (iteration "
                    f"{checkpoint['iteration']}), instead.")
            self._read_ahead = (path, checkpoint)
            return path
        found = ("; ".join(problems) if problems else
                 "its .pth files record no 'iteration': weights files, not training checkpoints")
        raise CheckpointReadError(
            f"--resume: no checkpoint in {self.save_dir} can be resumed ({found}). Remove the "
            "damaged files and resume again, or start a new run without --resume.")

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
        """``torch.load`` on CPU under this checkpointer's ``weights_only`` policy.

        Raises ``CheckpointReadError`` naming ``f`` for a file that is not a torch checkpoint
        (text, empty, random bytes: said before torch.load could suggest weights_only=False) or
        one torch cannot read (truncated, corrupted)."""
        check_torch_file(f)
        try:
            return self._torch_load(f)
        except (pickle.UnpicklingError, CheckpointReadError):
            raise  # a torch file that needs unsafe globals: that message names them
        except Exception as e:  # zip / EOF / decoding errors of torch.load, none naming the file
            raise unreadable_checkpoint_error(f, e) from e

    def _torch_load(self, f: str) -> Any:
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
                f"{blocked}. A whole pickled model (torch.save(model)) is best re-saved as "
                "torch.save(model.state_dict(), path); if you trust the file's source, "
                "Checkpointer(..., weights_only=False) loads it as it is.") from e

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
            raise CheckpointReadError(
                f"{path}: a torch file, but not a checkpoint this library can read (expected a "
                f"dict with 'model' or 'state_dict', or a state dict); found {top}. Check "
                "MODEL.WEIGHTS; a file of torch.save(model) or of other objects: re-save it as "
                "torch.save(model.state_dict(), path).")
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

    def _check_enough_matched(self, state_dict: Dict[str, Any], path: str, min_matched: float,
                              show: int = 5) -> None:
        """Raise ``IncompatibleCheckpointError`` when fewer than ``min_matched`` of the model's
        tensors are in ``state_dict`` with the model's shape."""
        model_sd = {k: v for k, v in self.model.state_dict().items()
                    if not k.endswith("num_batches_tracked")}
        matched = [k for k, v in model_sd.items() if k in state_dict
                   and tuple(getattr(state_dict[k], "shape", ())) == tuple(v.shape)]
        if len(matched) >= min_matched * len(model_sd):
            return
        unmatched = [k for k in model_sd if k not in set(matched)]
        raise IncompatibleCheckpointError(
            f"Checkpoint {path} matches {len(matched)} of the {len(model_sd)} tensors of the model "
            f"{type(self.model).__name__} by name and shape (at least "
            f"{min_matched:.0%} must, or a mostly random network would be trained). First model "
            f"keys not matched: {', '.join(unmatched[:show])}; first keys in the file: "
            f"{', '.join(list(state_dict)[:show])}. A backbone's ImageNet file (e.g. torchvision's "
            "resnet18) goes in MODEL.PRETRAINED, which converts its layout; MODEL.WEIGHTS is a "
            "whole model of this config (one of our checkpoints, or a released one whose layout "
            "a registered converter maps, see dl_lib.checkpoint.register_converter).")

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


def resume_candidates(save_dir: str) -> List[str]:
    """The checkpoints a resume in ``save_dir`` may use, in order of preference: the file that
    ``save_dir/last_checkpoint`` names (which may be missing), then the other ``*.pth`` files
    of the folder, newest first (by modification time; atomic saves finish with a rename).
    Without a pointer (deleted, or a copied folder) only the ``*.pth`` files, newest first."""
    if not save_dir:
        return []
    pointer = os.path.join(save_dir, _POINTER)
    pointed = None
    if os.path.isfile(pointer):
        with open(pointer) as f:
            pointed = os.path.join(save_dir, f.read().strip())
    others = []
    if os.path.isdir(save_dir):
        for entry in os.scandir(save_dir):
            if (entry.name.endswith(".pth") and not entry.name.startswith(".")
                    and entry.is_file() and entry.path != pointed):
                others.append((entry.stat().st_mtime_ns, entry.name, entry.path))
    return ([pointed] if pointed else []) + [p for _, _, p in sorted(others, reverse=True)]


def readable_resume_checkpoint(save_dir: str) -> str:
    """The first of :func:`resume_candidates` that looks complete (a readable zip directory,
    which a truncated torch file lacks), or "" when none does. A cheap check, for what must be
    known before the model is built (its stored architecture); the resume itself reads fully."""
    for path in resume_candidates(save_dir):
        if os.path.isfile(path) and zipfile.is_zipfile(path):
            return path
    return ""


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

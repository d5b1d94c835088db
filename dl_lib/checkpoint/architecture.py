"""Architecture descriptions stored in checkpoints, merged into the config before building.

A model whose shape is not fully given by the playground's config (a physically pruned network
with fewer channels, a chosen branch) defines::

    def architecture(self) -> dict:
        return {"MODEL.SEM_SEG_HEAD.CONVS_DIM": self.head.convs_dim}

``Checkpointer.save`` stores that dict under ``"architecture"``. Before the model is built,
``apply_checkpoint_architecture(cfg)`` reads it from ``MODEL.WEIGHTS`` and merges it into the
config (checked like any override, each change logged), so ``dl_test MODEL.WEIGHTS compressed.pth``
(and ``dl_flops``, ``dl_lib.playground.build``) rebuild the smaller network, which then loads
strictly. Keys are full config keys; values are plain Python values (numbers, strings, bools and
lists of them), so the file still loads with ``torch.load(weights_only=True)``.
"""
import logging
import os
import pickle
from typing import Any, Dict, Optional, Tuple

import torch
from iopath.common.file_io import g_pathmgr
from torch import nn

from dl_lib.config import CfgNode, merge_opts

from .file_check import check_torch_file, unreadable_checkpoint_error

__all__ = ["ARCHITECTURE_KEY", "architecture_of", "architecture_overrides",
           "apply_checkpoint_architecture"]

logger = logging.getLogger(__name__)

ARCHITECTURE_KEY = "architecture"
_PLAIN = (bool, int, float, str, type(None))


def _check(arch: Any, source: str) -> Dict[str, Any]:
    if not isinstance(arch, dict):
        raise TypeError(f"{source}: the architecture must be a dict of config key -> value, got "
                        f"{type(arch).__name__}")

    def plain(v):
        return isinstance(v, _PLAIN) or (isinstance(v, (list, tuple)) and all(plain(x) for x in v))

    for key, value in arch.items():
        if not isinstance(key, str) or "." not in key:
            raise TypeError(f"{source}: architecture keys are full config keys like "
                            f"'MODEL.SEM_SEG_HEAD.CONVS_DIM', got {key!r}")
        if not plain(value):
            raise TypeError(f"{source}: architecture value of {key} must be a number, string, "
                            f"bool or a list of them, got {type(value).__name__}")
    return dict(arch)


def architecture_of(model: nn.Module) -> Optional[Dict[str, Any]]:
    """``model.architecture()`` checked (see the module docstring), or None without that method."""
    method = getattr(model, "architecture", None)
    if not callable(method):
        return None
    return _check(method(), f"{type(model).__name__}.architecture()")


def _local_file(path: str) -> str:
    if os.path.isfile(path):
        return path
    try:
        local = g_pathmgr.get_local_path(path)
    except Exception:  # unknown scheme or a download error: report the path itself
        local = None
    if not local or not os.path.isfile(local):
        raise FileNotFoundError(f"Checkpoint not found: {path!r} (MODEL.WEIGHTS); its "
                                "architecture cannot be read.")
    return local


def architecture_overrides(path: str) -> Dict[str, Any]:
    """The ``"architecture"`` entry of the checkpoint at ``path`` (``{}`` when it has none).

    Raises FileNotFoundError when ``path`` does not exist. A file that ``weights_only=True``
    refuses gives ``{}`` with a warning (the weights loader decides whether to trust it).
    """
    local = _local_file(path)
    check_torch_file(local, path)  # a text / empty / random file: one message naming it
    try:
        # mmap: only the small pickled dict is read here, not every tensor.
        obj = torch.load(local, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        logger.warning(f"{path}: torch.load(weights_only=True) refused the file, so its "
                       "architecture (if any) was not read.")
        return {}
    except RuntimeError:  # not a zip-format file: mmap is not possible
        try:
            obj = torch.load(local, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            return {}  # as above: the weights loader decides
        except Exception as e:  # truncated or corrupted: name the file
            raise unreadable_checkpoint_error(local, e, path) from e
    except Exception as e:  # EOF / decoding errors of a truncated or corrupted file
        raise unreadable_checkpoint_error(local, e, path) from e
    arch = obj.get(ARCHITECTURE_KEY) if isinstance(obj, dict) else None
    return _check(arch, path) if arch else {}


def _get(cfg: CfgNode, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return None  # merge_opts raises the error naming the key and its closest matches
        node = node[part]
    return node


def apply_checkpoint_architecture(cfg: CfgNode, path: Optional[str] = None
                                  ) -> Dict[str, Tuple[Any, Any]]:
    """Merge the architecture stored in ``path`` (default ``cfg.MODEL.WEIGHTS``) into ``cfg``.

    Call before building the model. Returns ``{key: (old, new)}`` for the values it changed
    (each logged); ``{}`` when there is no path, no stored architecture, or nothing differs.
    Raises ``ConfigError`` for a stored key the config does not have (e.g. a family whose
    ``add_<family>_config`` was not applied) and FileNotFoundError for a missing file.
    """
    path = cfg.MODEL.WEIGHTS if path is None else path
    if not path or path.lower() == "none":  # MODEL.WEIGHTS none: random initialisation on purpose
        return {}
    overrides = architecture_overrides(path)
    before = {k: _get(cfg, k) for k in overrides}
    frozen = cfg.is_frozen()
    cfg.defrost()
    try:
        merge_opts(cfg, [x for kv in overrides.items() for x in kv],
                   source=f"the architecture stored in {path}")
    finally:
        if frozen:
            cfg.freeze()
    changes = {k: (before[k], _get(cfg, k)) for k in overrides if before[k] != _get(cfg, k)}
    if changes:
        # A warning: it is printed even before default_setup has set up logging, and it
        # changes the network the user's config describes.
        logger.warning(f"Config changed to the architecture stored in {path}: "
                       + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    return changes

"""Load a playground folder: ``playground/<Group>/<Name>/{config.py, net.py}``.

``config.py`` defines ``config`` (a CfgNode, usually ``config_from_delta(dict(...))``);
``net.py`` defines ``build_model(cfg)`` and may define ``Trainer`` (a ``DefaultTrainer``
subclass overriding a few builders). Both are imported with ``importlib`` under module names
unique to the folder (``dl_playground.<Group>_<Name>_<hash>.{config,net}``), so several
playgrounds can be loaded in one process::

    from dl_lib import playground
    cfg, model = playground.build("playground/Baseline/FPN.R18", ["MODEL.DEVICE", "cpu"])

Each file is executed once per process (cached by its resolved real path), however it is reached
(``dl_train``, ``dl_test``, ``dl_flops``, ``build``): a ``net.py`` that registers a class with
``@META_ARCH_REGISTRY.register()`` must not run twice, or the registry refuses the second
registration. Every ``load_config`` still returns a fresh clone of ``config``. Their loggers
(``logging.getLogger(__name__)``) are children of the ``dl_playground`` logger, which
``default_setup`` sends to ``OUTPUT_DIR/log.txt``. An edited file takes effect in a new process.

When ``OUTPUT_DIR`` is empty it becomes ``$DL_OUTPUT_ROOT/<Group>/<Name>``.
"""
import hashlib
import importlib.util
import os
import re
import sys
import threading
from types import ModuleType
from typing import Dict, Optional, Sequence, Tuple

import torch

from dl_lib.checkpoint import apply_checkpoint_architecture
from dl_lib.config import CfgNode, merge_opts
from dl_lib.config.checks import check_config_values, check_device_available
from dl_lib.utils.env import output_root

__all__ = ["PlaygroundError", "find_playground", "load_config", "load_net", "build_model", "build",
           "default_output_dir", "LOGGER_NAME"]

_REQUIRED = ("config.py", "net.py")

# Root package (and logger) of every playground module: ``dl_playground.<Group>_<Name>_<hash>``.
LOGGER_NAME = "dl_playground"

# Resolved real path of a config.py / net.py -> its module, executed once per process.
_LOADED: Dict[str, ModuleType] = {}
_LOAD_LOCK = threading.RLock()  # loader threads may build a playground concurrently


class PlaygroundError(FileNotFoundError):
    """The folder is not a playground, or its config.py / net.py lack what they must define."""


def find_playground(path: Optional[str] = None) -> str:
    """Absolute path of the playground folder ``path`` (default: the current folder).

    Raises ``PlaygroundError`` naming the missing files when it is not a playground.
    """
    folder = os.path.abspath(os.path.expanduser(path or os.getcwd()))
    if not os.path.isdir(folder):
        raise PlaygroundError(f"Playground folder {folder} does not exist.")
    missing = [f for f in _REQUIRED if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise PlaygroundError(
            f"{folder} is not a playground folder: {' and '.join(missing)} missing. Run inside "
            "playground/<Group>/<Name>/ (a folder holding config.py, which defines `config`, and "
            "net.py, which defines `build_model(cfg)`), or pass --playground <folder>."
        )
    return folder


def default_output_dir(folder: str) -> str:
    """``$DL_OUTPUT_ROOT/<Group>/<Name>`` for ``.../<Group>/<Name>``."""
    folder = os.path.abspath(folder)
    name = os.path.basename(folder)
    group = os.path.basename(os.path.dirname(folder))
    return os.path.join(output_root(), group, name)


def _module_name(folder: str, stem: str) -> str:
    # Group/Name keep log lines readable; the hash of the full path makes the name unique.
    digest = hashlib.sha1(folder.encode()).hexdigest()[:10]
    readable = re.sub(r"\W", "_", "_".join(folder.split(os.sep)[-2:]))
    return f"{LOGGER_NAME}.{readable}_{digest}.{stem}"


def _ensure_package(name: str, path: Sequence[str]) -> None:
    # Package entries let pickle (spawned processes, loader workers) find classes defined in
    # net.py by their module name, and make ``dl_playground`` the parent of their loggers.
    if name not in sys.modules:
        pkg = ModuleType(name)
        pkg.__path__ = list(path)
        sys.modules[name] = pkg


def _import_file(folder: str, filename: str) -> ModuleType:
    """The module of ``folder/filename``, executed on the first call of this process only.

    Keyed by the file's resolved real path, so ``.``, a relative path and a symlink share one
    module. A file whose execution raised is not cached (the next call runs it again).
    """
    path = os.path.realpath(os.path.join(folder, filename))
    with _LOAD_LOCK:
        module = _LOADED.get(path)
        if module is not None:
            return module
        name = _module_name(os.path.dirname(path), filename[:-3])
        _ensure_package(LOGGER_NAME, [])
        _ensure_package(name.rsplit(".", 1)[0], [os.path.dirname(path)])
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        _LOADED[path] = module
        return module


def load_config(path: Optional[str] = None, opts: Optional[Sequence[str]] = None) -> CfgNode:
    """The playground's ``config`` (a copy) with ``KEY VALUE`` ``opts`` merged and
    ``OUTPUT_DIR`` filled in when empty. ``config.py`` runs once per process; every call
    returns a fresh clone, so callers may change theirs freely."""
    folder = find_playground(path)
    module = _import_file(folder, "config.py")
    cfg = getattr(module, "config", None)
    if not isinstance(cfg, CfgNode):
        raise PlaygroundError(
            f"{os.path.join(folder, 'config.py')} must define `config`, a CfgNode built with "
            "dl_lib.config.config_from_delta(dict(...)); "
            + ("it defines no `config`." if cfg is None else f"got {type(cfg).__name__}.")
        )
    cfg = cfg.clone()
    cfg.defrost()
    merge_opts(cfg, opts, source=f"overrides for {folder}")
    if not cfg.OUTPUT_DIR:
        cfg.OUTPUT_DIR = default_output_dir(folder)
    check_config_values(cfg, folder)  # values that pass the type check but make no sense
    return cfg


def load_net(path: Optional[str] = None) -> ModuleType:
    """The playground's ``net`` module (it defines ``build_model(cfg)``)."""
    folder = find_playground(path)
    module = _import_file(folder, "net.py")
    if not callable(getattr(module, "build_model", None)):
        raise PlaygroundError(f"{os.path.join(folder, 'net.py')} must define build_model(cfg) "
                              "returning the model.")
    return module


def build_model(path: Optional[str], cfg: CfgNode) -> torch.nn.Module:
    """``build_model(cfg)`` of the playground's ``net.py``, checked and moved to
    ``cfg.MODEL.DEVICE``. ``dl_train`` calls it after ``default_setup``, so what ``net.py``
    logs while it is imported and while it builds reaches ``OUTPUT_DIR/log.txt``."""
    check_device_available(cfg)  # one line "set MODEL.DEVICE cpu", not CUDA's traceback
    model = load_net(path).build_model(cfg)
    if not isinstance(model, torch.nn.Module):
        raise PlaygroundError(f"build_model(cfg) in {find_playground(path)}/net.py returned "
                              f"{type(model).__name__}, not a torch.nn.Module.")
    return model.to(torch.device(cfg.MODEL.DEVICE))


def build(path: Optional[str] = None, opts: Optional[Sequence[str]] = None
          ) -> Tuple[CfgNode, torch.nn.Module]:
    """``(cfg, model)`` of the playground at ``path``: the config with ``opts`` merged, and
    ``build_model(cfg)`` moved to ``cfg.MODEL.DEVICE``."""
    cfg = load_config(path, opts)
    apply_checkpoint_architecture(cfg)  # MODEL.WEIGHTS of a pruned model: rebuild its shape
    return cfg, build_model(path, cfg)

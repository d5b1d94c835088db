"""Load a playground folder: ``playground/<Group>/<Name>/{config.py, net.py}``.

``config.py`` defines ``config`` (a CfgNode, usually ``config_from_delta(dict(...))``);
``net.py`` defines ``build_model(cfg)`` and may define ``Trainer`` (a ``DefaultTrainer``
subclass overriding a few builders). Both are imported with ``importlib`` under module names
unique to the folder, so several playgrounds can be loaded in one process::

    from dl_lib import playground
    cfg, model = playground.build("playground/Baseline/PSPNet_R50", ["MODEL.DEVICE", "cpu"])

When ``OUTPUT_DIR`` is empty it becomes ``$DL_OUTPUT_ROOT/<Group>/<Name>``.
"""
import hashlib
import importlib.util
import os
import re
import sys
from types import ModuleType
from typing import Optional, Sequence, Tuple

import torch

from dl_lib.config import CfgNode, merge_opts
from dl_lib.utils.env import output_root

__all__ = ["PlaygroundError", "find_playground", "load_config", "load_net", "build",
           "default_output_dir"]

_REQUIRED = ("config.py", "net.py")


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
    return f"dl_playground_{readable}_{digest}.{stem}"


def _import_file(folder: str, filename: str) -> ModuleType:
    path = os.path.join(folder, filename)
    name = _module_name(folder, filename[:-3])
    # A parent package entry lets pickle (spawned processes, loader workers) find classes
    # defined in net.py by their module name.
    parent = name.rsplit(".", 1)[0]
    if parent not in sys.modules:
        pkg = ModuleType(parent)
        pkg.__path__ = [folder]
        sys.modules[parent] = pkg
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module


def load_config(path: Optional[str] = None, opts: Optional[Sequence[str]] = None) -> CfgNode:
    """The playground's ``config`` (a copy) with ``KEY VALUE`` ``opts`` merged and
    ``OUTPUT_DIR`` filled in when empty. Re-reads ``config.py`` on every call."""
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
    return cfg


def load_net(path: Optional[str] = None) -> ModuleType:
    """The playground's ``net`` module (it defines ``build_model(cfg)``)."""
    folder = find_playground(path)
    module = _import_file(folder, "net.py")
    if not callable(getattr(module, "build_model", None)):
        raise PlaygroundError(f"{os.path.join(folder, 'net.py')} must define build_model(cfg) "
                              "returning the model.")
    return module


def build(path: Optional[str] = None, opts: Optional[Sequence[str]] = None
          ) -> Tuple[CfgNode, torch.nn.Module]:
    """``(cfg, model)`` of the playground at ``path``: the config with ``opts`` merged, and
    ``build_model(cfg)`` moved to ``cfg.MODEL.DEVICE``."""
    cfg = load_config(path, opts)
    model = load_net(path).build_model(cfg)
    if not isinstance(model, torch.nn.Module):
        raise PlaygroundError(f"build_model(cfg) in {find_playground(path)}/net.py returned "
                              f"{type(model).__name__}, not a torch.nn.Module.")
    return cfg, model.to(torch.device(cfg.MODEL.DEVICE))

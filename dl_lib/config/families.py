"""Config keys of method families, added by ``add_<family>_config(cfg)`` (detectron2 projects' style).

The library defaults (``defaults.py``) hold only the core keys. A method family keeps its own keys
with its code, in ``dl_lib/modeling/<family>/config.py``::

    from dl_lib.config import CfgNode, register_family_config

    @register_family_config("dynamic_routing")
    def add_dynamic_routing_config(cfg: CfgNode) -> None:
        cfg.MODEL.GATE = CfgNode()
        cfg.MODEL.GATE.GATE_INIT_BIAS = 1.5   # why the key exists, in one line

and a playground names the family it builds on::

    config = config_from_delta(dict(MODEL=dict(GATE=dict(GATE_INIT_BIAS=1.0))),
                               family="dynamic_routing")

A name that is not registered yet is looked up by importing ``dl_lib.modeling.<name>.config``
(which registers it, or defines ``add_<name>_config``). The names applied are recorded in the
top-level key ``FAMILIES``, so a dumped ``config.yaml`` re-loads with the same keys and
``KEY VALUE`` overrides of family keys are checked like core keys.
"""
import functools
import importlib
import os
import pkgutil
import re
import threading
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

from .defaults import CfgNode

__all__ = ["register_family_config", "get_family_config", "registered_families",
           "add_family_configs", "FAMILY_PACKAGE"]

# Families without a registered function are looked for as <FAMILY_PACKAGE>.<name>.config.
FAMILY_PACKAGE = "dl_lib.modeling"

FamilyConfigFn = Callable[[CfgNode], None]
_FAMILY_CONFIGS: Dict[str, FamilyConfigFn] = {}
_LOCK = threading.RLock()
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _family_error(message: str) -> Exception:
    from .config import ConfigError  # config.py imports this module

    return ConfigError(message)


def register_family_config(name: str) -> Callable[[FamilyConfigFn], FamilyConfigFn]:
    """Decorator: ``fn(cfg)`` adds the keys of family ``name`` to ``cfg`` in place.

    ``fn`` creates new keys (``cfg.MODEL.GATE = CfgNode()`` ...); it runs once per config, the
    first time ``name`` is applied to it. The decorated function may also be called directly
    (detectron2's ``add_<family>_config(cfg)``): it then records ``name`` in ``cfg.FAMILIES`` and
    does nothing on a config that already has the family. Registering another function under a
    taken name is an error (two families would silently share keys)."""
    if not _NAME.match(name):
        raise ValueError(f"Family name {name!r} must be a Python identifier (it names the package "
                         f"{FAMILY_PACKAGE}.<name>).")

    def wrap(fn: FamilyConfigFn) -> Callable[[CfgNode], CfgNode]:
        with _LOCK:
            old = _FAMILY_CONFIGS.get(name)
            same = old is not None and (old.__module__, old.__qualname__) == (fn.__module__, fn.__qualname__)
            if old is not None and not same:
                raise ValueError(
                    f"Family config {name!r} is already registered by {old.__module__}."
                    f"{old.__qualname__}; {fn.__module__}.{fn.__qualname__} needs another name.")
            _FAMILY_CONFIGS[name] = fn

        @functools.wraps(fn)
        def add_once(cfg: CfgNode) -> CfgNode:
            return add_family_configs(cfg, name)

        return add_once

    return wrap


def _discoverable_families() -> List[str]:
    """Names of ``FAMILY_PACKAGE`` sub-packages that hold a ``config.py``."""
    try:
        package = importlib.import_module(FAMILY_PACKAGE)
    except ImportError:
        return []
    return [info.name for info in pkgutil.iter_modules(getattr(package, "__path__", []))
            if info.ispkg and os.path.isfile(os.path.join(info.module_finder.path, info.name, "config.py"))]


def registered_families() -> List[str]:
    """Family names that can be applied: registered ones and ``<FAMILY_PACKAGE>.<name>.config``."""
    with _LOCK:
        return sorted(set(_FAMILY_CONFIGS) | set(_discoverable_families()))


def get_family_config(name: str) -> FamilyConfigFn:
    """The ``add_<name>_config`` function of family ``name``.

    Imports ``<FAMILY_PACKAGE>.<name>.config`` when ``name`` is not registered yet; an unknown
    name is a ConfigError listing the families there are."""
    with _LOCK:
        if name in _FAMILY_CONFIGS:
            return _FAMILY_CONFIGS[name]
        module_name = f"{FAMILY_PACKAGE}.{name}.config"
        module = None
        if _NAME.match(name):
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as e:
                # Only "no such family" is caught; a family module that fails to import is a bug there.
                if e.name not in (module_name, f"{FAMILY_PACKAGE}.{name}"):
                    raise
        if module is not None and name not in _FAMILY_CONFIGS:
            fn = getattr(module, f"add_{name}_config", None)
            if callable(fn):
                _FAMILY_CONFIGS[name] = fn
        if name in _FAMILY_CONFIGS:
            return _FAMILY_CONFIGS[name]
        known = ", ".join(registered_families()) or "none yet"
        where = (f"{module_name} defines neither @register_family_config({name!r}) nor "
                 f"add_{name}_config(cfg)" if module is not None else f"there is no {module_name}")
        raise _family_error(
            f"Unknown method family {name!r}: {where}. Registered families: {known}. A family adds "
            f"its keys with add_<family>_config(cfg) in {FAMILY_PACKAGE.replace('.', '/')}/<family>/"
            "config.py, decorated with @dl_lib.config.register_family_config('<family>').")


def add_family_configs(cfg: CfgNode, families: Union[None, str, Iterable[str]]) -> CfgNode:
    """Apply the config functions of ``families`` (a name or names) not yet in ``cfg.FAMILIES``,
    in order, and append their names to ``cfg.FAMILIES``. Returns ``cfg`` (changed in place)."""
    for name in _as_names(families):
        if name in cfg.FAMILIES:
            continue
        get_family_config(name)(cfg)
        # Re-read: a family's function may itself apply another family, which records its name.
        if name not in cfg.FAMILIES:
            cfg.FAMILIES = list(cfg.FAMILIES) + [name]
    return cfg


def _as_names(families: Union[None, str, Iterable[str]]) -> List[str]:
    if families is None:
        return []
    if isinstance(families, str):
        return [families]
    names = list(families)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise _family_error(f"Family names must be strings, got {bad!r} in {names!r}.")
    return names


def _check_families_kept(old: Sequence[str], new: Optional[Sequence[str]], source: str) -> None:
    """A FAMILIES value may add names, never drop one whose keys the config already holds."""
    new = list(new or [])
    dropped = [n for n in old if n not in new]
    if dropped:
        keep = list(old) + [n for n in new if n not in old]
        raise _family_error(
            f"FAMILIES {new!r} (from {source}) drops {dropped}, whose keys this config already "
            f"holds (FAMILIES {list(old)!r}); list every family, e.g. {keep!r}.")

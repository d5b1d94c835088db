"""Config deltas and command-line overrides, checked against the library defaults.

A playground ``config.py`` writes::

    from dl_lib.config import config_from_delta
    config = config_from_delta(dict(MODEL=dict(WEIGHTS="..."), SOLVER=dict(IMS_PER_BATCH=16)))

or, building on a method family's keys (see ``dl_lib.config.families``)::

    config = config_from_delta(dict(MODEL=dict(GATE=dict(GATE_INIT_BIAS=1.0))), family="dynamic_routing")

An unknown key, or a value of the wrong type, stops with a ``ConfigError`` that names the full
key and the closest valid keys (family keys included).
"""
import ast
import difflib
from typing import Any, Iterable, List, Mapping, Optional, Union

import yaml

from .defaults import CfgNode, get_default_cfg
from .families import _check_families_kept, add_family_configs

__all__ = ["ConfigError", "config_from_delta", "merge_delta", "merge_opts", "get_cfg",
           "load_config_file"]


class ConfigError(KeyError, ValueError):
    """A config key that does not exist, or a value of the wrong type."""

    def __str__(self):  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


def get_cfg() -> CfgNode:
    """A fresh copy of the library defaults (detectron2's name)."""
    return get_default_cfg()


def _all_keys(node: CfgNode, prefix: str = "") -> List[str]:
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, CfgNode):
            keys += _all_keys(v, full + ".")
    return keys


def _unknown_key_error(root: CfgNode, full_key: str, source: str) -> ConfigError:
    candidates = _all_keys(root)
    close = difflib.get_close_matches(full_key, candidates, n=3, cutoff=0.5)
    # Also match on the last component, which catches a key placed under the wrong parent.
    leaf = full_key.rsplit(".", 1)[-1]
    close += [c for c in candidates if c.rsplit(".", 1)[-1] == leaf and c not in close][:3]
    hint = f" Closest valid keys: {', '.join(close)}." if close else ""
    families = list(root.get("FAMILIES", []))
    return ConfigError(
        f"Unknown config key '{full_key}' (from {source}).{hint} This config has the core keys "
        "of dl_lib/config/defaults.py and those of the families in FAMILIES "
        f"({', '.join(families) if families else 'none'}). A method's keys are added by its "
        "family's add_<family>_config(cfg) (dl_lib/modeling/<family>/config.py), which the "
        "playground names with config_from_delta(..., family='<family>'); never in a delta."
    )


def _coerce(full_key: str, old: Any, new: Any, source: str) -> Any:
    """Return ``new`` converted to the type of the default ``old``, or raise ConfigError."""
    if isinstance(new, str) and not isinstance(old, str):
        try:
            new = ast.literal_eval(new)
        except (ValueError, SyntaxError):
            pass
    if old is None or new is None:
        return new
    if isinstance(old, bool) or isinstance(new, bool):
        if isinstance(old, bool) and isinstance(new, bool):
            return new
    elif isinstance(old, float) and isinstance(new, (int, float)):
        return float(new)
    elif isinstance(old, int) and isinstance(new, int):
        return new
    elif isinstance(old, str) and isinstance(new, str):
        return new
    elif isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return type(old)(new)
    raise ConfigError(
        f"Config key '{full_key}' (from {source}) expects a value of type "
        f"{type(old).__name__} like {old!r}, got {type(new).__name__} {new!r}."
    )


def merge_delta(cfg: CfgNode, delta: Mapping, source: str = "config delta", _prefix: str = "",
                _root: Optional[CfgNode] = None) -> CfgNode:
    """Merge a nested dict into ``cfg`` in place, checking every key and type.

    A top-level ``FAMILIES`` list (e.g. from a dumped config.yaml) first adds the keys of the
    families it names, so their keys in the same dict are known."""
    root = cfg if _root is None else _root
    if _root is None and "FAMILIES" in delta and "FAMILIES" in cfg:
        _set_families(cfg, delta["FAMILIES"], source)
        delta = {k: v for k, v in delta.items() if k != "FAMILIES"}
    for k, v in delta.items():
        full = f"{_prefix}{k}"
        if k not in cfg:
            raise _unknown_key_error(root, full, source)
        old = cfg[k]
        if isinstance(old, CfgNode):
            if not isinstance(v, Mapping):
                raise ConfigError(
                    f"Config key '{full}' (from {source}) is a group of keys "
                    f"({', '.join(list(old.keys())[:5])}, ...); give a dict, got {v!r}."
                )
            merge_delta(old, v, source, full + ".", root)
        else:
            if isinstance(v, Mapping):
                raise ConfigError(
                    f"Config key '{full}' (from {source}) is a single value like {old!r}, "
                    f"not a group; got a dict."
                )
            cfg[k] = _coerce(full, old, v, source)
    return cfg


def merge_opts(cfg: CfgNode, opts: Optional[Iterable[str]], source: str = "command line") -> CfgNode:
    """Merge ``KEY VALUE`` pairs (e.g. from the command line) into ``cfg`` in place."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise ConfigError(
            f"Overrides from {source} must come in KEY VALUE pairs; got an odd number: {opts}."
        )
    for key, value in zip(opts[0::2], opts[1::2]):
        if key.startswith("-"):
            raise ConfigError(
                f"'{key}' appears among the KEY VALUE overrides from {source}. Flags must come "
                "before the overrides, e.g. `dl_train --num-gpus 2 MODEL.WEIGHTS x.pth`."
            )
        if key == "FAMILIES":
            _set_families(cfg, _coerce(key, list(cfg.FAMILIES), value, source), source)
            continue
        node, parts = cfg, key.split(".")
        for i, part in enumerate(parts[:-1]):
            if part not in node or not isinstance(node[part], CfgNode):
                raise _unknown_key_error(cfg, key, source)
            node = node[part]
        leaf = parts[-1]
        if leaf not in node or isinstance(node[leaf], CfgNode):
            raise _unknown_key_error(cfg, key, source)
        node[leaf] = _coerce(key, node[leaf], value, source)
    return cfg


def _set_families(cfg: CfgNode, families: Any, source: str) -> None:
    if isinstance(families, str) or not isinstance(families, (list, tuple)):
        raise ConfigError(f"Config key 'FAMILIES' (from {source}) is a list of family names, "
                          f"got {families!r}.")
    _check_families_kept(list(cfg.FAMILIES), list(families), source)
    add_family_configs(cfg, families)


def config_from_delta(delta: Optional[Mapping] = None, base: Optional[CfgNode] = None,
                      source: str = "config delta",
                      family: Union[None, str, Iterable[str]] = None) -> CfgNode:
    """Library defaults (or a clone of ``base``), plus the keys of ``family`` (a family name or
    names, see ``dl_lib.config.families``), with ``delta`` merged in and checked."""
    cfg = get_default_cfg() if base is None else base.clone()
    add_family_configs(cfg, family)
    return merge_delta(cfg, delta or {}, source)


def load_config_file(path: str) -> CfgNode:
    """A config dumped to YAML (e.g. ``OUTPUT_DIR/config.yaml``) re-built on the defaults: the
    families in its ``FAMILIES`` add their keys, then every key is checked as in a delta."""
    from iopath.common.file_io import g_pathmgr

    with g_pathmgr.open(path, "r") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path} holds a {type(data).__name__}, not a mapping of config keys.")
    return config_from_delta(data, source=path)

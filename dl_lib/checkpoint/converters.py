"""Converters from released checkpoints' state dicts to dl_lib's parameter names.

A method family registers one converter: a predicate on the checkpoint's keys that recognises the
foreign layout, and a function mapping that state dict to ours. ``Checkpointer.load`` tries the
registered converters in registration order and applies the first whose predicate matches::

    register_converter(
        "hrnet_official",
        convert=lambda sd: {k.replace("model.", "", 1): v for k, v in sd.items()},
        matches=lambda keys: any(k.startswith("model.last_layer") for k in keys))

Predicates must not match our own checkpoints (they are checked against those too).
"""
import logging
from typing import Callable, Collection, Dict, List, NamedTuple, Optional

__all__ = ["register_converter", "unregister_converter", "registered_converters",
           "find_converter", "Converter"]

logger = logging.getLogger(__name__)


class Converter(NamedTuple):
    name: str
    convert: Callable[[Dict], Dict]
    matches: Callable[[Collection[str]], bool]


_CONVERTERS: List[Converter] = []


def register_converter(name: str, convert: Callable[[Dict], Dict],
                       matches: Callable[[Collection[str]], bool]) -> None:
    """Register ``convert`` (foreign state dict -> ours) for checkpoints whose keys satisfy
    ``matches``. Registering a name twice is an error (two families claiming the same name)."""
    if any(c.name == name for c in _CONVERTERS):
        raise KeyError(f"A checkpoint converter named {name!r} is already registered")
    if not callable(convert) or not callable(matches):
        raise TypeError("register_converter needs callables for convert and matches")
    _CONVERTERS.append(Converter(name, convert, matches))


def unregister_converter(name: str) -> None:
    """Remove the converter ``name`` (mainly for tests)."""
    for i, c in enumerate(_CONVERTERS):
        if c.name == name:
            del _CONVERTERS[i]
            return
    raise KeyError(f"No checkpoint converter named {name!r}; registered: "
                   f"{[c.name for c in _CONVERTERS]}")


def registered_converters() -> List[str]:
    """Names of the registered converters, in the order they are tried."""
    return [c.name for c in _CONVERTERS]


def find_converter(keys: Collection[str]) -> Optional[Converter]:
    """The first registered converter whose predicate accepts ``keys``, or None."""
    keys = list(keys)
    for c in _CONVERTERS:
        if c.matches(keys):
            return c
    return None

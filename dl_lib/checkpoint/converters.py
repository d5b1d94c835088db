"""Converters from released checkpoints' state dicts to dl_lib's parameter names, per model class.

A method family registers a converter for the model class whose checkpoints it reads: a predicate
on the checkpoint's keys that recognises the foreign layout, and a function mapping that state
dict to ours::

    register_converter(
        "hrnet_official",
        convert=lambda sd: {k.replace("model.", "", 1): v for k, v in sd.items()},
        matches=lambda keys: any(k.startswith("model.last_layer") for k in keys),
        model_class=AnytimeHRNet)

``Checkpointer.load`` only considers converters registered for a class in the loaded model's MRO
(``type(model).__mro__``: the class itself and its bases, not its submodules' classes), in
registration order, and applies the first whose predicate matches. So one family's converter never
renames another family's checkpoint, however loose its predicate. ``model_class=nn.Module``
registers a converter for every model (use it only for wrapper layouts every model shares).

Backbone ImageNet files (``MODEL.PRETRAINED``) do not go through this registry: the backbone
class declares its layouts in ``convert_pretrained`` (see ``dl_lib.checkpoint.pretrained``).
"""
import logging
from typing import Callable, Collection, Dict, List, NamedTuple, Optional, Sequence, Type

from torch import nn

__all__ = ["register_converter", "unregister_converter", "registered_converters",
           "find_converter", "rename_prefixes", "Converter"]

logger = logging.getLogger(__name__)


class Converter(NamedTuple):
    name: str
    convert: Callable[[Dict], Dict]
    matches: Callable[[Collection[str]], bool]
    model_class: Type[nn.Module]


_CONVERTERS: List[Converter] = []


def rename_prefixes(state_dict: Dict, renames: Dict[str, str], drop: Sequence[str] = ()) -> Dict:
    """The body of most converters: each key starting with an ``old`` prefix of ``renames``
    (first match, in order) gets ``new`` instead; keys starting with a ``drop`` prefix (e.g. an
    ImageNet classifier ``"fc."``) are left out; other keys pass unchanged."""
    out = {}
    for key, value in state_dict.items():
        if drop and key.startswith(tuple(drop)):
            continue
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def register_converter(name: str, convert: Callable[[Dict], Dict],
                       matches: Callable[[Collection[str]], bool], *,
                       model_class: Type[nn.Module]) -> None:
    """Register ``convert`` (foreign state dict -> ours) for checkpoints whose keys satisfy
    ``matches``, when they are loaded into an instance of ``model_class`` (or a subclass).

    Registering a name twice is an error (two families claiming the same name).
    """
    if any(c.name == name for c in _CONVERTERS):
        raise KeyError(f"A checkpoint converter named {name!r} is already registered")
    if not callable(convert) or not callable(matches):
        raise TypeError("register_converter needs callables for convert and matches")
    if not (isinstance(model_class, type) and issubclass(model_class, nn.Module)):
        raise TypeError(f"register_converter({name!r}): model_class must be an nn.Module "
                        f"subclass (the model the checkpoints belong to), got {model_class!r}")
    _CONVERTERS.append(Converter(name, convert, matches, model_class))


def unregister_converter(name: str) -> None:
    """Remove the converter ``name`` (mainly for tests)."""
    for i, c in enumerate(_CONVERTERS):
        if c.name == name:
            del _CONVERTERS[i]
            return
    raise KeyError(f"No checkpoint converter named {name!r}; registered: "
                   f"{[c.name for c in _CONVERTERS]}")


def registered_converters(model: Optional[nn.Module] = None) -> List[str]:
    """Names of the registered converters in the order they are tried; with ``model``, only
    those that apply to it."""
    return [c.name for c in _CONVERTERS if model is None or isinstance(model, c.model_class)]


def find_converter(keys: Collection[str], model: nn.Module) -> Optional[Converter]:
    """The first converter registered for a class of ``model``'s MRO whose predicate accepts
    ``keys``, or None."""
    keys = list(keys)
    for c in _CONVERTERS:
        if isinstance(model, c.model_class) and c.matches(keys):
            return c
    return None

"""Name -> dataset and name -> metadata registries.

``DatasetCatalog`` maps a dataset name to a zero-argument function returning a list of dicts
(``file_name``, ``sem_seg_file_name``, ``image_id``, optionally ``height``/``width``); the function
runs only when the dataset is requested, so registering never touches the disk.
``MetadataCatalog`` maps a name to a :class:`Metadata` (``stuff_classes``, ``stuff_colors``,
``ignore_label``, ``evaluator_type``, and ``gt_dir`` for Cityscapes-layout sets).
"""
import difflib
import logging
from collections import UserDict
from typing import Any, Callable, Dict, List

__all__ = ["DatasetCatalog", "MetadataCatalog", "Metadata", "LazyValue"]

logger = logging.getLogger(__name__)


def _unknown_name_error(kind: str, name: str, known) -> KeyError:
    close = difflib.get_close_matches(name, list(known), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return KeyError(
        f"{kind} {name!r} is not registered.{hint} Registered names: {', '.join(sorted(known))}. "
        "Built-in datasets are registered by `import dl_lib.data`; register your own with "
        "dl_lib.data.register_sem_seg(...) or DatasetCatalog.register(name, fn).")


class _DatasetCatalog(UserDict):
    """A global dict name -> function returning ``list[dict]``."""

    def register(self, name: str, func: Callable[[], List[dict]]) -> None:
        assert callable(func), f"DatasetCatalog.register({name!r}, ...) needs a callable, got {func!r}"
        if name in self:
            raise KeyError(f"Dataset {name!r} is already registered; call DatasetCatalog.remove({name!r}) first.")
        self[name] = func

    def get(self, name: str) -> List[dict]:
        """Call the registered function and return its list of dicts (a fresh list each call)."""
        try:
            func = self[name]
        except KeyError:
            raise _unknown_name_error("Dataset", name, self.keys()) from None
        return func()

    def list(self) -> List[str]:
        return sorted(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)

    def __str__(self):
        return f"DatasetCatalog(registered datasets: {', '.join(self.list())})"

    __repr__ = __str__


class LazyValue:
    """A metadata value computed when read, e.g. a path under ``$DL_DATASETS`` that must follow
    the environment at use time rather than at import time."""

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn

    def __eq__(self, other):
        return isinstance(other, LazyValue) and other.fn == self.fn

    def __repr__(self):  # never resolves: resolving may be expensive (e.g. generate a dataset)
        return f"LazyValue({getattr(self.fn, '__qualname__', self.fn)})"


class Metadata:
    """Attributes describing a dataset. Setting an existing attribute to a different value is an
    error (catches two registrations disagreeing); ``set(**kw)`` sets several at once.
    A :class:`LazyValue` is resolved on every read."""

    name: str = "N/A"

    def __getattribute__(self, key: str) -> Any:
        value = object.__getattribute__(self, key)
        return value.fn() if isinstance(value, LazyValue) else value

    def __init__(self, **kwargs):
        for k, v in kwargs.items():
            setattr(self, k, v)

    def __getattr__(self, key: str) -> Any:
        # only called when the attribute does not exist
        if key.startswith("__"):
            raise AttributeError(key)
        known = ", ".join(sorted(self.__dict__.keys()))
        raise AttributeError(
            f"Metadata of dataset {self.__dict__.get('name', 'N/A')!r} has no attribute {key!r}. "
            f"Available: {known}")

    def __setattr__(self, key: str, value: Any) -> None:
        try:
            old = self.__dict__[key]
        except KeyError:
            self.__dict__[key] = value
            return
        if old != value:
            raise AssertionError(
                f"Metadata {key!r} of dataset {self.__dict__.get('name')!r} is already {old!r}; "
                f"refusing to change it to {value!r}. Use MetadataCatalog.remove(name) to start over.")

    def set(self, **kwargs) -> "Metadata":
        for k, v in kwargs.items():
            setattr(self, k, v)
        return self

    def get(self, key: str, default=None) -> Any:
        return getattr(self, key) if key in self.__dict__ else default

    def as_dict(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dict__}

    def __repr__(self):
        return f"Metadata({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


class _MetadataCatalog(UserDict):
    """A global dict name -> :class:`Metadata`; ``get`` creates an empty one on first access."""

    def get(self, name: str) -> Metadata:
        assert name, "MetadataCatalog.get needs a dataset name"
        m = self.data.get(name)
        if m is None:
            m = self.data[name] = Metadata(name=name)
        return m

    def list(self) -> List[str]:
        return sorted(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)

    def __str__(self):
        return f"MetadataCatalog(registered metadata: {', '.join(self.list())})"

    __repr__ = __str__


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()

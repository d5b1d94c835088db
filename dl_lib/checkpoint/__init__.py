"""Checkpoints: atomic saves, resume vs. weights-only init, converters for released files."""
from .checkpointer import Checkpointer, PeriodicCheckpointer
from .converters import (
    find_converter,
    register_converter,
    registered_converters,
    unregister_converter,
)

__all__ = [
    "Checkpointer", "PeriodicCheckpointer", "register_converter", "unregister_converter",
    "registered_converters", "find_converter",
]

"""Checkpoints: atomic saves, resume vs. weights-only init, strict evaluation loads, converters
per model class, backbone ImageNet initialisation, architectures stored with the weights."""
from .architecture import apply_checkpoint_architecture, architecture_of, architecture_overrides
from .checkpointer import Checkpointer, IncompatibleCheckpointError, PeriodicCheckpointer
from .file_check import CheckpointReadError
from .converters import (
    find_converter,
    register_converter,
    registered_converters,
    rename_prefixes,
    unregister_converter,
)
from .pretrained import (
    PretrainedReport,
    PretrainedWeightsError,
    find_backbone,
    load_pretrained_backbone,
)

__all__ = [
    "Checkpointer", "PeriodicCheckpointer", "IncompatibleCheckpointError", "CheckpointReadError",
    "register_converter",
    "unregister_converter", "registered_converters", "find_converter", "rename_prefixes",
    "apply_checkpoint_architecture", "architecture_of", "architecture_overrides",
    "load_pretrained_backbone", "find_backbone", "PretrainedWeightsError", "PretrainedReport",
]

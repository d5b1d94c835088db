"""The training engine: launch, the hook-based train loop, the default trainer and set-up."""
from . import hooks
from .defaults import (
    DefaultTrainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
    parse_args,
)
from .hooks import HookBase
from .launch import launch
from .predictor import Prediction, Predictor
from .train_loop import SimpleTrainer, TrainerBase

__all__ = [
    "launch", "DefaultTrainer", "default_argument_parser", "parse_args", "default_setup",
    "default_writers", "create_ddp_model", "hooks", "HookBase", "SimpleTrainer", "TrainerBase",
    "Predictor", "Prediction",
]

from .config import ConfigError, config_from_delta, get_cfg, merge_delta, merge_opts
from .defaults import CfgNode, get_default_cfg

__all__ = [
    "CfgNode", "ConfigError", "config_from_delta", "get_cfg", "get_default_cfg", "merge_delta",
    "merge_opts",
]

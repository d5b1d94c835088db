from .config import ConfigError, config_from_delta, get_cfg, load_config_file, merge_delta, merge_opts
from .defaults import CfgNode, get_default_cfg
from .families import add_family_configs, get_family_config, register_family_config, registered_families

__all__ = [
    "CfgNode", "ConfigError", "config_from_delta", "get_cfg", "get_default_cfg", "merge_delta",
    "merge_opts", "load_config_file", "register_family_config", "get_family_config",
    "registered_families", "add_family_configs",
]

"""MFARANet, built from the config by the family's registered meta-architecture."""
import dl_lib.modeling.mfaranet  # noqa: F401  (registers MFARANet and its converters)
from dl_lib.modeling import build_model as _build_model


def build_model(cfg):
    return _build_model(cfg)

"""CondNet, built from the config by the family's registered meta-architecture."""
import dl_lib.modeling.condnet  # noqa: F401  (registers CondNet and its checkpoint converter)
from dl_lib.modeling import build_model as _build_model


def build_model(cfg):
    return _build_model(cfg)

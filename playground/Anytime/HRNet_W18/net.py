"""The plain segmentor: ``SemanticSegmentor`` with the HRNet backbone and ``HRNetV2Head``."""
from dl_lib.modeling import build_model as _build_model


def build_model(cfg):
    return _build_model(cfg)

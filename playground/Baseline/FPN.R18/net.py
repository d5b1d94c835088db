"""Plain segmentor: the registry builds ``MODEL.META_ARCHITECTURE`` (SemanticSegmentor)."""
from dl_lib.modeling import build_model as _build_model


def build_model(cfg):
    return _build_model(cfg)

"""ADP-C: ``AnytimeSegmentor`` (HRNet with four exits), built by the family's meta-architecture."""
import dl_lib.modeling.anytime  # noqa: F401  (registers AnytimeSegmentor)
from dl_lib.modeling import build_model as _build_model


def build_model(cfg):
    return _build_model(cfg)

"""ACoSP model (PSPNet / SegNet, channel masks from MODEL.PRUNING) and the pruning trainer."""
from dl_lib.modeling import build_model as _build_model
from dl_lib.modeling.acosp import ACoSPTrainer as Trainer  # noqa: F401


def build_model(cfg):
    return _build_model(cfg)

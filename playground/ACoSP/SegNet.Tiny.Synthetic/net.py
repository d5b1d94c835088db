"""ACoSP's SegNet built by the family's registered meta-architecture (masks attached by its
builder); ``Trainer`` runs the pruning schedule (temperature, soft -> hard, mask metrics)."""
import dl_lib.modeling.acosp  # noqa: F401  (registers ACoSPSegNet and its converters)
from dl_lib.modeling import build_model as _build_model
from dl_lib.modeling.pruning.training import PruningTrainer as Trainer  # noqa: F401


def build_model(cfg):
    return _build_model(cfg)

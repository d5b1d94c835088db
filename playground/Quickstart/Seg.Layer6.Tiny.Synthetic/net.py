"""The dynamic-routing segmentor, built from the config by the registered meta-architecture;
``Trainer``: the default one whose train loader decodes each of the 200 scenes once (the
decoded images stay in the loader worker, ~100 MB) instead of once per epoch."""
import dl_lib.modeling.dynamic_routing  # noqa: F401  (registers DynamicRoutingSegmentor)
from dl_lib.data import SemSegDatasetMapper, build_train_loader
from dl_lib.engine import DefaultTrainer
from dl_lib.modeling import build_model as _build_model


def build_model(cfg):
    return _build_model(cfg)


class Trainer(DefaultTrainer):
    @classmethod
    def build_train_loader(cls, cfg):
        # PNG decoding is ~70% of the mapper's time; on 2 cores the loader worker takes it from
        # the training step's threads.
        return build_train_loader(cfg, mapper=SemSegDatasetMapper(cfg, True, cache_decoded=True))

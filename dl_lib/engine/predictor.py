"""``Predictor``: one image array in, logits and label map out, with a playground's own
test-time settings (detectron2's ``DefaultPredictor``).

    from dl_lib import playground
    from dl_lib.engine import Predictor

    cfg = playground.load_config("playground/Quickstart/FPN.R18W32.Synthetic",
                                 ["MODEL.WEIGHTS", "output/.../model_final.pth"])
    predictor = Predictor(cfg, playground="playground/Quickstart/FPN.R18W32.Synthetic")
    pred = predictor(cv2.imread("street.png"), input_format="BGR")
    pred.logits   # K x H x W float tensor (CPU) at the input's size
    pred.labels   # H x W int64 array: the argmax

What it does per image, exactly as ``dl_test`` does for a dataset image:

1. the array (H x W x 3 uint8, ``input_format`` RGB or BGR) becomes RGB, is resized by the test
   mapper's augmentations (``SemSegDatasetMapper(cfg, is_train=False)``: shorter side
   ``INPUT.MIN_SIZE_TEST``; none with ``TEST.AUG.ENABLED``, whose wrapper resizes per scale, as
   ``build_test_loader``) and put in ``INPUT.FORMAT``;
2. the model runs behind ``DefaultTrainer.build_test_time_model`` (``TEST.AUG`` multi-scale +
   flip, ``TEST.MODE slide``; the playground's ``Trainer`` when it overrides that), in eval mode
   without gradients, with ``height``/``width`` = the input's size;
3. the weights come from ``MODEL.WEIGHTS`` through :class:`dl_lib.checkpoint.Checkpointer`,
   strict unless ``MODEL.WEIGHTS_STRICT False`` (as ``dl_test``); a checkpoint that stores an
   ``architecture`` rebuilds the network with it first.

Models with extra outputs keep them: ``exit_logits`` (anytime exits, MFARANet's branches then the
fused output), ``exit_masks`` (pixels computed after each exit), ``gates`` (dynamic routing, when
the backbone can record them). The test-time wrapper returns logits only (no masks or gates).
"""
import importlib
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

__all__ = ["Predictor", "Prediction", "PredictorWeightsError"]

logger = logging.getLogger(__name__)

FORMATS = ("RGB", "BGR")


class PredictorWeightsError(ValueError):
    """``MODEL.WEIGHTS`` is empty: there is nothing to predict with."""


@dataclass
class Prediction:
    """What :class:`Predictor` returns for one H x W image.

    logits: K x H x W float tensor on the CPU (the final prediction, ``sem_seg``).
    labels: H x W int64 array, ``logits.argmax(0)``.
    exit_logits: K x H x W per exit, cheapest first (``sem_seg_exits``); [] for one output.
    exit_masks: H x W bool per masked segment (``exit_masks``: True = computed after exit j).
    gates: dynamic routing: ``{cell name: [gate per route]}`` of this image; None otherwise.
    outputs: the model's own output dict for the image, as returned.
    """
    logits: torch.Tensor
    labels: np.ndarray
    exit_logits: List[torch.Tensor] = field(default_factory=list)
    exit_masks: List[np.ndarray] = field(default_factory=list)
    gates: Optional[Dict[str, List[float]]] = None
    outputs: dict = field(default_factory=dict)

    @property
    def exit_labels(self) -> List[np.ndarray]:
        """H x W int64 argmax of each exit."""
        return [t.argmax(dim=0).numpy() for t in self.exit_logits]


def _import_families(cfg) -> None:
    """Import ``dl_lib.modeling.<family>`` for each family the config applied, so its
    meta-architecture is registered (out-of-tree families are imported by their playground)."""
    for family in cfg.get("FAMILIES", None) or []:
        name = f"dl_lib.modeling.{family}"
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the family exists but one of its imports is missing: say so
                raise


def _check_format(value: str, what: str) -> str:
    value = str(value).upper()
    if value not in FORMATS:
        raise ValueError(f"{what} must be 'RGB' or 'BGR', got {value!r}")
    return value


class Predictor:
    """Run a segmentor on single images with a config's test-time settings (module doc).

    Args:
        cfg: a config (e.g. ``dl_lib.playground.load_config(folder, opts)``); not modified.
        model: an already built model to use instead of building one; ``MODEL.WEIGHTS`` is then
            loaded only when set (and not ``none``).
        playground: the playground folder: its ``net.py`` builds the model (and may register
            classes and data sets) and its ``Trainer`` wraps it for test time. Without it (and
            without ``model``) the registry builds ``MODEL.META_ARCHITECTURE``.
        input_format: the channel order of the arrays given to ``__call__`` (``"RGB"`` /
            ``"BGR"``; default ``INPUT.FORMAT``); ``__call__`` may override it per call.
        record_gates: have a dynamic-routing backbone (one with ``record_gates``) keep each
            image's gates, returned in :attr:`Prediction.gates`.

    ``MODEL.WEIGHTS none`` predicts with the random initialisation on purpose; an empty
    ``MODEL.WEIGHTS`` (without ``model``) is a :class:`PredictorWeightsError`.
    """

    def __init__(self, cfg, *, model: Optional[torch.nn.Module] = None,
                 playground: Optional[str] = None, input_format: Optional[str] = None,
                 record_gates: bool = True):
        from dl_lib import playground as playgrounds
        from dl_lib.checkpoint import Checkpointer, apply_checkpoint_architecture
        from dl_lib.checkpoint.file_check import check_weights_file
        from dl_lib.data.mapper import SemSegDatasetMapper

        from .defaults import DefaultTrainer

        cfg = cfg.clone()
        cfg.defrost()
        weights = cfg.MODEL.WEIGHTS.strip()
        random_init = weights.lower() == "none"
        if model is None and not weights:
            raise PredictorWeightsError(
                "Predictor: MODEL.WEIGHTS is empty, so there are no trained weights to predict "
                "with. Set it to a checkpoint (`cfg.MODEL.WEIGHTS = 'path/to/model_final.pth'`, "
                "or the override `MODEL.WEIGHTS path`), or to `none` to use the random "
                "initialisation on purpose.")
        load = bool(weights) and not random_init
        if load:
            check_weights_file(weights)  # a text / empty / truncated file: one clear line
        trainer_cls = DefaultTrainer
        if playground is not None:
            trainer_cls = getattr(playgrounds.load_net(playground), "Trainer", DefaultTrainer)
        if model is None:
            apply_checkpoint_architecture(cfg, weights if load else None)
            if playground is not None:
                model = playgrounds.build_model(playground, cfg)
            else:
                from dl_lib.modeling import build_model

                _import_families(cfg)
                model = build_model(cfg)
        if load:
            # strict as dl_test: a half-random network is never what a prediction should use
            Checkpointer(model, cfg.OUTPUT_DIR, save_to_disk=False).load(
                weights, checkpointables=[], strict=cfg.MODEL.WEIGHTS_STRICT)
        elif random_init:
            logger.warning("Predictor: MODEL.WEIGHTS none: predicting with the random "
                           "initialisation on purpose")
        model.eval()
        cfg.freeze()
        self.cfg = cfg
        self.model = model
        # the wrapper (TEST.AUG / slide) is a new module, in training mode until told
        self.test_model = trainer_cls.build_test_time_model(cfg, model).eval()
        # The test loader's mapper: with TEST.AUG the wrapper resizes from the original size.
        self.mapper = SemSegDatasetMapper(cfg, False,
                                          augmentations=[] if cfg.TEST.AUG.ENABLED else None)
        default = cfg.INPUT.get("FORMAT", "RGB") if "INPUT" in cfg else "RGB"
        self.input_format = _check_format(input_format or default, "input_format")
        backbone = getattr(model, "backbone", None)
        records = record_gates and hasattr(backbone, "record_gates")
        self._gate_backbone = backbone if records else None

    @property
    def device(self) -> torch.device:
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        return tensors[0].device if tensors else torch.device("cpu")

    def model_input(self, image: np.ndarray, input_format: Optional[str] = None) -> dict:
        """The model's input dict for ``image`` (H x W x 3 uint8 in ``input_format``):
        ``image`` (3 x h x w uint8 tensor in ``INPUT.FORMAT``, resized as the test mapper does),
        ``height``/``width`` = H, W."""
        from dl_lib.data.transforms import apply_augmentations

        fmt = _check_format(input_format or self.input_format, "input_format")
        if not isinstance(image, np.ndarray):
            raise TypeError(f"Predictor: the image must be an H x W x 3 numpy array, got "
                            f"{type(image).__name__}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"Predictor: the image must be H x W x 3 (colour, no alpha), got shape "
                f"{image.shape}; for a grey image use np.repeat(img[..., None], 3, 2), for RGBA "
                "drop the alpha channel (img[..., :3])")
        if image.dtype != np.uint8:
            raise ValueError(f"Predictor: the image must be uint8 (0-255), got {image.dtype}; "
                             "convert with np.clip(img, 0, 255).astype(np.uint8)")
        h, w = image.shape[:2]
        rgb = np.ascontiguousarray(image[:, :, ::-1] if fmt == "BGR" else image)
        resized, _, _ = apply_augmentations(self.mapper.augmentations, rgb, None)
        if self.mapper.image_format == "BGR":
            resized = resized[:, :, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor, "height": h, "width": w}

    def __call__(self, image: np.ndarray, input_format: Optional[str] = None) -> Prediction:
        """Predict one image: H x W x 3 uint8 in ``input_format`` (default the predictor's)."""
        inputs = self.model_input(image, input_format)
        h, w = inputs["height"], inputs["width"]
        backbone = self._gate_backbone
        was_recording = backbone.record_gates if backbone is not None else False
        if backbone is not None:
            backbone.record_gates = True
        try:
            with torch.no_grad():
                out = self.test_model([inputs])[0]
        finally:
            if backbone is not None:
                backbone.record_gates = was_recording
        logits = out["sem_seg"].detach().float().cpu()
        exits = [t.detach().float().cpu() for t in out.get("sem_seg_exits") or []]
        masks = [np.asarray(m.cpu() if torch.is_tensor(m) else m, dtype=bool)
                 for m in out.get("exit_masks") or []]
        for what, shape in ([("sem_seg", tuple(logits.shape[-2:]))]
                            + [(f"sem_seg_exits[{k}]", tuple(t.shape[-2:]))
                               for k, t in enumerate(exits)]
                            + [(f"exit_masks[{k}]", m.shape) for k, m in enumerate(masks)]):
            if shape != (h, w):
                raise ValueError(f"Predictor: {type(self.model).__name__} returned {what} of size "
                                 f"{shape} for an image of size {(h, w)}; a model must resize its "
                                 "outputs to the input's (height, width)")
        return Prediction(logits=logits, labels=logits.argmax(dim=0).numpy(), exit_logits=exits,
                          exit_masks=masks, gates=out.get("gates"), outputs=out)

    def __repr__(self) -> str:
        return (f"Predictor({type(self.model).__name__}, weights={self.cfg.MODEL.WEIGHTS!r}, "
                f"input_format={self.input_format}, test model "
                f"{type(self.test_model).__name__})")


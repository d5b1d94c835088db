"""What training adds to TensorBoard beyond the scalars of the event storage.

Everything here goes through the run's ``EventStorage`` (``put_scalar`` / ``put_image`` /
``put_histogram``), which ``TensorboardXWriter`` writes to ``OUTPUT_DIR/events.out.tfevents.*``
at the writer period (``LOG_PERIOD``) and after training; scalars also reach ``metrics.json``.

At every evaluation during training (``DefaultTrainer.test`` calls :func:`record_evaluation`;
nothing happens outside training, e.g. in ``dl_test``), per test dataset:

- ``eval/mIoU``; per exit of a multi-exit model ``eval/exit_{k}/mIoU`` (k = 0 is the cheapest
  exit) and, where measured, ``eval/exit_{k}/gflops`` (cumulative, the model's own count) and
  ``eval/exit_{k}/ms``; per cost convention of ``TEST.COST_CONVENTIONS``
  ``eval/cost/<convention>/{mean,min,max}`` (GFLOPs per image); per entry of the model's own
  ``"flops"`` ``eval/cost/model/<name>/{mean,min,max}`` (dynamic routing: ``real_gflops``,
  ``real_corrected_gflops``, ``expt_gflops``: runs of several budgets compare in TensorBoard's
  run selector on the same tags); ``eval/time/ms_per_image``;
- ``eval/exits_tradeoff`` (multi-exit models): the per-exit mIoU-against-GFLOPs / -latency figure
  of ``dl_lib.evaluation.exits.plot_exit_tradeoff``, rendered as ``add_figure`` renders it;
- ``eval/prediction/{i}`` for the first ``TEST.VIS_IMAGES`` test images: image | prediction over
  the image | ground truth, ``H x 3W`` (the original size, scaled down so that its longer side is
  at most :data:`MAX_IMAGE_SIDE`), colours of the dataset's ``stuff_colors``, ignore in black.

With several test datasets the tags are ``eval/<dataset>/...``.

During training, at the writer period, :class:`TrainingStatsHook` records statistics of the
training step's forward under ``stats/``: a number (or one-element tensor) becomes a scalar
(non-finite ones are dropped), a tensor of several values a histogram. Where they come from (the
contract, also in docs/CONTRACTS.md):

- a model may define ``training_stats() -> {name: number | tensor}`` about its last training
  forward (it keeps what it computed there); recorded as ``stats/<name>``;
- readers registered here with :func:`register_stats_reader` read what a family computes anyway:
  dynamic routing (``stats/routing/``: gate values and closed routes, the gates of
  ``backbone.record_gates``), ADP-C (``stats/anytime/``: the fraction of pixels each masked
  segment computes, from the model's ``ForwardState``), channel masks of ACoSP
  (``stats/pruning/``: histograms of the mask values; the scalars are ``PruningHook``'s
  ``pruning/*``).
"""
import logging
import math
import re
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from dl_lib.utils.events import EventStorage, get_event_storage

from .train_loop import HookBase

__all__ = ["MAX_IMAGE_SIDE", "current_storage", "record_evaluation", "evaluation_scalars",
           "prediction_image", "put_prediction_images", "figure_to_array", "StatsReader",
           "register_stats_reader", "stats_readers", "TrainingStatsHook", "record_stats"]

logger = logging.getLogger(__name__)

# Prediction images are scaled down to this longer side (a Cityscapes panel at full size is
# 1024 x 6144 per image and evaluation).
MAX_IMAGE_SIDE = 512

Stats = Dict[str, Union[float, torch.Tensor]]


def current_storage() -> Optional[EventStorage]:
    """The open ``EventStorage`` (inside ``trainer.train()``), or None (``dl_test``, scripts)."""
    try:
        return get_event_storage()
    except RuntimeError:
        return None


def _unwrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_COST_KEY = re.compile(r"^(mean|min|max)_(.+)$")


def evaluation_scalars(results: Mapping) -> Dict[str, float]:
    """The ``eval/`` scalars (without the ``eval/`` prefix) of one dataset's results (those of
    ``inference_on_dataset`` with ``results["exits"]`` of ``report_exits`` when the model has
    exits). Non-finite values are left out."""
    out: Dict[str, float] = {}
    seg = results.get("sem_seg") or {}
    if "mIoU" in seg:
        out["mIoU"] = seg["mIoU"]
    k = 0
    while isinstance(seg.get(f"exit{k}"), Mapping):
        out[f"exit_{k}/mIoU"] = seg[f"exit{k}"].get("mIoU")
        k += 1
    report = results.get("exits") or {}
    for k, g in enumerate(report.get("gflops") or []):
        out[f"exit_{k}/gflops"] = g
    for k, t in enumerate((report.get("time") or {}).get("ms_per_image") or []):
        out[f"exit_{k}/ms"] = t
    for name, value in seg.items():
        m = _COST_KEY.match(name)
        if m:
            out[f"cost/model/{m.group(2)}/{m.group(1)}"] = value
    for convention, stats in (results.get("cost") or {}).items():
        for stat in ("mean", "min", "max"):
            if isinstance(stats, Mapping) and stat in stats:
                out[f"cost/{convention}/{stat}"] = stats[stat]
    ms = (results.get("time") or {}).get("ms_per_image")
    if ms is not None:
        out["time/ms_per_image"] = ms
    return {k: float(v) for k, v in out.items() if _finite(v)}


def figure_to_array(fig) -> np.ndarray:
    """A matplotlib figure (Agg canvas) as H x W x 3 uint8 RGB, what ``add_figure`` stores."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _chw(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x H x W float in [0, 1] (``put_image``'s format)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


def _scaled_size(h: int, w: int, max_side: int) -> tuple:
    scale = min(1.0, max_side / max(h, w))
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def prediction_image(image: np.ndarray, pred: np.ndarray, gt: np.ndarray, colors: np.ndarray,
                     ignore_label: int = 255, max_side: int = MAX_IMAGE_SIDE,
                     alpha: float = 0.5) -> np.ndarray:
    """image | prediction over the image | ground truth, ``h x 3w x 3`` uint8, where ``(h, w)``
    is ``image``'s size scaled down to a longer side of at most ``max_side`` (labels resized by
    nearest neighbour). ``image``: H x W x 3 RGB uint8; ``pred``, ``gt``: H x W train ids;
    ``colors``: ``dl_lib.utils.visualizer.palette``; ``ignore_label`` (and ids without a colour)
    black."""
    from PIL import Image

    from dl_lib.utils import visualizer as vis

    h, w = image.shape[:2]
    if pred.shape != (h, w) or gt.shape != (h, w):
        raise ValueError(f"prediction_image: image {(h, w)}, prediction {pred.shape} and ground "
                         f"truth {gt.shape} must have the same size")
    sh, sw = _scaled_size(h, w, max_side)
    if (sh, sw) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((sw, sh), Image.BILINEAR))
        pred, gt = (np.asarray(Image.fromarray(a.astype(np.int32)).resize((sw, sh), Image.NEAREST))
                    for a in (pred, gt))
    pred_color = vis.colorize(pred, colors, ignore_label)
    return vis.hstack([image, vis.overlay(image, pred_color, alpha),
                       vis.colorize(gt, colors, ignore_label)])


def _input_rgb(inp: Mapping) -> np.ndarray:
    """The original RGB image of a mapped input: its ``file_name``, else its ``image`` tensor."""
    from PIL import Image

    if inp.get("file_name"):
        with Image.open(inp["file_name"]) as im:
            return np.asarray(im.convert("RGB"))
    return inp["image"].permute(1, 2, 0).clamp(0, 255).to(torch.uint8).cpu().numpy()


def _input_gt(inp: Mapping, size, ignore: int) -> np.ndarray:
    from dl_lib.data.datasets.common import read_mask

    if inp.get("sem_seg_file_name"):
        return np.asarray(read_mask(inp["sem_seg_file_name"]))
    sem_seg = inp.get("sem_seg")
    if sem_seg is not None and tuple(sem_seg.shape[-2:]) == tuple(size):
        return sem_seg.cpu().numpy() if torch.is_tensor(sem_seg) else np.asarray(sem_seg)
    return np.full(tuple(size), ignore, dtype=np.int64)


def put_prediction_images(cfg, model: nn.Module, dataset_name: str, batches: Iterable,
                          num_images: int, storage: EventStorage, prefix: str = "eval/"
                          ) -> List[str]:
    """Run ``model`` on the first ``num_images`` inputs of ``batches`` (lists of mapped inputs,
    e.g. the trainer's test loader of ``dataset_name``) and queue :func:`prediction_image` of
    each as ``<prefix>prediction/{i}``, coloured with ``dataset_name``'s metadata. The image is
    the input's ``file_name`` (else its ``image``), the ground truth its
    ``sem_seg_file_name`` (else its ``sem_seg``). Returns the tags."""
    from dl_lib.data.catalog import MetadataCatalog
    from dl_lib.evaluation.evaluator import inference_context
    from dl_lib.utils import visualizer as vis

    num_images = max(0, int(num_images))
    if num_images == 0:
        return []
    meta = MetadataCatalog.get(dataset_name)
    num_classes = len(meta.get("stuff_classes") or []) or cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    colors = vis.palette(num_classes, meta.get("stuff_colors"))
    ignore = meta.get("ignore_label", cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
    tags: List[str] = []
    with inference_context(model), torch.no_grad():
        for batch in batches:
            batch = list(batch)[: num_images - len(tags)]
            for inp, out in zip(batch, model(batch)):
                image = _input_rgb(inp)
                h, w = image.shape[:2]
                pred = out["sem_seg"].argmax(dim=0).cpu().numpy()
                if pred.shape != (h, w):
                    raise ValueError(
                        f"TEST.VIS_IMAGES: the model returned sem_seg of size {pred.shape} for "
                        f"{inp.get('file_name', 'an input')} of size {(h, w)}; it must resize to "
                        "the input's (height, width)")
                gt = _input_gt(inp, (h, w), ignore)
                tag = f"{prefix}prediction/{len(tags)}"
                storage.put_image(tag, _chw(prediction_image(image, pred, gt, colors, ignore)))
                tags.append(tag)
            if len(tags) >= num_images:
                break
    return tags


def record_evaluation(cfg, model: nn.Module, dataset_name: str, results: Mapping,
                      prefix: str = "eval/", batches: Optional[Callable[[], Iterable]] = None
                      ) -> bool:
    """Queue one dataset's evaluation in the open event storage (main process, during
    training): the scalars of :func:`evaluation_scalars` under ``prefix``, the per-exit
    trade-off figure of a multi-exit model (``<prefix>exits_tradeoff``) and, with
    ``TEST.VIS_IMAGES > 0``, the prediction images of the first inputs of ``batches()`` (a
    function returning the test batches; called only then). Returns False (nothing done)
    without an open storage."""
    storage = current_storage()
    if storage is None:
        return False
    for name, value in evaluation_scalars(results).items():
        storage.put_scalar(prefix + name, value, smoothing_hint=False)
    report = results.get("exits")
    if isinstance(report, Mapping) and report.get("num_exits"):
        from dl_lib.evaluation.exits import plot_exit_tradeoff

        fig = plot_exit_tradeoff([(report.get("run") or "this run", report)])
        storage.put_image(prefix + "exits_tradeoff", _chw(figure_to_array(fig)))
    if cfg.TEST.VIS_IMAGES > 0 and batches is not None:
        put_prediction_images(cfg, model, dataset_name, batches(), cfg.TEST.VIS_IMAGES, storage,
                              prefix)
    return True


# ---------------------------------------------------------------------------------------------
# Statistics of the training step
# ---------------------------------------------------------------------------------------------
class StatsReader:
    """Reads one kind of statistics from a model around a training step.

    ``applies(model)``: whether the model has them; ``start(model)`` before the step (turn on
    recording, add forward hooks); ``collect(model) -> {name: number | tensor}`` after it (names
    under ``stats/``; numbers become scalars, tensors histograms); ``stop(model)`` undoes
    ``start`` (also when the step failed).
    """

    name = "reader"

    def applies(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def start(self, model: nn.Module) -> None:
        pass

    def collect(self, model: nn.Module) -> Stats:
        raise NotImplementedError

    def stop(self, model: nn.Module) -> None:
        pass


_READERS: List[Callable[[], StatsReader]] = []


def register_stats_reader(factory: Callable[[], StatsReader]) -> Callable[[], StatsReader]:
    """Add a reader class (or factory); each ``TrainingStatsHook`` makes its own instances.
    Usable as a class decorator."""
    _READERS.append(factory)
    return factory


def stats_readers() -> List[StatsReader]:
    """Fresh instances of every registered reader."""
    return [f() for f in _READERS]


@register_stats_reader
class ModelTrainingStats(StatsReader):
    """The contract: ``model.training_stats()`` -> ``{name: number | tensor}`` of its last
    training forward."""

    name = "training_stats"

    def applies(self, model):
        return callable(getattr(model, "training_stats", None))

    def collect(self, model):
        stats = model.training_stats() or {}
        if not isinstance(stats, Mapping):
            raise TypeError(f"{type(model).__name__}.training_stats() must return a dict name -> "
                            f"number or tensor, got {type(stats).__name__}")
        return dict(stats)


@register_stats_reader
class RoutingGateStats(StatsReader):
    """Dynamic routing: the gate values of every cell of the step's batch (recorded with
    ``backbone.record_gates``; ``model.last_cost.gates``: cell -> N x gate_num, zeros where a
    cell did not run). ``routing/gates`` (histogram of all), ``routing/gate_mean``,
    ``routing/closed_fraction`` (gates <= ``MODEL.GATE.SKIP_THRESHOLD``: the routes inference
    skips), and both per route kind ``routing/<keep|up|down>/...`` with its histogram
    ``routing/<kind>/gates``."""

    name = "routing"

    def applies(self, model):
        backbone = getattr(model, "backbone", None)
        return hasattr(backbone, "record_gates") and hasattr(model, "last_cost")

    def start(self, model):
        self._was = model.backbone.record_gates
        model.backbone.record_gates = True

    def stop(self, model):
        model.backbone.record_gates = self._was

    def collect(self, model):
        from dl_lib.modeling.dynamic_routing.routes import route_names

        cost = model.last_cost
        if cost is None or not cost.gates:
            return {}
        thr = float(getattr(model.backbone, "skip_threshold", 1e-4))
        by_kind: Dict[str, List[torch.Tensor]] = {}
        for cell, g in cost.gates.items():
            g = g.detach().float().cpu()
            for j, kind in enumerate(route_names(cell, g.shape[1])):
                by_kind.setdefault(kind, []).append(g[:, j])
        every = torch.cat([v for vs in by_kind.values() for v in vs])
        out: Stats = {"routing/gates": every, "routing/gate_mean": float(every.mean()),
                      "routing/closed_fraction": float((every <= thr).float().mean())}
        for kind, vs in by_kind.items():
            v = torch.cat(vs)
            out[f"routing/{kind}/gates"] = v
            out[f"routing/{kind}/gate_mean"] = float(v.mean())
            out[f"routing/{kind}/closed_fraction"] = float((v <= thr).float().mean())
        return out


@register_stats_reader
class AnytimeMaskStats(StatsReader):
    """ADP-C (an anytime model with ``MODEL.MASK.USE``): per masked segment j (the convolutions
    after exit j, j = 0 .. STOP-2), the fraction of pixels each image of the step computes (the
    uncertain ones of exit j), read from the model's ``ForwardState`` when exit j + 1 runs:
    ``anytime/after_exit{j}/computed_fraction`` (mean over the batch) and its histogram over the
    images ``anytime/after_exit{j}/computed``."""

    name = "anytime"

    def applies(self, model):
        return (bool(getattr(model, "mask_use", False))
                and callable(getattr(model, "forward_exits", None))
                and callable(getattr(getattr(model, "head", None), "exit", None)))

    def start(self, model):
        from dl_lib.modeling.anytime.confidence import current_state

        self._fractions: Dict[int, torch.Tensor] = {}
        self._handles = []
        for k in range(2, int(model.stop_exit) + 1):
            def hook(module, inputs, output, j=k - 2):
                state = current_state()
                masks = getattr(state, "masks", None)
                if masks is not None:  # the last forward of the step wins (not accumulated)
                    self._fractions[j] = masks.computed_fraction(output.shape[-2:]).detach().cpu()
            self._handles.append(model.head.exit(k).register_forward_hook(hook))

    def stop(self, model):
        for h in self._handles:
            h.remove()
        self._handles = []

    def collect(self, model):
        out: Stats = {}
        for j, f in sorted(self._fractions.items()):
            out[f"anytime/after_exit{j}/computed"] = f.float()
            out[f"anytime/after_exit{j}/computed_fraction"] = float(f.float().mean())
        return out


@register_stats_reader
class ChannelMaskStats(StatsReader):
    """Channel masks (ACoSP): histograms of the current mask values, ``pruning/masks`` over all
    masked convolutions and ``pruning/<conv path>/mask`` each. The scalars (chosen / pruned /
    undecided / temperature) are ``PruningHook``'s ``pruning/*``, not repeated here."""

    name = "pruning"

    def applies(self, model):
        from dl_lib.modeling.pruning.pruner import channel_masks

        return bool(channel_masks(model))

    def collect(self, model):
        from dl_lib.modeling.pruning.pruner import channel_masks

        out: Stats = {}
        values = []
        for path, mask in channel_masks(model).items():
            v = mask.current_mask().detach().float().flatten().cpu()
            out[f"pruning/{path}/mask"] = v
            values.append(v)
        if values:
            out["pruning/masks"] = torch.cat(values)
        return out


def record_stats(storage: EventStorage, stats: Mapping, prefix: str = "stats/",
                 source: str = "") -> None:
    """``stats`` (name -> number, 0-d / one-element tensor: scalar; larger tensor: histogram)
    into ``storage`` under ``prefix``."""
    for name, value in stats.items():
        if torch.is_tensor(value) and value.numel() > 1:
            storage.put_histogram(prefix + name, value)
        elif torch.is_tensor(value) or isinstance(value, (int, float, np.number)):
            v = float(value.detach().reshape(-1)[0]) if torch.is_tensor(value) else float(value)
            if math.isfinite(v):
                storage.put_scalar(prefix + name, v, smoothing_hint=False)
        elif isinstance(value, np.ndarray):
            storage.put_histogram(prefix + name, torch.from_numpy(value))
        else:
            raise TypeError(f"training statistic {name!r}{f' of {source}' if source else ''} is a "
                            f"{type(value).__name__}; give a number or a tensor")


class TrainingStatsHook(HookBase):
    """Every ``period`` iterations (the writers' ``LOG_PERIOD``) and at the last one, records the
    statistics of the training step (see the module doc) under ``stats/`` of the storage.

    ``DefaultTrainer`` registers it on the main process right after the LR scheduler, so it
    reads the step's own forward (PreciseBN's and evaluation's forwards come later); readers
    start in ``before_step`` of those iterations only.
    """

    def __init__(self, model: nn.Module, period: int,
                 readers: Optional[Sequence[StatsReader]] = None):
        self._model = model
        self._period = max(1, int(period))
        self._readers = list(readers) if readers is not None else stats_readers()
        self._active: List[StatsReader] = []

    @classmethod
    def for_model(cls, model: nn.Module, period: int) -> Optional["TrainingStatsHook"]:
        """The hook with the registered readers that apply to ``model``; None when none does."""
        readers = [r for r in stats_readers() if r.applies(_unwrap(model))]
        return cls(model, period, readers) if readers else None

    def _due(self) -> bool:
        it = self.trainer.iter
        return (it + 1) % self._period == 0 or it == self.trainer.max_iter - 1

    def before_train(self):
        model = _unwrap(self._model)
        self._readers = [r for r in self._readers if r.applies(model)]
        if self._readers:
            logger.info("TensorBoard training statistics (stats/): "
                        + ", ".join(r.name for r in self._readers))

    def before_step(self):
        self._active = []
        if not self._readers or not self._due():
            return
        model = _unwrap(self._model)
        for r in self._readers:
            r.start(model)
            self._active.append(r)

    def after_step(self):
        model = _unwrap(self._model)
        try:
            for r in self._active:
                record_stats(self.trainer.storage, r.collect(model), source=r.name)
        finally:
            self._stop_all(model)

    def after_train(self):
        self._stop_all(_unwrap(self._model))  # a step that raised left them running

    def _stop_all(self, model):
        active, self._active = self._active, []
        for r in active:
            r.stop(model)

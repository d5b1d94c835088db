"""The evaluator protocol and the loop that feeds a model's outputs to it.

Every rank calls :func:`inference_on_dataset` on its shard of the data (``InferenceSampler``: no
padding, no duplicates); the evaluator gathers its state to the main process in ``evaluate()``.
"""
import datetime
import logging
import statistics
import time
from collections import OrderedDict
from contextlib import ExitStack, contextmanager
from typing import Iterable, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from dl_lib.analysis.cost_tracker import CostTracker, check_conventions
from dl_lib.analysis.costs import summarize_costs
from dl_lib.utils import comm
from dl_lib.utils.logger import log_every_n_seconds

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "inference_on_dataset", "inference_context"]

logger = logging.getLogger(__name__)

# seconds between two progress lines
PROGRESS_PERIOD_S = 5.0


class DatasetEvaluator:
    """Accumulates (inputs, outputs) pairs and turns them into metrics.

    ``reset()`` before a pass; ``process(inputs, outputs)`` per batch (lists of the model's input
    and output dicts, same length); ``evaluate()`` after the pass: a dict of results on the main
    process (``{task: {metric: float}}``), ``None`` elsewhere. Every rank must call ``evaluate()``
    since distributed evaluators gather in it.
    """

    def reset(self) -> None:
        pass

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        pass

    def evaluate(self) -> Optional[dict]:
        return None


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators run side by side; results are merged (a task name may appear once)."""

    def __init__(self, evaluators: Iterable[DatasetEvaluator]):
        super().__init__()
        self._evaluators = list(evaluators)

    def reset(self):
        for e in self._evaluators:
            e.reset()

    def process(self, inputs, outputs):
        for e in self._evaluators:
            e.process(inputs, outputs)

    def evaluate(self):
        results = OrderedDict()
        for e in self._evaluators:
            r = e.evaluate()
            if not comm.is_main_process() or r is None:
                continue
            for k, v in r.items():
                if k in results:
                    raise KeyError(f"DatasetEvaluators: two evaluators both returned results "
                                   f"under {k!r} ({type(e).__name__} is the second); give them "
                                   "distinct task names")
                results[k] = v
        return results if comm.is_main_process() else None


@contextmanager
def inference_context(model: nn.Module):
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _sync_device(model):
    # CUDA runs asynchronously: without a sync the compute timer would only measure the launch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _device_of(model: nn.Module) -> str:
    """Where the model runs, for the latency record: ``"cuda:0 (NVIDIA H200)"``, ``"cpu (2
    threads)"``."""
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def _exit_times(outputs: List[dict]) -> List[List[float]]:
    """The ``"exit_ms"`` of every output that has one: per image, the cumulative milliseconds
    until each exit's logits were ready (cheapest exit first)."""
    rows = []
    for out in outputs:
        times = out.get("exit_ms") if isinstance(out, dict) else None
        if times is not None:
            rows.append([float(t) for t in times])
    return rows


def _median_per_exit(rows: List[List[float]]) -> List[float]:
    """Per exit k, the median of ``row[k]`` over the rows that reach exit k."""
    num_exits = max((len(r) for r in rows), default=0)
    return [statistics.median([r[k] for r in rows if len(r) > k]) for k in range(num_exits)]


def _summarize_latency(image_ms: List[float], device: str, with_costs: bool,
                       exit_ms: Sequence[Sequence[float]] = ()) -> dict:
    """Per-image compute times of all ranks -> ``{"ms_per_image": median, ...}`` on the main one;
    with ``exit_ms`` (one row of per-exit times per timed image) also ``"exit_ms_per_image"``."""
    gathered = comm.gather((image_ms, [list(r) for r in exit_ms]))
    if not comm.is_main_process():
        return {}
    times = [t for part, _ in gathered for t in part]
    if not times:
        return {}
    summary = {"ms_per_image": statistics.median(times),
               "mean_ms_per_image": statistics.fmean(times), "num_images": len(times),
               "device": device, "with_cost_counting": with_costs}
    note = " (includes counting TEST.COST_CONVENTIONS)" if with_costs else ""
    logger.info(f"Latency per image on {device}: median {summary['ms_per_image']:.2f} ms, mean "
                f"{summary['mean_ms_per_image']:.2f} ms over {len(times)} timed images{note}")
    per_exit = _median_per_exit([r for _, part in gathered for r in part])
    if per_exit:
        summary["exit_ms_per_image"] = per_exit
        logger.info(f"Latency per image until each exit on {device} (median): "
                    + ", ".join(f"exit{k} {t:.2f} ms" for k, t in enumerate(per_exit)))
    return summary


def _executed_cost(model: nn.Module, inputs: List[dict], conventions: Sequence[str], costs: list):
    """``model(inputs)`` under a :class:`CostTracker`; appends {convention: GFLOPs} per image."""
    with CostTracker(model, conventions, num_images=len(inputs)) as tracker:
        outputs = model(inputs)
    costs.extend(tracker.per_image())
    return outputs


def _summarize_executed(costs: list, conventions: Sequence[str]) -> dict:
    """Per-image costs of all ranks -> ``{convention: {"mean", "min", "max"}}`` on the main one."""
    gathered = comm.gather(costs)
    if not comm.is_main_process():
        return {}
    summary = summarize_costs([c for part in gathered for c in part])
    for conv, stats in summary.items():
        logger.info(f"Executed cost per image under {conv!r}: mean {stats['mean']:.6g}, min "
                    f"{stats['min']:.6g}, max {stats['max']:.6g} (GFLOPs of that convention)")
    return {conv: summary[conv] for conv in conventions if conv in summary}


def inference_on_dataset(model: nn.Module, data_loader: Iterable,
                         evaluator: Union[DatasetEvaluator, List[DatasetEvaluator], None],
                         cost_conventions: Sequence[str] = ()):
    """Run ``model`` on every batch of ``data_loader`` and evaluate its outputs.

    ``model`` follows the detectron2 contract (list of dicts in, list of dicts out); it runs
    in eval mode under ``torch.no_grad()`` (its mode is restored afterwards). Logs progress every
    few seconds (images done/total, seconds per image, ETA) and, at the end, total and pure
    compute time. The first few iterations are excluded from the timing (warm-up).

    ``cost_conventions`` (``TEST.COST_CONVENTIONS``; empty = off): conventions of
    :mod:`dl_lib.analysis` in which the executed cost of every image is counted while the model
    runs (a :class:`~dl_lib.analysis.CostTracker` around each batch; masked convolutions cost
    their active positions). Their mean/min/max over the dataset are added to the results as
    ``{"cost": {convention: {"mean", "min", "max"}}}`` (GFLOPs of that convention), next to the
    model's own ``"flops"`` entries, which the evaluator reports as before. The compute time
    then includes the counting.

    Latency: the model's compute time per image (a batch's time split over its images, device
    synchronised, warm-up batches excluded) is added as ``{"time": {"ms_per_image": median,
    "mean_ms_per_image": mean, "num_images": timed images, "device": "cpu (2 threads)",
    "with_cost_counting": whether cost_conventions were counted meanwhile}}``. Outputs of
    multi-exit models may carry ``"exit_ms"`` (per image, cumulative milliseconds from the start
    of the forward until each exit's logits were ready, cheapest first); their per-exit median
    over the timed images of every rank is added as ``"exit_ms_per_image"`` (a list).

    Returns ``evaluator.evaluate()``: ``{"sem_seg": {"mIoU": ...}, ...}`` on the main process,
    ``None`` (or ``{}``) elsewhere. Every rank must call this function.
    """
    cost_conventions = check_conventions(cost_conventions, "TEST.COST_CONVENTIONS")
    costs: list = []
    num_devices = comm.get_world_size()
    try:
        total = len(data_loader)  # this rank's share
    except TypeError:
        total = None
    logger.info(f"Start inference on {total if total is not None else 'an unknown number of'} "
                f"batches (this process; {num_devices} process(es) in all)")

    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif isinstance(evaluator, (list, tuple)):
        evaluator = DatasetEvaluators(evaluator)
    evaluator.reset()

    num_warmup = min(5, (total or 1) - 1) if total else 0
    start_time = time.perf_counter()
    total_compute = total_data = total_eval = 0.0
    n_images = n_timed = 0
    image_ms: List[float] = []  # compute time of each timed image (its batch's share)
    exit_ms: List[List[float]] = []  # per timed image, the model's own times until each exit
    with ExitStack() as stack:
        stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())
        data_start = time.perf_counter()
        for idx, inputs in enumerate(data_loader):
            total_data += time.perf_counter() - data_start
            if idx == num_warmup:
                start_time = time.perf_counter()
                total_compute = total_data = total_eval = 0.0
                n_timed = 0

            compute_start = time.perf_counter()
            if cost_conventions:
                outputs = _executed_cost(model, inputs, cost_conventions, costs)
            else:
                outputs = model(inputs)
            _sync_device(model)
            compute = time.perf_counter() - compute_start
            total_compute += compute
            if idx >= num_warmup and len(inputs):
                image_ms.extend([1e3 * compute / len(inputs)] * len(inputs))
                exit_ms.extend(_exit_times(outputs))

            eval_start = time.perf_counter()
            evaluator.process(inputs, outputs)
            total_eval += time.perf_counter() - eval_start

            n_images += len(inputs)
            n_timed += 1
            done = idx + 1
            if total:
                per_iter = (time.perf_counter() - start_time) / max(n_timed, 1)
                eta = datetime.timedelta(seconds=int(per_iter * (total - done)))
                log_every_n_seconds(
                    logging.INFO,
                    f"Inference done {done}/{total}. Data {total_data / n_timed:.4f} s/iter. "
                    f"Inference {total_compute / n_timed:.4f} s/iter. Eval "
                    f"{total_eval / n_timed:.4f} s/iter. Total {per_iter:.4f} s/iter. ETA={eta}",
                    n=PROGRESS_PERIOD_S)
            data_start = time.perf_counter()

    total_time = time.perf_counter() - start_time
    logger.info(
        f"Total inference time: {datetime.timedelta(seconds=int(total_time))} "
        f"({total_time / max(n_timed, 1):.6f} s/iter over {n_timed} timed iterations, "
        f"{n_images} images on this process, {num_devices} process(es))")
    logger.info(
        f"Total inference pure compute time: {datetime.timedelta(seconds=int(total_compute))} "
        f"({total_compute / max(n_timed, 1):.6f} s/iter)")

    results = evaluator.evaluate()
    # an evaluator with nothing to report returns None; callers may still index the result
    if results is None:
        results = {}
    latency = _summarize_latency(image_ms, _device_of(model), bool(cost_conventions), exit_ms)
    if comm.is_main_process() and latency:
        results["time"] = latency
    if cost_conventions:
        cost = _summarize_executed(costs, cost_conventions)
        if comm.is_main_process():
            results["cost"] = cost
    return results

"""Training metrics: the per-run ``EventStorage`` and the writers that print or save it.

Inside training, any code may record a number with::

    from dl_lib.utils.events import get_event_storage
    get_event_storage().put_scalar("real_flops", 12.3)
    get_event_storage().put_histogram("stats/gates", gate_values)  # TensorBoard only

Writers (``CommonMetricPrinter``, ``JSONWriter``, ``TensorboardXWriter``) read the storage every
``LOG_PERIOD`` iterations; ``dl_lib.engine.hooks.PeriodicWriter`` calls them.
"""
import datetime
import json
import logging
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

import torch
from fvcore.common.history_buffer import HistoryBuffer

__all__ = [
    "EventStorage", "get_event_storage", "EventWriter", "JSONWriter", "TensorboardXWriter",
    "CommonMetricPrinter",
]

_CURRENT_STORAGE_STACK: List["EventStorage"] = []


def get_event_storage() -> "EventStorage":
    """The innermost ``EventStorage`` in use (``with EventStorage(...):``); errors outside one."""
    if not _CURRENT_STORAGE_STACK:
        raise RuntimeError(
            "get_event_storage() was called outside training: wrap the code in "
            "`with EventStorage(start_iter):` (the trainers do this in train())."
        )
    return _CURRENT_STORAGE_STACK[-1]


class EventStorage:
    """Scalars (with history) and images recorded during training, keyed by name.

    ``iter`` is the current iteration; the trainer sets it before each step. A scalar recorded
    with ``smoothing_hint=True`` is written as the median of the last ``window_size`` values
    (noisy per-batch losses); ``False`` writes the latest value (the learning rate, timings
    computed elsewhere).
    """

    def __init__(self, start_iter: int = 0):
        self._history: Dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: Dict[str, bool] = {}
        self._latest_scalars: Dict[str, Tuple[float, int]] = {}
        self._iter = start_iter
        self._start_iter = start_iter
        self._current_prefix = ""
        self._vis_data: List[Tuple[str, torch.Tensor, int]] = []
        self._histograms: List[dict] = []

    # ---- recording -------------------------------------------------------------------------
    def put_scalar(self, name: str, value, smoothing_hint: bool = True,
                   cur_iter: Optional[int] = None) -> None:
        """Record ``value`` (a number or a 0-d tensor) for ``name`` at ``cur_iter`` (default: now)."""
        name = self._current_prefix + name
        cur_iter = self._iter if cur_iter is None else int(cur_iter)
        value = float(value.detach().item() if torch.is_tensor(value) else value)
        self._history[name].update(value, cur_iter)
        self._latest_scalars[name] = (value, cur_iter)
        existing = self._smoothing_hints.get(name)
        if existing is not None and existing != smoothing_hint:
            raise ValueError(f"Scalar '{name}' was recorded with different smoothing hints.")
        self._smoothing_hints[name] = smoothing_hint

    def put_scalars(self, *, smoothing_hint: bool = True, cur_iter: Optional[int] = None,
                    **kwargs) -> None:
        """``put_scalar`` for each keyword, e.g. ``put_scalars(loss_sem_seg=0.7, lr=0.01)``."""
        for k, v in kwargs.items():
            self.put_scalar(k, v, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def put_image(self, img_name: str, img_tensor: torch.Tensor) -> None:
        """Queue a C×H×W float image in [0, 1] (RGB) for TensorBoard at the current iteration."""
        self._vis_data.append((self._current_prefix + img_name, img_tensor, self._iter))

    def clear_images(self) -> None:
        """Drop queued images (writers call this once they have written them)."""
        self._vis_data = []

    def put_histogram(self, name: str, values, bins: int = 100) -> None:
        """Queue a histogram of ``values`` (a tensor or array of any shape; non-finite values
        are left out) for TensorBoard at the current iteration. Only the ``bins`` counts and the
        summary numbers are kept, not the values; an empty (or all non-finite) input is skipped."""
        t = torch.as_tensor(values).detach().flatten().to("cpu", torch.float64)
        t = t[torch.isfinite(t)]
        if t.numel() == 0:
            return
        lo, hi = float(t.min()), float(t.max())
        top = hi if hi > lo else lo + max(abs(lo) * 1e-6, 1e-12)  # one value: one narrow bucket
        counts = torch.histc(t, bins=bins, min=lo, max=top)
        limits = torch.linspace(lo, top, bins + 1)[1:]
        self._histograms.append(dict(
            tag=self._current_prefix + name, min=lo, max=hi, num=int(t.numel()),
            sum=float(t.sum()), sum_squares=float((t * t).sum()), bucket_limits=limits.tolist(),
            bucket_counts=counts.tolist(), global_step=self._iter))

    @property
    def histograms(self) -> List[dict]:
        """Queued histograms: keyword arguments of ``SummaryWriter.add_histogram_raw``."""
        return self._histograms

    def clear_histograms(self) -> None:
        self._histograms = []

    # ---- reading ---------------------------------------------------------------------------
    def history(self, name: str) -> HistoryBuffer:
        """The ``HistoryBuffer`` of ``name`` (values with iterations; median/avg/global_avg)."""
        if name not in self._history:
            raise KeyError(f"No history for metric '{name}'. Known: {sorted(self._history)}")
        return self._history[name]

    def histories(self) -> Dict[str, HistoryBuffer]:
        return self._history

    def latest(self) -> Dict[str, Tuple[float, int]]:
        """name -> (latest value, iteration it was recorded at)."""
        return self._latest_scalars

    def latest_with_smoothing_hint(self, window_size: int = 20) -> Dict[str, Tuple[float, int]]:
        """Like ``latest`` but smoothed scalars give the median of their last ``window_size``."""
        out = {}
        for k, (v, itr) in self._latest_scalars.items():
            if self._smoothing_hints[k]:
                v = self._history[k].median(window_size)
            out[k] = (v, itr)
        return out

    def smoothing_hints(self) -> Dict[str, bool]:
        return self._smoothing_hints

    @property
    def vis_data(self):
        return self._vis_data

    # ---- iteration -------------------------------------------------------------------------
    @property
    def iter(self) -> int:
        return self._iter

    @iter.setter
    def iter(self, val: int) -> None:
        self._iter = int(val)

    @property
    def start_iter(self) -> int:
        """The first iteration of this run (after a resume: the one after the checkpoint's)."""
        return self._start_iter

    @property
    def iteration(self) -> int:  # detectron2 spelling
        return self._iter

    def step(self) -> None:
        self._iter += 1

    @contextmanager
    def name_scope(self, name: str):
        """Prefix every scalar recorded inside the block with ``name/``."""
        old = self._current_prefix
        self._current_prefix = name.rstrip("/") + "/"
        try:
            yield
        finally:
            self._current_prefix = old

    # ---- checkpointing ---------------------------------------------------------------------
    def state_dict(self, max_values: int = 1000) -> dict:
        """The last ``max_values`` values of every scalar's history (with their iterations,
        running averages and smoothing hints), so that the medians written after a resume equal
        those of an uninterrupted run. Tensors and plain values: loads with weights_only."""
        histories = {}
        for name, buf in self._history.items():
            pairs = buf.values()[-max_values:]
            histories[name] = {
                "values": torch.tensor([v for v, _ in pairs], dtype=torch.float64),
                "iters": torch.tensor([i for _, i in pairs], dtype=torch.float64),
                "count": buf._count, "global_avg": float(buf._global_avg)}
        return {"histories": histories, "smoothing_hints": dict(self._smoothing_hints)}

    def load_state_dict(self, state: dict) -> None:
        """Restore the histories of :meth:`state_dict`; ``latest()`` stays empty, so writers
        only write what this run records."""
        for name, h in state.get("histories", {}).items():
            buf = HistoryBuffer()
            buf._data = [(float(v), _as_iter(i)) for v, i in zip(h["values"].tolist(), h["iters"].tolist())]
            buf._count, buf._global_avg = int(h["count"]), float(h["global_avg"])
            self._history[name] = buf
        self._smoothing_hints.update(state.get("smoothing_hints", {}))

    def __enter__(self) -> "EventStorage":
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        assert _CURRENT_STORAGE_STACK[-1] is self
        _CURRENT_STORAGE_STACK.pop()


def _as_iter(i: float):
    return int(i) if float(i).is_integer() else i


class EventWriter:
    """Base class: ``write()`` reads the current ``EventStorage``; ``close()`` releases files."""

    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JSONWriter(EventWriter):
    """Appends one JSON object per iteration to ``json_file`` (``OUTPUT_DIR/metrics.json``).

    Each line is ``{"iteration": i, name: value, ...}`` holding every scalar recorded at that
    iteration since the previous write; smoothed scalars are medians over ``window_size``.
    Read back with ``[json.loads(l) for l in open(path)]``.

    The file is opened on the first write: lines of iterations at or after the storage's
    ``start_iter`` are then removed (atomically), since this run computes those iterations
    again: after ``--resume`` each iteration appears once, and a new run from 0 starts a new file.
    (A kill after a checkpoint was saved but before the writer, which runs after the
    checkpointer, wrote that iteration loses its line; no line is ever duplicated.)
    """

    def __init__(self, json_file: str, window_size: int = 20):
        os.makedirs(os.path.dirname(os.path.abspath(json_file)), exist_ok=True)
        self._path = json_file
        self._file = None
        self._window_size = window_size
        self._last_write = -1

    def _open(self, start_iter: int) -> None:
        if os.path.exists(self._path):
            with open(self._path) as f:
                lines = f.readlines()
            kept = [l for l in lines if _line_iteration(l) < start_iter]
            if len(kept) != len(lines):
                logging.getLogger(__name__).info(
                    f"{self._path}: removed {len(lines) - len(kept)} lines of iterations >= "
                    f"{start_iter}, which this run computes again")
                tmp = f"{self._path}.tmp.{os.getpid()}"
                with open(tmp, "w") as f:
                    f.writelines(kept if not kept or kept[-1].endswith("\n")
                                 else kept[:-1] + [kept[-1] + "\n"])
                os.replace(tmp, self._path)
        self._file = open(self._path, "a")
        self._last_write = max(self._last_write, start_iter - 1)

    def write(self) -> None:
        storage = get_event_storage()
        if self._file is None:
            self._open(storage.start_iter)
        by_iter: Dict[int, Dict[str, float]] = defaultdict(dict)
        for k, (v, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:  # each iteration's values are written once
                by_iter[itr][k] = v
        if not by_iter:
            return
        for itr in sorted(by_iter):
            self._file.write(json.dumps({"iteration": itr, **by_iter[itr]}, sort_keys=True) + "\n")
        self._file.flush()
        try:
            os.fsync(self._file.fileno())
        except OSError:  # some network file systems refuse fsync; the flush is enough there
            pass
        self._last_write = max(by_iter)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _line_iteration(line: str) -> float:
    """The iteration of a metrics.json line; a line cut short by a kill counts as after every
    iteration (it is removed)."""
    try:
        return float(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


class TensorboardXWriter(EventWriter):
    """Writes scalars, queued images and histograms to TensorBoard event files in ``log_dir``.

    The event file is created on the first write with ``purge_step`` = the storage's
    ``start_iter`` (when > 0): TensorBoard then hides the events of older files at iterations a
    resumed run computes again (the files themselves are kept)."""

    def __init__(self, log_dir: str, window_size: int = 20, **kwargs):
        self._log_dir, self._kwargs = log_dir, kwargs
        self._writer = None
        self._window_size = window_size
        self._last_write = -1

    def write(self) -> None:
        storage = get_event_storage()
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # heavy import, only when used

            kwargs = dict(self._kwargs)
            if storage.start_iter > 0:
                kwargs.setdefault("purge_step", storage.start_iter)
            self._writer = SummaryWriter(self._log_dir, **kwargs)
        new_last = self._last_write
        for k, (v, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:
                self._writer.add_scalar(k, v, itr)
                new_last = max(new_last, itr)
        self._last_write = new_last
        if storage.vis_data:
            for name, img, itr in storage.vis_data:
                self._writer.add_image(name, img, itr)
            storage.clear_images()
        if storage.histograms:
            for params in storage.histograms:
                self._writer.add_histogram_raw(**params)
            storage.clear_histograms()
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class CommonMetricPrinter(EventWriter):
    """Prints one console line: ETA, iteration, loss terms, timings, lr and max GPU memory.

    The ETA uses the average iteration time (``time`` scalar from ``IterationTimer``) times the
    iterations left to ``max_iter``.
    """

    def __init__(self, max_iter: Optional[int] = None, window_size: int = 20):
        self.logger = logging.getLogger("dl_lib.utils.events")
        self._max_iter = max_iter
        self._window_size = window_size
        self._last_write: Optional[Tuple[int, float]] = None

    def _eta(self, storage: EventStorage) -> Optional[str]:
        if self._max_iter is None:
            return None
        iteration = storage.iter
        try:
            seconds = storage.history("time").median(1000) * (self._max_iter - iteration - 1)
            storage.put_scalar("eta_seconds", seconds, smoothing_hint=False)
        except KeyError:
            # No iteration time yet: estimate from wall time between two writes.
            seconds = None
            if self._last_write is not None:
                per_iter = (time.perf_counter() - self._last_write[1]) / max(
                    iteration - self._last_write[0], 1)
                seconds = per_iter * (self._max_iter - iteration - 1)
            self._last_write = (iteration, time.perf_counter())
        return None if seconds is None else str(datetime.timedelta(seconds=int(seconds)))

    def write(self) -> None:
        storage = get_event_storage()
        iteration = storage.iter
        if self._max_iter is not None and iteration == self._max_iter:
            return  # after training the hooks write once more; nothing new to print

        def fmt(name, fmt_str="{:.4f}"):
            try:
                return fmt_str.format(storage.history(name).median(self._window_size))
            except KeyError:
                return None

        eta = self._eta(storage)
        try:
            lr = "{:.5g}".format(storage.history("lr").latest())
        except KeyError:
            lr = "N/A"
        losses = "  ".join(
            f"{k}: {h.median(self._window_size):.4g}"
            for k, h in storage.histories().items() if "loss" in k
        )
        extras = "  ".join(
            f"{k}: {h.median(self._window_size):.4g}"
            for k, h in storage.histories().items()
            if "loss" not in k and k not in ("time", "data_time", "lr", "eta_seconds")
            and storage.smoothing_hints().get(k, True) and "/" not in k
        )
        max_mem = None
        if torch.cuda.is_available():
            max_mem = torch.cuda.max_memory_allocated() / 1024.0 / 1024.0
        parts = [
            f"eta: {eta}" if eta else "",
            f"iter: {iteration}",
            losses,
            extras,
            f"time: {fmt('time')}" if fmt("time") else "",
            f"data_time: {fmt('data_time')}" if fmt("data_time") else "",
            f"lr: {lr}",
            f"max_mem: {max_mem:.0f}M" if max_mem is not None else "",
        ]
        self.logger.info("  ".join(p for p in parts if p))

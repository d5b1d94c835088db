"""EventStorage and the writers (console line, metrics.json, TensorBoard)."""
import json
import logging
import os

import pytest
import torch

from dl_lib.utils.events import (
    CommonMetricPrinter,
    EventStorage,
    JSONWriter,
    TensorboardXWriter,
    get_event_storage,
)


def test_get_event_storage_outside_training_is_an_error():
    with pytest.raises(RuntimeError, match="outside training"):
        get_event_storage()


def test_history_smoothing_and_nesting():
    with EventStorage(start_iter=5) as storage:
        assert get_event_storage() is storage
        for i, v in enumerate([1.0, 100.0, 3.0]):
            storage.iter = 5 + i
            storage.put_scalar("loss_a", torch.tensor(v))
            storage.put_scalar("lr", 0.1 * (i + 1), smoothing_hint=False)
        with EventStorage() as inner:
            assert get_event_storage() is inner
        assert get_event_storage() is storage
        assert storage.history("loss_a").values() == [(1.0, 5), (100.0, 6), (3.0, 7)]
        latest = storage.latest_with_smoothing_hint(window_size=3)
        assert latest["loss_a"] == (3.0, 7)  # median of 1, 100, 3
        assert latest["lr"][0] == pytest.approx(0.3)  # not smoothed
        with storage.name_scope("val"):
            storage.put_scalars(mIoU=50.0, smoothing_hint=False)
        assert "val/mIoU" in storage.latest()
        with pytest.raises(ValueError, match="smoothing hints"):
            storage.put_scalar("lr", 1.0)  # smoothing changed
        with pytest.raises(KeyError, match="No history"):
            storage.history("nope")


def test_json_writer_writes_each_iteration_once(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    writer = JSONWriter(str(path), window_size=1)
    with EventStorage() as storage:
        for it in range(3):
            storage.iter = it
            storage.put_scalar("loss_a", float(it))
            if it == 1:
                writer.write()
        writer.write()
        writer.write()  # nothing new
    writer.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [l["iteration"] for l in lines] == [1, 2]
    assert lines[1]["loss_a"] == 2.0


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_common_metric_printer_line():
    printer = CommonMetricPrinter(max_iter=100, window_size=2)
    # A handler on the printer's own logger: "dl_lib" may not propagate to the root (caplog).
    handler, log = _ListHandler(), logging.getLogger("dl_lib.utils.events")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        with EventStorage() as storage:
            storage.iter = 9
            storage.put_scalars(loss_sem_seg=0.5, total_loss=0.5, time=0.25, data_time=0.01,
                                real_flops=12.0)
            storage.put_scalar("lr", 0.01, smoothing_hint=False)
            printer.write()
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    line = handler.records[-1].getMessage()
    assert "iter: 9" in line and "loss_sem_seg: 0.5" in line and "lr: 0.01" in line
    assert "eta: 0:00:22" in line  # 0.25 s * 90 remaining iterations
    assert "real_flops: 12" in line and "time: 0.2500" in line


def test_tensorboard_writer_creates_event_file(tmp_path):
    writer = TensorboardXWriter(str(tmp_path))
    with EventStorage() as storage:
        storage.put_scalar("loss", 1.0)
        storage.put_image("panel", torch.zeros(3, 4, 4))
        writer.write()
        assert storage.vis_data == []
    writer.close()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))

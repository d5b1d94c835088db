"""First-use label conversion (ADE20K layout) when several processes start at once, and after a
conversion was killed midway."""
import multiprocessing as mp
import os
import signal

import numpy as np
import pytest

from dl_lib.data.datasets import common
from dl_lib.data.datasets.ade20k import load_ade20k
from dl_lib.data.datasets.common import CONVERSION_MARKER, read_mask, reduce_zero_label_lut

NUM_MASKS = 40
RGB = np.zeros((6, 8, 3), np.uint8)


def _ade_tree(root, write_png):
    """An ADEChallengeData2016 validation split: NUM_MASKS jpgs and raw masks holding 0..150."""
    rng = np.random.RandomState(0)
    raw = {}
    for i in range(NUM_MASKS):
        stem = f"ADE_val_{i:08d}"
        write_png(root / "images" / "validation" / f"{stem}.jpg", RGB)
        raw[stem] = rng.randint(0, 151, size=(12, 16)).astype(np.uint8)
        write_png(root / "annotations" / "validation" / f"{stem}.png", raw[stem])
    return raw


def _converted_dir(root):
    return root / "annotations_trainIds" / "validation"


def _assert_complete(root, raw):
    out = _converted_dir(root)
    names = sorted(n for n in os.listdir(out) if n.endswith(".png"))
    assert names == sorted(f"{s}.png" for s in raw)
    lut = reduce_zero_label_lut()
    for stem, mask in raw.items():
        np.testing.assert_array_equal(read_mask(str(out / f"{stem}.png")), lut[mask], err_msg=stem)
    assert os.path.isfile(out / CONVERSION_MARKER)
    # no temporary siblings left behind
    assert sorted(os.listdir(out.parent)) == ["validation", "validation.lock"]


def _load_after_barrier(root, barrier, errors):
    barrier.wait()
    try:
        dicts = load_ade20k(root, "val")
        assert len(dicts) == NUM_MASKS
    except BaseException as e:  # reported to the parent, which names it in the failure
        errors.put(f"pid {os.getpid()}: {type(e).__name__}: {e}")
        raise


@pytest.mark.slow  # three spawned interpreters importing torch
def test_three_processes_convert_at_once(datasets_root, write_png):
    root = datasets_root / "ADEChallengeData2016"
    raw = _ade_tree(root, write_png)
    ctx = mp.get_context("spawn")
    barrier, errors = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_load_after_barrier, args=(str(root), barrier, errors))
             for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert [p.exitcode for p in procs] == [0, 0, 0], failures
    _assert_complete(root, raw)


def _convert_until_killed(root, started):
    """Convert with a read_mask that stops (forever) after a few masks, like a run killed midway."""
    read = common.read_mask
    calls = []

    def slow_read(path):
        calls.append(path)
        if len(calls) == 5:
            started.set()
            signal.pause()
        return read(path)

    common.read_mask = slow_read
    load_ade20k(root, "val")


def test_conversion_killed_midway_is_redone(datasets_root, write_png):
    root = datasets_root / "ADEChallengeData2016"
    raw = _ade_tree(root, write_png)
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    proc = ctx.Process(target=_convert_until_killed, args=(str(root), started))
    proc.start()
    try:
        assert started.wait(120), "the converting process did not start"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
    leftovers = [n for n in os.listdir(_converted_dir(root).parent) if ".tmp" in n]
    assert len(leftovers) == 1 and len(os.listdir(_converted_dir(root).parent / leftovers[0])) == 4
    assert not _converted_dir(root).exists()  # never renamed into place half full

    load_ade20k(str(root), "val")
    _assert_complete(root, raw)


def test_folder_without_marker_is_redone(datasets_root, write_png):
    """A folder with every file but no marker (a racing writer's, or an older version's) is not
    taken as done: here one of its masks is wrong."""
    root = datasets_root / "ADEChallengeData2016"
    raw = _ade_tree(root, write_png)
    out = _converted_dir(root)
    for stem in raw:
        write_png(out / f"{stem}.png", np.zeros((12, 16), np.uint8))
    load_ade20k(str(root), "val")
    _assert_complete(root, raw)
    # a complete conversion is reused, not redone
    mtime = os.path.getmtime(out / CONVERSION_MARKER)
    load_ade20k(str(root), "val")
    assert os.path.getmtime(out / CONVERSION_MARKER) == mtime


@pytest.mark.parametrize("change", ["mask added", "other table"])
def test_marker_for_other_inputs_is_redone(tmp_path, write_png, change):
    src, dst = tmp_path / "raw", tmp_path / "conv"
    write_png(src / "a.png", np.array([[0, 1, 2]], np.uint8))
    common.convert_label_dir(str(src), str(dst), reduce_zero_label_lut())
    lut = reduce_zero_label_lut()
    if change == "mask added":
        write_png(src / "b.png", np.array([[3]], np.uint8))
    else:
        lut = np.arange(256, dtype=np.uint8)
    common.convert_label_dir(str(src), str(dst), lut)
    np.testing.assert_array_equal(read_mask(str(dst / "a.png")), lut[[[0, 1, 2]]])
    if change == "mask added":
        np.testing.assert_array_equal(read_mask(str(dst / "b.png")), [[2]])

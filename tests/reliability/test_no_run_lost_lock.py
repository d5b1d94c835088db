"""One run per folder: a live dl_train holds OUTPUT_DIR/.lock for its whole run, a second command
on the folder stops at once naming the holder (pid, host, command, start time), and the lock of a
killed run never blocks the next one. dl_test locks its inference folder the same way."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from dl_lib.engine.run_dir import RunLock
from dl_lib.tools import train_net


def _wait_for_holder(lock_file, pid, proc, timeout=300.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if lock_file.exists() and f"pid: {pid}" in lock_file.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"{lock_file} never named pid {pid}")


def test_second_dl_train_on_a_busy_folder_stops_and_a_dead_holder_does_not_block(
        toy_playground, tmp_path, capsys):
    out = tmp_path / "output" / "Toy" / "Tiny"
    # Process 1: a real dl_train that would run for a long time (no checkpoint, no evaluation).
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(
        [sys.executable, "-m", "dl_lib.tools.train_net", "--playground", toy_playground,
         "SOLVER.LR_SCHEDULER.MAX_ITER", "1000000", "SOLVER.CHECKPOINT_PERIOD", "1000000",
         "DATASETS.TEST", "()", "LOG_PERIOD", "1000000"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_holder(out / ".lock", first.pid, first)
        # Process 2 (this one), even with --resume: refused before it writes anything.
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            train_net.main_train(["--playground", toy_playground, "--resume",
                                  "SOLVER.LR_SCHEDULER.MAX_ITER", "2"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by another training run" in err, err
        assert f"pid {first.pid} on {socket.gethostname()}" in err and "train_net" in err
        assert "started 20" in err and "OUTPUT_DIR" in err
        assert not (out / "metrics.json").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # The killed holder's lock file still names it, but the kernel dropped its flock.
    assert f"pid: {first.pid}" in (out / ".lock").read_text()
    train_net.main_train(["--playground", toy_playground, "--resume", "DATASETS.TEST", "()",
                          "SOLVER.LR_SCHEDULER.MAX_ITER", "2"])
    assert (out / "model_final.pth").is_file()
    assert (out / ".lock").read_text() == ""  # released at the end of the run


def test_dl_test_locks_its_inference_folder(toy_playground, tmp_path, capsys):
    out = tmp_path / "run"
    inference = out / "inference" / "random_init"
    opts = ["--playground", toy_playground, "--random-weights", "OUTPUT_DIR", str(out)]
    with RunLock(str(inference), "dl_test"):  # another open file: flock conflicts like a process
        with pytest.raises(SystemExit) as e:
            train_net.main_test(opts)
        assert e.value.code == 2
        assert f"{inference} is in use by another dl_test: pid {os.getpid()}" in (
            capsys.readouterr().err)
        assert not (inference / "results.json").exists()
    train_net.main_test(opts)  # free again
    assert (inference / "results.json").is_file()


_HOLDER_WITH_A_FORKED_CHILD = """
import os, sys, time
from dl_lib.engine.run_dir import RunLock
lock = RunLock(sys.argv[1]).acquire()  # kept: a collected RunLock closes its file
if os.fork() == 0:  # like a data-loader worker: inherits the open lock file, outlives the parent
    time.sleep(60)
    os._exit(0)
print("locked", flush=True)
time.sleep(60)
"""


def test_a_killed_holder_s_forked_children_do_not_keep_the_lock(tmp_path):
    # `kill -9` of dl_train then an immediate `--resume`: its orphaned loader workers live on for
    # seconds with the lock file open; with flock they kept the lock and the resume was refused.
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER_WITH_A_FORKED_CHILD, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(Exception, match="in use"):
            RunLock(str(tmp_path)).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        RunLock(str(tmp_path)).acquire().release()  # at once, while the child still lives
    finally:
        os.killpg(holder.pid, signal.SIGKILL)


def test_a_second_lock_in_the_same_process_is_refused_and_keeps_the_first(tmp_path):
    first = RunLock(str(tmp_path)).acquire()
    try:
        with pytest.raises(Exception, match="in use"):
            RunLock(str(tmp_path)).acquire()
        # the refusal did not drop the first lock (closing a descriptor drops POSIX locks)
        probe = subprocess.run([sys.executable, "-c", "import sys; from dl_lib.engine.run_dir import "
                                "RunLock; RunLock(sys.argv[1]).acquire()", str(tmp_path)],
                               capture_output=True, text=True, timeout=120)
        assert probe.returncode != 0 and "in use" in probe.stderr, probe.stderr[-2000:]
    finally:
        first.release()

"""A spawned job ends as a whole: a failing worker, Ctrl-C, and a --num-gpus the machine lacks.

* A worker that raises stops the job (non-zero exit, no hang) and the error shown is *that*
  worker's traceback, not a peer's "Connection closed by peer" echo.
* SIGINT to the parent of ``dl_train --num-gpus 2`` stops every worker, exits non-zero, and the
  checkpoint ``last_checkpoint`` names stays loadable.
* ``--num-gpus`` above the CPU cores (Gloo) or the visible GPUs (NCCL) is refused before any
  process starts or ``OUTPUT_DIR`` is touched (exit 2, one line naming the flag and the fix).
"""
import atexit
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dl_lib.engine import launch
from dl_lib.engine.launch import (LaunchError, available_cpu_cores, check_launch,
                                  check_num_processes)
from dl_lib.tools import train_net
from dl_lib.utils import comm

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


# ---- a worker that raises -----------------------------------------------------------------------
def raise_on_rank_1(pid_dir: str) -> None:
    """Rank 1 raises while rank 0 waits in a collective. Rank 1's teardown is slow (as with
    data-loader workers to join), so its peer's broken collective is reported to the parent
    first: the launcher must still name rank 1's error."""
    with open(os.path.join(pid_dir, f"rank{comm.get_rank()}.pid"), "w") as f:
        f.write(str(os.getpid()))
    comm.synchronize()
    if comm.get_rank() == 1:
        atexit.register(time.sleep, 3)
        raise ValueError("bad sample on rank 1: labels/0042.png has value 40")
    comm.synchronize()  # never completes: rank 1 is gone
    time.sleep(120)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _python_env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [HERE, REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


@pytest.mark.slow
def test_failing_worker_stops_the_job_with_its_own_traceback(tmp_path):
    code = ("from dl_lib.engine import launch; import test_distributed_failures as t; "
            f"launch(t.raise_on_rank_1, 2, backend='gloo', args=({str(tmp_path)!r},))")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=_python_env(),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "bad sample on rank 1: labels/0042.png has value 40" in proc.stderr, proc.stderr[-3000:]
    assert "rank 1" in proc.stderr and "failed first" in proc.stderr, proc.stderr[-3000:]
    # the peer's broken collective comes after the cause, as one line
    echo = proc.stderr.find("Connection closed")
    assert echo == -1 or echo > proc.stderr.index("bad sample on rank 1"), proc.stderr[-3000:]
    # rank 0 sat in a collective with a 30-minute timeout: it was stopped, not waited for
    assert time.monotonic() - start < 140
    pids = [int((tmp_path / f"rank{r}.pid").read_text()) for r in (0, 1)]
    assert not any(_alive(p) for p in pids)


# ---- Ctrl-C ---------------------------------------------------------------------------------------
def _dl_train_command():
    script = os.path.join(os.path.dirname(sys.executable), "dl_train")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "dl_lib.tools.train_net"]


def _children(pid: int):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().split(")")[-1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_and_keeps_the_last_checkpoint(toy_playground, tmp_path):
    out = tmp_path / "output" / "Toy" / "Tiny"
    cmd = _dl_train_command() + ["--num-gpus", "2", "MODEL.DEVICE", "cpu",
                                 "SOLVER.LR_SCHEDULER.MAX_ITER", "100000",
                                 "SOLVER.CHECKPOINT_PERIOD", "3", "TEST.EVAL_PERIOD", "0"]
    # Output to files, not pipes: nobody reads a pipe while training runs, and a full one blocks
    # the logging rank.
    stdout, stderr_path = open(tmp_path / "stdout.txt", "w"), tmp_path / "stderr.txt"
    stderr_file = open(stderr_path, "w")
    proc = subprocess.Popen(cmd, cwd=toy_playground, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=stdout, stderr=stderr_file, text=True,
                            start_new_session=True)  # SIGINT reaches the parent only
    workers = []
    try:
        # Generous: only a guard against a hang. The pointer, not a checkpoint file: the fixture
        # keeps 2 checkpoints, so a given one may come and go between two polls.
        deadline = time.monotonic() + 400
        while not (out / "last_checkpoint").exists():  # training is under way
            assert proc.poll() is None, stderr_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "training did not start within 400 s"
            time.sleep(0.2)
        workers = [p for p in _children(proc.pid) if _alive(p)]
        assert len(workers) >= 2, workers  # the two ranks (plus torch's resource tracker)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("dl_train still running 60 s after SIGINT (its workers were not stopped)")
        stderr = stderr_path.read_text()
        assert proc.returncode != 0, stderr[-3000:]
        assert "Interrupted" in stderr and "KeyboardInterrupt" in stderr, stderr[-3000:]
        time.sleep(0.5)
        assert not [p for p in workers if _alive(p)], "workers outlived the parent"
        # the checkpoint the pointer names is complete
        name = (out / "last_checkpoint").read_text().strip()
        ckpt = torch.load(out / name, map_location="cpu", weights_only=False)
        assert ckpt["iteration"] >= 2 and "model" in ckpt and "optimizer" in ckpt
        assert not (out / "model_final.pth").exists()
    finally:
        stdout.close()
        stderr_file.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


# ---- --num-gpus above what the machine has ------------------------------------------------------
@pytest.fixture
def no_spawn(monkeypatch):
    """Fail (instead of starting dozens of processes) if anything is spawned."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"processes were spawned: nprocs={kwargs.get('nprocs')}")

    monkeypatch.setattr(torch.multiprocessing, "start_processes", refuse)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_STEP_ID"):
        monkeypatch.delenv(k, raising=False)


def _noop():
    return "ran"


def test_num_gpus_above_cpu_cores_is_refused_by_dl_train(toy_playground, tmp_path, no_spawn,
                                                         capsys):
    too_many = available_cpu_cores() + 1
    with pytest.raises(SystemExit) as exit_info:
        train_net.main_train(["--playground", toy_playground, "--num-gpus", str(too_many),
                              "MODEL.DEVICE", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"--num-gpus {too_many}" in err and f"{available_cpu_cores()} CPU core" in err, err
    assert f"use --num-gpus {available_cpu_cores()} or fewer" in err, err
    assert not (tmp_path / "output").exists()  # nothing written: no log, no config.yaml, no lock


def test_launch_refuses_before_spawning(no_spawn):
    cores = available_cpu_cores()
    with pytest.raises(LaunchError, match=f"--num-gpus {cores + 1} .* {cores} CPU core"):
        launch(_noop, cores + 1, backend="gloo")
    with pytest.raises(LaunchError, match="at least 1"):
        launch(_noop, 0, backend="gloo")
    assert launch(_noop, 1, backend="gloo") == "ran"  # one process runs in place


def test_num_gpus_above_visible_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(LaunchError, match="only 0 GPU.*MODEL.DEVICE cpu"):
        check_num_processes(2, "nccl")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(LaunchError, match="--num-gpus 8 but only 4 GPU.*--num-gpus 4 or fewer"):
        check_num_processes(8, "nccl")
    check_num_processes(4, "nccl")


def test_external_launcher_counts_are_not_checked(monkeypatch):
    """Under torchrun the launcher's process counts win; --num-gpus is ignored, not refused."""
    for k, v in dict(RANK="0", WORLD_SIZE="64", LOCAL_RANK="0").items():
        monkeypatch.setenv(k, v)
    check_launch(64, 1, "gloo")

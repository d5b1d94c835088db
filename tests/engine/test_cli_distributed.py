"""End to end: the real ``dl_train`` with two Gloo CPU processes, killed, then ``--resume``d;
then ``dl_test`` on the final weights. (About 30-60 s on a small machine.)"""
import json
import os
import subprocess
import sys

import pytest

from dl_lib.tools import train_net


def _dl_train_command():
    script = os.path.join(os.path.dirname(sys.executable), "dl_train")
    if os.path.exists(script):  # the installed console script
        return [script]
    return [sys.executable, "-m", "dl_lib.tools.train_net"]


def _run(args, cwd, env):
    return subprocess.run(_dl_train_command() + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_two_processes_killed_then_resumed_then_tested(toy_playground, tmp_path):
    out = tmp_path / "output" / "Toy" / "Tiny"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOY_KILL_AT_ITER="4")
    opts = ["--num-gpus", "2", "MODEL.DEVICE", "cpu", "SOLVER.LR_SCHEDULER.MAX_ITER", "8",
            "SOLVER.CHECKPOINT_PERIOD", "2"]

    # 1. Rank 0 is SIGKILLed at iteration 4: the job fails, the last checkpoint is iteration 3.
    killed = _run(opts, toy_playground, env)
    assert killed.returncode != 0, killed.stdout[-3000:]
    assert "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    assert not (out / "model_final.pth").exists()
    assert (out / "log.txt.rank1").exists()  # a second process really ran
    log = (out / "log.txt").read_text()
    assert "World size: 2" in log and "training from scratch" in log

    # 2. --resume continues at iteration 4 (not 0) and finishes with an evaluation.
    del env["TOY_KILL_AT_ITER"]
    resumed = _run(["--resume"] + opts, toy_playground, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "Resumed from" in log and "training continues at iteration 4 of 8" in log
    lines = [json.loads(l) for l in (out / "metrics.json").read_text().splitlines()]
    iterations = [l["iteration"] for l in lines if "total_loss" in l]
    assert iterations == [0, 1, 2, 3, 4, 5, 6, 7], iterations  # each iteration once: no restart
    assert "sem_seg/mIoU" in lines[-1]
    assert (out / "model_final.pth").exists()

    # 3. dl_test (always eval-only) on the final weights, in this process; its outputs go to
    # OUTPUT_DIR/inference/model_final/, next to the training run's own results.json.
    train_net.main_test(["--playground", toy_playground, "MODEL.WEIGHTS",
                         str(out / "model_final.pth")])
    results = json.loads((out / "inference" / "model_final" / "results.json").read_text())
    # Not exactly equal: in training each rank evaluated its shard with its own BatchNorm
    # running statistics (MODEL.DDP.BROADCAST_BUFFERS False); here rank 0's saved ones serve all.
    assert results["toy_tiny_val"]["sem_seg"]["mIoU"] == pytest.approx(
        lines[-1]["sem_seg/mIoU"], abs=1.0)

"""Exact kill-and-resume with the real ``dl_train``: a run SIGKILLed at a random iteration and
resumed with ``--resume`` ends bit for bit where an uninterrupted run ends (weights, BN
statistics, optimizer state, LR schedule, metrics.json, evaluation results).

The playground (``tests/fixtures/playground/Reliability/Resume``) uses the library's own train
loader with random augmentation, dropout in the model, PreciseBN and a mid-run evaluation, on
CPU with ``DETERMINISTIC True`` and ``SEED 0``: the data order continues where it stopped (the
sampler is seeked), each sample is augmented under a seed of its stream position and each
iteration starts from a seed of ``(SEED, rank, iteration)``, and the metric histories travel in
the checkpoint. Only wall-clock values (``time``, ``data_time``, ``eta_seconds``) differ.
"""
import json
import os
import random
import subprocess
import sys

import pytest
import torch
from toy_data import without_timing, write_split

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "playground",
                       "Reliability", "Resume")
MAX_ITER, PERIOD = 12, 3  # the fixture's schedule: checkpoints after iterations 2, 5, 8, 11
WALL_CLOCK = ("time", "data_time", "eta_seconds")



def _dl_train(tmp_path, name, *args, kill_at=None):
    """Start ``dl_train`` with outputs under ``tmp_path/name``; output to a file (a pipe would
    be held open by loader workers that outlive a killed parent)."""
    script = os.path.join(os.path.dirname(sys.executable), "dl_train")
    command = [script] if os.path.exists(script) else [
        sys.executable, "-c", "import sys; from dl_lib.tools.train_net import main_train; "
        "sys.exit(main_train())"]
    env = dict(os.environ, OMP_NUM_THREADS="1", DL_OUTPUT_ROOT=str(tmp_path / name),
               RESUME_TINY_DATA=str(tmp_path / "data"))
    env.pop("RESUME_KILL_AT_ITER", None)
    if kill_at is not None:
        env["RESUME_KILL_AT_ITER"] = str(kill_at)
    log = open(tmp_path / f"{name}.{'killed' if kill_at is not None else 'run'}.log", "w")
    proc = subprocess.Popen(command + ["--playground", FIXTURE, *args], cwd=str(tmp_path), env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log.name
    return proc


def _wait(proc, expect_killed=False):
    rc = proc.wait(timeout=300)
    text = open(proc.log_path).read()
    if expect_killed:
        assert rc == -9, f"expected SIGKILL, got {rc}:\n{text[-3000:]}"
    else:
        assert rc == 0, text[-3000:]
    return text


def _metrics(out):
    lines = [json.loads(l) for l in (out / "metrics.json").read_text().splitlines()]
    return [without_timing({k: v for k, v in l.items() if k not in WALL_CLOCK}) for l in lines]


def _assert_same_run(out, ref):
    """Final checkpoint, metrics and results of ``out`` equal those of ``ref`` exactly."""
    a = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    b = torch.load(ref / "model_final.pth", map_location="cpu", weights_only=True)
    assert a["iteration"] == b["iteration"] == MAX_ITER - 1
    assert a["model"].keys() == b["model"].keys()
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different, f"tensors differ from the uninterrupted run: {different}"
    opt_a, opt_b = a["optimizer"], b["optimizer"]
    assert opt_a["param_groups"] == opt_b["param_groups"]  # LR, momentum, weight decay per group
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for i in opt_a["state"]:
        assert torch.equal(opt_a["state"][i]["momentum_buffer"], opt_b["state"][i]["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]

    lines, ref_lines = _metrics(out), _metrics(ref)
    iterations = [l["iteration"] for l in lines if "total_loss" in l]
    assert iterations == list(range(MAX_ITER)), iterations  # each once: cut back on resume
    assert lines == ref_lines  # losses (medians over the window), lr, evaluations: bit for bit
    assert "lr" in lines[-2] and "sem_seg/mIoU" in lines[-1]
    assert without_timing(json.loads((out / "results.json").read_text())) == without_timing(
        json.loads((ref / "results.json").read_text()))


def _last_checkpoint(out):
    return out / (out / "last_checkpoint").read_text().strip()


@pytest.mark.slow
def test_killed_at_random_iterations_then_resumed_equals_an_uninterrupted_run(tmp_path):
    write_split(str(tmp_path / "data"), "train", 8, 0)
    write_split(str(tmp_path / "data"), "val", 2, 1)
    # Kill points drawn from fixed seeds (a red build is a change, never a new draw); one run
    # with 2 loader workers (compared with the 0-worker reference: workers change nothing).
    kill_a = random.Random(11).randrange(PERIOD, MAX_ITER)  # after >= 1 checkpoint
    kill_b = random.Random(12).randrange(2 * PERIOD, MAX_ITER)  # after >= 2 checkpoints
    print(f"kill iterations: a={kill_a}, b={kill_b}")
    workers_b = ("DATALOADER.NUM_WORKERS", "2")
    # The three first runs together: two cores make the test's wall time about two runs'.
    ref = _dl_train(tmp_path, "ref")
    killed_a = _dl_train(tmp_path, "a", kill_at=kill_a)
    killed_b = _dl_train(tmp_path, "b", *workers_b, kill_at=kill_b)
    _wait(ref)
    _wait(killed_a, expect_killed=True)
    _wait(killed_b, expect_killed=True)
    out = {name: tmp_path / name / "Reliability" / "Resume" for name in ("ref", "a", "b")}
    for name, kill in (("a", kill_a), ("b", kill_b)):
        last_done = (kill // PERIOD) * PERIOD - 1  # the last checkpointed iteration before kill
        assert _last_checkpoint(out[name]).name == f"model_{last_done:07d}.pth", (name, kill)
        assert not (out[name] / "model_final.pth").exists()

    # b: the checkpoint last_checkpoint names is truncated (a full disk, a bad copy); --resume
    # falls back to the previous complete one, says so, and still ends exactly like ref.
    damaged = _last_checkpoint(out["b"])
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])

    resumed_a = _dl_train(tmp_path, "a", "--resume")
    resumed_b = _dl_train(tmp_path, "b", "--resume", *workers_b)
    log_a, log_b = _wait(resumed_a), _wait(resumed_b)
    start_a = (kill_a // PERIOD) * PERIOD
    assert f"training continues at iteration {start_a} of {MAX_ITER}" in log_a
    assert f"names {damaged.name}, which cannot be read; resuming from the newest complete " \
           "checkpoint" in log_b
    start_b = (kill_b // PERIOD - 1) * PERIOD  # one checkpoint earlier than the damaged one
    assert f"training continues at iteration {start_b} of {MAX_ITER}" in log_b
    _assert_same_run(out["a"], out["ref"])
    _assert_same_run(out["b"], out["ref"])

"""Command-line mistakes: a flag after the overrides, a folder that is not a playground, a bad
value, CUDA without a GPU, a loss that turns NaN. Each exits non-zero (2 for usage errors) with
one message and writes nothing it should not. Two are checked in real subprocesses of the
installed console scripts, the rest in-process (see docs/RELIABILITY.md)."""
import os
import subprocess
import sys

import pytest

from dl_lib.tools import flops, train_net


def _script(name):
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        pytest.skip(f"console script {name} not installed")
    return path


@pytest.mark.parametrize("main", [train_net.main_train, flops.main], ids=["dl_train", "dl_flops"])
def test_flag_after_the_overrides_is_a_usage_error(toy_playground, capsys, main):
    with pytest.raises(SystemExit) as e:
        main(["--playground", toy_playground, "SOLVER.IMS_PER_BATCH", "4", "--num-gpus", "2"]
             if main is train_net.main_train else
             ["--playground", toy_playground, "MODEL.DEVICE", "cpu", "--size", "32", "32"])
    assert e.value.code == 2
    assert "after the KEY VALUE overrides" in capsys.readouterr().err


@pytest.mark.parametrize("main", [train_net.main_train, train_net.main_test, flops.main],
                         ids=["dl_train", "dl_test", "dl_flops"])
def test_outside_a_playground_names_the_missing_files(tmp_path, monkeypatch, capsys, main):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} is not a playground folder: config.py and net.py missing" in err


def test_non_finite_loss_stops_naming_the_iteration(toy_playground, tmp_path):
    with pytest.raises(FloatingPointError, match=r"Loss became infinite or NaN at iteration \d+: "
                       r"loss_sem_seg=.*BASE_LR"):
        train_net.main_train(["--playground", toy_playground, "SOLVER.OPTIMIZER.BASE_LR", "1e30",
                              "SOLVER.CHECKPOINT_PERIOD", "100", "DATASETS.TEST", "()"])
    assert not (tmp_path / "output" / "Toy" / "Tiny" / "model_final.pth").exists()


def _run(tmp_path, *command, **env):
    environ = dict(os.environ, DL_OUTPUT_ROOT=str(tmp_path / "out"), OMP_NUM_THREADS="1", **env)
    return subprocess.run(list(command), cwd=str(tmp_path), env=environ, capture_output=True,
                          text=True, timeout=300)


def test_console_scripts_exit_2_with_one_line(tmp_path, toy_playground):
    """The installed scripts, as a user runs them: a nonsense value, and CUDA hidden."""
    proc = _run(tmp_path, _script("dl_train"), "--playground", toy_playground,
                "SOLVER.IMS_PER_BATCH", "-2", TOY_DATA_ROOT=str(tmp_path / "data"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "SOLVER.IMS_PER_BATCH = -2: must be an integer >= 1" in lines[0]
    assert not (tmp_path / "out").exists()  # no config.yaml, no log: nothing was started

    proc = _run(tmp_path, _script("dl_flops"), "--playground", toy_playground, "MODEL.DEVICE",
                "cuda", CUDA_VISIBLE_DEVICES="", TOY_DATA_ROOT=str(tmp_path / "data"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("set MODEL.DEVICE cpu."), lines

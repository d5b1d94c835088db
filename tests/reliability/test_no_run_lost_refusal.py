"""A new dl_train never replaces an earlier run: it refuses the folder (exit 2, naming --resume and
--overwrite), and --overwrite moves the earlier run aside byte for byte instead of deleting it."""
import json

import pytest

from dl_lib.tools import train_net

_RUN_FILES = ("config.yaml", "metrics.json", "model_final.pth", "last_checkpoint", "results.json",
              "log.txt")


def _train(folder, *flags):
    train_net.main_train(["--playground", folder, *flags, "SOLVER.LR_SCHEDULER.MAX_ITER", "2"])


def test_new_run_refuses_an_earlier_run_and_overwrite_moves_it_aside(toy_playground, tmp_path,
                                                                     capsys):
    out = tmp_path / "output" / "Toy" / "Tiny"
    _train(toy_playground)
    before = {name: (out / name).read_bytes() for name in _RUN_FILES}

    # 1. No flag: exit 2 before anything is written, naming the folder and both ways out.
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _train(toy_playground)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--resume" in err and "--overwrite" in err, err
    assert err.count("holds an earlier run") == 1  # once, from the parent
    assert {name: (out / name).read_bytes() for name in _RUN_FILES} == before

    # 2. --resume and --overwrite together contradict each other.
    with pytest.raises(SystemExit) as e:
        _train(toy_playground, "--resume", "--overwrite")
    assert e.value.code == 2 and "give one of them" in capsys.readouterr().err

    # 3. --overwrite: the earlier run moves to OUTPUT_DIR.old-<time>/ unchanged; a new run starts.
    _train(toy_playground, "--overwrite")
    (old,) = out.parent.glob("Tiny.old-*")
    assert {name: (old / name).read_bytes() for name in _RUN_FILES} == before
    iterations = [json.loads(l)["iteration"] for l in (out / "metrics.json").read_text().splitlines()]
    assert iterations[0] == 0 and iterations.count(0) == 1  # its own metrics, not appended
    assert f"was moved to {old}" in (out / "log.txt").read_text()
    assert "moved the earlier run" in capsys.readouterr().err

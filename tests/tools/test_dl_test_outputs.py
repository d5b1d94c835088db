"""``dl_test`` after ``dl_train`` on the fixture playground (one process, in this one): its outputs
go to OUTPUT_DIR/inference/<weights name>/, the training run's files stay byte-identical, the
weights load strictly, and no weights is an error that names the run's checkpoints."""
import json
import os

import pytest
import torch

from dl_lib.checkpoint import IncompatibleCheckpointError
from dl_lib.tools import train_net

_TRAINING_FILES = ("config.yaml", "results.json", "log.txt", "metrics.json", "model_final.pth",
                   "last_checkpoint")


@pytest.fixture
def trained(toy_playground, tmp_path):
    """(playground, OUTPUT_DIR) after a 2-iteration dl_train with panels on."""
    train_net.main_train(["--playground", toy_playground, "SOLVER.LR_SCHEDULER.MAX_ITER", "2",
                          "TEST.VIS_NUM_IMAGES", "1"])
    out = tmp_path / "output" / "Toy" / "Tiny"
    assert all((out / name).exists() for name in _TRAINING_FILES)
    return toy_playground, out


def _snapshot(out):
    return {name: (out / name).read_bytes() for name in ("config.yaml", "results.json")}


def test_dl_test_writes_under_inference_and_keeps_the_training_files(trained):
    folder, out = trained
    before = _snapshot(out)
    weights = str(out / "model_final.pth")
    train_net.main_test(["--playground", folder, "MODEL.WEIGHTS", weights, "TEST.VIS_NUM_IMAGES",
                         "1"])
    assert _snapshot(out) == before
    inference = out / "inference" / "model_final"
    for name in ("config.yaml", "results.json", "sem_seg_evaluation.json", "log.txt"):
        assert (inference / name).is_file(), name
    assert list((inference / "vis").iterdir())  # the panels
    assert f"WEIGHTS: {weights}" in (inference / "config.yaml").read_text()
    # Same weights, same data, one process: the training run's final evaluation again.
    trained_result = json.loads(before["results.json"])
    assert json.loads((inference / "results.json").read_text()) == trained_result

    # --resume evaluates the checkpoint last_checkpoint names, into its own folder.
    (inference / "results.json").unlink()
    train_net.main_test(["--playground", folder, "--resume"])
    assert (inference / "results.json").is_file() and _snapshot(out) == before


def test_dl_test_without_weights_names_the_runs_checkpoints(trained, capsys):
    folder, out = trained
    with pytest.raises(SystemExit) as e:
        train_net.main_test(["--playground", folder])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "MODEL.WEIGHTS" in err and str(out / "model_final.pth") in err
    assert "--resume" in err and "--random-weights" in err
    # The explicit opt-in scores the random initialisation, in its own folder.
    train_net.main_test(["--playground", folder, "--random-weights"])
    assert (out / "inference" / "random_init" / "results.json").is_file()


def test_dl_test_loads_strictly_unless_told_otherwise(trained, tmp_path):
    folder, out = trained
    data = torch.load(out / "model_final.pth", weights_only=True)
    data["model"]["body.0.weight"] = torch.zeros(8, 3, 5, 5)  # another kernel size
    broken = str(tmp_path / "broken.pth")
    torch.save(data, broken)
    with pytest.raises(IncompatibleCheckpointError, match=r"broken\.pth.*body\.0\.weight"):
        train_net.main_test(["--playground", folder, "MODEL.WEIGHTS", broken])
    assert not (out / "inference" / "broken" / "results.json").exists()
    train_net.main_test(["--playground", folder, "MODEL.WEIGHTS", broken,
                         "MODEL.WEIGHTS_STRICT", "False"])
    assert (out / "inference" / "broken" / "results.json").is_file()

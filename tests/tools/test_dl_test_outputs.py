"""``dl_test`` after ``dl_train`` on the fixture playground (one process, in this one): its outputs
go to OUTPUT_DIR/inference/<weights name>/, the training run's files stay byte-identical, the
weights load strictly, no MODEL.WEIGHTS means the checkpoint last_checkpoint names, and no
checkpoint at all is an error unless MODEL.WEIGHTS none."""
import json
import os

import pytest
import torch

from dl_lib.checkpoint import IncompatibleCheckpointError
from toy_data import without_timing
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
    assert without_timing(json.loads((inference / "results.json").read_text())) == \
        without_timing(trained_result)  # the measured latency is wall-clock

    # --resume evaluates the checkpoint last_checkpoint names, into its own folder.
    (inference / "results.json").unlink()
    train_net.main_test(["--playground", folder, "--resume"])
    assert (inference / "results.json").is_file() and _snapshot(out) == before


def test_dl_test_without_weights_evaluates_the_last_checkpoint(trained, caplog):
    folder, out = trained
    train_net.main_test(["--playground", folder])  # last_checkpoint names model_final.pth
    assert (out / "inference" / "model_final" / "results.json").is_file()
    assert f"WEIGHTS: {out / 'model_final.pth'}" in (
        out / "inference" / "model_final" / "config.yaml").read_text()
    assert "last_checkpoint names" in (out / "inference" / "model_final" / "log.txt").read_text()


def test_dl_test_without_weights_or_checkpoint_stops_unless_none(toy_playground, tmp_path,
                                                                 capsys):
    empty = tmp_path / "no_run"
    with pytest.raises(SystemExit) as e:
        train_net.main_test(["--playground", toy_playground, "OUTPUT_DIR", str(empty)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "MODEL.WEIGHTS" in err and str(empty / "last_checkpoint") in err
    assert "MODEL.WEIGHTS none" in err
    assert not (empty / "inference").exists()
    # The explicit opt-in scores the random initialisation, in its own folder; --random-weights
    # is its alias.
    for opt_in in (["MODEL.WEIGHTS", "none"], ["--random-weights"]):
        flags, opts = (opt_in, []) if opt_in[0].startswith("--") else ([], opt_in)
        train_net.main_test(["--playground", toy_playground] + flags + ["OUTPUT_DIR", str(empty)]
                            + opts)
        results = empty / "inference" / "random_init" / "results.json"
        assert results.is_file()
        results.unlink()


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

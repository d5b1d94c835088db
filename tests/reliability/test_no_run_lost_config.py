"""config.yaml describes what ran: written only once the model is built and its weights loaded,
never by a launch that failed, and never replaced by a resume (a changed config is recorded
beside it as config.resume-<iter>.yaml)."""
import pytest
import torch
import yaml

from dl_lib.checkpoint import IncompatibleCheckpointError
from dl_lib.tools import train_net


def test_failed_launches_leave_no_config(toy_playground, tmp_path):
    out = tmp_path / "output" / "Toy" / "Tiny"
    (tmp_path / "imagenet.pth").write_text("not used")
    # The tiny model has no backbone to load MODEL.PRETRAINED into: a failure once it is built.
    with pytest.raises(ValueError, match="no `backbone`"):
        train_net.main_train(["--playground", toy_playground, "MODEL.PRETRAINED",
                              str(tmp_path / "imagenet.pth")])
    assert (out / "log.txt").is_file()  # it did start ...
    assert not (out / "config.yaml").exists()  # ... but recorded no config for a run that never was

    # dl_test whose strict load fails: no config.yaml in its inference folder either.
    model = {"body.0.weight": torch.zeros(8, 3, 5, 5)}  # another kernel size
    torch.save({"model": model}, tmp_path / "broken.pth")
    with pytest.raises(IncompatibleCheckpointError):
        train_net.main_test(["--playground", toy_playground, "MODEL.WEIGHTS",
                             str(tmp_path / "broken.pth")])
    assert not (out / "inference" / "broken" / "config.yaml").exists()


def test_resume_keeps_config_and_records_a_changed_one(toy_playground, tmp_path):
    out = tmp_path / "output" / "Toy" / "Tiny"
    opts = ["--playground", toy_playground, "DATASETS.TEST", "()"]
    train_net.main_train(opts + ["SOLVER.LR_SCHEDULER.MAX_ITER", "2"])
    original = (out / "config.yaml").read_bytes()
    assert yaml.safe_load(original)["SOLVER"]["LR_SCHEDULER"]["MAX_ITER"] == 2

    # The same config: nothing new is written (the run already reached MAX_ITER 2).
    train_net.main_train(["--resume"] + opts + ["SOLVER.LR_SCHEDULER.MAX_ITER", "2"])
    assert sorted(p.name for p in out.glob("config*.yaml")) == ["config.yaml"]

    train_net.main_train(["--resume"] + opts + ["SOLVER.LR_SCHEDULER.MAX_ITER", "4"])
    assert (out / "config.yaml").read_bytes() == original
    changed = yaml.safe_load((out / "config.resume-2.yaml").read_text())
    assert changed["SOLVER"]["LR_SCHEDULER"]["MAX_ITER"] == 4
    log = (out / "log.txt").read_text()
    assert "SOLVER.LR_SCHEDULER.MAX_ITER: 2 -> 4" in log

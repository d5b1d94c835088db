"""dl_test without MODEL.WEIGHTS takes the checkpoint last_checkpoint names; a pointer to a file
that is gone stops it (exit 2) naming the pointer, the file and the newest complete checkpoint."""
import pytest
import torch

from dl_lib.tools import train_net


def test_a_pointer_to_a_missing_file_names_the_newest_complete_checkpoint(toy_playground,
                                                                         tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last_checkpoint").write_text("model_0000009.pth")  # deleted by hand, say
    torch.save({"model": {}, "iteration": 3}, run / "model_0000003.pth")
    with pytest.raises(SystemExit) as e:
        train_net.main_test(["--playground", toy_playground, "OUTPUT_DIR", str(run)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert str(run / "last_checkpoint") in err and "model_0000009.pth, which does not exist" in err
    assert f"MODEL.WEIGHTS {run / 'model_0000003.pth'}" in err
    assert not (run / "inference").exists()

"""Bad MODEL.WEIGHTS files: each stops with one message naming the file and what it is, and the
file itself is left as it was. In-process, on tiny models (see docs/RELIABILITY.md)."""
import os
import pickle
import re

import pytest
import torch
from torch import nn

from dl_lib.checkpoint import Checkpointer, CheckpointReadError, IncompatibleCheckpointError
from dl_lib.checkpoint.architecture import architecture_overrides
from dl_lib.tools import flops, train_net


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def _bad_files(folder):
    """name -> (path, pattern the message must match)."""
    good = folder / "good.pth"
    torch.save({"model": _model().state_dict(), "iteration": 3}, good)
    data = good.read_bytes()
    files = {
        "random": (os.urandom(4096), r"is not a torch checkpoint \(4096 bytes"),
        "text": (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n",
                 r"is a text file, not a torch checkpoint \(it starts with 'version https"),
        "empty": (b"", r"is empty \(0 bytes"),
        "truncated": (data[: len(data) // 2], r"is a truncated or corrupted torch checkpoint"),
    }
    out = {}
    for name, (content, pattern) in files.items():
        path = folder / f"{name}.pth"
        path.write_bytes(content)
        out[name] = (str(path), pattern)
    return out


@pytest.mark.parametrize("kind", ["random", "text", "empty", "truncated"])
def test_unreadable_weights_name_the_file_and_what_it_is(tmp_path, kind):
    path, pattern = _bad_files(tmp_path)[kind]
    before = open(path, "rb").read()
    for load in (lambda: Checkpointer(_model()).load(path),
                 lambda: Checkpointer(_model()).resume_or_load(path, resume=False),
                 lambda: architecture_overrides(path)):  # read first by dl_train / build
        with pytest.raises(CheckpointReadError, match=pattern) as e:
            load()
        message = str(e.value)
        assert path in message and "MODEL.WEIGHTS" in message
        # Not torch's advice to unpickle an unknown file, nor its bare KeyError.
        assert "weights_only=False" not in message and "KeyError" not in message
    assert open(path, "rb").read() == before


@pytest.fixture(scope="module")
def torchvision_resnet18(tmp_path_factory):
    """Path of a torchvision ResNet-18 state dict (written once per module)."""
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path_factory.mktemp("torchvision") / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return str(path)


def test_torchvision_state_dict_stops_training_init(torchvision_resnet18):
    """A classifier's state dict matches none of a segmentor's tensors: training from it would
    train a random network, so the init stops (rule: at least half of the model must match)."""
    path = torchvision_resnet18
    with pytest.raises(IncompatibleCheckpointError, match=r"resnet18\.pth matches 0 of the 8 "
                       r"tensors.*MODEL\.PRETRAINED"):
        Checkpointer(_model()).resume_or_load(path, resume=False)
    with pytest.raises(IncompatibleCheckpointError):  # dl_test: strict, as before
        Checkpointer(_model()).load(path, strict=True)


def test_half_matching_weights_still_initialise(tmp_path):
    """Fine-tuning with another head (its tensors differ in shape) is still allowed: 6 of 8
    tensors match."""
    source = _model()
    state = source.state_dict()
    state["2.weight"], state["2.bias"] = torch.zeros(5, 4, 1, 1), torch.zeros(5)  # 5 classes
    path = str(tmp_path / "other_head.pth")
    torch.save({"model": state}, path)
    model = _model()
    assert Checkpointer(model).resume_or_load(path, resume=False) == {}
    assert torch.equal(model[0].weight, source[0].weight)


@pytest.mark.parametrize("kind", ["text", "truncated"])
@pytest.mark.parametrize("tool", ["dl_train", "dl_test", "dl_flops"])
def test_cli_with_a_bad_weights_file_exits_2_before_writing(toy_playground, tmp_path, capsys,
                                                            tool, kind):
    path, pattern = _bad_files(tmp_path)[kind]
    main = {"dl_train": train_net.main_train, "dl_test": train_net.main_test,
            "dl_flops": flops.main}[tool]
    with pytest.raises(SystemExit) as e:
        main(["--playground", toy_playground, "MODEL.WEIGHTS", path])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and path in err and re.search(pattern, err), err
    assert not (tmp_path / "output").exists()  # no run folder, config.yaml or log


def test_dl_train_with_a_torchvision_file_stops(toy_playground, tmp_path, torchvision_resnet18):
    with pytest.raises(IncompatibleCheckpointError, match=r"resnet18\.pth matches 0 of"):
        train_net.main_train(["--playground", toy_playground, "MODEL.WEIGHTS", torchvision_resnet18])
    out = tmp_path / "output" / "Toy" / "Tiny"
    assert not list(out.glob("*.pth")) and not (out / "metrics.json").exists()


def test_torch_files_that_hold_no_state_dict_say_how_to_resave(tmp_path):
    listed = str(tmp_path / "list.pth")
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(CheckpointReadError, match=r"list\.pth: a torch file, but not a checkpoint "
                       r".*found list.*torch\.save\(model\.state_dict\(\), path\)"):
        Checkpointer(_model()).load(listed)
    pickled = str(tmp_path / "module.pth")
    torch.save(_model(), pickled)  # a whole module: weights_only refuses its classes
    with pytest.raises(pickle.UnpicklingError, match=r"module\.pth.*torch\.nn\.modules.*"
                       r"re-saved as torch\.save\(model\.state_dict\(\), path\)"):
        Checkpointer(_model()).load(pickled)


def test_bad_pretrained_file_names_model_pretrained(tmp_path):
    from dl_lib.checkpoint.pretrained import read_state_dict

    path = tmp_path / "imagenet.pth"
    path.write_text("404: Not Found")
    with pytest.raises(CheckpointReadError, match=r"imagenet\.pth is a text file.*Check "
                       r"MODEL\.PRETRAINED: it must be"):
        read_state_dict(str(path))

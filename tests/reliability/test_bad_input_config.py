"""Bad config values and devices: an unknown key, a wrong type, a value that passes the type
check but makes no sense, CUDA without a GPU. Each is one ``ConfigError`` naming the key, the
value and the fix, raised where the config is loaded (see docs/RELIABILITY.md)."""
import glob
import os

import pytest
import torch

from dl_lib import playground
from dl_lib.config import ConfigError
from dl_lib.config.checks import config_value_problems
from dl_lib.tools import flops, train_net

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# key, value, what the message must say about it
NONSENSE = [
    ("SOLVER.IMS_PER_BATCH", "-2", r"SOLVER\.IMS_PER_BATCH = -2: must be an integer >= 1"),
    ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "0", r"NUM_CLASSES = 0: must be an integer >= 1"),
    ("MODEL.DEVICE", "gpu", r"MODEL\.DEVICE = 'gpu': must be 'cpu', 'cuda' or 'cuda:<index>'"),
    ("INPUT.MIN_SIZE_TEST", "1", r"INPUT\.MIN_SIZE_TEST = 1: must be 0 \(keep the image size\)"),
    ("INPUT.MIN_SIZE_TRAIN", "[512,-1]", r"INPUT\.MIN_SIZE_TRAIN = \[512, -1\]"),
    ("SOLVER.OPTIMIZER.BASE_LR", "0", r"BASE_LR = 0\.0: must be a finite number > 0"),
    ("SOLVER.OPTIMIZER.BASE_LR", "1e999", r"BASE_LR = inf: must be a finite number"),
    ("SOLVER.LR_SCHEDULER.MAX_ITER", "0", r"MAX_ITER = 0: must be an integer >= 1"),
    ("SOLVER.CHECKPOINT_PERIOD", "0", r"CHECKPOINT_PERIOD = 0"),
    ("MODEL.PIXEL_STD", "[1.0,0.0,1.0]", r"PIXEL_STD = \[1\.0, 0\.0, 1\.0\]: must be three values > 0"),
    ("TEST.IMS_PER_BATCH", "0", r"TEST\.IMS_PER_BATCH = 0"),
    ("DATALOADER.NUM_WORKERS", "-1", r"NUM_WORKERS = -1"),
    ("DATASETS.CHECK_LABELS", "every", r"CHECK_LABELS = 'every': must be 'sample' or 'all' or 'none'"),
    ("MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "1", r"IGNORE_VALUE = 1: it is a class index"),
]


@pytest.mark.parametrize("key,value,pattern", NONSENSE, ids=[f"{k}={v}" for k, v, _ in NONSENSE])
def test_nonsense_value_stops_loading_with_key_value_and_fix(toy_playground, key, value, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        playground.load_config(toy_playground, [key, value])
    assert "Fix them in config.py or with KEY VALUE overrides" in str(e.value)


def test_every_problem_is_in_one_message(toy_playground):
    with pytest.raises(ConfigError) as e:
        playground.load_config(toy_playground, ["SOLVER.IMS_PER_BATCH", "-2",
                                                "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "0"])
    assert "IMS_PER_BATCH = -2" in str(e.value) and "NUM_CLASSES = 0" in str(e.value)


def test_no_false_alarm_on_the_defaults_and_the_playgrounds():
    from dl_lib.config import get_cfg

    assert config_value_problems(get_cfg()) == []
    folders = [os.path.dirname(p) for p in glob.glob(os.path.join(REPO, "playground", "*", "*", "config.py"))]
    fixtures = os.path.join(REPO, "tests", "fixtures", "playground")
    folders += [os.path.join(fixtures, "Toy", "Tiny"), os.path.join(fixtures, "Registered", "TinyFPN")]
    assert len(folders) >= 4  # the repository's playgrounds and two fixtures
    for folder in folders:
        playground.load_config(folder)  # raises on a problem


def test_unknown_key_and_wrong_type_name_the_key(toy_playground):
    with pytest.raises(ConfigError, match=r"Unknown config key 'SOLVER\.IMS_PER_BATC'.*Closest "
                       r"valid keys: SOLVER\.IMS_PER_BATCH"):
        playground.load_config(toy_playground, ["SOLVER.IMS_PER_BATC", "4"])
    with pytest.raises(ConfigError, match=r"'SOLVER\.IMS_PER_BATCH'.*expects a value of type int"):
        playground.load_config(toy_playground, ["SOLVER.IMS_PER_BATCH", "four"])


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine as one without a GPU (also on a GPU machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_playground_build_on_cuda_without_gpu_says_set_device_cpu(no_cuda, toy_playground):
    with pytest.raises(ConfigError, match=r"^MODEL\.DEVICE is 'cuda' but this machine has no "
                       r"usable CUDA GPU .*: set MODEL\.DEVICE cpu\.$"):
        playground.build(toy_playground, ["MODEL.DEVICE", "cuda"])


@pytest.mark.parametrize("tool", ["dl_train", "dl_test", "dl_flops"])
def test_cli_on_cuda_without_gpu_is_one_line(no_cuda, toy_playground, tmp_path, capsys, tool):
    argv = ["--playground", toy_playground, "MODEL.DEVICE", "cuda"]
    main = {"dl_train": train_net.main_train, "dl_test": train_net.main_test,
            "dl_flops": flops.main}[tool]
    if tool == "dl_test":
        argv += ["MODEL.WEIGHTS", "none"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith("set MODEL.DEVICE cpu.") and "NVIDIA" not in err
    assert not (tmp_path / "output").exists()  # nothing written

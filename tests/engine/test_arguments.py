"""dl_train / dl_test command line: flags, overrides, and what reaches launch()."""
import pytest

from dl_lib.engine import default_argument_parser
from dl_lib.engine.defaults import parse_args
from dl_lib.tools import train_net


def _parse(argv):
    return parse_args(default_argument_parser(prog="dl_train"), argv)


def test_flags_then_overrides():
    args = _parse(["--num-gpus", "2", "--num-machines", "2", "--machine-rank", "1",
                   "--dist-url", "tcp://1.2.3.4:5", "--resume",
                   "MODEL.WEIGHTS", "w.pth", "SEED", "-1"])
    assert (args.num_gpus, args.num_machines, args.machine_rank) == (2, 2, 1)
    assert args.dist_url == "tcp://1.2.3.4:5" and args.resume and not args.eval_only
    assert args.opts == ["MODEL.WEIGHTS", "w.pth", "SEED", "-1"]  # a negative value is fine


def test_defaults():
    args = _parse([])
    assert args.num_gpus == 1 and args.num_machines == 1 and args.machine_rank == 0
    assert args.dist_url == "auto" and args.opts == [] and not args.resume


@pytest.mark.parametrize("argv", [
    ["MODEL.WEIGHTS", "w.pth", "--num-gpus", "2"],
    ["MODEL.WEIGHTS", "w.pth", "--resume"],
    ["SEED", "1", "-h"],
])
def test_flag_after_overrides_is_an_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        _parse(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "comes after the KEY VALUE overrides" in err and argv[2] in err


def test_odd_overrides_are_an_error(capsys):
    with pytest.raises(SystemExit):
        _parse(["MODEL.WEIGHTS"])
    assert "KEY VALUE pairs" in capsys.readouterr().err


@pytest.fixture
def launched(monkeypatch):
    """Replace launch() in train_net with a recorder; returns the list of recorded calls."""
    calls = []

    def fake_launch(main_func, num_gpus, num_machines=1, machine_rank=0, dist_url=None, args=(),
                    **kwargs):
        calls.append(dict(main_func=main_func, num_gpus=num_gpus, num_machines=num_machines,
                          machine_rank=machine_rank, dist_url=dist_url, args=args[0], **kwargs))

    monkeypatch.setattr(train_net, "launch", fake_launch)
    return calls


def test_dl_test_implies_eval_only(toy_playground, launched):
    train_net.main_test(["--playground", toy_playground, "MODEL.WEIGHTS", "w.pth"])
    train_net.main_train(["--playground", toy_playground])
    assert launched[0]["args"].eval_only is True
    assert launched[1]["args"].eval_only is False


def test_options_reach_launch(toy_playground, launched, monkeypatch, tmp_path):
    monkeypatch.chdir(toy_playground)  # the playground is the current folder by default
    train_net.main_train(["--num-gpus", "2", "--dist-url", "tcp://127.0.0.1:1234",
                          "SOLVER.LR_SCHEDULER.MAX_ITER", "3"])
    call = launched[0]
    assert call["main_func"] is train_net.run
    assert call["num_gpus"] == 2 and call["dist_url"] == "tcp://127.0.0.1:1234"
    assert call["backend"] == "gloo"  # MODEL.DEVICE cpu in the fixture
    assert call["args"].opts == ["SOLVER.LR_SCHEDULER.MAX_ITER", "3"]
    assert call["args"].playground == toy_playground


def test_outside_a_playground_says_what_is_missing(tmp_path, monkeypatch, launched, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        train_net.main_train([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "config.py and net.py missing" in err and not launched


def test_bad_override_fails_before_launch(toy_playground, launched, capsys):
    with pytest.raises(SystemExit):
        train_net.main_train(["--playground", toy_playground, "SOLVER.MAX_ITERS", "3"])
    assert "Unknown config key 'SOLVER.MAX_ITERS'" in capsys.readouterr().err and not launched

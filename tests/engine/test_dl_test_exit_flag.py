"""``dl_test --exit K`` = ``MODEL.EXIT.STOP K``: the model runs only up to exit K (cheaper), its
results go to ``inference/<weights>.exitK/``; a playground without that key is refused with a
message naming the flag and the fix."""
import json
import os

import pytest
import torch

from dl_lib import playground
from dl_lib.analysis import CostTracker
from dl_lib.engine import default_argument_parser
from dl_lib.engine.defaults import parse_args
from dl_lib.tools import train_net

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = os.path.join(TESTS, "fixtures", "families")
FOUR_EXIT = os.path.join(TESTS, "fixtures", "playground", "Toy", "FourExit")
TWO_EXIT = os.path.join(TESTS, "fixtures", "playground", "Toy", "TwoExit")


@pytest.fixture
def four_exit(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(FAMILIES)
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "out"))
    monkeypatch.setenv("FOUR_EXIT_TOY_DATA", str(tmp_path / "data"))
    return tmp_path / "out" / "Toy" / "FourExit" / "inference"


def test_the_flag_is_parsed_and_checked(capsys):
    parser = default_argument_parser(prog="dl_test")
    assert parse_args(parser, ["--exit", "2", "SEED", "1"]).exit == 2
    assert parse_args(parser, []).exit is None
    with pytest.raises(SystemExit):
        parse_args(parser, ["--exit", "-2"])
    assert "--exit -2" in capsys.readouterr().err


def test_a_model_without_exits_refuses_the_flag(toy_playground, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_net.main_test(["--playground", toy_playground, "--random-weights", "--exit", "2"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--exit 2" in err and "no MODEL.EXIT.STOP" in err and "Drop --exit" in err
    assert not (tmp_path / "output" / "Toy" / "Tiny" / "inference").exists()


def test_the_flag_and_a_different_override_contradict(four_exit, capsys):
    with pytest.raises(SystemExit) as e:
        train_net.main_test(["--playground", FOUR_EXIT, "--random-weights", "--exit", "2",
                             "MODEL.EXIT.STOP", "3"])
    assert e.value.code == 2 and "contradicts" in capsys.readouterr().err


def test_dl_test_exit_k_runs_k_exits_cheaper_in_its_own_folder(four_exit):
    train_net.main_test(["--playground", FOUR_EXIT, "--random-weights"])
    train_net.main_test(["--playground", FOUR_EXIT, "--random-weights", "--exit", "2"])
    full = json.loads((four_exit / "random_init" / "results.json").read_text())
    stopped = json.loads((four_exit / "random_init.exit2" / "results.json").read_text())
    full, stopped = full["four_exit_toy_val"], stopped["four_exit_toy_val"]
    assert "STOP: 2" in (four_exit / "random_init.exit2" / "config.yaml").read_text()
    assert full["exits"]["num_exits"] == 4 and stopped["exits"]["num_exits"] == 2
    assert "exit2" not in stopped["sem_seg"] and len(stopped["exits"]["time"]["ms_per_image"]) == 2
    line = (four_exit / "random_init.exit2" / "result.txt").read_text().splitlines()[0]
    assert len(line.split("\t")) == 3  # two exits and their mean
    # executed cost (TEST.COST_CONVENTIONS gmac): blocks 3 and 4 never ran
    assert stopped["cost"]["gmac"]["mean"] < full["cost"]["gmac"]["mean"]


def test_the_two_exit_family_honours_stop(monkeypatch):
    monkeypatch.syspath_prepend(FAMILIES)
    g = torch.Generator().manual_seed(0)
    inputs = [{"image": torch.randint(0, 256, (3, 32, 64), generator=g, dtype=torch.uint8),
               "height": 32, "width": 64}]
    costs = {}
    for stop in ("-1", "1"):
        _, model = playground.build(TWO_EXIT, ["MODEL.EXIT.STOP", stop, "MODEL.TWO_EXIT."
                                               "CONF_THRESH", "1.01"])  # exit 1 on every pixel
        with torch.no_grad(), CostTracker(model.eval(), ["gmac"], num_images=1) as tracker:
            out, = model(inputs)
        costs[stop] = tracker.per_image(raw=True)[0]["gmac"]
        assert len(out["sem_seg_exits"]) == (1 if stop == "1" else 2)
        torch.testing.assert_close(out["sem_seg"], out["sem_seg_exits"][-1])
    width, classes, positions = 8, 2, 16 * 32
    # stopped at exit 1 (1-based): the stem and the exit-0 classifier only
    assert costs["1"] == (width * 3 * 9 + classes * width) * positions
    assert costs["-1"] == costs["1"] + (width * width * 9 + classes * width) * positions

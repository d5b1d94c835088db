import pytest
import torch

from dl_lib.analysis import summarize_costs


def test_floats():
    s = summarize_costs([1.0, 3.0, torch.tensor(5.0), None])
    assert s == {"flops": {"mean": 3.0, "min": 1.0, "max": 5.0}}


def test_dicts():
    s = summarize_costs([{"real_flops": 10.0, "expt_flops": 8.0}, {"real_flops": 20.0, "expt_flops": 6.0}])
    assert s["real_flops"] == {"mean": 15.0, "min": 10.0, "max": 20.0}
    assert s["expt_flops"] == {"mean": 7.0, "min": 6.0, "max": 8.0}


def test_empty_and_bad():
    assert summarize_costs([]) == {}
    with pytest.raises(ValueError, match="scalar"):
        summarize_costs([torch.ones(2)])
    with pytest.raises(TypeError, match="number"):
        summarize_costs(["12"])

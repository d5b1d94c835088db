"""The fuzz harness itself reports what it must: a layout-dependent result, an input written in
place, a bad argument accepted or refused unclearly, and a crash (without losing later cases)."""
import importlib
import os

import pytest
import torch

from dl_lib.testing import op_fuzz

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SELFTEST = "tests.reliability.op_fuzz_selftest_specs"


@pytest.fixture
def broken_ops(monkeypatch):
    """The deliberately broken specs, registered for this test only."""
    monkeypatch.syspath_prepend(ROOT)
    monkeypatch.setenv("DL_LIB_OP_FUZZ_SPECS", SELFTEST)  # for the child process
    module = importlib.import_module(SELFTEST)
    specs = {s.name: op_fuzz.register_op(s) for s in module.SPECS}
    yield specs
    for name in specs:
        op_fuzz._REGISTRY.pop(name, None)


def _case(spec):
    return importlib.import_module(SELFTEST).make_case()


def test_layout_dependent_results_are_caught(broken_ops):
    spec = broken_ops["selftest_layout_blind"]
    op_fuzz.check_against_reference(spec, _case(spec), {"x": "contiguous"})
    for layout in ("strided", "transposed"):
        with pytest.raises(AssertionError, match="differs from the reference"):
            op_fuzz.check_against_reference(spec, _case(spec), {"x": layout})


def test_writing_an_input_is_caught(broken_ops):
    spec = broken_ops["selftest_writes_input"]
    with pytest.raises(AssertionError, match="wrote into its argument 'x'"):
        op_fuzz.check_against_reference(spec, _case(spec), {})


def test_raw_bad_arguments_survive_a_crash_and_report_each_fault(broken_ops):
    results = op_fuzz.run_raw_bad_arguments("selftest_layout_blind")
    assert results["refused"] == "ok" and results["after_the_crash"] == "ok"
    assert "the interpreter died (exit status -11)" in results["crashes"]
    assert "but the call returned" in results["accepted"]
    assert "does not say 'names the tensor'" in results["unclear_message"]

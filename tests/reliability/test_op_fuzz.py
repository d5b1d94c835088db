"""Generic fuzz tests of every compiled op registered with dl_lib.testing.op_fuzz.

Per op: values and gradients against its pure-PyTorch reference over drawn calls and memory
layouts (float64 and float32), float64 gradcheck on tiny calls, and every bad argument refused
with a clear message (raw torch.ops calls in a subprocess, so a crash is a failure).
More examples: DL_LIB_FUZZ_EXAMPLES=10; a failure prints the drawn case (and hypothesis' seed).
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dl_lib import compiled_with_cuda
from dl_lib.testing import op_fuzz

SPECS = op_fuzz.registered_ops()
# The values and gradients of the CUDA kernels too, where there is a GPU.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and compiled_with_cuda() else [])


def _params(specs):
    return [pytest.param(s, id=s.name, marks=pytest.mark.skipif(
        not s.available(), reason=f"{s.name} cannot run here")) for s in specs]


def _layouts(spec):
    return st.fixed_dictionaries({n: st.sampled_from(op_fuzz.LAYOUTS) for n in spec.layout_inputs})


def fuzz(n):
    """Settings of a property test drawing n examples (times DL_LIB_FUZZ_EXAMPLES)."""
    return settings(max_examples=op_fuzz.examples(n), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", _params(SPECS))
@fuzz(60)
@given(data=st.data())
def test_matches_reference_float64(spec, device, data):
    case = data.draw(spec.cases(torch.float64, device), label="case")
    op_fuzz.check_against_reference(spec, case, data.draw(_layouts(spec), label="layouts"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", _params(SPECS))
@fuzz(30)
@given(data=st.data())
def test_matches_reference_float32(spec, device, data):
    case = data.draw(spec.cases(torch.float32, device), label="case")
    op_fuzz.check_against_reference(spec, case, data.draw(_layouts(spec), label="layouts"))


@pytest.mark.parametrize("spec", _params(SPECS))
@fuzz(8)
@given(data=st.data())
def test_gradcheck_tiny(spec, data):
    op_fuzz.check_gradcheck(spec, data.draw(spec.cases(torch.float64, tiny=True), label="case"))


BAD = [(s, b) for s in SPECS for b in s.bad_arguments()]


@pytest.mark.parametrize("spec,bad", [pytest.param(s, b, id=f"{s.name}-{b.name}")
                                      for s, b in BAD if not b.raw])
def test_bad_argument_is_refused_clearly(spec, bad):
    op_fuzz.check_bad_argument(bad)


@pytest.mark.parametrize("spec", _params([s for s in SPECS
                                          if any(b.raw for b in s.bad_arguments())]))
def test_raw_op_refuses_bad_arguments_without_crashing(spec):
    results = op_fuzz.run_raw_bad_arguments(spec.name)
    failed = {name: why for name, why in results.items() if why != "ok"}
    assert not failed, "\n".join(failed.values())  # each names its case

"""Deliberately broken op specs: test_op_fuzz_harness.py checks the harness reports each fault.

Registered only when named in DL_LIB_OP_FUZZ_SPECS (the raw bad-argument cases run in a child
process, which imports this module by name).
"""
import os
import signal

import torch
from hypothesis import strategies as st

from dl_lib.testing.op_fuzz import BadArgument, OpCase, OpSpec, register_op

NAMES = ("selftest_layout_blind", "selftest_writes_input")


def make_case(dtype=torch.float64) -> OpCase:
    return OpCase(tensors=dict(x=torch.arange(24, dtype=dtype).reshape(1, 2, 3, 4)), options={})


def _cases(dtype=torch.float64, device="cpu", tiny=False):
    return st.just(make_case(dtype))


def _refuses():
    raise RuntimeError("scale must be positive, got -1; use scale >= 1")


def _crashes():
    os.kill(os.getpid(), signal.SIGSEGV)  # what a division by zero in a kernel looks like


def _bad_arguments():
    return [
        BadArgument("refused", _refuses, RuntimeError, r"scale must be positive", raw=True),
        BadArgument("crashes", _crashes, RuntimeError, r"scale", raw=True),
        BadArgument("after_the_crash", _refuses, RuntimeError, r"got -1", raw=True),
        BadArgument("accepted", lambda: None, RuntimeError, r"scale", raw=True),
        BadArgument("unclear_message", _refuses, RuntimeError, r"names the tensor", raw=True),
    ]


SPECS = [register_op(OpSpec(
    # Reads its input as if it were contiguous (wrong for every other layout).
    name=NAMES[0], cases=_cases,
    run=lambda t, o: torch.as_strided(t["x"], t["x"].shape, t["x"].contiguous().stride()) * 2,
    reference=lambda t, o: t["x"] * 2, tolerances={torch.float64: (0.0, 0.0)},
    layout_inputs=("x",), bad_arguments=_bad_arguments)), register_op(OpSpec(
    name=NAMES[1], cases=_cases, run=lambda t, o: t["x"].mul_(2),
    reference=lambda t, o: t["x"] * 2, tolerances={torch.float64: (0.0, 0.0)}))]

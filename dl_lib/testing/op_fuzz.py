"""Property-based fuzzing of compiled ops against their pure-PyTorch references.

An op is described once by an :class:`OpSpec` (how to draw valid calls, the op, its reference,
tolerances, the bad arguments it must refuse) and registered with :func:`register_op`; the
generic tests in ``tests/reliability/test_op_fuzz.py`` then check every registered op:

* values and gradients equal the reference's over drawn shapes, options and masks, with each
  tensor in several memory layouts (contiguous, channels_last, strided and transposed views);
* tensors the op must not write are unchanged; the ones it writes (``mutates``) may be any view;
* ``gradcheck`` in float64 on tiny calls;
* each bad argument raises the declared error with a message naming it (the raw
  ``torch.ops`` calls in a subprocess, so a crash of the interpreter is a failure, not the end of
  the test run).

Adding a compiled op: write ``dl_lib/testing/<op>_specs.py`` with its ``OpSpec`` (see
``masked_conv_specs.py``), register it, and add the module to ``SPEC_MODULES`` below.

Examples: hypothesis draws them (``tests/conftest.py``: fixed sequence under ``CI=true``);
``DL_LIB_FUZZ_EXAMPLES`` multiplies the number drawn per test (e.g. 10 for a long local run).
"""
import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from hypothesis import strategies as st

__all__ = ["OpCase", "OpSpec", "BadArgument", "register_op", "registered_ops", "get_op",
           "LAYOUTS", "examples", "check_against_reference", "check_gradcheck",
           "check_bad_argument", "run_raw_bad_arguments"]

# Modules whose import registers op specs; a new compiled op adds its own here. Out-of-tree ops
# (and the harness's self-test) name theirs in DL_LIB_OP_FUZZ_SPECS (comma-separated), which the
# subprocess of the raw bad-argument cases inherits.
SPEC_MODULES = ("dl_lib.testing.masked_conv_specs",)

# Memory layouts every tensor named in OpSpec.layout_inputs is tried in.
LAYOUTS = ("contiguous", "channels_last", "strided", "transposed")


@dataclasses.dataclass
class OpCase:
    """One drawn call of an op.

    tensors: named tensor arguments (None for an absent optional one), contiguous, on one device.
    options: the other arguments (ints, flags).
    grad: names of the tensors the test differentiates (floating point ones).
    seed: seeds the cotangent of the backward check.
    """
    tensors: Dict[str, Optional[torch.Tensor]]
    options: Dict[str, Any]
    grad: Tuple[str, ...] = ()
    seed: int = 0

    def describe(self) -> str:
        shapes = {k: None if t is None else (tuple(t.shape), str(t.dtype).replace("torch.", ""))
                  for k, t in self.tensors.items()}
        return f"tensors={shapes} options={self.options} grad={self.grad} seed={self.seed}"


@dataclasses.dataclass(frozen=True)
class BadArgument:
    """A call the op must refuse: ``call()`` raises ``error`` with a message matching ``match``.

    ``raw``: the call goes to ``torch.ops`` directly (run in a subprocess by the tests).
    """
    name: str
    call: Callable[[], Any]
    error: type
    match: str
    raw: bool = False


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """What the harness needs to fuzz one op.

    name: registry key (and test id).
    cases: ``cases(dtype, device, tiny) -> SearchStrategy[OpCase]``; ``tiny`` draws calls small
        enough for a float64 gradcheck.
    run: ``run(tensors, options) -> Tensor``: the op under test.
    reference: same signature, pure PyTorch (differentiable).
    tolerances: dtype -> (rtol, atol) for values and gradients.
    layout_inputs: tensors tried in every layout of LAYOUTS.
    mutates: tensors the op writes in place (passed as a fresh copy in the layout drawn).
    bad_arguments: ``() -> [BadArgument]`` (built lazily: they allocate tensors).
    available: whether the op can run here (e.g. the extension is built).
    extra_check: ``(case, passed, result) -> None``, op-specific assertions after a call
        (``passed``: the tensors as given to ``run``).
    """
    name: str
    cases: Callable[..., "st.SearchStrategy[OpCase]"]
    run: Callable[[Mapping[str, Any], Mapping[str, Any]], torch.Tensor]
    reference: Callable[[Mapping[str, Any], Mapping[str, Any]], torch.Tensor]
    tolerances: Mapping[torch.dtype, Tuple[float, float]]
    layout_inputs: Tuple[str, ...] = ()
    mutates: Tuple[str, ...] = ()
    bad_arguments: Callable[[], List[BadArgument]] = lambda: []
    available: Callable[[], bool] = lambda: True
    extra_check: Optional[Callable[[OpCase, Mapping[str, Any], torch.Tensor], None]] = None


_REGISTRY: Dict[str, OpSpec] = {}


def register_op(spec: OpSpec) -> OpSpec:
    """Adds ``spec`` to the registry (a second spec of the same name is an error)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"op_fuzz: an op spec named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def registered_ops() -> List[OpSpec]:
    """Every registered spec (importing SPEC_MODULES and DL_LIB_OP_FUZZ_SPECS first), by name."""
    extra = [m for m in os.environ.get("DL_LIB_OP_FUZZ_SPECS", "").split(",") if m.strip()]
    for module in (*SPEC_MODULES, *extra):
        importlib.import_module(module.strip())
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_op(name: str) -> OpSpec:
    registered_ops()
    if name not in _REGISTRY:
        raise KeyError(f"op_fuzz: no op spec named {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def examples(n: int) -> int:
    """``n`` times ``DL_LIB_FUZZ_EXAMPLES`` (default 1): examples per property test."""
    return n * max(1, int(os.environ.get("DL_LIB_FUZZ_EXAMPLES", "1")))


def in_layout(t: torch.Tensor, layout: str, fresh: bool = False) -> torch.Tensor:
    """``t`` (same values, differentiable) stored in ``layout``.

    contiguous / channels_last (4-D only; others stay contiguous); strided: every other element
    of a wider tensor; transposed: the last two dims stored swapped. ``fresh``: never ``t``
    itself (for tensors the op writes into).
    """
    if layout == "contiguous" or t.dim() < 2:
        return t.clone() if fresh else t.contiguous()
    if layout == "channels_last":
        if t.dim() != 4:
            return t.clone() if fresh else t
        return t.clone(memory_format=torch.channels_last)
    if layout == "strided":
        wide = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1] + 1)
        return wide[..., 1::2].copy_(t)
    if layout == "transposed":
        base = t.new_zeros(*t.shape[:-2], t.shape[-1], t.shape[-2])
        return base.transpose(-1, -2).copy_(t)
    raise ValueError(f"op_fuzz: unknown layout {layout!r}; one of {LAYOUTS}")


def _leaves(case: OpCase) -> Dict[str, Optional[torch.Tensor]]:
    """Fresh copies of the case's tensors; the differentiated ones are leaves requiring grad."""
    out = {}
    for name, t in case.tensors.items():
        t = None if t is None else t.detach().clone()
        if t is not None and name in case.grad:
            t.requires_grad_(True)
        out[name] = t
    return out


def _call(fn, spec: OpSpec, case: OpCase, layouts: Mapping[str, str]):
    """Calls ``fn`` on fresh tensors in ``layouts``; returns (leaves, passed, result, grads)."""
    leaves = _leaves(case)
    passed = {}
    for name, t in leaves.items():
        if t is None or (name not in layouts and name not in spec.mutates):
            passed[name] = t
        else:  # a copy the op may write (mutates), or a view in the layout drawn
            passed[name] = in_layout(t, layouts.get(name, "contiguous"),
                                     fresh=name in spec.mutates)
    result = fn(passed, case.options)
    grads = {}
    wrt = [n for n in case.grad if leaves.get(n) is not None]
    if wrt and result.requires_grad:
        g = torch.Generator(device="cpu").manual_seed(case.seed)
        cot = torch.randn(result.shape, generator=g, dtype=torch.float64)
        cot = cot.to(device=result.device, dtype=result.dtype)
        got = torch.autograd.grad(result, [leaves[n] for n in wrt], cot, allow_unused=True)
        grads = {n: torch.zeros_like(leaves[n]) if gr is None else gr for n, gr in zip(wrt, got)}
    return leaves, passed, result, grads


def _close(what: str, got: torch.Tensor, want: torch.Tensor, tol, case: OpCase) -> None:
    rtol, atol = tol
    torch.testing.assert_close(
        got, want, rtol=rtol, atol=atol, check_stride=False,
        msg=lambda m: f"{what} differs from the reference: {m}\ncase: {case.describe()}")


def check_against_reference(spec: OpSpec, case: OpCase, layouts: Mapping[str, str]) -> None:
    """The op on ``case`` (tensors of ``spec.layout_inputs`` in ``layouts``) matches the reference
    (contiguous tensors) in value, dtype and gradients; inputs it must not write are unchanged."""
    snapshot = {n: None if t is None else t.clone() for n, t in case.tensors.items()}
    # TF32 convolutions (cuDNN's default) would make a CUDA float32 reference the imprecise side.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        _, _, want, want_grads = _call(spec.reference, spec, case, {})
        leaves, passed, got, got_grads = _call(spec.run, spec, case, layouts)
    tol = spec.tolerances[got.dtype] if got.dtype in spec.tolerances else (0.0, 0.0)
    assert got.dtype == want.dtype and got.device == want.device, (
        f"{spec.name}: result is {got.dtype} on {got.device}, the reference's {want.dtype} on "
        f"{want.device}; case: {case.describe()}")
    _close(f"{spec.name} value (layouts {dict(layouts)})", got, want, tol, case)
    for name, g in want_grads.items():
        _close(f"{spec.name} gradient of {name} (layouts {dict(layouts)})", got_grads[name], g,
               tol, case)
    for name, t in leaves.items():
        if t is not None and name not in spec.mutates:
            assert torch.equal(passed[name].detach(), snapshot[name]), (
                f"{spec.name} wrote into its argument {name!r}; case: {case.describe()}")
    if spec.extra_check is not None:
        spec.extra_check(case, passed, got)


def check_gradcheck(spec: OpSpec, case: OpCase) -> None:
    """``torch.autograd.gradcheck`` of the op in the tensors of ``case.grad`` (use float64)."""
    wrt = [n for n in case.grad if case.tensors.get(n) is not None]

    def fn(*diff):
        tensors = dict(case.tensors)
        tensors.update(zip(wrt, diff))
        tensors = {n: (t.clone() if n in spec.mutates and t is not None else t)
                   for n, t in tensors.items()}
        return spec.run(tensors, case.options)

    leaves = [case.tensors[n].detach().clone().requires_grad_(True) for n in wrt]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5), case.describe()


def check_bad_argument(bad: BadArgument) -> None:
    """``bad.call()`` raises ``bad.error`` whose message matches ``bad.match``."""
    try:
        bad.call()
    except bad.error as e:
        assert re.search(bad.match, str(e)), (
            f"{bad.name}: the {type(e).__name__} does not say {bad.match!r}: {e}")
        return
    except Exception as e:  # noqa: BLE001 - the wrong kind of error is the failure reported
        raise AssertionError(f"{bad.name}: expected {bad.error.__name__} matching "
                             f"{bad.match!r}, got {type(e).__name__}: {e}") from e
    raise AssertionError(f"{bad.name}: expected {bad.error.__name__} matching {bad.match!r}, "
                         f"but the call returned")


def run_raw_bad_arguments(op_name: str, timeout: float = 120.0) -> Dict[str, str]:
    """Runs the raw bad-argument cases of ``op_name`` in a subprocess.

    Returns: case name -> "ok", or why it failed; a case that kills the interpreter (SIGFPE,
    SIGSEGV) is reported with the signal, and the cases after it still run (one subprocess per
    crash).
    """
    names = [b.name for b in get_op(op_name).bad_arguments() if b.raw]
    results: Dict[str, str] = {}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    while len(results) < len(names):
        todo = [n for n in names if n not in results]
        proc = subprocess.run(
            [sys.executable, "-m", "dl_lib.testing.op_fuzz", op_name, *todo],
            capture_output=True, text=True, timeout=timeout, cwd=root)
        started = None
        for line in proc.stdout.splitlines():
            if line.startswith("START "):
                started = line[6:]
            elif line.startswith("RESULT "):
                name, verdict = json.loads(line[7:])
                results[name] = verdict
                started = None
        if proc.returncode == 0:  # a case that exits quietly must not loop forever
            for name in todo:
                results.setdefault(name, f"{name}: the child process exited without a result")
        else:
            crashed = started or todo[0]
            results.setdefault(crashed, f"{crashed}: the interpreter died (exit status "
                                        f"{proc.returncode}): {proc.stderr.strip()[-500:]}")
    return results


def _main(argv: Sequence[str]) -> int:
    """``python -m dl_lib.testing.op_fuzz OP CASE...``: runs raw bad-argument cases, one
    ``RESULT [name, verdict]`` line each (``START name`` before, so a crash names its case)."""
    # Run as __main__: the specs register into the module imported under its own name.
    from dl_lib.testing import op_fuzz

    bads = {b.name: b for b in op_fuzz.get_op(argv[0]).bad_arguments()}
    for name in argv[1:]:
        print(f"START {name}", flush=True)
        try:
            op_fuzz.check_bad_argument(bads[name])
            verdict = "ok"
        except AssertionError as e:
            verdict = str(e)
        print("RESULT " + json.dumps([name, verdict]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

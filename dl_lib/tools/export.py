"""``dl_export``: the playground's model as a TorchScript, ``torch.export`` or ONNX file, checked.

    cd playground/<Group>/<Name>
    dl_export --format torchscript --size 512 1024 --out model.pt MODEL.WEIGHTS model_final.pth
    dl_export --format export --size 512 1024 --out model.pt2 MODEL.WEIGHTS model_final.pth
    dl_export --format onnx --size 512 1024 --out model.onnx MODEL.WEIGHTS model_final.pth
    python tools/export.py ...        # the same, without the console script

**What is exported**: the eval computation from a normalised ``N x 3 x H x W`` float tensor
(``(RGB 0-255 - MODEL.PIXEL_MEAN) / MODEL.PIXEL_STD``) to the logits at input size,
``model.predict_logits(x)`` (``model(x)`` for a model without it): ``N x K x H x W``, or for a
model with several outputs (MFARANet's branches and fused output, exits) a tuple of them, the
final prediction last, as ``predict_logits`` lists them. Padding to ``size_divisibility``, the
final resize and the crop are inside; normalisation, test-time augmentation and the per-image
resize to the original size are not. Shapes are static: the file takes exactly
``--batch x 3 x H x W`` (the padding and resize sizes are computed for ``--size`` at export
time). BatchNorm in eval mode (running statistics); the model is built on ``--device`` (default
cpu), in float32. Weights: ``MODEL.WEIGHTS`` when set (loaded as ``dl_test`` does, strict unless
``MODEL.WEIGHTS_STRICT False``), else the random initialisation (said in the output). A
checkpoint that stores an architecture (a compressed ACoSP model: ``MODEL.PRUNING.CHANNELS``
written by ``tools/compress.py``; MFARANet's ``BRANCH_ONLY``) rebuilds that network first, as
``dl_test`` does, so the exported network is the small one.

**Formats.**

* ``torchscript``: ``torch.jit.trace`` (not ``torch.jit.script``: no model of the library
  scripts - ``getattr`` with computed names, list iteration over Python values, registered
  properties - and tracing a fixed-shape, control-flow-free network records exactly the ops
  that ran), saved with ``torch.jit.save``; reload with ``torch.jit.load``. The trace turns
  shape arithmetic into constants (the tracer's warnings about it are silenced: the file is
  specialised to one shape by design). torch 2.14's ``F.max_unpool2d`` checks its traced
  ``output_size`` with ``torch._check_value``, which raises ``TypeError`` for the 0-d tensors the
  tracer gives it; the check is skipped while tracing (SegNet's sizes come from a real tensor's
  shape). ``torch.jit.trace`` itself is deprecated in torch 2.14 (``FutureWarning``, silenced).
* ``export``: ``torch.export.export`` (non-strict), saved with ``torch.export.save`` (``--out``
  must end in ``.pt2``, as ``torch.export.load`` requires);
  reload with ``torch.export.load(FILE).module()``.
* ``onnx``: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based exporter; it needs
  ``onnxscript``; the TorchScript-based one has no ``max_unpool2d``, which SegNet needs), one file
  with the weights inside below 2 GB of parameters (``external_data`` above); inputs ``image``,
  outputs ``logits`` or ``logits_0`` .. ``logits_{n-1}``; onnxscript's graph optimisation
  (constant folding, redundant ops removed) runs unless ``--no-optimize`` (same outputs; the 32x64
  FPN baseline exports in 6.4 s of CPU instead of 10.7 s). Checked with ``onnxruntime`` (CPU); when
  it is missing the file is still written and the check says it was skipped.

**The check** (always, after writing): the file is reloaded from disk and run on a fresh random
input (drawn from a generator seeded with ``--seed``, which also seeds the random initialisation
when there is no ``MODEL.WEIGHTS``; not the example input the export ran on, so
values baked into the file from that input would show); its outputs must have the eager model's
number and shapes and ``max |exported - eager| <= --rtol x max |eager logit|`` (default rtol
1e-4). Printed: the maximum absolute difference, the tolerance, OK or FAILED. Exit status: 0
(written and checked, or written with the ONNX check skipped), 1 (the exporter raised - the
message names its error class - or the check failed; a file that failed its check is kept for
inspection), 2 (bad options, playground, config or weights; nothing written).

**Families.** Static ones export in every format and pass the check: the baselines
(``SemanticSegmentor``, e.g. ``playground/Quickstart/FPN.R18W32.Synthetic``), MFARANet (full:
the four branches and the fused output; ``MODEL.MFARANET.BRANCH_ONLY 2``: one output), CondNet,
and compressed ACoSP models (rebuilt from ``MODEL.PRUNING.CHANNELS``; a hard-masked model,
``MODEL.PRUNING.HARD_MASKS True``, exports too, but at full width with its mask multiplies:
compress it with ``tools/compress.py`` first to export the smaller network).
Dynamic ones (measured with this tool on the tiny playgrounds, torch 2.14.1):

* **Dynamic routing** (``DynamicRoutingSegmentor``, e.g. ``Quickstart/Seg.Layer6.Tiny.Synthetic``):
  ``torchscript`` writes a file that **fails the check** (exit 1): the trace records the routes
  the example input opened (a closed route is skipped by Python control flow), so another
  input's logits differ (random init: max diff 2.02e3 vs tolerance 0.26; trained weights: 1.03 vs
  0.00125; ``MODEL.GATE.SKIP_MODE dense``: 742 vs 0.26). ``export`` and ``onnx`` fail while
  exporting: ``torch.fx.experimental.symbolic_shapes.GuardOnDataDependentSymNode`` (the skip
  test ``gate > MODEL.GATE.SKIP_THRESHOLD``; ``onnx`` wraps it in
  ``torch.onnx._internal.exporter._errors.TorchExportError``). With ``MODEL.GATE.GATE_ON False``
  (the "Fix" networks) ``torchscript`` exports and passes the check; ``export`` / ``onnx`` still
  raise ``GuardOnDataDependentSymNode`` (the same skip test on the constant gates, ``zuf0 + zuf1
  > 0.0001``).
* **ADP-C with masks** (``AnytimeSegmentor``, ``MODEL.MASK.USE True``,
  ``Anytime/HRNet_W18.ADP_C.Tiny.Synthetic``): with trained weights (some pixels confident)
  ``torchscript`` fails while tracing, ``AssertionError: Expected bool, got Tensor`` (the masked
  convolution picks its memory layout from the traced strides); at random initialisation no
  pixel passes ``CONF_THRE`` and the trace (every pixel computed, the dense path recorded for
  every input) passes the check on random inputs but is not the adaptive model. ``export`` and
  ``onnx`` raise ``GuardOnDataDependentSymNode`` (``Eq(u0, 1)``: whether a mask is all-on), with
  random and with trained weights.
  ``MODEL.MASK.USE False`` (the EE / RH networks: four exits, no masks) exports in all three
  formats and passes the check (four outputs, exit 1..4).
"""
import argparse
import contextlib
import os
import re
import sys
import time
import warnings
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from dl_lib.tools.common import load_weights, parse_tool_args
from dl_lib import playground
from dl_lib.checkpoint import CheckpointReadError, IncompatibleCheckpointError
from dl_lib.config import ConfigError

__all__ = ["FORMATS", "ExportError", "ExporterFailed", "PredictLogits", "export_module",
           "load_exported", "check_exported", "export_playground", "build_parser", "main"]

# format -> (what writes it, usual suffix)
FORMATS = {"torchscript": ("torch.jit.trace + torch.jit.save", ".pt"),
           "export": ("torch.export.export + torch.export.save", ".pt2"),
           "onnx": ("torch.onnx.export(dynamo=True)", ".onnx")}
_TWO_GB = 2 ** 31


class ExportError(ValueError):
    """An option or model that cannot be exported as asked (said with the fix)."""


class ExporterFailed(RuntimeError):
    """The exporter (tracer, ``torch.export``, ONNX) raised; the message names its error class."""


class PredictLogits(nn.Module):
    """``model.predict_logits`` as a module: normalised N x 3 x H x W -> N x K x H x W logits, or
    a tuple of them for a model whose ``predict_logits`` returns a list (final one last)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        model = self.model
        out = model.predict_logits(x) if hasattr(model, "predict_logits") else model(x)
        return tuple(out) if isinstance(out, (list, tuple)) else out


def _as_tuple(out) -> Tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in out):
        return tuple(out)
    raise ExportError(f"the model's predict_logits returned {type(out).__name__}; export needs "
                      "a tensor or a list of tensors (logits)")


@contextlib.contextmanager
def _traceable_max_unpool():
    """Let ``torch.jit.trace`` record ``F.max_unpool2d(..., output_size=t.shape)``: under the
    tracer the sizes are 0-d tensors and torch 2.14's ``_check_unpool_output_size`` passes them to
    ``torch._check_value``, which accepts only bools (``TypeError``). Traced sizes skip that
    non-negativity check (they are a real tensor's shape); plain ints are still checked."""
    import torch.nn.functional as F

    original = getattr(F, "_check_unpool_output_size", None)
    if original is None:  # another torch: nothing to work around
        yield
        return

    def check(ret, d):
        if isinstance(ret[d], torch.Tensor):
            return None
        return original(ret, d)

    F._check_unpool_output_size = check
    try:
        yield
    finally:
        F._check_unpool_output_size = original


def _first_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # torch.onnx colours its messages
    return (text.splitlines() or [""])[0][:300]


def _describe_error(e: BaseException) -> str:
    """``module.Class: first line`` of ``e``, and of its root cause when it wraps one (the ONNX
    exporter wraps torch.export's error in ``TorchExportError``)."""
    text = f"{type(e).__module__}.{type(e).__name__}: {_first_line(e)}"
    root = e
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    if root is not e:
        text += f" <- caused by {type(root).__module__}.{type(root).__name__}: {_first_line(root)}"
    return text


def _output_names(num_outputs: int) -> List[str]:
    return ["logits"] if num_outputs == 1 else [f"logits_{i}" for i in range(num_outputs)]


def export_module(module: nn.Module, fmt: str, example: torch.Tensor, path: str,
                  onnx_optimize: bool = True) -> str:
    """Write ``module`` (eval mode, called as ``module(example)``) to ``path`` in ``fmt``;
    returns a line saying how. ``onnx_optimize``: run onnxscript's graph optimisation (ONNX
    only). Errors of the exporters propagate unchanged."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    module.eval()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad():
        num_outputs = len(_as_tuple(module(example)))
    if fmt == "torchscript":
        with warnings.catch_warnings(), torch.no_grad(), _traceable_max_unpool():
            # Shape arithmetic becomes constants (the file is specialised to one shape on
            # purpose); torch 2.14 marks torch.jit as deprecated.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            # check_trace re-runs the trace on the same input; check_exported does better.
            traced = torch.jit.trace(module, (example,), check_trace=False)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            torch.jit.save(traced, path)
        return "torch.jit.trace (fixed shape, no control flow), torch.jit.save"
    if fmt == "export":
        with torch.no_grad():
            program = torch.export.export(module, (example,))
        torch.export.save(program, path)
        return "torch.export.export (non-strict), torch.export.save"
    try:
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
    except ImportError as e:
        raise ExportError(f"--format onnx needs onnxscript ({e}); install the pinned versions: "
                          ".venv/bin/pip install -c constraints.txt onnx onnxruntime onnxscript"
                          ) from None
    big = sum(p.numel() * p.element_size() for p in module.parameters()) >= _TWO_GB
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, (example,), path, dynamo=True, external_data=big,
                          input_names=["image"], output_names=_output_names(num_outputs),
                          optimize=onnx_optimize, verbose=False)
    return ("torch.onnx.export(dynamo=True" + ("" if onnx_optimize else ", optimize=False")
            + "), " + ("weights in external data" if big else "weights inside the file"))


def load_exported(fmt: str, path: str, device: torch.device = torch.device("cpu")
                  ) -> Tuple[Optional[Callable], Optional[str]]:
    """``(call, None)``: ``call(x) -> tuple of tensors`` running the file at ``path``; or
    ``(None, reason)`` when it cannot be run here (ONNX without onnxruntime)."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            loaded = torch.jit.load(path, map_location=device)
        return (lambda x: _as_tuple(loaded(x))), None
    if fmt == "export":
        loaded = torch.export.load(path).module()
        return (lambda x: _as_tuple(loaded(x))), None
    try:
        import onnxruntime
    except ImportError as e:
        return None, (f"onnxruntime is not installed ({e}); the ONNX file was written but not "
                      "checked: .venv/bin/pip install -c constraints.txt onnxruntime")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor):
        outs = session.run(None, {name: x.detach().cpu().numpy()})
        return tuple(torch.from_numpy(o).to(x.device) for o in outs)

    return run, None


def check_exported(reference: Sequence[torch.Tensor], got: Sequence[torch.Tensor],
                   rtol: float = 1e-4) -> dict:
    """``{"ok", "max_abs_diff", "tolerance", "max_abs_logit", "problem"}``: ``got`` matches
    ``reference`` (same count and shapes, max |difference| <= rtol x max |reference|)."""
    scale = max(float(t.abs().max()) for t in reference)
    result = {"ok": False, "max_abs_diff": float("nan"), "tolerance": rtol * scale,
              "max_abs_logit": scale, "problem": None}
    if len(got) != len(reference):
        result["problem"] = f"{len(got)} outputs, the eager model has {len(reference)}"
        return result
    for i, (a, b) in enumerate(zip(reference, got)):
        if tuple(a.shape) != tuple(b.shape):
            result["problem"] = (f"output {i} has shape {tuple(b.shape)}, the eager model's "
                                 f"{tuple(a.shape)}")
            return result
    diff = max(float((a - b.to(a.dtype)).abs().max()) for a, b in zip(reference, got))
    result["max_abs_diff"] = diff
    result["ok"] = diff <= result["tolerance"]  # NaN compares False: a NaN output fails
    if not result["ok"]:
        result["problem"] = f"max |exported - eager| {diff:.3g} > tolerance {rtol * scale:.3g}"
    return result



def _check_size(size: Sequence[int], batch: int) -> Tuple[int, int]:
    if len(size) != 2 or min(size) < 1:
        raise ExportError(f"--size {' '.join(str(s) for s in size)}: give the input height and "
                          "width as two positive integers, e.g. --size 512 1024")
    if batch < 1:
        raise ExportError(f"--batch {batch} must be >= 1")
    return int(size[0]), int(size[1])


def export_playground(path: Optional[str], fmt: str, size: Sequence[int], out: str,
                      opts: Sequence[str] = (), batch: int = 1, device: str = "cpu",
                      rtol: float = 1e-4, seed: int = 0, onnx_optimize: bool = True,
                      log=print) -> dict:
    """Build the playground at ``path`` (``opts`` merged, ``MODEL.DEVICE device``), export its
    ``predict_logits`` at ``batch x 3 x size`` to ``out`` in ``fmt``, reload and check it.
    Returns ``{"model", "weights", "how", "outputs": [shapes], "check": check_exported(...) |
    None, "skipped": reason | None, "seconds"}``. Raises :class:`ExportError` (and the
    playground / config / checkpoint errors) before anything is written."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    h, w = _check_size(size, batch)
    if not rtol > 0:
        raise ExportError(f"--rtol {rtol} must be > 0")
    if fmt == "export" and not out.endswith(".pt2"):
        raise ExportError(f"--out {out}: torch.export.save / load take a file ending in .pt2; "
                          f"name it e.g. {os.path.splitext(out)[0]}.pt2")
    torch.manual_seed(seed)  # the random initialisation, when there is no MODEL.WEIGHTS
    cfg, model = playground.build(path, list(opts) + ["MODEL.DEVICE", device])
    weights = load_weights(cfg, model)
    model.eval()
    module = PredictLogits(model).eval()
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    example = torch.randn(batch, 3, h, w, generator=g).to(dev)
    probe = torch.randn(batch, 3, h, w, generator=g).to(dev)  # the check's input, not traced
    with torch.no_grad():
        reference = _as_tuple(module(probe))
    t0 = time.perf_counter()
    try:
        how = export_module(module, fmt, example, out, onnx_optimize=onnx_optimize)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001  (the exporters raise many kinds)
        raise ExporterFailed(f"{FORMATS[fmt][0]} could not export {type(model).__name__}: "
                             + _describe_error(e)) from e
    seconds = time.perf_counter() - t0
    size_mb = os.path.getsize(out) / 2 ** 20
    log(f"dl_export: {type(model).__name__} ({playground.find_playground(path)}), {weights}")
    log(f"dl_export: wrote {out} ({size_mb:.2f} MB) as {fmt}: {how}, input {batch}x3x{h}x{w}, "
        f"{len(reference)} output(s) " + ", ".join("x".join(str(s) for s in t.shape)
                                                   for t in reference)
        + f" ({seconds:.1f} s)")
    call, skipped = load_exported(fmt, out, dev)
    result = {"model": type(model).__name__, "weights": weights, "how": how,
              "outputs": [list(t.shape) for t in reference], "check": None, "skipped": skipped,
              "seconds": seconds}
    if call is None:
        log(f"dl_export: check skipped: {skipped}")
        return result
    with torch.no_grad():
        got = call(probe)
    check = check_exported(reference, got, rtol)
    result["check"] = check
    log(f"dl_export: check: reloaded {out}, fresh random input (seed {seed}): max |exported - "
        f"eager| = {check['max_abs_diff']:.3g}, tolerance {check['tolerance']:.3g} "
        f"(rtol {rtol:g} x max |eager logit| {check['max_abs_logit']:.3g}): "
        + ("OK" if check["ok"] else f"FAILED ({check['problem']})"))
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dl_export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export the playground's predict_logits (normalised N x 3 x H x W -> logits "
                    "at input size) as TorchScript, torch.export or ONNX, then reload the file "
                    "and check it against the eager model.")
    p.add_argument("--playground", default=None, help="playground folder (default: current)")
    p.add_argument("--format", required=True, choices=list(FORMATS),
                   help="torchscript (torch.jit.trace), export (torch.export), onnx")
    p.add_argument("--size", type=int, nargs=2, required=True, metavar=("H", "W"),
                   help="input height and width the file takes")
    p.add_argument("--out", required=True, help="file to write (e.g. model.pt / .pt2 / .onnx)")
    p.add_argument("--batch", type=int, default=1, help="batch size the file takes (default 1)")
    p.add_argument("--device", default="cpu", help="device to build and export on (default cpu)")
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="check tolerance, relative to max |eager logit| (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--no-optimize", action="store_true",
                   help="onnx: skip onnxscript's graph optimisation (faster, larger graph)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE config overrides (MODEL.WEIGHTS ckpt), after all flags")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``dl_export``; returns the exit status (0 ok, 1 check failed, 2 error)."""
    parser = build_parser()
    args = parse_tool_args(parser, argv)
    try:
        result = export_playground(args.playground, args.format, args.size, args.out, args.opts,
                                   batch=args.batch, device=args.device, rtol=args.rtol,
                                   seed=args.seed, onnx_optimize=not args.no_optimize)
    except (ExportError, playground.PlaygroundError, ConfigError, CheckpointReadError,
            IncompatibleCheckpointError, FileNotFoundError) as e:
        parser.exit(2, f"dl_export: error: {e}\n")
    except ExporterFailed as e:
        print(f"dl_export: export failed: {e}", file=sys.stderr)
        return 1
    check = result["check"]
    return 1 if check is not None and not check["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Op specs of the masked convolution for the fuzz harness (:mod:`dl_lib.testing.op_fuzz`).

* ``masked_conv2d``: :func:`dl_lib.layers.masked_conv2d` against
  :func:`~dl_lib.layers.masked_conv_reference.masked_conv2d_dense`;
* ``masked_conv2d_keep``: the ``out=`` variant against
  :func:`~dl_lib.layers.masked_conv_reference.masked_conv2d_keep` (and the inactive positions of
  ``out`` bit for bit untouched).

Drawn: N 0-2, C/O 1-6, kernels 1-5 (not square), stride 1-3, dilation 1-2, padding up to past
the kernel's half span, groups 1 / grouped / depthwise (multiplier 1 or 2), bias or not, masks
random / empty / full / block / a few positions, as bool, 0/1 float or uint8, the dense fallback
on or off; the harness adds the memory layouts of input, weight, mask and out.
"""
from typing import Any, Dict, List, Mapping

import torch
from hypothesis import strategies as st

from dl_lib._ext import compiled_with_cuda, has_compiled_ops
from dl_lib.layers import masked_conv2d
from dl_lib.layers.masked_conv_reference import masked_conv2d_dense, masked_conv2d_keep

from .op_fuzz import BadArgument, OpCase, OpSpec, register_op

__all__ = ["conv_cases", "MASK_KINDS"]

MASK_KINDS = ("random", "empty", "full", "block", "few")
_TOLERANCES = {torch.float64: (1e-7, 1e-7), torch.float32: (2e-4, 2e-4)}


def _mask(kind: str, shape, density: float, block: int, g: torch.Generator) -> torch.Tensor:
    n, _, ho, wo = shape
    if kind == "empty":
        return torch.zeros(shape, dtype=torch.bool)
    if kind == "full":
        return torch.ones(shape, dtype=torch.bool)
    if kind == "block":
        # The usual structure of gated masks: blocks of block x block positions on or off.
        coarse = torch.rand(n, 1, -(-ho // block), -(-wo // block), generator=g) < density
        return coarse.repeat_interleave(block, 2).repeat_interleave(block, 3)[..., :ho, :wo]
    if kind == "few":
        m = torch.zeros(shape, dtype=torch.bool)
        if m.numel():
            m.view(-1)[torch.randint(0, m.numel(), (3,), generator=g)] = True
        return m
    return torch.rand(shape, generator=g) < density


@st.composite
def conv_cases(draw, dtype=torch.float64, device="cpu", tiny=False, keep=False) -> OpCase:
    """An OpCase of a valid masked convolution (``keep``: with an ``out`` tensor)."""
    sizes = [1, 2, 3] if tiny else [1, 2, 3, 5]
    kh, kw = draw(st.sampled_from(sizes)), draw(st.sampled_from(sizes))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = tuple(draw(st.integers(1, 2)) if k > 1 else 1 for k in (kh, kw))
    span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    padding = tuple(draw(st.integers(0, s // 2 + 1)) for s in span)
    kind = draw(st.sampled_from(["one", "depthwise", "grouped"]))
    top = 3 if tiny else 6
    if kind == "one":
        groups, c_in, c_out = 1, draw(st.integers(1, top)), draw(st.integers(1, top))
    elif kind == "depthwise":
        groups = c_in = draw(st.integers(1, top))
        c_out = c_in * draw(st.sampled_from([1, 2]))
    else:
        groups = draw(st.sampled_from([2, 3]))
        c_in = groups * draw(st.integers(1, 2))
        c_out = groups * draw(st.integers(1, 2))
    extra = 3 if tiny else 8
    h, w = (max(1, s - 2 * p) + draw(st.integers(0, extra)) for s, p in zip(span, padding))
    n = draw(st.sampled_from([1, 2, 0]) if not tiny else st.just(1))
    ho = (h + 2 * padding[0] - span[0]) // stride[0] + 1
    wo = (w + 2 * padding[1] - span[1]) // stride[1] + 1
    mask_kind = draw(st.sampled_from(MASK_KINDS))
    density = draw(st.sampled_from([0.1, 0.5, 0.9]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    mask = _mask(mask_kind, (n, 1, ho, wo), density, draw(st.sampled_from([2, 3])), g)
    mask_dtype = draw(st.sampled_from([torch.bool, torch.float32, torch.uint8]))
    tensors: Dict[str, Any] = dict(
        input=torch.randn(n, c_in, h, w, generator=g, dtype=dtype),
        weight=torch.randn(c_out, c_in // groups, kh, kw, generator=g, dtype=dtype),
        bias=torch.randn(c_out, generator=g, dtype=dtype) if draw(st.booleans()) else None,
        mask=mask.to(mask_dtype))
    if keep:
        tensors["out"] = torch.randn(n, c_out, ho, wo, generator=g, dtype=dtype)
    tensors = {k: None if t is None else t.to(device) for k, t in tensors.items()}
    options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                   dense_fallback=draw(st.booleans()))
    grad = ("input", "weight", "bias") + (("out",) if keep else ())
    return OpCase(tensors=tensors, options=options, grad=grad, seed=seed)


def _conv_options(options: Mapping[str, Any]):
    return options["stride"], options["padding"], options["dilation"], options["groups"]


def _run(t, options):
    return masked_conv2d(t["input"], t["weight"], t["bias"], t["mask"], *_conv_options(options),
                         dense_fallback=options["dense_fallback"])


def _reference(t, options):
    return masked_conv2d_dense(t["input"], t["weight"], t["bias"], t["mask"],
                               *_conv_options(options))


def _run_keep(t, options):
    return masked_conv2d(t["input"], t["weight"], t["bias"], t["mask"], *_conv_options(options),
                         dense_fallback=options["dense_fallback"], out=t["out"])


def _reference_keep(t, options):
    return masked_conv2d_keep(t["input"], t["weight"], t["bias"], t["mask"], t["out"],
                              *_conv_options(options))


def _check_keep(case: OpCase, passed, result) -> None:
    """The result is ``out`` itself, and its inactive positions kept their values bit for bit."""
    assert result.data_ptr() == passed["out"].data_ptr(), "out= did not return out itself"
    inactive = (case.tensors["mask"] == 0).expand_as(result)
    assert torch.equal(result.detach()[inactive], case.tensors["out"][inactive]), (
        f"out= changed inactive positions; case: {case.describe()}")


def _bad_arguments() -> List[BadArgument]:
    """Calls the wrapper and the raw ops must refuse (CPU tensors; 'meta' is the other device)."""
    x, w, b = torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3), torch.randn(4)
    m, out = torch.ones(1, 1, 6, 6, dtype=torch.bool), torch.zeros(1, 4, 6, 6)
    x0, w0 = torch.randn(1, 0, 8, 8), torch.randn(4, 0, 3, 3)
    meta = torch.device("meta")
    py = [  # name, call kwargs on top of (x, w, None, m), error, message
        ("zero_input_channels", dict(input=x0, weight=w0), ValueError,
         r"input has 0 channels \(shape \(1, 0, 8, 8\)\)"),
        ("channels_not_divisible_by_groups", dict(weight=torch.randn(3, 1, 3, 3), groups=3),
         ValueError, r"input channels \(4\) must be divisible by groups \(3\)"),
        ("out_channels_not_divisible_by_groups", dict(weight=torch.randn(3, 2, 3, 3), groups=2),
         ValueError, r"weight.shape\[0\] \(3 output channels\) must be divisible by groups \(2\)"),
        ("weight_in_channels", dict(weight=torch.randn(4, 3, 3, 3)), ValueError,
         r"weight.shape\[1\] must be input channels / groups = 4 / 1 = 4"),
        ("stride_zero", dict(stride=0), ValueError, r"stride must be positive, got \(0, 0\)"),
        ("stride_negative", dict(stride=(1, -1)), ValueError,
         r"stride must be positive, got \(1, -1\)"),
        ("stride_float", dict(stride=1.5), TypeError, r"stride must be an int or a pair"),
        ("dilation_zero", dict(dilation=0), ValueError, r"dilation must be positive, got \(0, 0\)"),
        ("padding_negative", dict(padding=-1), ValueError,
         r"padding must be >= 0, got \(-1, -1\)"),
        ("groups_zero", dict(groups=0), ValueError, r"groups must be positive, got 0"),
        ("kernel_larger_than_padded_input", dict(input=torch.randn(1, 4, 2, 2)), ValueError,
         r"kernel 3 x 3 .*spans 3 x 3 pixels\) is larger than the padded input 2 x 2 .*"
         r"padding >= \(1, 1\)"),
        ("dilated_kernel_larger_than_padded_input",
         dict(input=torch.randn(1, 4, 5, 9), dilation=3, padding=(0, 1)), ValueError,
         r"spans 7 x 7 pixels\) is larger than the padded input 5 x 11 .*padding >= \(1, 1\)"),
        ("weight_other_device", dict(weight=w.to(meta)), ValueError,
         r"weight is on meta but input is on cpu; move it with weight.to\(input.device\)"),
        ("bias_other_device", dict(bias=b.to(meta)), ValueError, r"bias is on meta but input"),
        ("mask_other_device", dict(mask=m.to(meta)), ValueError, r"mask is on meta but input"),
        ("out_other_device", dict(out=out.to(meta)), ValueError, r"out is on meta but input"),
        ("weight_dtype", dict(weight=w.double()), TypeError,
         r"weight dtype torch.float64 differs from input dtype torch.float32"),
        ("bias_dtype", dict(bias=b.double()), TypeError, r"bias dtype torch.float64 differs"),
        ("out_dtype", dict(out=out.double()), TypeError, r"out must be a torch.float32 tensor"),
        ("bias_shape", dict(bias=torch.randn(3)), ValueError,
         r"bias must be 1-D with weight.shape\[0\] = 4 values, got shape \(3,\)"),
        ("mask_shape", dict(mask=torch.ones(1, 1, 5, 5, dtype=torch.bool)), ValueError,
         r"mask must have shape \(N, 1, Ho, Wo\) = \(1, 1, 6, 6\).*resize_mask\(mask, \(6, 6\)\)"),
        ("input_not_4d", dict(input=torch.randn(4, 8, 8)), ValueError, r"input must be 4-D"),
    ]

    def wrapper_call(kwargs):
        args = dict(input=x, weight=w, bias=None, mask=m)
        args.update(kwargs)
        return lambda: masked_conv2d(**args)

    bads = [BadArgument(name, wrapper_call(kw), err, match) for name, kw, err, match in py]
    bads += _raw_bad_arguments(x, w, b, m, out, x0, w0, meta)
    return bads


def _raw_bad_arguments(x, w, b, m, out, x0, w0, meta) -> List[BadArgument]:
    """The same mistakes through torch.ops.dl_lib.* directly (no Python checks in between)."""
    if not has_compiled_ops():
        return []
    ops = torch.ops.dl_lib
    conv = dict(input=x, weight=w, bias=None, mask=m, stride_h=1, stride_w=1, pad_h=0, pad_w=0,
                dilation_h=1, dilation_w=1, groups=1)
    cases = [  # name, overrides, message
        ("zero_input_channels", dict(input=x0, weight=w0), r"input has 0 channels"),
        ("stride_zero", dict(stride_h=0), r"stride must be positive, got \(0, 1\)"),
        ("dilation_zero", dict(dilation_w=0), r"dilation must be positive, got \(1, 0\)"),
        ("padding_negative", dict(pad_h=-1), r"padding must be >= 0, got \(-1, 0\)"),
        ("groups_zero", dict(groups=0), r"groups must be positive, got 0"),
        ("channels_not_divisible_by_groups", dict(weight=torch.randn(3, 1, 3, 3), groups=3),
         r"input channels \(4\) must be divisible by groups \(3\)"),
        # C++ division truncates: (2 - 3) / 2 + 1 = 1 output row, reading outside the input.
        ("kernel_larger_than_padded_input",
         dict(input=torch.randn(1, 4, 2, 2), mask=torch.ones(1, 1, 1, 1, dtype=torch.bool),
              stride_h=2, stride_w=2), r"is larger than the padded input 2 x 2"),
        ("weight_other_device", dict(weight=w.to(meta)), r"weight is on meta but input is on cpu"),
        ("bias_other_device", dict(bias=b.to(meta)), r"bias is on meta but input is on cpu"),
        ("mask_other_device", dict(mask=m.to(meta)), r"mask is on meta but input is on cpu"),
        ("weight_dtype", dict(weight=w.double()), r"weight dtype .* differs from input dtype"),
        ("bias_dtype", dict(bias=b.double()), r"bias dtype .* differs from input dtype"),
        ("bias_shape", dict(bias=torch.randn(4, 1)), r"bias must be 1-D with weight.shape\[0\]"),
        ("mask_not_bool", dict(mask=m.to(torch.uint8)), r"mask must be bool"),
        ("mask_shape", dict(mask=torch.ones(1, 1, 5, 5, dtype=torch.bool)),
         r"mask must have shape \(N, 1, Ho, Wo\) = \(1, 1, 6, 6\)"),
    ]

    def call(op, kwargs, **extra):
        # Positional, in schema order (conv's keys; `extra` holds the trailing `out`).
        args = list(dict(conv, **kwargs).values()) + list(extra.values())
        return lambda: op(*args)

    bads = []
    for name, kw, match in cases:
        bads.append(BadArgument(f"raw_forward_{name}", call(ops.masked_conv2d, kw),
                                RuntimeError, match, raw=True))
        bads.append(BadArgument(f"raw_out_{name}", call(ops.masked_conv2d_out, kw, out=out),
                                RuntimeError, match, raw=True))
        if "bias" not in kw:
            grad_kw = {k: v for k, v in dict(conv, **kw).items() if k != "bias"}
            gy = torch.zeros(1, grad_kw["weight"].shape[0], 6, 6)
            bads.append(BadArgument(
                f"raw_backward_{name}",
                (lambda a: lambda: ops._masked_conv2d_backward(gy, *a.values(),
                                                               [True, True, True]))(grad_kw),
                RuntimeError, match, raw=True))
    if torch.cuda.is_available() and compiled_with_cuda():
        bads += _raw_cuda_bad_arguments(conv, out)
    bads += [
        BadArgument("raw_out_other_device", call(ops.masked_conv2d_out, {}, out=out.to(meta)),
                    RuntimeError, r"out is on meta but input is on cpu", raw=True),
        BadArgument("raw_out_dtype", call(ops.masked_conv2d_out, {}, out=out.double()),
                    RuntimeError, r"out dtype .* differs from input dtype", raw=True),
        BadArgument("raw_backward_grad_output_other_device",
                    lambda: ops._masked_conv2d_backward(out.to(meta), x, w, m, 1, 1, 0, 0, 1, 1,
                                                        1, [True, True, True]),
                    RuntimeError, r"grad_output is on meta but input is on cpu", raw=True),
    ]
    return bads


def _raw_cuda_bad_arguments(conv, out) -> List[BadArgument]:
    """CPU and CUDA tensors mixed in one call: the dispatcher picks the CUDA kernel, which must
    name the tensor on the wrong device whichever it is."""
    ops, cuda = torch.ops.dl_lib, torch.device("cuda")
    on_cuda = {k: v.to(cuda) if isinstance(v, torch.Tensor) else v for k, v in conv.items()}
    cases = [  # name, arguments, message
        ("raw_cuda_weight_on_cpu", dict(on_cuda, weight=conv["weight"]),
         r"weight is on cpu but input is on cuda"),
        ("raw_cuda_mask_on_cpu", dict(on_cuda, mask=conv["mask"]),
         r"mask is on cpu but input is on cuda"),
        ("raw_cuda_bias_on_cpu", dict(on_cuda, bias=torch.randn(4)),
         r"bias is on cpu but input is on cuda"),
        ("raw_cuda_input_on_cpu", dict(conv, weight=on_cuda["weight"]),
         r"weight is on cuda:0 but input is on cpu"),
        ("raw_cuda_bias_only_on_cuda", dict(conv, bias=torch.randn(4, device=cuda)),
         r"bias is on cuda:0 but input is on cpu"),
        ("raw_cuda_zero_input_channels", dict(on_cuda, input=torch.randn(1, 0, 8, 8, device=cuda),
                                              weight=torch.randn(4, 0, 3, 3, device=cuda)),
         r"input has 0 channels"),
        ("raw_cuda_kernel_larger_than_padded_input",
         dict(on_cuda, input=torch.randn(1, 4, 2, 2, device=cuda),
              mask=torch.ones(1, 1, 1, 1, dtype=torch.bool, device=cuda), stride_h=2,
              stride_w=2), r"is larger than the padded input 2 x 2"),
    ]
    bads = [BadArgument(name, (lambda a: lambda: ops.masked_conv2d(*a.values()))(args),
                        RuntimeError, match, raw=True) for name, args, match in cases]
    bads.append(BadArgument(
        "raw_cuda_out_on_cpu",
        lambda: ops.masked_conv2d_out(*on_cuda.values(), out), RuntimeError,
        r"out is on cpu but input is on cuda", raw=True))
    return bads


register_op(OpSpec(
    name="masked_conv2d",
    cases=lambda dtype=torch.float64, device="cpu", tiny=False: conv_cases(dtype, device, tiny),
    run=_run, reference=_reference, tolerances=_TOLERANCES,
    layout_inputs=("input", "weight", "mask"),
    bad_arguments=_bad_arguments))

register_op(OpSpec(
    name="masked_conv2d_keep",
    cases=lambda dtype=torch.float64, device="cpu", tiny=False: conv_cases(dtype, device, tiny,
                                                                           keep=True),
    run=_run_keep, reference=_reference_keep, tolerances=_TOLERANCES,
    layout_inputs=("input", "weight", "mask", "out"), mutates=("out",),
    extra_check=_check_keep))

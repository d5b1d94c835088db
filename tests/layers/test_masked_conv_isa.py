"""The float32 CPU kernels of the masked convolution per ISA (AVX-512 or AVX2 + FMA, chosen at run
time; see csrc/masked_conv/cpu/implicit_gemm.h): which one runs, that it is the one the CPU
supports, and its results at the channel counts around its register and panel blocks (8-lane
vectors, 16-channel panels on AVX2; 16 lanes, 64 channels on AVX-512) against the pure-PyTorch
reference, gradients included."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import dl_lib
from dl_lib.layers import masked_conv2d
from dl_lib.layers import masked_conv_policy as policy
from dl_lib.layers.masked_conv_reference import (
    conv_output_size,
    masked_conv2d_dense,
    masked_conv2d_keep,
)

needs_ops = pytest.mark.skipif(not dl_lib.has_compiled_ops(), reason="dl_lib._C not built")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = "DL_LIB_MASKED_CONV_CPU_KERNEL"


def _cpu_flags():
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _expected_kernel(flags):
    if "avx512f" in flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "portable"


@needs_ops
@pytest.mark.skipif(not _cpu_flags(), reason="no /proc/cpuinfo to read the CPU flags from")
@pytest.mark.skipif(bool(os.environ.get(ENV)), reason=f"{ENV} chooses the kernel")
def test_the_kernel_of_the_cpus_isa_runs():
    """The best kernel the CPU supports runs (on this project's AVX2 VMs: "avx2"), and the policy
    looks its thresholds up under that kernel's key."""
    expected = _expected_kernel(_cpu_flags())
    assert torch.ops.dl_lib.masked_conv_cpu_kernel() == expected
    assert policy.cpu_kernel() == expected
    key = {"avx512": "cpu", "avx2": "cpu_avx2", "portable": "cpu_portable"}[expected]
    assert policy.policy_device("cpu") == key


def _case(c_in, c_out, k, stride, dilation, groups, size, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c_in, *size, generator=g)
    w = torch.randn(c_out, c_in // groups, k, k, generator=g)
    b = torch.randn(c_out, generator=g)
    pad = k // 2 * dilation
    ho, wo = conv_output_size(size, k, stride, pad, dilation)
    mask = torch.rand(2, 1, ho, wo, generator=g) < 0.45
    grad = torch.randn(2, c_out, ho, wo, generator=g)
    return x, w, b, mask, grad, (stride, pad, dilation, groups)


# (c_in, c_out, k, stride, dilation, groups): output channels 1, 7, 9, 17, 33, 65 (partial 8-lane
# vectors, a second 16-channel panel, a 64-channel AVX-512 block plus one), 8 x 1 and 6 x 2 tiles,
# groups, stride 2, dilation 2, 1x1 and depthwise (blocks of 16 channels and masked tails).
CASES = [
    (3, 1, 3, 1, 1, 1),
    (5, 7, 3, 1, 1, 1),
    (9, 9, 3, 2, 1, 1),
    (17, 17, 3, 1, 2, 1),
    (6, 33, 3, 2, 2, 1),
    (11, 65, 3, 1, 1, 1),
    (33, 17, 1, 1, 1, 1),
    (18, 36, 3, 1, 1, 3),
    (14, 14, 3, 2, 1, 7),
    (7, 7, 3, 1, 1, 7),
    (9, 9, 3, 1, 2, 9),
    (17, 17, 3, 2, 1, 17),
    (33, 33, 5, 1, 1, 33),
]


@needs_ops
@pytest.mark.parametrize("c_in,c_out,k,stride,dilation,groups", CASES)
@pytest.mark.parametrize("channels_last", [True, False])
def test_float32_values_and_gradients_match_reference(c_in, c_out, k, stride, dilation, groups,
                                                      channels_last):
    x, w, b, mask, grad, args = _case(c_in, c_out, k, stride, dilation, groups, (13, 11),
                                      seed=c_in * 1000 + c_out * 10 + k)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def run(fn):
        xi, wi, bi = (t.clone().requires_grad_(True) for t in (x, w, b))
        y = fn(xi, wi, bi, mask, *args)
        return (y, *torch.autograd.grad(y, (xi, wi, bi), grad))

    got, want = run(masked_conv2d), run(masked_conv2d_dense)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=2e-4)


@needs_ops
@pytest.mark.parametrize("c_out,groups", [(16, 1), (33, 1), (32, 32), (17, 17)])
def test_streamed_outputs_and_kept_values(c_out, groups):
    """Outputs of >= 1 MiB are written with non-temporal stores (whole aligned lines only, the
    rest plain); the keep variant (out=) writes only the active positions."""
    x, w, b, mask, _, args = _case(c_out, c_out, 3, 1, 1, groups, (96, 90), seed=c_out)
    x = x.contiguous(memory_format=torch.channels_last)
    assert 2 * c_out * 96 * 90 * 4 >= 1 << 20
    y = masked_conv2d(x, w, b, mask, *args)
    torch.testing.assert_close(y, masked_conv2d_dense(x, w, b, mask, *args),
                               rtol=1e-4, atol=2e-4)
    out = torch.randn_like(y)
    want = masked_conv2d_keep(x, w, b, mask, out, *args)
    masked_conv2d(x, w, b, mask, *args, out=out)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=2e-4)


def _kernel_outputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 20, 17, 15, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(33, 20, 3, 3, generator=g)
    wd = torch.randn(20, 1, 3, 3, generator=g)
    mask = torch.rand(1, 1, 17, 15, generator=g) < 0.5
    return [masked_conv2d(x, w, None, mask, padding=1),
            masked_conv2d(x, wd, None, mask, padding=1, groups=20)]


@needs_ops
def test_environment_picks_a_lower_kernel_with_the_same_results(tmp_path):
    """DL_LIB_MASKED_CONV_CPU_KERNEL=portable runs the portable path (same results as the kernel
    of this process); a name the CPU cannot run, or an unknown one, is an error naming the valid
    values."""
    out = tmp_path / "portable.pt"
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        from test_masked_conv_isa import _kernel_outputs
        from dl_lib.layers import masked_conv_policy as policy
        torch.save(_kernel_outputs(), {str(out)!r})
        print(torch.ops.dl_lib.masked_conv_cpu_kernel(), policy.policy_device("cpu"))
    """)
    env = dict(os.environ, **{ENV: "portable", "OMP_NUM_THREADS": "1"})
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-2:] == ["portable", "cpu_portable"]
    for fast, portable in zip(_kernel_outputs(), torch.load(out)):
        torch.testing.assert_close(fast, portable, rtol=1e-4, atol=2e-4)
    bad = subprocess.run(
        [sys.executable, "-c", "import torch, dl_lib; torch.ops.dl_lib.masked_conv_cpu_kernel()"],
        cwd=ROOT, env=dict(os.environ, **{ENV: "sse9"}), capture_output=True, text=True,
        timeout=300)
    assert bad.returncode != 0
    assert "DL_LIB_MASKED_CONV_CPU_KERNEL=sse9" in bad.stderr
    assert "portable, avx2 or avx512" in bad.stderr


def test_avx2_break_even_tables_are_measured():
    """The AVX2 kernels have their own measured break-even points (benchmarks/masked_conv.py on
    an AVX2 CPU, provenance comment in each table), for every kind and the kxk channel buckets."""
    text = open(policy.__file__).read()
    for name in ("BREAK_EVEN", "BREAK_EVEN_TRAINING"):
        block = text[text.index(f"# BEGIN {name} TABLE"):text.index(f"# END {name} TABLE")]
        assert "# cpu_avx2: python benchmarks/masked_conv.py" in block
        assert "--clock thread" in block
        table = getattr(policy, name)
        keys = {k for k in table if k[2] == "cpu_avx2"}
        assert {(k, b) for k, b, _ in keys} >= {("kxk", b) for b in ("le32", "le64", "le128",
                                                                     "gt128")}
        assert {k for k, _, _ in keys} == {"kxk", "1x1", "depthwise"}
        for key in keys:
            assert 0.0 <= table[key] <= 1.0
            kind, bucket, _ = key
            channels = {"le32": 18, "le64": 48, "le128": 96, "gt128": 192}[bucket]
            assert policy.break_even_density(kind, channels, "cpu_avx2",
                                             training=name == "BREAK_EVEN_TRAINING") == table[key]

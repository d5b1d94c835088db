"""Regressions the op fuzzing found or the issue reported, pinned as plain tests (issue 11, 5)."""
import subprocess
import sys
import textwrap

import pytest
import torch

import dl_lib
from dl_lib.layers import masked_conv2d
from dl_lib.layers.masked_conv_reference import conv_output_size, masked_conv2d_keep

needs_ops = pytest.mark.skipif(not dl_lib.has_compiled_ops(), reason="dl_lib._C not built")


def test_zero_input_channels_is_an_error_not_a_crash():
    # On AVX-512 CPUs the kernel divided by the 0-length im2col row (SIGFPE killed the
    # interpreter); elsewhere it returned zeros. Run apart so a crash fails only this test.
    script = textwrap.dedent("""
        import torch, dl_lib
        from dl_lib.layers import masked_conv2d
        x, w = torch.randn(1, 0, 8, 8), torch.randn(4, 0, 3, 3)
        m = torch.ones(1, 1, 6, 6, dtype=torch.bool)
        calls = [lambda: masked_conv2d(x, w, None, m)]
        if dl_lib.has_compiled_ops():
            calls.append(lambda: torch.ops.dl_lib.masked_conv2d(x, w, None, m, 1, 1, 0, 0, 1, 1, 1))
        for call in calls:
            try:
                call()
                print("NO ERROR")
            except (ValueError, RuntimeError) as e:
                print("ERROR", e)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"the interpreter died ({proc.returncode}): {proc.stderr[-500:]}"
    lines = proc.stdout.splitlines()
    assert lines and all("input has 0 channels" in line for line in lines), proc.stdout


@needs_ops
@pytest.mark.parametrize("view", ["slice_of_wider", "channel_slice"])
def test_keep_into_a_view_routes_gradients_to_their_tensors(view):
    # out= into a view (a slice of a larger feature map) ran the keep op under autograd's
    # CopySlices, which handed the op's first gradient (then grad_input) to the view's base:
    # input got no gradient and the previous values of out got input's.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    prev = torch.randn(2, 4, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 1, 6, 5, generator=g) < 0.5
    if view == "slice_of_wider":
        base = torch.zeros(2, 4, 6, 11, dtype=torch.float64)
        out = base[..., 1::2].copy_(prev)
    else:
        base = torch.zeros(2, 8, 6, 5, dtype=torch.float64)
        out = base[:, 2:6].copy_(prev)
    y = masked_conv2d(x, w, b, mask, padding=1, out=out)
    cot = torch.randn(y.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(y, (x, w, b, prev), cot, allow_unused=True)
    want = torch.autograd.grad(masked_conv2d_keep(x, w, b, mask, prev, padding=1),
                               (x, w, b, prev), cot)
    for name, g_got, g_want in zip(("input", "weight", "bias", "out"), got, want):
        assert g_got is not None, f"no gradient for {name}"
        torch.testing.assert_close(g_got, g_want, msg=lambda m, n=name: f"{n}: {m}")


def test_conv_output_size_rejects_non_positive_stride_and_dilation():
    # Was a bare ZeroDivisionError (stride 0) or a size computed from a negative stride.
    with pytest.raises(ValueError, match=r"stride \(0, 1\) and dilation \(1, 1\) must be positive"):
        conv_output_size((8, 8), 3, (0, 1))
    with pytest.raises(ValueError, match="must be positive"):
        conv_output_size((8, 8), 3, 1, 0, -1)


def test_kernel_too_large_names_the_padding_needed_not_a_negative_mask_size():
    # Was: "Resize it with dl_lib.layers.resize_mask(mask, (-2, -2))".
    with pytest.raises(ValueError) as info:
        masked_conv2d(torch.randn(1, 2, 3, 3), torch.randn(2, 2, 7, 7), None,
                      torch.ones(1, 1, 1, 1, dtype=torch.bool))
    message = str(info.value)
    assert "larger than the padded input 3 x 3" in message and "padding >= (2, 2)" in message
    assert "resize_mask" not in message and "-" not in message.split("padding >=")[1]

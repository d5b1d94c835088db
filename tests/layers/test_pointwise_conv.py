"""PointwiseConv2d: the matmul path (channels-last input, one thread) equals the conv, gradients
included; only plain 1x1 convs are switched."""
import torch
from torch import nn

from dl_lib.layers import PointwiseConv2d, use_pointwise_matmul


def test_matmul_path_equals_conv_with_gradients():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 1)
    x = torch.randn(2, 6, 7, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
    ref = conv(x)
    gx, gw = torch.autograd.grad(ref.square().sum(), (x, conv.weight))
    fast = PointwiseConv2d(6, 5, 1)
    fast.load_state_dict(conv.state_dict())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = fast(x)
        fx, fw = torch.autograd.grad(out.square().sum(), (x, fast.weight))
    finally:
        torch.set_num_threads(threads)
    assert out.is_contiguous(memory_format=torch.channels_last)
    for a, b in ((out, ref), (fx, gx), (fw, gw)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()


def test_only_plain_pointwise_convs_are_switched():
    net = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, padding=1),
                        nn.Conv2d(4, 4, 1, stride=2), nn.Conv2d(4, 4, 1, groups=2),
                        nn.Conv2d(4, 4, 1, bias=False))
    assert use_pointwise_matmul(net) == 2
    assert [type(m) is PointwiseConv2d for m in net] == [True, False, False, False, True]
    x = torch.randn(1, 4, 5, 5)
    assert net(x).shape == (1, 4, 3, 3)

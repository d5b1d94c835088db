"""A 1x1 convolution that runs as one matrix product on channels-last CPU input at one thread.

At batch 1 with one thread ATen sends 1x1 convolutions to its THNN path (its heuristic: THNN
beats oneDNN there on NCHW), which copies a channels-last input to NCHW and the output back;
on the N x H x W x C view the same convolution is ``F.linear`` (one sgemm, the output already
channels-last). Measured (``benchmarks/compression.py`` section of benchmarks/README.md, batch 1,
90 x 90, ms, 1 thread: conv NCHW / conv channels-last / linear channels-last): 128->32 2.19 /
1.79 / 1.06; 2048->512 253 / 234 / 157. With 2 threads oneDNN takes the channels-last conv and is
as fast or faster (2048->512: 102 conv vs 123 linear), so the layer uses the conv there.
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PointwiseConv2d", "use_pointwise_matmul"]


def _is_plain_pointwise(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1)
            and m.padding in ((0, 0), "valid") and m.dilation == (1, 1) and m.groups == 1
            and m.padding_mode == "zeros")


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` 1x1 (stride 1, no padding, groups 1); same parameters and state dict.
    N x C x H x W -> N x C' x H x W; channels-last float CPU input at one thread goes through
    ``F.linear`` on the NHWC view (see the module doc), anything else through the conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() == 4 and x.device.type == "cpu" and torch.get_num_threads() == 1
                and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)):
            w = self.weight.view(self.out_channels, self.in_channels)
            return F.linear(x.permute(0, 2, 3, 1), w, self.bias).permute(0, 3, 1, 2)
        return super().forward(x)


def use_pointwise_matmul(model: nn.Module) -> int:
    """Turns every plain 1x1 ``nn.Conv2d`` of ``model`` into a :class:`PointwiseConv2d` in place
    (the class changes, the parameters stay); returns how many."""
    n = 0
    for m in model.modules():
        if _is_plain_pointwise(m):
            m.__class__ = PointwiseConv2d
            n += 1
    return n

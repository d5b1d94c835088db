"""The conditional classifier starts from the original's init (mmcv ConvModule's kaiming_init:
normal, fan_out, relu gain, zero bias), not from PyTorch's uniform conv default."""
import math

import torch

from dl_lib.modeling.condnet.conditional_classifier import ConditionalClassifier


def test_projections_start_kaiming_fan_out_with_zero_bias():
    torch.manual_seed(0)
    C, K = 64, 19
    m = ConditionalClassifier(C, K)
    for conv in (m.guidance_project, m.filter_project):
        assert torch.count_nonzero(conv.bias) == 0
        # fan_out = all output channels (torch's rule, also for the grouped filter_project)
        expected = math.sqrt(2.0 / conv.weight.shape[0])
        std = conv.weight.std().item()
        assert abs(std - expected) < 0.05 * expected, (conv, std, expected)
        # normal, not uniform: a uniform of that std never exceeds sqrt(3) std
        assert conv.weight.abs().max().item() > 2.5 * expected


def test_zero_bias_means_kernels_come_from_the_centres_only():
    # with zero generator biases an all-zero feature map gives zero centres, zero kernels and
    # zero logits (PyTorch's default bias init would give a static classifier here)
    m = ConditionalClassifier(8, 3).eval()
    logits, guidance = m(torch.zeros(1, 8, 4, 4))
    assert torch.count_nonzero(logits) == 0 and torch.count_nonzero(guidance) == 0

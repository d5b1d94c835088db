"""FPN head: logits at COMMON_STRIDE for any set of input strides."""
import pytest
import torch

from dl_lib.modeling import FPNHead, ShapeSpec


def _features(shape, n=2, h=64, w=96):
    return {k: torch.randn(n, s.channels, h // s.stride, w // s.stride) for k, s in shape.items()}


@pytest.mark.parametrize("common_stride", [4, 2])
def test_logits_at_common_stride(common_stride):
    shape = {"res2": ShapeSpec(16, 4), "res3": ShapeSpec(32, 8), "res4": ShapeSpec(64, 16), "res5": ShapeSpec(128, 32)}
    head = FPNHead(shape, ["res5", "res2", "res4", "res3"], num_classes=5, conv_dims=8, common_stride=common_stride)
    assert head.in_features == ["res2", "res3", "res4", "res5"]  # sorted by stride
    out = head(_features(shape))
    assert out.shape == (2, 5, 64 // common_stride, 96 // common_stride)
    assert head.output_stride == common_stride


def test_equal_strides_from_dilated_backbone():
    shape = {"res2": ShapeSpec(16, 4), "res3": ShapeSpec(32, 8), "res4": ShapeSpec(64, 8), "res5": ShapeSpec(64, 8)}
    head = FPNHead(shape, list(shape), num_classes=3, conv_dims=8)
    out = head(_features(shape))
    assert out.shape == (2, 3, 16, 24)
    out.mean().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_errors_name_the_keys():
    shape = {"res3": ShapeSpec(16, 8)}
    with pytest.raises(ValueError, match="IN_FEATURES"):
        FPNHead(shape, ["res2"], num_classes=3)
    with pytest.raises(ValueError, match="COMMON_STRIDE"):
        FPNHead(shape, ["res3"], num_classes=3, common_stride=16)

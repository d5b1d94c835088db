"""MODEL.PRETRAINED of a deeper variant of the same network stops instead of "matching" fully."""
import pytest
import torch

from dl_lib.checkpoint import PretrainedWeightsError
from dl_lib.checkpoint.pretrained import load_pretrained_backbone
from dl_lib.modeling.backbone import HighResolutionNet


def test_full_hrnet_w18_file_into_w18_small_v2_stops(tmp_path):
    # Every W18-Small-v2 tensor exists with the same shape in HRNet-W18 (which has more blocks
    # and modules), so without the check the wrong file loads "100%" matched.
    path = tmp_path / "hrnetv2_w18_imagenet_pretrained.pth"
    torch.save(HighResolutionNet("w18").state_dict(), path)
    small = HighResolutionNet("w18_small_v2")
    before = {k: v.clone() for k, v in small.state_dict().items()}
    expected = r"holds \d+ tensors inside HighResolutionNet.s own modules.*deeper or wider variant"
    with pytest.raises(PretrainedWeightsError, match=expected):
        load_pretrained_backbone(small, str(path))
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())


def test_the_variants_own_file_loads(tmp_path):
    path = tmp_path / "hrnet_w18_small_model_v2.pth"
    source = HighResolutionNet("w18_small_v2")
    torch.save({"state_dict": source.state_dict(), "classifier.weight": torch.zeros(1)}, path)
    target = HighResolutionNet("w18_small_v2")
    report = load_pretrained_backbone(target, str(path))
    assert report.fraction == 1.0
    assert torch.equal(target.conv1.weight, source.conv1.weight)

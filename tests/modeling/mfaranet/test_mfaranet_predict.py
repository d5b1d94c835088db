"""MODEL.MFARANET.PREDICT: what predict_logits returns (the real-time "fused" path)."""
import pytest
import torch

from dl_lib.config import config_from_delta
from dl_lib.modeling import build_model
from dl_lib.modeling.mfaranet import backbone_config


def _model(predict):
    cfg = config_from_delta(dict(MODEL=dict(
        DEVICE="cpu", META_ARCHITECTURE="MFARANet", BACKBONE=backbone_config("r18_deep_stem"),
        MFARANET=dict(PREDICT=predict))), family="mfaranet")
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_fused_returns_the_fused_output_of_all_and_the_same_eval_outputs():
    full, fused = _model("all"), _model("fused")
    fused.load_state_dict(full.state_dict())
    x = torch.randn(1, 3, 64, 96)
    images = [{"image": torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8), "height": 64,
               "width": 96}]
    with torch.inference_mode():
        every = full.predict_logits(x)
        only = fused.predict_logits(x)
        eval_all, eval_fused = full(images)[0], fused(images)[0]
    assert isinstance(every, list) and len(every) == 5
    assert isinstance(only, torch.Tensor) and only.shape == (1, 19, 64, 96)
    torch.testing.assert_close(only, every[-1], rtol=0, atol=0)
    # dl_test's per-branch scores do not depend on the switch
    assert len(eval_fused["sem_seg_exits"]) == 5
    torch.testing.assert_close(eval_fused["sem_seg"], eval_all["sem_seg"], rtol=0, atol=0)


def test_unknown_value_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="MODEL.MFARANET.PREDICT 'branches'"):
        _model("branches")

"""The branch-only models (``MODEL.MFARANET.BRANCH_ONLY``): Branch2 is the subgraph of reference
section 1.5, loads the whole model's weights strictly for the tensors it has, and its output is
branch 2 of the whole model; the other branches likewise."""
import pytest
import torch

from dl_lib.checkpoint import Checkpointer
from dl_lib.config import config_from_delta
from dl_lib.modeling import build_model
from dl_lib.modeling.mfaranet import backbone_config
from dl_lib.modeling.mfaranet.convert import to_released


def mfaranet_cfg(**mfaranet):
    return config_from_delta(dict(MODEL=dict(META_ARCHITECTURE="MFARANet",
                                             BACKBONE=backbone_config("r18_deep_stem"),
                                             MFARANET=mfaranet)), family="mfaranet")


def _randomise_norms(model):
    """BN statistics away from (0, 1), so a wrongly wired layer shows."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            m.weight.data.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


def test_branch2_is_the_subgraph_of_the_reference():
    model = build_model(mfaranet_cfg(BRANCH_ONLY=2))
    groups = {k.split(".")[0] if k.startswith("layer") else ".".join(k.split(".")[:2])
              for k in to_released(model.state_dict())}  # original module names
    assert groups == {"layer0", "layer1", "layer2", "layer3", "layer4",
                      "channel_changes.0", "channel_changes.1", "channel_changes.2",
                      "channel_changes.3", "feature_fuses_up.0", "feature_fuses_up.1",
                      "feature_fuses_up.2", "feature_fuses_down.0", "stage_fuses.0",
                      "stages_offset.0", "multi_loss_head.1"}
    assert model.architecture() == {"MODEL.MFARANET.FUSED_BRANCHES": [1, 2, 3, 4],
                                    "MODEL.MFARANET.BRANCH_ONLY": 2}
    assert "MODEL.MFARANET.BRANCH_ONLY" not in build_model(mfaranet_cfg()).architecture()


@pytest.mark.parametrize("branch", [2, 1, 3, 4])
def test_branch_only_equals_the_branch_of_the_whole_model(tmp_path, branch):
    torch.manual_seed(0)
    full = build_model(mfaranet_cfg())
    _randomise_norms(full)
    full.eval()
    path = tmp_path / "full.pth"
    torch.save({"model": full.state_dict()}, path)
    part = build_model(mfaranet_cfg(BRANCH_ONLY=branch)).eval()
    Checkpointer(part).load(str(path), checkpointables=[], strict=True)  # extra tensors: logged
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = full.predict_logits(x)[branch - 1]
        got = part.predict_logits(x)
        result = part([{"image": torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)}])[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert set(result) == {"sem_seg"} and result["sem_seg"].shape == (19, 64, 96)


def test_branch2_trains():
    torch.manual_seed(0)
    model = build_model(mfaranet_cfg(BRANCH_ONLY=2)).train()
    batch = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8),
              "sem_seg": torch.randint(0, 19, (64, 64))}]
    losses = model(batch)
    assert list(losses) == ["loss_branch2"]
    losses["loss_branch2"].backward()
    assert all(p.grad is not None for p in model.parameters())  # no dead parameters

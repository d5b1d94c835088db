"""attach_channel_masks on small models: placement keys, coverage, what a pruned channel carries,
masks under eval(), hard conversion and loading, the logits' optimiser group, prepare_model."""
import pytest
import torch
from torch import nn

from dl_lib.checkpoint import Checkpointer
from dl_lib.config import config_from_delta
from dl_lib.layers import Conv2d
from dl_lib.modeling.pruning import (ChannelMask, attach_channel_masks, channel_keep_masks,
                                     channel_masks, prepare_model, prunable_convs,
                                     pruning_architecture, pruning_statistics, set_temperature,
                                     to_hard_masks)
from dl_lib.solver.build import get_default_optimizer_params


class Block(nn.Module):
    """torchvision-style names (conv1/bn1, downsample Sequential), a ConvTranspose2d, a
    dl_lib Conv2d with its norm inside and a classifier marked unprunable."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.downsample = nn.Sequential(nn.Conv2d(3, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.up = nn.ConvTranspose2d(16, 12, 2, stride=2)
        self.fuse = Conv2d(12, 10, 3, padding=1, bias=False, norm=nn.BatchNorm2d(10),
                           activation=nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(10, 10, 1), nn.ReLU())
        self.cls = nn.Conv2d(10, 4, 1)
        self.cls.unprunable = True

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)) + self.downsample(x))
        return self.cls(self.head(self.fuse(self.up(x))))


def keys(model):
    return set(model.state_dict())


def test_coverage_excludes_unprunable_and_patterns():
    assert [p for p, _ in prunable_convs(Block())] == ["conv1", "downsample.0", "up", "fuse",
                                                        "head.0"]
    assert [p for p, _ in prunable_convs(Block(), exclude=["head.*", "up"])] == [
        "conv1", "downsample.0", "fuse"]
    assert [p for p, _ in prunable_convs(Block(), include=["conv*", "fuse"])] == ["conv1", "fuse"]
    with pytest.raises(ValueError, match="no prunable convolution"):
        attach_channel_masks(Block(), 0.5, include=["nothing"])


def test_original_placement_keys():
    model = Block()
    masks = attach_channel_masks(model, 0.75, min_channels=2)
    assert list(masks) == ["conv1", "downsample.0", "up", "fuse", "head.0"]
    assert {m.k for m in masks.values()} == {4, 3}  # ceil(0.25 * 16/12/10)
    k = keys(model)
    # the original's layout: X.0 = conv, X.1 = mask (logits "weight")
    for conv in ("conv1", "downsample.0", "up", "head.0"):
        assert {f"{conv}.0.weight", f"{conv}.1.weight"} <= k
    assert "bn1.weight" in k and "downsample.1.weight" in k and "cls.weight" in k
    assert "cls.1.weight" not in k and "cls.0.weight" not in k
    # dl_lib Conv2d: the mask sits before its norm
    assert {"fuse.weight", "fuse.norm.0.weight", "fuse.norm.1.running_mean"} <= k
    assert isinstance(model.fuse.norm[0], ChannelMask)
    to_hard_masks(model)
    k = keys(model)
    assert "conv1.1.mask" in k and "conv1.1.weight" not in k
    with pytest.raises(ValueError, match="already has channel masks"):
        attach_channel_masks(model, 0.5)


def test_after_bn_placement_keys():
    model = Block()
    attach_channel_masks(model, 0.75, placement="after_bn", min_channels=2)
    k = keys(model)
    assert {"conv1.weight", "bn1.0.weight", "bn1.1.weight"} <= k  # BN found by name
    assert {"downsample.0.weight", "downsample.1.0.weight", "downsample.1.1.weight"} <= k
    assert {"fuse.norm.0.weight", "fuse.norm.1.weight"} <= k
    assert isinstance(model.fuse.norm[1], ChannelMask)
    # no BN after them: the mask follows the conv
    assert {"up.0.weight", "up.1.weight", "head.0.0.weight", "head.0.1.weight"} <= k
    assert set(channel_keep_masks(model)) == {"conv1", "downsample.0", "up", "fuse", "head.0"}
    with pytest.raises(ValueError, match="PLACEMENT"):
        attach_channel_masks(Block(), 0.5, placement="before_relu")


def _seq_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
    with torch.no_grad():
        model[1].bias.fill_(0.7)
    return model


def test_pruned_channels_carry_beta_only_in_the_original_placement():
    x = torch.randn(2, 3, 6, 6)
    for placement, constant in (("original", 0.7), ("after_bn", 0.0)):
        model = _seq_model()
        attach_channel_masks(model, 0.5, placement=placement)
        to_hard_masks(model)
        pruned = ~channel_keep_masks(model)["0"]
        assert int(pruned.sum()) == 8
        out = model.train()(x)
        assert torch.allclose(out[:, pruned], torch.full_like(out[:, pruned], constant))
        assert (out[:, ~pruned] != constant).any()


def test_mask_multiplies_channelwise_and_is_computed_in_eval():
    model = _seq_model()
    mask = attach_channel_masks(model, 0.5)["0"]
    x = torch.randn(2, 3, 5, 5)
    conv = model[0][0]
    set_temperature(model, 0.5)
    model.eval()
    with torch.no_grad():
        expected = conv(x) * mask.current_mask().view(1, -1, 1, 1)
        assert torch.allclose(model[0](x), expected)
        # eval follows the logits: no mask cached from the last training forward
        before = model[0](x)
        mask.weight.mul_(-1.0)
        after = model[0](x)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, conv(x) * mask.current_mask().view(1, -1, 1, 1))


def test_hard_conversion_keeps_the_top_k_logits_and_loads_back():
    model = _seq_model()
    mask = attach_channel_masks(model, 0.75)["0"]
    top = set(mask.weight.detach().argsort(descending=True)[:mask.k].tolist())
    to_hard_masks(model)
    assert set(torch.nonzero(mask.mask).flatten().tolist()) == top
    assert mask.k == 8 and float(mask.mask.sum()) == 8  # floor of 8 of 16
    state = model.state_dict()
    # a freshly built soft model takes the hard checkpoint (released files, post-conversion)
    fresh = _seq_model()
    attach_channel_masks(fresh, 0.1)
    fresh.load_state_dict(state)
    assert channel_masks(fresh)["0"].is_hard and channel_masks(fresh)["0"].k == 8
    assert torch.equal(channel_keep_masks(fresh)["0"], channel_keep_masks(model)["0"])


def test_statistics_fractions():
    model = _seq_model()
    mask = attach_channel_masks(model, 0.5)["0"]
    with torch.no_grad():
        mask.weight.copy_(torch.linspace(-1, 1, 16))
    set_temperature(model, 1e-4)
    stats = pruning_statistics(model)["0"]
    assert stats["chosen"] == 0.5 and stats["pruned"] == 0.5 and stats["undecided"] == 0.0
    set_temperature(model, 1.0)
    stats = pruning_statistics(model)["0"]
    m = mask.current_mask()
    assert stats["undecided"] == pytest.approx(float(((m > 0.01) & (m < 0.99)).float().mean()))
    assert stats["temperature"] == 1.0


class HeadModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16))

    def param_lr_multiplier(self, name):
        return 10.0 if name.startswith("head.") else 1.0


def _groups(model):
    groups = get_default_optimizer_params(model, base_lr=0.1, weight_decay=1e-4,
                                          weight_decay_norm=0.0, weight_decay_bias=1e-4)
    where = {}
    for g in groups:
        for p in g["params"]:
            where[id(p)] = (g["lr"], g["weight_decay"])
    return where


def test_logits_get_their_own_group():
    model = HeadModel()
    masks = attach_channel_masks(model, 0.5, logit_group=(2.0, 0.0))
    where = _groups(model)
    for mask in masks.values():  # no weight decay, no head factor
        assert where[id(mask.weight)] == (pytest.approx(0.2), 0.0)
    assert where[id(model.head[0][0].weight)] == (pytest.approx(1.0), 1e-4)

    original = HeadModel()
    masks = attach_channel_masks(original, 0.5, logit_group=None)  # LOGITS_FOLLOW_HOST
    where = _groups(original)
    assert where[id(masks["backbone.0"].weight)] == (pytest.approx(0.1), 1e-4)
    assert where[id(masks["head.0"].weight)] == (pytest.approx(1.0), 1e-4)


def test_fixed_logits_are_not_trained():
    model = _seq_model()
    mask = attach_channel_masks(model, 0.5, learnable=False)["0"]
    assert "weight" not in dict(mask.named_parameters())
    assert "0.1.weight" in model.state_dict()
    full = attach_channel_masks(_seq_model(), 0.0, min_channels=16)["0"]  # k == C
    assert full.k == 16 and not dict(full.named_parameters())


def _cfg(**pruning):
    return config_from_delta(dict(MODEL=dict(PRUNING=dict(ENABLED=True, **pruning))),
                             family="pruning")


def test_prepare_model_from_config_and_strict_reload(tmp_path):
    cfg = _cfg(SPARSITY=0.75, PLACEMENT="after_bn", LOGIT_WEIGHT_DECAY=1e-5,
               LOGIT_LR_FACTOR=0.5, EXCLUDE=["head.*"])
    model = prepare_model(cfg, HeadModel())
    masks = channel_masks(model)
    assert list(masks) == ["backbone.0"] and masks["backbone.0"].placement == "after_bn"
    assert masks["backbone.0"].k == 8
    assert _groups(model)[id(masks["backbone.0"].weight)] == (pytest.approx(0.05), 1e-5)
    assert pruning_architecture(model) == {}
    to_hard_masks(model)
    assert pruning_architecture(model) == {"MODEL.PRUNING.HARD_MASKS": True}
    Checkpointer(model, str(tmp_path)).save("hard")

    rebuilt = prepare_model(_cfg(SPARSITY=0.75, PLACEMENT="after_bn", EXCLUDE=["head.*"],
                                 HARD_MASKS=True), HeadModel())
    Checkpointer(rebuilt).load(str(tmp_path / "hard.pth"), strict=True)
    assert torch.equal(channel_keep_masks(rebuilt)["backbone.0"],
                       channel_keep_masks(model)["backbone.0"])
    assert not channel_masks(prepare_model(config_from_delta({}, family="pruning"), HeadModel()))
